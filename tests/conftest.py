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
