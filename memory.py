"""What a configuration needs in memory, estimated before anything is built, against what is available.

A configuration that cannot fit is refused with one line that gives the estimate, instead of failing deep
inside MXNet. The estimate counts what the run allocates: the data on each device, the parameters, their
gradients and the optimizer's state, and each executor's activations and their gradients.
"""
import math
import os
import resource

from errors import RunError

# Virtual memory MXNet maps beyond what it stores: its engine threads' stacks and allocator arenas.
_VIRTUAL_SLACK = 768 << 20
_BYTES = 4  # float32


class MemoryBudgetError(RunError):
    """The configuration needs more memory than the machine or the process limit allows."""


def estimate(symbol, sample_shape, data_bytes, contexts, opt, train_batch, score_batch):
    """Bytes a run needs over all its contexts, as {'data', 'parameters', 'executors'}.

    data_bytes: one context's copy of the data; opt: the optimizer, for its state arrays per parameter;
    train_batch, score_batch: the batch sizes that training and scoring split over the contexts.
    """
    import mxnet as mx
    shapes = _argument_shapes(symbol, sample_shape, 1)
    params = sum(math.prod(shape) for name, shape in shapes.items() if name not in ("data", "softmax_label"))
    # Weights and gradients on every context, a scoring executor's own gradient buffers, the optimizer state.
    count = len(contexts)
    parameters = _BYTES * params * (3 * count + len(opt.new_state(mx.nd.zeros(1))))
    train_rows, score_rows = -(-train_batch // count), -(-score_batch // count)
    executors = count * _BYTES * (2 * _activations(symbol, sample_shape, train_rows)
                                  + _activations(symbol, sample_shape, score_rows))
    return {"data": data_bytes * count, "parameters": parameters, "executors": executors}


def check(needed, available=None):
    """Raise MemoryBudgetError if needed (estimate's dict) exceeds what is available."""
    available = available_bytes() if available is None else available
    total = sum(needed.values())
    if total > available:
        parts = ", ".join(f"{name} {_gb(size)}" for name, size in needed.items())
        raise MemoryBudgetError(f"this configuration needs about {_gb(total)} of memory ({parts}), but "
                                f"{_gb(available)} are available; try a smaller --batch-size, --num-hidden or --cpus")


def available_bytes():
    """The least of the machine's available memory, the cgroup's limit and the process's address-space limit."""
    limits = [_meminfo("MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _virtual_size() - _VIRTUAL_SLACK)
    limits.append(_cgroup_room())
    return max(0, min(limit for limit in limits if limit is not None))


def _argument_shapes(symbol, sample_shape, rows):
    shapes = symbol.infer_shape(data=(rows, *sample_shape), softmax_label=(rows,))[0]
    return dict(zip(symbol.list_arguments(), shapes))


def _activations(symbol, sample_shape, rows):
    """Floats held by one executor's forward outputs over rows samples (its backward holds as many again)."""
    internals = symbol.get_internals()
    _, outputs, _ = internals.infer_shape(data=(rows, *sample_shape), softmax_label=(rows,))
    return sum(math.prod(shape) for shape in outputs)


def _gb(size):
    return f"{size / (1 << 30):.1f} GB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MB"


def _meminfo(key):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _virtual_size():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room():
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - current
