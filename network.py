"""The networks, as MXNet symbols; NETWORKS maps each --network name to its builder and its input's shape.

Adding a network is one function here and one line in NETWORKS. The builders import MXNet when called, so that
the command line can check --network before MXNet loads: MXNet reads its thread settings once, as it loads.
"""


def mlp(num_classes=10, num_hidden=(128, 64)):
    """The tutorial's MLP: FullyConnected and ReLU per hidden width, then FullyConnected and SoftmaxOutput."""
    from mxnet import sym
    if num_classes < 2 or not num_hidden or min(num_hidden) < 1:
        raise ValueError(f"need num_classes >= 2 and positive hidden widths, got {num_classes}, {num_hidden}")
    x = sym.var("data")
    for i, width in enumerate(num_hidden, start=1):
        x = sym.FullyConnected(x, num_hidden=width, name=f"fc{i}")
        x = sym.Activation(x, act_type="relu", name=f"relu{i}")
    x = sym.FullyConnected(x, num_hidden=num_classes, name=f"fc{len(num_hidden) + 1}")
    # normalization='null' (the default) sums the gradient over the batch, so the update divides by the batch.
    return sym.SoftmaxOutput(x, label=sym.var("softmax_label"), name="softmax")


def lenet(num_classes=10, num_hidden=None):
    """MXNet's LeNet (example/image-classification/symbols/lenet.py): two tanh convolutions, fc 500, fc."""
    from mxnet import sym
    x = sym.var("data")
    for i, filters in enumerate((20, 50), start=1):
        x = sym.Convolution(x, kernel=(5, 5), num_filter=filters, name=f"conv{i}")
        x = sym.Activation(x, act_type="tanh", name=f"tanh{i}")
        x = sym.Pooling(x, pool_type="max", kernel=(2, 2), stride=(2, 2), name=f"pool{i}")
    x = sym.Flatten(x, name="flatten")
    x = sym.FullyConnected(x, num_hidden=500, name="fc1")
    x = sym.Activation(x, act_type="tanh", name="tanh3")
    x = sym.FullyConnected(x, num_hidden=num_classes, name="fc2")
    return sym.SoftmaxOutput(x, label=sym.var("softmax_label"), name="softmax")


# name -> (builder, the shape of one sample as its data input takes it, its multiply-adds per sample for
# given hidden widths: what cpu.py weighs to choose the threads before MXNet loads)
NETWORKS = {
    "mlp": (mlp, (784,), lambda hidden: sum(a * b for a, b in zip((784, *hidden), (*hidden, 10)))),
    "lenet": (lenet, (1, 28, 28), lambda hidden: 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10),
}


def get_symbol(name="mlp", num_classes=10, num_hidden=(128, 64)):
    """The network NETWORKS names, ending in SoftmaxOutput; num_hidden sets the MLP's widths."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: use one of {', '.join(NETWORKS)}")
    builder, _, _ = NETWORKS[name]
    return builder(num_classes, num_hidden)


def sample_shape(name):
    """The shape of one sample as network name's data input takes it: (784,) or (1, 28, 28)."""
    return NETWORKS[name][1]


def multiply_adds(name, num_hidden):
    """The multiply-adds of one sample's forward pass through network name."""
    return NETWORKS[name][2](tuple(num_hidden))
