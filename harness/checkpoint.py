"""Checkpoints as one unit: their file names, MXNet's own files, the resume state, the manifest.

A checkpoint of epoch 7 under PREFIX is:

- PREFIX-symbol.json and PREFIX-0007.params, as mx.model.save_checkpoint writes them, which
  mx.model.load_checkpoint and Module read; PREFIX-inference-symbol.json, the network without its
  loss head, which gluon.SymbolBlock.imports takes with the one input 'data';
- PREFIX-0007.state.json and PREFIX-0007.state.nd: what an exact resume needs, its arrays (the
  optimizer's state, the metrics of an epoch's first batches) in MXNet's binary format;
- PREFIX-0007.manifest.json, the size and SHA-256 of the others, written last. A checkpoint
  without one, or whose files do not match it, is torn: it is never loaded.

The state files are written before the params, so a .params file without them is MXNet's own,
never a save of this trainer cut short. One saved mid-epoch on a signal is
PREFIX-interrupted-0009-000123.*: epoch 9, 123 batches done.

This module alone spells these names (paths, parse). It imports MXNet only in the functions that
read or write arrays, so that a run's plan can list and verify checkpoints before MXNet loads.
"""
import errno
import json
import math
import os
import re

from harness import files
from harness.errors import CheckpointError

FORMAT = 2
# The most bytes read of each file whose size does not depend on the configuration: a manifest, the
# two symbols, and a state's JSON, which holds no arrays (the config, the history of a few hundred
# bytes an epoch, the RNG). A params file and the state's arrays are bounded by what the
# configuration's parameters and optimizer state need.
_LIMITS = {"manifest": 1 << 16, "symbol": 16 << 20, "inference": 16 << 20, "state": 16 << 20}
# The files a manifest covers.
_KINDS = ("symbol", "inference", "state", "arrays", "params")
# A checkpoint's own files, after its stem; and the two that all of a prefix's checkpoints share,
# after the prefix.
_ENDINGS = {"params": ".params", "state": ".state.json", "arrays": ".state.nd",
            "manifest": ".manifest.json"}
_SHARED = {"symbol": "-symbol.json", "inference": "-inference-symbol.json"}
# What follows "PREFIX-" in the name of a checkpoint's file.
_REST = re.compile(
    r"(?P<shared>symbol|inference-symbol)\.json"
    r"|(?:(?P<epoch>\d{4,})|interrupted-(?P<in_epoch>\d{4,})-(?P<batches>\d{6,}))"
    r"(?P<ending>" + "|".join(re.escape(ending) for ending in _ENDINGS.values()) + ")"
)
# The longest ending a checkpoint adds to its prefix: what the prefix's name must leave room for.
LONGEST_SUFFIX = "-interrupted-0000-000000" + max(_ENDINGS.values(), key=len)


class Tag:
    """Which checkpoint: after epoch `epoch`, or (interrupted) in epoch `epoch` after `batches`."""

    def __init__(self, epoch, batches=None):
        self.epoch, self.batches = epoch, batches

    @property
    def interrupted(self):
        """Whether a signal saved it mid-epoch."""
        return self.batches is not None

    def stem(self, prefix):
        """Its files' names without their endings: PREFIX-0007, PREFIX-interrupted-0009-000123."""
        if self.interrupted:
            return f"{prefix}-interrupted-{self.epoch:04d}-{self.batches:06d}"
        return f"{prefix}-{self.epoch:04d}"

    def order(self):
        """A key that sorts checkpoints by the training they hold: in epoch 9 comes before 9."""
        return (self.epoch, 0, self.batches) if self.interrupted else (self.epoch, 1, 0)

    def __eq__(self, other):
        return isinstance(other, Tag) and self.order() == other.order()

    def __hash__(self):
        return hash(self.order())

    def __repr__(self):
        return f"Tag({self.epoch}, {self.batches})"


def shared_paths(prefix):
    """The paths of the files every checkpoint of prefix shares, by kind: symbol, inference."""
    return {kind: prefix + ending for kind, ending in _SHARED.items()}


def paths(prefix, tag):
    """The paths of tag's files, by kind: symbol, inference, state, arrays, params and manifest."""
    found = shared_paths(prefix)
    found.update({kind: tag.stem(prefix) + ending for kind, ending in _ENDINGS.items()})
    return found


def parse(path):
    """(prefix, kind, tag) if path is named as a checkpoint's file of any prefix, else None.

    tag is None for the two symbols. A name can be read with more than one prefix (a prefix may
    itself end in -0001): the shortest is given.
    """
    folder, name = os.path.split(path)
    for dash in [i for i, char in enumerate(name) if char == "-" and i > 0]:
        found = _parse_rest(name[dash + 1:])
        if found:
            return (os.path.join(folder, name[:dash]), *found)
    return None


def _parse_rest(rest):
    """(kind, tag or None) of what follows 'PREFIX-' in a checkpoint file's name, or None."""
    match = _REST.fullmatch(rest)
    if not match:
        return None
    if match["shared"]:
        return ("symbol" if match["shared"] == "symbol" else "inference"), None
    kind = next(kind for kind, ending in _ENDINGS.items() if ending == match["ending"])
    if match["epoch"]:
        return kind, Tag(int(match["epoch"]))
    return kind, Tag(int(match["in_epoch"]), int(match["batches"]))


def existing(prefix):
    """The paths of the files under prefix named as its checkpoints' files, symbols included."""
    folder, base = os.path.split(os.path.abspath(prefix))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, name) for name in names
                  if name.startswith(base + "-") and _parse_rest(name[len(base) + 1:]))


def _scan(prefix):
    """tag -> the kinds of its files found under prefix."""
    found = {}
    for path in existing(prefix):
        kind, tag = _parse_own(prefix, path)
        if tag is not None:
            found.setdefault(tag, set()).add(kind)
    return found


def _parse_own(prefix, path):
    """(kind, tag or None) of path, a file named as one of prefix's checkpoints' files."""
    base = os.path.basename(os.path.abspath(prefix))
    return _parse_rest(os.path.basename(path)[len(base) + 1:])


def listing(prefix):
    """Every checkpoint of prefix that has a manifest, oldest first, as Tags."""
    return sorted((tag for tag, kinds in _scan(prefix).items() if "manifest" in kinds),
                  key=Tag.order)


def leftovers(prefix):
    """The files of this trainer's saves that no manifest covers: those of a save cut short."""
    found = []
    for tag, kinds in _scan(prefix).items():
        # A .params file alone is MXNet's own (foreign), unless it is named as no MXNet file is.
        if "manifest" not in kinds and (kinds != {"params"} or tag.interrupted):
            found += [paths(prefix, tag)[kind] for kind in kinds]
    return sorted(found)


def foreign(prefix):
    """The epochs of MXNet's own checkpoints under prefix: .params files with no state beside."""
    return sorted(tag.epoch for tag, kinds in _scan(prefix).items()
                  if kinds == {"params"} and not tag.interrupted)


def save(prefix, tag, symbols, params, state, arrays):
    """Write tag's files, each atomically, then its manifest: the unit is complete only then.

    symbols: (the network, its inference graph); params and arrays: name -> NDArray; state: JSON
    values. A symbol file that already holds the same bytes is left as it is.
    """
    where = paths(prefix, tag)
    for kind, symbol in zip(("symbol", "inference"), symbols):
        payload = symbol.tojson().encode()
        if read_symbol(prefix, kind) != payload:
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
    """mx.nd.save, with a full disk reported as the OS's reason rather than MXNet's failed check."""
    import mxnet as mx
    try:
        mx.nd.save(path, arrays)
    except mx.base.MXNetError as err:
        usage = os.statvfs(os.path.dirname(os.path.abspath(path)))
        if usage.f_bavail * usage.f_frsize < 4 * sum(array.size for array in arrays.values()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise OSError(errno.EIO, f"MXNet could not write it: {str(err).splitlines()[-1]}") from None


def verify(prefix, tag):
    """Raise CheckpointError unless tag's manifest is sound and its files match it byte for byte."""
    where = paths(prefix, tag)
    manifest = _read_json(where["manifest"], _LIMITS["manifest"])
    if not _sound(manifest):
        format_ = manifest.get("format") if isinstance(manifest, dict) else None
        if isinstance(format_, int) and format_ != FORMAT:
            raise CheckpointError(
                f"{where['manifest']} is of checkpoint format {format_}, which this "
                f"trainer (format {FORMAT}) does not read"
            )
        raise CheckpointError(f"{where['manifest']} is not a manifest of this checkpoint")
    if manifest["epoch"] != tag.epoch or manifest["batches"] != tag.batches:
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


def _sound(manifest):
    """Whether a manifest's JSON has the fields of this format, each of its type."""
    try:
        return (
            manifest["format"] == FORMAT
            and set(manifest["files"]) == set(_KINDS)
            and all(
                isinstance(manifest["files"][k][f], t)
                for k in _KINDS
                for f, t in (("name", str), ("bytes", int), ("sha256", str))
            )
            and "epoch" in manifest
            and "batches" in manifest
        )
    except (KeyError, TypeError):
        return False


def read_state(prefix, tag):
    """tag's state's JSON values, as read (checked against the run by sidecar.Reader)."""
    return _read_json(paths(prefix, tag)["state"], _LIMITS["state"])


def read_symbol(prefix, kind="symbol"):
    """The bytes of prefix's symbol (or 'inference' symbol) file; None if absent or unreadable."""
    try:
        return files.read_bounded(shared_paths(prefix)[kind], _LIMITS[kind])
    except (OSError, ValueError):
        return None


def load_arrays(prefix, tag, limit):
    """tag's state arrays, name -> NDArray, read only if no larger than limit bytes."""
    return _load_arrays(paths(prefix, tag)["arrays"], limit)


def load_weights(path, shapes):
    """The weights of a params file (arg:NAME, as MXNet saves them): name -> NDArray.

    shapes: parameter name -> the shape this run's network gives it. The file must hold exactly
    these names, each a dense float32 array of its shape, every value finite; it is read only if it
    is no larger than they need. Whoever saved it, MXNet's Module or this trainer, a problem is one
    line naming the file and the parameter.
    """
    import numpy as np
    expected = {f"arg:{name}": tuple(shape) for name, shape in shapes.items()}
    limit = sum(4 * math.prod(shape) for shape in expected.values()) + 1024 + 128 * len(expected)
    saved = _load_arrays(path, limit)
    found = {key: tuple(value.shape) for key, value in saved.items()}
    if found != expected:
        raise CheckpointError(f"{path} holds {_describe(found)}, but the network has "
                              f"{_describe(expected)}")
    for key, value in sorted(saved.items()):
        name = key.split(":", 1)[1]
        if value.stype != "default":
            raise CheckpointError(f"{path}: {name} is a {value.stype} array; this trainer reads "
                                  "dense (default storage) weights")
        if value.dtype != np.float32:
            raise CheckpointError(f"{path}: {name} is of dtype {np.dtype(value.dtype).name}; this "
                                  "trainer trains and scores float32 weights")
        if not np.isfinite(value.asnumpy()).all():
            raise CheckpointError(f"{path}: {name} holds values that are not finite (NaN or inf); "
                                  "the checkpoint cannot be used")
    return {key.split(":", 1)[1]: value for key, value in saved.items()}


def _load_arrays(path, limit):
    """A file of mx.nd.save's dict form, read only if it is no larger than limit."""
    import mxnet as mx
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
    """Delete tag's files, its manifest first: a removal cut short leaves a torn checkpoint."""
    where = paths(prefix, tag)
    for kind in ("manifest", "params", "state", "arrays"):
        try:
            os.unlink(where[kind])
        except FileNotFoundError:
            pass


def _read_json(path, limit):
    """The JSON values of a checkpoint's file, bounded and checked as files.parse_json does."""
    try:
        return files.parse_json(files.read_bounded(path, limit))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}".splitlines()[0]) from None


def _describe(shapes):
    """'fc1_bias (32,), fc1_weight (32, 784)': the keys (arg: left out) and shapes, sorted."""
    described = [f"{key[4:] if key.startswith('arg:') else key} {tuple(shape)}"
                 for key, shape in sorted(shapes.items())]
    return ", ".join(described) or "nothing"
