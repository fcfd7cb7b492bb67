"""Shared fixtures: the project root and this folder importable, MXNet's banner quiet."""
import json
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

from harness import compat

# numpy, when it loads, gets the alias mxnet 1.9.1 needs on numpy 1.24 to 1.26, as in every entry
# point.
compat.install()

from helpers import (
    ISA_LIMITS,
    ROOT,
    Job,
    cpu_has_kind,
    need_real_mnist,
    pass_no_ignored_signals,
    write_mnist,
)


def pytest_configure(config):
    """A signal that pytest was started ignoring is not passed on to the processes tests start."""
    pass_no_ignored_signals()


@pytest.fixture
def synthetic_dir(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_mnist(str(folder))
    return str(folder)


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path, monkeypatch):
    """No test reads the user's MNIST_DIR or writes into the user's ~/.mxnet."""
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet_home"))


_DEFAULT_RUNS = {}


def _default_run(tmp_path_factory, isa):
    """`python train_mnist.py` with the defaults on real MNIST, as a user runs it, with oneDNN
    pinned to the instruction set isa: (stdout, per-epoch records), once a session."""
    real_mnist = need_real_mnist()
    if not cpu_has_kind(isa):
        pytest.skip(f"this CPU has no {isa}: it cannot print an {isa} CPU's figures")
    if isa not in _DEFAULT_RUNS:
        metrics = tmp_path_factory.mktemp("default_run") / "metrics.jsonl"
        done = subprocess.run(
            [sys.executable, "train_mnist.py", "--data-dir", real_mnist, "--metrics-file",
             str(metrics)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
            env=dict(os.environ, DNNL_MAX_CPU_ISA=ISA_LIMITS[isa]),
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        _DEFAULT_RUNS[isa] = (done.stdout,
                              [json.loads(line) for line in metrics.read_text().splitlines()])
    return _DEFAULT_RUNS[isa]


@pytest.fixture(scope="session")
def real_mnist():
    """The real MNIST folder, or a skip (a failure under REQUIRE_REAL_MNIST=1) without it."""
    return need_real_mnist()


@pytest.fixture(scope="session", params=sorted(ISA_LIMITS))
def default_run(request, tmp_path_factory):
    """(instruction set, stdout, records) of the default run, on each instruction set."""
    return (request.param, *_default_run(tmp_path_factory, request.param))


@pytest.fixture(scope="session")
def default_run_avx2(tmp_path_factory):
    """(stdout, records) of the default run as an AVX2 CPU prints it: what the README shows."""
    return _default_run(tmp_path_factory, "avx2")


@pytest.fixture
def jobs():
    """jobs(command, make=Job, **options): make(command, **options), started; each ended after."""
    started = []

    def start(command, make=Job, **options):
        started.append(make(command, **options))
        return started[-1]
    yield start
    for job in started:
        job.kill()
