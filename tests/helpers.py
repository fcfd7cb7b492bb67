"""Test helpers: a test Config, synthetic IDX files, where real MNIST is, runs of the trainer."""
import gzip
import os
import struct
import sys

import numpy as np

import train_mnist
from harness import idx_files
from harness.datasets import FILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The lesson: the five files at the root.
LESSON = ["data.py", "metrics.py", "network.py", "optimizer.py", "train_mnist.py"]


# The settings of a small test run: a narrow MLP, 3 epochs, no progress lines, no pictures.
SMALL_RUN = dict(num_hidden=(32, 16), num_epochs=3, disp_batches=0, plot_dir="none")
# The trainer, as a user runs it.
TRAIN = [sys.executable, os.path.join(ROOT, "train_mnist.py")]


def _settings(presets, overrides):
    """SMALL_RUN, updated by each preset dict in turn and then by overrides."""
    settings = dict(SMALL_RUN)
    for preset in presets:
        settings.update(preset)
    settings.update(overrides)
    return settings


def config(folder=None, *presets, **overrides):
    """The Config of a small test run on folder: SMALL_RUN, each preset dict, then overrides."""
    return train_mnist.Config(**_settings([{"data_dir": folder or ""}, *presets], overrides))


def flags(*presets, **overrides):
    """The trainer's flags for the run that config(folder, *presets, **overrides) describes.

    The data folder is left to the caller.

    A value of None leaves its flag out (the trainer's default); a tuple is written as the flags
    take it, comma-separated.
    """
    words = []
    for name, value in _settings(presets, overrides).items():
        if value is None:
            continue
        if isinstance(value, bool):
            raise ValueError(f"{name}: flags() takes values, not switches")
        if isinstance(value, (tuple, list)):
            value = ",".join(str(part) for part in value)
        words += ["--" + name.replace("_", "-"), str(value)]
    return words


# The figures of an epoch's record that a run must reproduce (its timings vary).
FIGURES = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


def run_alone(command, timeout=120):
    """Run a trainer's command in one process, from the root; its stdout, once it exits 0."""
    import subprocess
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def epoch_lines(out):
    """The first 8 words of each epoch line of a run's stdout: its figures without its timings.

    From a terminal too (over ssh -tt, lines come with the codes that redraw a bar), and behind
    Horovod's prefixes ("[0]<stdout>:").
    """
    import re
    text = out.replace("\033[K", "").replace("\r", "\n")
    lines = [re.sub(r"^\[\d+\]<std(out|err)>:", "", line).strip() for line in text.splitlines()]
    return [line.split()[:8] for line in lines if line.startswith("epoch ")]


def wait_for_file(path, timeout=60, process=None, poll=0.02):
    """Wait until path exists, looking every poll s; fail if it has not within timeout s.

    Fail too if process (a Popen) ends first, with what it wrote on a stderr piped here.
    """
    import time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process is not None and process.poll() is not None:
            said = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"ended before {path} was written: {said}")
        assert time.monotonic() < deadline, f"{path} was not written within {timeout} s"
        time.sleep(poll)


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
    """Ten noisy prototype digits: learnable in an epoch or two, far from trivial at first.

    (train images, train labels, test images, test labels), uint8, num_train and num_test of them.
    """
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
    """The real MNIST for tests: $MNIST_DIR, else ../shared/mnist beside the project; or None."""
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
NO_REAL_MNIST = "real MNIST not found (MNIST_DIR, then ../shared/mnist)"


def need_real_mnist():
    """REAL_MNIST; without it, a skip that says where the tests look for it.

    Under REQUIRE_REAL_MNIST=1 (as CI sets it), a failure instead: there, nothing is skipped for
    want of data.
    """
    import pytest
    if REAL_MNIST is None:
        if os.environ.get("REQUIRE_REAL_MNIST") == "1":
            pytest.fail(f"{NO_REAL_MNIST}, and REQUIRE_REAL_MNIST=1 asks for it")
        pytest.skip(NO_REAL_MNIST)
    return REAL_MNIST


# oneDNN's kernels round by the instruction set they use: DNNL_MAX_CPU_ISA pins it, so that an
# AVX-512 CPU can print an AVX2 CPU's figures too.
ISA_LIMITS = {"avx2": "AVX2", "avx512": "AVX512_CORE"}


def cpu_has(flag):
    """Whether this CPU has the instruction-set flag (as /proc/cpuinfo names it, such as avx2)."""
    with open("/proc/cpuinfo") as f:
        return f" {flag}" in f.read()


def cpu_has_kind(isa):
    """Whether this CPU has the instruction set isa of ISA_LIMITS (avx512: AVX-512 F at least)."""
    return cpu_has(isa + ("f" if isa == "avx512" else ""))


def cpu_kind():
    """The widest instruction set of ISA_LIMITS this CPU has ("avx512", "avx2"), or None."""
    for isa in ("avx512", "avx2"):
        if cpu_has_kind(isa):
            return isa
    return None


def importable(*names):
    """Whether every module of names can be imported here (the optional ONNX tools, Pillow)."""
    import importlib
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


NO_ONNX = "onnx and onnxruntime are not installed (see requirements-onnx.txt)"


def need_onnx():
    """A skip that says how to install the ONNX tools, unless they are installed."""
    import pytest
    if not importable("onnx", "onnxruntime"):
        pytest.skip(NO_ONNX)


def drawn(path):
    """Write a picture as Matplotlib draws one at path: an earlier run's, which a run may redraw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure = plt.figure(figsize=(1, 1))
    figure.savefig(path, format="png")
    plt.close(figure)


# The setups of the tables of cases: each is a function of the case's folder d (a pathlib.Path)
# that changes it in one way before the case runs.
def nothing(d):
    """Leave the case's folder as it is."""


def write_file(name, payload):
    """A setup that writes payload to d/name, making its folders."""
    def setup(d):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(payload)
    return setup


def symlink(name, target):
    """A setup that makes d/name a symlink to d/target (or to target itself, if it is absolute)."""
    def setup(d):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(d / target, d / name)
    return setup


def make_folder(name):
    """A setup that makes the folder d/name, and the folders above it."""
    def setup(d):
        (d / name).mkdir(parents=True)
    return setup


def fifo(name):
    """A setup that puts a FIFO at d/name, in place of the file there if any."""
    def setup(d):
        if os.path.lexists(d / name):
            os.remove(d / name)
        os.mkfifo(d / name)
    return setup


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
    """Every file under folder, by path, with its bytes (or its kind, if not a regular file).

    Compared before and after, it shows that a run wrote or changed nothing.
    """
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
    """A devices.Model of the MLP bound as training binds it (the plain path unless fast=True).

    Its weights are initialised from seed, for the iterators given (a 100-sample NDArrayIter of
    zeros by default).
    """
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


def pass_no_ignored_signals():
    """Let the processes tests start take SIGINT, SIGTERM and SIGHUP, though pytest ignores them.

    Under nohup or a script's `&`, pytest starts with a signal ignored, and each process it starts
    would inherit that, which the trainer honours as nohup means it. A handler that does nothing
    keeps pytest as immune, and exec() resets a handler to the default in the child.
    """
    import signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, _ignore_signal)


def _ignore_signal(signum, frame):
    """Do nothing: pytest goes on, as when the signal was ignored."""


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
    """train_mnist.py with argv under FAULT_DRIVER: (exit code, stderr); its Popen unless wait."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", FAULT_DRIVER, ROOT, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
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


# Every process of a job that a test starts carries this variable, with a value of the job's own
# (sent over ssh to the test's hosts too): no test counts, or stops, the processes of anyone else's.
JOB_MARK = "TEST_JOB_MARK"
# The launcher, as a user runs it.
LAUNCH = [sys.executable, "-m", "harness.launch"]


def launch(launcher_args, command):
    """The command that runs command under python -m harness.launch with launcher_args."""
    return [*LAUNCH, *launcher_args, "--", *command]


def marked_processes(name, value):
    """pid -> (environment, command line) of each process here whose environment has name=value.

    The environment is a dict of str, the command line a list of str; this process is left out.
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                items = f.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)
        if env.get(name) == value:
            found[int(entry)] = (env, [word.decode(errors="replace") for word in words if word])
    return found


class Job:
    """A job a test started in the background: its first process, its output, all its processes.

    Its output is read as it comes, line by line with the time it came (lines), so that a test can
    look at it while the job runs.
    """

    def __init__(self, command, env=None, **popen):
        import subprocess
        import threading
        import uuid
        self.mark = uuid.uuid4().hex
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=dict(os.environ, **{JOB_MARK: self.mark}, **(env or {})),
            stdout=popen.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, text=True,
            **popen)
        self.lines = {"out": [], "err": []}
        self._arrived = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("out", self.process.stdout),
                                              ("err", self.process.stderr)) if stream]
        for thread in self._readers:
            thread.start()

    def _read(self, name, stream):
        """Keep each line of stream, with the time it came, until the stream ends."""
        import time
        for line in stream:
            with self._arrived:
                self.lines[name].append((time.monotonic(), line))
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    def wait_for_line(self, start, timeout=120):
        """Wait until the job prints a line on stdout that starts with start; fail if it ends first.

        It returns as soon as the reader has the line: a test can act on it as a user would.
        """
        def printed():
            return any(line.startswith(start) for _, line in self.lines["out"])

        def over():
            return printed() or not any(thread.is_alive() for thread in self._readers)
        with self._arrived:
            self._arrived.wait_for(over, timeout)
            assert printed(), f"the job printed no line {start!r}:\n{self.text('out')[-2000:]}"

    def text(self, name):
        """All that the job wrote on stream name ("out" or "err") so far."""
        return "".join(line for _, line in list(self.lines[name]))

    def wait_for(self, path, timeout=60):
        """Wait until the job has written path; fail, with its last output, if it ends first."""
        try:
            wait_for_file(path, timeout, self.process)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; the job's last output:\n"
                                 f"{self.text('out')[-2000:]}{self.text('err')[-2000:]}") from None

    def processes(self, role=None, trainers=False):
        """The pids here that belong to this job (role: only those of it; trainers: not guards)."""
        found = []
        for pid, (env, _) in marked_processes(JOB_MARK, self.mark).items():
            if role and env.get("DMLC_ROLE") != role:
                continue
            if trainers and env.get("LAUNCH_JOB_CHILD") != "1":
                continue
            found.append(pid)
        return found

    def finish(self, timeout=180):
        """(exit code, stdout, stderr) once the job's first process ends; a failure past timeout."""
        import subprocess

        import pytest
        try:
            self.process.wait(timeout)
            running = False
        except subprocess.TimeoutExpired:
            running = True
        # Outside the except: one failure, not a failure during the handling of another.
        if running:
            pytest.fail(f"the job did not end within {timeout:g} s; its last output:\n"
                        f"{self.text('out')[-1500:]}{self.text('err')[-1500:]}")
        for thread in self._readers:
            thread.join(10)
        return self.process.returncode, self.text("out"), self.text("err")

    def gone(self, timeout):
        """Whether every process of the job has ended within timeout seconds."""
        import time
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.processes()

    def kill(self):
        """End the job's first process and whatever of the job is left: no test leaves one running.

        A launcher is asked twice, as a user's two Ctrl-Cs would, and given a minute.
        """
        import signal
        import subprocess
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
