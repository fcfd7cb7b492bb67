"""Checkpoints as one unit: MXNet's own files, the resume sidecar, and a manifest written last.

A checkpoint of epoch 7 is PREFIX-symbol.json and PREFIX-0007.params, as mx.model.save_checkpoint writes
them (so mx.model.load_checkpoint, Module and SymbolBlock.imports read them), PREFIX-0007.state.json, what an
exact resume needs, and PREFIX-0007.manifest.json, the SHA-256 of the other three. The manifest is written
last, so a checkpoint without one, or whose files do not match it, is torn: it is never loaded. One saved
mid-epoch on a signal is PREFIX-interrupted-0009-000123.*: epoch 9, 123 batches done.
"""
import errno
import json
import math
import os
import re

import mxnet as mx

import files
from errors import RunError

FORMAT = 1
_MAX_JSON = 64 << 20   # a sidecar holds the optimizer state as base64: 2 copies of 109k floats are 1.2 MB
_MAX_MANIFEST = 1 << 16
_NAME = re.compile(r"^(?:(\d{4,})|interrupted-(\d{4,})-(\d{6,}))\.manifest\.json$")


class CheckpointError(RunError):
    """A checkpoint that is missing, torn, or does not fit this run; one line."""


class Tag:
    """Which checkpoint: after epoch `epoch`, or (interrupted) in epoch `epoch` after `batches` batches."""

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
        """Sorts checkpoints by the training they hold: interrupted in epoch 9 comes after 8 and before 9."""
        return (self.epoch, 0, self.batches) if self.interrupted else (self.epoch, 1, 0)

    def __eq__(self, other):
        return isinstance(other, Tag) and self.order() == other.order()

    def __hash__(self):
        return hash(self.order())

    def __repr__(self):
        return f"Tag({self.epoch}, {self.batches})"


def paths(prefix, tag):
    """The symbol, params, sidecar and manifest paths of tag."""
    stem = tag.stem(prefix)
    return {"symbol": f"{prefix}-symbol.json", "params": f"{stem}.params", "state": f"{stem}.state.json",
            "manifest": f"{stem}.manifest.json"}


def save(prefix, tag, symbol, params, state):
    """Write the checkpoint's files, each atomically, then its manifest: the unit is complete only then."""
    where = paths(prefix, tag)
    symbol_json = symbol.tojson().encode()
    if _read_or_none(where["symbol"]) != symbol_json:
        files.write_bytes(where["symbol"], symbol_json)
    files.write_atomic(where["params"], lambda tmp: _save_params(tmp, params))
    files.write_bytes(where["state"], json.dumps(state).encode())
    manifest = {"format": FORMAT, "epoch": tag.epoch, "batches": tag.batches,
                "files": {kind: {"name": os.path.basename(where[kind]), "bytes": os.path.getsize(where[kind]),
                                 "sha256": files.sha256(where[kind], _limit(kind))}
                          for kind in ("symbol", "params", "state")}}
    files.write_bytes(where["manifest"], json.dumps(manifest, indent=1).encode())


def _save_params(path, params):
    try:
        mx.nd.save(path, {f"arg:{name}": value for name, value in params.items()})
    except mx.base.MXNetError as err:
        # MXNet's own writer reports a full disk as a failed check: give the OS's reason where it is that.
        usage = os.statvfs(os.path.dirname(os.path.abspath(path)))
        if usage.f_bavail * usage.f_frsize < 4 * sum(array.size for array in params.values()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise OSError(errno.EIO, f"MXNet could not write it: {str(err).splitlines()[0]}") from None


def listing(prefix):
    """Every checkpoint of prefix that has a manifest, oldest first, as Tags."""
    folder, base = os.path.split(os.path.abspath(prefix))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    tags = []
    for name in names:
        if name.startswith(base + "-"):
            match = _NAME.match(name[len(base) + 1:])
            if match:
                epoch, in_epoch, batches = match.groups()
                tags.append(Tag(int(epoch)) if epoch else Tag(int(in_epoch), int(batches)))
    return sorted(tags, key=Tag.order)


def leftovers(prefix):
    """Files of prefix's checkpoints that no manifest covers: those of a save that was cut short."""
    folder, base = os.path.split(os.path.abspath(prefix))
    covered = {os.path.basename(p) for tag in listing(prefix) for p in paths(prefix, tag).values()}
    pattern = re.compile(re.escape(base) + r"-(\d{4,}|interrupted-\d{4,}-\d{6,})\.(params|state\.json)$")
    try:
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if pattern.match(n) and n not in covered)
    except OSError:
        return []


def verify(prefix, tag):
    """Raise CheckpointError unless tag's manifest is sound and its three files match it byte for byte."""
    where = paths(prefix, tag)
    manifest = _read_json(where["manifest"], _MAX_MANIFEST)
    try:
        ok = (manifest["format"] == FORMAT and manifest["epoch"] == tag.epoch and manifest["batches"] == tag.batches
              and all(isinstance(manifest["files"][k][f], t) for k in ("symbol", "params", "state")
                      for f, t in (("name", str), ("bytes", int), ("sha256", str))))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{where['manifest']} is not a manifest of this checkpoint")
    for kind in ("symbol", "params", "state"):
        entry, path = manifest["files"][kind], where[kind]
        if entry["name"] != os.path.basename(path):
            raise CheckpointError(f"{where['manifest']} names {entry['name']}, not {os.path.basename(path)}")
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: the checkpoint is torn")
        if os.path.getsize(path) != entry["bytes"] or files.sha256(path, _limit(kind)) != entry["sha256"]:
            raise CheckpointError(f"{path} does not match its manifest: the checkpoint is torn")


def load(prefix, tag, params, symbol=None):
    """Verify tag, copy its weights into params (name -> NDArray) and return its sidecar's contents.

    symbol: the network this run trains, which the checkpoint's symbol file must hold.
    """
    verify(prefix, tag)
    where = paths(prefix, tag)
    expected = {f"arg:{name}": array.shape for name, array in params.items()}
    # The params file is bounded by what the configured network holds, before MXNet reads it whole.
    need = sum(4 * math.prod(shape) for shape in expected.values()) + 64 * len(expected) + 1024
    if os.path.getsize(where["params"]) > need:
        raise CheckpointError(f"{where['params']} holds more than the configured network: "
                              f"{os.path.getsize(where['params']):,} bytes for {need:,}")
    try:
        saved = mx.nd.load(where["params"])
    except mx.base.MXNetError:
        raise CheckpointError(f"{where['params']} is not a readable MXNet params file") from None
    found = {key: value.shape for key, value in saved.items()} if isinstance(saved, dict) else {}
    if found != expected:
        raise CheckpointError(f"{where['params']} holds {_describe(found)}, but the configured network has "
                              f"{_describe(expected)}")
    if symbol is not None and _read_or_none(where["symbol"]) != symbol.tojson().encode():
        raise CheckpointError(f"{where['symbol']} holds another network than this run's --network and --num-hidden")
    for name, array in params.items():
        array[:] = saved[f"arg:{name}"]
    return _read_json(where["state"], _MAX_JSON)


def remove(prefix, tag):
    """Delete tag's files (manifest first, so that a cut-short removal leaves a torn checkpoint, not a false
    one); tag may also be the path of a file of a save that was cut short."""
    where = paths(prefix, tag) if isinstance(tag, Tag) else {"file": tag}
    for kind in ("manifest", "params", "state", "file"):
        try:
            os.unlink(where[kind])
        except (FileNotFoundError, KeyError):
            pass


def _limit(kind):
    return (4 << 30) if kind == "params" else _MAX_JSON


def _read_or_none(path):
    try:
        return files.read_bounded(path, _MAX_JSON)
    except (OSError, ValueError):
        return None


def _read_json(path, limit):
    try:
        return json.loads(files.read_bounded(path, limit))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}".splitlines()[0]) from None


def _describe(shapes):
    return ", ".join(f"{key[4:]} {tuple(shape)}" for key, shape in sorted(shapes.items())) or "nothing"
