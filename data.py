"""The data as MXNet iterators: the project's MNISTIter, resident on the devices, or MXNet's own."""
import os

import mxnet as mx
import numpy as np

import network
from harness import checks, datasets, devices, idx_files, memory, report
from harness.errors import ConfigError

# A pixel's float is its byte times this: one rounding.
PIXEL_SCALE = np.float32(1) / np.float32(255)
# Large enough that the test set is scored in one pass; larger sets are scored in chunks of this.
EVAL_CHUNK = 10_000


def iterators(config, contexts, rng, shard=(0, 1), log=None):
    """The training and test iterators of config's dataset: MNISTIters on contexts, or MXNet's.

    rng shuffles the training set each epoch; shard is (this worker's index, the number of workers),
    who split every global batch of config.batch_size. log(line) shows downloads.
    """
    dataset = datasets.DATASETS[config.dataset]
    paths = idx_files.find(dataset, config.data_dir or None, progress=report.download_progress(log))
    counts = idx_files.sample_counts(paths)
    checks.check_batch(config.batch_size, counts[0], shard[1] * len(contexts))
    # What the data takes in memory, from the headers alone: refused before any of it is read.
    memory.check(memory.data_needs(counts[0], counts[2], len(contexts), config.data_iter))
    *arrays, digests = idx_files.read(paths, dataset)
    shape = (-1, *network.sample_shape(config.network))
    if config.data_iter == "mxnet":
        # Each worker's MXNet iterator reads its own part of the set, in its share of each batch.
        if config.batch_size % shard[1]:
            raise ConfigError(
                f"--data-iter mxnet gives each of the {shard[1]} workers an equal share of each "
                f"batch: --batch-size {config.batch_size} is not a multiple of {shard[1]}")
        train, test = mxnet_iters(paths, config.batch_size // shard[1], shape[1:], config.seed,
                                  shard)
    elif config.data_iter == "mnist":
        train_x, train_y, test_x, test_y = arrays
        train = MNISTIter(train_x.reshape(shape), train_y, config.batch_size, contexts, rng, shard)
        test = MNISTIter(test_x.reshape(shape), test_y, min(EVAL_CHUNK, len(test_x)), contexts)
    else:
        raise ValueError(f"unknown --data-iter {config.data_iter!r}")
    train.digests = test.digests = digests
    return train, test


def load_mnist(data_dir=None, dataset="mnist"):
    """(train_images, train_labels, test_images, test_labels) of a data set, as numpy arrays.

    Images are (N, 784) float32 in [0, 1], made of the bytes by to_floats, as training sees them;
    labels are the stored class indices. data_dir: the folder of the four files (None: MNIST_DIR
    for mnist, else the data set's cache, downloading what is missing).
    """
    chosen = datasets.DATASETS[dataset]
    train_x, train_y, test_x, test_y, _ = idx_files.read(idx_files.find(chosen, data_dir), chosen)
    return to_floats(train_x), train_y, to_floats(test_x), test_y


def to_floats(images):
    """uint8 pixel bytes -> float32 in [0, 1]: each byte times PIXEL_SCALE."""
    return images.astype(np.float32) * PIXEL_SCALE


def batches_per_epoch(train_iter, epochs):
    """epoch -> the batches train_iter yields in it, for each of epochs (a range), from now on.

    The project's MNISTIter and NDArrayIter are counted from their settings, with the short last
    batch that each mode keeps, pads, drops or rolls over, also inside a PrefetchingIter; a
    ResizeIter yields its size; any other iterator is counted by one pass, taken as every epoch's.
    """
    wrappers = devices.chain(train_iter)
    resized = [it for it in wrappers if isinstance(it, mx.io.ResizeIter)]
    alone = all(len(it.iters) == 1 for it in wrappers if isinstance(it, mx.io.PrefetchingIter))
    if isinstance(train_iter, MNISTIter):
        counts = [-(-train_iter.num_samples // train_iter.global_batch)] * len(epochs)
    elif resized:
        counts = [resized[0].size] * len(epochs)
    elif alone and isinstance(wrappers[-1], mx.io.NDArrayIter):
        counts = _ndarray_iter_batches(wrappers[-1], len(epochs))
    else:
        train_iter.reset()
        counts = [sum(1 for _ in train_iter)] * len(epochs)
        train_iter.reset()
    return dict(zip(epochs, counts))


def _ndarray_iter_batches(it, num_epochs):
    """NDArrayIter's batches in each epoch, by its own cursor's arithmetic: reset, then next."""
    size, total, cursor, counts = it.batch_size, it.num_data, it.cursor, []
    for _ in range(num_epochs):
        rolled = it.last_batch_handle == "roll_over" and total - size < cursor < total
        cursor = cursor - total - size if rolled else -size
        count = 0
        while True:
            cursor += size
            if cursor >= total:
                break
            first_rolled = it.last_batch_handle == "roll_over" and -size < cursor < 0
            padded = it.last_batch_handle == "pad" and cursor + size > total
            # A short batch that is neither padded nor rolled over ends the epoch, unyielded.
            if not (first_rolled or padded) and min(cursor + size, total) - cursor != size:
                break
            count += 1
        counts.append(count)
    return counts


def mxnet_iters(paths, batch_size, sample_shape, seed, shard=(0, 1)):
    """MXNet's own C++ mx.io.MNISTIter over raw copies of the files of paths, and a test one.

    With several workers, shard = (index, count): each reads its own part of the training set,
    batch_size samples at a time (its share of each batch). MXNet's iterator drops a short last
    batch, so the test set is read in the largest batch up to EVAL_CHUNK that divides it: every
    test sample is scored.
    """
    folder = idx_files.raw_copies(paths)
    try:
        raw = [os.path.join(folder, name) for name in datasets.FILES]
        flat = len(sample_shape) == 1
        test_count = idx_files.sample_counts(paths)[2]
        test_batch = max(d for d in range(1, min(EVAL_CHUNK, test_count) + 1)
                         if test_count % d == 0)
        train = mx.io.MNISTIter(image=raw[0], label=raw[1], batch_size=batch_size, flat=flat,
                                silent=True, shuffle=True, seed=seed, part_index=shard[0],
                                num_parts=shard[1])
        test = mx.io.MNISTIter(image=raw[2], label=raw[3], batch_size=test_batch, flat=flat,
                               silent=True, shuffle=False)
    finally:
        # MXNet's iterator reads its files as it is made: the copies are not needed past here.
        idx_files.remove_raw_copies(folder)
    return train, test


class MNISTIter(mx.io.DataIter):
    """A DataIter over arrays held on every device, whose batches gather their rows there.

    images are (N, *sample_shape), as the network's data input takes a sample: uint8 bytes, made
    floats (times PIXEL_SCALE) on upload, or floats. Each epoch (reset) draws a new order from
    rng; without rng, the order is the arrays' own. With several workers, shard = (index, count)
    splits each global batch of batch_size between them, and this iterator yields worker index's
    share. Read as a plain DataIter, the last batch is padded by wrapping around, as NDArrayIter
    pads it.
    """

    def __init__(self, images, labels, batch_size, contexts=None, rng=None, shard=(0, 1)):
        (begin, end), = devices.shares(batch_size, shard[0], shard[1], 1)
        super().__init__(end - begin)
        self.contexts = contexts or [mx.cpu()]
        self.rng, self.global_batch, self.shard = rng, batch_size, shard
        self.num_samples, self.host = len(images), (images, labels)
        self.digests = None
        self.provide_data = [mx.io.DataDesc(datasets.DATA, (self.batch_size, *images.shape[1:]),
                                            np.float32)]
        self.provide_label = [mx.io.DataDesc(datasets.LABEL, (self.batch_size,), np.float32)]
        self.images = self.labels = self.orders = None
        self.cursor = 0

    @property
    def device_bytes(self):
        """What the data takes on each device: its floats, labels and order."""
        images, labels = self.host
        return 4 * (images.size + len(labels) + self.num_samples)

    def reset(self):
        if self.images is None:
            # The whole set lives on each device, so each batch is a device-side gather, not a host
            # copy. Uploaded at the first epoch, not before: a run that cannot fit is refused first.
            images, labels = self.host
            if images.dtype == np.uint8:
                images = to_floats(images)
            self.images = [mx.nd.array(images, ctx, np.float32) for ctx in self.contexts]
            self.labels = [mx.nd.array(labels, ctx) for ctx in self.contexts]
        count = self.num_samples
        order = self.rng.permutation(count) if self.rng is not None else np.arange(count)
        # One upload per device per epoch; each batch is then a slice of it, gathered on the device.
        self.orders = [mx.nd.array(order, ctx, np.int32) for ctx in self.contexts]
        self.cursor = 0

    def next(self):
        if self.orders is None:
            self.reset()
        if self.cursor >= self.num_samples:
            raise StopIteration
        size = min(self.global_batch, self.num_samples - self.cursor)
        (begin, end), = devices.shares(size, self.shard[0], self.shard[1], 1)
        batch = MNISTBatch(self, self.cursor + begin, end - begin, size)
        self.cursor += size
        return batch


class MNISTBatch(mx.io.DataBatch):
    """One batch of an MNISTIter: positions start to start + rows of the epoch's order.

    samples: the batch's samples over all workers. gather_into() puts some of the rows into a
    device's own arrays; data and label gather the whole padded batch on the first device.
    """

    def __init__(self, source, start, rows, samples):
        self.source, self.start, self.rows, self.samples = source, start, rows, samples
        # This epoch's, even if the source is reset before the batch is read.
        self.orders = source.orders
        self._data = self._label = None
        super().__init__(None, None, pad=source.batch_size - rows, provide_data=source.provide_data,
                         provide_label=source.provide_label)

    def gather_into(self, device, begin, end, data_out, label_out):
        """Gather rows begin to end of this batch into data_out and label_out, on that device."""
        source = self.source
        rows = self.orders[device][self.start + begin:self.start + end]
        mx.nd.take(source.images[device], rows, out=data_out)
        mx.nd.take(source.labels[device], rows, out=label_out)

    def _gather(self):
        source = self.source
        # Wrapped around to pad, as NDArrayIter pads.
        rows = np.arange(self.start, self.start + source.batch_size) % source.num_samples
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
