"""harness/fast.py: the default path computes the very bytes of --no-fast, only elsewhere."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import optimizer
import train_mnist
from harness import cpu, fast
from helpers import ROOT, config

# Optimizer settings that take every branch of optimizer.py's steps.
SETTINGS = {
    "sgd": dict(),
    "momentum-wd": dict(mom=0.9, wd=1e-3),
    "nag": dict(optimizer="nag", mom=0.9, wd=1e-3),
    "nag-wd-biases": dict(optimizer="nag", mom=0.9, wd=1e-3, decay_biases=True),
    "adam-clip-cosine": dict(optimizer="adam", wd=1e-4, clip_gradient=0.05,
                             lr_scheduler="cosine"),
    "sgd-clip-step": dict(mom=0.5, clip_gradient=0.01, lr_scheduler="step", lr_step_epochs=(1,)),
    "manual-gradient": dict(gradient="manual", mom=0.5),
}
# Floats an update meets at the edges: subnormals, zeros of both signs, infinities, NaN, the
# largest finite float.
SPECIAL = np.array([1e-40, -1e-42, 0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -3e38], np.float32)
SHAPES = {"fc1_weight": (33, 17), "fc1_bias": (33,), "fc2_weight": (10, 33), "fc2_bias": (10,)}


def _arrays(rng, special=False):
    """name -> float32 numpy array of SHAPES, random, with SPECIAL's values among them if asked."""
    arrays = {}
    for name, shape in SHAPES.items():
        values = rng.standard_normal(int(np.prod(shape))).astype(np.float32)
        if special:
            values[rng.choice(values.size, len(SPECIAL), replace=False)] = SPECIAL
        arrays[name] = values.reshape(shape)
    return arrays


def _state_bytes(state):
    return {name: [np.asarray(a.asnumpy() if hasattr(a, "asnumpy") else a).tobytes()
                   for a in arrays] for name, arrays in state.items()}


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")
@pytest.mark.parametrize("special", [False, True], ids=["normal", "special-values"])
@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS)
def test_a_step_on_host_views_gives_the_bytes_of_the_same_step_on_ndarrays(settings, special):
    run_config = config(**settings).resolved()
    rng = np.random.RandomState(0)
    start = _arrays(rng, special)
    # The same weights as NDArrays, and as host views of other NDArrays' memory.
    device = {name: mx.nd.array(array) for name, array in start.items()}
    owners = {name: mx.nd.array(array) for name, array in start.items()}
    host = {name: fast.host_view(array) for name, array in owners.items()}
    opts = [optimizer.create(run_config, {1: 10, 2: 10}) for _ in range(2)]
    for step in range(20):
        grads = _arrays(rng, special)
        opts[0].update(device, {n: mx.nd.array(g) for n, g in grads.items()}, rescale_grad=1 / 32)
        opts[1].update(host, {n: g.view(fast.HostArray) for n, g in grads.items()},
                       rescale_grad=1 / 32)
        for name in SHAPES:
            assert device[name].asnumpy().tobytes() == owners[name].asnumpy().tobytes(), (
                step, name)
        assert _state_bytes(opts[0].state) == _state_bytes(opts[1].state), step
    # The steps moved the weights (not all of them to NaN).
    moved = np.abs(owners["fc1_weight"].asnumpy() - start["fc1_weight"])
    assert np.nanmax(moved) > 1e-4


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")
def test_main_in_a_process_that_loaded_mxnet_keeps_numpy_rounding_as_mxnets_threads_do():
    # MXNet's threads have started without flushing subnormals: main()'s set-up must not flush them
    # on this thread alone, or numpy's update would differ from MXNet's kernels on them.
    mx.nd.zeros(1).asnumpy()
    cpu.prepare(config().resolved(), 1000)
    test_a_step_on_host_views_gives_the_bytes_of_the_same_step_on_ndarrays(
        SETTINGS["momentum-wd"], special=True)


def test_a_host_view_is_the_ndarrays_own_memory_both_ways():
    array = mx.nd.arange(12).reshape((3, 4))
    view = fast.host_view(array[1:3])
    # As Model.sum_grads does before the update: MXNet's engine does not see numpy's writes.
    fast.Host().ready()
    assert isinstance(view, fast.HostArray) and view.shape == (2, 4)
    view += 100
    assert array.asnumpy()[1:].tolist() == (np.arange(4, 12).reshape(2, 4) + 100).tolist()
    array[2:3] = -1
    mx.nd.waitall()
    assert view[1].tolist() == [-1] * 4 and array.asnumpy()[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="dense CPU array"):
        fast.host_view(mx.nd.zeros((4, 4)).tostype("row_sparse"))


def test_the_placement_is_the_hosts_on_cpus_when_fast_and_the_devices_otherwise():
    assert isinstance(fast.placement(config().resolved(), [mx.cpu(0), mx.cpu(1)]), fast.Host)
    assert isinstance(fast.placement(config(fast=False).resolved(), [mx.cpu()]), fast.Device)
    assert isinstance(fast.placement(config().resolved(), [mx.gpu(0)]), fast.Device)


def _trained(folder, tmp_path, name, **settings):
    """The bytes of the params, the optimizer state and the records of a 2-epoch run."""
    prefix = str(tmp_path / name)
    history = train_mnist.train(config(folder, num_epochs=2, model_prefix=prefix, **settings))
    with open(prefix + "-0002.params", "rb") as f, open(prefix + "-0002.state.nd", "rb") as g:
        return f.read(), g.read(), [_figures(record) for record in history]


def _figures(record):
    """A record's figures, without its times and speeds."""
    return {key: value for key, value in record.items() if "second" not in key}


@pytest.mark.parametrize("cpus", [0, 2])
@pytest.mark.parametrize("settings", [SETTINGS["nag"], SETTINGS["adam-clip-cosine"]],
                         ids=["nag", "adam-clip-cosine"])
def test_in_process_both_placements_train_the_very_same_bytes(synthetic_dir, tmp_path, settings,
                                                                cpus):
    ours = _trained(synthetic_dir, tmp_path, "host", cpus=cpus, **settings)
    plain = _trained(synthetic_dir, tmp_path, "device", cpus=cpus, fast=False, **settings)
    assert ours == plain


@pytest.fixture
def doubled():
    """A reader's edit of the lesson's SGD, registered for this test alone: twice the rate, and a
    record of every call of its step."""
    class Doubled(optimizer.SGD):
        name = "doubled-sgd-for-this-test"
        calls = []

        def step(self, name, weight, grad, lr, rescale_grad):
            type(self).calls.append((self.num_update, name, type(weight)))
            super().step(name, weight, grad, 2 * lr, rescale_grad)

    yield Doubled
    del optimizer.OPTIMIZERS[Doubled.name]


@pytest.mark.parametrize("fast_path", [True, False], ids=["default", "no-fast"])
def test_an_edited_optimizer_steps_every_parameter_by_name_at_every_batch(synthetic_dir, tmp_path,
                                                                          fast_path, doubled):
    edited = _trained(synthetic_dir, tmp_path, "edited", optimizer=doubled.name, lr=0.05,
                      fast=fast_path)
    names = ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "fc3_weight", "fc3_bias"]
    # 1050 samples in batches of 100: 11 batches an epoch, 2 epochs; each steps every parameter,
    # under the name the symbol gives it, in the symbol's order.
    assert [(update, name) for update, name, _ in doubled.calls] == [
        (update, name) for update in range(1, 23) for name in names]
    kinds = {kind for _, _, kind in doubled.calls}
    assert kinds == ({fast.HostArray} if fast_path else {mx.nd.NDArray})
    # The edit took effect: the run is SGD's at twice the rate, to the byte, and not SGD's own.
    twice = _trained(synthetic_dir, tmp_path, "sgd-0.1", lr=0.1, fast=fast_path)
    assert edited[0] == twice[0] and edited[2] == twice[2]
    assert edited[0] != _trained(synthetic_dir, tmp_path, "sgd-0.05", lr=0.05)[0]


def _cli_run(folder, tmp_path, name, *flags):
    """python train_mnist.py, 2 epochs, as a user runs it: (params bytes, state bytes, records)."""
    prefix, metrics = str(tmp_path / name), str(tmp_path / (name + ".jsonl"))
    done = subprocess.run(
        [sys.executable, "train_mnist.py", "--data-dir", folder, "--num-epochs", "2",
         "--model-prefix", prefix, "--metrics-file", metrics, "--plot-dir", "none",
         "--disp-batches", "0", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with open(prefix + "-0002.params", "rb") as f, open(prefix + "-0002.state.nd", "rb") as g, \
            open(metrics) as h:
        return f.read(), g.read(), [_figures(json.loads(line)) for line in h]


@pytest.mark.parametrize("settings", [
    (),
    pytest.param(("--optimizer", "nag", "--mom", "0.9", "--wd", "1e-4"), marks=pytest.mark.slow),
    pytest.param(("--optimizer", "adam", "--clip-gradient", "0.05", "--lr-scheduler", "cosine"),
                 marks=pytest.mark.slow),
], ids=["sgd", "nag", "adam-clip-cosine"])
def test_the_trainer_on_the_default_path_writes_the_bytes_of_no_fast(synthetic_dir, tmp_path,
                                                                      settings):
    # As a user runs it: the default path on one CPU runs MXNet's naive engine and the update in
    # numpy; --no-fast the threaded engine and MXNet's operators.
    ours = _cli_run(synthetic_dir, tmp_path, "fast", *settings)
    assert ours == _cli_run(synthetic_dir, tmp_path, "plain", "--no-fast", *settings)


@pytest.mark.slow
@pytest.mark.parametrize("cpus", ["0", "2"], ids=["one-context", "two-contexts"])
@pytest.mark.parametrize("settings", [
    (),
    ("--mom", "0.9", "--wd", "1e-4"),
    ("--optimizer", "nag", "--mom", "0.9", "--wd", "1e-4"),
    ("--optimizer", "adam", "--clip-gradient", "0.05", "--lr-scheduler", "step",
     "--lr-step-epochs", "1"),
    ("--network", "lenet", "--mom", "0.9"),
], ids=["sgd", "sgd-momentum-wd", "nag", "adam-clip-step", "lenet"])
def test_on_real_mnist_the_default_path_writes_the_bytes_of_no_fast(real_mnist, tmp_path, settings,
                                                                     cpus):
    ours = _cli_run(real_mnist, tmp_path, "fast", "--cpus", cpus, *settings)
    plain = _cli_run(real_mnist, tmp_path, "plain", "--cpus", cpus, "--no-fast", *settings)
    assert ours[2] == plain[2]
    assert ours[:2] == plain[:2]
    assert ours[2][-1]["test_acc"] > 0.9


def test_no_doc_promises_the_paths_agree_only_within_a_bound():
    for folder in (ROOT, os.path.join(ROOT, "docs")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".md"):
                with open(os.path.join(folder, name)) as f:
                    paragraphs = f.read().split("\n\n")
                for paragraph in paragraphs:
                    if "--no-fast" in paragraph or "fast path" in paragraph:
                        assert " within " not in paragraph, (name, paragraph)
