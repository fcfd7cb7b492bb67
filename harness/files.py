"""Writing files so that nothing a user saved is lost: atomic, through links, mode kept.

Every output is checked before the first batch (check_file, check_folder). A write goes to a
temporary file beside its target, is flushed to disk, and is renamed over the target only if that
is absent or a regular file. A temporary file is removed when its write fails; one that a killed
process left is removed at the next write of the same target, and no other file ever is. An
OSError becomes a WriteError: one line with the file and the OS's reason. Locks (Lock) keep a
second process off a run's outputs.
"""
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat

from harness.errors import BusyError, OutputError, WriteError

_CHUNK = 1 << 20
# The most bytes a lock file holds: the holder's process id and command.
_LOCK_TEXT = 500
# Every file name this project writes, temporaries included, must fit the folder's limit.
_TEMPORARY_EXTRA = len(".12345678.0123456789abcdef.tmp") + 8


def check_file(path, flag, longest_suffix=""):
    """Raise OutputError unless path (through symlinks) is absent or a writable regular file.

    It must sit in a folder that lets it be written atomically, and a symlink must lead to a file
    that exists. longest_suffix: the longest ending the output adds to path.
    """
    target = os.path.realpath(path)
    if os.path.islink(path) and not os.path.lexists(target):
        raise OutputError(f"{flag} {path} is a symlink to {target}, which does not exist; give a "
                          "file path")
    if os.path.lexists(target) and not os.path.isfile(target):
        kind = "a folder" if os.path.isdir(target) else "not a regular file"
        raise OutputError(f"{flag} {path} is {kind}; give a file path")
    folder = os.path.dirname(target)
    _check_folder_of(folder, path, flag)
    name_max = os.pathconf(folder, "PC_NAME_MAX")
    longest = len(os.fsencode(os.path.basename(target) + longest_suffix)) + _TEMPORARY_EXTRA
    if longest > name_max:
        raise OutputError(
            f"{flag} {path}: the name is too long for its folder's file system, which takes "
            f"{name_max} bytes a name ({longest - name_max} too many, with what is added to it)"
        )
    if os.path.isfile(target):
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        except OSError as err:
            raise OutputError(f"{flag} {path} cannot be written: {err.strerror}") from None


def check_folder(path, flag):
    """Raise OutputError unless path is a writable folder, or absent in a writable folder."""
    target = os.path.realpath(path)
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise OutputError(f"{flag} {path} is not a folder")
        if not os.access(target, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path} is not writable")
    else:
        check_file(path, flag)


def _check_folder_of(folder, path, flag):
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{flag} {path}: {folder} is not a folder")
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: the folder {folder} is not writable")


def same_file(a, b):
    """Whether paths a and b name one file: the same path through links, or one inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def write_atomic(path, write):
    """Run write(tmp) on a temporary file beside path's target, flush it, rename it over the target.

    Through a symlink: the link stays, its target is replaced.
    """
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    _remove_stale_temporaries(target)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    try:
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise WriteError(f"cannot write {path}: it is not a regular file")
        # Created with open(), not mkstemp, so the file gets the usual permissions rather than
        # owner-only.
        with open(tmp, "xb"):
            pass
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.stat(tmp).st_uid, os.stat(tmp).st_gid):
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, target)
        _sync_folder(folder)
    except OSError as err:
        _remove(tmp)
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path, payload):
    """write_atomic with these bytes."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(payload)
    write_atomic(path, write)


def append_line(path, line):
    """Append one line to path (created if absent) in one write; return the file's size after it.

    On a short write, the file is cut back to what it was: it never holds half a line.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WriteError(f"cannot write {path}: it is not a regular file")
        payload = line.encode() + b"\n"
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            # Someone's last line lacks its newline: keep theirs whole.
            payload = b"\n" + payload
        try:
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as err:
            # Never half a line: the file as it was.
            os.ftruncate(fd, info.st_size)
            raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
        return info.st_size + len(payload)
    finally:
        os.close(fd)


def _remove_stale_temporaries(target):
    """Remove the temporary files of write_atomic(target) whose process is gone."""
    folder, name = os.path.split(target)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]{16}\.tmp")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for entry in names:
        match = pattern.fullmatch(entry)
        if match and not _alive(int(match.group(1))):
            _remove(os.path.join(folder, entry))


def set_aside(path, ending=".torn"):
    """Rename path to path + ending (+ a number if that is taken), never over anything: the name."""
    for number in range(1, 10_000):
        candidate = path + ending + (f".{number}" if number > 1 else "")
        try:
            # A hard link fails where the name exists: no earlier set-aside is ever replaced.
            os.link(path, candidate)
        except FileExistsError:
            continue
        os.unlink(path)
        return candidate
    raise WriteError(f"cannot set {path} aside: 9,999 earlier set-asides are in the way")


def sha256(path, limit):
    """The SHA-256 of path's bytes, reading at most limit bytes (ValueError past it)."""
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            done += len(chunk)
            if done > limit:
                raise ValueError(f"larger than {limit:,} bytes")
            digest.update(chunk)
    return digest.hexdigest()


def read_bounded(path, limit):
    """path's bytes, refusing (ValueError) a file larger than limit or one that is not regular."""
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        payload = f.read(limit + 1)
    if len(payload) > limit:
        raise ValueError(f"larger than {limit:,} bytes")
    return payload


def parse_json(payload, max_depth=16):
    """JSON text as Python values.

    ValueError for nesting past max_depth, NaN, infinities, or an integer of more than 18 digits.
    The nesting is counted before the parser recurses into it, over the brackets outside strings.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', payload.decode("utf-8", errors="replace"))
    depth = 0
    for bracket in re.findall(r"[\[\]{}]", text):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")

    def refuse(constant):
        raise ValueError(f"holds {constant}, which is not a number")

    def finite(literal):
        if not math.isfinite(float(literal)):
            raise ValueError(f"holds {literal[:20]}, too large for a float")
        return float(literal)

    def bounded(literal):
        if len(literal.lstrip("-")) > 18:
            raise ValueError(f"holds {literal[:20]}..., larger than any count")
        return int(literal)
    return json.loads(payload, parse_constant=refuse, parse_float=finite, parse_int=bounded)


def lock_path(path):
    """The lock file that Lock(path) takes: PATH.lock, beside path's target through links."""
    return os.path.realpath(path) + ".lock"


def is_lock_file(path):
    """Whether path holds what a Lock writes (or nothing: one cut short), and has no other name."""
    try:
        info = os.stat(path)
        payload = read_bounded(path, _LOCK_TEXT)
    except (OSError, ValueError):
        return False
    return info.st_nlink == 1 and re.fullmatch(rb"(process \d+ \(.*\))?", payload, re.S) is not None


class Lock:
    """An exclusive advisory lock (fcntl) on PATH.lock for a process's lifetime.

    The kernel releases it at exit or kill. A second process gets BusyError naming the holder. The
    lock file goes when the lock is released; one a killed process left is taken over (the kernel
    dropped its lock), never trusted by its text.
    """

    def __init__(self, path, what):
        self.path, self.what, self.fd = lock_path(path), what, None

    def acquire(self):
        """Take the lock, or raise BusyError naming the process that holds it; return self."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise BusyError(
                    f"{self.what} is in use by {holder} (it holds {self.path}); wait for it "
                    "to end, or use another path"
                ) from None
            # The holder before us may have removed the file as we opened it: lock the one on disk.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} ({_command()})".encode()[:_LOCK_TEXT])
        except OSError:
            # Only what a refused second process is told: the lock holds without it (on a full disk,
            # say).
            pass
        return self

    def release(self):
        """Remove the lock file and let the lock go."""
        if self.fd is not None:
            _remove(self.path)
            os.close(self.fd)
            self.fd = None


def _command():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            words = f.read(400).split(b"\0")
    except OSError:
        return "?"
    return " ".join(word.decode(errors="replace") for word in words if word)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sync_folder(folder):
    # The rename itself reaches the disk only with the folder's entry: a crash then finds the new
    # file.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
