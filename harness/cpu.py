"""The process's CPU settings for MXNet, made before it loads: threads, and subnormals flushed."""
# Imports nothing heavy. MXNet reads its thread counts once, as its library loads; and a new thread
# inherits the floating-point settings of the thread that starts it. So both are set here, before
# `import mxnet`.
import ctypes
import ctypes.util
import os
import platform
import struct
import sys
import tempfile
import warnings

from harness import signals

# The work (floating-point operations of a step, forward and backward, on one context) that each
# OpenMP thread needs to pay for itself. On the 2-core development machine a second thread made a
# step of 161 MFLOP 15% slower and one of 401 MFLOP 27% faster (docs/speed.md): below that, waking
# and joining the threads of every operator costs more than splitting the operator saves.
FLOPS_PER_THREAD = 200e6

# MXCSR bits: flush results to zero; treat inputs as zero (denormals-are-zero).
_FTZ, _DAZ = 0x8000, 0x0040
# The SSE control register's offset in glibc's x86-64 fenv_t, after the x87 state.
_MXCSR_OFFSET = 28
# sizeof(fenv_t) on x86-64 glibc
_FENV_SIZE = 32


def flush_denormals():
    """Set FTZ and DAZ on this x86-64 Linux CPU thread (and so on the threads it starts).

    Return whether set. Subnormal floats (below 1.2e-38 in float32) take the slow path of an x86
    CPU, about ten times the time of a normal one. They arise where values decay towards zero and
    stay there: Adam's first moment on a gradient that is mostly zero, as on dead ReLU units, is
    multiplied by 0.9 at every step. Flushed to zero, they cost nothing, and a value that small
    changes no weight of a network in float32.
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return False
    env = ctypes.create_string_buffer(_FENV_SIZE)
    if libm.fegetenv(env) != 0:
        return False
    mxcsr, = struct.unpack_from("<I", env.raw, _MXCSR_OFFSET)
    struct.pack_into("<I", env, _MXCSR_OFFSET, mxcsr | _FTZ | _DAZ)
    if libm.fesetenv(env) != 0:
        return False
    # numpy, asked for float32's limits (matplotlib asks), warns that the smallest subnormal is
    # zero: with these flags that is the truth, and no news to a run that set them.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal")
    return True


def choose_threads(requested, multiply_adds, batch_per_context, contexts, cores=None):
    """(threads per context for MXNet's operators, why).

    Requested, or from the work and the cores if "auto". multiply_adds: of one sample's forward
    pass; batch_per_context: the samples each context steps on.
    """
    cores = cores or len(os.sched_getaffinity(0))
    if requested != "auto":
        return int(requested), "as --threads says"
    if os.environ.get("OMP_NUM_THREADS"):
        # checks.check_environment has made sure it is counts; OpenMP's first level is the
        # operators'.
        return int(os.environ["OMP_NUM_THREADS"].split(",")[0]), "as OMP_NUM_THREADS says"
    # Forward takes 2 operations a multiply-add, and backward twice that.
    flops = 6 * multiply_adds * batch_per_context
    # Each context has its own engine thread, which runs its operators and their OpenMP threads;
    # Python queues the work besides. So the cores are shared between the contexts, and a small step
    # takes one.
    share = max(1, cores // contexts)
    threads = max(1, min(share, int(flops // FLOPS_PER_THREAD)))
    return (
        threads,
        f"auto: {flops / 1e6:,.0f} MFLOP a step per context, {contexts} context(s), {cores} cores",
    )


def use_threads(threads):
    """Make MXNet's operators use this many OpenMP threads.

    Return False if MXNet is loaded already.
    """
    if "mxnet" in sys.modules:
        # It read its thread counts as it loaded: too late to change them.
        return False
    for name in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        os.environ[name] = str(threads)
    # One engine thread per CPU context, as by default.
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")
    return True


def choose_engine(config):
    """The MXNet engine for config: 'NaiveEngine' for one process on one CPU context, else None.

    With the update in numpy (harness/fast.py), each step waits for its gradients anyway, so a
    threaded engine's hand-over of every operator to a worker thread only adds its latency: the
    naive engine runs each operator at once, on the thread that asks for it, with the same
    kernels and so the same numbers. Several contexts, GPUs and other workers keep MXNet's
    threaded engine, whose asynchrony they need. None leaves MXNet's default.
    """
    one_context = not config.gpus and config.cpus <= 1
    if config.fast and one_context and config.kv_store in ("local", "device"):
        return "NaiveEngine"
    return None


def prepare(config, multiply_adds):
    """Set the process up for MXNet before it loads, as config asks.

    Return the line that says how. The environment MXNet reads is checked first; then its threads,
    and subnormals flushed to zero.
    """
    from harness import checks
    checks.check_environment()
    contexts = config.cpus or (len(config.gpus.split(",")) if config.gpus else 1)
    threads, why = choose_threads(
        config.threads, multiply_adds, -(-config.batch_size // contexts), contexts
    )
    line = f"threads: {threads} ({why})" if use_threads(threads) else \
        "threads: those MXNet loaded with, before main() ran"
    # Before MXNet starts its threads, which inherit it. Once they run, it would flush on this
    # thread alone: numpy's update (harness/fast.py) would then round otherwise than MXNet's
    # kernels, so a process that loaded MXNet first keeps subnormals everywhere.
    if "mxnet" not in sys.modules:
        flush_denormals()
    engine = choose_engine(config)
    if engine and "MXNET_ENGINE_TYPE" not in os.environ and "mxnet" not in sys.modules:
        # A user's own choice stands (checks.check_environment has checked it).
        os.environ["MXNET_ENGINE_TYPE"] = engine
        _start_engine(engine)
    # Read at bind time: it silences a banner per executor.
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    return line


def _start_engine(engine):
    """Load MXNet and start its engine, without the line it logs for a chosen engine.

    MXNet makes its engine at its first operation, and says so on stderr whenever
    MXNET_ENGINE_TYPE is set; a run that succeeds prints nothing there. Anything else written
    to stderr meanwhile is passed on, and a second signal's line, which ends the process at once,
    goes to the real stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, signals.held():
        signals.call_before_exit_now(lambda: os.dup2(saved, 2))
        try:
            os.dup2(captured.fileno(), 2)
            import mxnet as mx
            mx.nd.zeros(1).wait_to_read()
        finally:
            os.dup2(saved, 2)
            signals.call_before_exit_now(None)
            os.close(saved)
            captured.seek(0)
            text = captured.read(1 << 16).decode(errors="replace")
            for line in text.splitlines(keepends=True):
                if f"start using engine: {engine}" not in line:
                    sys.stderr.write(line)
    signals.check()
