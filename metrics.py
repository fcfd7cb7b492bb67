"""Hand-written accuracy and cross-entropy, usable on NDArrays or inside a symbol graph."""

# The same epsilon as mx.metric.CrossEntropy, so that the two agree on confident mistakes.
_EPS = 1e-12


def batch_metrics(F, probs, labels):
    """Return [number correct, summed cross-entropy] for (N, C) probabilities; F is mx.nd or mx.sym."""
    num_correct = F.sum(F.argmax(probs, axis=1) == labels)
    loss_sum = -F.sum(F.log(F.pick(probs, labels, axis=1) + _EPS))
    # Sums, not means, so batches of any size accumulate exactly; divide by the sample count once.
    return F.concat(num_correct, loss_sum, dim=0)
