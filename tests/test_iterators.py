"""train() on any MXNet data iterator: NDArrayIter, MXNet's C++ MNISTIter, a user's own DataIter."""


import mxnet as mx
import numpy as np
import pytest

import data
import train_mnist
from helpers import (
    TRAIN,
    assert_params_close,
    config,
    flags,
    launch,
    load_mnist,
    run_alone,
    saved_params,
    write_mnist,
)


def _ndarray_iters(folder, batch=100, **kwargs):
    train_x, train_y, test_x, test_y = load_mnist(folder)
    # NDArrayIter shuffles with numpy's global RNG: seeded, so that no test depends on those run
    # before it.
    np.random.seed(0)
    return (mx.io.NDArrayIter(train_x, train_y.astype(np.float32), batch, shuffle=True, **kwargs),
            mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 1000))


class CountingIter(mx.io.DataIter):
    """A user's own iterator."""
    # Fixed batches, the last padded with rows that must never count, and its resets.

    def __init__(self, images, labels, batch, pad_with_garbage=True):
        super().__init__(batch)
        self.images, self.labels, self.pad_with_garbage, self.resets = (
            images,
            labels,
            pad_with_garbage,
            0,
        )
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
        # Rows that no metric and no gradient may see.
        if pad and self.pad_with_garbage:
            x = np.concatenate([x, np.full((pad, x.shape[1]), 7.0, np.float32)])
            y = np.concatenate([y, np.full(pad, 9, np.float32)])
        return mx.io.DataBatch(
            [mx.nd.array(x)], [mx.nd.array(y)], pad=pad if self.pad_with_garbage else 0
        )


def test_a_padded_last_batch_is_never_counted_nor_trained_on(synthetic_dir, tmp_path):
    # 1050 samples in batches of 100: the last holds 50 samples and 50 rows of padding.
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    histories = []
    for name, garbage in (("padded", True), ("short", False)):
        iters = (CountingIter(train_x, train_y.astype(np.float32), 100, garbage),
                 CountingIter(test_x, test_y.astype(np.float32), 100, garbage))
        histories.append(
            train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / name)), *iters)
        )
        # reset() at every epoch.
        assert iters[0].resets >= 3
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in histories[0]] == [
        [r[k] for k in figures] for r in histories[1]
    ]
    padded, short = saved_params(tmp_path / "padded", 3), saved_params(tmp_path / "short", 3)
    assert all(np.array_equal(padded[name], short[name]) for name in padded)


def test_ndarray_iter_trains_to_the_accuracy_of_the_built_in_source(synthetic_dir):
    ours = train_mnist.train(config(synthetic_dir))
    theirs = train_mnist.train(config(synthetic_dir), *_ndarray_iters(synthetic_dir))
    assert (
        abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005 and theirs[-1]["test_acc"] > 0.9
    )


def test_mxnets_own_mnist_iterator_trains_to_the_accuracy_of_the_built_in_source(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    # MXNet's MNISTIter reads raw IDX files; ours reads both.
    write_mnist(str(folder), compress=False)
    ours = train_mnist.train(config(str(folder)))
    theirs = train_mnist.train(config(str(folder), data_iter="mxnet"))
    assert (
        abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005 and theirs[-1]["test_acc"] > 0.9
    )


@pytest.mark.parametrize("fast", [True, False])
def test_a_users_iterator_is_split_across_contexts_like_one(synthetic_dir, tmp_path, fast):
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    for name, cpus in (("one", 0), ("two", 2)):
        iters = (
            CountingIter(train_x, train_y.astype(np.float32), 64),
            CountingIter(test_x, test_y.astype(np.float32), 64),
        )
        train_mnist.train(
            config(synthetic_dir, cpus=cpus, fast=fast, model_prefix=str(tmp_path / name)), *iters
        )
    assert_params_close(saved_params(tmp_path / "two", 3), saved_params(tmp_path / "one", 3))


def test_the_built_in_source_is_a_data_iter_that_module_fit_can_use(synthetic_dir):
    train_iter, test_iter = data.iterators(
        config(synthetic_dir, batch_size=100), [mx.cpu()], np.random.RandomState(0)
    )
    import network
    module = mx.mod.Module(network.get_symbol("mlp", (32, 16)), context=mx.cpu())
    module.fit(train_iter, num_epoch=5, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
               initializer=mx.init.Xavier(magnitude=3))
    assert dict(module.score(test_iter, "acc"))["accuracy"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("source", ["ndarray", "mxnet"])
def test_on_real_mnist_every_source_reaches_the_built_in_accuracy_within_half_a_point(
    real_mnist, source
):
    settings = config(real_mnist, num_hidden=(128, 64))
    ours = train_mnist.train(settings)
    if source == "ndarray":
        theirs = train_mnist.train(settings, *_ndarray_iters(real_mnist))
    else:
        theirs = train_mnist.train(config(real_mnist, num_hidden=(128, 64), data_iter="mxnet"))
    assert abs(ours[-1]["test_acc"] - theirs[-1]["test_acc"]) <= 0.005, (ours[-1], theirs[-1])


class ListIter(mx.io.DataIter):
    """The batches of a list, the same each epoch, none padded."""
    # What an iterator yielded, replayed.

    def __init__(self, batches, epochs_of_batches=None):
        super().__init__(batches[0][0].shape[0])
        self.epochs, self.epoch, self.cursor = epochs_of_batches or [batches], -1, 0
        self.provide_data = [mx.io.DataDesc("data", batches[0][0].shape)]
        self.provide_label = [mx.io.DataDesc("softmax_label", (self.batch_size,))]

    def reset(self):
        self.epoch, self.cursor = self.epoch + 1, 0

    def next(self):
        batches = self.epochs[min(self.epoch, len(self.epochs) - 1)]
        if self.cursor >= len(batches):
            raise StopIteration
        x, y = batches[self.cursor]
        self.cursor += 1
        return mx.io.DataBatch([mx.nd.array(x)], [mx.nd.array(y)], pad=0)


def test_the_label_is_taken_by_the_name_the_network_expects(synthetic_dir, tmp_path):
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    y = train_y.astype(np.float32)
    # NDArrayIter sorts its labels by name: 'other' comes first, and a trainer that took label[0]
    # would train on the zeros.
    two = mx.io.NDArrayIter({"data": train_x}, {"softmax_label": y, "other": 0 * y}, 100)
    one = mx.io.NDArrayIter(train_x, y, 100)
    test = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)
    assert [d.name for d in two.provide_label] == ["other", "softmax_label"]
    histories = [
        train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / name)), it, test)
        for name, it in (("two", two), ("one", one))
    ]
    assert histories[0] == [
        dict(r, **{key: a[key] for key in ("epoch_seconds", "train_seconds", "samples_per_second")})
        for r, a in zip(histories[1], histories[0])
    ]
    assert histories[0][-1]["test_acc"] > 0.9


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"label": None}, "the training iterator provides labels label, but not 'softmax_label'"),
        ({}, "the training iterator provides labels none, but not 'softmax_label'"),
    ],
)
def test_an_iterator_without_the_label_is_refused_naming_what_it_provides(
    capsys, synthetic_dir, labels, expected
):
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    it = mx.io.NDArrayIter(
        {"data": train_x}, {name: train_y.astype(np.float32) for name in labels} or None, 100
    )
    test = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)
    with pytest.raises(ValueError, match=expected):
        train_mnist.train(config(synthetic_dir), it, test)


def test_data_is_found_by_name_among_several_arrays(synthetic_dir, tmp_path):
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    y = train_y.astype(np.float32)
    named = mx.io.NDArrayIter({"aux": 0 * train_x, "data": train_x}, {"softmax_label": y}, 100)
    plain = mx.io.NDArrayIter(train_x, y, 100)
    test = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)
    for name, it in (("named", named), ("plain", plain)):
        train_mnist.train(
            config(synthetic_dir, num_epochs=1, model_prefix=str(tmp_path / name)), it, test
        )
    assert all(np.array_equal(a, b) for a, b in zip(saved_params(tmp_path / "named", 1).values(),
                                                     saved_params(tmp_path / "plain", 1).values()))
    unnamed = mx.io.NDArrayIter({"a": train_x, "b": train_x}, {"softmax_label": y}, 100)
    with pytest.raises(ValueError, match="provides data a, b: name the images 'data'"):
        train_mnist.train(config(synthetic_dir, num_epochs=1), unnamed, test)


def test_a_rolled_over_batch_trains_and_counts_every_real_row(synthetic_dir, tmp_path):
    # 1050 samples in batches of 100, rolled over: from epoch 2 on, the first batch holds the 50
    # left over from the epoch before, which NDArrayIter reports as pad, and the 50 first of the new
    # epoch.
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    y = train_y.astype(np.float32)
    replay = mx.io.NDArrayIter(train_x, y, 100, last_batch_handle="roll_over")
    epochs = []
    for _ in range(3):
        replay.reset()
        epochs.append([(b.data[0].asnumpy(), b.label[0].asnumpy()) for b in replay])
    assert [len(e) for e in epochs] == [10, 11, 10]
    rolled = mx.io.NDArrayIter(train_x, y, 100, last_batch_handle="roll_over")
    test = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)
    ours = train_mnist.train(
        config(synthetic_dir, model_prefix=str(tmp_path / "rolled")), rolled, test
    )
    # The trainer counts a user's iterator's batches by one pass, and resets it after: two resets
    # before the first epoch's.
    same = train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / "replayed")),
                             ListIter(epochs[0], epochs[:1] * 2 + epochs), test)
    assert [r["train_loss"] for r in ours] == [r["train_loss"] for r in same]
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            saved_params(tmp_path / "rolled", 3).values(),
            saved_params(tmp_path / "replayed", 3).values(),
        )
    )


def test_mxnets_iterator_refuses_a_batch_that_workers_cannot_share_evenly(synthetic_dir):
    with pytest.raises(ValueError, match="--batch-size 99 is not a multiple of 2"):
        data.iterators(config(synthetic_dir, data_iter="mxnet", batch_size=99).resolved(),
                       [mx.cpu()], np.random.RandomState(0), shard=(0, 2))
    train, _ = data.iterators(config(synthetic_dir, data_iter="mxnet").resolved(), [mx.cpu()],
                              np.random.RandomState(0), shard=(1, 2))
    # Each worker reads its half of the 1050 samples, in its half of each batch of 100.
    assert train.provide_data[0].shape[0] == 50 and sum(1 for _ in train) == 10


@pytest.mark.slow
def test_mxnets_iterator_over_two_workers_takes_the_global_batch_of_one_process(synthetic_dir,
                                                                                tmp_path):
    command = TRAIN + ["--data-dir", synthetic_dir, *flags(data_iter="mxnet", num_epochs=1,
                                                          disp_batches=1, threads=1)]
    one = run_alone(command, timeout=300)
    two = run_alone(launch(["-n", "2", "-s", "1", "--timeout", "280"],
                           command + ["--kv-store", "dist_sync"]), timeout=300)

    def batches(out):
        return [line.split()[3] for line in out.replace("\r", "\n").splitlines()
                if line.startswith("epoch ") and " batch " in line]
    # 1050 samples, batches of 100: 10 steps; two workers, each 50 of each batch, step 10 times.
    assert batches(one)[-1] == batches(two)[-1] == "10/10"


@pytest.mark.parametrize("wrap", ["prefetching", "prefetching-twice"])
def test_a_rolled_over_batch_inside_a_prefetching_iterator_trains_every_real_row(
        synthetic_dir, tmp_path, wrap):
    # The same rows and steps as the NDArrayIter itself: its leftovers, reported as the next
    # epoch's pad, are trained, and its batches are counted without a pass that moves its cursor.
    train_x, train_y, test_x, test_y = load_mnist(synthetic_dir)
    y = train_y.astype(np.float32)
    test = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)

    def rolled():
        return mx.io.NDArrayIter(train_x, y, 100, last_batch_handle="roll_over")
    wrapped = mx.io.PrefetchingIter(rolled())
    if wrap == "prefetching-twice":
        wrapped = mx.io.PrefetchingIter(wrapped)
    histories = [train_mnist.train(config(synthetic_dir, model_prefix=str(tmp_path / name)), it,
                                   test)
                 for name, it in (("bare", rolled()), ("wrapped", wrapped))]
    assert [r["train_loss"] for r in histories[0]] == [r["train_loss"] for r in histories[1]]
    bare, wrapped = (saved_params(tmp_path / name, 3) for name in ("bare", "wrapped"))
    assert all(np.array_equal(bare[name], wrapped[name]) for name in bare)


def test_a_resize_iterator_is_counted_at_its_size():
    inner = mx.io.NDArrayIter(np.zeros((10, 1), np.float32), np.zeros(10), 4)
    assert data.batches_per_epoch(mx.io.ResizeIter(inner, 7), range(1, 3)) == {1: 7, 2: 7}
