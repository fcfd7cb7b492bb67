"""Fixtures shared by the tests; the project root is importable and MXNet's bind banner is silenced."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

from helpers import write_mnist  # noqa: E402


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
    """`python train_mnist.py` with the defaults on real MNIST, as a user runs it: (stdout, per-epoch records)."""
    import json
    import subprocess

    from helpers import REAL_MNIST, ROOT
    if REAL_MNIST is None:
        pytest.skip("real MNIST not found (set MNIST_DIR)")
    metrics = tmp_path_factory.mktemp("default_run") / "metrics.jsonl"
    done = subprocess.run([sys.executable, "train_mnist.py", "--data-dir", REAL_MNIST, "--metrics-file", str(metrics)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout, [json.loads(line) for line in metrics.read_text().splitlines()]
