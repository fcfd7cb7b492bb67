"""Checkpoints as one unit: MXNet's own files, the resume state, and a manifest written last."""
# A checkpoint of epoch 7 under PREFIX is:
# - PREFIX-symbol.json and PREFIX-0007.params, as mx.model.save_checkpoint writes them, which
#   mx.model.load_checkpoint and Module read; PREFIX-inference-symbol.json, the network without its
#   loss head, which gluon.SymbolBlock.imports takes with the one input 'data';
# - PREFIX-0007.state.json and PREFIX-0007.state.nd: what an exact resume needs, its arrays (the
#   optimizer's state, the metrics of an epoch's first batches) in MXNet's binary format;
# - PREFIX-0007.manifest.json, the size and SHA-256 of the others, written last. A checkpoint
#   without one, or whose files do not match it, is torn: it is never loaded.
# The state files are written before the params, so a .params file without them is MXNet's own,
# never a save of this trainer cut short. One saved mid-epoch on a signal is
# PREFIX-interrupted-0009-000123.*: epoch 9, 123 batches done.
import errno
import json
import math
import os
import re

import mxnet as mx
import numpy as np

from harness import files
from harness.errors import CheckpointError

FORMAT = 2
_MAX_MANIFEST = 1 << 16
_MAX_SYMBOL = 16 << 20
# The state's JSON holds no arrays: the config, the history (a few hundred bytes an epoch) and the
# RNG.
MAX_STATE_JSON = 16 << 20
_KINDS = ("symbol", "inference", "state", "arrays", "params")
_NAME = re.compile(r"^(?:(\d{4,})|interrupted-(\d{4,})-(\d{6,}))\.manifest\.json$")
# A file of this trainer's checkpoints, after PREFIX-.
_OURS = r"(\d{4,}|interrupted-\d{4,}-\d{6,})\.(params|state\.json|state\.nd)"


class Tag:
    """Which checkpoint."""
    # After epoch `epoch`, or (interrupted) in epoch `epoch` after `batches` batches.

    def __init__(self, epoch, batches=None):
        self.epoch, self.batches = epoch, batches

    @property
    def interrupted(self):
        return self.batches is not None

    def stem(self, prefix):
        if self.interrupted:
            return f"{prefix}-interrupted-{self.epoch:04d}-{self.batches:06d}"
        return f"{prefix}-{self.epoch:04d}"

    def order(self):
        """Sorts checkpoints by the training they hold."""
        # Interrupted in epoch 9 comes after 8 and before 9.
        return (self.epoch, 0, self.batches) if self.interrupted else (self.epoch, 1, 0)

    def __eq__(self, other):
        return isinstance(other, Tag) and self.order() == other.order()

    def __hash__(self):
        return hash(self.order())

    def __repr__(self):
        return f"Tag({self.epoch}, {self.batches})"


def paths(prefix, tag):
    """The paths of tag's files, by kind: symbol, inference, state, arrays, params and manifest."""
    stem = tag.stem(prefix)
    return {"symbol": f"{prefix}-symbol.json", "inference": f"{prefix}-inference-symbol.json",
            "state": f"{stem}.state.json", "arrays": f"{stem}.state.nd", "params": f"{stem}.params",
            "manifest": f"{stem}.manifest.json"}


def longest_suffix():
    """The longest ending a checkpoint adds to its prefix."""
    # What the prefix's name must leave room for.
    return "-interrupted-0000-000000.manifest.json"


def save(prefix, tag, symbols, params, state, arrays):
    """Write tag's files, each atomically, then its manifest: the unit is complete only then."""
    # symbols: (the network, its inference graph); params and arrays: name -> NDArray; state: JSON
    # values.
    where = paths(prefix, tag)
    for kind, symbol in zip(("symbol", "inference"), symbols):
        payload = symbol.tojson().encode()
        if _read_or_none(where[kind], _MAX_SYMBOL) != payload:
            files.write_bytes(where[kind], payload)
    files.write_atomic(where["arrays"], lambda tmp: _save_arrays(tmp, arrays))
    files.write_bytes(where["state"], json.dumps(state).encode())
    files.write_atomic(
        where["params"], lambda tmp: _save_arrays(tmp, {f"arg:{n}": a for n, a in params.items()})
    )
    manifest = {
        "format": FORMAT,
        "epoch": tag.epoch,
        "batches": tag.batches,
        "files": {
            kind: {
                "name": os.path.basename(where[kind]),
                "bytes": os.path.getsize(where[kind]),
                "sha256": files.sha256(where[kind], 1 << 40),
            }
            for kind in _KINDS
        },
    }
    files.write_bytes(where["manifest"], json.dumps(manifest, indent=1).encode())


def _save_arrays(path, arrays):
    try:
        mx.nd.save(path, arrays)
    except mx.base.MXNetError as err:
        # MXNet's own writer reports a full disk as a failed check: give the OS's reason where it is
        # that.
        usage = os.statvfs(os.path.dirname(os.path.abspath(path)))
        if usage.f_bavail * usage.f_frsize < 4 * sum(array.size for array in arrays.values()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise OSError(errno.EIO, f"MXNet could not write it: {str(err).splitlines()[-1]}") from None


def listing(prefix):
    """Every checkpoint of prefix that has a manifest, oldest first, as Tags."""
    tags = []
    for name in _names(prefix):
        match = _NAME.match(name)
        if match:
            epoch, in_epoch, batches = match.groups()
            tags.append(Tag(int(epoch)) if epoch else Tag(int(in_epoch), int(batches)))
    return sorted(tags, key=Tag.order)


def _names(prefix):
    """The file names in prefix's folder that start with its name and a dash, without them."""
    folder, base = os.path.split(os.path.abspath(prefix))
    try:
        return [name[len(base) + 1:] for name in os.listdir(folder) if name.startswith(base + "-")]
    except OSError:
        return []


def leftovers(prefix):
    """Files of this trainer's saves that no manifest covers: those of a save cut short."""
    folder, base = os.path.split(os.path.abspath(prefix))
    covered = {os.path.basename(p) for tag in listing(prefix) for p in paths(prefix, tag).values()}
    ours = re.compile(_OURS + "$")
    found, stems = [], {ours.match(n).group(1) for n in _names(prefix) if ours.match(n) and
                        not n.endswith(".params")}
    for name in _names(prefix):
        match = ours.match(name)
        # A .params file is this trainer's only beside its state files; alone, it is MXNet's own.
        if (
            match
            and f"{base}-{name}" not in covered
            and (not name.endswith(".params") or match.group(1) in stems)
        ):
            found.append(os.path.join(folder, f"{base}-{name}"))
    return sorted(found)


def foreign(prefix):
    """The epochs of MXNet's own checkpoints under prefix."""
    # A .params file with no state of this trainer.
    ours = {os.path.basename(p) for p in leftovers(prefix)}
    ours |= {os.path.basename(p) for tag in listing(prefix) for p in paths(prefix, tag).values()}
    base = os.path.basename(os.path.abspath(prefix))
    return sorted(int(name[:-7]) for name in _names(prefix)
                  if re.fullmatch(r"\d{4,}\.params", name) and f"{base}-{name}" not in ours)


def verify(prefix, tag):
    """Raise CheckpointError unless tag's manifest is sound and its files match it byte for byte."""
    where = paths(prefix, tag)
    manifest = _read_json(where["manifest"], _MAX_MANIFEST)
    try:
        ok = (
            manifest["format"] == FORMAT
            and manifest["epoch"] == tag.epoch
            and manifest["batches"] == tag.batches
            and set(manifest["files"]) == set(_KINDS)
            and all(
                isinstance(manifest["files"][k][f], t)
                for k in _KINDS
                for f, t in (("name", str), ("bytes", int), ("sha256", str))
            )
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        format_ = manifest.get("format") if isinstance(manifest, dict) else None
        if isinstance(format_, int) and format_ != FORMAT:
            raise CheckpointError(
                f"{where['manifest']} is of checkpoint format {format_}, which this "
                f"trainer (format {FORMAT}) does not read"
            )
        raise CheckpointError(f"{where['manifest']} is not a manifest of this checkpoint")
    for kind in _KINDS:
        entry, path = manifest["files"][kind], where[kind]
        if entry["name"] != os.path.basename(path):
            raise CheckpointError(
                f"{where['manifest']} names {entry['name']}, not {os.path.basename(path)}"
            )
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: the checkpoint is torn")
        try:
            digest = files.sha256(path, entry["bytes"])
        except (OSError, ValueError):
            digest = None
        if os.path.getsize(path) != entry["bytes"] or digest != entry["sha256"]:
            raise CheckpointError(f"{path} does not match its manifest: the checkpoint is torn")


def load(prefix, tag, params, symbol):
    """Verify tag, copy its weights into params, and return its state's JSON values."""
    # load_arrays() reads its arrays.
    # symbol: the network this run trains, which the checkpoint's symbol file must hold.
    verify(prefix, tag)
    where = paths(prefix, tag)
    if _read_or_none(where["symbol"], _MAX_SYMBOL) != symbol.tojson().encode():
        raise CheckpointError(
            f"{where['symbol']} holds another network than this run's --network and --num-hidden"
        )
    load_weights(where["params"], params)
    return _read_json(where["state"], MAX_STATE_JSON)


def load_arrays(prefix, tag, limit):
    """tag's state arrays, name -> NDArray."""
    # Limit: the most bytes they can take for this configuration.
    return _load_arrays(paths(prefix, tag)["arrays"], limit)


def load_weights(path, params):
    """Copy the weights of a params file (arg:NAME, as MXNet saves them) into params."""
    # The file must hold exactly these names and shapes, all finite; it is read only if it is no
    # larger than they need.
    expected = {f"arg:{name}": array.shape for name, array in params.items()}
    saved = _load_arrays(path, sum(4 * math.prod(shape) for shape in expected.values()) + 1024
                         + 128 * len(expected))
    found = {key: value.shape for key, value in saved.items()}
    if found != expected:
        raise CheckpointError(f"{path} holds {_describe(found)}, but the configured network has "
                              f"{_describe(expected)}")
    for key, value in saved.items():
        if not np.isfinite(value.asnumpy()).all():
            raise CheckpointError(
                f"{path}: {key[4:]} holds values that are not finite (NaN or inf); the "
                "checkpoint cannot be used"
            )
    for name, array in params.items():
        array[:] = saved[f"arg:{name}"]


def _load_arrays(path, limit):
    """A file of mx.nd.save's dict form, read only if it is no larger than limit."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror}") from None
    if size > limit:
        raise CheckpointError(
            f"{path} holds more than this configuration needs: {size:,} bytes for {limit:,}"
        )
    try:
        saved = mx.nd.load(path)
    except mx.base.MXNetError:
        raise CheckpointError(f"{path} is not a readable MXNet params file") from None
    # An empty dict comes back as an empty list.
    if saved == []:
        return {}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds unnamed arrays, not a dict of them")
    return saved


def remove(prefix, tag):
    """Delete tag's files, its manifest first."""
    # So that a removal cut short leaves a torn checkpoint.
    where = paths(prefix, tag)
    for kind in ("manifest", "params", "state", "arrays"):
        try:
            os.unlink(where[kind])
        except FileNotFoundError:
            pass


def _read_or_none(path, limit):
    try:
        return files.read_bounded(path, limit)
    except (OSError, ValueError):
        return None


def _read_json(path, limit):
    try:
        return files.parse_json(files.read_bounded(path, limit))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}".splitlines()[0]) from None


def _describe(shapes):
    return (
        ", ".join(
            f"{key.split(':', 1)[-1]} {tuple(shape)}" for key, shape in sorted(shapes.items())
        )
        or "nothing"
    )
