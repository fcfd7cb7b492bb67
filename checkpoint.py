"""Checkpoints in MXNet's own format, plus a JSON sidecar with what an exact resume needs."""
import base64
import json
import os
import secrets

import mxnet as mx
import numpy as np


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the configured network; one line."""


INTERRUPTED = "interrupted"  # the epoch tag of the checkpoint saved mid-epoch on a signal


def paths(prefix, epoch):
    """Return the symbol, params and sidecar paths, named as mx.model.save_checkpoint does; epoch may be INTERRUPTED."""
    stem = f"{prefix}-{epoch}" if epoch == INTERRUPTED else f"{prefix}-{epoch:04d}"
    return f"{prefix}-symbol.json", f"{stem}.params", f"{stem}.state.json"


def save(prefix, epoch, symbol, params, trainer_state):
    """Write symbol, params (arg: keys) and sidecar, each atomically; the params file is written last."""
    symbol_path, params_path, state_path = paths(prefix, epoch)
    write_atomic(symbol_path, lambda tmp: symbol.save(tmp))
    write_atomic(state_path, lambda tmp: _write_json(tmp, trainer_state))
    # Written last, so a params file whose sidecar is missing never exists: loading one finds both.
    write_atomic(params_path, lambda tmp: mx.nd.save(tmp, {f"arg:{name}": value for name, value in params.items()}))


def load(prefix, epoch, params):
    """Copy the saved weights into params (name -> NDArray) and return the sidecar's trainer state."""
    _, params_path, state_path = paths(prefix, epoch)
    for path in (params_path, state_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"no checkpoint at {path}")
    try:
        saved = mx.nd.load(params_path)
    except mx.base.MXNetError:
        raise CheckpointError(f"{params_path} is not a readable MXNet params file") from None
    try:
        with open(state_path) as f:
            state = json.load(f)
    except ValueError:
        raise CheckpointError(f"{state_path} is not valid JSON") from None
    expected = {f"arg:{name}": array.shape for name, array in params.items()}
    found = {key: value.shape for key, value in saved.items()} if isinstance(saved, dict) else {}
    if found != expected:
        raise CheckpointError(f"{params_path} holds {_describe(found)}, but the configured network has "
                              f"{_describe(expected)}")
    for name, array in params.items():
        array[:] = saved[f"arg:{name}"]
    return state


def encode_array(array):
    """An NDArray as JSON-safe text, bit for bit."""
    value = array.asnumpy()
    return {"dtype": str(value.dtype), "shape": list(value.shape),
            "data": base64.b64encode(value.tobytes()).decode("ascii")}


def decode_array(encoded, ctx):
    """The inverse of encode_array, on ctx."""
    raw = base64.b64decode(encoded["data"])
    return mx.nd.array(np.frombuffer(raw, dtype=encoded["dtype"]).reshape(encoded["shape"]), ctx=ctx,
                       dtype=encoded["dtype"])


def _describe(shapes):
    return ", ".join(f"{key[4:]} {tuple(shape)}" for key, shape in sorted(shapes.items())) or "nothing"


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def write_atomic(path, write):
    """Run write(tmp) on a temporary file beside path, flush it to disk, then rename it over path."""
    # The same folder, so the rename is atomic: a crash at any moment leaves the old file or the new one, never a
    # torn one. Created with open(), not mkstemp, so the file gets the usual permissions rather than owner-only.
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    open(tmp, "xb").close()
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
