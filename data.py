"""MNIST as MXNet data iterators: the project's own, resident on the device, or MXNet's C++ MNISTIter."""
import atexit
import gzip
import os
import shutil
import tempfile

import mxnet as mx
import numpy as np

import mnist_files
from mnist_files import DataError  # noqa: F401 (re-exported: the error every data problem raises)

# A pixel's float is its byte times this: one rounding, as dequantize computes it from the byte on a device.
PIXEL_SCALE = np.float32(1) / np.float32(255)
# Large enough that the test set is scored in one pass; larger sets are scored in chunks of this size.
EVAL_CHUNK = 10_000


def load_mnist(data_dir=None, mirrors=mnist_files.MIRRORS, progress=None, as_bytes=False):
    """Return train_images, train_labels, test_images, test_labels as (N, 784) float32 in [0, 1] and int32.

    as_bytes: the images as their uint8 pixel bytes instead, which to_floats() turns into those floats.
    """
    train_x, train_y, test_x, test_y = mnist_files.read_mnist(data_dir, mirrors, progress)
    if not as_bytes:
        train_x, test_x = to_floats(train_x), to_floats(test_x)
    return train_x, train_y, test_x, test_y


def to_floats(images):
    """uint8 pixel bytes -> float32 in [0, 1]: each byte times PIXEL_SCALE, as a device's dequantize computes it."""
    return images.astype(np.float32) * PIXEL_SCALE


def mnist_iters(arrays, batch_size, contexts, sample_shape, rng, part_index=0, num_parts=1, pixel_bytes=False):
    """The training and test MNISTIters over load_mnist(as_bytes=True)'s arrays, on every context.

    The training set is shuffled by rng each epoch and split into num_parts; pixel_bytes keeps its pixels
    as bytes (a graph that takes bytes must then dequantize them). The test set is float32, in order.
    """
    train_x, train_y, test_x, test_y = arrays
    train = MNISTIter(train_x if pixel_bytes else to_floats(train_x), train_y, batch_size, contexts, sample_shape,
                      rng, part_index, num_parts)
    test = MNISTIter(to_floats(test_x), test_y, min(EVAL_CHUNK, len(test_x)), contexts, sample_shape)
    return train, test


def bound_shapes(num_samples, batch_size, part_index, num_parts, num_contexts, sample_shape):
    """The data shapes that training binds for these samples: each context's share of full and last batches."""
    batches = {batch_size, num_samples % batch_size} - {0}
    return sorted({(end - begin, *sample_shape) for batch in batches
                   for begin, end in shares(batch, part_index, num_parts, num_contexts)})


def batches_per_epoch(train_iter):
    """How many batches train_iter yields per epoch (counted by a pass over it if it cannot say)."""
    if isinstance(train_iter, MNISTIter):
        return -(-train_iter.num_samples // train_iter.global_batch)
    if isinstance(train_iter, mx.io.NDArrayIter):
        return -(-train_iter.num_data // train_iter.batch_size)
    train_iter.reset()
    count = sum(1 for _ in train_iter)
    train_iter.reset()
    return count


def device_bytes(*iterators):
    """What the project's MNISTIters among iterators hold on each device (others hold theirs where they will)."""
    return sum(it.device_bytes for it in iterators if isinstance(it, MNISTIter))


def mxnet_iters(data_dir, batch_size, data_shape, seed, part_index=0, num_parts=1, progress=None):
    """MXNet's own C++ mx.io.MNISTIter over the same files (it reads them uncompressed), and its test iterator."""
    mnist_files.read_mnist(data_dir, progress=progress)  # every file checked, and fetched if need be, first
    folder = _raw_copies(data_dir)
    flat = len(data_shape) == 1
    common = dict(batch_size=batch_size, flat=flat, silent=True)
    train = mx.io.MNISTIter(image=os.path.join(folder, mnist_files.FILES[0]),
                            label=os.path.join(folder, mnist_files.FILES[1]), shuffle=True, seed=seed,
                            num_parts=num_parts, part_index=part_index, **common)
    test = mx.io.MNISTIter(image=os.path.join(folder, mnist_files.FILES[2]),
                           label=os.path.join(folder, mnist_files.FILES[3]), shuffle=False, **common)
    return train, test


def _raw_copies(data_dir):
    """A private folder with the four files uncompressed, as mx.io.MNISTIter reads them; removed at exit."""
    source = data_dir or os.environ.get("MNIST_DIR") or mnist_files.default_cache_dir()
    folder = tempfile.mkdtemp(prefix="mnist-raw-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in mnist_files.FILES:
        path = mnist_files.locate(source, name)
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as src, \
                open(os.path.join(folder, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def shares(batch, worker, num_workers, num_contexts):
    """(begin, end) offsets into a batch for each context of one worker: split evenly, workers then contexts."""
    sizes = _even(batch, num_workers)
    begin = sum(sizes[:worker])
    offsets = []
    for size in _even(sizes[worker], num_contexts):
        offsets.append((begin, begin + size))
        begin += size
    return offsets


def _even(total, parts):
    # The first total % parts parts take one more.
    return [total // parts + (i < total % parts) for i in range(parts)]


class MNISTIter(mx.io.DataIter):
    """A DataIter over arrays held on every device, in batches that gather their rows on the device.

    Each epoch (reset) draws a new order from rng; without rng the order is the arrays' own. With several
    parts (dist_sync workers), each global batch of batch_size is split between the parts, and this iterator
    yields part part_index's share of each. The last batch is padded, as NDArrayIter pads it, by wrapping.
    """

    def __init__(self, images, labels, batch_size, contexts=None, data_shape=None, rng=None, part_index=0,
                 num_parts=1, data_name="data", label_name="softmax_label"):
        share, _ = _part(batch_size, part_index, num_parts)
        super().__init__(share)
        self.contexts = contexts or [mx.cpu()]
        self.sample_shape = tuple(data_shape or images.shape[1:])
        self.rng, self.global_batch, self.part_index, self.num_parts = rng, batch_size, part_index, num_parts
        self.num_samples, self.host = len(images), (images, labels)
        self.provide_data = [mx.io.DataDesc(data_name, (share, *self.sample_shape), images.dtype)]
        self.provide_label = [mx.io.DataDesc(label_name, (share,), np.float32)]
        self.images = self.labels = self.orders = None
        self.cursor = 0

    @property
    def device_bytes(self):
        """What the data takes on each device."""
        images, labels = self.host
        return images.nbytes + 4 * len(labels) + 4 * self.num_samples

    def reset(self):
        if self.images is None:
            # The whole set lives on each device, so each batch is a device-side gather, not a host copy.
            # Uploaded at the first epoch, not before: a run that cannot fit is refused before any of it.
            images, labels = self.host
            self.images = [mx.nd.array(images.reshape(-1, *self.sample_shape), ctx, images.dtype)
                           for ctx in self.contexts]
            self.labels = [mx.nd.array(labels, ctx) for ctx in self.contexts]
        order = self.rng.permutation(self.num_samples) if self.rng is not None else np.arange(self.num_samples)
        # One upload per device per epoch; each batch is then a slice of it, gathered on the device.
        self.orders = [mx.nd.array(order, ctx, np.int32) for ctx in self.contexts]
        self.cursor = 0

    def next(self):
        if self.orders is None:
            self.reset()
        if self.cursor >= self.num_samples:
            raise StopIteration
        size = min(self.global_batch, self.num_samples - self.cursor)
        count, offset = _part(size, self.part_index, self.num_parts)
        batch = MNISTBatch(self, self.cursor + offset, count, size)
        self.cursor += size
        return batch


def _part(batch, part_index, num_parts):
    """(size, offset) of one part's share of a global batch."""
    (begin, end), = shares(batch, part_index, num_parts, 1)
    return end - begin, begin


class MNISTBatch(mx.io.DataBatch):
    """One batch of an MNISTIter: rows start to start + count of the epoch's order.

    global_size: the samples in this batch over all parts. gather_into() puts some of the rows into a device's
    own arrays; data and label gather the whole padded batch on the first device, when first read.
    """

    def __init__(self, source, start, count, global_size):
        self.source, self.start, self.count, self.global_size = source, start, count, global_size
        self.orders = source.orders  # this epoch's, even if the source is reset before the batch is read
        self._data = self._label = None
        super().__init__(None, None, pad=source.batch_size - count, provide_data=source.provide_data,
                         provide_label=source.provide_label)

    def gather_into(self, device, begin, end, data_out, label_out):
        """Gather rows begin to end of this batch on the source's device number device, into the two arrays."""
        source = self.source
        rows = self.orders[device][self.start + begin:self.start + end]
        mx.nd.take(source.images[device], rows, out=data_out)
        mx.nd.take(source.labels[device], rows, out=label_out)

    def _gather(self):
        source = self.source
        rows = np.arange(self.start, self.start + source.batch_size) % source.num_samples  # wrap to pad
        index = mx.nd.take(self.orders[0], mx.nd.array(rows, source.contexts[0], np.int32))
        self._data = [mx.nd.take(source.images[0], index)]
        self._label = [mx.nd.take(source.labels[0], index)]

    @property
    def data(self):
        if self._data is None and self.source is not None:
            self._gather()
        return self._data

    @data.setter
    def data(self, value):
        self._data = value

    @property
    def label(self):
        if self._label is None and self.source is not None:
            self._gather()
        return self._label

    @label.setter
    def label(self, value):
        self._label = value
