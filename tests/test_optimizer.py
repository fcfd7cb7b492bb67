"""optimizer.py step for step against mx.optimizer, and the schedules against mx.lr_scheduler."""
import mxnet as mx
import numpy as np
import pytest

import optimizer
from optimizer import OPTIMIZERS, SGD

SHAPES = {"fc1_weight": (6, 5), "fc1_bias": (6,), "fc2_weight": (3, 6), "fc2_bias": (3,)}
class _NAGKernel(mx.optimizer.NAG):
    """mx.optimizer.NAG, but calling MXNet's nag_mom_update with an output separate from the weight.

    mx.optimizer.NAG passes out=weight, and the kernel then reads the already-updated weight for the weight-decay
    term of the momentum: with momentum and wd both set, the stored momentum drifts from the kernel's own formula.
    """

    def update(self, index, weight, grad, state):
        if state is None:  # no momentum: plain sgd_update, no aliasing question
            return super().update(index, weight, grad, state)
        self._update_count(index)
        new = mx.nd.zeros_like(weight)
        mx.nd.nag_mom_update(weight, grad, state, out=new, lr=self._get_lr(index), wd=self._get_wd(index),
                             momentum=self.momentum, rescale_grad=self.rescale_grad)
        weight[:] = new


REFERENCE = {"sgd": mx.optimizer.SGD, "nag": _NAGKernel, "adam": mx.optimizer.Adam}
CASES = [(name, momentum, wd) for name in ("sgd", "nag") for momentum in (0.0, 0.9) for wd in (0.0, 1e-3)]
CASES += [("adam", 0.0, 0.0), ("adam", 0.0, 1e-3)]


def _arrays(rng):
    return {name: mx.nd.array(rng.randn(*shape)) for name, shape in SHAPES.items()}


def _run_both(name, momentum, wd, steps=8, schedule=None, reference_scheduler=None):
    """Apply the same gradients through ours and through mx.optimizer; yield both weight sets after each step."""
    rng = np.random.RandomState(0)
    ours = _arrays(rng)
    theirs = {key: array.copy() for key, array in ours.items()}
    lr = 0.01 if name == "adam" else 0.1
    mine = OPTIMIZERS[name](lr, momentum, wd, lr_schedule=schedule)
    kwargs = {"momentum": momentum} if name != "adam" else {}
    reference = REFERENCE[name](learning_rate=lr, wd=wd, rescale_grad=1 / 32, lr_scheduler=reference_scheduler,
                                **kwargs)
    states = {key: reference.create_state(i, w) for i, (key, w) in enumerate(theirs.items())}
    for _ in range(steps):
        grads = _arrays(rng)
        mine.update(ours, {key: g.copy() for key, g in grads.items()}, rescale_grad=1 / 32)
        for i, key in enumerate(theirs):
            reference.update(i, theirs[key], grads[key], states[key])
        yield ours, theirs


@pytest.mark.parametrize("name, momentum, wd", CASES)
def test_matches_its_mx_optimizer_step_for_step(name, momentum, wd):
    start = _arrays(np.random.RandomState(0))["fc1_weight"].asnumpy()
    for ours, theirs in _run_both(name, momentum, wd):
        for key in ours:
            np.testing.assert_allclose(ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-6, atol=1e-6)
    # The steps moved the weights, so the comparison was not between untouched copies.
    assert np.abs(ours["fc1_weight"].asnumpy() - start).max() > 1e-3


@pytest.mark.parametrize("name, momentum, wd", CASES)
def test_prescaled_gradients_step_as_mx_optimizer_steps_on_the_raw_ones(name, momentum, wd):
    rng = np.random.RandomState(3)
    ours = _arrays(rng)
    theirs = {key: array.copy() for key, array in ours.items()}
    lr = 0.01 if name == "adam" else 0.1
    mine = OPTIMIZERS[name](lr, momentum, wd)
    kwargs = {"momentum": momentum} if name != "adam" else {}
    reference = REFERENCE[name](learning_rate=lr, wd=wd, rescale_grad=1 / 32, **kwargs)
    states = {key: reference.create_state(i, w) for i, (key, w) in enumerate(theirs.items())}
    # What backward hands over when it folds the factor in: lr / batch for SGD and NAG, 1 / batch for Adam.
    factor = mine.fixed_scale() / 32
    assert factor == pytest.approx((1 if name == "adam" else lr) / 32)
    for _ in range(6):
        grads = _arrays(rng)
        mine.update(ours, {key: g * factor for key, g in grads.items()}, rescale_grad=1 / 32, prescaled=True)
        for i, key in enumerate(theirs):
            reference.update(i, theirs[key], grads[key], states[key])
    for key in ours:
        np.testing.assert_allclose(ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-5, atol=1e-6)


def test_a_schedule_leaves_no_fixed_factor_to_fold():
    schedule = optimizer.lr_schedule("cosine", 0.1, 100)
    assert SGD(0.1, lr_schedule=schedule).fixed_scale() is None
    assert OPTIMIZERS["adam"](0.01, lr_schedule=schedule).fixed_scale() == 1.0  # its rate enters after the moments


def test_nag_equals_mx_optimizer_nag_where_its_aliasing_does_not_matter():
    rng = np.random.RandomState(2)
    ours = _arrays(rng)
    theirs = {key: array.copy() for key, array in ours.items()}
    mine, reference = OPTIMIZERS["nag"](0.1, 0.9, 0.0), mx.optimizer.NAG(learning_rate=0.1, momentum=0.9)
    states = {key: reference.create_state(i, w) for i, (key, w) in enumerate(theirs.items())}
    for _ in range(5):
        grads = _arrays(rng)
        mine.update(ours, {key: g.copy() for key, g in grads.items()})
        for i, key in enumerate(theirs):
            reference.update(i, theirs[key], grads[key], states[key])
    for key in ours:
        np.testing.assert_allclose(ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedules_match_mx_lr_scheduler_inside_the_optimizer(name):
    step = optimizer.lr_schedule("step", 0.1 if name == "sgd" else 0.01, 8, step_updates=(3, 6), factor=0.5)
    reference = mx.lr_scheduler.MultiFactorScheduler(step=[3, 6], factor=0.5)
    for ours, theirs in _run_both(name, 0.0, 0.0, schedule=step, reference_scheduler=reference):
        for key in ours:
            np.testing.assert_allclose(ours[key].asnumpy(), theirs[key].asnumpy(), rtol=1e-6, atol=1e-6)


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


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 1e-2)])
def test_one_flat_buffer_updates_like_separate_arrays(momentum, wd):
    rng = np.random.RandomState(1)
    separate = _arrays(rng)
    flat = mx.nd.concat(*[a.reshape((-1,)) for a in separate.values()], dim=0)
    sgd_separate, sgd_flat = SGD(0.05, momentum, wd), SGD(0.05, momentum, wd)
    for _ in range(4):
        grads = _arrays(rng)
        flat_grad = mx.nd.concat(*[g.reshape((-1,)) for g in grads.values()], dim=0)
        sgd_separate.update(separate, grads, rescale_grad=0.5)
        sgd_flat.update({"all": flat}, {"all": flat_grad}, rescale_grad=0.5)
    expected = np.concatenate([a.asnumpy().ravel() for a in separate.values()])
    np.testing.assert_allclose(flat.asnumpy(), expected, rtol=1e-6, atol=1e-7)


def test_every_optimizer_is_registered_by_name():
    assert set(OPTIMIZERS) == {"sgd", "nag", "adam"}


@pytest.mark.parametrize("name, lr, momentum, wd", [("sgd", 0, 0, 0), ("sgd", -1, 0, 0), ("nag", 0.1, 1.0, 0),
                                                    ("sgd", 0.1, -0.1, 0), ("adam", 0.1, 0, -1), ("adam", 0.1, 0.9, 0)])
def test_bad_hyperparameters_are_rejected(name, lr, momentum, wd):
    with pytest.raises(ValueError):
        OPTIMIZERS[name](lr, momentum, wd)


def test_an_optimizer_that_promises_no_fixed_factor_gets_none_folded():
    class Plain(optimizer.Optimizer):
        name = "plain-for-this-test"

        def step(self, weight, grad, state, lr, rescale_grad):
            weight -= self.scaled_gradient(weight, grad, lr, rescale_grad)

    try:
        assert Plain(0.1).fixed_scale() is None
    finally:
        del OPTIMIZERS[Plain.name]
