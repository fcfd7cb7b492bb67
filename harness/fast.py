"""Where the optimizer's arithmetic runs: in MXNet's operators, or in numpy on the host's memory.

The lesson's optimizer steps each parameter with in-place arithmetic (+=, -=, *=, clip, sqrt).
On a CPU context the executor's arrays live in the host's memory, and numpy can do that arithmetic
over the very same bytes (`Host`), with the vector units MXNet's own element-wise kernels do not
use on this wheel (SSE only), and without a dispatch through MXNet's engine per operation. On a
GPU, or with `--no-fast`, the arithmetic is MXNet's NDArray operators (`Device`). Either way each
element gets the same IEEE float32 operation, so the two give the same bytes: tests show it, step
by step and over whole runs. A placement changes where an operation runs, never what it computes.
"""
import ctypes
import warnings

import mxnet as mx
import numpy as np

# What numpy's RuntimeWarnings say of IEEE arithmetic's special values.
_NUMPY_IEEE = "(invalid value|overflow|divide by zero) encountered"


def placement(config, contexts):
    """Host() where every context is a CPU and config.fast is set; else Device()."""
    if config.fast and all(ctx.device_type == "cpu" for ctx in contexts):
        # MXNet's operators compute an infinity or a NaN silently; numpy warns of each. A step
        # that makes one is a run that diverges, and Run says so in one line.
        warnings.filterwarnings("ignore", _NUMPY_IEEE, RuntimeWarning, "optimizer")
        return Host()
    return Device()


class Device:
    """The update in MXNet's operators, on the arrays' own context: the path a GPU takes."""

    def view(self, array):
        """What the optimizer steps for array, an NDArray of the executor's: the array itself."""
        return array

    def ready(self):
        """Nothing to wait for: MXNet's engine orders the update after the gradients' sum."""

    def state(self, array):
        """A copy of an NDArray of optimizer state, restored from a checkpoint, for the update."""
        return array.copy()

    def ndarray(self, array):
        """An array of the optimizer's state as an NDArray, for a checkpoint: itself."""
        return array


class Host:
    """The update in numpy, over the memory of the executor's CPU arrays."""

    def view(self, array):
        """A HostArray over array's memory, an NDArray of the executor's on a CPU context."""
        return host_view(array)

    def ready(self):
        """Wait until MXNet has nothing in flight: numpy may now read and write the arrays.

        MXNet's engine tracks the work it queues, not numpy's: before numpy reads the summed
        gradients and writes the weights, every operation queued on them must have run.
        """
        mx.nd.waitall()

    def state(self, array):
        """A HostArray copy of an NDArray of optimizer state, restored from a checkpoint."""
        return array.asnumpy().view(HostArray)

    def ndarray(self, array):
        """An array of the optimizer's state as an NDArray on the CPU, for a checkpoint."""
        return mx.nd.array(array, dtype=array.dtype)


class HostArray(np.ndarray):
    """A numpy array that also answers the NDArray methods the optimizers call on their arrays."""

    def zeros_like(self):
        """Zeros of this shape and dtype, in the host's memory: state for a parameter."""
        return np.zeros_like(self)

    def sqrt(self, out=None):
        """The element-wise square root, as NDArray.sqrt computes it (IEEE, correctly rounded)."""
        return np.sqrt(self, out=out)


def host_view(array):
    """A HostArray over the memory of array, a dense NDArray on a CPU context: no copy.

    MXNet's MXNDArrayGetData turns an array held in a oneDNN layout back into the default one, so
    the view sees the elements in order. MXNet's engine does not see what numpy does: read or
    write through the view only once MXNet has nothing in flight on the array (Host.ready). The
    caller keeps array alive.
    """
    if array.context.device_type != "cpu" or array.stype != "default":
        raise ValueError(f"a host view needs a dense CPU array, not {array.stype} on "
                         f"{array.context}")
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    dtype = np.dtype(array.dtype)
    size = int(np.prod(array.shape)) * dtype.itemsize
    memory = (ctypes.c_char * size).from_address(pointer.value)
    return np.frombuffer(memory, dtype).reshape(array.shape).view(HostArray)
