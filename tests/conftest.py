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

from helpers import REAL_MNIST, ROOT, Job, write_mnist


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


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`python train_mnist.py` with the defaults on real MNIST, as a user runs it."""
    # (stdout, per-epoch records).
    if REAL_MNIST is None:
        pytest.skip("real MNIST not found (set MNIST_DIR)")
    metrics = tmp_path_factory.mktemp("default_run") / "metrics.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "train_mnist.py",
            "--data-dir",
            REAL_MNIST,
            "--metrics-file",
            str(metrics),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout, [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.fixture
def jobs():
    """Start a job as Job(launcher_args, command) does; every one is ended when the test ends."""
    started = []

    def start(launcher_args, command, **popen):
        started.append(Job(launcher_args, command, **popen))
        return started[-1]
    yield start
    for job in started:
        job.kill()

