"""network.py: the symbol's layers, names and shapes."""
import mxnet as mx
import pytest

import network


def test_default_symbol_has_the_tutorial_layers():
    net = network.get_symbol()
    internals = net.get_internals().list_outputs()
    for layer in ("fc1", "relu1", "fc2", "relu2", "fc3", "softmax"):
        assert layer + "_output" in internals
    assert net.list_arguments() == ["data", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
                                    "fc3_weight", "fc3_bias", "softmax_label"]
    args, outs, _ = net.infer_shape(data=(7, 784))
    shapes = dict(zip(net.list_arguments(), args))
    assert shapes["fc1_weight"] == (128, 784) and shapes["fc2_weight"] == (64, 128)
    assert shapes["fc3_weight"] == (10, 64) and outs == [(7, 10)]


def test_widths_and_classes_are_parameters():
    net = network.get_symbol(num_classes=3, num_hidden=(5, 6, 7))
    shapes = dict(zip(net.list_arguments(), net.infer_shape(data=(2, 20))[0]))
    assert shapes["fc3_weight"] == (7, 6) and shapes["fc4_weight"] == (3, 7)


@pytest.mark.parametrize("classes, hidden", [(1, (4,)), (10, ()), (10, (4, 0))])
def test_bad_shapes_are_rejected(classes, hidden):
    with pytest.raises(ValueError):
        network.get_symbol(classes, hidden)


def test_output_rows_are_probabilities():
    net = network.get_symbol(num_hidden=(8,))
    exe = net.simple_bind(mx.cpu(), data=(4, 784), grad_req="null")
    for array in exe.arg_arrays:
        array[:] = mx.nd.random.uniform(-0.1, 0.1, shape=array.shape)
    probs = exe.forward()[0].asnumpy()
    assert probs.shape == (4, 10) and abs(probs.sum(axis=1) - 1).max() < 1e-5
