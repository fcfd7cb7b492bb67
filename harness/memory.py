"""What a configuration needs in memory, estimated before anything is built, against what is."""
# A configuration that cannot fit is refused with one line that gives the estimate, instead of
# failing deep inside MXNet. The estimate counts what the run allocates: the data on each device,
# the parameters, their gradients and the optimizer's state, and each executor's activations and
# their gradients.
import math
import os
import resource

from harness.datasets import COLS, DATA, LABEL, ROWS
from harness.errors import MemoryBudgetError

# Virtual memory MXNet maps beyond what it stores: its engine threads' stacks and allocator arenas.
_VIRTUAL_SLACK = 768 << 20
# float32
_BYTES = 4


def data_needs(train_count, test_count, contexts, data_iter):
    """Bytes the data takes, from the sample counts of the files' headers.

    Before any of it is read. The host holds the bytes read and, while uploading, the floats made of
    them; each device holds a copy of both sets, as floats at most. MXNet's own iterator holds its
    floats on the host instead.
    """
    pixels = ROWS * COLS * (train_count + test_count)
    copies = 1 if data_iter == "mxnet" else contexts
    return {"data read": pixels, "data as floats": _BYTES * pixels * (1 + copies)}


def model_needs(graph, sample_shape, rows, contexts, state_count):
    """Bytes the bound model needs over all its contexts, as {'parameters', 'executors'}.

    rows: (a training share's samples, a scoring share's samples) per context, or 0 where there is
    none; state_count: the optimizer's state arrays per parameter.
    """
    shapes = _argument_shapes(graph, sample_shape, 1)
    params = sum(math.prod(shape) for name, shape in shapes.items() if name not in (DATA, LABEL))
    # Weights and gradients on every context, a scoring executor's own gradient buffers, the
    # optimizer state.
    parameters = _BYTES * params * (3 * contexts + state_count)
    train_rows, score_rows = (-(-count // contexts) for count in rows)
    executors = contexts * _BYTES * (2 * _activations(graph, sample_shape, train_rows)
                                     + _activations(graph, sample_shape, score_rows))
    return {"parameters": parameters, "executors": executors}


def check(needed, available=None):
    """Raise MemoryBudgetError if needed (estimate's dict) exceeds what is available."""
    available = available_bytes() if available is None else available
    total = sum(needed.values())
    if total > available:
        parts = ", ".join(f"{name} {_gb(size)}" for name, size in needed.items())
        raise MemoryBudgetError(
            f"this configuration needs about {_gb(total)} of memory ({parts}), but "
            f"{_gb(available)} are available; try a smaller --batch-size, --num-hidden or --cpus"
        )


def available_bytes():
    """The least of the machine's available memory.

    The cgroup's limit and the process's address-space limit.
    """
    limits = [_meminfo("MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _virtual_size() - _VIRTUAL_SLACK)
    limits.append(_cgroup_room())
    return max(0, min(limit for limit in limits if limit is not None))


def _argument_shapes(symbol, sample_shape, rows):
    shapes = symbol.infer_shape(**{DATA: (rows, *sample_shape), LABEL: (rows,)})[0]
    return dict(zip(symbol.list_arguments(), shapes))


def _activations(symbol, sample_shape, rows):
    """Floats held by one executor's forward outputs over rows samples (its backward, as many)."""
    if not rows:
        return 0
    internals = symbol.get_internals()
    _, outputs, _ = internals.infer_shape(**{DATA: (rows, *sample_shape), LABEL: (rows,)})
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
