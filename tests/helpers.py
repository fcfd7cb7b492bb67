"""Test helpers: a test Config, synthetic IDX files, where real MNIST is, runs of the trainer."""
import gzip
import os
import struct

import numpy as np

import train_mnist
from harness import idx_files
from harness.datasets import FILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(folder=None, **overrides):
    """The Config of a small test run on folder."""
    # A narrow MLP, 3 epochs, no progress lines, no pictures.
    settings = dict(
        data_dir=folder or "", num_hidden=(32, 16), num_epochs=3, disp_batches=0, plot_dir="none"
    )
    settings.update(overrides)
    return train_mnist.Config(**settings)


def idx_bytes(array, magic=None):
    """Serialise a uint8 array as an IDX file (0x0803 for 3-D images, 0x0801 for 1-D labels)."""
    magic = magic if magic is not None else 0x800 + array.ndim
    return (
        struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    )


def write_idx(folder, name, payload, compress=True):
    path = os.path.join(folder, name + (".gz" if compress else ""))
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return path


def read_images(path):
    """The (N, 784) uint8 pixels of one IDX image file, raw or .gz, read as idx_files.read reads it.

    DataError if it is not one.
    """
    return idx_files._read_images(path)[0]


def read_labels(path):
    """The (N,) int32 labels, each in 0..9, of one IDX label file, raw or .gz; else DataError."""
    return idx_files._read_labels(path)[0]


def synthetic_arrays(num_train=1050, num_test=230, seed=0):
    """Ten noisy prototype digits."""
    # Learnable in an epoch or two, far from trivial at initialisation.
    rng = np.random.RandomState(seed)
    prototypes = rng.rand(10, 28, 28) > 0.7
    arrays = []
    for n in (num_train, num_test):
        labels = rng.randint(0, 10, size=n)
        images = 0.6 * prototypes[labels] + 0.4 * rng.rand(n, 28, 28)
        arrays += [(images * 255).astype(np.uint8), labels.astype(np.uint8)]
    return arrays


def write_mnist(folder, arrays=None, compress=True):
    """Write the four IDX files into folder and return the arrays written."""
    arrays = arrays if arrays is not None else synthetic_arrays()
    for name, array in zip(FILES, arrays):
        write_idx(folder, name, idx_bytes(array), compress)
    return arrays


def corrupt(folder, kind):
    """Damage a freshly written synthetic set in one way; return the text the error must contain."""
    train_x, train_y, test_x, test_y = synthetic_arrays()
    images = os.path.join(folder, FILES[0] + ".gz")
    if kind == "missing":
        os.remove(os.path.join(folder, FILES[3] + ".gz"))
        return "of the 4 data files missing"
    if kind == "truncated":
        write_idx(folder, FILES[0], idx_bytes(train_x)[:-100])
        return "is truncated"
    if kind == "empty":
        write_idx(folder, FILES[0], b"")
        return "is truncated"
    if kind == "wrong magic":
        write_idx(folder, FILES[0], idx_bytes(train_x, magic=0x0801))
        return "magic number 0x00000801"
    if kind == "mismatched counts":
        write_idx(folder, FILES[3], idx_bytes(test_y[:-1]))
        return "different splits"
    if kind == "label out of range":
        bad = train_y.copy()
        bad[7] = 10
        write_idx(folder, FILES[1], idx_bytes(bad))
        return "label 10 at index 7 is outside 0..9"
    if kind == "wrong image size":
        write_idx(folder, FILES[0], idx_bytes(np.zeros((5, 32, 32), np.uint8)))
        return "expected 28"
    if kind == "html instead of gzip":
        with open(images, "wb") as f:
            f.write(b"<html><body>404 Not Found</body></html>")
        return "cannot be read as gzip"
    if kind == "trailing bytes":
        write_idx(folder, FILES[0], idx_bytes(train_x) + b"\0")
        return "longer than its header says"
    raise ValueError(kind)


BAD_DATA = [
    "missing",
    "truncated",
    "empty",
    "wrong magic",
    "mismatched counts",
    "label out of range",
    "wrong image size",
    "html instead of gzip",
    "trailing bytes",
]


def real_mnist_dir():
    """The real MNIST for tests: $MNIST_DIR, else ../shared/mnist beside the project."""
    # None if neither exists.
    for folder in (os.environ.get("MNIST_DIR"), os.path.join(ROOT, "..", "shared", "mnist")):
        if (
            folder
            and os.path.isdir(folder)
            and os.path.exists(os.path.join(folder, FILES[0] + ".gz"))
        ):
            return os.path.abspath(folder)
    return None


# Read once at import, before any fixture clears MNIST_DIR.
REAL_MNIST = real_mnist_dir()


def numpy_probs(params, images):
    """Forward pass of network.get_symbol's MLP in float64 numpy, from a name -> array dict."""
    x = images.astype(np.float64)
    layer = 1
    while f"fc{layer + 1}_weight" in params:
        x = np.maximum(x @ params[f"fc{layer}_weight"].T + params[f"fc{layer}_bias"], 0)
        layer += 1
    logits = x @ params[f"fc{layer}_weight"].T + params[f"fc{layer}_bias"]
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def tree_bytes(folder):
    """Every file under folder, by path, with its bytes (or its kind, if not a regular file)."""
    # To show that a
    # run wrote or changed nothing.
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                found[os.path.relpath(path, folder)] = (
                    "link to " + os.readlink(path) if os.path.islink(path) else "not a regular file"
                )
                continue
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def run_cli(capsys, *argv):
    """Run train_mnist.main() in-process; return its exit code, stdout and stderr."""
    try:
        code = train_mnist.main(list(argv))
    except SystemExit as exit_:
        # argparse's way out
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


class FakeRun:
    """What devices.Model reads of a Run: its config, contexts and sync."""

    def __init__(self, settings, contexts=None):
        import mxnet as mx

        from harness import sync
        self.config = config(**settings).resolved()
        self.contexts = contexts or [mx.cpu()]
        self.sync = sync.create("device", len(self.contexts))


def bound_model(hidden=(16,), seed=0, iterators=None, opt=None, **settings):
    """A devices.Model of the MLP bound as training binds it (the plain path unless fast=True)."""
    # Its weights
    # initialised from seed, for the iterators given (a 100-sample NDArrayIter of zeros by default).
    import mxnet as mx

    import network
    from harness import devices
    settings = dict({"fast": False, "num_hidden": hidden}, **settings)
    run = FakeRun(settings, settings.pop("contexts", None))
    symbol = network.get_symbol(run.config.network, hidden)
    graph = network.training_graph(symbol, run.config.gradient)
    shape = network.sample_shape(run.config.network)
    if iterators is None:
        zeros = mx.io.NDArrayIter(
            np.zeros((100, *shape), np.float32), np.zeros(100, np.float32), 100
        )
        iterators = (zeros, zeros)
    model = devices.bound(graph, run, iterators, opt)
    train_mnist.initialize(model.arg_params, np.random.RandomState(seed))
    model.share_weights()
    return model


def load_mnist(folder):
    """(train_images, train_labels, test_images, test_labels) of the IDX files in folder."""
    import data
    return data.load_mnist(folder)


def batch_of(images, labels):
    """One DataBatch of float32 images and labels, as an MXNet iterator yields it."""
    import mxnet as mx
    return mx.io.DataBatch([mx.nd.array(images)], [mx.nd.array(labels)], pad=0)


def saved_params(prefix, epoch):
    """The parameters of checkpoint PREFIX-%04d.params, as numpy arrays by their file key."""
    import mxnet as mx

    return {
        name: array.asnumpy() for name, array in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()
    }


def assert_params_close(a, b, tol=1e-5):
    """Two parameter sets with the same names, equal within tol (relative and absolute)."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)


# Runs train_mnist.main() with faults injected through public names: a SIGKILL of itself right after
# the KILL_AT_WRITE-th file it writes; a signal (SIGNAL, SIGINT by default) to itself after the
# INTERRUPT_AT_BATCH-th batch; and the signal as the function SIGNAL_IN ("module:name", such as
# "harness.report:save_pictures") begins, or as SIGNAL_AFTER returns.
FAULT_DRIVER = """
import importlib, os, signal, sys
sys.path.insert(0, sys.argv[1])
from harness import compat, files, signals
signals.install()
compat.install()
import metrics
writes, batches = [0], [0]
kill_at = int(os.environ.get("KILL_AT_WRITE", 0))
interrupt_at = int(os.environ.get("INTERRUPT_AT_BATCH", 0))
signum = getattr(signal, os.environ.get("SIGNAL", "SIGINT"))
write_atomic, add = files.write_atomic, metrics.Meter.add
def counted_write(path, write):
    write_atomic(path, write)
    writes[0] += 1
    if writes[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
def counted_add(self, executors, samples):
    add(self, executors, samples)
    batches[0] += 1
    if batches[0] == interrupt_at:
        os.kill(os.getpid(), signum)
files.write_atomic, metrics.Meter.add = counted_write, counted_add
def wrap(spec, before):
    module_name, _, path = spec.partition(":")
    owner = importlib.import_module(module_name)
    *outer, name = path.split(".")
    for part in outer:
        owner = getattr(owner, part)
    function = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if before:
            os.kill(os.getpid(), signum)
        result = function(*args, **kwargs)
        if not before:
            os.kill(os.getpid(), signum)
        return result
    setattr(owner, name, wrapped)
import train_mnist
for variable, before in (("SIGNAL_IN", True), ("SIGNAL_AFTER", False)):
    if os.environ.get(variable):
        wrap(os.environ[variable], before)
signals.run(lambda: train_mnist.main(sys.argv[2:]))
"""


def default_signals():
    """In a child, before it runs: SIGINT, SIGTERM and SIGHUP by default, whatever pytest inherited.

    A signal ignored when a process starts stays ignored by the trainer (as nohup means it), and a
    pytest started by `nohup` or a script's `&` would pass that on to every trainer it starts.
    """
    import signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def wait_for_signal_handlers(pid, timeout=30):
    """Wait until process pid has taken its signals: until its entry's first line has run.

    Before that the interpreter is still starting, and no Python code can see a signal. SIGHUP is
    the last that signals.install() takes, or, if SIGHUP was ignored at the start, SIGTERM.
    """
    import signal
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            masks = {line.split(":")[0]: int(line.split()[1], 16) for line in f
                     if line.startswith(("SigCgt:", "SigIgn:"))}
        hup, term = 1 << (signal.SIGHUP - 1), 1 << (signal.SIGTERM - 1)
        if masks["SigCgt"] & hup or masks["SigIgn"] & hup and masks["SigCgt"] & term:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} never took its signal handlers")


def train_with_faults(argv, env=None, wait=True, timeout=120):
    """train_mnist.py with argv under FAULT_DRIVER."""
    # (exit code, stderr), or the process if not wait.
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", FAULT_DRIVER, ROOT, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
        preexec_fn=default_signals,
    )
    if not wait:
        return process
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def fake_checkpoint(prefix, tag, state=None):
    """Write checkpoint tag under prefix as checkpoint.save lays it out, without MXNet.

    Its files hold placeholder bytes (the state's JSON is state, or {}), and its manifest matches
    them: the plan sees an intact checkpoint, which only a restore would find is not MXNet's.
    """
    import hashlib
    import json

    from harness import checkpoint
    where = checkpoint.paths(prefix, tag)
    payloads = {"symbol": b'{"nodes": []}\n', "inference": b'{"nodes": []}\n',
                "state": json.dumps(state or {}).encode(), "arrays": b"arrays", "params": b"params"}
    files = {}
    for kind, payload in payloads.items():
        if not os.path.exists(where[kind]):
            with open(where[kind], "wb") as f:
                f.write(payload)
        with open(where[kind], "rb") as f:
            payload = f.read()
        files[kind] = {"name": os.path.basename(where[kind]), "bytes": len(payload),
                       "sha256": hashlib.sha256(payload).hexdigest()}
    manifest = {"format": checkpoint.FORMAT, "epoch": tag.epoch, "batches": tag.batches,
                "files": files}
    with open(where["manifest"], "w") as f:
        json.dump(manifest, f)
    return where


def exit_code(status):
    """A wait status as a return code, negative for a signal (Python 3.9 has it built in)."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


# Every process of a job that a test launches carries this variable, with a value of the job's own:
# no test counts, or stops, the processes of anyone else's job.
JOB_MARK = "SCALE_TEST_JOB"


class Job:
    """A job that a test launched with python -m harness.launch: its launcher, and its processes."""

    def __init__(self, launcher_args, command, **popen):
        import subprocess
        import sys
        import uuid
        self.mark = uuid.uuid4().hex
        env = dict(os.environ, **{JOB_MARK: self.mark})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harness.launch", *launcher_args, "--", *command],
            cwd=ROOT,
            env=env,
            stdout=popen.pop("stdout", subprocess.PIPE),
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=popen.pop("preexec_fn", default_signals),
            **popen,
        )

    def processes(self, role=None, trainers=False):
        """The pids here that belong to this job (role: only those of it; trainers: not guards)."""
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = dict(
                        item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item
                    )
            except (OSError, ValueError):
                continue
            if env.get(JOB_MARK.encode()) != self.mark.encode():
                continue
            if role and env.get(b"DMLC_ROLE") != role.encode():
                continue
            if trainers and env.get(b"LAUNCH_JOB_CHILD") != b"1":
                continue
            found.append(int(entry))
        return found

    def finish(self, timeout=180):
        """Wait for the launcher: (its exit code, its stdout, its stderr)."""
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out or "", err

    def kill(self):
        """End the launcher and whatever of the job is left: no test leaves a job running."""
        import signal
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.send_signal(signal.SIGINT)
            self.process.communicate(timeout=60)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

