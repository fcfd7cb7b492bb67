"""fast.py: every speed trick trains as the plain path does (--no-fast), one context or several."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import data
import devices
import fast
import loss
import network
import optimizer
import sync
import train_mnist
from helpers import bound_group, synthetic_arrays

SETTINGS = [dict(), dict(mom=0.9, wd=1e-3), dict(optimizer="nag", mom=0.9, wd=1e-3), dict(optimizer="adam", wd=1e-4),
            dict(loss="manual", mom=0.5), dict(lr_scheduler="cosine"), dict(clip_gradient=0.01, mom=0.9)]
IDS = ["sgd", "momentum-wd", "nag", "adam", "manual-loss", "cosine", "clip"]


def _trained(folder, tmp_path, name, **settings):
    prefix = str(tmp_path / name)
    train_mnist.train(train_mnist.Config(data_dir=folder, num_epochs=1, num_hidden=(32, 16), disp_batches=0,
                                         model_prefix=prefix, plot_dir="none", **settings))
    return {key: value.asnumpy() for key, value in mx.nd.load(prefix + "-0001.params").items()}


@pytest.mark.parametrize("cpus", [0, 2])
@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
def test_the_fast_path_trains_the_same_parameters_as_the_plain_one(synthetic_dir, tmp_path, settings, cpus):
    # 1050 samples in batches of 100: ten full batches and a tail of 50 that folds its own factor.
    ours = _trained(synthetic_dir, tmp_path, "fast", cpus=cpus, **settings)
    plain = _trained(synthetic_dir, tmp_path, "plain", cpus=cpus, fast=False, **settings)
    start = bound_group(hidden=(32, 16), seed=42).params
    for name in ours:
        np.testing.assert_allclose(ours[name], plain[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.abs(ours["arg:fc1_weight"] - start["fc1_weight"].asnumpy()).max() > 1e-3  # it trained


def _config(**settings):
    return train_mnist.Config(num_hidden=(32, 16), **settings)


def test_sgd_folds_lr_over_batch_and_adam_only_one_over_batch():
    contexts = [mx.cpu()]
    assert fast.tricks(_config(lr=0.2), contexts).fold == 0.2
    assert fast.tricks(_config(optimizer="adam", lr=0.01), contexts).fold == 1.0
    assert fast.tricks(_config(lr=0.2, lr_scheduler="cosine"), contexts).fold == 1.0  # lr changes
    assert fast.tricks(_config(lr=0.2, clip_gradient=1.0), contexts).fold == 1.0  # the clip comes before lr
    assert fast.tricks(_config(lr=0.2, loss="manual"), contexts).fold is None  # made outside the graph
    assert fast.plain().fold is None and not fast.plain().pixel_bytes


def test_folded_backward_hands_over_the_gradient_times_the_factor():
    train_x, train_y = (a.astype(np.float32) for a in synthetic_arrays(num_train=100)[:2])
    batch = mx.io.DataBatch([mx.nd.array(train_x.reshape(-1, 784) / 255)], [mx.nd.array(train_y)], pad=0)
    speed = fast.tricks(_config(lr=0.3), [mx.cpu()])
    symbol = network.get_symbol("mlp", 10, (32, 16))
    graph = loss.training_graph(symbol, "builtin")
    grads = []
    for make in (lambda samples, train: graph, lambda samples, train: speed.graph(graph, samples)):
        group = bound_group(hidden=(32, 16))
        group.graph = make
        (exe,), samples = group.load(batch)
        exe.forward(is_train=True)
        exe.backward()
        grads.append(group.grads.flat.asnumpy())
    np.testing.assert_allclose(grads[1], grads[0] * 0.3 / 100, rtol=1e-5, atol=1e-9)


def test_pixel_bytes_on_the_device_give_the_very_floats_of_data_py(synthetic_dir):
    arrays = data.load_mnist(synthetic_dir, as_bytes=True)
    shapes = data.bound_shapes(1050, 100, 0, 1, 1, (784,))
    assert shapes == [(50, 784), (100, 784)]
    speed = fast.tricks(_config(), [mx.cpu()])
    assert speed.pixels_as_bytes(shapes) and speed.pixel_bytes  # this CPU build's dequantize reproduces them
    assert not fast.plain().pixels_as_bytes(shapes)
    iters = [data.mnist_iters(arrays, 100, [mx.cpu()], (784,), np.random.RandomState(0), pixel_bytes=b)[0]
             for b in (True, False)]
    assert iters[0].provide_data[0].dtype == np.uint8 and iters[1].provide_data[0].dtype == np.float32
    symbol = network.get_symbol("mlp", 10, (32, 16))
    graph = loss.training_graph(symbol, "builtin")
    results = []
    for iterator, make, inputs in ((iters[0], lambda s, t: speed.graph(graph, s), speed.inputs),
                                   (iters[1], lambda s, t: graph, lambda ctx: {})):
        group = devices.Group([mx.cpu()], devices.Layout(symbol, (784,)), sync.create("device", 1), inputs, make)
        group.params.flat[:] = mx.nd.array(np.random.RandomState(1).uniform(-0.1, 0.1, group.layout.size))
        iterator.reset()
        (exe,), _ = group.load(next(iterator))
        exe.forward(is_train=True)
        exe.backward()
        results.append((exe.outputs[0].asnumpy(), group.grads.flat.asnumpy()))
    # Bit for bit: the bytes dequantized in the graph are the floats, so all that follows is the same.
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_the_flat_update_keeps_its_state_by_parameter_name():
    group = bound_group(hidden=(8,))
    plain = optimizer.SGD(0.1, momentum=0.9)
    flat = fast.tricks(_config(lr=0.1, mom=0.9), [mx.cpu()]).update_rule(optimizer.SGD(0.1, momentum=0.9),
                                                                         group.layout)
    group.grads.flat[:] = 1.0
    flat.update(group.params, group.grads, rescale_grad=0.01)
    assert sorted(flat.state) == sorted(group.layout.names) and flat.num_update == 1
    for name, (velocity,) in flat.state.items():
        assert velocity.shape == group.params[name].shape
        assert np.allclose(velocity.asnumpy(), -1.0)  # lr'=1 on a gradient already lr/batch: -1 per entry
    copy = fast.tricks(_config(lr=0.1, mom=0.9), [mx.cpu()]).update_rule(plain, group.layout)
    copy.state = flat.state
    assert all(np.array_equal(copy.state[n][0].asnumpy(), flat.state[n][0].asnumpy()) for n in flat.state)


def test_the_default_run_gives_the_recorded_figures_epoch_by_epoch(default_run):
    """The default run on real MNIST: at least 97.5%, and the very figures recorded before the redesign."""
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "default_run.json")) as f:
        fixture = json.load(f)
    _, history = default_run
    assert len(history) == 15 and history[-1]["test_acc"] >= 0.975
    with open("/proc/cpuinfo") as f:
        isa = "avx512" if " avx512f" in f.read() else "avx2"
    if isa != fixture["instruction_set"]:
        pytest.skip(f"the figures were recorded on an {fixture['instruction_set']} CPU, whose MKLDNN kernels round "
                    f"differently from this {isa} one's")
    for ours, recorded in zip(history, fixture["epochs"]):
        assert {key: ours[key] for key in recorded} == recorded
