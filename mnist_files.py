"""The four MNIST IDX files: find them, download them into the cache, and read them with every input bounded."""
import gzip
import hashlib
import http.client
import os
import stat
import struct
import tempfile
import urllib.request
import zlib

import numpy as np

from errors import RunError

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

ROWS = COLS = 28
NUM_CLASSES = 10
# No IDX file of this kind holds more samples than this: a header that promises more is refused before
# anything is allocated (MNIST has 60,000; this allows a data set 16 times larger, 750 MB of pixels).
MAX_SAMPLES = 1_000_000
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801
_TIMEOUT_S = 30
_CHUNK = 1 << 20


class DataError(RunError):
    """A data problem the user can fix; its message is one line."""


def default_cache_dir():
    """MXNet's own dataset cache: $MXNET_HOME/datasets/mnist, with ~/.mxnet as MXNET_HOME's default."""
    home = os.environ.get("MXNET_HOME") or os.path.join(os.path.expanduser("~"), ".mxnet")
    return os.path.join(home, "datasets", "mnist")


def read_mnist(data_dir=None, mirrors=MIRRORS, progress=None):
    """Return train_images, train_labels, test_images, test_labels: (N, 784) uint8 and (N,) int32.

    data_dir: the folder to read; None reads $MNIST_DIR if set, else the cache, downloading what it lacks.
    progress(name, done, total) is called as a download goes.
    """
    folder, source = _resolve_folder(data_dir, mirrors, progress)
    arrays = []
    for name in FILES:
        path = locate(folder, name, source)
        arrays.append(read_images(path) if "images" in name else read_labels(path))
    train_images, train_labels, test_images, test_labels = arrays
    for split, images, labels in (("train", train_images, train_labels), ("t10k", test_images, test_labels)):
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} images hold {len(images)} samples but {split} labels hold "
                            f"{len(labels)}; the two files come from different splits")
    return train_images, train_labels, test_images, test_labels


def locate(folder, name, source="the data folder"):
    """The one path that holds name in folder, raw or .gz; refuse two copies that differ, or a non-file."""
    found = [path for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz"))
             if os.path.lexists(path)]
    for path in found:
        _check_regular(path)
    if not found:
        raise DataError(_missing_message(folder, [name], source))
    if len(found) == 2 and _digest(found[0]) != _digest(found[1]):
        raise DataError(f"{found[0]} and {found[1]} hold different data; remove the one that is wrong")
    return found[-1]


def _resolve_folder(data_dir, mirrors, progress):
    """(folder, where its path came from); only the cache is ever downloaded into."""
    # A folder the user named is theirs: read it, never write to it.
    for folder, source in ((data_dir, "--data-dir"), (os.environ.get("MNIST_DIR"), "MNIST_DIR")):
        if folder:
            if not os.path.isdir(folder):
                raise DataError(f"{source} {folder} is not a folder")
            missing = [name for name in FILES if not _present(folder, name)]
            if missing:
                raise DataError(_missing_message(folder, missing, source))
            return folder, source
    folder = default_cache_dir()
    missing = [name for name in FILES if not _present(folder, name)]
    if missing:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the MNIST cache folder {folder}: {err.strerror}") from None
        for name in missing:
            _download(name, folder, mirrors, progress, missing)
    return folder, "the MNIST cache"


def _present(folder, name):
    return any(os.path.lexists(os.path.join(folder, name + ext)) for ext in ("", ".gz"))


def _missing_message(folder, missing, source):
    names = ", ".join(name + ".gz" for name in missing)
    return (f"{len(missing)} of the 4 MNIST files missing from {folder} ({source}): {names}; "
            f"put them there (raw or .gz), or name a folder that has them with --data-dir")


def _check_regular(path):
    # A FIFO would block the read forever and a device would never end: only regular files are data.
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is not a regular file")


def _open(path, compressed=None):
    compressed = path.endswith(".gz") if compressed is None else compressed
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _read_at_most(f, size):
    """Up to size bytes from f, grown chunk by chunk: a file shorter than its header says allocates only what it holds."""
    body = bytearray()
    while len(body) < size:
        chunk = f.read(min(_CHUNK, size - len(body)))
        if not chunk:
            break
        body += chunk
    return body


def _read_idx(path, magic, item_shape):
    """The IDX array in path: header checked, then no more read than it promises, plus one byte."""
    dims = 1 + len(item_shape)
    header_size = 4 * (1 + dims)
    kind = "gzip" if path.endswith(".gz") else "an IDX file"
    try:
        with _open(path) as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path} is truncated: {len(header)} bytes, shorter than its "
                                f"{header_size}-byte IDX header")
            found, count, *shape = struct.unpack(f">{1 + dims}I", header)
            if found != magic:
                raise DataError(f"{path} has magic number 0x{found:08x}, expected 0x{magic:08x}; "
                                "it is not an MNIST IDX file of this kind")
            for axis, (got, want) in enumerate(zip(shape, item_shape), start=1):
                if got != want:
                    raise DataError(f"{path} has size {got} on axis {axis}, expected {want} (28x28 MNIST images)")
            if count > MAX_SAMPLES:
                raise DataError(f"{path} promises {count:,} samples, more than the {MAX_SAMPLES:,} "
                                "this trainer reads; it is not MNIST")
            body_size = count * int(np.prod(item_shape, dtype=np.int64))
            body = _read_at_most(f, body_size)
            extra = f.read(1)  # one byte past the promise tells a longer file, without reading the rest
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read as {kind}: {getattr(err, 'strerror', None) or err}") from None
    if len(body) < body_size:
        raise DataError(f"{path} is truncated: {header_size + len(body)} bytes, its header promises "
                        f"{header_size + body_size}")
    if extra:
        raise DataError(f"{path} is longer than its header says: more than {header_size + body_size} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape((count, *item_shape))


def read_images(path):
    """The (N, 784) uint8 pixels of an IDX image file, raw or .gz; DataError if it is not one."""
    _check_regular(path)
    return _read_idx(path, _IMAGE_MAGIC, (ROWS, COLS)).reshape(-1, ROWS * COLS)


def read_labels(path):
    """The (N,) int32 labels, each in 0..9, of an IDX label file, raw or .gz; DataError if it is not one."""
    _check_regular(path)
    labels = _read_idx(path, _LABEL_MAGIC, ())
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is outside 0..{NUM_CLASSES - 1}")
    return labels.astype(np.int32)


def _digest(path, compressed=None, limit=MAX_SAMPLES * ROWS * COLS + 64):
    """SHA-256 of the file's content (decompressed for .gz), reading at most limit bytes."""
    digest, done = hashlib.sha256(), 0
    try:
        with _open(path, compressed) as f:
            while chunk := f.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DataError(f"{path} is larger than any MNIST file: over {limit:,} bytes")
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    return digest.hexdigest()


def _download(name, folder, mirrors, progress, missing):
    errors = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            _fetch_verified(url, name, folder, progress)
            return
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as err:
            errors.append(f"{url}: {err}")
    last = errors[-1] if errors else "no mirror configured"
    raise DataError(f"could not download MNIST (last error: {last}); "
                    + _missing_message(folder, missing, "the MNIST cache"))


def _fetch_verified(url, name, folder, progress):
    # Written to a temporary file in the target folder and renamed only once the checksum holds,
    # so an interrupted or corrupt download never leaves a file that looks complete.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if done > 64 << 20:  # the largest file is 10 MB compressed
                    raise ValueError(f"more than 64 MB served for {name}.gz")
                if progress:
                    progress(name, done, total)
            if total and done != total:
                raise EOFError(f"connection closed after {done} of {total} bytes")
        digest = _digest(tmp, compressed=True)
        if digest != SHA256[name]:
            raise ValueError(f"SHA-256 of the decompressed content is {digest[:12]}..., expected "
                             f"{SHA256[name][:12]}...")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache is shared like any download
        os.replace(tmp, os.path.join(folder, name + ".gz"))
    except BaseException:
        os.unlink(tmp)
        raise
