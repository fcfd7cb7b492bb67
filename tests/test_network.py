"""network.py: the networks' layers, names and shapes, and the registry."""
import mxnet as mx
import pytest

import network
import train_mnist


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


def test_lenet_is_mxnets_lenet():
    net = network.get_symbol("lenet")
    args, outs, _ = net.infer_shape(data=(7, *network.sample_shape("lenet")))
    shapes = dict(zip(net.list_arguments(), args))
    assert shapes == {
        "data": (7, 1, 28, 28),
        "conv1_weight": (20, 1, 5, 5),
        "conv1_bias": (20,),
        "conv2_weight": (50, 20, 5, 5),
        "conv2_bias": (50,),
        "fc1_weight": (500, 800),
        "fc1_bias": (500,),
        "fc2_weight": (10, 500),
        "fc2_bias": (10,),
        "softmax_label": (7,),
    }
    assert outs == [(7, 10)]
    ops = [
        node.split("_")[0]
        for node in net.get_internals().list_outputs()
        if node.endswith("_output")
    ]
    assert ops == [
        "conv1",
        "tanh1",
        "pool1",
        "conv2",
        "tanh2",
        "pool2",
        "flatten",
        "fc1",
        "tanh3",
        "fc2",
        "softmax",
    ]


def test_widths_and_classes_are_parameters():
    net = network.get_symbol("mlp", num_classes=3, num_hidden=(5, 6, 7))
    shapes = dict(zip(net.list_arguments(), net.infer_shape(data=(2, 20))[0]))
    assert shapes["fc3_weight"] == (7, 6) and shapes["fc4_weight"] == (3, 7)


@pytest.mark.parametrize("hidden", [(), (4, 0), (1 << 17,)])
def test_bad_widths_are_refused_by_the_config_that_checks_them(hidden):
    with pytest.raises(ValueError, match="--num-hidden must be 1 to 16 widths"):
        train_mnist.Config(num_hidden=hidden)


def test_an_unknown_network_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        network.get_symbol("resnet")


def test_output_rows_are_probabilities():
    for name in network.NETWORKS:
        net = network.get_symbol(name, (8,))
        exe = net.simple_bind(mx.cpu(), data=(4, *network.sample_shape(name)), grad_req="null")
        for array in exe.arg_arrays:
            array[:] = mx.nd.random.uniform(-0.1, 0.1, shape=array.shape)
        probs = exe.forward()[0].asnumpy()
        assert probs.shape == (4, 10) and abs(probs.sum(axis=1) - 1).max() < 1e-5, name


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_the_inference_graph_is_the_network_without_its_loss_head(name):
    net = network.get_symbol(name, (8,))
    infer = network.inference_graph(net)
    assert infer.list_arguments() == [a for a in net.list_arguments() if a != "softmax_label"]
    args = {
        a: mx.nd.random.uniform(-0.1, 0.1, shape=s)
        for a, s in zip(
            net.list_arguments(), net.infer_shape(data=(4, *network.sample_shape(name)))[0]
        )
    }
    args["softmax_label"] = mx.nd.zeros(4)
    trained = net.bind(mx.cpu(), args).forward()[0].asnumpy()
    inferred = (
        infer.bind(mx.cpu(), {k: v for k, v in args.items() if k != "softmax_label"})
        .forward()[0]
        .asnumpy()
    )
    assert abs(trained - inferred).max() < 1e-6
