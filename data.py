"""MNIST: find or download the four IDX files, validate them, and batch them on the device."""
import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.request
import zlib

import mxnet as mx
import numpy as np

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# SHA-256 of each file's decompressed bytes, so a re-gzipped copy still verifies.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Tried in order; each serves FILES[i] + ".gz".
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/dataset/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801
_ROWS = _COLS = 28
_NUM_CLASSES = 10
_TIMEOUT_S = 30
# A pixel's float is its byte times this: one rounding, as dequantize computes it from the byte on a device.
PIXEL_SCALE = np.float32(1) / np.float32(255)


class DataError(Exception):
    """A data problem the user can fix; its message is one line."""


def load_mnist(data_dir=None, mirrors=MIRRORS, progress=None, as_bytes=False):
    """Return train_images, train_labels, test_images, test_labels as (N, 784) float32 in [0, 1] and int32.

    as_bytes: the images as their uint8 pixel bytes instead, which to_floats() turns into those floats.
    """
    folder = _resolve_folder(data_dir, mirrors, progress)
    train_images = _read_images(_find(folder, FILES[0]))
    train_labels = _read_labels(_find(folder, FILES[1]))
    test_images = _read_images(_find(folder, FILES[2]))
    test_labels = _read_labels(_find(folder, FILES[3]))
    for split, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} images hold {len(images)} samples but {split} labels hold "
                            f"{len(labels)}; the two files come from different splits")
    if not as_bytes:
        train_images, test_images = to_floats(train_images), to_floats(test_images)
    return train_images, train_labels, test_images, test_labels


def to_floats(images):
    """uint8 pixel bytes -> float32 in [0, 1]: each byte times PIXEL_SCALE, as a device's dequantize computes it."""
    return images.astype(np.float32) * PIXEL_SCALE


def epoch_batches(num_samples, batch_size, contexts, rng=None, worker=0, num_workers=1):
    """Yield, per global batch, one index array per context: its part of this worker's share of the batch.

    The whole epoch's order (shuffled by rng if given) is the same on every worker, so the workers together,
    and the contexts of each, cover every global batch exactly once; the last batch may be short.
    """
    order = rng.permutation(num_samples) if rng is not None else np.arange(num_samples)
    # One upload per context per epoch; each batch is then a view, gathered on the device by the caller.
    orders = [mx.nd.array(order, ctx=ctx, dtype=np.int32) for ctx in contexts]
    for start in range(0, num_samples, batch_size):
        parts = shares(min(batch_size, num_samples - start), worker, num_workers, len(contexts))
        yield [order_on[start + begin:start + end] for order_on, (begin, end) in zip(orders, parts)]


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


def default_cache_dir():
    """MXNet's own dataset cache: $MXNET_HOME/datasets/mnist, with ~/.mxnet as MXNET_HOME's default."""
    home = os.environ.get("MXNET_HOME") or os.path.join(os.path.expanduser("~"), ".mxnet")
    return os.path.join(home, "datasets", "mnist")


def _resolve_folder(data_dir, mirrors, progress):
    # A folder the user named is theirs: read it, never write to it. Only the cache is downloaded into.
    explicit = data_dir or os.environ.get("MNIST_DIR")
    if explicit:
        if not os.path.isdir(explicit):
            raise DataError(f"data folder {explicit} is not a folder")
        missing = [name for name in FILES if _existing(explicit, name) is None]
        if missing:
            raise DataError(_missing_message(explicit, missing))
        return explicit
    folder = default_cache_dir()
    missing = [name for name in FILES if _existing(folder, name) is None]
    if missing:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the MNIST cache folder {folder}: {err.strerror}") from None
        for name in missing:
            _download(name, folder, mirrors, progress)
    return folder


def _missing_message(folder, missing):
    return (f"MNIST files missing from {folder}: {', '.join(n + '[.gz]' for n in missing)}; put the four files "
            f"{', '.join(FILES)} (raw or .gz) there, or point --data-dir / MNIST_DIR at a folder that has them")


def _existing(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _find(folder, name):
    path = _existing(folder, name)
    if path is None:
        raise DataError(_missing_message(folder, [name]))
    return path


def _read_bytes(path):
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read as {'gzip' if path.endswith('.gz') else 'an IDX file'}: "
                        f"{getattr(err, 'strerror', None) or err}") from None


def _parse_idx(path, raw, magic, dims):
    header = 4 * (1 + len(dims))
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header}-byte IDX header")
    found, *shape = struct.unpack(f">{1 + len(dims)}I", raw[:header])
    if found != magic:
        raise DataError(f"{path} has magic number 0x{found:08x}, expected 0x{magic:08x}; "
                        "it is not an MNIST IDX file of this kind")
    for axis, (got, want) in enumerate(zip(shape[1:], dims[1:]), start=1):
        if got != want:
            raise DataError(f"{path} has size {got} on axis {axis}, expected {want} (28x28 MNIST images)")
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {kind}: {len(raw)} bytes, its header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_images(path):
    pixels = _parse_idx(path, _read_bytes(path), _IMAGE_MAGIC, (None, _ROWS, _COLS))
    return pixels.reshape(len(pixels), _ROWS * _COLS)


def _read_labels(path):
    labels = _parse_idx(path, _read_bytes(path), _LABEL_MAGIC, (None,))
    if labels.size and labels.max() >= _NUM_CLASSES:
        bad = int(np.argmax(labels >= _NUM_CLASSES))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is outside 0..{_NUM_CLASSES - 1}")
    return labels.astype(np.int32)


def _download(name, folder, mirrors, progress):
    errors = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            _fetch_verified(url, name, folder, progress)
            return
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as err:
            errors.append(f"{url}: {err}")
    raise DataError(f"could not download {name}.gz from any mirror ({len(errors)} tried; last: "
                    f"{errors[-1] if errors else 'none configured'}). "
                    + _missing_message(folder, [name]))


def _fetch_verified(url, name, folder, progress):
    # Write to a temporary file in the target folder and rename only once the checksum holds,
    # so an interrupted or corrupt download never leaves a file that looks complete.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(name, done, total)
            if total and done != total:
                raise EOFError(f"connection closed after {done} of {total} bytes")
        with gzip.open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != SHA256[name]:
            raise ValueError(f"SHA-256 of the decompressed content is {digest[:12]}..., expected "
                             f"{SHA256[name][:12]}...")
        os.replace(tmp, os.path.join(folder, name + ".gz"))
    except BaseException:
        os.unlink(tmp)
        raise
