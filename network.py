"""The multilayer perceptron from the MXNet.jl MNIST tutorial, as an MXNet symbol."""
import mxnet as mx


def get_symbol(num_classes=10, num_hidden=(128, 64), logits=False, grad_scale=1.0):
    """Return FullyConnected+ReLU layers of the given widths, then fc to num_classes and SoftmaxOutput (or not)."""
    if num_classes < 2 or not num_hidden or min(num_hidden) < 1:
        raise ValueError(f"need num_classes >= 2 and positive hidden widths, got {num_classes}, {num_hidden}")
    x = mx.sym.var("data")
    for i, width in enumerate(num_hidden, start=1):
        x = mx.sym.FullyConnected(x, num_hidden=width, name=f"fc{i}")
        x = mx.sym.Activation(x, act_type="relu", name=f"relu{i}")
    x = mx.sym.FullyConnected(x, num_hidden=num_classes, name=f"fc{len(num_hidden) + 1}")
    if logits:  # for a loss computed outside the graph; the gradient then comes in through backward(out_grads)
        return x
    # normalization='null' (the default) sums the gradient over the batch; the update rescales by 1/batch,
    # unless the trainer folds that factor into grad_scale, which multiplies the gradient backward starts from.
    return mx.sym.SoftmaxOutput(x, label=mx.sym.var("softmax_label"), grad_scale=grad_scale, name="softmax")
