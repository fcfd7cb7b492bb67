"""harness/cli.py and checks.py: the command line from Config, its help, its checks, its errors."""
import dataclasses
import os
import re
import shlex
import subprocess
import sys

import mxnet as mx
import pytest

import train_mnist
from harness import checks, cli
from helpers import BAD_DATA, ROOT, TRAIN, corrupt, run_cli, tree_bytes


def test_every_config_field_is_a_flag_with_its_comment_and_a_readable_default(capsys):
    code, out, _ = run_cli(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0
    for field in dataclasses.fields(train_mnist.Config):
        assert checks.flag(field.name) in out, field.name
    for flag, shown in [
        ("--batch-size INT", "(default: 100)"),
        ("--num-epochs INT", "(default: 15;"),
        ("--num-hidden N,N", "(default: 128,64)"),
        ("--seed INT", "(default: 42)"),
        ("--mom FLOAT", "(default: 0.0)"),
        ("--optimizer STR", "(default: sgd)"),
    ]:
        assert flag in text and shown in text, flag
    assert "(default: )" not in text and "TUPLE" not in out and "(128, 64)" not in out
    assert "samples per step, over all devices and workers" in text and "--no-fast" in text
    # The learning rate's default is each optimizer's own, and --help says which.
    assert "adam 0.001" in text and "sgd 0.1" in text


@pytest.mark.parametrize("argv", [
    [], ["--num-hidden", "256,128,64", "--lr", "0.05", "--no-fast"],
    ["--optimizer", "adam", "--model-prefix", "runs/a b", "--resume", "--lr-scheduler", "cosine"],
    ["--model-prefix", "p", "--load-epoch", "2", "--predict", "a.png", "b c.jpg"]])
def test_the_command_line_of_a_config_parses_back_to_it(argv):
    config = cli.parse(train_mnist.Config, argv)
    words = shlex.split(cli.command_line(config, "train_mnist.py"))
    # The interpreter that is running, not `python`.
    assert words[:2] == [sys.executable, "train_mnist.py"]
    assert cli.parse(train_mnist.Config, words[2:]) == config


def test_a_config_made_in_python_is_checked_too():
    with pytest.raises(ValueError, match="--lr must be a number > 0"):
        train_mnist.Config(lr=-1)
    with pytest.raises(ValueError, match="--gradient must be one of builtin, manual"):
        train_mnist.Config(gradient="hinge")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_hidden", "512,512", "--num-hidden must be a sequence of integers, got '512,512'"),
        ("num_hidden", (512, 2.5), "--num-hidden must be a sequence of integers"),
        ("batch_size", "100", "--batch-size must be an integer, got '100'"),
        ("seed", True, "--seed must be an integer, got True"),
        ("lr", "0.1", "--lr must be a number, got '0.1'"),
        ("fast", 1, "--fast must be True or False, got 1"),
        ("data_dir", None, "--data-dir must be a string, got None"),
    ],
)
def test_a_config_made_in_python_with_a_value_of_the_wrong_type_is_one_clear_error(
    field, value, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        train_mnist.Config(**{field: value})


def test_every_type_of_config_field_is_checked_and_an_int_passes_for_a_float():
    assert train_mnist.Config(lr=1, mom=0).lr == 1 and train_mnist.Config(lr=None).lr is None


@pytest.mark.parametrize("argv, expected", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--num-epoch", "3"], "unrecognized arguments: --num-epoch 3 (did you mean --num-epochs?)"),
    (["--epochs", "0"], "--num-epochs must be in 1..9999"),
    (["--hidden", "3"], "(did you mean --num-hidden?)"),
    (["--batchsize", "3"], "(did you mean --batch-size?)"),
    (["--lr", "fast"], "argument --lr: expected a number, or nothing for the default; got 'fast'"),
    (["--num-epochs", "1.5"], "invalid int value: '1.5'"),
    (["--num-hidden", "128,x"], "comma-separated integers"),
    (["--lr", "0"], "--lr must be a number > 0"),
    (["--lr", "-0.1"], "--lr must be a number > 0"),
    (["--lr", "nan"], "--lr must be a number > 0"),
    (["--batch-size", "0"], "--batch-size must be in 1..1000000"),
    (["--num-epochs", "0"], "--num-epochs must be in 1..9999"),
    (["--mom", "1"], "--mom must be in [0, 1)"),
    (["--wd", "-1"], "--wd must be a number >= 0"),
    (["--num-hidden", "128,0"], "--num-hidden must be 1 to 16 widths"),
    (["--gpus", "zero"], "--gpus must be GPU ids such as 0 or 0,1"),
    (["--cpus", "-1"], "--cpus must be in 0..64"),
    (["--cpus", "2", "--gpus", "0"], "--cpus and --gpus exclude each other"),
    (["--kv-store", "dist_async"], "argument --kv-store: invalid choice: 'dist_async'"),
    (["--network", "resnet"], "--network must be one of mlp, lenet"),
    (["--dataset", "cifar"], "--dataset must be one of mnist"),
    (["--threads", "1024"], "--threads must be auto or a count in 1.."),
    (["--threads", "²"], "--threads must be auto or a count"),
    (["--lr-scheduler", "cosine", "--lr-step-epochs", "3"], "the cosine schedule takes none"),
    (["--evaluate", "--predict", "a.png", "--model-prefix", "p", "--load-epoch", "1"],
     "--evaluate and --predict exclude each other"),
    (["--export-onnx", "m.onnx"], "--export-onnx needs --load-epoch"),
    (["--warm-start"], "--warm-start needs --load-epoch"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("train_mnist.py: error: ") and expected in err, (
        err
    )


def test_an_empty_lr_is_the_optimizers_own_as_the_help_says(capsys):
    config = cli.parse(train_mnist.Config, ["--lr", "", "--optimizer", "adam"])
    assert config.lr is None and config.resolved().lr == 0.001


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("OMP_NUM_THREADS", "²", "OMP_NUM_THREADS='²' is not a thread count"),
        ("OMP_NUM_THREADS", "0", "OMP_NUM_THREADS=0 must be in 1.."),
        ("OMP_NUM_THREADS", "1024", "OMP_NUM_THREADS=1024 must be in 1.."),
        ("MXNET_CPU_WORKER_NTHREADS", "0", "MXNET_CPU_WORKER_NTHREADS=0 must be in 1.."),
        ("MXNET_OMP_MAX_THREADS", "x", "MXNET_OMP_MAX_THREADS='x' is not a thread count"),
        ("MXNET_ENGINE_TYPE", "Junk", "MXNET_ENGINE_TYPE='Junk' is not an engine of MXNet 1.9.1"),
    ],
)
def test_environment_that_mxnet_would_choke_on_is_one_line_before_it_loads(
    synthetic_dir, variable, value, expected
):
    env = dict(os.environ, **{variable: value})
    done = subprocess.run(
        [sys.executable, "train_mnist.py", "--data-dir", synthetic_dir, "--num-epochs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr, (
        done.stderr
    )


def test_an_openmp_list_of_thread_counts_is_accepted():
    checks.check_environment({"OMP_NUM_THREADS": "1,1"}, cores=2)
    with pytest.raises(ValueError, match="must be in 1..2"):
        checks.check_environment({"OMP_NUM_THREADS": "1,3"}, cores=2)


def test_a_path_of_bytes_that_are_not_utf8_is_refused_before_anything_runs(synthetic_dir, tmp_path):
    prefix = os.fsencode(str(tmp_path)) + b"/m\xff"
    done = subprocess.run([sys.executable, b"train_mnist.py", b"--data-dir", synthetic_dir.encode(),
                           b"--model-prefix", prefix], cwd=ROOT, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert (
        done.returncode == 2
        and err.count("\n") == 1
        and "--model-prefix holds bytes that are not UTF-8" in err
    )
    assert os.listdir(tmp_path) == [os.path.basename(synthetic_dir)]


def test_batch_larger_than_the_training_set_is_refused(capsys, synthetic_dir):
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--batch-size", "1051")
    assert code == 2 and err == ("train_mnist.py: error: --batch-size 1051 is larger than the 1050 "
                                 "training samples\n")


@pytest.mark.parametrize("kind", BAD_DATA + ["data dir is a file"])
def test_bad_data_from_the_command_line_is_one_line_exit_2_and_writes_nothing(
    capsys, synthetic_dir, tmp_path, kind
):
    from harness.datasets import FILES
    if kind == "data dir is a file":
        folder, expected = os.path.join(synthetic_dir, FILES[0] + ".gz"), "is not a folder"
    else:
        folder, expected = synthetic_dir, corrupt(synthetic_dir, kind)
    before = tree_bytes(tmp_path)
    code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", str(tmp_path / "mlp"),
                             "--metrics-file", str(tmp_path / "m.jsonl"))
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert "epoch   1" not in out and tree_bytes(tmp_path) == before


def test_unwritable_metrics_folder_is_refused_before_training(capsys, synthetic_dir, tmp_path):
    code, out, err = run_cli(
        capsys, "--data-dir", synthetic_dir, "--metrics-file", str(tmp_path / "no" / "m.jsonl")
    )
    assert code == 2 and "does not exist; create it first" in err and "epoch   1" not in out


def test_gpu_on_a_cpu_only_build_names_the_exact_install_command(capsys, synthetic_dir):
    if mx.runtime.Features().is_enabled("CUDA"):
        pytest.skip("this MXNet has CUDA")
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--gpus", "0")
    assert (
        code == 2 and 'pip install mxnet-cu112==1.9.1 "numpy<1.24"' in err and err.count("\n") == 1
    )


def test_gpu_without_kernels_for_it_says_so(capsys, synthetic_dir, monkeypatch):
    class CudaFeatures:
        def is_enabled(self, name):
            return name == "CUDA"

    def no_kernel(*args, **kwargs):
        raise mx.base.MXNetError("CUDA: no kernel image is available for execution on the device")
    monkeypatch.setattr(mx.runtime, "Features", CudaFeatures)
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    monkeypatch.setattr(mx.nd, "ones", no_kernel)
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--gpus", "0")
    assert code == 2 and "compute capability 5.0 to 8.6" in err and err.count("\n") == 1


def test_main_prints_config_progress_and_one_line_per_epoch(capsys, synthetic_dir):
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-epochs",
        "2",
        "--lr",
        "0.2",
        "--disp-batches",
        "5",
    )
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert lines[0].startswith("threads: ") and lines[1].startswith("config: --data-dir")
    epochs = [line for line in lines if line.startswith("epoch") and " train loss " in line]
    assert [line.split()[1] for line in epochs] == ["1", "2"] and lines[-1].startswith(
        "final test accuracy"
    )
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines)


def test_a_dry_run_reads_the_data_takes_one_step_on_each_device_and_saves_nothing(
    capsys, synthetic_dir, tmp_path
):
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--cpus",
        "2",
        "--dry-run",
        "--model-prefix",
        str(tmp_path / "m"),
        "--metrics-file",
        str(tmp_path / "m.jsonl"),
    )
    assert code == 0 and err == ""
    assert out.splitlines()[-1].startswith(
        "dry run: one step of 100 samples over 2 device(s) and 1 worker(s), loss "
    )
    assert os.listdir(tmp_path) == [os.path.basename(synthetic_dir)]
    # The data was read: a bad file fails the dry run as it would fail the run.
    corrupt(synthetic_dir, "truncated")
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--dry-run")
    assert code == 2 and "is truncated" in err


def test_script_errors_carry_no_traceback(tmp_path):
    env = dict(os.environ, MXNET_HOME=str(tmp_path))
    env.pop("MNIST_DIR", None)
    run = subprocess.run(
        TRAIN + ["--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("train_mnist.py: error: 4 of the 4 data files missing from")
    assert run.stderr.endswith(", or name a folder that holds them with --data-dir or MNIST_DIR\n")


def test_offline_the_error_names_every_way_to_give_the_data_in_one_line(capsys, monkeypatch,
                                                                         tmp_path):
    # Port 9 (discard) on loopback has no listener: the download is refused at once, as offline.
    monkeypatch.setenv("MNIST_MIRROR", "http://127.0.0.1:9/")
    code, out, err = run_cli(capsys, "--model-prefix", str(tmp_path / "m"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(
        "train_mnist.py: error: could not download train-images-idx3-ubyte.gz from the mirror "
        "(last: http://127.0.0.1:9/train-images-idx3-ubyte.gz: Connection refused); 4 of the 4 "
        "data files missing from ")
    assert err.endswith("name a folder that holds them with --data-dir or MNIST_DIR, or set "
                        "MNIST_MIRROR to a mirror that serves them\n")
    assert "downloading train-images-idx3-ubyte.gz from 127.0.0.1" in out.splitlines()


def test_the_config_line_names_three_files_of_a_long_list_and_the_resume_command_all():
    files = tuple(f"digit {i}.png" for i in range(10))
    config = train_mnist.Config(model_prefix="runs/mlp", load_epoch=15, predict=files)
    summary = " ".join(" ".join(cli.summary(config)).split())
    assert summary == ("config: --model-prefix runs/mlp --load-epoch 15 --predict 'digit 0.png' "
                       "'digit 1.png' 'digit 2.png' and 7 more")
    words = shlex.split(cli.command_line(config, "train_mnist.py"))
    assert words[2:] == ["--model-prefix", "runs/mlp", "--load-epoch", "15", "--predict", *files]
