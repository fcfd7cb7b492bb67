"""harness/idx_files.py: IDX parsing and validation, folder resolution, the content's digests."""
import gzip
import hashlib
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from harness import datasets, idx_files
from harness.errors import DataError
from helpers import (
    BAD_DATA,
    ROOT,
    corrupt,
    idx_bytes,
    read_images,
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
        read_images(path)


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


def test_real_mnist_loads_and_matches_the_published_checksums(real_mnist):
    sums = {}
    sums_file = os.path.join(real_mnist, "SHA256SUMS")
    if os.path.exists(sums_file):
        with open(sums_file) as f:
            sums = dict(reversed(line.split()) for line in f if line.strip())
        assert sums == datasets.MNIST.sha256
    for name in datasets.FILES:
        with gzip.open(os.path.join(real_mnist, name + ".gz")) as f:
            assert hashlib.sha256(f.read()).hexdigest() == datasets.MNIST.sha256[name]
    paths = idx_files.find(datasets.MNIST, real_mnist)
    train_x, train_y, test_x, test_y, digests = idx_files.read(paths, datasets.MNIST)
    assert digests == datasets.MNIST.sha256
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert np.bincount(train_y).min() > 5000 and set(np.unique(test_y)) == set(range(10))


def _publish(monkeypatch, dataset, arrays):
    """Make arrays' content dataset's published files, as far as the sums tell."""
    for name, array in zip(datasets.FILES, arrays):
        monkeypatch.setitem(dataset.sha256, name, hashlib.sha256(idx_bytes(array)).hexdigest())


def test_a_folder_that_holds_another_published_data_set_is_refused_naming_it(tmp_path,
                                                                             monkeypatch):
    arrays = write_mnist(str(tmp_path))
    _publish(monkeypatch, datasets.FASHION_MNIST, arrays)
    paths = idx_files.find(datasets.MNIST, str(tmp_path))
    with pytest.raises(DataError) as err:
        idx_files.read(paths, datasets.MNIST)
    assert str(err.value) == (f"{tmp_path} holds fashion-mnist, not mnist: run with --dataset "
                              "fashion-mnist, or give mnist's files")
    assert len(idx_files.read(paths, datasets.FASHION_MNIST)[0]) == 1050
    # Files that match no published set are the user's own: read as the set named.
    own = tmp_path / "own"
    own.mkdir()
    write_mnist(str(own), synthetic_arrays(seed=1))
    assert len(idx_files.read(idx_files.find(datasets.MNIST, str(own)), datasets.MNIST)[0]) == 1050


def test_a_split_under_another_files_name_is_refused_naming_what_each_holds(tmp_path,
                                                                            monkeypatch):
    train_x, train_y, test_x, test_y = synthetic_arrays()
    _publish(monkeypatch, datasets.MNIST, [train_x, train_y, test_x, test_y])
    # The test set under the training set's names: it would be trained on, then scored.
    write_mnist(str(tmp_path), [test_x, test_y, test_x, test_y])
    with pytest.raises(DataError) as err:
        idx_files.read(idx_files.find(datasets.MNIST, str(tmp_path)), datasets.MNIST)
    assert str(err.value) == (
        f"{tmp_path}: train-images-idx3-ubyte is mnist's t10k-images-idx3-ubyte, "
        "train-labels-idx1-ubyte is mnist's t10k-labels-idx1-ubyte; --dataset mnist takes "
        "mnist's own four files, each under its own name")


def test_a_data_set_known_by_its_gz_files_sums_is_recognised_by_them(tmp_path, monkeypatch):
    write_mnist(str(tmp_path))
    paths = idx_files.find(datasets.MNIST, str(tmp_path))
    for name, path in zip(datasets.FILES, paths):
        with open(path, "rb") as f:
            monkeypatch.setitem(datasets.KMNIST.sha256, name, hashlib.sha256(f.read()).hexdigest())
    with pytest.raises(DataError, match=f"^{tmp_path} holds kmnist, not mnist: run with --dataset "
                                        "kmnist, or give mnist's files$"):
        idx_files.read(paths, datasets.MNIST)
    assert len(idx_files.read(paths, datasets.KMNIST)[0]) == 1050
    # Uncompressed, the same data is not recognised: only the .gz files' sums are known.
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mnist(str(raw), compress=False)
    assert len(idx_files.read(idx_files.find(datasets.MNIST, str(raw)), datasets.MNIST)[0]) == 1050


def test_fashion_mnist_asked_of_the_mnist_folder_is_one_line_naming_mnist(real_mnist, capsys,
                                                                          tmp_path):
    from helpers import run_cli
    code, out, err = run_cli(capsys, "--dataset", "fashion-mnist", "--data-dir", real_mnist,
                             "--model-prefix", str(tmp_path / "m"))
    assert code == 2 and err == (f"train_mnist.py: error: {real_mnist} holds mnist, not "
                                 "fashion-mnist: run with --dataset mnist, or give fashion-mnist's "
                                 "files\n")
    assert "epoch" not in out and os.listdir(tmp_path) == []


def _raw_folders(parent):
    return sorted(name for name in os.listdir(parent) if name.startswith("mnist-raw-"))


def test_raw_copies_are_the_files_content_in_a_private_folder_that_holds_a_lock(
        synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths = idx_files.find(datasets.MNIST, synthetic_dir)
    folder = idx_files.raw_copies(paths)
    assert os.path.dirname(folder) == str(tmp_path)
    assert sorted(os.listdir(folder)) == sorted([".owner.lock", *datasets.FILES])
    for path, name in zip(paths, datasets.FILES):
        with gzip.open(path) as f, open(os.path.join(folder, name), "rb") as raw:
            assert f.read() == raw.read()
    # This process lives: another call leaves its folder alone.
    second = idx_files.raw_copies(paths)
    assert _raw_folders(tmp_path) == sorted(os.path.basename(f) for f in (folder, second))


def test_a_raw_folder_whose_process_is_gone_is_removed_by_the_next_and_nothing_else(
        synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan, unlocked, other = (tmp_path / "mnist-raw-orphan", tmp_path / "mnist-raw-being-made",
                               tmp_path / "other-raw")
    for folder in (orphan, unlocked, other):
        folder.mkdir()
        (folder / datasets.FILES[0]).write_bytes(b"x" * 1000)
    (orphan / ".owner.lock").write_bytes(b"")
    (other / ".owner.lock").write_bytes(b"")
    os.symlink(str(orphan), str(tmp_path / "mnist-raw-link"))
    folder = idx_files.raw_copies(idx_files.find(datasets.MNIST, synthetic_dir))
    assert not orphan.exists() and unlocked.exists() and other.exists()
    assert _raw_folders(tmp_path) == sorted(["mnist-raw-being-made", "mnist-raw-link",
                                             os.path.basename(folder)])


# A process that makes raw copies of the files in argv[2] in the temporary folder argv[3], prints
# the folder, and waits for a line on stdin before it exits.
_RAW_DRIVER = """
import sys, tempfile
sys.path.insert(0, sys.argv[1])
tempfile.tempdir = sys.argv[3]
from harness import datasets, errors, idx_files
with errors.reported("raw") as outcome:
    print(idx_files.raw_copies(idx_files.find(datasets.MNIST, sys.argv[2])), flush=True)
    sys.stdin.readline()
sys.exit(outcome.code)
"""


def _raw_process(synthetic_dir, parent, limit=None):
    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.Popen([sys.executable, "-c", _RAW_DRIVER, ROOT, synthetic_dir, str(parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limited if limit else None)


def test_raw_copies_are_gone_when_their_process_ends(synthetic_dir, tmp_path):
    process = _raw_process(synthetic_dir, tmp_path)
    folder = process.stdout.readline().strip()
    assert os.path.isdir(folder) and len(os.listdir(folder)) == 5
    _, err = process.communicate("\n", timeout=60)
    assert process.returncode == 0 and err == "" and _raw_folders(tmp_path) == []


def test_raw_copies_onto_a_full_disk_are_one_line_and_leave_nothing(synthetic_dir, tmp_path):
    # A file size limit makes a write fail with EFBIG, as a full disk fails it.
    process = _raw_process(synthetic_dir, tmp_path, limit=100_000)
    out, err = process.communicate("\n", timeout=60)
    assert process.returncode == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"raw: error: cannot write the raw copies for MXNet's iterator into "
                          f"{tmp_path}{os.sep}mnist-raw-") and err.endswith(": File too large\n")
    assert _raw_folders(tmp_path) == []


@pytest.mark.slow
def test_raw_copies_of_a_killed_process_are_removed_by_the_next_that_makes_some(
        synthetic_dir, tmp_path, monkeypatch):
    process = _raw_process(synthetic_dir, tmp_path)
    killed = os.path.basename(process.stdout.readline().strip())
    process.kill()
    process.communicate(timeout=60)
    assert _raw_folders(tmp_path) == [killed]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = idx_files.raw_copies(idx_files.find(datasets.MNIST, synthetic_dir))
    assert _raw_folders(tmp_path) == [os.path.basename(mine)]


@pytest.mark.slow
def test_a_run_on_mxnets_iterator_killed_in_training_leaves_no_raw_copies(synthetic_dir, tmp_path):
    parent = tmp_path / "tmp"
    parent.mkdir()
    env = dict(os.environ, TMPDIR=str(parent))
    argv = [sys.executable, "train_mnist.py", "--data-dir", synthetic_dir, "--data-iter", "mxnet",
            "--num-hidden", "32,16", "--disp-batches", "1", "--batch-size", "10"]
    run = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    # Training has begun: MXNet's iterators were made from the raw copies, which have read them.
    for line in run.stdout:
        if line.startswith("epoch"):
            break
    run.kill()
    run.communicate(timeout=60)
    assert _raw_folders(parent) == []
