"""optimizer.py step for step against mx.optimizer on MXNet's own test grid, and the schedules."""
import itertools

import mxnet as mx
import numpy as np
import pytest

import optimizer
import train_mnist
from optimizer import OPTIMIZERS, SGD

SHAPES = {"fc1_weight": (6, 5), "fc1_bias": (6,), "fc2_weight": (3, 6), "fc2_bias": (3,)}
REFERENCE = {"sgd": mx.optimizer.SGD, "nag": mx.optimizer.NAG, "adam": mx.optimizer.Adam}

# The grid of MXNet's tests/python/unittest/test_optimizer.py (test_sgd, test_nag, test_adam):
# momentum, weight decay, rescale_grad and clip_gradient, in float32 and float64.
GRID = [
    (name, momentum, wd, rescale, clip, dtype)
    for name in ("sgd", "nag", "adam")
    for momentum in ((0.0,) if name == "adam" else (0.0, 0.9))
    for wd, rescale, clip, dtype in itertools.product(
        (0.0, 0.03, 0.05, 0.07), (1.0, 0.14, 0.8), (None, 0.4, 0.5), (np.float32, np.float64)
    )
]


def _arrays(rng, dtype=np.float32):
    return {name: mx.nd.array(rng.randn(*shape), dtype=dtype) for name, shape in SHAPES.items()}


def _run_both(
    name,
    momentum,
    wd,
    rescale=1 / 32,
    clip=None,
    dtype=np.float32,
    steps=10,
    schedule=None,
    reference_scheduler=None,
    lr=None,
    decay_biases=True,
):
    """Apply the same gradients through ours and through mx.optimizer."""
    # Yield both weight sets after each step.
    # With decay_biases, MXNet's optimizer is not told the names (it then decays every parameter);
    # without, it is given them, as Module gives them, and decays the weights alone.
    rng = np.random.RandomState(0)
    ours = _arrays(rng, dtype)
    theirs = {key: array.copy() for key, array in ours.items()}
    lr = lr or (0.01 if name == "adam" else 0.1)
    mine = OPTIMIZERS[name](
        lr, momentum, wd, lr_schedule=schedule, clip_gradient=clip, decay_biases=decay_biases
    )
    kwargs = {"momentum": momentum} if name != "adam" else {}
    if clip:
        kwargs["clip_gradient"] = clip
    if not decay_biases:
        kwargs["param_idx2name"] = dict(enumerate(theirs))
    reference = REFERENCE[name](
        learning_rate=lr, wd=wd, rescale_grad=rescale, lr_scheduler=reference_scheduler, **kwargs
    )
    states = {key: reference.create_state(i, w) for i, (key, w) in enumerate(theirs.items())}
    for _ in range(steps):
        grads = _arrays(rng, dtype)
        mine.update(ours, {key: g.copy() for key, g in grads.items()}, rescale_grad=rescale)
        for i, key in enumerate(theirs):
            reference.update(i, theirs[key], grads[key], states[key])
        yield ours, theirs


@pytest.mark.parametrize("name, momentum, wd, rescale, clip, dtype", GRID)
def test_matches_its_mx_optimizer_on_mxnets_own_grid(name, momentum, wd, rescale, clip, dtype):
    start = _arrays(np.random.RandomState(0), dtype)["fc1_weight"].asnumpy()
    for ours, theirs in _run_both(name, momentum, wd, rescale, clip, dtype):
        for key in ours:
            assert ours[key].dtype == dtype
            np.testing.assert_allclose(
                ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-5, atol=1e-5
            )
    # The steps moved the weights, so the comparison was not between untouched copies.
    assert np.abs(ours["fc1_weight"].asnumpy() - start).max() > 1e-3


@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_nag_with_momentum_and_weight_decay_follows_mxnets_kernel(lr):
    # mx.optimizer.NAG passes out=weight to nag_mom_update, so the momentum's weight-decay term sees
    # the updated weight. The textbook formula, with the old weight, drifts from it on these arrays
    # by 7e-5 after 10 steps at lr 0.01, and by 7e-3 at lr 0.1.
    for ours, theirs in _run_both("nag", 0.9, 0.05, lr=lr):
        for key in ours:
            np.testing.assert_allclose(
                ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize(
    "name, momentum", [("sgd", 0.0), ("sgd", 0.9), ("nag", 0.9), ("adam", 0.0)]
)
def test_weight_decay_spares_the_biases_as_mxnet_does_once_it_knows_the_names(name, momentum):
    start = {key: array.asnumpy() for key, array in _arrays(np.random.RandomState(0)).items()}
    for ours, theirs in _run_both(name, momentum, 0.05, decay_biases=False):
        for key in ours:
            np.testing.assert_allclose(
                ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-5, atol=1e-5
            )
    # The weights decayed and the biases did not: the two runs differ where the names say they
    # should.
    decayed = list(_run_both(name, momentum, 0.05, decay_biases=True))[-1][0]
    assert not np.allclose(decayed["fc1_bias"].asnumpy(), ours["fc1_bias"].asnumpy(), atol=1e-7)
    assert np.abs(ours["fc1_weight"].asnumpy() - start["fc1_weight"]).max() > 1e-3


def test_a_bias_of_one_half_stays_one_half_under_weight_decay_alone():
    # The example MXNet's Module gives: a step of zero gradient with wd 0.5 leaves a bias where it
    # was.
    bias, weight = mx.nd.array([0.5]), mx.nd.array([0.5])
    SGD(0.1, wd=0.5).update({"fc1_bias": bias, "fc1_weight": weight},
                            {"fc1_bias": mx.nd.zeros(1), "fc1_weight": mx.nd.zeros(1)})
    assert bias.asscalar() == 0.5 and weight.asscalar() == pytest.approx(0.5 - 0.1 * 0.5 * 0.5)
    SGD(0.1, wd=0.5, decay_biases=True).update({"fc1_bias": bias}, {"fc1_bias": mx.nd.zeros(1)})
    assert bias.asscalar() == pytest.approx(0.475)


def test_float16_weights_are_refused_in_one_line():
    with pytest.raises(ValueError, match="float16 weights lose the small steps"):
        optimizer.Adam(0.001).update(
            {"w": mx.nd.ones(3, dtype=np.float16)}, {"w": mx.nd.ones(3, dtype=np.float16)}
        )


def test_clipping_clips_what_mxnet_clips():
    # SGD clips the rescaled gradient before the weight decay; Adam after adding it, as their
    # kernels do.
    weight, grad = mx.nd.array([1.0, -1.0]), mx.nd.array([10.0, 0.1])
    SGD(1.0, wd=0.5, clip_gradient=1.0, decay_biases=True).update({"w": weight}, {"w": grad})
    assert weight.asnumpy().tolist() == pytest.approx([1 - (1 + 0.5), -1 - (0.1 - 0.5)])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedules_match_mx_lr_scheduler_inside_the_optimizer(name):
    step = optimizer.lr_schedule(
        "step", 0.1 if name == "sgd" else 0.01, 8, step_updates=(3, 6), factor=0.5
    )
    reference = mx.lr_scheduler.MultiFactorScheduler(step=[3, 6], factor=0.5)
    for ours, theirs in _run_both(
        name, 0.0, 0.0, steps=8, schedule=step, reference_scheduler=reference
    ):
        for key in ours:
            np.testing.assert_allclose(
                ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-6, atol=1e-6
            )


def test_schedule_values_match_mx_lr_scheduler():
    step = optimizer.lr_schedule("step", 0.1, 100, step_updates=(20, 50), factor=0.1)
    cosine = optimizer.lr_schedule("cosine", 0.1, 100)
    mx_step = mx.lr_scheduler.MultiFactorScheduler(step=[20, 50], factor=0.1, base_lr=0.1)
    mx_cosine = mx.lr_scheduler.CosineScheduler(max_update=100, base_lr=0.1, final_lr=0)
    for num_update in range(1, 121):
        assert step(num_update) == pytest.approx(mx_step(num_update), rel=1e-12)
        assert cosine(num_update) == pytest.approx(mx_cosine(num_update), rel=1e-9, abs=1e-12)
    assert optimizer.lr_schedule("none", 0.1, 100) is None
    with pytest.raises(ValueError):
        optimizer.lr_schedule("linear", 0.1, 100)


def test_step_schedule_follows_the_epochs():
    schedule = optimizer.lr_schedule("step", 0.2, 40, step_updates=(10, 30), factor=0.5)
    assert [schedule(n) for n in (1, 10, 11, 30, 31, 40)] == pytest.approx(
        [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
    )
    cosine = optimizer.lr_schedule("cosine", 0.2, 40)
    assert cosine(20) == pytest.approx(0.1) and cosine(40) == pytest.approx(0.0, abs=1e-12)


def test_every_optimizer_is_registered_by_name_with_its_own_default_rate():
    assert set(OPTIMIZERS) == {"sgd", "nag", "adam"}
    assert {name: cls.default_learning_rate for name, cls in OPTIMIZERS.items()} == {
        "sgd": 0.1, "nag": 0.1, "adam": 0.001}


@pytest.mark.parametrize(
    "name, lr, momentum, wd, expected",
    [
        ("sgd", 0, 0, 0, "--lr must be a number > 0"),
        ("sgd", -1, 0, 0, "--lr must be"),
        ("nag", 0.1, 1.0, 0, "--mom must be in"),
        ("sgd", 0.1, -0.1, 0, "--mom must be in"),
        ("adam", 0.1, 0, -1, "--wd must be"),
        ("adam", 0.1, 0.9, 0, "--mom does not apply to adam"),
    ],
)
def test_bad_hyperparameters_are_refused_by_the_config_that_checks_them(
    name, lr, momentum, wd, expected
):
    with pytest.raises(ValueError, match=expected):
        train_mnist.Config(optimizer=name, lr=lr, mom=momentum, wd=wd)


def test_a_new_optimizer_is_one_subclass():
    class Plain(optimizer.Optimizer):
        name = "plain-for-this-test"

        def step(self, name, weight, grad, lr, rescale_grad):
            weight -= grad * (lr * rescale_grad)

    try:
        assert OPTIMIZERS["plain-for-this-test"] is Plain
        weight = mx.nd.ones(3)
        Plain(0.5).update({"w": weight}, {"w": mx.nd.ones(3)}, rescale_grad=0.5)
        assert weight.asnumpy().tolist() == [0.75] * 3
    finally:
        del OPTIMIZERS[Plain.name]


@pytest.mark.parametrize("mode, per_epoch", [("discard", 2), ("pad", 3)])
def test_the_schedules_count_the_batches_the_iterator_yields(mode, per_epoch):
    import data
    from helpers import config
    # 10 samples in batches of 4: a discarding iterator yields 2 batches an epoch, a padding one 3.
    iterator = mx.io.NDArrayIter(
        np.zeros((10, 1), np.float32), np.zeros(10), 4, last_batch_handle=mode
    )
    counts = data.batches_per_epoch(iterator, range(1, 4))
    cosine = optimizer.create(config(lr_scheduler="cosine").resolved(), counts)
    assert cosine.lr_schedule(3 * per_epoch) == pytest.approx(0, abs=1e-12)
    assert cosine.lr_schedule(3 * per_epoch - 1) > 1e-3
    step = optimizer.create(config(lr_step_epochs=(2,)).resolved(), counts)
    # The rate falls at the first update of epoch 3, not within it.
    assert step.lr_schedule(2 * per_epoch) == 0.1 and step.lr_schedule(
        2 * per_epoch + 1
    ) == pytest.approx(0.01)


def test_a_schedule_that_starts_after_a_warm_start_spans_the_epochs_it_trains():
    from helpers import config
    # From epoch 4 of 6, 5 batches an epoch: cosine over 15 updates; a step after epoch 2 is behind
    # it.
    cosine = optimizer.create(
        config(num_epochs=6, lr_scheduler="cosine").resolved(), {4: 5, 5: 5, 6: 5}
    )
    assert cosine.lr_schedule(15) == pytest.approx(0, abs=1e-12) and cosine.lr_schedule(1) > 0.098
    step = optimizer.create(
        config(num_epochs=6, lr_step_epochs=(2, 5)).resolved(), {4: 5, 5: 5, 6: 5}
    )
    assert [step.lr_schedule(n) for n in (1, 10, 11)] == pytest.approx([0.01, 0.01, 0.001])
