"""The networks as MXNet symbols, in a registry, and the loss head that training binds."""
# Adding a network is one function here and one line in NETWORKS. The builders import MXNet when
# called, so that the command line can check --network before MXNet loads, which reads its thread
# settings once, as it loads.
from harness.datasets import DATA, LABEL, NUM_CLASSES


def mlp(num_hidden=(128, 64), num_classes=NUM_CLASSES):
    """The tutorial's MLP: FullyConnected and ReLU per width, then FullyConnected, SoftmaxOutput."""
    from mxnet import sym
    x = sym.var(DATA)
    for i, width in enumerate(num_hidden, start=1):
        x = sym.FullyConnected(x, num_hidden=width, name=f"fc{i}")
        x = sym.Activation(x, act_type="relu", name=f"relu{i}")
    x = sym.FullyConnected(x, num_hidden=num_classes, name=f"fc{len(num_hidden) + 1}")
    # normalization='null' (the default) sums the gradient over the batch: the update divides by it.
    return sym.SoftmaxOutput(x, label=sym.var(LABEL), name="softmax")


def lenet(num_hidden=None, num_classes=NUM_CLASSES):
    """MXNet's LeNet (example/image-classification): two tanh convolutions, fc 500, fc."""
    from mxnet import sym
    x = sym.var(DATA)
    for i, filters in enumerate((20, 50), start=1):
        x = sym.Convolution(x, kernel=(5, 5), num_filter=filters, name=f"conv{i}")
        x = sym.Activation(x, act_type="tanh", name=f"tanh{i}")
        x = sym.Pooling(x, pool_type="max", kernel=(2, 2), stride=(2, 2), name=f"pool{i}")
    x = sym.Flatten(x, name="flatten")
    x = sym.FullyConnected(x, num_hidden=500, name="fc1")
    x = sym.Activation(x, act_type="tanh", name="tanh3")
    x = sym.FullyConnected(x, num_hidden=num_classes, name="fc2")
    return sym.SoftmaxOutput(x, label=sym.var(LABEL), name="softmax")


def _mlp_multiply_adds(hidden):
    return sum(a * b for a, b in zip((784, *hidden), (*hidden, NUM_CLASSES)))


def _lenet_multiply_adds(hidden):
    return 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * NUM_CLASSES


# name -> (builder, one sample's shape as its data input takes it, its multiply-adds per sample for
# given hidden widths: what the thread rule weighs before MXNet loads)
NETWORKS = {
    "mlp": (mlp, (784,), _mlp_multiply_adds),
    "lenet": (lenet, (1, 28, 28), _lenet_multiply_adds),
}


def get_symbol(name="mlp", num_hidden=(128, 64), num_classes=NUM_CLASSES):
    """The network NETWORKS names, ending in SoftmaxOutput; num_hidden sets the MLP's widths."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}")
    return NETWORKS[name][0](tuple(num_hidden), num_classes)


def sample_shape(name):
    """One sample's shape as network name's data input takes it: (784,) or (1, 28, 28)."""
    return NETWORKS[name][1]


def multiply_adds(name, num_hidden):
    """The multiply-adds of one sample's forward pass through network name."""
    return NETWORKS[name][2](tuple(num_hidden))


def training_graph(network, gradient):
    """What training binds: the loss head, and the batch's [correct, summed loss] as an output.

    With the 'manual' gradient, the head is SoftmaxOutput's input, the logits, and backward is
    handed softmax_cross_entropy_grad. The metrics run inside the graph: no dispatch per batch.
    """
    import mxnet as mx

    import metrics
    if gradient == "builtin":
        head = probs = network
        label = network.get_internals()[LABEL]
    elif gradient == "manual":
        head = network.get_children()[0]
        label, probs = mx.sym.var(LABEL), mx.sym.softmax(head, axis=1)
    else:
        raise ValueError(f"unknown gradient {gradient!r}")
    return mx.sym.Group([head, mx.sym.BlockGrad(metrics.batch_metrics(probs, label))])


def inference_graph(network):
    """The network without its loss head, ending in softmax, of the one input: as ONNX takes it."""
    import mxnet as mx
    return mx.sym.softmax(network.get_children()[0], axis=1, name="softmax")


def head_gradients(exe, gradient):
    """The out_grads for exe.backward(): none for 'builtin'; for 'manual', the one written here."""
    if gradient == "builtin":
        return None
    if gradient == "manual":
        return [softmax_cross_entropy_grad(exe.outputs[0], exe.arg_dict[LABEL])]
    raise ValueError(f"unknown gradient {gradient!r}")


def probabilities(outputs, gradient):
    """The class probabilities from a training graph's first output (for 'manual', the logits)."""
    import mxnet as mx
    return outputs if gradient == "builtin" else mx.nd.softmax(outputs, axis=1)


def softmax_cross_entropy_grad(logits, labels):
    """The gradient of the batch's summed cross-entropy w.r.t. (N, C) logits: softmax - onehot.

    labels: N class indices, of any shape that holds them, as mx.metric takes them. The mean loss's
    gradient is this over N; like SoftmaxOutput, this leaves the 1/N to the update's rescale_grad,
    so that both gradients hand the optimizer the same numbers.
    """
    import mxnet as mx
    n = logits.shape[0]
    if labels.size != n:
        raise ValueError(f"labels must hold {n} class indices for {n} rows of logits, "
                         f"got shape {labels.shape}")
    onehot = mx.nd.one_hot(labels.reshape((n,)), depth=logits.shape[1])
    return mx.nd.softmax(logits, axis=1) - onehot
