"""train_mnist.py: binding, initialisation, scoring, the loop end to end, and the command line."""
import dataclasses
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import data
import network
import train_mnist
from helpers import BAD_DATA, REAL_MNIST, ROOT, corrupt, numpy_probs, run_cli, synthetic_arrays, tree_bytes
from optimizer import SGD


def _bound(batch_size=50, hidden=(16,), seed=0):
    symbol = train_mnist._training_graph(hidden, "builtin")
    exe, flat_params, flat_grads = train_mnist._bind(symbol, mx.cpu(), batch_size, 784)
    params = {name: exe.arg_dict[name] for name in train_mnist._param_names(symbol)}
    train_mnist._init_params(params, np.random.RandomState(seed))
    return symbol, exe, params, flat_params, flat_grads


def test_init_is_seeded_glorot_uniform_with_zero_biases():
    _, _, params, _, _ = _bound(hidden=(128, 64), seed=5)
    _, _, again, _, _ = _bound(hidden=(128, 64), seed=5)
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


def test_init_refuses_parameters_it_does_not_know():
    with pytest.raises(ValueError, match="no initialiser for parameter bn_gamma"):
        train_mnist._init_params({"bn_gamma": mx.nd.zeros(3)}, np.random.RandomState(0))


def test_bind_requests_parameter_gradients_only_into_flat_buffers():
    _, exe, params, flat_params, flat_grads = _bound()
    assert exe.grad_dict["data"] is None and exe.grad_dict["softmax_label"] is None
    assert set(params) == {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"}
    assert flat_params.size == sum(a.size for a in params.values()) == flat_grads.size
    # Writing through the flat buffers is seen by the executor's own arrays: they are views, not copies.
    flat_params[:] = 3
    flat_grads[:] = 4
    assert all((a.asnumpy() == 3).all() for a in params.values())
    assert all((exe.grad_dict[name].asnumpy() == 4).all() for name in params)


@pytest.mark.parametrize("chunk", [10_000, 100])
def test_scoring_follows_the_live_weights_and_equals_numpy(monkeypatch, chunk):
    monkeypatch.setattr(train_mnist, "EVAL_CHUNK", chunk)
    train_x, train_y, test_x, test_y = (a.astype(np.float32) for a in synthetic_arrays(num_train=500))
    train_x, test_x = train_x.reshape(-1, 784) / 255, test_x.reshape(-1, 784) / 255
    symbol, exe, params, flat_params, flat_grads = _bound()
    scorers = train_mnist._bind_eval(symbol, mx.cpu(), params, mx.nd.array(test_x), mx.nd.array(test_y))
    assert len(scorers) == -(-len(test_x) // chunk)
    sgd, scores = SGD(0.1), []
    for _ in range(3):
        scored = train_mnist.evaluate(scorers, len(test_x))
        probs = numpy_probs({n: a.asnumpy() for n, a in params.items()}, test_x)
        assert scored["acc"] == pytest.approx(np.mean(probs.argmax(axis=1) == test_y), abs=1e-9)
        assert scored["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(test_y)), test_y.astype(int)])),
                                               rel=1e-4)
        scores.append(scored)
        for start in range(0, 500, 50):
            exe.arg_dict["data"][:] = train_x[start:start + 50]
            exe.arg_dict["softmax_label"][:] = train_y[start:start + 50]
            exe.forward(is_train=True)
            exe.backward()
            sgd.update({"all": flat_params}, {"all": flat_grads}, rescale_grad=1 / 50)
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
    history = train_mnist.train(_config(synthetic_dir, metrics_file=str(metrics_file)), log=lines.append)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and len(lines) == 6
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert history[-1]["test_acc"] > 0.5 and history[-1]["train_acc"] > 0.5  # chance is 0.1
    assert json.loads(lines[0][len("config: "):])["metrics_file"] == str(metrics_file)
    assert lines[1].startswith("epoch   1  train loss ") and "samples/s" in lines[1]
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


def _run(config):
    return train_mnist._setup(config, lambda line: None)[0]


def _trained_params(prefix, config):
    train_mnist.train(dataclasses.replace(config, model_prefix=prefix, disp_batches=0))
    return {name: array.asnumpy() for name, array in mx.nd.load(f"{prefix}-{config.num_epochs:04d}.params").items()}


def test_folding_lr_over_batch_into_backward_trains_as_scaling_in_the_update(synthetic_dir, tmp_path):
    # 1050 samples in batches of 100: the tail batch of 50 needs its own factor, lr / 50.
    folded = _config(synthetic_dir, num_epochs=2, mom=0.9, wd=1e-3)
    unfolded = dataclasses.replace(folded, lr_scheduler="step", lr_step_epochs=(99,))  # a schedule: nothing to fold
    assert _run(folded).prescaled and not _run(unfolded).prescaled
    ours = _trained_params(str(tmp_path / "folded"), folded)
    reference = _trained_params(str(tmp_path / "not"), unfolded)
    for name in ours:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_pixels_as_bytes_on_the_device_train_bit_for_bit_like_floats(synthetic_dir, tmp_path, monkeypatch):
    config = _config(synthetic_dir, num_epochs=2)
    dev = _run(config).devices[0]
    assert dev.pixel_range and dev.train_x.dtype == np.uint8  # this CPU build's dequantize reproduces data.py
    pixels = mx.nd.contrib.dequantize(dev.train_x, *dev.pixel_range).asnumpy()
    assert np.array_equal(pixels, data.load_mnist(synthetic_dir)[0])
    as_bytes = _trained_params(str(tmp_path / "bytes"), config)
    monkeypatch.setattr(train_mnist, "_pixel_range", lambda ctx, shapes: None)
    assert _run(config).devices[0].train_x.dtype == np.float32
    as_floats = _trained_params(str(tmp_path / "floats"), config)
    assert all(np.array_equal(as_bytes[name], as_floats[name]) for name in as_bytes)


@pytest.mark.parametrize("argv, expected", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--batch"], "unrecognized arguments: --batch"),
    (["--lr", "fast"], "invalid float value: 'fast'"),
    (["--num-epochs", "1.5"], "invalid int value: '1.5'"),
    (["--num-hidden", "128,x"], "comma-separated integers"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--lr", "nan"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--num-epochs", "0"], "--num-epochs must be >= 1"),
    (["--mom", "1"], "--mom must be in [0, 1)"),
    (["--wd", "-1"], "--wd must be >= 0"),
    (["--num-hidden", "128,0"], "--num-hidden must be positive"),
    (["--gpus", "zero"], "--gpus must be GPU ids such as 0 or 0,1"),
    (["--cpus", "-1"], "--cpus must be >= 0"),
    (["--cpus", "2", "--gpus", "0"], "--cpus and --gpus exclude each other"),
    (["--kv-store", "dist_async"], "--kv-store must be local, device or dist_sync"),
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
        folder, expected = os.path.join(synthetic_dir, data.FILES[0] + ".gz"), "is not a folder"
    else:
        folder, expected = synthetic_dir, corrupt(synthetic_dir, kind)
    before = tree_bytes(tmp_path)
    code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", str(tmp_path / "mlp"),
                             "--metrics-file", str(tmp_path / "m.jsonl"))
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert "epoch   1" not in out and tree_bytes(tmp_path) == before


def test_unwritable_metrics_folder_is_refused_before_training(capsys, synthetic_dir, tmp_path):
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--metrics-file", str(tmp_path / "no" / "m.jsonl"))
    assert code == 2 and "is not a writable folder" in err and "epoch   1" not in out


def test_gpu_on_a_cpu_only_build_names_the_package(capsys, synthetic_dir):
    if mx.runtime.Features().is_enabled("CUDA"):
        pytest.skip("this MXNet has CUDA")
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--gpus", "0")
    assert code == 2 and "pip install mxnet-cu112" in err and err.count("\n") == 1


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


def test_help_lists_every_flag_with_its_default(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for flag, default in [("--gpus", ""), ("--batch-size", "100"), ("--num-epochs", "15"), ("--lr", "0.1"),
                          ("--mom", "0.0"), ("--wd", "0.0"), ("--seed", "42"), ("--num-hidden", "(128, 64)"),
                          ("--data-dir", ""), ("--metrics-file", "")]:
        assert flag in out and f"(default: {default})" in " ".join(out.split())
    assert "samples per SGD step" in out


def test_main_prints_config_then_one_line_per_epoch(capsys, synthetic_dir):
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-epochs", "2", "--lr", "0.2")
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert json.loads(lines[0][len("config: "):])["lr"] == 0.2
    assert [line.split()[1] for line in lines[1:3]] == ["1", "2"] and lines[3].startswith("final test accuracy")


def test_script_errors_carry_no_traceback(tmp_path):
    env = dict(os.environ, MXNET_HOME=str(tmp_path))
    env.pop("MNIST_DIR", None)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("train_mnist.py: error: MNIST files missing from")


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (set MNIST_DIR)")
def test_real_mnist_reaches_97_5_percent_with_the_defaults():
    history = train_mnist.train(train_mnist.Config(data_dir=REAL_MNIST))
    assert len(history) == 15
    assert history[-1]["test_acc"] >= 0.975
