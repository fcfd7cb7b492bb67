"""train() on any MXNet data iterator: NDArrayIter, MXNet's C++ MNISTIter, a user's own DataIter."""
import os

import mxnet as mx
import numpy as np
import pytest

import data
import train_mnist
from helpers import REAL_MNIST, assert_params_close, saved_params, write_mnist


def _config(folder, **overrides):
    settings = dict(data_dir=folder, num_epochs=3, num_hidden=(32, 16), disp_batches=0, plot_dir="none")
    settings.update(overrides)
    return train_mnist.Config(**settings)


def _ndarray_iters(folder, batch=100, **kwargs):
    train_x, train_y, test_x, test_y = data.load_mnist(folder)
    return (mx.io.NDArrayIter(train_x, train_y.astype(np.float32), batch, shuffle=True, **kwargs),
            mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 1000))



class CountingIter(mx.io.DataIter):
    """A user's own iterator: fixed batches, the last padded with rows that must never count, and its resets."""

    def __init__(self, images, labels, batch, pad_with_garbage=True):
        super().__init__(batch)
        self.images, self.labels, self.pad_with_garbage, self.resets = images, labels, pad_with_garbage, 0
        self.provide_data = [mx.io.DataDesc("data", (batch, images.shape[1]))]
        self.provide_label = [mx.io.DataDesc("softmax_label", (batch,))]
        self.cursor = 0

    def reset(self):
        self.resets, self.cursor = self.resets + 1, 0

    def next(self):
        if self.cursor >= len(self.images):
            raise StopIteration
        x = self.images[self.cursor:self.cursor + self.batch_size]
        y = self.labels[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        pad = self.batch_size - len(x)
        if pad and self.pad_with_garbage:  # rows no metric and no gradient may see
            x = np.concatenate([x, np.full((pad, x.shape[1]), 7.0, np.float32)])
            y = np.concatenate([y, np.full(pad, 9, np.float32)])
        return mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)], pad=pad if self.pad_with_garbage else 0)


def test_a_padded_last_batch_is_never_counted_nor_trained_on(synthetic_dir, tmp_path):
    # 1050 samples in batches of 100: the last holds 50 samples and 50 rows of padding.
    train_x, train_y, test_x, test_y = data.load_mnist(synthetic_dir)
    histories = []
    for name, garbage in (("padded", True), ("short", False)):
        iters = (CountingIter(train_x, train_y.astype(np.float32), 100, garbage),
                 CountingIter(test_x, test_y.astype(np.float32), 100, garbage))
        histories.append(train_mnist.train(_config(synthetic_dir, model_prefix=str(tmp_path / name)), *iters))
        assert iters[0].resets >= 3  # reset() at every epoch
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in histories[0]] == [[r[k] for k in figures] for r in histories[1]]
    padded, short = saved_params(tmp_path / "padded", 3), saved_params(tmp_path / "short", 3)
    assert all(np.array_equal(padded[name], short[name]) for name in padded)


def test_ndarray_iter_trains_to_the_accuracy_of_the_built_in_source(synthetic_dir):
    ours = train_mnist.train(_config(synthetic_dir))
    theirs = train_mnist.train(_config(synthetic_dir), *_ndarray_iters(synthetic_dir))
    assert abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005 and theirs[-1]["test_acc"] > 0.9


def test_mxnets_own_mnist_iterator_trains_to_the_accuracy_of_the_built_in_source(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_mnist(str(folder), compress=False)  # MXNet's MNISTIter reads raw IDX files; ours reads both
    ours = train_mnist.train(_config(str(folder)))
    theirs = train_mnist.train(_config(str(folder), data_iter="mxnet"))
    assert abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005 and theirs[-1]["test_acc"] > 0.9


@pytest.mark.parametrize("fast", [True, False])
def test_a_users_iterator_is_split_across_contexts_like_one(synthetic_dir, tmp_path, fast):
    train_x, train_y, test_x, test_y = data.load_mnist(synthetic_dir)
    for name, cpus in (("one", 0), ("two", 2)):
        iters = (CountingIter(train_x, train_y.astype(np.float32), 64), CountingIter(test_x, test_y.astype(np.float32), 64))
        train_mnist.train(_config(synthetic_dir, cpus=cpus, fast=fast, model_prefix=str(tmp_path / name)), *iters)
    assert_params_close(saved_params(tmp_path / "two", 3), saved_params(tmp_path / "one", 3))


def test_the_built_in_source_is_a_data_iter_that_module_fit_can_use(synthetic_dir):
    arrays = data.load_mnist(synthetic_dir, as_bytes=True)
    train_iter, test_iter = data.mnist_iters(arrays, 100, [mx.cpu()], (784,), np.random.RandomState(0))
    import network
    module = mx.mod.Module(network.get_symbol("mlp", 10, (32, 16)), context=mx.cpu())
    module.fit(train_iter, num_epoch=5, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
               initializer=mx.init.Xavier(magnitude=3))
    assert dict(module.score(test_iter, "acc"))["accuracy"] > 0.9


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (set MNIST_DIR)")
@pytest.mark.parametrize("source", ["ndarray", "mxnet"])
def test_on_real_mnist_every_source_reaches_the_built_in_accuracy_within_half_a_point(source, tmp_path):
    config = _config(REAL_MNIST, num_hidden=(128, 64))
    ours = train_mnist.train(config)
    if source == "ndarray":
        theirs = train_mnist.train(config, *_ndarray_iters(REAL_MNIST))
    else:
        theirs = train_mnist.train(_config(REAL_MNIST, num_hidden=(128, 64), data_iter="mxnet"))
    assert abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005, (ours[-1], theirs[-1])
