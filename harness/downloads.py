"""A data set's files downloaded into its cache: verified, shown as they come, never left half-done.

One process at a time downloads into a cache folder: it holds an exclusive lock on the folder's
.download.lock file, and a second process waits for it, then downloads only what is still missing.
Each file arrives in a temporary .NAME.XXXXXXXX.part file beside its place, is verified against the
published SHA-256 as it arrives, and is renamed into place only then. Whatever fails or interrupts
a download (an error, a signal) removes its .part file; one that a killed process left is removed
by the next process that holds the lock, since only the holder writes .part files. No other file is
ever removed.
"""
import fcntl
import hashlib
import http.client
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

from harness import datasets
from harness.errors import DataError, WriteError

# Set, it is the only place the files are downloaded from; "{dataset}" in it becomes the data set's
# name (mnist, fashion-mnist, kmnist).
MIRROR_VARIABLE = "MNIST_MIRROR"
# Seconds without a byte, as the connection or any read waits.
TIMEOUT_S = 30
# A download that brings fewer bytes than this over a whole window of this many seconds has
# stalled: 1 kB/s, which would take hours for one file.
STALL_WINDOW_S = 60
STALL_MIN_BYTES = 60_000
# The largest file of these data sets is under 30 MB compressed, 48 MB decompressed.
MAX_DOWNLOAD = 64 << 20
MAX_CONTENT = 1 << 30
_CHUNK = 1 << 16
_LOCK = ".download.lock"
_PART = re.compile(r"\.(" + "|".join(map(re.escape, datasets.FILES)) + r")\.[A-Za-z0-9_]{8}\.part")


class DownloadError(DataError):
    """No mirror gave a file: the reason, with the mirror, of the last one tried."""


class _Failed(OSError):
    """A download that the server broke off or let stall: its message says how."""


def sources(dataset):
    """The URLs that dataset's files are downloaded from, each ending in '/'.

    MNIST_MIRROR's alone if it is set, else the data set's own mirrors. DataError if it is set to
    anything but an http:// or https:// URL.
    """
    value = os.environ.get(MIRROR_VARIABLE, "")
    if not value:
        return dataset.mirrors
    url = value.replace("{dataset}", dataset.name)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise DataError(f"{MIRROR_VARIABLE}={value!r} is not an http:// or https:// URL of a "
                        "folder, such as https://example.org/mnist/")
    return (url if url.endswith("/") else url + "/",)


def leftovers(folder):
    """The .part files in folder that a download of this trainer made and did not finish."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, name) for name in names if _PART.fullmatch(name))


def fill(dataset, folder, missing, urls, progress=None):
    """Download into folder each of dataset's files that missing(folder) names, from urls in turn.

    Waits for any other process that downloads into folder, and removes the .part files a killed
    one left. progress, if given, has waiting(folder) and update(url, done, total, final) (see
    report.download_progress). Raises DownloadError when no URL gives a file, WriteError when the
    folder cannot take it.
    """
    with _FolderLock(folder, progress) as lock:
        # Only the lock's holder writes .part files: any other is a killed download's.
        for path in leftovers(folder) if lock.held else []:
            if os.path.isfile(path) and not os.path.islink(path):
                _remove(path)
        for name in missing(folder):
            urls = _download(dataset, name, folder, urls, progress)


class _FolderLock:
    """The exclusive lock on a folder's downloads: flock on FOLDER/.download.lock, waited for.

    The lock file goes when the lock is released; one that a killed process left is taken over,
    since the kernel released its lock. On a file system that has no locks (some network ones),
    it is not held, and the download goes on without it.
    """

    def __init__(self, folder, progress):
        self.path, self.progress, self.fd = os.path.join(folder, _LOCK), progress, None

    @property
    def held(self):
        return self.fd is not None

    def __enter__(self):
        told = False
        while True:
            fd = _open_lock_file(self.path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self.progress and not told:
                        self.progress.waiting(os.path.dirname(self.path))
                        told = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                # No locks here: the file that would hold one is of no use.
                os.close(fd)
                _remove(self.path)
                return self
            except BaseException:
                os.close(fd)
                raise
            # The holder before us removes the file as it lets go: only the file on disk counts.
            if os.fstat(fd).st_ino == _inode(self.path):
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        if self.held:
            _remove(self.path)
            os.close(self.fd)
        return False


def _open_lock_file(path):
    """A descriptor of the lock file at path, made if absent: for writing where this user may.

    Some file systems lock only files open for writing; another user's lock file in a shared cache
    opens for reading only.
    """
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except PermissionError:
            if flags == os.O_RDONLY:
                raise WriteError(f"cannot download into {os.path.dirname(path)}: "
                                 "Permission denied") from None
        except OSError as err:
            raise WriteError(f"cannot download into {os.path.dirname(path)}: "
                             f"{err.strerror}") from None


def _download(dataset, name, folder, urls, progress):
    """Download name.gz from the first of urls that gives it; return urls, that one first."""
    last = None
    for index, base in enumerate(urls):
        url = base + name + ".gz"
        try:
            _fetch(url, (dataset, name), folder, progress)
            return (base, *urls[:index], *urls[index + 1:])
        except (OSError, ValueError, http.client.HTTPException) as err:
            last = f"{url}: {_reason(err)}"
            if isinstance(err, urllib.error.HTTPError):
                err.close()
    tried = f"the {len(urls)} mirrors" if len(urls) > 1 else "the mirror"
    raise DownloadError(f"could not download {name}.gz from {tried} (last: {last})")


def _fetch(url, file, folder, progress):
    """Download url into folder as name.gz, where file is (dataset, name), verified on the way."""
    dataset, name = file
    if progress:
        progress.update(url, 0, None, False)
    try:
        fd, part = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    except OSError as err:
        raise WriteError(f"cannot download into {folder}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                digests = _receive(response, out, folder, url, progress)
            _written(b"", out, folder)
        _verify(dataset, name, digests)
        _put_in_place(part, os.path.join(folder, name + ".gz"))
    except BaseException:
        _remove(part)
        raise
    if progress:
        progress.update(url, digests.size, digests.size, True)


def _receive(response, out, folder, url, progress):
    """Copy response's body into out, a file in folder, bounded and checked; return its _Digests."""
    total = _content_length(response)
    if total is not None and total > MAX_DOWNLOAD:
        raise ValueError(f"the server offers {total:,} bytes, more than any file of these sets")
    digests, read = _Digests(), getattr(response, "read1", response.read)
    window = (time.monotonic(), 0)
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        _written(chunk, out, folder)
        digests.update(chunk)
        if digests.size > MAX_DOWNLOAD:
            raise ValueError(f"more than {MAX_DOWNLOAD >> 20} MB served")
        if progress:
            progress.update(url, digests.size, total, False)
        now = time.monotonic()
        if now - window[0] >= STALL_WINDOW_S:
            if digests.size - window[1] < STALL_MIN_BYTES:
                raise _Failed(f"stalled: {digests.size - window[1]:,} bytes in the last "
                              f"{now - window[0]:.0f} s")
            window = (now, digests.size)
    if total is not None and digests.size != total:
        raise _Failed(f"the connection closed after {digests.size:,} of {total:,} bytes")
    digests.finish()
    return digests


def _written(chunk, out, folder):
    """Write all of chunk to out, an unbuffered file, and sync it to disk once chunk is empty.

    An OSError here is the folder's (a full disk, say): a WriteError, not the mirror's fault.
    """
    try:
        if not chunk:
            os.fsync(out.fileno())
        view = memoryview(chunk)
        while view:
            view = view[out.write(view):]
    except OSError as err:
        raise WriteError(f"cannot download into {folder}: {err.strerror or err}") from None


def _put_in_place(part, target):
    """Rename the verified part file to target, readable by all as any download is.

    mkstemp made it owner-only. An OSError here is the folder's: a WriteError.
    """
    try:
        os.chmod(part, 0o644)
        os.replace(part, target)
    except OSError as err:
        raise WriteError(f"cannot download into {os.path.dirname(target)}: "
                         f"{err.strerror or err}") from None


def _content_length(response):
    """The body's size that the server announces, or None if it announces none it can keep."""
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _verify(dataset, name, digests):
    """Raise ValueError unless the download is dataset's name, by its published SHA-256."""
    expected = dataset.sha256[name]
    digest = digests.raw.hexdigest() if dataset.gz else digests.content.hexdigest()
    if digest == expected:
        return
    known = datasets.known_file(digests.content.hexdigest()) or datasets.known_file(
        digests.raw.hexdigest())
    if known:
        raise ValueError(f"the file served is {known[0].name}'s {known[1]}, not "
                         f"{dataset.name}'s {name}")
    what = "the .gz file" if dataset.gz else "the decompressed content"
    raise ValueError(f"SHA-256 of {what} is {digest[:12]}..., expected {expected[:12]}...")


class _Digests:
    """The SHA-256 of a gzip stream's bytes and of its decompressed content, taken as it comes.

    The content is bounded (MAX_CONTENT); a stream that is not gzip, or ends inside a member, is a
    ValueError. Members follow one another, with any zero padding between them, as gzip reads them.
    """

    def __init__(self):
        self.raw, self.content = hashlib.sha256(), hashlib.sha256()
        self.size = self.content_size = 0
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def update(self, chunk):
        """Take in the next chunk of the stream."""
        self.raw.update(chunk)
        self.size += len(chunk)
        data = chunk
        try:
            while data:
                if self.inflate.eof:
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                    self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = self.inflate.decompress(data, _CHUNK)
                self.content.update(out)
                self.content_size += len(out)
                if self.content_size > MAX_CONTENT:
                    raise ValueError(f"the file served decompresses past {MAX_CONTENT >> 20} MB")
                data = self.inflate.unconsumed_tail or self.inflate.unused_data
        except zlib.error as err:
            raise ValueError(f"the file served is not gzip data ({err})") from None

    def finish(self):
        """Raise ValueError unless the stream held something and ended where its gzip data ends."""
        if not self.size:
            raise ValueError("the file served is empty")
        if not self.inflate.eof:
            raise ValueError("the file served ends inside its gzip data")


def _reason(err):
    """What err says of a failed download, in one short line."""
    if isinstance(err, urllib.error.HTTPError):
        if 300 <= err.code < 400 and "infinite loop" in str(err.msg):
            return f"HTTP {err.code}: its redirects loop, or go on past 10"
        return " ".join(f"HTTP {err.code} {err.msg}".split())[:200]
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason
    if isinstance(err, socket.timeout):
        return f"no data for {TIMEOUT_S} s"
    if isinstance(err, http.client.IncompleteRead):
        return "the connection closed before the whole file came"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split())[:200] or type(err).__name__


def _inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
