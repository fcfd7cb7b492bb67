"""The loss: SoftmaxOutput's own gradient (builtin), or the hand-written softmax cross-entropy (manual).

Both hand backward the gradient of the batch's summed loss, so the update divides by the batch either way.
"""
import mxnet as mx

import metrics

MODES = ("builtin", "manual")


def training_graph(network, mode):
    """The graph training binds: the head for mode, and the batch's [correct, summed loss] as a second output.

    network ends in SoftmaxOutput. For manual, the head is that layer's input, the logits, and backward is
    given the hand-written gradient. The metrics run inside the graph: no extra dispatch per batch.
    """
    if mode == "builtin":
        head = probs = network
        label = network.get_internals()["softmax_label"]
    elif mode == "manual":
        head = network.get_children()[0]  # SoftmaxOutput's data input: the logits
        label, probs = mx.sym.var("softmax_label"), mx.sym.softmax(head, axis=1)
    else:
        raise ValueError(f"unknown loss mode {mode!r}: use one of {', '.join(MODES)}")
    return mx.sym.Group([head, mx.sym.BlockGrad(metrics.batch_metrics(mx.sym, probs, label))])


def head_gradients(mode):
    """exe -> the out_grads for exe.backward(): none for builtin, the hand-written gradient for manual."""
    if mode == "builtin":
        return lambda exe: None
    if mode == "manual":
        return lambda exe: [softmax_cross_entropy_grad(exe.outputs[0], exe.arg_dict["softmax_label"])]
    raise ValueError(f"unknown loss mode {mode!r}: use one of {', '.join(MODES)}")


def probabilities(outputs, mode):
    """The class probabilities from a training graph's first output, which for manual holds the logits."""
    return outputs if mode == "builtin" else mx.nd.softmax(outputs, axis=1)


def softmax_cross_entropy_grad(logits, labels):
    """Gradient of the batch's summed softmax cross-entropy w.r.t. (N, C) logits: softmax(z) - onehot(y).

    The mean loss's gradient is this divided by N; like SoftmaxOutput, this leaves the 1/N to the update's
    rescale_grad, so both loss modes hand the optimizer the same gradients.
    """
    return mx.nd.softmax(logits, axis=1) - mx.nd.one_hot(labels, depth=logits.shape[1])
