"""Faults and bad input, as a new user and a careless script would cause them: a table of cases."""
# Each case asserts the exit code, exactly one line on stderr, no traceback, and the bytes of every
# file that was there before. The memory cases run under an address-space limit and assert the peak
# memory.
import json
import os
import resource
import shutil
import signal
import subprocess
import time
import zlib

import mxnet as mx
import numpy as np
import pytest

import network
from harness import checkpoint, datasets
from helpers import (
    TRAIN,
    drawn,
    exit_code,
    fifo,
    flags,
    idx_bytes,
    make_folder,
    nothing,
    run_cli,
    symlink,
    synthetic_arrays,
    train_with_faults,
    tree_bytes,
    wait_for_file,
    wait_for_signal_handlers,
    write_file,
    write_idx,
    write_mnist,
)

# 3 epochs of 11 steps (1050 samples in batches of 100), with momentum.
FLAGS = flags(mom=0.9)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder with synthetic MNIST."""
    # And checkpoints of epochs 1 and 2 and one interrupted in epoch 3.
    root = tmp_path_factory.mktemp("saved")
    (root / "mnist").mkdir()
    write_mnist(str(root / "mnist"))
    (root / "ck").mkdir()
    # A signal after batch 4 of epoch 3: 1050 samples are 11 batches an epoch.
    code, err = train_with_faults(
        ["--data-dir", str(root / "mnist"), "--model-prefix", str(root / "ck" / "mlp"), *FLAGS],
        env={"INTERRUPT_AT_BATCH": "26"},
    )
    assert code == 130 and "mlp-interrupted-0003-000004" in err, err
    return root


def _read_state(prefix, tag):
    where = checkpoint.paths(prefix, tag)
    return json.load(open(where["state"])), dict(mx.nd.load(where["arrays"]) or {})


def _resave(prefix, tag, values, arrays, source=None):
    """Write a checkpoint of these state values and arrays, consistently (its manifest matches)."""
    # As another
    # writer might.
    params = {
        key[4:]: value
        for key, value in mx.nd.load(checkpoint.paths(prefix, source or tag)["params"]).items()
    }
    symbols = [mx.sym.load(checkpoint.paths(prefix, tag)[kind]) for kind in ("symbol", "inference")]
    checkpoint.save(prefix, tag, symbols, params, values, arrays)


@pytest.fixture
def case_dir(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


def _sidecar_edit(edit, tag=checkpoint.Tag(2), replace=None):
    """A setup that changes tag's state in place by edit(values, arrays)."""
    # Or replaces its values by
    # replace(values), keeping the checkpoint consistent (its manifest matches).
    def setup(d):
        prefix = str(d / "ck" / "mlp")
        values, arrays = _read_state(prefix, tag)
        edit(values, arrays)
        values = replace(values) if replace else values
        _resave(prefix, tag, values, arrays)
        # The newer interrupted checkpoint would block a resume from epoch 2; this case is about the
        # state.
        if not tag.interrupted:
            checkpoint.remove(prefix, checkpoint.Tag(3, 4))
    return setup


def _array(key, value):
    def edit(values, arrays):
        arrays[key] = value
    return edit


def _copy(source, target):
    def setup(d):
        shutil.copy(d / source, d / target)
    return setup


def _remove(*names):
    def setup(d):
        for name in names:
            os.remove(d / name)
    return setup


def _data(kind):
    def setup(d):
        folder = str(d / "mnist")
        train_x = synthetic_arrays()[0]
        if kind == "raw and gz differ":
            write_idx(folder, datasets.FILES[0], idx_bytes(train_x[::-1]), compress=False)
        elif kind == "bomb":
            # A header of 1050 images, then 400 MB of zeros: a 400 KB file that a whole read would
            # inflate.
            path = os.path.join(folder, datasets.FILES[0] + ".gz")
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            with open(path, "wb") as f:
                f.write(packer.compress(idx_bytes(train_x)))
                zeros = bytes(1 << 20)
                for _ in range(400):
                    f.write(packer.compress(zeros))
                f.write(packer.flush())
        elif kind == "huge header":
            header = idx_bytes(np.zeros((0, 28, 28), np.uint8))
            write_idx(
                folder, datasets.FILES[0], header[:4] + (5_000_000).to_bytes(4, "big") + header[8:]
            )
        elif kind == "other pixels":
            # The same sizes, other content: a mid-epoch resume would train on other batches.
            write_idx(folder, datasets.FILES[0], idx_bytes(255 - train_x))
    return setup


def _epoch_three(d):
    """A consistent checkpoint of epoch 3: newer work than the interrupted one in epoch 3."""
    prefix = str(d / "ck" / "mlp")
    values, arrays = _read_state(prefix, checkpoint.Tag(2))
    values["history"].append(dict(values["history"][-1], epoch=3))
    _resave(prefix, checkpoint.Tag(3), values, arrays, source=checkpoint.Tag(2))


def _link(name, target, hard=False):
    def setup(d):
        (os.link if hard else os.symlink)(d / target, d / name)
    return setup


def _weights_edit(edit):
    """A setup that changes epoch 2's weights (name -> NDArray) by edit, saved consistently."""
    def setup(d):
        prefix, tag = str(d / "ck" / "mlp"), checkpoint.Tag(2)
        values, arrays = _read_state(prefix, tag)
        params = {key[4:]: value
                  for key, value in mx.nd.load(checkpoint.paths(prefix, tag)["params"]).items()}
        edit(params)
        symbols = [mx.sym.load(checkpoint.paths(prefix, tag)[kind])
                   for kind in ("symbol", "inference")]
        checkpoint.save(prefix, tag, symbols, params, values, arrays)
        checkpoint.remove(prefix, checkpoint.Tag(3, 4))
    return setup


def _nan_bias(params):
    params["fc2_bias"][:] = float("nan")


def _as(name, convert):
    def edit(params):
        params[name] = convert(params[name])
    return edit


def _other_size(d):
    train_x, train_y, test_x, test_y = synthetic_arrays(num_train=1100, seed=1)
    write_mnist(str(d / "mnist"), [train_x, train_y, test_x, test_y])


# The prefix, relative to the case's folder.
P = "ck/mlp"
STATE = "is not valid JSON: holds"
# (id, setup, extra argv ({d} is the case's folder), exit code, a fragment of the one line)
CASES = [
    # 1. Saved work overwritten.
    ("fresh run over finished checkpoints", nothing, [], 2, "already holds checkpoints"),
    (
        "fresh run over an interrupted checkpoint only",
        _remove(
            *[
                f"ck/mlp-000{e}.{k}"
                for e in (1, 2)
                for k in ("params", "state.json", "state.nd", "manifest.json")
            ]
        ),
        [],
        2,
        "the newest intact checkpoint is {d}/ck/mlp-interrupted-0003-000004",
    ),
    (
        "fresh run over a cut-short save only",
        _remove(
            *[
                f"ck/mlp-{n}"
                for n in (
                    "0001.manifest.json",
                    "0002.manifest.json",
                    "interrupted-0003-000004.manifest.json",
                )
            ]
        ),
        [],
        2,
        "has no intact checkpoint",
    ),
    ("load an epoch older than the newest", nothing, ["--load-epoch", "1"], 2, "is newer than"),
    (
        "resume an interrupted checkpoint that newer work superseded",
        _epoch_three,
        ["--resume"],
        2,
        "mlp-0003 is newer than {d}/ck/mlp-interrupted-0003-000004",
    ),
    (
        "prefix that is a folder",
        nothing,
        ["--model-prefix", "{d}/ck"],
        2,
        "is a folder; give a path and a name",
    ),
    # 2. Outputs that collide with the checkpoints, with each other, or with the data.
    (
        "metrics file that is a checkpoint",
        nothing,
        ["--start-over", "--metrics-file", "{d}/ck/mlp-0001.params"],
        2,
        "is a file of the checkpoints under --model-prefix",
    ),
    (
        "metrics file that is the symbol, which starts with {",
        nothing,
        ["--start-over", "--metrics-file", "{d}/ck/mlp-symbol.json"],
        2,
        "is a file of the checkpoints",
    ),
    (
        "metrics file that a later epoch would write",
        nothing,
        ["--start-over", "--metrics-file", "{d}/ck/mlp-0003.state.json"],
        2,
        "is a file of the checkpoints",
    ),
    (
        "metrics file linked to a checkpoint's state",
        _link("m.jsonl", "ck/mlp-0002.state.json"),
        ["--start-over", "--metrics-file", "{d}/m.jsonl"],
        2,
        "is a file of the checkpoints",
    ),
    (
        "metrics file hard-linked to a checkpoint's state",
        _link("m.jsonl", "ck/mlp-0002.state.json", hard=True),
        ["--start-over", "--metrics-file", "{d}/m.jsonl"],
        2,
        "is a file of the checkpoints",
    ),
    (
        "metrics file that is the prefix's lock",
        nothing,
        ["--start-over", "--metrics-file", "{d}/ck/mlp.lock"],
        2,
        "is the same file as --model-prefix's lock",
    ),
    (
        "metrics file that is a picture",
        make_folder("pics"),
        [
            "--start-over",
            "--plot-dir",
            "{d}/pics",
            "--metrics-file",
            "{d}/pics/training_curves.png",
        ],
        2,
        "is the same file as a picture",
    ),
    (
        "metrics file that is a data file",
        nothing,
        ["--start-over", "--metrics-file", "{d}/mnist/train-labels-idx1-ubyte.gz"],
        2,
        "is a data file of --data-dir",
    ),
    # 3. A checkpoint is one unit.
    (
        "sidecar of another epoch beside the params",
        _copy("ck/mlp-0002.state.json", "ck/mlp-0001.state.json"),
        ["--load-epoch", "1"],
        2,
        "mlp-0001.state.json does not match its manifest",
    ),
    (
        "state arrays of another epoch",
        _copy("ck/mlp-0002.state.nd", "ck/mlp-0001.state.nd"),
        ["--load-epoch", "1"],
        2,
        "mlp-0001.state.nd does not match its manifest",
    ),
    (
        "params of another epoch",
        _copy("ck/mlp-0002.params", "ck/mlp-0001.params"),
        ["--load-epoch", "1"],
        2,
        "mlp-0001.params does not match its manifest",
    ),
    (
        "save cut short before the manifest",
        _remove("ck/mlp-0002.manifest.json"),
        ["--load-epoch", "2"],
        2,
        "no checkpoint {d}/ck/mlp-0002; the newest intact checkpoint is "
        "{d}/ck/mlp-interrupted-0003-000004: resume",
    ),
    (
        "symbol of another network",
        write_file("ck/mlp-symbol.json", network.get_symbol("lenet").tojson().encode()),
        ["--load-epoch", "2"],
        2,
        "mlp-symbol.json does not match its manifest",
    ),
    (
        "manifest that is not JSON",
        write_file("ck/mlp-0002.manifest.json", b'{"format": 1, "ep'),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.manifest.json is not valid JSON",
    ),
    (
        "manifest of 30,000 brackets",
        write_file("ck/mlp-0002.manifest.json", b"[" * 30000),
        ["--load-epoch", "2"],
        2,
        "is not valid JSON: nested deeper than 16 levels",
    ),
    (
        "manifest of 30,000 brackets, on a fresh run",
        write_file("ck/mlp-0002.manifest.json", b"[" * 30000),
        [],
        2,
        "already holds checkpoints",
    ),
    (
        "manifest of another checkpoint",
        _copy("ck/mlp-0001.manifest.json", "ck/mlp-0002.manifest.json"),
        ["--load-epoch", "2"],
        2,
        "is not a manifest of this checkpoint",
    ),
    (
        "torn newest with an intact older one: the line says how to go on",
        _copy("ck/mlp-0001.params", "ck/mlp-interrupted-0003-000004.params"),
        ["--resume"],
        2,
        "the newest intact checkpoint is {d}/ck/mlp-0002: resume with",
    ),
    # 4. Everything read back is checked.
    (
        "state without the update count",
        _sidecar_edit(lambda v, a: v.pop("num_update")),
        ["--load-epoch", "2"],
        2,
        "field num_update",
    ),
    (
        "state of a run that began after its epoch",
        _sidecar_edit(lambda v, a: v.update(first_epoch=5)),
        ["--load-epoch", "2"],
        2,
        "field first_epoch: expected an epoch in 1..3",
    ),
    (
        "history one epoch short",
        _sidecar_edit(lambda v, a: v["history"].pop()),
        ["--load-epoch", "2"],
        2,
        "field history",
    ),
    (
        "history with a NaN",
        _sidecar_edit(lambda v, a: v["history"][0].update(train_loss=float("nan"))),
        ["--load-epoch", "2"],
        2,
        "is not valid JSON: holds NaN",
    ),
    (
        "history with 1e400",
        _sidecar_edit(lambda v, a: v["history"][0].update(train_loss=1e400)),
        ["--load-epoch", "2"],
        2,
        "is not valid JSON: holds Infinity",
    ),
    (
        "update count of 10**400",
        _sidecar_edit(lambda v, a: v.update(num_update=10**400)),
        ["--load-epoch", "2"],
        2,
        STATE + " 10000000000000000000..., larger than any count",
    ),
    (
        "momentum given as a string",
        _sidecar_edit(lambda v, a: v["config"].update(mom="0.9")),
        ["--load-epoch", "2"],
        2,
        "field config.mom",
    ),
    (
        "rng state cut short",
        _sidecar_edit(lambda v, a: v["rng"][1].pop()),
        ["--load-epoch", "2"],
        2,
        "field rng",
    ),
    (
        "rng key past 32 bits",
        _sidecar_edit(lambda v, a: v["rng"][1].__setitem__(0, 2**40)),
        ["--load-epoch", "2"],
        2,
        "field rng",
    ),
    (
        "optimizer state of another count",
        _sidecar_edit(lambda v, a: v["optimizer"].update(fc1_weight=2)),
        ["--load-epoch", "2"],
        2,
        "field optimizer.fc1_weight: expected 1 arrays",
    ),
    (
        "optimizer state of another shape",
        _sidecar_edit(_array("optimizer:fc1_weight:0", mx.nd.zeros((16, 784)))),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.state.nd: field arrays[optimizer:fc1_weight:0]: expected a dense float32 array "
        "of shape (32, 784)",
    ),
    (
        "optimizer state of another dtype",
        _sidecar_edit(_array("optimizer:fc1_bias:0", mx.nd.zeros(32, dtype="int32"))),
        ["--load-epoch", "2"],
        2,
        "field arrays[optimizer:fc1_bias:0]",
    ),
    (
        "state arrays that are not MXNet's",
        write_file("ck/mlp-0002.state.nd", b"\x00garbage" * 10),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.state.nd does not match its manifest",
    ),
    (
        "config without a field",
        _sidecar_edit(lambda v, a: v["config"].pop("seed")),
        ["--load-epoch", "2"],
        2,
        "field config",
    ),
    (
        "state that is a list",
        _sidecar_edit(lambda v, a: None, replace=lambda v: [v]),
        ["--load-epoch", "2"],
        2,
        "field (top)",
    ),
    (
        "weights that are NaN, consistently saved",
        _weights_edit(_nan_bias),
        ["--load-epoch", "2"],
        2,
        "fc2_bias holds values that are not finite",
    ),
    (
        "weights of float16, consistently saved",
        _weights_edit(_as("fc1_weight", lambda a: a.astype("float16"))),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.params: fc1_weight is of dtype float16",
    ),
    (
        "weights of row_sparse storage, consistently saved",
        _weights_edit(_as("fc3_weight", lambda a: a.tostype("row_sparse"))),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.params: fc3_weight is a row_sparse array",
    ),
    (
        "momentum that is NaN, consistently saved",
        _sidecar_edit(_array("optimizer:fc2_weight:0", mx.nd.full((16, 32), float("nan")))),
        ["--load-epoch", "2"],
        2,
        "mlp-0002.state.nd: field arrays[optimizer:fc2_weight:0]: expected finite values",
    ),
    (
        "momentum that is infinite mid-epoch, consistently saved",
        _sidecar_edit(_array("optimizer:fc1_bias:0", mx.nd.full(32, float("inf"))),
                      checkpoint.Tag(3, 4)),
        ["--resume"],
        2,
        "mlp-interrupted-0003-000004.state.nd: field arrays[optimizer:fc1_bias:0]: expected finite",
    ),
    (
        "momentum of row_sparse storage",
        _sidecar_edit(_array("optimizer:fc1_bias:0", mx.nd.zeros(32).tostype("row_sparse"))),
        ["--load-epoch", "2"],
        2,
        "field arrays[optimizer:fc1_bias:0]: expected a dense float32 array of shape (32,)",
    ),
    (
        "the metrics of a mid-epoch checkpoint that are NaN",
        _sidecar_edit(_array("stats:0:0", mx.nd.full((4, 2), float("nan"))), checkpoint.Tag(3, 4)),
        ["--resume"],
        2,
        "field arrays[stats:0:0]: expected finite values",
    ),
    (
        "interrupted: batches that disagree with its name",
        _sidecar_edit(lambda v, a: v["samples"].pop(), checkpoint.Tag(3, 4)),
        ["--resume"],
        2,
        "field samples",
    ),
    (
        "interrupted on two devices, resumed on one",
        _sidecar_edit(lambda v, a: v.update(stats=[2]), checkpoint.Tag(3, 4)),
        ["--resume"],
        2,
        "field stats",
    ),
    (
        "interrupted, resumed with another batch size",
        nothing,
        ["--resume", "--batch-size", "50"],
        2,
        "field config.batch_size",
    ),
    (
        "interrupted, resumed on other pixels",
        _data("other pixels"),
        ["--resume"],
        2,
        "was saved mid-epoch on other data (train-images-idx3-ubyte differ)",
    ),
    (
        "interrupted, resumed on a set of another size",
        _other_size,
        ["--resume"],
        2,
        "was saved mid-epoch on other data",
    ),
    (
        "momentum switched off on resume",
        _sidecar_edit(lambda v, a: None),
        ["--load-epoch", "2", "--mom", "0"],
        2,
        "field config.mom",
    ),
    # 5. Outputs that are not regular files, or cannot be written.
    (
        "metrics file /dev/null",
        nothing,
        ["--start-over", "--metrics-file", "/dev/null"],
        2,
        "is not a regular file",
    ),
    (
        "metrics file that is a folder",
        nothing,
        ["--start-over", "--metrics-file", "{d}/ck"],
        2,
        "is a folder",
    ),
    (
        "metrics file in a missing folder",
        nothing,
        ["--start-over", "--metrics-file", "{d}/nope/m.jsonl"],
        2,
        "does not exist; create it first",
    ),
    (
        "metrics file under a file",
        nothing,
        ["--start-over", "--metrics-file", "{d}/mnist/t10k-labels-idx1-ubyte.gz/m"],
        2,
        "mnist/t10k-labels-idx1-ubyte.gz is not a folder",
    ),
    (
        "metrics file linked to /dev/null",
        symlink("m.jsonl", "/dev/null"),
        ["--start-over", "--metrics-file", "{d}/m.jsonl"],
        2,
        "is not a regular file",
    ),
    (
        "plot folder that is a file",
        write_file("pics", b"x"),
        ["--start-over", "--plot-dir", "{d}/pics"],
        2,
        "is not a folder",
    ),
    (
        "prefix in a missing folder",
        nothing,
        ["--model-prefix", "{d}/nope/mlp"],
        2,
        "does not exist",
    ),
    (
        "prefix under a file",
        nothing,
        ["--model-prefix", "{d}/mnist/t10k-labels-idx1-ubyte.gz/mlp"],
        2,
        "is not a folder",
    ),
    (
        "prefix too long for its file system",
        nothing,
        ["--model-prefix", "{d}/ck/" + "m" * 220],
        2,
        "the name is too long for its folder's file system",
    ),
    (
        "a folder where the first save would write the symbol",
        make_folder("fresh-symbol.json"),
        ["--model-prefix", "{d}/fresh"],
        2,
        "{d}/fresh-symbol.json is a folder, where --model-prefix {d}/fresh saves its checkpoints",
    ),
    (
        "a symlink to nothing where the first save would write its params",
        symlink("fresh-0001.params", "/nonexistent/params"),
        ["--model-prefix", "{d}/fresh"],
        2,
        "{d}/fresh-0001.params is a symlink to nothing, where --model-prefix {d}/fresh saves",
    ),
    (
        "a symlink to nothing as the metrics file",
        symlink("m.jsonl", "/nonexistent/m.jsonl"),
        ["--start-over", "--metrics-file", "{d}/m.jsonl"],
        2,
        "--metrics-file {d}/m.jsonl is a symlink to /nonexistent/m.jsonl, which does not exist",
    ),
    (
        "metrics file at another run's symbol",
        _copy("ck/mlp-symbol.json", "other-symbol.json"),
        ["--start-over", "--metrics-file", "{d}/other-symbol.json"],
        2,
        "is named as a file of the checkpoints under prefix {d}/other",
    ),
    # 6. Unbounded reads.
    ("gzip bomb", _data("bomb"), ["--start-over"], 2, "is longer than its header says"),
    (
        "header that promises 5 million images",
        _data("huge header"),
        ["--start-over"],
        2,
        "promises 5,000,000 samples",
    ),
    (
        "labels file that is a FIFO",
        fifo("mnist/train-labels-idx1-ubyte.gz"),
        ["--start-over"],
        2,
        "is not a regular file",
    ),
    (
        "raw and gzip copies that differ",
        _data("raw and gz differ"),
        ["--start-over"],
        2,
        "hold different data; remove the one that is wrong",
    ),
    # 7. Flags that would reach MXNet unchecked.
    ("seed -1", nothing, ["--start-over", "--seed", "-1"], 2, "--seed must be in 0..4294967295"),
    ("seed 2**32", nothing, ["--start-over", "--seed", str(2**32)], 2, "--seed must be in"),
    (
        "folded gradient scale below float32",
        nothing,
        ["--start-over", "--lr", "1e-40"],
        2,
        "outside float32's normal range",
    ),
    (
        "a width past the bound",
        nothing,
        ["--start-over", "--num-hidden", "100000"],
        2,
        "--num-hidden must be",
    ),
    (
        "schedule epoch 0",
        nothing,
        ["--start-over", "--lr-scheduler", "step", "--lr-step-epochs", "0"],
        2,
        "--lr-step-epochs must lie in 1..2",
    ),
    (
        "schedule epoch past the end",
        nothing,
        ["--start-over", "--lr-scheduler", "step", "--lr-step-epochs", "3"],
        2,
        "--lr-step-epochs must lie in 1..2",
    ),
    (
        "too many epochs for the names",
        nothing,
        ["--start-over", "--num-epochs", "10000"],
        2,
        "--num-epochs must",
    ),
    ("too many contexts", nothing, ["--start-over", "--cpus", "65"], 2, "--cpus must be in 0..64"),
    (
        "a newline in a path",
        nothing,
        ["--start-over", "--metrics-file", "{d}/a\nb"],
        2,
        "control character",
    ),
    (
        "dist_sync without a launcher",
        nothing,
        ["--start-over", "--kv-store", "dist_sync"],
        2,
        "--kv-store dist_sync runs under a launcher, which sets DMLC_ROLE",
    ),
    # 8. Messages that name the cause.
    (
        "divergence from a huge weight decay",
        nothing,
        ["--model-prefix", "{d}/fresh", "--wd", "1000"],
        1,
        "--wd 1000.0 is too large for --lr 0.1",
    ),
    (
        "divergence from a huge learning rate",
        nothing,
        ["--model-prefix", "{d}/fresh", "--lr", "1e8"],
        1,
        "try a smaller --lr",
    ),
    (
        "a resume hint from the checkpoint's flags, not this run's",
        nothing,
        ["--load-epoch", "7", "--num-epochs", "9", "--num-hidden", "64,32", "--batch-size", "50"],
        2,
        "train_mnist.py --num-hidden 32,16 --data-dir {d}/mnist --num-epochs 9 --lr 0.1 --mom 0.9 "
        "--model-prefix",
    ),
]


@pytest.mark.parametrize(
    "name, setup, extra, code, expected", CASES, ids=[case[0] for case in CASES]
)
def test_fault_is_one_line_with_its_exit_code_and_nothing_saved_changes(
    capsys, case_dir, name, setup, extra, code, expected
):
    setup(case_dir)
    before = tree_bytes(case_dir)
    argv = ["--data-dir", str(case_dir / "mnist"), "--model-prefix", str(case_dir / P), *FLAGS]
    argv += [word.replace("{d}", str(case_dir)) for word in extra]
    got, out, err = run_cli(capsys, *argv)
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("train_mnist.py: ")
    assert expected.replace("{d}", str(case_dir)) in err
    assert tree_bytes(case_dir) == before


def _child(argv, limit_bytes=None, timeout=120, env=None):
    """Run train_mnist.py in a child under an address-space limit."""
    # Return (code, stderr, peak RSS in MB).
    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    process = subprocess.Popen(
        TRAIN + [*argv],
        preexec_fn=limit,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, status, usage = os.wait4(process.pid, 0)
    err = process.stderr.read()
    process.stderr.close()
    return exit_code(status), err, usage.ru_maxrss / 1024


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--num-hidden", "30000,30000"], "this configuration needs about"),
        (
            ["--cpus", "40", "--batch-size", "1000", "--num-hidden", "4096,4096"],
            "this configuration needs about",
        ),
    ],
    ids=["widths", "contexts"],
)
def test_a_run_that_cannot_fit_is_refused_with_its_estimate_before_allocating(
    saved, tmp_path, extra, expected
):
    limit = 3 << 30
    code, err, peak_mb = _child(
        ["--data-dir", str(saved / "mnist"), "--plot-dir", "none", "--num-epochs", "1", *extra],
        limit,
    )
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    # refused from the estimate: nothing of the multi-GB configuration was allocated
    assert peak_mb < 700
    # The same limit lets a configuration that fits train: the estimate does not refuse by mistake.
    code, err, _ = _child(
        ["--data-dir", str(saved / "mnist"), "--plot-dir", "none", "--num-epochs", "1"], limit
    )
    assert code == 0, err


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_within_bounded_memory(saved, tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(saved / "mnist", folder)
    _data("bomb")(tmp_path)
    code, err, peak_mb = _child(["--data-dir", str(folder)], 2 << 30)
    assert code == 2 and "is longer than its header says" in err and err.count("\n") == 1
    # 400 MB of zeros behind a 1050-image header were never read
    assert peak_mb < 500


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_startup_is_one_line_and_exit_130(saved, signum):
    # At random moments of start-up: importing MXNet, reading the data, binding.
    rng = np.random.RandomState(signum)
    for delay in sorted(rng.uniform(0.05, 2.5, size=4)):
        process = subprocess.Popen(
            TRAIN + [
                "--data-dir",
                str(saved / "mnist"),
                "--num-epochs",
                "1000",
                "--plot-dir",
                "none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_signal_handlers(process.pid)
        time.sleep(delay)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, (delay, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (delay, err)
        assert f"stopped by {signal.Signals(signum).name}" in err


@pytest.mark.slow
def test_a_second_signal_exits_at_once_with_one_more_line(saved, tmp_path):
    prefix = str(tmp_path / "mlp")
    process = subprocess.Popen(
        TRAIN + [
            "--data-dir",
            str(saved / "mnist"),
            "--num-epochs",
            "1000",
            "--model-prefix",
            prefix,
            "--plot-dir",
            "none",
            "--batch-size",
            "10",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(prefix + "-0001.manifest.json", process=process, poll=0.01)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert 1 <= err.count("\n") <= 2 and "stopped by" in err
    # the finished epoch stays intact
    checkpoint.verify(prefix, checkpoint.Tag(1))


def _small_filesystem(path, size):
    """Mount a tmpfs of size bytes at path (as root); None if this machine does not allow it."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return path if done.returncode == 0 else None


@pytest.fixture
def full_disk(tmp_path):
    folder = _small_filesystem(tmp_path / "small", 1200 * 1024)
    if folder is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_while_saving_is_one_line_and_earlier_checkpoints_stay_intact(
    capsys, saved, full_disk
):
    prefix = str(full_disk / "mlp")
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        str(saved / "mnist"),
        "--model-prefix",
        prefix,
        *flags(mom=0.9, plot_dir=None),
        "--num-epochs",
        "50",
        "--plot-dir",
        "none",
    )
    assert (
        code == 1
        and err.count("\n") == 1
        and "No space left on device" in err
        and "cannot write" in err
    )
    tags = checkpoint.listing(prefix)
    # some epochs fitted before the disk filled
    assert tags
    for tag in tags:
        checkpoint.verify(prefix, tag)
    assert not [name for name in os.listdir(full_disk) if name.endswith(".tmp")]


def test_a_full_disk_under_the_metrics_file_leaves_it_as_it_was(capsys, saved, full_disk):
    metrics = full_disk / "m.jsonl"
    # a page of tmpfs exactly: the next line needs another
    earlier = b'{"earlier": "' + b"x" * 4077 + b'"}\n'
    metrics.write_bytes(earlier)
    # and every other page is taken
    (full_disk / "filler").write_bytes(bytes(1200 * 1024 - 4096))
    code, _, err = run_cli(
        capsys, "--data-dir", str(saved / "mnist"), *FLAGS, "--metrics-file", str(metrics)
    )
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
    drawn(old)
    before = old.read_bytes()
    os.chmod(old, 0o600)
    code, _, err = run_cli(
        capsys,
        "--data-dir",
        str(saved / "mnist"),
        *flags(mom=0.9, plot_dir=None),
        "--num-epochs",
        "1",
        "--plot-dir",
        str(pictures),
    )
    assert code == 0, err
    assert old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and old.read_bytes() != before
    assert oct(os.stat(old).st_mode & 0o777) == oct(0o600)
    assert not [name for name in os.listdir(pictures) if name.endswith(".tmp")]


def _running(folder, prefix, *extra):
    """A long run in the background, once it has saved its first epoch."""
    process = subprocess.Popen(
        TRAIN + [
            "--data-dir",
            folder,
            "--model-prefix",
            prefix,
            "--num-hidden",
            "32,16",
            "--num-epochs",
            "1000",
            "--batch-size",
            "10",
            "--disp-batches",
            "0",
            "--plot-dir",
            "none",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(prefix + "-0001.manifest.json", process=process)
    return process


def _stop(process):
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("second", [[], ["--start-over"], ["--resume"], ["--load-epoch", "1"]],
                         ids=["fresh", "start over", "resume", "load epoch"])
def test_a_second_run_on_a_prefix_in_use_is_refused_naming_the_process(saved, tmp_path, second):
    prefix = str(tmp_path / "mlp")
    first = _running(str(saved / "mnist"), prefix)
    try:
        epoch_one = {name: data for name, data in tree_bytes(tmp_path).items() if "-0001." in name}
        code, err, _ = _child(
            ["--data-dir", str(saved / "mnist"), "--model-prefix", prefix, *FLAGS, *second]
        )
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"--model-prefix {prefix} is in use by process {first.pid} (" in err
        assert all(tree_bytes(tmp_path)[name] == data for name, data in epoch_one.items())
        checkpoint.verify(prefix, checkpoint.Tag(1))
    finally:
        _stop(first)


@pytest.mark.slow
def test_a_second_run_on_a_metrics_file_in_use_is_refused(saved, tmp_path):
    metrics = str(tmp_path / "m.jsonl")
    first = _running(str(saved / "mnist"), str(tmp_path / "one"), "--metrics-file", metrics)
    try:
        code, err, _ = _child(
            [
                "--data-dir",
                str(saved / "mnist"),
                "--model-prefix",
                str(tmp_path / "two"),
                *FLAGS,
                "--metrics-file",
                metrics,
            ]
        )
        assert code == 2 and f"--metrics-file {metrics} is in use by process {first.pid}" in err
        assert not [name for name in os.listdir(tmp_path) if name.startswith("two")]
    finally:
        _stop(first)


@pytest.mark.slow
def test_two_fresh_runs_started_together_leave_one_consistent_run(saved, tmp_path):
    prefix = str(tmp_path / "mlp")
    command = TRAIN + [
        "--data-dir",
        str(saved / "mnist"),
        "--model-prefix",
        prefix,
        *FLAGS,
        "--num-epochs",
        "1000",
        "--batch-size",
        "10",
    ]
    runs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    deadline = time.time() + 60
    while all(run.poll() is None for run in runs) and time.time() < deadline:
        time.sleep(0.05)
    refused = [run for run in runs if run.poll() is not None]
    assert len(refused) == 1 and refused[0].returncode == 2
    assert "is in use by process" in refused[0].stderr.read()
    survivor = next(run for run in runs if run is not refused[0])
    wait_for_file(prefix + "-0002.manifest.json", process=survivor, poll=0.05)
    _stop(survivor)
    tags = [tag for tag in checkpoint.listing(prefix) if not tag.interrupted]
    assert len(tags) >= 2
    for tag in tags:
        checkpoint.verify(prefix, tag)


@pytest.mark.slow
def test_a_users_hidden_files_beside_the_checkpoints_are_never_removed(saved, tmp_path):
    hidden = {
        ".notes.999999.deadbeef.tmp": b"mine",
        ".mlp-0001.params.999999.0123456789abcdef.tmp.bak": b"mine too",
    }
    for name, data in hidden.items():
        (tmp_path / name).write_bytes(data)
    code, err, _ = _child(
        ["--data-dir", str(saved / "mnist"), "--model-prefix", str(tmp_path / "mlp"), *FLAGS]
    )
    assert code == 0, err
    assert all((tmp_path / name).read_bytes() == data for name, data in hidden.items())


def test_set_asides_never_write_over_earlier_ones(tmp_path):
    from harness import files
    path = tmp_path / "mlp-0003.params"
    for round_ in range(3):
        path.write_bytes(b"round %d" % round_)
        files.set_aside(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mlp-0003.params.torn", "mlp-0003.params.torn.2", "mlp-0003.params.torn.3"]
    assert (tmp_path / "mlp-0003.params.torn").read_bytes() == b"round 0"


@pytest.mark.slow
def test_the_state_of_a_wide_adam_run_saves_and_resumes_within_its_own_bounds(saved, tmp_path):
    # 11.4 million parameters with Adam's two moments: state arrays far past any fixed read limit.
    prefix = str(tmp_path / "wide")
    flags = [
        "--data-dir",
        str(saved / "mnist"),
        "--model-prefix",
        prefix,
        "--num-hidden",
        "4096,2048",
        "--optimizer",
        "adam",
        "--batch-size",
        "1050",
        "--disp-batches",
        "0",
        "--plot-dir",
        "none",
    ]
    code, err, _ = _child(flags + ["--num-epochs", "1"], timeout=300)
    assert code == 0, err
    assert os.path.getsize(prefix + "-0001.state.nd") > 64 << 20
    code, err, _ = _child(flags + ["--num-epochs", "2", "--load-epoch", "1"], timeout=300)
    assert code == 0, err
    checkpoint.verify(prefix, checkpoint.Tag(2))


@pytest.mark.slow
def test_a_test_set_too_big_for_memory_is_refused_from_its_header_before_it_is_read(
    saved, tmp_path
):
    folder = tmp_path / "mnist"
    shutil.copytree(saved / "mnist", folder)
    # A million blank test images: 784 MB raw, under a megabyte compressed.
    path = os.path.join(folder, datasets.FILES[2] + ".gz")
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(
            packer.compress(
                idx_bytes(np.zeros((0, 28, 28), np.uint8))[:4]
                + (10**6).to_bytes(4, "big")
                + (28).to_bytes(4, "big") * 2
            )
        )
        left = 10 ** 6 * 784
        while left:
            f.write(packer.compress(bytes(min(left, 1 << 24))))
            left -= min(left, 1 << 24)
        f.write(packer.flush())
    write_idx(str(folder), datasets.FILES[3], idx_bytes(np.zeros(10 ** 6, np.uint8)))
    code, err, peak_mb = _child(["--data-dir", str(folder), "--plot-dir", "none"], 2 << 30)
    assert code == 2 and err.count("\n") == 1 and "this configuration needs about" in err, err
    assert peak_mb < 400
