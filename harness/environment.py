"""The variables of the environment that MXNet, OpenMP, matplotlib and Python read, before MXNet.

A value that would crash MXNet (a C++ exception that aborts the process: MXNET_MKLDNN_ENABLED=x),
give a traceback (MXNET_SUBGRAPH_BACKEND=x) or make a successful run print on stderr (OpenMP's
"Invalid value" lines) is refused in one line that names the variable. A few are made quiet
instead, where the trainer does not depend on them: matplotlib's backend and its cache folder, and
MXNet's own deprecation warnings as it loads. Variables that ask a library for diagnostics
(MXNET_ENGINE_INFO, MXNET_EXEC_VERBOSE_LOGGING, MXNET_SUBGRAPH_VERBOSE, OMP_DISPLAY_ENV,
OPENBLAS_VERBOSE, DNNL_VERBOSE...) or announce a switch (MXNET_SUBGRAPH_BACKEND=NONE,
MXNET_DISABLE_MKLDNN_*) print what they ask for. Imports nothing heavy.

Each variable has a rule in _RULES, from how mxnet 1.9.1 parses it (dmlc::GetEnv: an integer of
C++'s `>>`, a boolean of true, false, 1 or 0) and from trying values that parse but misbehave (0
temporary copies divide by zero; a million random-number copies never finish starting). OpenMP's
own variables are tried on libgomp itself, which says what it refuses.
"""
import importlib.util
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings

from harness.errors import ConfigError

# The engines that mxnet 1.9.1's engine.cc knows; any other name ends the process in MXNet's C++.
ENGINES = ("NaiveEngine", "ThreadedEngine", "ThreadedEnginePerDevice")
# The subgraph backends a CPU build of mxnet 1.9.1 registers, and NONE for none.
SUBGRAPH_BACKENDS = ("MKLDNN", "MKLDNN_QUANTIZE", "default", "default_v2", "NONE")
# What MXNET_USE_OPERATOR_TUNING may list, if not a number.
_TUNED_TYPES = ("float32", "float64", "float16", "int8", "uint8", "int32", "int64")
_INT32 = (-2 ** 31, 2 ** 31 - 1)
_SIZE = (0, 2 ** 63 - 1)


def _int(low, high, meaning="an integer"):
    """A dmlc integer (optional spaces, a sign, digits) in low..high."""
    def rule(value, cores):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            return f"is not {meaning}"
        low_, high_ = (cores if bound == "cores" else bound for bound in (low, high))
        if low_ <= int(text) <= high_:
            return None
        if low_ == high_:
            return f"must be {meaning}"
        return f"must be in {low_}..{high_}" + (f" ({cores} cores here)" if "cores" in (
            low, high) else "")
    return rule


def _bool(value, cores):
    """A dmlc boolean: true, false, 1 or 0, in any case, nothing else."""
    return None if value.lower() in ("true", "false", "1", "0") else "is not true, false, 1 or 0"


def _double(value, cores):
    """A finite number, in decimal, as dmlc::stod reads one."""
    if not re.fullmatch(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", value):
        return "is not a number"
    return None if math.isfinite(float(value)) else "is not a finite number"


def _choice(choices, kind=None):
    """One of choices; kind says what they are ("an engine of MXNet 1.9.1")."""
    def rule(value, cores):
        if value in choices:
            return None
        return f"is not {kind}: use one of {', '.join(choices)}" if kind else \
            f"is not one of {', '.join(choices)}"
    return rule


def _thread_list(value, cores):
    """OpenMP's list of thread counts, one per nesting level: 2 or 2,1."""
    for count in value.split(","):
        problem = _int(1, "cores", "a thread count such as 1 or 2")(count, cores)
        if problem:
            return problem
    return None


def _tuning(value, cores):
    """MXNET_USE_OPERATOR_TUNING: a number (0 is off, any other on), or a list of types to tune."""
    text = value.strip()
    # MXNet reads a value that starts with a digit by atoi, which takes anything.
    if text[:1].isdigit():
        return None
    unknown = [kind for kind in text.split(",") if kind.strip() not in _TUNED_TYPES]
    return f"lists {unknown[0]!r}, not a type of {', '.join(_TUNED_TYPES)}" if unknown else None


def _file(value, cores):
    """The path of a file that exists."""
    return None if os.path.isfile(value) else "is not a file"


_COUNT = _int(1, "cores", "a thread count such as 1 or 2")
# Each variable's rule: value, cores -> what is wrong, or None. Integers that MXNet uses as a
# switch (0 off, anything else on) take any int.
_RULES = {
    "OMP_NUM_THREADS": _thread_list,
    **{name: _COUNT for name in (
        "MXNET_OMP_MAX_THREADS", "MXNET_CPU_WORKER_NTHREADS", "MXNET_CPU_PRIORITY_NTHREADS",
        "MXNET_GPU_WORKER_NTHREADS", "MXNET_GPU_COPY_NTHREADS", "MXNET_MP_WORKER_NTHREADS",
        "MXNET_KVSTORE_REDUCTION_NTHREADS")},
    "MXNET_MP_OPENCV_NUM_THREADS": _int(0, "cores", "a thread count such as 0 or 2"),
    "MXNET_USE_NUM_CORES_OPERATOR_TUNING": _int(0, "cores", "a core count such as 0 or 2"),
    # Copies of temporary space and of random-number generators, per device: 0 divides by zero.
    **{name: _int(1, 64, "a count such as 1 or 4") for name in (
        "MXNET_CPU_TEMP_COPY", "MXNET_GPU_TEMP_COPY", "MXNET_CPU_PARALLEL_RAND_COPY",
        "MXNET_GPU_PARALLEL_RAND_COPY", "MXNET_GPU_CUDNN_DROPOUT_STATE_COPY")},
    **{name: _int(*_INT32) for name in (
        "MXNET_BACKWARD_DO_MIRROR", "MXNET_DISABLE_MKLDNN_CONV_OPT", "MXNET_DISABLE_MKLDNN_FC_OPT",
        "MXNET_DISABLE_MKLDNN_FUSE_CONV_BN", "MXNET_DISABLE_MKLDNN_FUSE_CONV_RELU",
        "MXNET_DISABLE_MKLDNN_FUSE_CONV_SUM", "MXNET_DISABLE_MKLDNN_TRANSFORMER_OPT",
        "MXNET_PROFILER_MODE", "MXNET_SUBGRAPH_VERBOSE", "MXNET_KVSTORE_SERIAL_PUSH",
        "MXNET_KVSTORE_USETREE", "MXNET_KVSTORE_TREE_BACKTRACK", "MXNET_ENABLE_GPU_P2P",
        "MXNET_MKLDNN_QFC_DYNAMIC_PARAMS", "MXNET_RNN_USE_WEIGHT_CACHE", "MXNET_USE_MKLDNN_RNN",
        "MXNET_QUANTIZATION_VERBOSE", "MXNET_CUDNN_AUTOTUNE_DEFAULT", "MXNET_TENSORRT_VERBOSE",
        "MXNET_CUDA_GRAPHS_MAX_LOG_ENTRIES", "MXNET_MKLDNN_CACHE_NUM",
        "MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN", "MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_FWD",
        "MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_BWD", "MXNET_GPU_MEM_POOL_RESERVE",
        "MXNET_GPU_MEM_POOL_ROUND_LINEAR_CUTOFF", "MXNET_TENSORRT_MAX_BATCH_SIZE")},
    **{name: _int(*_SIZE) for name in (
        "MXNET_CPU_PARALLEL_SIZE", "MXNET_EXEC_INPLACE_GRAD_SUM_CAP", "MXNET_EXEC_NUM_TEMP",
        "NNVM_EXEC_NUM_TEMP", "MXNET_KVSTORE_BIGARRAY_BOUND", "MXNET_KVSTORE_SLICE_THRESHOLD",
        "MXNET_KVSTORE_TREE_ARRAY_BOUND", "MXNET_GPU_MEM_LARGE_ALLOC_ROUND_SIZE",
        "MXNET_GPU_MEM_POOL_PAGE_SIZE")},
    # The memory planner doubles its range up to this: -1, read as 2**64 - 1, never ends.
    "NNVM_EXEC_MATCH_RANGE": _int(0, 2 ** 30),
    "MXNET_PROFILER_AUTOSTART": _int(*_INT32),
    **{name: _bool for name in (
        "MXNET_DISABLE_MKLDNN_FUSE_FC_ELTWISE", "MXNET_DISABLE_MKLDNN_QEM_FLOAT_OUTPUT",
        "MXNET_DISABLE_MKLDNN_QEM_FUSE_ALL", "MXNET_DISABLE_MKLDNN_QFC_FLOAT_OUTPUT",
        "MXNET_DISABLE_MKLDNN_QFC_FUSE_ALL", "MXNET_DISABLE_MKLDNN_QTRANSFORMER_FLOAT_OUTPUT",
        "MXNET_DISABLE_MKLDNN_QTRANSFORMER_FUSE_ALL", "MXNET_ELIMINATE_COMMON_EXPR",
        "MXNET_ENABLE_CUDA_GRAPHS", "MXNET_ENFORCE_DETERMINISM", "MXNET_ENGINE_INFO",
        "MXNET_EXEC_BULK_EXEC_INFERENCE", "MXNET_EXEC_BULK_EXEC_TRAIN",
        "MXNET_EXEC_VERBOSE_LOGGING", "MXNET_FC_TRUE_FP16", "MXNET_FUSION_SIZE_WARNING",
        "MXNET_FUSION_VERBOSE", "MXNET_INFER_STORAGE_TYPE_VERBOSE_LOGGING",
        "MXNET_KVSTORE_DIST_ROW_SPARSE_VERBOSE", "MXNET_KVSTORE_LOGTREE",
        "MXNET_MEM_PLAN_VERBOSE_LOGGING", "MXNET_MKLDNN_DEBUG", "MXNET_MKLDNN_ENABLED",
        "MXNET_MKLDNN_FORCE_FC_AB_FORMAT", "MXNET_OUTPUT_TUNING_DATA", "MXNET_RTC_VERBOSE",
        "MXNET_SAFE_ACCUMULATION", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "MXNET_USE_FUSION",
        "MXNET_VERBOSE_TUNING_INFO", "NNVM_AUTO_SEARCH_MATCH_RANGE", "MXNET_CUDA_LIB_CHECKING",
        "MXNET_CUDNN_LIB_CHECKING", "MXNET_CUDA_ALLOW_TENSOR_CORE",
        "MXNET_CUDA_TENSOR_OP_MATH_ALLOW_CONVERSION", "MXNET_CUDA_GRAPHS_VERBOSE")},
    "MXNET_TUNING_WEIGHT_SCALE": _double,
    "MXNET_KVSTORE_TREE_LINK_USAGE_PENALTY": _double,
    "MXNET_ENGINE_TYPE": _choice(ENGINES, "an engine of MXNet 1.9.1"),
    "MXNET_SUBGRAPH_BACKEND": _choice(SUBGRAPH_BACKENDS),
    "MXNET_GPU_MEM_POOL_TYPE": _choice(("Naive", "Round", "Unpooled")),
    "MXNET_USE_OPERATOR_TUNING": _tuning,
    # Read by mxnet's Python side as it loads.
    "MXNET_LIBRARY_PATH": _file,
    "MXNET_ENABLE_CYTHON": _int(*_INT32),
    "MXNET_ENFORCE_CYTHON": _int(0, 0, "0: this mxnet has no Cython modules"),
    # ps-lite's, for a dist_sync job, which harness.launch sets. A role other than worker makes
    # `import mxnet` serve the job (with the four _DMLC); a test knob drops messages on purpose.
    "DMLC_ROLE": _choice(("worker", "server", "scheduler")),
    "DMLC_NUM_WORKER": _int(1, _INT32[1], "a count of processes"),
    "DMLC_NUM_SERVER": _int(1, _INT32[1], "a count of processes"),
    "DMLC_PS_ROOT_PORT": _int(1, 65535, "a port"),
    "PS_DROP_MSG": _int(0, 0, "0: other values drop ps-lite's messages, to test it"),
    # OpenMP's diagnostics, which print as they are asked to; any other value, libgomp refuses.
    "OMP_DISPLAY_ENV": lambda value, cores: _choice(("true", "false", "verbose"))(
        value.strip().lower(), cores),
    "OMP_DISPLAY_AFFINITY": lambda value, cores: _choice(("true", "false"))(
        value.strip().lower(), cores),
}
# libgomp's own variables (OpenMP's OMP_*, GNU's GOMP_*), but those with a rule of their own.
_OPENMP = re.compile(r"(OMP|GOMP)_[A-Z0-9_]+")
# What MXNet's library reads that needs no rule: oneDNN ignores a value it does not know, and
# prints or writes the diagnostics that its VERBOSE and JIT_DUMP ask for; ps-lite reads its numbers
# with atoi (anything else is 0, its default); the rest are names in its text, not variables.
UNCHECKED = ("DNNL_CPU_ISA_HINTS", "DNNL_DEFAULT_FPMATH_MODE", "DNNL_ITT_TASK_LEVEL",
             "DNNL_JIT_DUMP", "DNNL_JIT_PROFILE", "DNNL_MAX_CPU_ISA",
             "DNNL_PRIMITIVE_CACHE_CAPACITY", "DNNL_VERBOSE", "DNNL_VERBOSE_TIMESTAMP",
             "MKLDNN_JIT_DUMP", "MKLDNN_VERBOSE", "DMLC_INTERFACE", "DMLC_LOCAL",
             "DMLC_LOG_STACK_TRACE_DEPTH", "DMLC_NODE_HOST", "DMLC_PS_ROOT_URI",
             "DMLC_PS_VAN_TYPE", "DMLC_PS_WATER_MARK", "DMLC_RANK", "DMLC_USE_KUBERNETES",
             "PS_HEARTBEAT_INTERVAL", "PS_HEARTBEAT_TIMEOUT", "PS_RESEND", "PS_RESEND_TIMEOUT",
             "PS_VERBOSE", "KMP_FOR_TCHECK", "KMP_FOR_TPROFILE", "MKLDNN_QUANTIZE", "MXNET_C_API",
             "DMLC_JSON_ENABLE_ANY")
# What a serving role needs, else `import mxnet` fails in ps-lite's C++.
_DMLC = ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")


def check(environ, cores):
    """Raise ConfigError naming the first variable in environ that MXNet or OpenMP would refuse."""
    for name, rule in _RULES.items():
        value = environ.get(name)
        # dmlc::GetEnv takes an empty value as unset.
        if not value:
            continue
        problem = rule(value, cores)
        if problem:
            # A value out of range is shown as it is; one that is not of the kind asked, quoted.
            shown = value if problem.startswith("must") else repr(value)
            raise ConfigError(f"{name}={shown} {problem}; fix or unset it")
    if environ.get("DMLC_ROLE") in ("server", "scheduler"):
        missing = [name for name in _DMLC if not environ.get(name)]
        if missing:
            raise ConfigError(
                f"DMLC_ROLE={environ['DMLC_ROLE']} makes this process serve a dist_sync job, "
                f"which needs {', '.join(missing)} too: a launcher sets them (python -m "
                "harness.launch); else unset it")
    problem = _libgomp_says(environ)
    if problem:
        raise ConfigError(problem)


def _libgomp_says(environ):
    """What libgomp, loaded with environ's OpenMP variables, says about them: None if nothing.

    It parses them as it loads, prints what it refuses, and goes on without them. It is loaded into
    a program that does nothing (`true`), in a millisecond, and only if such variables are set.
    """
    openmp = {name: value for name, value in environ.items()
              if _OPENMP.fullmatch(name) and name not in _RULES}
    true = shutil.which("true")
    if not openmp or true is None:
        return None
    spec = importlib.util.find_spec("mxnet")
    # The libgomp that mxnet loads: its own copy if its wheel has one, else the system's.
    bundled = [os.path.join(folder, "libgomp.so.1") for folder in (
        spec.submodule_search_locations or [] if spec else [])]
    library = next((path for path in bundled if os.path.exists(path)), "libgomp.so.1")
    env = dict(openmp, LD_PRELOAD=library, PATH=os.environ.get("PATH", ""))
    try:
        said = subprocess.run([true], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Not the loader's word, if it could not load libgomp: then nothing is known.
    line = [text for text in said.decode(errors="replace").splitlines()
            if text.startswith("libgomp:")][:1]
    if not line:
        return None
    named = [name for name in openmp if name in line[0]]
    what = f"{named[0]}={openmp[named[0]]!r}" if named else "an OpenMP variable"
    return f"{what} is refused by OpenMP ({line[0].strip()}); fix or unset it"


def settle(environ):
    """Quiet what the trainer does not depend on, before MXNet and matplotlib load.

    matplotlib draws the pictures into files with its Agg backend, whatever MPLBACKEND says; where
    its folder for its settings and cache cannot be written, it gets a private temporary one for
    the run, as it would make itself, without its warning. MXNet's own deprecation warnings as it
    loads (about numpy and distutils) are not shown, whatever PYTHONWARNINGS says.
    """
    environ.pop("MPLBACKEND", None)
    if not _writable(_matplotlib_folders(environ)):
        folder = tempfile.mkdtemp(prefix="matplotlib-")
        import atexit
        atexit.register(shutil.rmtree, folder, True)
        environ["MPLCONFIGDIR"] = folder
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mxnet(\.|$)")


def _matplotlib_folders(environ):
    """The folders matplotlib keeps its settings and its font cache in, as matplotlib 3 finds them.

    Both must do: its settings are read from one, its cache written to the other.
    """
    if environ.get("MPLCONFIGDIR"):
        return [environ["MPLCONFIGDIR"]]
    home = environ.get("HOME") or os.path.expanduser("~")
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    config = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return [os.path.join(config, "matplotlib"), os.path.join(cache, "matplotlib")]


def _writable(folders):
    """Whether each folder is one, or can be made, and can be written to: as matplotlib asks."""
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return False
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
            return False
    return True
