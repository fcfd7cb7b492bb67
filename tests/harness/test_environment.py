"""harness/environment.py: what MXNet, OpenMP and matplotlib read is refused, or made quiet."""
import os
import re
import subprocess
import sys

import pytest

from harness import checks, environment
from harness.errors import ConfigError
from helpers import ROOT

# (variable, value, a fragment of the one line): each would abort MXNet (SIGABRT), give a
# traceback, hang, or print on stderr in a run that succeeds.
REFUSED = [
    ("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN", "garbage", "is not an integer"),
    ("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_FWD", "1.5", "is not an integer"),
    ("MXNET_MKLDNN_ENABLED", "garbage", "is not true, false, 1 or 0"),
    ("MXNET_MKLDNN_ENABLED", "yes", "is not true, false, 1 or 0"),
    ("MXNET_ENGINE_INFO", " 1", "is not true, false, 1 or 0"),
    ("MXNET_SUBGRAPH_BACKEND", "garbage", "is not one of MKLDNN"),
    ("MXNET_SUBGRAPH_BACKEND", "mkldnn", "is not one of MKLDNN"),
    ("MXNET_USE_OPERATOR_TUNING", "garbage", "lists 'garbage'"),
    ("MXNET_USE_OPERATOR_TUNING", "float32,bfloat16", "lists 'bfloat16'"),
    ("MXNET_USE_OPERATOR_TUNING", "int16", "lists 'int16'"),
    ("MXNET_CPU_TEMP_COPY", "0", "must be in 1..64"),
    ("MXNET_CPU_PARALLEL_RAND_COPY", "1000000", "must be in 1..64"),
    ("MXNET_USE_NUM_CORES_OPERATOR_TUNING", "-1", "must be in 0..2"),
    ("NNVM_EXEC_MATCH_RANGE", "-1", "must be in 0.."),
    ("MXNET_KVSTORE_BIGARRAY_BOUND", "99999999999999999999", "must be in 0.."),
    ("MXNET_PROFILER_MODE", "2147483648", "must be in -2147483648..2147483647"),
    ("MXNET_TUNING_WEIGHT_SCALE", "nan", "is not a number"),
    ("MXNET_TUNING_WEIGHT_SCALE", "1e999", "is not a finite number"),
    ("MXNET_ENGINE_TYPE", "Junk", "is not an engine of MXNet 1.9.1"),
    ("MXNET_CPU_WORKER_NTHREADS", "3", "must be in 1..2 (2 cores here)"),
    ("OMP_NUM_THREADS", "2,0", "must be in 1..2"),
    ("MXNET_ENFORCE_CYTHON", "1", "must be 0: this mxnet has no Cython modules"),
    ("MXNET_LIBRARY_PATH", "/nonexistent/libmxnet.so", "is not a file"),
    ("DMLC_ROLE", "garbage", "is not one of worker, server, scheduler"),
    ("DMLC_PS_ROOT_PORT", "70000", "must be in 1..65535"),
    ("PS_DROP_MSG", "10", "must be 0: other values drop"),
    ("OMP_DISPLAY_ENV", "garbage", "is not one of true, false, verbose"),
    ("OMP_WAIT_POLICY", "garbage", "Invalid value for environment variable OMP_WAIT_POLICY"),
    ("OMP_PROC_BIND", "sideways", "OMP_PROC_BIND"),
    ("OMP_SCHEDULE", "sometimes", "OMP_SCHEDULE"),
    ("OMP_STACKSIZE", "4Q", "OMP_STACKSIZE"),
    ("OMP_DYNAMIC", "maybe", "OMP_DYNAMIC"),
    ("OMP_THREAD_LIMIT", "-3", "OMP_THREAD_LIMIT"),
    ("GOMP_SPINCOUNT", "garbage", "GOMP_SPINCOUNT"),
    ("GOMP_CPU_AFFINITY", "x-y", "GOMP_CPU_AFFINITY"),
]

# Values that MXNet and OpenMP take silently, spaces, case and lists included.
ACCEPTED = [
    ("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN", " 7 "),
    ("MXNET_MKLDNN_ENABLED", "TRUE"),
    ("MXNET_MKLDNN_ENABLED", "0"),
    ("MXNET_SUBGRAPH_BACKEND", "MKLDNN"),
    ("MXNET_USE_OPERATOR_TUNING", "float32,int8"),
    ("MXNET_USE_OPERATOR_TUNING", "0"),
    ("MXNET_CPU_TEMP_COPY", "4"),
    ("MXNET_TUNING_WEIGHT_SCALE", "-1.5e-2"),
    ("MXNET_MKLDNN_CACHE_NUM", "-1"),
    ("OMP_NUM_THREADS", "2,1"),
    ("MXNET_ENGINE_TYPE", "NaiveEngine"),
    # An empty value is no value, to MXNet.
    ("MXNET_MKLDNN_ENABLED", ""),
    ("OMP_WAIT_POLICY", "PASSIVE"),
    ("OMP_PROC_BIND", "spread,close"),
    ("OMP_SCHEDULE", "guided,4"),
    ("OMP_PLACES", "cores"),
    ("OMP_STACKSIZE", "4M"),
    ("OMP_DISPLAY_ENV", "false"),
    ("GOMP_SPINCOUNT", "10k"),
    ("GOMP_CPU_AFFINITY", "0-1"),
    # oneDNN ignores what it does not know.
    ("DNNL_MAX_CPU_ISA", "garbage"),
]


@pytest.mark.parametrize("variable, value, expected", REFUSED,
                         ids=[f"{name}={value}" for name, value, _ in REFUSED])
def test_a_value_that_mxnet_or_openmp_would_choke_on_is_refused_naming_the_variable(
    variable, value, expected
):
    with pytest.raises(ConfigError) as refused:
        environment.check({variable: value}, cores=2)
    line = str(refused.value)
    assert line.startswith(f"{variable}=") and expected in line and "\n" not in line, line


@pytest.mark.parametrize("variable, value", ACCEPTED,
                         ids=[f"{name}={value}" for name, value in ACCEPTED])
def test_a_value_that_mxnet_and_openmp_take_is_accepted(variable, value):
    environment.check({variable: value}, cores=2)


def test_a_serving_role_without_the_rest_of_its_job_is_refused():
    with pytest.raises(ConfigError, match="DMLC_ROLE=server makes this process serve"):
        environment.check({"DMLC_ROLE": "server"}, cores=2)
    launched = {"DMLC_ROLE": "server", "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9091",
                "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": "2"}
    environment.check(launched, cores=2)


def test_matplotlibs_backend_is_dropped_and_its_folder_is_private_where_home_cannot_be_written(
    tmp_path
):
    a_file = tmp_path / "file"
    a_file.write_text("")
    environ = {"HOME": str(a_file / "home"), "MPLBACKEND": "garbage"}
    environment.settle(environ)
    assert "MPLBACKEND" not in environ
    folder = environ["MPLCONFIGDIR"]
    assert os.path.isdir(folder) and os.access(folder, os.W_OK) and folder != str(a_file)


def test_a_writable_home_leaves_matplotlib_its_own_folder(tmp_path):
    environ = {"HOME": str(tmp_path)}
    environment.settle(environ)
    assert "MPLCONFIGDIR" not in environ


def test_an_explicit_matplotlib_folder_that_cannot_be_written_is_replaced_for_the_run(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    environ = {"MPLCONFIGDIR": str(a_file)}
    environment.settle(environ)
    assert os.path.isdir(environ["MPLCONFIGDIR"])


def test_checks_check_environment_is_the_entry_that_checks_then_settles(tmp_path):
    environ = {"HOME": str(tmp_path), "MPLBACKEND": "x"}
    checks.check_environment(environ, cores=2)
    assert "MPLBACKEND" not in environ
    with pytest.raises(ConfigError, match="MXNET_MKLDNN_ENABLED"):
        checks.check_environment({"MXNET_MKLDNN_ENABLED": "x"}, cores=2)


# A refused value stops the run before MXNet loads: nothing on stdout, and mxnet not imported.
_REFUSED_BEFORE_MXNET = """
import sys
sys.path.insert(0, sys.argv[1])
import train_mnist
code = train_mnist.main(sys.argv[2:])
sys.stderr.write(f"mxnet loaded: {'mxnet' in sys.modules}\\n")
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("variable, value", [
    ("MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN", "garbage"), ("MXNET_MKLDNN_ENABLED", "garbage"),
    ("MXNET_SUBGRAPH_BACKEND", "garbage"), ("MXNET_USE_OPERATOR_TUNING", "garbage"),
    ("OMP_WAIT_POLICY", "garbage"), ("MXNET_CPU_TEMP_COPY", "0"), ("OMP_SCHEDULE", "x,2"),
    ("MXNET_VERBOSE_TUNING_INFO", "on"),
])
def test_the_trainer_refuses_a_bad_variable_in_one_line_before_mxnet_loads(synthetic_dir, variable,
                                                                           value):
    done = subprocess.run([sys.executable, "-c", _REFUSED_BEFORE_MXNET, ROOT, "--data-dir",
                           synthetic_dir, "--num-epochs", "1"], capture_output=True, text=True,
                          env=dict(os.environ, **{variable: value}), timeout=120)
    err = done.stderr.splitlines()
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert err[-1] == "mxnet loaded: False" and len(err) == 2, done.stderr
    assert err[0].startswith(f"train_mnist.py: error: {variable}="), done.stderr


def _silent_run(folder, tmp_path, env=None, shell=None):
    """A short run with pictures, through bash when shell redirects: (exit code, stderr)."""
    command = (f"{sys.executable} train_mnist.py --data-dir {folder} --num-hidden 16 "
               f"--num-epochs 1 --batch-size 50 --disp-batches 0 --model-prefix {tmp_path}/m")
    done = subprocess.run(["bash", "-c", command + (shell or "")], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=120)
    return done.returncode, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("env, shell", [
    ({"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "1000"}, None),
    ({"MXNET_USE_OPERATOR_TUNING": "float32", "MXNET_MKLDNN_ENABLED": "true"}, None),
    ({"MPLBACKEND": "garbage"}, None),
    ({"HOME": "/dev/null/home"}, None),
    ({"XDG_CACHE_HOME": "/dev/null"}, None),
    ({"PYTHONWARNINGS": "error"}, None),
    ({"PYTHONWARNINGS": "always"}, None),
    ({}, " >&-"),
    ({}, " <&-"),
], ids=["openmp", "mxnet", "mplbackend", "home", "cache", "warnings error", "warnings always",
        "stdout closed", "stdin closed"])
def test_a_run_in_an_environment_it_accepts_or_quiets_succeeds_silently(synthetic_dir, tmp_path,
                                                                         env, shell):
    code, err = _silent_run(synthetic_dir, tmp_path, env, shell)
    assert code == 0 and err == "", err
    assert os.path.exists(tmp_path / "m-plots" / "training_curves.png")
    assert os.path.exists(tmp_path / "m-0001.manifest.json")


@pytest.mark.slow
def test_a_run_with_stderr_closed_succeeds_and_writes_nothing_into_its_files(synthetic_dir,
                                                                             tmp_path):
    code, _ = _silent_run(synthetic_dir, tmp_path, shell=" 2>&-")
    assert code == 0
    with open(tmp_path / "m-0001.state.json", "rb") as f:
        assert f.read(1) == b"{"


@pytest.mark.slow
def test_every_variable_named_in_mxnets_library_has_a_rule_or_needs_none():
    import importlib.util
    folder = importlib.util.find_spec("mxnet").submodule_search_locations[0]
    with open(os.path.join(folder, "libmxnet.so"), "rb") as f:
        text = f.read()
    named = {name.decode() for name in re.findall(
        rb"(?<![A-Za-z0-9_])((?:MXNET|NNVM|DMLC|PS|DNNL|MKLDNN|KMP)_[A-Z0-9_]+)\x00", text)}
    assert len(named) > 80
    assert sorted(named - set(environment._RULES) - set(environment.UNCHECKED)) == []
