"""data.py: IDX parsing and validation, folder resolution, device batches."""
import hashlib
import gzip
import os

import mxnet as mx
import numpy as np
import pytest

import data
from helpers import BAD_DATA, REAL_MNIST, corrupt, synthetic_arrays, write_mnist


@pytest.mark.parametrize("compress", [True, False])
def test_loads_gzip_and_raw_files_alike(tmp_path, compress):
    arrays = write_mnist(str(tmp_path), compress=compress)
    train_x, train_y, test_x, test_y = data.load_mnist(str(tmp_path))
    assert train_x.shape == (1050, 784) and test_x.shape == (230, 784)
    assert train_x.dtype == np.float32 and 0.0 <= train_x.min() and train_x.max() <= 1.0
    np.testing.assert_allclose(train_x * 255, arrays[0].reshape(1050, 784), atol=1e-3)
    assert train_y.dtype == np.int32 and np.array_equal(train_y, arrays[1])
    assert np.array_equal(test_y, arrays[3])
    as_bytes = data.load_mnist(str(tmp_path), as_bytes=True)
    assert np.array_equal(as_bytes[0], arrays[0].reshape(1050, 784)) and as_bytes[0].dtype == np.uint8
    assert np.array_equal(data.to_floats(as_bytes[2]), test_x) and np.array_equal(as_bytes[3], test_y)


def test_pixel_floats_span_0_to_1_within_float32_rounding_of_byte_over_255():
    pixels = data.to_floats(np.arange(256, dtype=np.uint8))
    assert pixels.dtype == np.float32 and pixels[0] == 0 and pixels[255] == 1
    # Two roundings (of 1/255, then of the product): at most two float32 steps from the float64 quotient.
    assert np.all(np.abs(pixels - np.arange(256) / 255) <= 2 * np.spacing(pixels))
    assert np.all(np.diff(pixels) > 0)


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_is_one_clear_error(synthetic_dir, kind):
    expected = corrupt(synthetic_dir, kind)
    with pytest.raises(data.DataError) as err:
        data.load_mnist(synthetic_dir)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_data_dir_that_is_a_file_is_an_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    with pytest.raises(data.DataError, match="is not a folder"):
        data.load_mnist(str(path))


def test_explicit_folder_is_never_written_to(tmp_path):
    with pytest.raises(data.DataError, match="put the four files"):
        data.load_mnist(str(tmp_path), mirrors=("http://127.0.0.1:9/",))
    assert os.listdir(tmp_path) == []


def test_folder_order_is_flag_then_env_then_cache(tmp_path, monkeypatch):
    flag, env, home = tmp_path / "flag", tmp_path / "env", tmp_path / "home"
    for folder, n in ((flag, 100), (env, 200), (home / "datasets" / "mnist", 300)):
        folder.mkdir(parents=True)
        write_mnist(str(folder), synthetic_arrays(num_train=n, num_test=10))
    monkeypatch.setenv("MXNET_HOME", str(home))
    assert len(data.load_mnist()[0]) == 300
    monkeypatch.setenv("MNIST_DIR", str(env))
    assert len(data.load_mnist()[0]) == 200
    assert len(data.load_mnist(str(flag))[0]) == 100


def test_cache_follows_mxnet_home(monkeypatch):
    monkeypatch.setenv("MXNET_HOME", "/opt/mx")
    assert data.default_cache_dir() == "/opt/mx/datasets/mnist"
    monkeypatch.delenv("MXNET_HOME")
    assert data.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".mxnet", "datasets", "mnist")


def _epoch(num_samples, batch_size, rng=None, contexts=(mx.cpu(),), worker=0, num_workers=1):
    return [[part.asnumpy() for part in parts]
            for parts in data.epoch_batches(num_samples, batch_size, list(contexts), rng, worker, num_workers)]


def test_epoch_batches_cover_every_sample_once_with_a_short_tail():
    batches = _epoch(23, 5, np.random.RandomState(1))
    assert [len(parts[0]) for parts in batches] == [5, 5, 5, 5, 3]
    order = np.concatenate([parts[0] for parts in batches])
    assert sorted(order) == list(range(23)) and list(order) != list(range(23))


def test_epoch_batches_are_seeded_and_reshuffled_each_epoch():
    def flat(batches):
        return np.concatenate([parts[0] for parts in batches])
    a, b = np.random.RandomState(3), np.random.RandomState(3)
    first_a, first_b = flat(_epoch(50, 8, a)), flat(_epoch(50, 8, b))
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(first_a, flat(_epoch(50, 8, a)))
    assert list(flat(_epoch(10, 4))) == list(range(10))


@pytest.mark.parametrize("num_workers, num_contexts", [(1, 2), (2, 1), (2, 3), (3, 2)])
def test_workers_and_contexts_split_each_batch_exactly(num_workers, num_contexts):
    contexts = [mx.cpu(i) for i in range(num_contexts)]
    epochs = [_epoch(47, 10, np.random.RandomState(5), contexts, w, num_workers) for w in range(num_workers)]
    whole = _epoch(47, 10, np.random.RandomState(5))
    for step, batch in enumerate(whole):
        parts = [part for worker in epochs for part in worker[step]]
        # In order, workers then contexts, the parts are the single-device batch, and no part is empty.
        assert np.array_equal(np.concatenate(parts), batch[0]) and min(len(p) for p in parts) >= 1
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_shares_are_even_with_the_remainder_first():
    assert data.shares(10, 0, 1, 3) == [(0, 4), (4, 7), (7, 10)]
    assert data.shares(10, 1, 2, 2) == [(5, 8), (8, 10)]


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (set MNIST_DIR)")
def test_real_mnist_loads_and_matches_the_published_checksums():
    sums = {}
    sums_file = os.path.join(REAL_MNIST, "SHA256SUMS")
    if os.path.exists(sums_file):
        with open(sums_file) as f:
            sums = dict(reversed(line.split()) for line in f if line.strip())
        assert sums == data.SHA256
    for name in data.FILES:
        with gzip.open(os.path.join(REAL_MNIST, name + ".gz")) as f:
            assert hashlib.sha256(f.read()).hexdigest() == data.SHA256[name]
    train_x, train_y, test_x, test_y = data.load_mnist(REAL_MNIST)
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert np.bincount(train_y).min() > 5000 and set(np.unique(test_y)) == set(range(10))
