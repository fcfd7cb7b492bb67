"""metrics.py against numpy and against mx.metric, imperatively and inside a bound graph."""
import mxnet as mx
import numpy as np
import pytest

import metrics


def _random_batch(rng, n=257, classes=10):
    logits = rng.randn(n, classes).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs.astype(np.float32), rng.randint(0, classes, size=n).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_and_cross_entropy_match_numpy_and_mx_metric(seed):
    probs, labels = _random_batch(np.random.RandomState(seed))
    correct = metrics.accuracy(mx.nd.array(probs), mx.nd.array(labels)).asscalar()
    loss_sum = metrics.cross_entropy(mx.nd.array(probs), mx.nd.array(labels)).asscalar()
    n = len(labels)
    assert correct == np.sum(probs.argmax(axis=1) == labels)
    np.testing.assert_allclose(
        loss_sum / n, -np.mean(np.log(probs[np.arange(n), labels.astype(int)])), rtol=1e-5
    )
    accuracy, cross_entropy = mx.metric.Accuracy(), mx.metric.CrossEntropy()
    for metric in (accuracy, cross_entropy):
        metric.update([mx.nd.array(labels)], [mx.nd.array(probs)])
    assert float(correct) / n == pytest.approx(accuracy.get()[1], abs=1e-12)
    assert float(loss_sum) / n == pytest.approx(cross_entropy.get()[1], rel=1e-5)


def test_the_accuracy_reads_as_d2ls_on_numpy_arrays_too():
    probs, labels = _random_batch(np.random.RandomState(3), n=50)
    assert metrics.accuracy(probs, labels) == np.sum(probs.argmax(axis=1) == labels)


def test_all_wrong_and_all_right_batches_count_0_and_4_and_cost_log_eps():
    probs = mx.nd.array(np.eye(4, dtype=np.float32))
    right, wrong = mx.nd.array([0, 1, 2, 3]), mx.nd.array([1, 2, 3, 0])
    assert metrics.accuracy(probs, right).asscalar() == 4
    assert metrics.accuracy(probs, wrong).asscalar() == 0
    # A zero probability on the true class costs -log(eps) each, as in mx.metric.CrossEntropy.
    loss_sum = metrics.cross_entropy(probs, wrong).asscalar()
    assert loss_sum == pytest.approx(4 * -np.log(1e-12), rel=1e-5)


def test_the_graphs_metrics_output_is_the_imperative_accuracy_and_cross_entropy():
    probs, labels = _random_batch(np.random.RandomState(9), n=31)
    p, y = mx.sym.var("p"), mx.sym.var("y")
    exe = metrics.batch_metrics(p, y).bind(
        mx.cpu(), {"p": mx.nd.array(probs), "y": mx.nd.array(labels)}
    )
    correct, loss_sum = exe.forward()[0].asnumpy()
    assert correct == metrics.accuracy(mx.nd.array(probs), mx.nd.array(labels)).asscalar()
    assert loss_sum == metrics.cross_entropy(mx.nd.array(probs), mx.nd.array(labels)).asscalar()
