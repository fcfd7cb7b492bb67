"""data.py: the project's MNISTIter, MXNet's own iterator, and counting any iterator's batches."""
import mxnet as mx
import numpy as np
import pytest

import data
from harness import devices
from helpers import config, write_mnist


def test_pixel_floats_span_0_to_1_within_float32_rounding_of_byte_over_255():
    pixels = data.to_floats(np.arange(256, dtype=np.uint8))
    assert pixels.dtype == np.float32 and pixels[0] == 0 and pixels[255] == 1
    # Two roundings (of 1/255, then of the product): at most two float32 steps from the float64
    # quotient.
    assert np.all(np.abs(pixels - np.arange(256) / 255) <= 2 * np.spacing(pixels))
    assert np.all(np.diff(pixels) > 0)


def _epoch(iterator, contexts=1):
    """Each batch's rows, in order."""
    # Gathered on each context by gather_into, and through .data for device 0.
    iterator.reset()
    rows = []
    for batch in iterator:
        parts = []
        for device in range(contexts):
            out_x = mx.nd.zeros(
                (batch.rows, 1), iterator.contexts[device], iterator.images[0].dtype
            )
            out_y = mx.nd.zeros(batch.rows, iterator.contexts[device])
            batch.gather_into(device, 0, batch.rows, out_x, out_y)
            parts.append(out_y.asnumpy().astype(int))
        assert all(np.array_equal(p, parts[0]) for p in parts)
        assert np.array_equal(batch.label[0].asnumpy()[:batch.rows], parts[0])
        assert (
            batch.data[0].shape[0] == iterator.batch_size
            and batch.pad == iterator.batch_size - batch.rows
        )
        rows.append(parts[0])
    return rows


def _numbered(n):
    return np.arange(n, dtype=np.uint8).reshape(n, 1) % 251, np.arange(n)


def test_the_iterator_covers_every_sample_once_with_a_padded_tail():
    images, labels = _numbered(23)
    batches = _epoch(data.MNISTIter(images, labels, 5, rng=np.random.RandomState(1)))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(23)) and list(order) != list(range(23))


def test_the_iterator_is_seeded_and_reshuffles_each_epoch():
    images, labels = _numbered(50)
    a = data.MNISTIter(images, labels, 8, rng=np.random.RandomState(3))
    b = data.MNISTIter(images, labels, 8, rng=np.random.RandomState(3))
    first_a, first_b = np.concatenate(_epoch(a)), np.concatenate(_epoch(b))
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(first_a, np.concatenate(_epoch(a)))
    assert list(np.concatenate(_epoch(data.MNISTIter(images[:10], labels[:10], 4)))) == list(
        range(10)
    )


def test_the_iterator_holds_the_data_on_every_context():
    images, labels = _numbered(30)
    contexts = [mx.cpu(0), mx.cpu(1)]
    iterator = data.MNISTIter(images, labels, 7, contexts, rng=np.random.RandomState(2))
    # Nothing is on a device before the first epoch.
    assert iterator.images is None
    assert len(_epoch(iterator, contexts=2)) == 5
    assert [array.context for array in iterator.images] == contexts


@pytest.mark.parametrize("num_parts", [2, 3])
def test_parts_split_each_global_batch_exactly(num_parts):
    images, labels = _numbered(47)
    whole = _epoch(data.MNISTIter(images, labels, 10, rng=np.random.RandomState(5)))
    parts = [_epoch(data.MNISTIter(images, labels, 10, rng=np.random.RandomState(5),
                                   shard=(p, num_parts))) for p in range(num_parts)]
    for step, batch in enumerate(whole):
        pieces = [part[step] for part in parts]
        # In order, the parts are the single-part batch, and no part is empty.
        assert np.array_equal(np.concatenate(pieces), batch) and min(len(p) for p in pieces) >= 1


def test_shares_are_even_with_the_remainder_first():
    assert devices.shares(10, 0, 1, 3) == [(0, 4), (4, 7), (7, 10)]
    assert devices.shares(10, 1, 2, 2) == [(5, 8), (8, 10)]




def _passes(iterator, epochs):
    counts = []
    for _ in range(epochs):
        iterator.reset()
        counts.append(sum(1 for _ in iterator))
    return counts


@pytest.mark.parametrize("mode", ["pad", "discard", "roll_over"])
@pytest.mark.parametrize("samples, batch", [(10, 4), (12, 4), (3, 4), (23, 5)])
def test_the_batches_of_an_ndarray_iter_are_counted_as_it_yields_them(mode, samples, batch):
    def make():
        return mx.io.NDArrayIter(
            np.arange(samples, dtype=np.float32).reshape(-1, 1),
            np.zeros(samples),
            batch,
            last_batch_handle=mode,
        )
    counted = data.batches_per_epoch(make(), range(1, 6))
    assert list(counted) == [1, 2, 3, 4, 5] and list(counted.values()) == _passes(make(), 5)


def test_any_other_iterator_is_counted_by_one_pass():
    class Three(mx.io.DataIter):
        def __init__(self):
            super().__init__(2)
            self.left = 3

        def reset(self):
            self.left = 3

        def next(self):
            if not self.left:
                raise StopIteration
            self.left -= 1
            return mx.io.DataBatch([mx.nd.zeros((2, 1))], [mx.nd.zeros(2)])
    assert data.batches_per_epoch(Three(), range(4, 7)) == {4: 3, 5: 3, 6: 3}
    images, labels = _numbered(23)
    assert data.batches_per_epoch(data.MNISTIter(images, labels, 5), range(1, 3)) == {1: 5, 2: 5}


def test_mxnets_own_iterator_scores_every_test_sample(tmp_path):
    # 230 test samples in batches of 128 would drop 102 of them: MXNet's MNISTIter drops a short
    # batch.
    write_mnist(str(tmp_path), compress=False)
    train, test = data.iterators(
        config(str(tmp_path), data_iter="mxnet", batch_size=128), [mx.cpu()], None
    )
    assert sum(batch.data[0].shape[0] - batch.pad for batch in test) == 230
    assert sum(1 for _ in train) == 1050 // 128
