"""harness/idx_files.py: IDX parsing and validation, folder resolution, the content's digests."""
import gzip
import hashlib
import os

import numpy as np
import pytest

from harness import datasets, idx_files
from harness.errors import DataError
from helpers import (
    BAD_DATA,
    REAL_MNIST,
    corrupt,
    idx_bytes,
    synthetic_arrays,
    write_idx,
    write_mnist,
)


def _read(folder=None, **kwargs):
    return idx_files.read(idx_files.find(datasets.MNIST, folder, **kwargs))


@pytest.mark.parametrize("compress", [True, False])
def test_loads_gzip_and_raw_files_alike_with_the_digest_of_their_content(tmp_path, compress):
    arrays = write_mnist(str(tmp_path), compress=compress)
    train_x, train_y, test_x, test_y, digests = _read(str(tmp_path))
    assert train_x.shape == (1050, 784) and test_x.shape == (230, 784) and train_x.dtype == np.uint8
    assert np.array_equal(train_x, arrays[0].reshape(1050, 784)) and np.array_equal(
        test_x, arrays[2].reshape(230, 784)
    )
    assert (
        train_y.dtype == np.int32
        and np.array_equal(train_y, arrays[1])
        and np.array_equal(test_y, arrays[3])
    )
    assert digests == {name: hashlib.sha256(idx_bytes(array)).hexdigest()
                       for name, array in zip(datasets.FILES, arrays)}


@pytest.mark.parametrize("kind, expected", [
    ("no test samples", "the t10k files hold no samples"),
    ("blank images", "every train image is the same flat grey (0)"),
    ("one class", "every training label is 3: one class is nothing to learn")])
def test_data_valid_in_form_but_degenerate_in_content_is_one_clear_line(tmp_path, kind, expected):
    train_x, train_y, test_x, test_y = synthetic_arrays()
    if kind == "no test samples":
        test_x, test_y = test_x[:0], test_y[:0]
    elif kind == "blank images":
        train_x = np.zeros_like(train_x)
    elif kind == "one class":
        train_y = np.full_like(train_y, 3)
    write_mnist(str(tmp_path), [train_x, train_y, test_x, test_y])
    with pytest.raises(DataError) as err:
        _read(str(tmp_path))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_is_one_clear_error(synthetic_dir, kind):
    expected = corrupt(synthetic_dir, kind)
    with pytest.raises(DataError) as err:
        _read(synthetic_dir)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_data_dir_that_is_a_file_names_where_the_path_came_from(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    with pytest.raises(DataError, match=f"--data-dir {path} is not a folder"):
        _read(str(path))
    monkeypatch.setenv("MNIST_DIR", str(path))
    with pytest.raises(DataError, match=f"MNIST_DIR {path} is not a folder"):
        _read()


def test_missing_files_are_all_named_with_the_folder_in_a_short_line(tmp_path):
    write_idx(str(tmp_path), datasets.FILES[0], idx_bytes(synthetic_arrays()[0]))
    with pytest.raises(DataError) as err:
        _read(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"3 of the 4 data files missing from {tmp_path} (--data-dir): ")
    assert (
        all(name + ".gz" in message for name in datasets.FILES[1:])
        and datasets.FILES[0] not in message
    )
    assert len(message) < 300


def test_explicit_folder_is_never_written_to(tmp_path):
    with pytest.raises(DataError, match="put them there"):
        _read(str(tmp_path), mirrors=("http://127.0.0.1:9/",))
    assert os.listdir(tmp_path) == []


def test_raw_and_gzip_copies_that_differ_are_refused_naming_both(synthetic_dir):
    train_x = synthetic_arrays()[0]
    write_idx(synthetic_dir, datasets.FILES[0], idx_bytes(train_x[::-1]), compress=False)
    with pytest.raises(DataError) as err:
        _read(synthetic_dir)
    raw = os.path.join(synthetic_dir, datasets.FILES[0])
    assert f"{raw} and {raw}.gz hold different data" in str(err.value)
    # The same data twice is fine.
    write_idx(synthetic_dir, datasets.FILES[0], idx_bytes(train_x), compress=False)
    assert len(_read(synthetic_dir)[0]) == 1050


def test_a_data_file_that_is_not_a_regular_file_is_refused_without_reading(synthetic_dir):
    path = os.path.join(synthetic_dir, datasets.FILES[1] + ".gz")
    os.remove(path)
    # Reading a FIFO with no writer would block forever.
    os.mkfifo(path)
    with pytest.raises(DataError, match="is not a regular file"):
        _read(synthetic_dir)


def test_a_header_that_promises_too_much_is_refused_before_allocating(tmp_path):
    # 4 GB promised in 16 bytes of header: refused from the header alone.
    header = (
        idx_bytes(np.zeros((0, 28, 28), np.uint8))[:4]
        + (5_000_000).to_bytes(4, "big")
        + header_dims()
    )
    path = write_idx(str(tmp_path), "images", header)
    with pytest.raises(DataError, match="promises 5,000,000 samples"):
        idx_files.read_images(path)


def header_dims():
    return (28).to_bytes(4, "big") * 2


def test_folder_order_is_flag_then_env_then_cache(tmp_path, monkeypatch):
    flag, env, home = tmp_path / "flag", tmp_path / "env", tmp_path / "home"
    for folder, n in ((flag, 100), (env, 200), (home / "datasets" / "mnist", 300)):
        folder.mkdir(parents=True)
        write_mnist(str(folder), synthetic_arrays(num_train=n, num_test=10))
    monkeypatch.setenv("MXNET_HOME", str(home))
    assert len(_read()[0]) == 300
    monkeypatch.setenv("MNIST_DIR", str(env))
    assert len(_read()[0]) == 200
    assert len(_read(str(flag))[0]) == 100


def test_cache_follows_mxnet_home(monkeypatch):
    monkeypatch.setenv("MXNET_HOME", "/opt/mx")
    assert idx_files.default_cache_dir() == "/opt/mx/datasets/mnist"
    monkeypatch.delenv("MXNET_HOME")
    assert idx_files.default_cache_dir() == os.path.join(
        os.path.expanduser("~"), ".mxnet", "datasets", "mnist"
    )


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (set MNIST_DIR)")
def test_real_mnist_loads_and_matches_the_published_checksums():
    sums = {}
    sums_file = os.path.join(REAL_MNIST, "SHA256SUMS")
    if os.path.exists(sums_file):
        with open(sums_file) as f:
            sums = dict(reversed(line.split()) for line in f if line.strip())
        assert sums == datasets.MNIST.sha256
    for name in datasets.FILES:
        with gzip.open(os.path.join(REAL_MNIST, name + ".gz")) as f:
            assert hashlib.sha256(f.read()).hexdigest() == datasets.MNIST.sha256[name]
    train_x, train_y, test_x, test_y, digests = _read(REAL_MNIST)
    assert digests == datasets.MNIST.sha256
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert np.bincount(train_y).min() > 5000 and set(np.unique(test_y)) == set(range(10))
