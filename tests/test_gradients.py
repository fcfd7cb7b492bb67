"""The bound executor's parameter gradients against finite differences of a float64 numpy loss."""
import mxnet as mx
import numpy as np
import pytest

import network
import train_mnist
from helpers import numpy_probs


def _summed_loss(params, images, labels):
    probs = numpy_probs(params, images)
    return -np.log(probs[np.arange(len(labels)), labels]).sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_executor_gradients_match_numeric_gradients(seed):
    rng = np.random.RandomState(seed)
    symbol = train_mnist._training_graph(network.get_symbol(num_classes=4, num_hidden=(6, 5)))
    exe, _, flat_grads = train_mnist._bind(symbol, mx.cpu(), batch_size=3, num_features=7)
    params = {name: exe.arg_dict[name] for name in train_mnist._param_names(symbol)}
    train_mnist._init_params(params, rng)
    for name in params:  # non-zero biases, so their gradients are not a special case
        params[name][:] = params[name].asnumpy() + rng.uniform(-0.1, 0.1, size=params[name].shape)
    images, labels = rng.rand(3, 7), rng.randint(0, 4, size=3)
    exe.arg_dict["data"][:] = images
    exe.arg_dict["softmax_label"][:] = labels
    exe.forward(is_train=True)
    exe.backward()

    values = {name: array.asnumpy().astype(np.float64) for name, array in params.items()}
    step = 1e-6
    for name, value in values.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            saved = value[i]
            value[i] = saved + step
            up = _summed_loss(values, images, labels)
            value[i] = saved - step
            down = _summed_loss(values, images, labels)
            value[i] = saved
            numeric[i] = (up - down) / (2 * step)
        # SoftmaxOutput's gradient is the sum over the batch, not the mean: the numeric one is of the sum.
        np.testing.assert_allclose(exe.grad_dict[name].asnumpy(), numeric, rtol=1e-3, atol=1e-4)
    assert np.abs(flat_grads.asnumpy()).max() > 1e-3
