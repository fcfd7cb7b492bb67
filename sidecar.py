"""The resume sidecar (PREFIX-0007.state.json): what an exact resume needs, and its checks when read back.

It holds the resolved config, the history, the RNG, the optimizer's state by parameter name, and for a
checkpoint saved mid-epoch the batches done with their metrics. Reading it back checks every field's type,
shape, dtype and range, and its agreement with the checkpoint and with this run; a problem is one line
naming the file and the field.
"""
import base64
import dataclasses
import math

import mxnet as mx
import numpy as np

from checkpoint import CheckpointError

_RECORD = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "samples_per_second")
# What must not change across a resume: the parameters' shapes, the optimizer's state, the epoch's batches.
_SAME = ("network", "num_hidden", "optimizer")
_SAME_IN_EPOCH = ("batch_size", "seed", "cpus", "gpus", "kv_store", "data_iter", "network", "fast")


def state(config, history, rng_state, opt, meter=None, batches=None):
    """The sidecar's contents; with meter and batches, of a checkpoint saved after that batch of an epoch."""
    name, keys, pos, has_gauss, cached = rng_state
    saved = {"epoch": len(history), "config": dataclasses.asdict(config), "history": history,
             "rng": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "optimizer": {"name": config.optimizer, "num_update": opt.num_update,
                           "state": {key: [_encode(array) for array in arrays] for key, arrays in opt.state.items()}}}
    if meter is not None:
        saved["in_epoch"] = {"epoch": len(history) + 1, "batches_done": batches,
                             "samples": [list(pair) for pair in meter.samples[:batches]],
                             "stats": [_encode(mx.nd.stack(*slots[:batches])) for slots in meter.stats]}
    return saved


def check(path, saved, config, tag, layout, opt, ctxs):
    """The sidecar's values, checked and decoded: history, num_update, optimizer_state, rng, samples, stats."""
    def need(ok, field, expected):
        if not ok:
            raise CheckpointError(f"{path}: field {field}: expected {expected}")

    need(isinstance(saved, dict), "(top)", "a JSON object")
    epoch = tag.epoch - 1 if tag.interrupted else tag.epoch
    need(saved.get("epoch") == epoch and type(saved.get("epoch")) is int, "epoch", f"{epoch}, as its file name says")
    history = saved.get("history")
    need(isinstance(history, list) and len(history) == epoch, "history", f"a list of {epoch} epoch records")
    for i, record in enumerate(history):
        need(isinstance(record, dict) and tuple(record) == _RECORD and record["epoch"] == i + 1
             and all(_number(record[k]) for k in _RECORD[1:]), f"history[{i}]", f"the record of epoch {i + 1}")
    old = saved.get("config")
    need(isinstance(old, dict) and set(old) == {f.name for f in dataclasses.fields(config)}, "config",
         "the fields of this trainer's Config")
    for key in _SAME + (_SAME_IN_EPOCH if tag.interrupted else ()):
        now = list(getattr(config, key)) if isinstance(getattr(config, key), tuple) else getattr(config, key)
        need(old[key] == now, f"config.{key}", f"{now!r} as in this run, but the checkpoint has {old[key]!r}")
    need((old["mom"] > 0) == (config.mom > 0), "config.mom", "momentum on or off as in this run")
    rng = _rng(saved.get("rng"))
    need(rng is not None, "rng", "a MT19937 state: name, 624 keys, position, gauss flag and value")
    optimizer = saved.get("optimizer")
    need(isinstance(optimizer, dict) and optimizer.get("name") == config.optimizer, "optimizer.name",
         repr(config.optimizer))
    num_update = optimizer.get("num_update")
    need(type(num_update) is int and num_update >= 0, "optimizer.num_update", "an integer >= 0")
    arrays = optimizer.get("state")
    count = len(opt.new_state(mx.nd.zeros(1)))
    need(isinstance(arrays, dict) and (set(arrays) == set(layout.names) if num_update else not arrays),
         "optimizer.state", f"the state of each of {', '.join(layout.names)}")
    decoded = {}
    for name, values in arrays.items():
        need(isinstance(values, list) and len(values) == count, f"optimizer.state.{name}", f"{count} arrays")
        decoded[name] = [_decode(value, layout.shapes[name], ctxs[0], need, f"optimizer.state.{name}[{i}]")
                         for i, value in enumerate(values)]
    result = {"history": history, "num_update": num_update, "optimizer_state": decoded, "rng": rng}
    if tag.interrupted:
        result.update(_in_epoch(saved.get("in_epoch"), tag, ctxs, need))
    return result


def _in_epoch(in_epoch, tag, ctxs, need):
    need(isinstance(in_epoch, dict) and in_epoch.get("epoch") == tag.epoch, "in_epoch.epoch", tag.epoch)
    batches = tag.batches
    need(in_epoch.get("batches_done") == batches, "in_epoch.batches_done", f"{batches}, as its file name says")
    samples = in_epoch.get("samples")
    need(isinstance(samples, list) and len(samples) == batches
         and all(isinstance(p, list) and len(p) == 2 and all(type(n) is int and n > 0 for n in p) for p in samples),
         "in_epoch.samples", f"{batches} pairs of sample counts")
    stats = in_epoch.get("stats")
    need(isinstance(stats, list) and len(stats) == len(ctxs), "in_epoch.stats",
         f"one array per device: {len(ctxs)}, as this run has (resume on as many)")
    decoded = [_decode(value, (batches, 2), ctx, need, f"in_epoch.stats[{d}]") for d, (value, ctx) in
               enumerate(zip(stats, ctxs))]
    return {"samples": [tuple(p) for p in samples], "stats": [[array[i] for i in range(batches)] for array in decoded]}


def _number(value):
    return type(value) in (int, float) and math.isfinite(value)


def _rng(value):
    """numpy's RandomState state from its JSON form, or None if it is not one."""
    if not (isinstance(value, list) and len(value) == 5 and value[0] == "MT19937"):
        return None
    name, keys, pos, has_gauss, cached = value
    if not (isinstance(keys, list) and len(keys) == 624 and all(type(k) is int and 0 <= k < 2 ** 32 for k in keys)
            and type(pos) is int and 0 <= pos <= 624 and has_gauss in (0, 1) and _number(cached)):
        return None
    return name, np.array(keys, dtype=np.uint32), pos, has_gauss, float(cached)


def _encode(array):
    """An NDArray as JSON-safe text, bit for bit."""
    value = array.asnumpy()
    return {"dtype": str(value.dtype), "shape": list(value.shape),
            "data": base64.b64encode(value.tobytes()).decode("ascii")}


def _decode(encoded, shape, ctx, need, field):
    need(isinstance(encoded, dict) and encoded.get("dtype") == "float32" and encoded.get("shape") == list(shape)
         and isinstance(encoded.get("data"), str), field, f"a float32 array of shape {tuple(shape)}")
    try:
        raw = base64.b64decode(encoded["data"], validate=True)
    except ValueError:
        raw = b""
    need(len(raw) == 4 * int(np.prod(shape)), field, f"{4 * int(np.prod(shape))} bytes of base64 data")
    return mx.nd.array(np.frombuffer(raw, dtype=np.float32).reshape(shape), ctx=ctx)
