"""train_mnist.py: initialisation by hand, binding, scoring, and the loop end to end."""
import dataclasses
import json
import shlex

import mxnet as mx
import numpy as np
import pytest

import train_mnist
from harness import cli
from helpers import (
    ISA_LIMITS,
    ROOT,
    TRAIN,
    batch_of,
    bound_model,
    config,
    cpu_kind,
    numpy_probs,
    synthetic_arrays,
)
from optimizer import SGD


def _floats(num_train=500):
    train_x, train_y, test_x, test_y = (
        a.astype(np.float32) for a in synthetic_arrays(num_train=num_train)
    )
    return train_x.reshape(-1, 784) / 255, train_y, test_x.reshape(-1, 784) / 255, test_y


def test_init_is_seeded_glorot_uniform_with_zero_biases():
    params, again = (
        bound_model(hidden=(128, 64), seed=5).arg_params,
        bound_model(hidden=(128, 64), seed=5).arg_params,
    )
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
    train_mnist.initialize({"conv2_weight": weight}, np.random.RandomState(0))
    # mx.init.Xavier('uniform', 'avg', 3): scale = sqrt(3 / ((fan_in + fan_out) / 2)), fans times
    # the kernel.
    bound = np.sqrt(3 / ((20 * 25 + 50 * 25) / 2))
    value = weight.asnumpy()
    assert np.abs(value).max() <= bound and np.abs(value).max() > 0.99 * bound
    reference = mx.nd.zeros((50, 20, 5, 5))
    mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)(
        mx.init.InitDesc("conv2_weight"), reference
    )
    assert np.abs(reference.asnumpy()).max() == pytest.approx(np.abs(value).max(), rel=0.01)


def test_init_refuses_parameters_it_does_not_know():
    with pytest.raises(ValueError, match="no initialiser for parameter bn_gamma"):
        train_mnist.initialize({"bn_gamma": mx.nd.zeros(3)}, np.random.RandomState(0))


def test_bind_requests_parameter_gradients_only_into_flat_buffers():
    model = bound_model()
    train_x, train_y, _, _ = _floats()
    (exe,), samples = model.load(batch_of(train_x[:50], train_y[:50]))
    assert samples == 50
    assert exe.grad_dict["data"] is None and exe.grad_dict["softmax_label"] is None
    assert set(model.arg_params) == {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"}
    flat, grads = model.replicas[0].flat_params, model.replicas[0].flat_grads
    assert flat.size == sum(a.size for a in model.arg_params.values()) == grads.size
    # Writing through the flat buffers is seen by the executor's own arrays: they are views, not
    # copies.
    flat[:] = 3
    grads[:] = 4
    assert all((exe.arg_dict[name].asnumpy() == 3).all() for name in model.arg_params)
    assert all((exe.grad_dict[name].asnumpy() == 4).all() for name in model.arg_params)


@pytest.mark.parametrize("test_batch", [230, 100])
def test_scoring_follows_the_live_weights_and_equals_numpy(test_batch):
    # Scorers that shared the weights but were bound without gradients would keep scoring the first
    # weights under mxnet 1.9.1's MKLDNN subgraph pass; the test set in one batch and in three (the
    # last padded).
    train_x, train_y, test_x, test_y = _floats()
    test_iter = mx.io.NDArrayIter(test_x, test_y, test_batch)
    model, sgd, scores = bound_model(iterators=(test_iter, test_iter)), SGD(0.1), []
    for _ in range(3):
        scored = train_mnist.evaluate(model, test_iter)
        probs = numpy_probs({n: a.asnumpy() for n, a in model.arg_params.items()}, test_x)
        assert scored["acc"] == pytest.approx(np.mean(probs.argmax(axis=1) == test_y), abs=1e-9)
        assert scored["loss"] == pytest.approx(
            -np.mean(np.log(probs[np.arange(len(test_y)), test_y.astype(int)])), rel=1e-4
        )
        scores.append(scored)
        for start in range(0, 500, 50):
            (exe,), samples = model.load(
                batch_of(train_x[start : start + 50], train_y[start : start + 50])
            )
            exe.forward(is_train=True)
            exe.backward()
            sgd.update(model.params, model.grads, rescale_grad=1 / samples)
    # Training moved the score: a scorer stuck on its first weights would repeat the first numbers.
    losses = [s["loss"] for s in scores]
    assert losses[0] > losses[1] > losses[2] and scores[-1]["acc"] > 0.5


def test_training_on_synthetic_data_learns_and_logs(synthetic_dir, tmp_path):
    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text('{"from": "an earlier run"}\n')
    lines = []
    settings = config(synthetic_dir, num_epochs=4, metrics_file=str(metrics_file))
    history = train_mnist.train(settings, log=lines.append)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    # It learned: the loss fell epoch after epoch, to a test accuracy far above chance.
    assert all(a["train_loss"] > b["train_loss"] for a, b in zip(history, history[1:]))
    assert history[0]["test_acc"] > 0.3 and history[-1]["test_acc"] > 0.9
    # The config's lines: its flags that differ from the defaults, the learning rate resolved,
    # within 80 columns (but for a single word longer than that, such as a long path).
    shown = [line for line in lines if line.startswith(("config: ", "        "))]
    assert lines[:len(shown)] == shown and len(lines) == len(shown) + 5
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines)
    words = shlex.split(" ".join(line[8:] for line in shown))
    assert cli.parse(train_mnist.Config, words) == dataclasses.replace(settings, lr=0.1)
    epochs = lines[len(shown):]
    assert (
        epochs[0].startswith("epoch   1  train loss ")
        and epochs[0].endswith(" s")
        and len(epochs[0]) <= 80
    )
    assert epochs[-1] == f"final test accuracy {history[-1]['test_acc']:.4f} after 4 epochs"
    saved = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert saved[0] == {"from": "an earlier run"} and saved[1:] == history
    assert list(saved[1]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "epoch_seconds",
        "train_seconds",
        "samples_per_second",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_partial_last_batch_counts_every_sample_once(synthetic_dir):
    # 1050 training samples in batches of 100: ten full batches and a tail of 50 (no padding
    # counted).
    history = train_mnist.train(config(synthetic_dir, num_epochs=1, lr=1e-9))
    counts = [history[0]["train_acc"] * 1050, history[0]["test_acc"] * 230]
    assert all(abs(c - round(c)) < 1e-6 for c in counts)
    whole = train_mnist.train(config(synthetic_dir, num_epochs=1, lr=1e-9, batch_size=1050))
    # At a vanishing learning rate the weights barely move, so the epoch's accuracy must not depend
    # on batching.
    assert history[0]["train_acc"] == pytest.approx(whole[0]["train_acc"], abs=1 / 1050)


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic_dir):
    def figures(seed):
        history = train_mnist.train(config(synthetic_dir, num_epochs=2, seed=seed))
        return [(r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"]) for r in history]
    first = figures(7)
    assert figures(7) == first
    assert figures(8) != first


def test_a_config_accepts_any_sequence_for_a_tuple_field():
    assert train_mnist.Config(num_hidden=[256, 128]).num_hidden == (256, 128)
    assert train_mnist.Config(lr_step_epochs=[3], lr_scheduler="step").lr_step_epochs == (3,)


def test_lr_step_epochs_alone_means_the_step_schedule(synthetic_dir):
    resolved = train_mnist.Config(lr_step_epochs=(10, 13)).resolved()
    assert resolved.lr_scheduler == "step" and resolved.lr == 0.1
    # And it steps: the same first epoch; after it, a hundredth of the rate learns far less.
    stepped = train_mnist.train(
        config(synthetic_dir, num_epochs=2, lr_step_epochs=(1,), lr_factor=0.01)
    )
    plain = train_mnist.train(config(synthetic_dir, num_epochs=2))
    assert stepped[0]["train_loss"] == plain[0]["train_loss"]
    assert stepped[1]["train_loss"] > plain[1]["train_loss"]


def _recorded(isa):
    """The figures of each epoch of the default run on real MNIST, as recorded for CPU kind isa."""
    import os
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "default_run.json")) as f:
        return json.load(f)["epochs"][isa]


def test_the_first_epoch_on_real_mnist_gives_the_default_runs_figures_of_this_cpus_kind(
    real_mnist, tmp_path
):
    # The default run cut to its first epoch, as a user runs it, with oneDNN pinned to this CPU's
    # widest kind: its first epoch's figures are the recorded ones of that kind, to the last digit.
    import os
    import subprocess
    isa, metrics = cpu_kind(), tmp_path / "metrics.jsonl"
    env = dict(os.environ, **({"DNNL_MAX_CPU_ISA": ISA_LIMITS[isa]} if isa else {}))
    done = subprocess.run(TRAIN + ["--data-dir", real_mnist, "--num-epochs", "1", "--metrics-file",
                                   str(metrics)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    (record,) = [json.loads(line) for line in metrics.read_text().splitlines()]
    recorded = _recorded(isa or "avx2")[0]
    if isa:
        assert {key: record[key] for key in recorded} == recorded
    else:
        # A CPU of neither kind rounds in its own way: the figures agree, not to the last digit.
        assert {key: pytest.approx(record[key], rel=1e-3) for key in recorded} == recorded


@pytest.mark.slow
def test_the_default_run_gives_the_recorded_figures_epoch_by_epoch(default_run):
    """The default run on real MNIST: at least 97.5%, and the figures recorded for its CPU kind."""
    isa, _, history = default_run
    assert len(history) == 15 and history[-1]["test_acc"] >= 0.975
    for ours, recorded in zip(history, _recorded(isa)):
        assert {key: ours[key] for key in recorded} == recorded
