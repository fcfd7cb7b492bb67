"""A data set's four IDX files: found, downloaded into the cache, read with every input bounded."""
import atexit
import fcntl
import gzip
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import zlib

import numpy as np

from harness import datasets, downloads
from harness.datasets import COLS, FILES, MNIST, NUM_CLASSES, ROWS
from harness.errors import DataError, WriteError

# No IDX file of this kind holds more samples than this: a header that promises more is refused
# before anything is allocated (MNIST has 60,000; this allows a data set 16 times larger, 750 MB of
# pixels).
MAX_SAMPLES = 1_000_000
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801
_CHUNK = 1 << 20
# The private folders of raw copies for MXNet's MNISTIter (raw_copies): in the temporary folder,
# each holding a lock as long as its process lives.
_RAW_PREFIX = "mnist-raw-"
_RAW_LOCK = ".owner.lock"
# raw_copies folder -> the descriptor of its lock, while this process holds it.
_RAW_LOCKS = {}


def default_cache_dir(dataset=MNIST):
    """MXNet's own dataset cache: $MXNET_HOME/datasets/NAME ($MXNET_HOME: ~/.mxnet by default)."""
    home = os.environ.get("MXNET_HOME") or os.path.join(os.path.expanduser("~"), ".mxnet")
    return os.path.join(home, "datasets", dataset.folder)


def find(dataset=MNIST, data_dir=None, mirrors=None, progress=None):
    """The four files' paths, in FILES order.

    In data_dir, else $MNIST_DIR (MNIST only), else the cache. Only the cache is ever written to:
    what it lacks is downloaded from mirrors, else $MNIST_MIRROR, else the data set's own mirrors;
    progress (report.download_progress) shows the downloads.
    """
    folder, source = _resolve_folder(dataset, data_dir, mirrors, progress)
    return [_locate(dataset, folder, name, source) for name in FILES]


def sample_counts(paths):
    """The sample count each file's header promises, read before any body, to size the run first."""
    counts = []
    for path, name in zip(paths, FILES):
        _check_regular(path)
        count, _ = _read_header(path, *_kind(name))
        counts.append(count)
    return counts


def read(paths, dataset=None):
    """(train_images, train_labels, test_images, test_labels, digests) from find()'s files.

    Images are (N, 784) uint8, labels (N,) int32 in 0..9; digests maps each file's name to the
    SHA-256 of its decompressed bytes, which identifies the data a checkpoint was trained on. With
    dataset, files that are another published data set's, or another of its files, are refused,
    naming what they hold; files that match no published one are the user's own, and are read.
    """
    arrays, digests = [], {}
    for path, name in zip(paths, FILES):
        array, digests[name] = (_read_images if "images" in name else _read_labels)(path)
        arrays.append(array)
    if dataset is not None:
        _check_identity(dataset, paths, digests)
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


def raw_copies(paths):
    """A private folder holding the four files of paths raw, as MXNet's MNISTIter reads them.

    It is removed at exit; one that a killed process left is removed by the next call, in any
    process: each folder holds a lock for as long as its process lives. WriteError if the files
    cannot be written there (a full disk, say), leaving nothing.
    """
    _remove_orphaned_raw_folders(tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix=_RAW_PREFIX)
    try:
        lock = _hold_owner_lock(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _RAW_LOCKS[folder] = lock
    atexit.register(remove_raw_copies, folder)
    try:
        for path, name in zip(paths, FILES):
            _copy_raw(path, os.path.join(folder, name))
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise WriteError(f"cannot write the raw copies for MXNet's iterator into {folder}: "
                         f"{err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _locate(dataset, folder, name, source):
    """The one path that holds name in folder, raw or .gz; two copies that differ are refused."""
    found = [path for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz"))
             if os.path.lexists(path)]
    for path in found:
        _check_regular(path)
    if not found:
        raise DataError(_missing_message(dataset, folder, [name], source))
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
    """(folder, where its path came from): a folder the user named, else the cache, filled.

    A folder the user named is theirs: it is read, never written to. Only the cache is downloaded
    into, and a download that a killed process left there is cleared first.
    """
    for folder, source in _named_folders(dataset, data_dir):
        if not os.path.isdir(folder):
            raise DataError(f"{source} {folder} is not a folder")
        missing = _missing(folder)
        if missing:
            raise DataError(_missing_message(dataset, folder, missing, source))
        return folder, source
    folder, source = default_cache_dir(dataset), f"the {dataset.name} cache"
    if _missing(folder) or downloads.leftovers(folder):
        urls = mirrors or downloads.sources(dataset)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the {dataset.name} cache folder {folder}: "
                            f"{err.strerror}") from None
        try:
            downloads.fill(dataset, folder, _missing, urls, progress)
        except downloads.DownloadError as err:
            raise DataError(f"{err}; " + _missing_message(dataset, folder, _missing(folder),
                                                          source, downloading=True)) from None
    return folder, source


def _named_folders(dataset, data_dir):
    """The folder the user named, as [(folder, where it was named)]: --data-dir, else MNIST_DIR."""
    named = [(data_dir, "--data-dir")]
    if dataset.name == MNIST.name:
        named.append((os.environ.get("MNIST_DIR"), "MNIST_DIR"))
    return [(folder, source) for folder, source in named if folder][:1]


def _missing(folder):
    """The names of FILES that folder holds neither raw nor as .gz."""
    return [name for name in FILES
            if not any(os.path.lexists(os.path.join(folder, name + ext)) for ext in ("", ".gz"))]


def _missing_message(dataset, folder, missing, source, downloading=False):
    """What is missing where, and every way to give it, in one line."""
    names = ", ".join(name + ".gz" for name in missing)
    ways = ["put them there (raw or .gz)",
            "name a folder that holds them with --data-dir"
            + (" or MNIST_DIR" if dataset.name == MNIST.name else "")]
    if downloading:
        ways.append(f"set {downloads.MIRROR_VARIABLE} to a mirror that serves them")
    return (f"{len(missing)} of the 4 data files missing from {folder} ({source}): {names}; "
            + ", ".join(ways[:-1]) + ", or " + ways[-1])


def _check_identity(dataset, paths, digests):
    """Refuse files that are another published data set's, or another of its files, naming them."""
    held = {}
    for path, name in zip(paths, FILES):
        found = [digests[name]]
        if path.endswith(".gz") and dataset.sha256[name] != found[0]:
            found.append(_digest(path, compressed=False, limit=1 << 30))
        if dataset.sha256[name] in found:
            continue
        known = datasets.known_file(found[0]) or (found[1:] and datasets.known_file(found[1]))
        if known:
            held[name] = known
    if not held:
        return
    folder = os.path.dirname(paths[0])
    others = {known[0].name for known in held.values()}
    if len(held) == len(FILES) and len(others) == 1 and all(n == k[1] for n, k in held.items()):
        other = others.pop()
        raise DataError(f"{folder} holds {other}, not {dataset.name}: run with --dataset {other}, "
                        f"or give {dataset.name}'s files")
    said = ", ".join(f"{name} is {known[0].name}'s {known[1]}" for name, known in held.items())
    raise DataError(f"{folder}: {said}; --dataset {dataset.name} takes {dataset.name}'s own four "
                    "files, each under its own name")


def _remove_orphaned_raw_folders(parent):
    """Remove the raw_copies folders in parent whose process is gone: their lock is free.

    Only folders of this user, named as raw_copies names them, with the lock file in place, are
    looked at; the lock file is put in place already locked, so a folder being made is never taken.
    """
    try:
        names = [name for name in os.listdir(parent) if name.startswith(_RAW_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(parent, name)
        try:
            info = os.lstat(folder)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(folder, _RAW_LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # Its process holds it, or the file system has no locks: either way, not ours to take.
            os.close(fd)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def _hold_owner_lock(folder):
    """Lock folder's lock file for as long as this process lives; return its descriptor.

    The file is made and locked under another name, then renamed into place: whoever finds it in
    place finds it locked. Where the file system has no locks, it stays under the other name, and
    the folder is never taken for an orphan.
    """
    fresh = os.path.join(folder, _RAW_LOCK + ".new")
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return fd
    os.rename(fresh, os.path.join(folder, _RAW_LOCK))
    return fd


def remove_raw_copies(folder):
    """Remove a raw_copies folder of this process, then let its lock go; once, whoever asks."""
    lock = _RAW_LOCKS.pop(folder, None)
    if lock is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def _copy_raw(path, target):
    """Write path's content, decompressed if it is .gz, to the new file target.

    At most what a file of these data sets can hold is copied; reading past it is a DataError, as
    is a file that cannot be read. An OSError is the target's.
    """
    limit, done = MAX_SAMPLES * ROWS * COLS + 16, 0
    with _reading(path):
        source = _open(path)
    with source, open(target, "xb") as out:
        while True:
            with _reading(path):
                chunk = source.read(_CHUNK)
            if not chunk:
                return
            done += len(chunk)
            if done > limit:
                raise DataError(f"{path} is larger than any file of these data sets")
            out.write(chunk)


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
    """Up to size bytes from f, chunk by chunk.

    A file shorter than its header says allocates what it holds.
    """
    body = bytearray()
    while len(body) < size:
        chunk = f.read(min(_CHUNK, size - len(body)))
        if not chunk:
            break
        body += chunk
    return body


def _header(f, path, magic, item_shape):
    """(count, header bytes) of an open IDX file.

    Checked against what this kind of file must hold.
    """
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
    """(array, SHA-256 of the content).

    The header checked, then no more read than it promises, plus one.
    """
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
