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
def test_batch_metrics_match_numpy_and_mx_metric(seed):
    probs, labels = _random_batch(np.random.RandomState(seed))
    correct, loss_sum = metrics.batch_metrics(
        mx.nd, mx.nd.array(probs), mx.nd.array(labels)
    ).asnumpy()
    n = len(labels)
    assert correct == np.sum(probs.argmax(axis=1) == labels)
    np.testing.assert_allclose(
        loss_sum / n, -np.mean(np.log(probs[np.arange(n), labels.astype(int)])), rtol=1e-5
    )

    accuracy, cross_entropy = mx.metric.Accuracy(), mx.metric.CrossEntropy()
    for metric in (accuracy, cross_entropy):
        metric.update([mx.nd.array(labels)], [mx.nd.array(probs)])
    assert float(correct) / n == pytest.approx(accuracy.get()[1], abs=1e-12)
    assert loss_sum / n == pytest.approx(cross_entropy.get()[1], rel=1e-5)


def test_all_wrong_and_all_right_batches():
    probs = mx.nd.array(np.eye(4, dtype=np.float32))
    right, wrong = mx.nd.array([0, 1, 2, 3]), mx.nd.array([1, 2, 3, 0])
    assert metrics.batch_metrics(mx.nd, probs, right).asnumpy()[0] == 4
    correct, loss_sum = metrics.batch_metrics(mx.nd, probs, wrong).asnumpy()
    # A zero probability on the true class costs -log(eps) each, as in mx.metric.CrossEntropy.
    assert correct == 0 and loss_sum == pytest.approx(4 * -np.log(1e-12), rel=1e-5)


def test_symbolic_form_equals_the_imperative_one():
    probs, labels = _random_batch(np.random.RandomState(9), n=31)
    p, y = mx.sym.var("p"), mx.sym.var("y")
    exe = metrics.batch_metrics(mx.sym, p, y).bind(
        mx.cpu(), {"p": mx.nd.array(probs), "y": mx.nd.array(labels)}
    )
    expected = metrics.batch_metrics(mx.nd, mx.nd.array(probs), mx.nd.array(labels)).asnumpy()
    np.testing.assert_allclose(exe.forward()[0].asnumpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("shape", ["(N,)", "(N, 1)", "(1, N)"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8])
def test_every_label_form_mx_metric_takes_gives_its_accuracy_and_cross_entropy(shape, dtype):
    probs, labels = _random_batch(np.random.RandomState(4), n=97)
    labels = labels.astype(dtype).reshape(
        {"(N,)": (-1,), "(N, 1)": (-1, 1), "(1, N)": (1, -1)}[shape]
    )
    accuracy, cross_entropy = mx.metric.Accuracy(), mx.metric.CrossEntropy()
    for metric in (accuracy, cross_entropy):
        metric.update([mx.nd.array(labels, dtype=dtype)], [mx.nd.array(probs)])
    ours = metrics.accuracy(probs, labels)
    assert 0 <= ours <= 1 and ours == pytest.approx(accuracy.get()[1], abs=1e-12)
    correct, loss_sum = metrics.batch_metrics(
        mx.nd, mx.nd.array(probs), mx.nd.array(labels, dtype=dtype)
    ).asnumpy()
    assert float(correct) / 97 == pytest.approx(accuracy.get()[1], abs=1e-12)
    assert loss_sum / 97 == pytest.approx(cross_entropy.get()[1], rel=1e-5)


@pytest.mark.parametrize("labels, expected", [
    (np.zeros((5, 2)), r"labels must hold 5 class indices for 5 predictions, got shape \(5, 2\)"),
    (np.zeros(4), r"labels must hold 5 class indices"),
    (np.zeros((2, 5)), r"labels must hold 5"),
    (np.array(["a"] * 5), "labels must be numbers"),
])
def test_labels_of_another_form_are_one_clear_value_error(labels, expected):
    probs = np.full((5, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match=expected):
        metrics.batch_metrics(
            mx.nd, mx.nd.array(probs), labels if labels.dtype.kind == "U" else mx.nd.array(labels)
        )
