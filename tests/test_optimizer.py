"""optimizer.SGD step for step against mx.optimizer.SGD, and the flat update against the per-array one."""
import mxnet as mx
import numpy as np
import pytest

from optimizer import SGD

SHAPES = {"fc1_weight": (6, 5), "fc1_bias": (6,), "fc2_weight": (3, 6), "fc2_bias": (3,)}


def _arrays(rng):
    return {name: mx.nd.array(rng.randn(*shape)) for name, shape in SHAPES.items()}


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_matches_mx_optimizer_sgd_step_for_step(momentum, wd):
    rng = np.random.RandomState(0)
    ours = _arrays(rng)
    theirs = {name: array.copy() for name, array in ours.items()}
    sgd = SGD(learning_rate=0.1, momentum=momentum, wd=wd)
    reference = mx.optimizer.SGD(learning_rate=0.1, momentum=momentum, wd=wd, rescale_grad=1 / 32)
    states = {name: reference.create_state(i, w) for i, (name, w) in enumerate(theirs.items())}
    for _ in range(6):
        grads = _arrays(rng)
        sgd.update(ours, {name: g.copy() for name, g in grads.items()}, rescale_grad=1 / 32)
        for i, name in enumerate(theirs):
            reference.update(i, theirs[name], grads[name], states[name])
        for name in ours:
            np.testing.assert_allclose(ours[name].asnumpy(), theirs[name].asnumpy(), rtol=1e-6, atol=1e-6)
    # Six steps moved the weights, so the comparison above was not between untouched copies.
    assert not np.allclose(ours["fc1_weight"].asnumpy(), _arrays(np.random.RandomState(0))["fc1_weight"].asnumpy())


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


@pytest.mark.parametrize("lr, momentum, wd", [(0, 0, 0), (-1, 0, 0), (0.1, 1.0, 0), (0.1, -0.1, 0), (0.1, 0, -1)])
def test_bad_hyperparameters_are_rejected(lr, momentum, wd):
    with pytest.raises(ValueError):
        SGD(lr, momentum, wd)
