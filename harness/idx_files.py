"""A data set's four IDX files: found, downloaded into the cache, read with every input bounded."""
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

from harness.datasets import COLS, FILES, MNIST, NUM_CLASSES, ROWS
from harness.errors import DataError

# No IDX file of this kind holds more samples than this: a header that promises more is refused
# before anything is allocated (MNIST has 60,000; this allows a data set 16 times larger, 750 MB of
# pixels).
MAX_SAMPLES = 1_000_000
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801
_TIMEOUT_S = 30
_CHUNK = 1 << 20
# The largest file of these data sets is under 30 MB compressed.
_MAX_DOWNLOAD = 64 << 20


def default_cache_dir(dataset=MNIST):
    """MXNet's own dataset cache."""
    # $MXNET_HOME/datasets/NAME, with ~/.mxnet as MXNET_HOME's default.
    home = os.environ.get("MXNET_HOME") or os.path.join(os.path.expanduser("~"), ".mxnet")
    return os.path.join(home, "datasets", dataset.folder)


def find(dataset=MNIST, data_dir=None, mirrors=None, progress=None):
    """The four files' paths, in FILES order."""
    # In data_dir, else $MNIST_DIR (MNIST only), else the cache.
    # Only the cache is ever written to: what it lacks is downloaded from mirrors (the dataset's own
    # by default); progress(name, done, total) is called as a download goes.
    folder, source = _resolve_folder(dataset, data_dir, mirrors, progress)
    return [locate(folder, name, source) for name in FILES]


def sample_counts(paths):
    """The sample count each file's header promises, read before any body, to size the run first."""
    counts = []
    for path, name in zip(paths, FILES):
        _check_regular(path)
        count, _ = _read_header(path, *_kind(name))
        counts.append(count)
    return counts


def read(paths):
    """(train_images, train_labels, test_images, test_labels, digests) from find()'s files."""
    # Images are (N, 784) uint8, labels (N,) int32 in 0..9; digests maps each file's name to the
    # SHA-256 of its decompressed bytes, which identifies the data a checkpoint was trained on.
    arrays, digests = [], {}
    for path, name in zip(paths, FILES):
        array, digests[name] = (_read_images if "images" in name else _read_labels)(path)
        arrays.append(array)
    train_images, train_labels, test_images, test_labels = arrays
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("t10k", test_images, test_labels),
    ):
        if len(images) != len(labels):
            raise DataError(
                f"{os.path.dirname(paths[0])}: {split} images hold {len(images)} samples but "
                f"{split} labels hold {len(labels)}; the two files come from different splits"
            )
        _check_content(split, images, labels, paths)
    return train_images, train_labels, test_images, test_labels, digests


def read_images(path):
    """The (N, 784) uint8 pixels of an IDX image file, raw or .gz; DataError if it is not one."""
    return _read_images(path)[0]


def read_labels(path):
    """The (N,) int32 labels, each in 0..9, of an IDX label file, raw or .gz."""
    # DataError if it is not one.
    return _read_labels(path)[0]


def locate(folder, name, source="the data folder"):
    """The one path that holds name in folder, raw or .gz."""
    # Refuse two copies that differ, or a non-file.
    found = [path for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz"))
             if os.path.lexists(path)]
    for path in found:
        _check_regular(path)
    if not found:
        raise DataError(_missing_message(folder, [name], source))
    if len(found) == 2 and _digest(found[0]) != _digest(found[1]):
        raise DataError(
            f"{found[0]} and {found[1]} hold different data; remove the one that is wrong"
        )
    return found[-1]


def _check_content(split, images, labels, paths):
    # Valid in form, but nothing a classifier can learn from or be scored on.
    folder = os.path.dirname(paths[0])
    if not len(images):
        raise DataError(f"{folder}: the {split} files hold no samples")
    if images.min() == images.max():
        raise DataError(f"{folder}: every {split} image is the same flat grey ({images.min()}): "
                        "the images hold no picture")
    if split == "train" and labels.min() == labels.max():
        raise DataError(
            f"{folder}: every training label is {labels.min()}: one class is nothing to learn"
        )


def _kind(name):
    return (_IMAGE_MAGIC, (ROWS, COLS)) if "images" in name else (_LABEL_MAGIC, ())


def _resolve_folder(dataset, data_dir, mirrors, progress):
    """(folder, where its path came from); only the cache is ever downloaded into."""
    # A folder the user named is theirs: read it, never write to it.
    named = [(data_dir, "--data-dir")] + ([(os.environ.get("MNIST_DIR"), "MNIST_DIR")]
                                          if dataset is MNIST else [])
    for folder, source in named:
        if folder:
            if not os.path.isdir(folder):
                raise DataError(f"{source} {folder} is not a folder")
            missing = [name for name in FILES if not _present(folder, name)]
            if missing:
                raise DataError(_missing_message(folder, missing, source))
            return folder, source
    folder = default_cache_dir(dataset)
    missing = [name for name in FILES if not _present(folder, name)]
    if missing:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the {dataset.name} cache folder {folder}: "
                            f"{err.strerror}") from None
        for name in missing:
            _download(dataset, name, folder, mirrors or dataset.mirrors, progress)
    return folder, f"the {dataset.name} cache"


def _present(folder, name):
    return any(os.path.lexists(os.path.join(folder, name + ext)) for ext in ("", ".gz"))


def _missing_message(folder, missing, source):
    names = ", ".join(name + ".gz" for name in missing)
    return (f"{len(missing)} of the 4 data files missing from {folder} ({source}): {names}; "
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
    """Up to size bytes from f, chunk by chunk."""
    # A file shorter than its header says allocates what it holds.
    body = bytearray()
    while len(body) < size:
        chunk = f.read(min(_CHUNK, size - len(body)))
        if not chunk:
            break
        body += chunk
    return body


def _header(f, path, magic, item_shape):
    """(count, header bytes) of an open IDX file."""
    # Checked against what this kind of file must hold.
    header_size = 4 * (2 + len(item_shape))
    header = f.read(header_size)
    if len(header) < header_size:
        raise DataError(f"{path} is truncated: {len(header)} bytes, shorter than its "
                        f"{header_size}-byte IDX header")
    found, count, *shape = struct.unpack(f">{2 + len(item_shape)}I", header)
    if found != magic:
        raise DataError(f"{path} has magic number 0x{found:08x}, expected 0x{magic:08x}; "
                        "it is not an IDX file of this kind")
    for axis, (got, want) in enumerate(zip(shape, item_shape), start=1):
        if got != want:
            raise DataError(f"{path} has size {got} on axis {axis}, expected {want} (28x28 images)")
    if count > MAX_SAMPLES:
        raise DataError(f"{path} promises {count:,} samples, more than the {MAX_SAMPLES:,} "
                        "this trainer reads")
    return count, header


def _read_header(path, magic, item_shape):
    with _reading(path):
        with _open(path) as f:
            return _header(f, path, magic, item_shape)


class _reading:
    """Turns what reading a damaged file raises into one DataError line naming the file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, err, traceback):
        if isinstance(err, (OSError, EOFError, zlib.error)):
            what = "gzip" if self.path.endswith(".gz") else "an IDX file"
            reason = getattr(err, "strerror", None) or err
            raise DataError(f"{self.path} cannot be read as {what}: {reason}") from None
        return False


def _read_idx(path, magic, item_shape):
    """(array, SHA-256 of the content)."""
    # The header checked, then no more read than it promises, plus one.
    _check_regular(path)
    with _reading(path):
        with _open(path) as f:
            count, header = _header(f, path, magic, item_shape)
            body_size = count * int(np.prod(item_shape, dtype=np.int64))
            body = _read_at_most(f, body_size)
            # One byte past the promise tells a longer file, without reading the rest.
            extra = f.read(1)
    if len(body) < body_size:
        raise DataError(
            f"{path} is truncated: {len(header) + len(body)} bytes, its header promises "
            f"{len(header) + body_size}"
        )
    if extra:
        raise DataError(
            f"{path} is longer than its header says: more than {len(header) + body_size} bytes"
        )
    digest = hashlib.sha256(header)
    digest.update(body)
    return np.frombuffer(body, dtype=np.uint8).reshape((count, *item_shape)), digest.hexdigest()


def _read_images(path):
    images, digest = _read_idx(path, _IMAGE_MAGIC, (ROWS, COLS))
    return images.reshape(-1, ROWS * COLS), digest


def _read_labels(path):
    labels, digest = _read_idx(path, _LABEL_MAGIC, ())
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{path}: label {labels[bad]} at index {bad} is outside 0..{NUM_CLASSES - 1}"
        )
    return labels.astype(np.int32), digest


def _digest(path, compressed=None, limit=MAX_SAMPLES * ROWS * COLS + 64):
    """SHA-256 of the file's content (decompressed for .gz), reading at most limit bytes."""
    digest, done = hashlib.sha256(), 0
    with _reading(path):
        with _open(path, compressed) as f:
            while chunk := f.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DataError(f"{path} is larger than any file of these data sets: "
                                    f"over {limit:,} bytes")
                digest.update(chunk)
    return digest.hexdigest()


def _download(dataset, name, folder, mirrors, progress):
    errors = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            _fetch_verified(url, (dataset, name), folder, progress)
            return
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException,
                DataError) as err:
            errors.append(f"{url}: {err}")
    last = errors[-1] if errors else "no mirror configured"
    missing = [other for other in FILES if not _present(folder, other)]
    raise DataError(f"could not download {dataset.name} (last error: {last}); "
                    + _missing_message(folder, missing, f"the {dataset.name} cache"))


def _fetch_verified(url, file, folder, progress):
    """Download file, (dataset, name), verified as its dataset publishes it."""
    # Written to a temporary file in the target folder and renamed only once the checksum holds,
    # so an interrupted or corrupt download never leaves a file that looks complete.
    dataset, name = file
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            url, timeout=_TIMEOUT_S
        ) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if done > _MAX_DOWNLOAD:
                    raise ValueError(f"more than {_MAX_DOWNLOAD >> 20} MB served for {name}.gz")
                if progress:
                    progress(name, done, total)
            if total and done != total:
                raise EOFError(f"connection closed after {done} of {total} bytes")
        expected = dataset.sha256[name]
        digest = _digest(tmp, compressed=not dataset.gz)
        if digest != expected:
            what = "the .gz file" if dataset.gz else "the decompressed content"
            raise ValueError(f"SHA-256 of {what} is {digest[:12]}..., expected {expected[:12]}...")
        # mkstemp makes it owner-only; the cache is shared like any download.
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(folder, name + ".gz"))
    except BaseException:
        os.unlink(tmp)
        raise
