"""Faults and bad input, as a new user and a careless script would cause them: a table of cases.

Each case asserts the exit code, exactly one line on stderr, no traceback, and the bytes of every file
that was there before. The memory cases run under an address-space limit and assert the peak memory.
"""
import dataclasses
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zlib

import mxnet as mx
import numpy as np
import pytest

import checkpoint
import mnist_files
import network
import train_mnist
from helpers import ROOT, idx_bytes, run_cli, synthetic_arrays, tree_bytes, write_idx, write_mnist

FLAGS = ["--num-hidden", "32,16", "--num-epochs", "3", "--mom", "0.9", "--disp-batches", "0", "--plot-dir", "none"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder with synthetic MNIST, and checkpoints of epochs 1 and 2 and one interrupted in epoch 3."""
    root = tmp_path_factory.mktemp("saved")
    (root / "mnist").mkdir()
    write_mnist(str(root / "mnist"))
    (root / "ck").mkdir()
    config = train_mnist.Config(data_dir=str(root / "mnist"), num_hidden=(32, 16), num_epochs=2, mom=0.9,
                                model_prefix=str(root / "ck" / "mlp"), plot_dir="none")
    train_mnist.train(config)
    # An interrupted checkpoint as a signal leaves it: epoch 3, after 4 batches.
    state = json.load(open(root / "ck" / "mlp-0002.state.json"))
    state["in_epoch"] = {"epoch": 3, "batches_done": 4, "samples": [[100, 100]] * 4,
                         "stats": [_encoded(np.ones((4, 2), np.float32))]}
    _resave(str(root / "ck" / "mlp"), checkpoint.Tag(3, 4), state, source=checkpoint.Tag(2))
    return root


def _encoded(array):
    import base64
    return {"dtype": "float32", "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def _resave(prefix, tag, state, source=None):
    """Write a checkpoint whose sidecar is state, consistently (its manifest matches), as another writer might."""
    source = source or tag
    params = {key[4:]: value for key, value in mx.nd.load(checkpoint.paths(prefix, source)["params"]).items()}
    symbol = mx.sym.load(prefix + "-symbol.json")
    checkpoint.save(prefix, tag, symbol, params, state)


@pytest.fixture
def case_dir(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


def _sidecar_edit(edit, tag=checkpoint.Tag(2), replace=None):
    """A setup that changes tag's sidecar in place by edit(state), or replaces it by replace(state), keeping
    the checkpoint consistent (its manifest matches)."""
    def setup(d):
        prefix = str(d / "ck" / "mlp")
        state = json.load(open(checkpoint.paths(prefix, tag)["state"]))
        edit(state)
        state = replace(state) if replace else state
        params = mx.nd.load(checkpoint.paths(prefix, checkpoint.Tag(2))["params"])
        checkpoint.remove(prefix, tag)
        checkpoint.save(prefix, tag, mx.sym.load(prefix + "-symbol.json"), {k[4:]: v for k, v in params.items()},
                        state)
        # The newer interrupted checkpoint would block a resume from epoch 2; this case is about the sidecar.
        if not tag.interrupted:
            checkpoint.remove(prefix, checkpoint.Tag(3, 4))
    return setup


def _write(name, payload):
    def setup(d):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(payload)
    return setup


def _symlink(name, target):
    def setup(d):
        os.symlink(target, d / name)
    return setup


def _copy(source, target):
    def setup(d):
        shutil.copy(d / source, d / target)
    return setup


def _remove(*names):
    def setup(d):
        for name in names:
            os.remove(d / name)
    return setup


def _fifo(name):
    def setup(d):
        os.remove(d / name)
        os.mkfifo(d / name)
    return setup


def _data(kind):
    def setup(d):
        folder = str(d / "mnist")
        train_x = synthetic_arrays()[0]
        if kind == "raw and gz differ":
            write_idx(folder, mnist_files.FILES[0], idx_bytes(train_x[::-1]), compress=False)
        elif kind == "bomb":
            # A header of 1050 images, then 400 MB of zeros: a 400 KB file that a whole read would inflate.
            path = os.path.join(folder, mnist_files.FILES[0] + ".gz")
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            with open(path, "wb") as f:
                f.write(packer.compress(idx_bytes(train_x)))
                zeros = bytes(1 << 20)
                for _ in range(400):
                    f.write(packer.compress(zeros))
                f.write(packer.flush())
        elif kind == "huge header":
            header = idx_bytes(np.zeros((0, 28, 28), np.uint8))
            write_idx(folder, mnist_files.FILES[0], header[:4] + (5_000_000).to_bytes(4, "big") + header[8:])
    return setup


def _nothing(d):
    pass


def _epoch_three(d):
    """A consistent checkpoint of epoch 3: newer work than the interrupted one in epoch 3."""
    prefix = str(d / "ck" / "mlp")
    state = json.load(open(prefix + "-0002.state.json"))
    state["history"].append(dict(state["history"][-1], epoch=3))
    state["epoch"] = 3
    _resave(prefix, checkpoint.Tag(3), state, source=checkpoint.Tag(2))


P = "ck/mlp"  # the prefix, relative to the case's folder
# (id, setup, extra argv ({d} is the case's folder), exit code, a fragment of the one line)
CASES = [
    # 1. Saved work overwritten.
    ("fresh run over finished checkpoints", _nothing, [], 2, "already holds checkpoints"),
    ("fresh run over an interrupted checkpoint only", _remove(*[f"ck/mlp-000{e}.{k}" for e in (1, 2) for k in
                                                                ("params", "state.json", "manifest.json")]),
     [], 2, "the newest intact checkpoint is {d}/ck/mlp-interrupted-0003-000004"),
    ("fresh run over a cut-short save only", _remove(*[f"ck/mlp-{n}" for n in (
        "0001.manifest.json", "0002.manifest.json", "interrupted-0003-000004.manifest.json")]),
     [], 2, "has no intact checkpoint"),
    ("load an epoch older than the newest", _nothing, ["--load-epoch", "1"], 2, "is newer than"),
    ("resume an interrupted checkpoint that newer work superseded", _epoch_three, ["--resume"], 2,
     "mlp-0003 is newer than {d}/ck/mlp-interrupted-0003-000004"),
    ("metrics file that is a checkpoint", _nothing, ["--start-over", "--metrics-file", "{d}/ck/mlp-0001.params"],
     2, "holds something else than JSON lines"),
    ("metrics file that is a data file", _nothing,
     ["--start-over", "--metrics-file", "{d}/mnist/train-labels-idx1-ubyte.gz"], 2, "holds something else"),
    ("prefix that is a folder", _nothing, ["--model-prefix", "{d}/ck"], 2, "is a folder; give a path and a name"),
    # 2. A checkpoint is one unit.
    ("sidecar of another epoch beside the params", _copy("ck/mlp-0002.state.json", "ck/mlp-0001.state.json"),
     ["--load-epoch", "1"], 2, "mlp-0001.state.json does not match its manifest"),
    ("params of another epoch", _copy("ck/mlp-0002.params", "ck/mlp-0001.params"), ["--load-epoch", "1"], 2,
     "mlp-0001.params does not match its manifest"),
    ("save cut short before the manifest", _remove("ck/mlp-0002.manifest.json"), ["--load-epoch", "2"], 2,
     "no checkpoint {d}/ck/mlp-0002; the newest intact checkpoint is {d}/ck/mlp-interrupted-0003-000004: resume"),
    ("symbol of another network", _write("ck/mlp-symbol.json", network.get_symbol("lenet").tojson().encode()),
     ["--load-epoch", "2"], 2, "mlp-symbol.json does not match its manifest"),
    ("manifest that is not JSON", _write("ck/mlp-0002.manifest.json", b"{\"format\": 1, \"ep"),
     ["--load-epoch", "2"], 2, "mlp-0002.manifest.json is not valid JSON"),
    ("manifest of another checkpoint", _copy("ck/mlp-0001.manifest.json", "ck/mlp-0002.manifest.json"),
     ["--load-epoch", "2"], 2, "is not a manifest of this checkpoint"),
    ("torn newest with an intact older one: the line says how to go on", _copy(
        "ck/mlp-0001.params", "ck/mlp-interrupted-0003-000004.params"), ["--resume"], 2,
     "the newest intact checkpoint is {d}/ck/mlp-0002: resume with"),
    # 3. Everything read back is checked.
    ("sidecar without the optimizer's update count", _sidecar_edit(lambda s: s["optimizer"].pop("num_update")),
     ["--load-epoch", "2"], 2, "field optimizer.num_update"),
    ("sidecar of another epoch, consistently saved", _sidecar_edit(lambda s: s.update(epoch=1)),
     ["--load-epoch", "2"], 2, "field epoch: expected 2"),
    ("history one epoch short", _sidecar_edit(lambda s: s["history"].pop()), ["--load-epoch", "2"], 2,
     "field history"),
    ("history with a NaN", _sidecar_edit(lambda s: s["history"][0].update(train_loss=float("nan"))),
     ["--load-epoch", "2"], 2, "field history[0]"),
    ("rng state cut short", _sidecar_edit(lambda s: s["rng"][1].pop()), ["--load-epoch", "2"], 2, "field rng"),
    ("optimizer of another name", _sidecar_edit(lambda s: s["optimizer"].update(name="adam")),
     ["--load-epoch", "2"], 2, "field optimizer.name"),
    ("optimizer state of another shape", _sidecar_edit(
        lambda s: s["optimizer"]["state"]["fc1_weight"][0].update(shape=[16, 784])), ["--load-epoch", "2"], 2,
     "field optimizer.state.fc1_weight[0]"),
    ("optimizer state that is not base64", _sidecar_edit(
        lambda s: s["optimizer"]["state"]["fc1_bias"][0].update(data="!!!")), ["--load-epoch", "2"], 2,
     "field optimizer.state.fc1_bias[0]"),
    ("negative update count", _sidecar_edit(lambda s: s["optimizer"].update(num_update=-3)),
     ["--load-epoch", "2"], 2, "field optimizer.num_update"),
    ("config without a field", _sidecar_edit(lambda s: s["config"].pop("seed")), ["--load-epoch", "2"], 2,
     "field config"),
    ("sidecar that is a list", _sidecar_edit(lambda s: None, replace=lambda s: [s]), ["--load-epoch", "2"], 2,
     "field (top)"),
    ("interrupted: batches that disagree with its name", _sidecar_edit(
        lambda s: s["in_epoch"].update(batches_done=5), checkpoint.Tag(3, 4)), ["--resume"], 2,
     "field in_epoch.batches_done"),
    ("interrupted on two devices, resumed on one", _sidecar_edit(
        lambda s: s["in_epoch"].update(stats=s["in_epoch"]["stats"] * 2), checkpoint.Tag(3, 4)), ["--resume"], 2,
     "field in_epoch.stats"),
    ("interrupted, resumed with another batch size", _nothing, ["--resume", "--batch-size", "50"], 2,
     "field config.batch_size"),
    ("momentum switched off on resume", _sidecar_edit(lambda s: None), ["--load-epoch", "2", "--mom", "0"], 2,
     "field config.mom"),
    # 4. Outputs that are not regular files.
    ("metrics file /dev/null", _nothing, ["--start-over", "--metrics-file", "/dev/null"], 2, "is not a regular file"),
    ("metrics file that is a folder", _nothing, ["--start-over", "--metrics-file", "{d}/ck"], 2, "is a folder"),
    ("metrics file in a missing folder", _nothing, ["--start-over", "--metrics-file", "{d}/nope/m.jsonl"], 2,
     "does not exist; create it first"),
    ("metrics file linked to /dev/null", _symlink("m.jsonl", "/dev/null"),
     ["--start-over", "--metrics-file", "{d}/m.jsonl"], 2, "is not a regular file"),
    ("plot folder that is a file", _write("pics", b"x"), ["--start-over", "--plot-dir", "{d}/pics"], 2,
     "is not a folder"),
    ("prefix in a missing folder", _nothing, ["--model-prefix", "{d}/nope/mlp"], 2, "does not exist"),
    # 5. Unbounded reads.
    ("gzip bomb", _data("bomb"), ["--start-over"], 2, "is longer than its header says"),
    ("header that promises 5 million images", _data("huge header"), ["--start-over"], 2,
     "promises 5,000,000 samples"),
    ("labels file that is a FIFO", _fifo("mnist/train-labels-idx1-ubyte.gz"), ["--start-over"], 2,
     "is not a regular file"),
    ("raw and gzip copies that differ", _data("raw and gz differ"), ["--start-over"], 2,
     "hold different data; remove the one that is wrong"),
    # 8. Flags that would reach MXNet unchecked.
    ("seed -1", _nothing, ["--start-over", "--seed", "-1"], 2, "--seed must be in 0..4294967295"),
    ("seed 2**32", _nothing, ["--start-over", "--seed", str(2 ** 32)], 2, "--seed must be in"),
    ("folded gradient scale below float32", _nothing, ["--start-over", "--lr", "1e-40"], 2,
     "outside float32's normal range"),
    ("a width past the bound", _nothing, ["--start-over", "--num-hidden", "100000"], 2, "--num-hidden must be"),
    ("schedule epoch 0", _nothing, ["--start-over", "--lr-scheduler", "step", "--lr-step-epochs", "0"], 2,
     "--lr-step-epochs must lie in 1..2"),
    ("schedule epoch past the end", _nothing, ["--start-over", "--lr-scheduler", "step", "--lr-step-epochs", "3"],
     2, "--lr-step-epochs must lie in 1..2"),
    ("too many epochs for the names", _nothing, ["--start-over", "--num-epochs", "10000"], 2, "--num-epochs must"),
    ("too many contexts", _nothing, ["--start-over", "--cpus", "65"], 2, "--cpus must be in 0..64"),
    ("a newline in a path", _nothing, ["--start-over", "--metrics-file", "{d}/a\nb"], 2, "control character"),
    # 9. Messages that name the cause.
    ("divergence from a huge weight decay", _nothing, ["--model-prefix", "{d}/fresh", "--wd", "1000"], 3,
     "--wd 1000.0 is too large for --lr 0.1"),
    ("divergence from a huge learning rate", _nothing, ["--model-prefix", "{d}/fresh", "--lr", "1e8"], 3,
     "try a smaller --lr"),
]


@pytest.mark.parametrize("name, setup, extra, code, expected", CASES, ids=[case[0] for case in CASES])
def test_fault_is_one_line_with_its_exit_code_and_nothing_saved_changes(capsys, case_dir, name, setup, extra, code,
                                                                         expected):
    setup(case_dir)
    before = tree_bytes(case_dir)
    argv = ["--data-dir", str(case_dir / "mnist"), "--model-prefix", str(case_dir / P), *FLAGS]
    argv += [word.replace("{d}", str(case_dir)) for word in extra]
    got, out, err = run_cli(capsys, *argv)
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("train_mnist.py: ")
    assert expected.replace("{d}", str(case_dir)) in err
    assert tree_bytes(case_dir) == before


def test_the_table_covers_every_class_with_forty_cases_or_more():
    assert len(CASES) >= 40


def _child(argv, limit_bytes=None, timeout=120, env=None):
    """Run train_mnist.py in a child under an address-space limit; return (code, stderr, peak RSS in MB)."""
    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_mnist.py"), *argv], preexec_fn=limit,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    err = process.stderr.read()
    process.stderr.close()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss / 1024


@pytest.mark.parametrize("extra, expected", [
    (["--num-hidden", "30000,30000"], "this configuration needs about"),
    (["--cpus", "40", "--batch-size", "1000", "--num-hidden", "4096,4096"], "this configuration needs about")],
    ids=["widths", "contexts"])
def test_a_run_that_cannot_fit_is_refused_with_its_estimate_before_allocating(saved, tmp_path, extra, expected):
    limit = 3 << 30
    code, err, peak_mb = _child(["--data-dir", str(saved / "mnist"), "--plot-dir", "none", "--num-epochs", "1",
                                 *extra], limit)
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert peak_mb < 700  # refused from the estimate: nothing of the multi-GB configuration was allocated
    # The same limit lets a configuration that fits train: the estimate does not refuse by mistake.
    code, err, _ = _child(["--data-dir", str(saved / "mnist"), "--plot-dir", "none", "--num-epochs", "1"], limit)
    assert code == 0, err


def test_a_gzip_bomb_is_refused_within_bounded_memory(saved, tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(saved / "mnist", folder)
    _data("bomb")(tmp_path)
    code, err, peak_mb = _child(["--data-dir", str(folder)], 2 << 30)
    assert code == 2 and "is longer than its header says" in err and err.count("\n") == 1
    assert peak_mb < 500  # 400 MB of zeros behind a 1050-image header were never read


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_startup_is_one_line_and_exit_130(saved, signum):
    # At random moments of start-up: importing MXNet, reading the data, binding.
    rng = np.random.RandomState(signum)
    for delay in sorted(rng.uniform(0.05, 2.5, size=4)):
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir",
                                    str(saved / "mnist"), "--num-epochs", "1000", "--plot-dir", "none"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, (delay, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (delay, err)
        assert f"stopped by {signal.Signals(signum).name}" in err


def test_a_second_signal_exits_at_once_with_one_more_line(saved, tmp_path):
    prefix = str(tmp_path / "mlp")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir",
                                str(saved / "mnist"), "--num-epochs", "1000", "--model-prefix", prefix,
                                "--plot-dir", "none", "--batch-size", "10"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(prefix + "-0001.manifest.json") and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert 1 <= err.count("\n") <= 2 and "stopped by" in err
    checkpoint.verify(prefix, checkpoint.Tag(1))  # the finished epoch stays intact


def _small_filesystem(path, size):
    """Mount a tmpfs of size bytes at path (as root); None if this machine does not allow it."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return path if done.returncode == 0 else None


@pytest.fixture
def full_disk(tmp_path):
    folder = _small_filesystem(tmp_path / "small", 1200 * 1024)
    if folder is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_while_saving_is_one_line_and_earlier_checkpoints_stay_intact(capsys, saved, full_disk):
    prefix = str(full_disk / "mlp")
    code, out, err = run_cli(capsys, "--data-dir", str(saved / "mnist"), "--model-prefix", prefix, *FLAGS[:-2],
                             "--num-epochs", "50", "--plot-dir", "none")
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err and "cannot write" in err
    tags = checkpoint.listing(prefix)
    assert tags  # some epochs fitted before the disk filled
    for tag in tags:
        checkpoint.verify(prefix, tag)
    assert not [name for name in os.listdir(full_disk) if name.endswith(".tmp")]


def test_a_full_disk_under_the_metrics_file_leaves_it_as_it_was(capsys, saved, full_disk):
    metrics = full_disk / "m.jsonl"
    earlier = b'{"earlier": "' + b"x" * 4077 + b'"}\n'  # a page of tmpfs exactly: the next line needs another
    metrics.write_bytes(earlier)
    (full_disk / "filler").write_bytes(bytes(1200 * 1024 - 4096))  # and every other page is taken
    code, _, err = run_cli(capsys, "--data-dir", str(saved / "mnist"), *FLAGS, "--metrics-file", str(metrics))
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
    assert metrics.read_bytes() == earlier


def test_the_metrics_file_is_written_through_a_symlink_to_its_target(capsys, saved, tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text('{"earlier": 1}\n')
    os.chmod(target, 0o640)
    os.symlink(target, tmp_path / "link.jsonl")
    code, _, err = run_cli(capsys, "--data-dir", str(saved / "mnist"), *FLAGS, "--num-epochs", "1",
                           "--metrics-file", str(tmp_path / "link.jsonl"))
    assert code == 0, err
    assert os.path.islink(tmp_path / "link.jsonl") and len(target.read_text().splitlines()) == 2
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o640)


def test_pictures_rewritten_keep_their_owner_and_mode(capsys, saved, tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    old = pictures / "training_curves.png"
    old.write_bytes(b"an older picture")
    os.chmod(old, 0o600)
    code, _, err = run_cli(capsys, "--data-dir", str(saved / "mnist"), *FLAGS[:-2], "--num-epochs", "1",
                           "--plot-dir", str(pictures))
    assert code == 0, err
    assert old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and oct(os.stat(old).st_mode & 0o777) == oct(0o600)
    assert not [name for name in os.listdir(pictures) if name.endswith(".tmp")]
