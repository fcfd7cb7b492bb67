"""train_mnist.py: binding, initialisation, scoring, the loop end to end, and the command line."""
import dataclasses
import json
import os
import shlex
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import cli
import initializer
import mnist_files
import train_mnist
from helpers import (BAD_DATA, ROOT, batch_of, bound_group, corrupt, numpy_probs, run_cli,
                     synthetic_arrays, tree_bytes)
from optimizer import SGD


def _floats(num_train=500):
    train_x, train_y, test_x, test_y = (a.astype(np.float32) for a in synthetic_arrays(num_train=num_train))
    return train_x.reshape(-1, 784) / 255, train_y, test_x.reshape(-1, 784) / 255, test_y


def test_init_is_seeded_glorot_uniform_with_zero_biases():
    params, again = bound_group(hidden=(128, 64), seed=5).params, bound_group(hidden=(128, 64), seed=5).params
    for name, array in params.items():
        value = array.asnumpy()
        assert np.array_equal(value, again[name].asnumpy())
        if name.endswith("_bias"):
            assert not value.any()
        else:
            bound = np.sqrt(6 / sum(value.shape))
            assert np.abs(value).max() <= bound and np.abs(value).max() > 0.95 * bound
            # Uniform on [-b, b] has standard deviation b / sqrt(3).
            assert value.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)


def test_init_of_a_convolution_counts_the_kernel_as_mx_init_xavier_does():
    weight = mx.nd.zeros((50, 20, 5, 5))
    initializer.glorot_uniform({"conv2_weight": weight}, np.random.RandomState(0))
    # mx.init.Xavier('uniform', 'avg', 3): scale = sqrt(3 / ((fan_in + fan_out) / 2)), fans times the kernel.
    bound = np.sqrt(3 / ((20 * 25 + 50 * 25) / 2))
    value = weight.asnumpy()
    assert np.abs(value).max() <= bound and np.abs(value).max() > 0.99 * bound
    reference = mx.nd.zeros((50, 20, 5, 5))
    mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)(mx.init.InitDesc("conv2_weight"), reference)
    assert np.abs(reference.asnumpy()).max() == pytest.approx(np.abs(value).max(), rel=0.01)


def test_init_refuses_parameters_it_does_not_know():
    with pytest.raises(ValueError, match="no initialiser for parameter bn_gamma"):
        initializer.glorot_uniform({"bn_gamma": mx.nd.zeros(3)}, np.random.RandomState(0))


def test_bind_requests_parameter_gradients_only_into_flat_buffers():
    group = bound_group()
    train_x, train_y, _, _ = _floats()
    (exe,), samples = group.load(batch_of(train_x[:50], train_y[:50]))
    assert samples == 50
    assert exe.grad_dict["data"] is None and exe.grad_dict["softmax_label"] is None
    assert set(group.params) == {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"}
    assert group.params.flat.size == sum(a.size for a in group.params.values()) == group.grads.flat.size
    # Writing through the flat buffers is seen by the executor's own arrays: they are views, not copies.
    group.params.flat[:] = 3
    group.grads.flat[:] = 4
    assert all((exe.arg_dict[name].asnumpy() == 3).all() for name in group.params)
    assert all((exe.grad_dict[name].asnumpy() == 4).all() for name in group.params)


@pytest.mark.parametrize("test_batch", [230, 100])
def test_scoring_follows_the_live_weights_and_equals_numpy(test_batch):
    # Scorers that shared the weights but were bound without gradients would keep scoring the first weights
    # under mxnet 1.9.1's MKLDNN subgraph pass; the test set in one batch and in three (the last padded).
    train_x, train_y, test_x, test_y = _floats()
    group, sgd, scores = bound_group(), SGD(0.1), []
    test_iter = mx.io.NDArrayIter(test_x, test_y, test_batch)
    for _ in range(3):
        scored = train_mnist.evaluate(group, test_iter)
        probs = numpy_probs({n: a.asnumpy() for n, a in group.params.items()}, test_x)
        assert scored["acc"] == pytest.approx(np.mean(probs.argmax(axis=1) == test_y), abs=1e-9)
        assert scored["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(test_y)), test_y.astype(int)])),
                                               rel=1e-4)
        scores.append(scored)
        for start in range(0, 500, 50):
            (exe,), samples = group.load(batch_of(train_x[start:start + 50], train_y[start:start + 50]))
            exe.forward(is_train=True)
            exe.backward()
            sgd.update(group.params, group.grads, rescale_grad=1 / samples)
    # Training moved the score: a scorer stuck on its first weights would repeat the first numbers.
    losses = [s["loss"] for s in scores]
    assert losses[0] > losses[1] > losses[2] and scores[-1]["acc"] > 0.5


def _config(folder, **overrides):
    settings = dict(data_dir=folder, num_epochs=4, num_hidden=(32, 16))
    settings.update(overrides)
    return train_mnist.Config(**settings)


def test_training_on_synthetic_data_learns_and_logs(synthetic_dir, tmp_path):
    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text('{"from": "an earlier run"}\n')
    lines = []
    config = _config(synthetic_dir, metrics_file=str(metrics_file))
    history = train_mnist.train(config, log=lines.append)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    # The config's lines: its flags that differ from the defaults, the learning rate resolved, within 80 columns
    # (but for a single word longer than that, such as a long path).
    shown = [line for line in lines if line.startswith(("config: ", "        "))]
    assert lines[:len(shown)] == shown and len(lines) == len(shown) + 5
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines)
    words = shlex.split(" ".join(line[8:] for line in shown))
    assert cli.parse(train_mnist.Config, words) == dataclasses.replace(config, lr=0.1)
    lines = lines[len(shown) - 1:]
    assert lines[1].startswith("epoch   1  train loss ") and lines[1].endswith(" s") and len(lines[1]) <= 80
    assert lines[-1] == f"final test accuracy {history[-1]['test_acc']:.4f} after 4 epochs"
    saved = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert saved[0] == {"from": "an earlier run"} and saved[1:] == history
    assert list(saved[1]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds",
                              "samples_per_second"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_partial_last_batch_counts_every_sample_once(synthetic_dir):
    # 1050 training samples in batches of 100: ten full batches and a tail of 50 (no padding counted).
    history = train_mnist.train(_config(synthetic_dir, num_epochs=1, lr=1e-9))
    counts = [history[0]["train_acc"] * 1050, history[0]["test_acc"] * 230]
    assert all(abs(c - round(c)) < 1e-6 for c in counts)
    whole = train_mnist.train(_config(synthetic_dir, num_epochs=1, lr=1e-9, batch_size=1050))
    # At a vanishing learning rate the weights barely move, so the epoch's accuracy must not depend on batching.
    assert history[0]["train_acc"] == pytest.approx(whole[0]["train_acc"], abs=1 / 1050)


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic_dir):
    def figures(seed):
        history = train_mnist.train(_config(synthetic_dir, num_epochs=2, seed=seed))
        return [(r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"]) for r in history]
    first = figures(7)
    assert figures(7) == first
    assert figures(8) != first


@pytest.mark.parametrize("argv, expected", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--batch"], "unrecognized arguments: --batch"),
    (["--lr", "fast"], "invalid float value: 'fast'"),
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
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("train_mnist.py: error: ") and expected in err


def test_batch_larger_than_the_training_set_is_refused(capsys, synthetic_dir):
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--batch-size", "1051")
    assert code == 2 and err == ("train_mnist.py: error: --batch-size 1051 is larger than the 1050 "
                                 "training samples\n")


@pytest.mark.parametrize("kind", BAD_DATA + ["data dir is a file"])
def test_bad_data_from_the_command_line_is_one_line_exit_2_and_writes_nothing(capsys, synthetic_dir, tmp_path, kind):
    if kind == "data dir is a file":
        folder, expected = os.path.join(synthetic_dir, mnist_files.FILES[0] + ".gz"), "is not a folder"
    else:
        folder, expected = synthetic_dir, corrupt(synthetic_dir, kind)
    before = tree_bytes(tmp_path)
    code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", str(tmp_path / "mlp"),
                             "--metrics-file", str(tmp_path / "m.jsonl"))
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert "epoch   1" not in out and tree_bytes(tmp_path) == before


def test_unwritable_metrics_folder_is_refused_before_training(capsys, synthetic_dir, tmp_path):
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--metrics-file", str(tmp_path / "no" / "m.jsonl"))
    assert code == 2 and "does not exist; create it first" in err and "epoch   1" not in out


def test_gpu_on_a_cpu_only_build_names_the_exact_install_command(capsys, synthetic_dir):
    if mx.runtime.Features().is_enabled("CUDA"):
        pytest.skip("this MXNet has CUDA")
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--gpus", "0")
    assert code == 2 and 'pip install mxnet-cu112==1.9.1 "numpy<1.24"' in err and err.count("\n") == 1


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
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-epochs", "2", "--lr", "0.2",
                             "--disp-batches", "5")
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert lines[0].startswith("threads: ") and lines[1].startswith("config: --num-epochs 2 --lr 0.2 --data-dir")
    epochs = [line for line in lines if line.startswith("epoch") and " train loss " in line]
    assert [line.split()[1] for line in epochs] == ["1", "2"] and lines[-1].startswith("final test accuracy")
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines)


def test_script_errors_carry_no_traceback(tmp_path):
    env = dict(os.environ, MXNET_HOME=str(tmp_path))
    env.pop("MNIST_DIR", None)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("train_mnist.py: error: 4 of the 4 MNIST files missing from")
