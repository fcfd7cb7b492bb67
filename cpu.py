"""The process's CPU settings for MXNet, made before MXNet loads: flush subnormal floats to zero.

Imports nothing heavy. A new thread inherits the floating-point settings of the thread that starts it, so
settings made here, before `import mxnet`, reach MXNet's engine and OpenMP threads too.
"""
import ctypes
import ctypes.util
import platform
import struct
import sys

_FTZ, _DAZ = 0x8000, 0x0040  # MXCSR bits: flush results to zero; treat inputs as zero (denormals-are-zero)
_MXCSR_OFFSET = 28           # of the SSE control register in glibc's x86-64 fenv_t, after the x87 state


def flush_denormals():
    """Set FTZ and DAZ on this x86-64 Linux CPU thread (and so on the threads it starts); return whether set.

    Subnormal floats (below 1.2e-38 in float32) take the slow path of an x86 CPU, about ten times the time
    of a normal one. They arise where values decay towards zero and stay there: Adam's first moment on a
    gradient that is mostly zero, as on dead ReLU units, is multiplied by 0.9 at every step. Flushed to zero,
    they cost nothing, and a value that small changes no weight of a network in float32.
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return False
    env = ctypes.create_string_buffer(32)  # sizeof(fenv_t) on x86-64 glibc
    if libm.fegetenv(env) != 0:
        return False
    mxcsr, = struct.unpack_from("<I", env.raw, _MXCSR_OFFSET)
    struct.pack_into("<I", env, _MXCSR_OFFSET, mxcsr | _FTZ | _DAZ)
    return libm.fesetenv(env) == 0
