"""harness/fast.py: each speed trick trains as the plain path (--no-fast) does."""
# What "as the plain path does" means, exactly (docs/design.md says why):
# - each step agrees with the plain one to float32 rounding;
# - over an epoch, the parameters agree to 1e-5 where no ReLU's input sits at a tie with zero, as on
#   the synthetic set;
# - on real MNIST, where a ReLU at a tie flips under one rounding and momentum carries the
#   difference, the test accuracies agree within the bound stated below.
import json

import mxnet as mx
import numpy as np
import pytest

import data
import network
import optimizer
import train_mnist
from harness import fast
from helpers import REAL_MNIST, batch_of, bound_model, config, synthetic_arrays

SETTINGS = [
    dict(),
    dict(mom=0.9, wd=1e-3),
    dict(optimizer="nag", mom=0.9, wd=1e-3),
    dict(optimizer="adam", wd=1e-4),
    dict(gradient="manual", mom=0.5),
    dict(lr_scheduler="cosine"),
    dict(clip_gradient=0.01, mom=0.9),
    dict(mom=0.9, wd=1e-3, decay_biases=True),
]
IDS = ["sgd", "momentum-wd", "nag", "adam", "manual-gradient", "cosine", "clip", "wd-biases"]
# On real MNIST, one epoch: the largest gap in test accuracy between the paths that we allow.
MNIST_ACCURACY_BOUND = 0.005


def _trained(folder, tmp_path, name, **settings):
    prefix = str(tmp_path / name)
    train_mnist.train(config(folder, num_epochs=1, model_prefix=prefix, **settings))
    return {key: value.asnumpy() for key, value in mx.nd.load(prefix + "-0001.params").items()}


@pytest.mark.parametrize("cpus", [0, 2])
@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
def test_over_an_epoch_without_ties_the_fast_path_trains_the_parameters_of_the_plain_one(
    synthetic_dir, tmp_path, settings, cpus
):
    # 1050 samples in batches of 100: ten full batches and a tail of 50 that folds its own factor.
    ours = _trained(synthetic_dir, tmp_path, "fast", cpus=cpus, **settings)
    plain = _trained(synthetic_dir, tmp_path, "plain", cpus=cpus, fast=False, **settings)
    start = bound_model(hidden=(32, 16), seed=42).arg_params
    for name in ours:
        np.testing.assert_allclose(ours[name], plain[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # It trained.
    assert np.abs(ours["arg:fc1_weight"] - start["fc1_weight"].asnumpy()).max() > 1e-3


@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
def test_each_step_of_the_fast_path_is_the_plain_step_to_float32_rounding(settings):
    # Both paths take each step from the same weights and state: the step alone is compared, 20
    # times.
    train_x, train_y = synthetic_arrays(num_train=1000)[:2]
    images, labels = train_x.reshape(-1, 784).astype(np.float32) / 255, train_y.astype(np.float32)
    models, opts = [], []
    for speed in (False, True):
        run_config = config(**settings, fast=speed).resolved()
        opt = optimizer.create(run_config, {1: 20})
        models.append(bound_model(hidden=(32, 16), seed=3, opt=opt, fast=speed, **settings))
        opts.append(opt)
    for step in range(20):
        batch = batch_of(images[50 * step:50 * step + 50], labels[50 * step:50 * step + 50])
        for model, opt in zip(models, opts):
            (exe,), samples = model.load(batch)
            exe.forward(is_train=True)
            exe.backward(network.head_gradients(exe, settings.get("gradient", "builtin")))
            opt.update(model.params, model.grads, rescale_grad=1.0 / samples)
        plain, ours = (m.replicas[0].params.flat.asnumpy() for m in models)
        # A few float32 roundings of the step apart, relative to the weights' size.
        assert np.abs(ours - plain).max() <= 32 * np.finfo(np.float32).eps * np.abs(plain).max(), (
            step
        )
        models[1].replicas[0].params.flat[:] = models[0].replicas[0].params.flat
        opts[1].state = models[1].state_from_names(models[0].state_by_name(opts[0].state))


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (set MNIST_DIR)")
@pytest.mark.parametrize(
    "settings",
    [dict(mom=0.9, wd=1e-4), dict(optimizer="nag", mom=0.9, wd=1e-4)],
    ids=["sgd", "nag"],
)
def test_on_real_mnist_the_paths_reach_the_same_accuracy_within_the_stated_bound(settings):
    fast_run, plain_run = (
        train_mnist.train(
            config(REAL_MNIST, num_hidden=(128, 64), num_epochs=1, fast=speed, **settings)
        )
        for speed in (True, False)
    )
    assert abs(fast_run[0]["test_acc"] - plain_run[0]["test_acc"]) <= MNIST_ACCURACY_BOUND
    assert fast_run[0]["test_acc"] > 0.95


def test_sgd_folds_minus_lr_over_batch_and_adam_only_one_over_batch():
    def fold(**settings):
        run_config = config(**settings).resolved()
        return fast.tricks(run_config, optimizer.create(run_config, {1: 10})).fold
    assert fold(lr=0.2) == -0.2
    assert fold(optimizer="adam", lr=0.01) == 1.0
    # The rate changes: only 1 / batch.
    assert fold(lr=0.2, lr_scheduler="cosine") == 1.0
    # The clip comes before the rate.
    assert fold(lr=0.2, clip_gradient=1.0) == 1.0
    # The hand-written gradient is made outside the graph.
    assert fold(lr=0.2, gradient="manual") is None
    assert fast.plain().fold is None and fast.plain().byte_ranges is None


def test_folded_backward_hands_over_the_gradient_times_the_factor():
    train_x, train_y = (a.astype(np.float32) for a in synthetic_arrays(num_train=100)[:2])
    batch = batch_of(train_x.reshape(-1, 784) / 255, train_y)
    grads = []
    for speed in (False, True):
        run_config = config(lr=0.3, fast=speed).resolved()
        model = bound_model(
            hidden=(32, 16), fast=speed, lr=0.3, opt=optimizer.create(run_config, {1: 1})
        )
        (exe,), _ = model.load(batch)
        exe.forward(is_train=True)
        exe.backward()
        grads.append(model.replicas[0].grads.flat.asnumpy())
    np.testing.assert_allclose(grads[1], grads[0] * -0.3 / 100, rtol=1e-5, atol=1e-9)


def test_pixel_bytes_on_the_device_give_the_very_floats_of_data_py(synthetic_dir):
    results = []
    for speed in (True, False):
        run_config = config(synthetic_dir, fast=speed).resolved()
        iterators = data.iterators(run_config, [mx.cpu()], np.random.RandomState(0))
        model = bound_model(hidden=(32, 16), fast=speed, iterators=iterators,
                            opt=optimizer.create(run_config, {1: 11}))
        assert iterators[0].provide_data[0].dtype == (np.uint8 if speed else np.float32)
        start = np.random.RandomState(1).uniform(-0.1, 0.1, model.layout.size)
        model.replicas[0].params.flat[:] = mx.nd.array(start)
        iterators[0].reset()
        (exe,), _ = model.load(next(iterators[0]))
        exe.forward(is_train=True)
        exe.backward()
        results.append((exe.outputs[0].asnumpy(), model.replicas[0].grads.flat.asnumpy()))
    # Bit for bit: the bytes dequantized in the graph are the floats, so all that follows is the
    # same (the gradients but for the fold's -lr / batch).
    assert np.array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1] * -0.1 / 100, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_the_flat_update_keeps_its_state_by_parameter_name(wd):
    run_config = config(lr=0.1, mom=0.9, wd=wd, fast=True).resolved()
    opt = optimizer.create(run_config, {1: 1})
    model = bound_model(hidden=(8,), fast=True, lr=0.1, mom=0.9, wd=wd, opt=opt)
    # With weight decay, the weights and the biases are two flat arrays: the biases do not decay.
    assert sorted(model.params) == (["flat_bias", "flat_weight"] if wd else ["flat_weight"])
    model.replicas[0].grads.flat[:] = -0.001
    opt.update(model.params, model.grads, rescale_grad=0.01)
    by_name = model.state_by_name(opt.state)
    assert sorted(by_name) == sorted(model.layout.names) and opt.num_update == 1
    for name, (velocity,) in by_name.items():
        assert velocity.shape == model.arg_params[name].shape
        weight = model.arg_params[name].asnumpy()
        expected = -0.001 - (
            0.1 * wd * (weight - velocity.asnumpy()) if name.endswith("_weight") else 0
        )
        np.testing.assert_allclose(velocity.asnumpy(), expected, rtol=1e-4, atol=1e-9)
    again = model.state_from_names(by_name)
    assert all(np.array_equal(again[k][0].asnumpy(), opt.state[k][0].asnumpy()) for k in opt.state)
    # What a resume restores steps with the element-wise kernels too, as the state it replaces.
    kinds = {type(array) for arrays in (*again.values(), *opt.state.values()) for array in arrays}
    assert kinds == {type(model.params["flat_weight"])} != {mx.nd.NDArray}


@pytest.mark.parametrize("operation", ["__iadd__", "__isub__", "__imul__"])
def test_the_flat_arrays_element_wise_arithmetic_gives_the_broadcasting_kernels_bytes(operation):
    rng = np.random.RandomState(0)
    # Subnormals, zeros, infinities and NaN among ordinary floats, both signs.
    special = np.array([1e-40, -1e-42, 0.0, -0.0, np.inf, -np.inf, np.nan, 3e38], np.float32)
    left, right = (np.concatenate([rng.standard_normal(100_003).astype(np.float32), special])
                   for _ in range(2))
    plain, ours = mx.nd.array(left), fast._elementwise(mx.nd.array(left))
    for array in (plain, ours):
        result = getattr(array, operation)(mx.nd.array(right))
        assert result is array
    assert type(ours) is not mx.nd.NDArray and type(plain) is mx.nd.NDArray
    assert ours.asnumpy().tobytes() == plain.asnumpy().tobytes()
    # By a number, or by an array of another shape, it broadcasts as any NDArray does.
    getattr(ours, operation)(2.0)
    getattr(plain, operation)(2.0)
    assert ours.asnumpy().tobytes() == plain.asnumpy().tobytes()


def _outputs_and_gradients(graph, images, labels):
    """LeNet's outputs and gradients for one batch, from the trainer's initial weights, seed 7."""
    exe = graph.simple_bind(mx.cpu(), data=images.shape, grad_req={
        name: "null" if name in ("data", "softmax_label") else "write"
        for name in graph.list_arguments()})
    params = {name: exe.arg_dict[name] for name in graph.list_arguments()
              if name not in ("data", "softmax_label")}
    train_mnist.initialize(params, np.random.RandomState(7))
    exe.arg_dict["data"][:], exe.arg_dict["softmax_label"][:] = images, labels
    exe.forward(is_train=True)
    exe.backward()
    return ([out.asnumpy() for out in exe.outputs],
            {name: exe.grad_dict[name].asnumpy() for name in params})


def test_pooling_before_lenets_tanh_gives_its_very_outputs_and_its_gradients():
    train_x, train_y = synthetic_arrays(num_train=200)[:2]
    images = train_x[:100].reshape(-1, 1, 28, 28).astype(np.float32) / 255
    labels = train_y[:100].astype(np.float32)
    graph = network.training_graph(network.get_symbol("lenet"), "builtin")
    swapped = fast._rewritten(graph, None, pool_first=True)
    order = [node["op"] for node in json.loads(swapped.tojson())["nodes"]]
    assert order.count("Pooling") == 2 and [
        order[i + 1] for i, op in enumerate(order) if op == "Pooling"] == ["Activation"] * 2
    assert swapped.list_arguments() == graph.list_arguments()
    (plain_out, plain_grads), (ours_out, ours_grads) = (
        _outputs_and_gradients(g, images, labels) for g in (graph, swapped))
    # The probabilities and the metrics: the very same floats.
    assert all(a.tobytes() == b.tobytes() for a, b in zip(plain_out, ours_out))
    for name, grad in plain_grads.items():
        np.testing.assert_allclose(ours_grads[name], grad, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("case", ["padded", "read twice", "average", "falls"])
def test_pooling_stays_after_an_activation_where_the_swap_would_change_the_function(case):
    x = mx.sym.var("data")
    act = mx.sym.Activation(x, act_type="tanh", name="act")
    if case == "padded":
        net = mx.sym.Pooling(act, pool_type="max", kernel=(2, 2), pad=(1, 1), name="pool")
    elif case == "read twice":
        net = mx.sym.Pooling(act, pool_type="max", kernel=(2, 2), name="pool") + act.sum()
    elif case == "average":
        net = mx.sym.Pooling(act, pool_type="avg", kernel=(2, 2), name="pool")
    elif case == "falls":
        net = mx.sym.Pooling(-act, pool_type="max", kernel=(2, 2), name="pool")
    else:
        raise ValueError(case)
    before = json.loads(net.tojson())["nodes"]
    assert json.loads(fast._rewritten(net, None, pool_first=True).tojson())["nodes"] == before
