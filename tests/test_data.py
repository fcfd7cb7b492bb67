"""mnist_files.py and data.py: IDX parsing and validation, folder resolution, the data iterators."""
import gzip
import hashlib
import os

import mxnet as mx
import numpy as np
import pytest

import data
import mnist_files
from helpers import BAD_DATA, REAL_MNIST, corrupt, idx_bytes, synthetic_arrays, write_idx, write_mnist


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
    with pytest.raises(mnist_files.DataError) as err:
        data.load_mnist(synthetic_dir)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_data_dir_that_is_a_file_names_where_the_path_came_from(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    with pytest.raises(mnist_files.DataError, match=f"--data-dir {path} is not a folder"):
        data.load_mnist(str(path))
    monkeypatch.setenv("MNIST_DIR", str(path))
    with pytest.raises(mnist_files.DataError, match=f"MNIST_DIR {path} is not a folder"):
        data.load_mnist()


def test_missing_files_are_all_named_with_the_folder_in_a_short_line(tmp_path):
    write_idx(str(tmp_path), mnist_files.FILES[0], idx_bytes(synthetic_arrays()[0]))
    with pytest.raises(mnist_files.DataError) as err:
        data.load_mnist(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"3 of the 4 MNIST files missing from {tmp_path} (--data-dir): ")
    assert all(name + ".gz" in message for name in mnist_files.FILES[1:]) and mnist_files.FILES[0] not in message
    assert len(message) < 300


def test_explicit_folder_is_never_written_to(tmp_path):
    with pytest.raises(mnist_files.DataError, match="put them there"):
        data.load_mnist(str(tmp_path), mirrors=("http://127.0.0.1:9/",))
    assert os.listdir(tmp_path) == []


def test_raw_and_gzip_copies_that_differ_are_refused_naming_both(synthetic_dir):
    train_x = synthetic_arrays()[0]
    write_idx(synthetic_dir, mnist_files.FILES[0], idx_bytes(train_x[::-1]), compress=False)
    with pytest.raises(mnist_files.DataError) as err:
        data.load_mnist(synthetic_dir)
    raw = os.path.join(synthetic_dir, mnist_files.FILES[0])
    assert f"{raw} and {raw}.gz hold different data" in str(err.value)
    write_idx(synthetic_dir, mnist_files.FILES[0], idx_bytes(train_x), compress=False)  # the same data: fine
    assert len(data.load_mnist(synthetic_dir)[0]) == 1050


def test_a_data_file_that_is_not_a_regular_file_is_refused_without_reading(synthetic_dir):
    path = os.path.join(synthetic_dir, mnist_files.FILES[1] + ".gz")
    os.remove(path)
    os.mkfifo(path)  # reading a FIFO with no writer would block forever
    with pytest.raises(mnist_files.DataError, match="is not a regular file"):
        data.load_mnist(synthetic_dir)


def test_a_header_that_promises_too_much_is_refused_before_allocating(tmp_path):
    # 4 GB promised in 16 bytes of header: refused from the header alone.
    header = idx_bytes(np.zeros((0, 28, 28), np.uint8))[:4] + (5_000_000).to_bytes(4, "big") + header_dims()
    path = write_idx(str(tmp_path), "images", header)
    with pytest.raises(mnist_files.DataError, match="promises 5,000,000 samples"):
        mnist_files.read_images(path)


def header_dims():
    return (28).to_bytes(4, "big") * 2


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
    assert mnist_files.default_cache_dir() == "/opt/mx/datasets/mnist"
    monkeypatch.delenv("MXNET_HOME")
    assert mnist_files.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".mxnet", "datasets", "mnist")


def _epoch(iterator, contexts=1):
    """Each batch's rows, in order: gathered on each context by gather_into, and through .data for device 0."""
    iterator.reset()
    rows = []
    for batch in iterator:
        parts = []
        for device in range(contexts):
            out_x = mx.nd.zeros((batch.count, 1), iterator.contexts[device], iterator.images[0].dtype)
            out_y = mx.nd.zeros(batch.count, iterator.contexts[device])
            batch.gather_into(device, 0, batch.count, out_x, out_y)
            parts.append(out_y.asnumpy().astype(int))
        assert all(np.array_equal(p, parts[0]) for p in parts)
        assert np.array_equal(batch.label[0].asnumpy()[:batch.count], parts[0])
        assert batch.data[0].shape[0] == iterator.batch_size and batch.pad == iterator.batch_size - batch.count
        rows.append(parts[0])
    return rows


def _numbered(n):
    return np.arange(n, dtype=np.uint8).reshape(n, 1) % 251, np.arange(n)


def test_the_iterator_covers_every_sample_once_with_a_padded_tail():
    images, labels = _numbered(23)
    batches = _epoch(data.MNISTIter(images, labels, 5, rng=np.random.RandomState(1)))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(23)) and list(order) != list(range(23))


def test_the_iterator_is_seeded_and_reshuffles_each_epoch():
    images, labels = _numbered(50)
    a = data.MNISTIter(images, labels, 8, rng=np.random.RandomState(3))
    b = data.MNISTIter(images, labels, 8, rng=np.random.RandomState(3))
    first_a, first_b = np.concatenate(_epoch(a)), np.concatenate(_epoch(b))
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(first_a, np.concatenate(_epoch(a)))
    assert list(np.concatenate(_epoch(data.MNISTIter(images[:10], labels[:10], 4)))) == list(range(10))


def test_the_iterator_holds_the_data_on_every_context():
    images, labels = _numbered(30)
    contexts = [mx.cpu(0), mx.cpu(1)]
    iterator = data.MNISTIter(images, labels, 7, contexts, rng=np.random.RandomState(2))
    assert iterator.images is None  # nothing on a device before the first epoch
    assert len(_epoch(iterator, contexts=2)) == 5
    assert [array.context for array in iterator.images] == contexts


@pytest.mark.parametrize("num_parts", [2, 3])
def test_parts_split_each_global_batch_exactly(num_parts):
    images, labels = _numbered(47)
    whole = _epoch(data.MNISTIter(images, labels, 10, rng=np.random.RandomState(5)))
    parts = [_epoch(data.MNISTIter(images, labels, 10, rng=np.random.RandomState(5), part_index=p,
                                   num_parts=num_parts)) for p in range(num_parts)]
    for step, batch in enumerate(whole):
        pieces = [part[step] for part in parts]
        # In order, the parts are the single-part batch, and no part is empty.
        assert np.array_equal(np.concatenate(pieces), batch) and min(len(p) for p in pieces) >= 1


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
        assert sums == mnist_files.SHA256
    for name in mnist_files.FILES:
        with gzip.open(os.path.join(REAL_MNIST, name + ".gz")) as f:
            assert hashlib.sha256(f.read()).hexdigest() == mnist_files.SHA256[name]
    train_x, train_y, test_x, test_y = data.load_mnist(REAL_MNIST)
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert np.bincount(train_y).min() > 5000 and set(np.unique(test_y)) == set(range(10))
