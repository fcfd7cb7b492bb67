"""Gradients against finite differences of a float64 numpy loss, and the two gradients compared."""
import mxnet as mx
import numpy as np
import pytest

import network
from helpers import batch_of, bound_model, numpy_probs


def _summed_loss(params, images, labels):
    probs = numpy_probs(params, images)
    return -np.log(probs[np.arange(len(labels)), labels]).sum()


def _numeric_gradient(f, value, step=1e-6):
    numeric = np.zeros_like(value)
    for i in np.ndindex(value.shape):
        saved = value[i]
        value[i] = saved + step
        up = f()
        value[i] = saved - step
        down = f()
        value[i] = saved
        numeric[i] = (up - down) / (2 * step)
    return numeric


def _batch_gradients(gradient, seed, hidden=(6, 5), batch=3, features=7, network_name="mlp"):
    """Bind the trainer's graph for gradient, run one forward and backward."""
    # Return params, grads, inputs.
    rng = np.random.RandomState(seed)
    shape = (features,) if network_name == "mlp" else network.sample_shape(network_name)
    zeros = mx.io.NDArrayIter(
        np.zeros((batch, *shape), np.float32), np.zeros(batch, np.float32), batch
    )
    model = bound_model(hidden=hidden if network_name == "mlp" else (128, 64), network=network_name,
                        gradient=gradient, iterators=(zeros, zeros), seed=seed)
    # Non-zero biases, so that their gradients are not a special case.
    for name, array in model.arg_params.items():
        array[:] = array.asnumpy() + rng.uniform(-0.1, 0.1, size=array.shape)
    images, labels = rng.rand(batch, *shape), rng.randint(0, 10, size=batch)
    (exe,), _ = model.load(batch_of(images, labels))
    exe.forward(is_train=True)
    exe.backward(network.head_gradients(exe, gradient))
    values = {name: array.asnumpy().astype(np.float64) for name, array in model.arg_params.items()}
    grads = {name: exe.grad_dict[name].asnumpy() for name in model.arg_params}
    assert np.abs(model.replicas[0].flat_grads.asnumpy()).max() > 1e-3
    return values, grads, images, labels


@pytest.mark.parametrize("gradient", ["builtin", "manual"])
@pytest.mark.parametrize("seed", [0, 1])
def test_parameter_gradients_match_numeric_gradients(gradient, seed):
    values, grads, images, labels = _batch_gradients(gradient, seed)
    for name, value in values.items():
        numeric = _numeric_gradient(lambda: _summed_loss(values, images, labels), value)
        # Both modes give the gradient of the batch's summed loss; the update divides by the batch.
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("seed, network_name", [(0, "mlp"), (1, "mlp"), (2, "mlp"), (0, "lenet")])
def test_both_loss_modes_give_the_same_parameter_gradients(seed, network_name):
    _, builtin, _, _ = _batch_gradients("builtin", seed, hidden=(32, 16), batch=20, features=50,
                                        network_name=network_name)
    _, manual, _, _ = _batch_gradients("manual", seed, hidden=(32, 16), batch=20, features=50,
                                       network_name=network_name)
    for name in builtin:
        # float32 sums in another order: the conv gradients, of size 2 to 3, differ by a few 1e-6.
        tol = 1e-6 if network_name == "mlp" else 1e-5
        np.testing.assert_allclose(manual[name], builtin[name], rtol=tol, atol=tol)


def test_hand_written_loss_gradient_matches_numeric_gradient_of_the_logits():
    rng = np.random.RandomState(3)
    logits, labels = rng.randn(5, 10) * 2, rng.randint(0, 10, size=5)

    def summed_loss():
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(5), labels].sum()
    numeric = _numeric_gradient(summed_loss, logits)
    ours = network.softmax_cross_entropy_grad(mx.nd.array(logits), mx.nd.array(labels)).asnumpy()
    np.testing.assert_allclose(ours, numeric, rtol=1e-4, atol=1e-6)
    # Each row sums to zero: the probabilities sum to one, and so does the one-hot label.
    np.testing.assert_allclose(ours.sum(axis=1), 0, atol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (5, 1), (1, 5)])
def test_the_hand_written_gradient_takes_labels_of_any_shape_that_holds_them(shape):
    logits, labels = np.random.RandomState(4).randn(5, 10), np.array([1, 0, 9, 3, 3])
    expected = network.softmax_cross_entropy_grad(
        mx.nd.array(logits), mx.nd.array(labels)
    ).asnumpy()
    got = network.softmax_cross_entropy_grad(
        mx.nd.array(logits), mx.nd.array(labels.reshape(shape))
    ).asnumpy()
    assert got.shape == (5, 10) and np.array_equal(got, expected)


def test_the_hand_written_gradient_refuses_labels_of_another_count():
    with pytest.raises(ValueError, match="labels must hold 5 class indices"):
        network.softmax_cross_entropy_grad(mx.nd.zeros((5, 10)), mx.nd.zeros((5, 2)))
