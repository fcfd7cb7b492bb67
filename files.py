"""Writing files so that nothing a user saved is lost: atomic, through symlinks, owner and mode kept.

Every output is checked before the first batch (check_file, check_folder). A write goes to a temporary file
beside its target, is flushed to disk, and is renamed over the target only if that is absent or a regular
file. A temporary file is removed when its write fails; those of a killed process go at the next write into
their folder. An OSError becomes a WriteError: one line with the file and the OS's reason.
"""
import errno
import hashlib
import os
import re
import secrets
import stat

from errors import RunError, WriteError

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")
_CHUNK = 1 << 20


class OutputError(RunError):
    """An output path that cannot be written: not a regular file, or no writable folder; one line."""


def check_file(path, flag):
    """Raise OutputError unless path (through symlinks) is absent or a regular file, in a writable folder."""
    target = os.path.realpath(path)
    if os.path.lexists(target) and not os.path.isfile(target):
        kind = "a folder" if os.path.isdir(target) else "not a regular file"
        raise OutputError(f"{flag} {path} is {kind}; give a file path")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: the folder {folder} is not writable")


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


def write_atomic(path, write):
    """Run write(tmp) on a temporary file beside path's target, flush it, and rename it over the target."""
    target = os.path.realpath(path)  # through a symlink: the link stays, its target is replaced
    folder, name = os.path.split(target)
    remove_stale_temporaries(folder)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise WriteError(f"cannot write {path}: it is not a regular file")
        # Created with open(), not mkstemp, so the file gets the usual permissions rather than owner-only.
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
    """Append one line to path (created if absent) in one write; on a short write, cut the file back."""
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
            payload = b"\n" + payload  # someone's last line lacks its newline: keep theirs whole
        try:
            written = os.write(fd, payload)
            if written != len(payload):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as err:
            os.ftruncate(fd, info.st_size)  # never half a line: the file as it was
            raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def remove_stale_temporaries(folder):
    """Remove the temporary files of write_atomic in folder whose process is gone (killed mid-write)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.match(name)
        if match and not _alive(int(match.group(1))):
            _remove(os.path.join(folder, name))


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
    # The rename itself reaches the disk only with the folder's entry: a crash then finds the new file.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
