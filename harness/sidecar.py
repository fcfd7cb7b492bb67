"""The resume state of a checkpoint: what an exact resume needs, and its checks when read back.

Its JSON (PREFIX-0007.state.json) holds the resolved config, the history, the RNG, the update
count, the digests of the data trained on and where the metrics file ended; its arrays
(PREFIX-0007.state.nd) the optimizer's state by parameter name and, for a checkpoint saved
mid-epoch, the metrics of the batches done. Reading it back checks every field's type, shape,
dtype, storage and range, every array's values for finiteness, and the state's agreement with the
checkpoint and with this run; a problem is one line naming the file and the field.
"""
import dataclasses
import math

from harness.errors import CheckpointError
from harness.report import RECORD_KEYS as RECORD

# The keys of a state's JSON object: a file that holds them is a checkpoint's state.
KEYS = ("config", "history", "first_epoch", "rng", "num_update", "data", "metrics", "optimizer")

# What must not change across a resume: the parameters' shapes, the optimizer's state, the epoch's
# batches.
_SAME = ("network", "num_hidden", "optimizer")
_SAME_IN_EPOCH = (
    "batch_size",
    "seed",
    "cpus",
    "gpus",
    "kv_store",
    "data_iter",
    "network",
    "dataset",
)
_MAX_COUNT = 1 << 62


@dataclasses.dataclass
class State:
    """What a checkpoint holds beyond the weights, decoded."""

    config: dict
    history: list
    rng: tuple
    num_update: int
    # parameter name -> its state arrays
    optimizer: dict
    # The first epoch this run trained: 1, or after the checkpoint it warm-started from.
    first_epoch: int = 1
    # data file name -> the SHA-256 of its content; None for data given as iterators.
    data: dict = None
    # Where the metrics file stood at the save: its bytes, its last line's SHA-256, the history's
    # records in it.
    metrics: dict = None
    # For a checkpoint saved mid-epoch: each batch's (samples scored here, samples of all workers).
    samples: list = None
    # For a checkpoint saved mid-epoch: per worker, per device, a (batches, 2) array of the batches
    # done.
    stats: list = None


def encode(state):
    """(the JSON values, name -> NDArray) that checkpoint.save writes for state."""
    name, keys, pos, has_gauss, cached = state.rng
    values = dict(zip(KEYS, (
        state.config, state.history, state.first_epoch,
        [name, keys.tolist(), int(pos), int(has_gauss), float(cached)], state.num_update,
        state.data, state.metrics, {name: len(arrays) for name, arrays in state.optimizer.items()},
    )))
    arrays = {f"optimizer:{name}:{i}": array for name, states in state.optimizer.items()
              for i, array in enumerate(states)}
    if state.samples is not None:
        values["samples"] = [list(pair) for pair in state.samples]
        values["stats"] = [len(devices) for devices in state.stats]
        arrays.update(
            {
                f"stats:{worker}:{device}": array
                for worker, devices in enumerate(state.stats)
                for device, array in enumerate(devices)
            }
        )
    return values, arrays


class Reader:
    """Decodes and checks one checkpoint's state against this run: read(values, arrays) -> State.

    paths: (its JSON's path, its arrays' path), which the messages name; shapes: parameter name ->
    shape; state_count: the optimizer's state arrays per parameter.
    """

    def __init__(self, paths, config, tag, shapes, state_count):
        self.path, self.arrays_path = paths
        self.config, self.tag, self.shapes, self.state_count = config, tag, shapes, state_count

    def need(self, ok, field, expected, path=None):
        """Raise CheckpointError naming the file and the field unless ok."""
        if not ok:
            raise CheckpointError(f"{path or self.path}: field {field}: expected {expected}")

    def read(self, values, load_arrays, workers, devices):
        """The State in values, and in the arrays load_arrays() returns once values pass.

        workers and devices: how many this run has (a mid-epoch checkpoint's metrics are kept per
        worker and device).
        """
        need, tag = self.need, self.tag
        need(isinstance(values, dict), "(top)", "a JSON object")
        epoch = tag.epoch - 1 if tag.interrupted else tag.epoch
        first = values.get("first_epoch")
        need(
            type(first) is int and 1 <= first <= epoch + 1,
            "first_epoch",
            f"an epoch in 1..{epoch + 1}",
        )
        history = values.get("history")
        need(isinstance(history, list) and len(history) == epoch - first + 1, "history",
             f"a list of the {epoch - first + 1} records of epochs {first} to {epoch}")
        for i, record in enumerate(history):
            need(
                isinstance(record, dict)
                and tuple(record) == RECORD
                and record["epoch"] == first + i
                and all(_number(record[k]) for k in RECORD[1:]),
                f"history[{i}]",
                f"the record of epoch {first + i}",
            )
        state = State(
            config=self._config(values.get("config")),
            history=history,
            rng=self._rng(values.get("rng")),
            num_update=self._count(values.get("num_update"), "num_update"),
            optimizer={},
            first_epoch=first,
            data=self._digests(values.get("data")),
            metrics=self._metrics(values.get("metrics"), len(history)),
        )
        counts = self._counts(values.get("optimizer"), state.num_update)
        if tag.interrupted:
            self._in_epoch_counts(values, workers, devices)
        arrays = load_arrays()
        state.optimizer = {
            name: [
                self._array(arrays, f"optimizer:{name}:{i}", self.shapes[name])
                for i in range(count)
            ]
            for name, count in counts.items()
        }
        if tag.interrupted:
            state.samples = [tuple(pair) for pair in values["samples"]]
            state.stats = [
                [self._array(arrays, f"stats:{w}:{d}", (tag.batches, 2)) for d in range(devices)]
                for w in range(workers)
            ]
        return state

    def _config(self, old):
        """The saved config, checked for the fields that must not change across this resume."""
        fields = {f.name for f in dataclasses.fields(self.config)}
        self.need(
            isinstance(old, dict) and set(old) == fields,
            "config",
            "the fields of this trainer's Config",
        )
        for key in _SAME + (_SAME_IN_EPOCH if self.tag.interrupted else ()):
            now = getattr(self.config, key)
            now = list(now) if isinstance(now, tuple) else now
            self.need(
                old[key] == now,
                f"config.{key}",
                f"{now!r} as in this run, but the checkpoint has {old[key]!r}",
            )
        self.need(
            isinstance(old["mom"], (int, float)) and (old["mom"] > 0) == (self.config.mom > 0),
            "config.mom",
            "momentum on or off as in this run",
        )
        return old

    def _count(self, value, field):
        """A count: an integer in 0..2**62."""
        self.need(type(value) is int and 0 <= value < _MAX_COUNT, field, "an integer >= 0")
        return value

    def _rng(self, value):
        """The RNG's state as numpy's RandomState.set_state takes it."""
        import numpy as np
        ok = isinstance(value, list) and len(value) == 5 and value[0] == "MT19937"
        if ok:
            name, keys, pos, has_gauss, cached = value
            ok = (
                isinstance(keys, list)
                and len(keys) == 624
                and all(type(k) is int and 0 <= k < 2**32 for k in keys)
                and type(pos) is int
                and 0 <= pos <= 624
                and has_gauss in (0, 1)
                and _number(cached)
            )
        self.need(ok, "rng", "a MT19937 state: name, 624 keys, position, gauss flag and value")
        return value[0], np.array(value[1], dtype=np.uint32), value[2], value[3], float(value[4])

    def _digests(self, value):
        """The SHA-256 of each data file trained on, or None (data given as iterators)."""
        self.need(value is None or isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in value.items()),
            "data", "null or the SHA-256 of each data file")
        return value

    def _metrics(self, value, records):
        """Where the metrics file stood at the save, or None."""
        self.need(
            value is None
            or isinstance(value, dict)
            and set(value) == {"bytes", "sha256", "records"}
            and type(value["bytes"]) is int
            and 0 <= value["bytes"] < _MAX_COUNT
            and isinstance(value["sha256"], str)
            and len(value["sha256"]) == 64
            and type(value["records"]) is int
            and 0 <= value["records"] <= records,
            "metrics",
            "null or where the metrics file stood: its bytes, its last line's SHA-256 and "
            f"how many of the {records} records it held",
        )
        return value

    def _counts(self, counts, num_update):
        """Parameter name -> its count of state arrays: each parameter's, once it has stepped."""
        names = sorted(self.shapes)
        self.need(
            isinstance(counts, dict) and (sorted(counts) == names if num_update else not counts),
            "optimizer",
            f"the state of each of {', '.join(names)}",
        )
        for name, count in counts.items():
            self.need(count == self.state_count, f"optimizer.{name}", f"{self.state_count} arrays")
        return counts

    def _in_epoch_counts(self, values, workers, devices):
        """Check a mid-epoch checkpoint's sample counts and metrics' layout against its name."""
        batches = self.tag.batches
        samples = values.get("samples")
        self.need(
            isinstance(samples, list)
            and len(samples) == batches
            and all(
                isinstance(p, list)
                and len(p) == 2
                and all(type(n) is int and 0 < n < _MAX_COUNT for n in p)
                for p in samples
            ),
            "samples",
            f"{batches} pairs of sample counts",
        )
        self.need(
            values.get("stats") == [devices] * workers,
            "stats",
            f"{workers} worker(s) of {devices} device(s), as this run has (resume on as many)",
        )

    def _array(self, arrays, key, shape):
        """arrays[key], a dense float32 array of this shape whose values are all finite."""
        import mxnet as mx
        import numpy as np
        array = arrays.get(key)
        self.need(
            isinstance(array, mx.nd.NDArray)
            and array.stype == "default"
            and array.shape == tuple(shape)
            and array.dtype == np.float32,
            f"arrays[{key}]",
            f"a dense float32 array of shape {tuple(shape)}",
            self.arrays_path,
        )
        self.need(np.isfinite(array.asnumpy()).all(), f"arrays[{key}]",
                  "finite values, but it holds NaN or infinities: the checkpoint cannot be used",
                  self.arrays_path)
        return array


def _number(value):
    """Whether value is a finite JSON number (bool is no number)."""
    return type(value) in (int, float) and math.isfinite(value)
