"""Reporting: the epoch line, progress, the metrics file and the pictures. Lines fit 80 columns."""
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
import urllib.parse

from harness import files, signals

# The keys of an epoch's record, in order.
RECORD_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "epoch_seconds",
    "train_seconds",
    "samples_per_second",
)


class Console:
    """Where main() prints: on a terminal, progress is a bar redrawn in place; else a line a report.

    A stdout closed while the run goes on (`| head -2`) stops it as a SIGPIPE would, after saving
    its step, with its line on stderr. A stream that is None (no stdout at all) shows nothing.
    """

    def __init__(self, stream):
        self.stream, self.closed = stream, stream is None
        self.tty = not self.closed and stream.isatty()

    def line(self, text):
        """Print a line (on a terminal, over the progress bar)."""
        self._write(("\r\033[K" if self.tty else "") + text + "\n")

    def progress(self, figures):
        """Show progress figures: the bar, fitted to the terminal's width, or a plain line."""
        if self.tty:
            self._write(
                "\r" + progress_bar(figures, shutil.get_terminal_size((80, 24)).columns) + "\033[K"
            )
        else:
            self.line(progress_line(figures))

    def _write(self, text):
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            # Nothing more reaches the reader; the interpreter's own flush at exit must not fail
            # either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            signals.stop_for(signal.SIGPIPE)


def progress_line(f):
    """epoch   1  batch   100/600  loss 0.9384 acc 0.7299    119166 samples/s"""
    batch = f"{f['batch']:5d}/{f['batches']}" if f["batches"] else f"{f['batch']:5d}"
    return (f"epoch {f['epoch']:3d}  batch {batch}  loss {f['loss']:.4f} acc {f['acc']:.4f}  "
            f"{f['samples_per_second']:8.0f} samples/s")


def progress_bar(f, width):
    """epoch   1 [#####.....] 300/600 loss 0.1234 acc 0.9567 119166/s, in width - 1 columns."""
    done = f"{f['batch']}/{f['batches']}" if f["batches"] else f"{f['batch']}"
    tail = f" {done} loss {f['loss']:.4f} acc {f['acc']:.4f} {f['samples_per_second']:.0f}/s"
    head = f"epoch {f['epoch']:3d} "
    # The last column stays free: writing it wraps some terminals.
    room = width - 1 - len(head) - len(tail) - 2
    if room < 5:
        return (head + tail.strip())[:max(width - 1, 0)]
    filled = room * f["batch"] // f["batches"] if f["batches"] else 0
    return f"{head}[{'#' * filled}{'.' * (room - filled)}]{tail}"


def progress_figures(meter, epoch, batch, batches, tic):
    """The epoch's running loss and accuracy, a couple of batches behind, and the speed so far.

    The speed is of all workers; tic is the epoch's start, as time.perf_counter() read it. It waits
    for those batches: the time is taken after.
    """
    correct, loss_sum, scored, everyone = meter.running()
    return {
        "epoch": epoch,
        "batch": batch,
        "batches": batches,
        "loss": float(loss_sum / scored),
        "acc": float(correct / scored),
        "samples_per_second": everyone / (time.perf_counter() - tic),
    }


def record(epoch, totals, samples, test, seconds):
    """One epoch's figures: train loss and accuracy from the summed totals, test, and the time.

    samples: (the epoch's samples over all workers, those of them this run trained); seconds: (the
    whole epoch's, its training steps' alone, without scoring the test set).
    """
    (correct, loss_sum), (everyone, trained), (epoch_seconds, train_seconds) = (totals, samples,
                                                                               seconds)
    values = (
        epoch,
        float(loss_sum / everyone),
        float(correct / everyone),
        test["loss"],
        test["acc"],
        epoch_seconds,
        train_seconds,
        trained / train_seconds if trained else 0.0,
    )
    return dict(zip(RECORD_KEYS, values))


def epoch_line(r):
    """epoch   1  train loss 0.4126 acc 0.8804  test loss 0.2543 acc 0.9239    0.23 s"""
    return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}  "
            f"test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}  {r['epoch_seconds']:6.2f} s")


def scored_line(stem, scored):
    """checkpoint runs/mlp-0015: test loss 0.0766 acc 0.9772"""
    return f"checkpoint {stem}: test loss {scored['loss']:.4f} acc {scored['acc']:.4f}"


class MetricsFile:
    """The --metrics-file: a JSON line per epoch, appended after that epoch's checkpoint is saved.

    Where the file stood at each save (its size, its last line's digest, how many of the run's
    records it held) goes into the checkpoint; a resume from it cuts what a stopped run wrote after
    that point, if that is only this run's records, and writes the checkpoint's own records again:
    each epoch once.
    """

    def __init__(self, path):
        self.path = path
        size, last = _tail(path)
        self.at = {"bytes": size, "sha256": _digest(last), "records": 0}

    def append(self, record_):
        """Append one epoch's record."""
        line = json.dumps(record_)
        size = files.append_line(self.path, line)
        self.at = {
            "bytes": size,
            "sha256": _digest(line.encode()),
            "records": self.at["records"] + 1,
        }

    def resume(self, saved, history, first_epoch):
        """Make the file hold history's records once, from where the checkpoint left it.

        saved: where the file stood at that checkpoint's save; history: the checkpoint's records,
        of epochs first_epoch on (none, when it was saved in the first epoch). Returns a line that
        says what changed, or None.
        """
        size, _ = _tail(self.path)
        head_size, head_last = (
            _tail(self.path, saved["bytes"]) if size >= saved["bytes"] else (None, b"")
        )
        if head_size != saved["bytes"] or _digest(head_last) != saved["sha256"]:
            self.at = {
                "bytes": size,
                "sha256": _digest(_tail(self.path)[1]),
                "records": saved["records"],
            }
            note = "changed since the checkpoint was saved" if size else "gone"
            return (f"metrics file: {self.path} is {note}; the records of epochs to come are "
                    "appended to it")
        try:
            with open(self.path, "rb") as f:
                f.seek(saved["bytes"])
                tail = f.read(64 << 20).splitlines()
        except FileNotFoundError:
            tail = []
        written = saved["records"]
        # The epoch of the first record the file may hold past the checkpoint's position.
        first = first_epoch + written
        ours = [_parsed(line) for line in tail]
        if not all(
            r is not None and tuple(r) == RECORD_KEYS and r["epoch"] == first + i
            for i, r in enumerate(ours)
        ):
            self.at = {
                "bytes": size,
                "sha256": _digest(tail[-1] if tail else head_last),
                "records": len(history),
            }
            return f"metrics file: {self.path} holds other lines after the checkpoint's; they stay"
        if tail:
            os.truncate(self.path, saved["bytes"])
        self.at = dict(saved)
        for record_ in history[written:]:
            self.append(record_)
        if len(ours) == len(history) - written:
            return None
        if history[written:]:
            last = history[-1]["epoch"]
            return f"metrics file: wrote the records of epochs {first} to {last} once"
        return "metrics file: removed the records past the checkpoint; each epoch is written once"


def _digest(line):
    return hashlib.sha256(line).hexdigest()


def _tail(path, size=None):
    """(the file's size, or size; the last line of its first size bytes), reading at most 1 MB."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END) if size is None else size
            f.seek(max(0, end - (1 << 20)))
            chunk = f.read(end - f.tell())
    except FileNotFoundError:
        return 0, b""
    lines = chunk.splitlines()
    return end, (lines[-1] if lines else b"")


def _parsed(line):
    try:
        value = files.parse_json(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def download_progress(log, every=10.0, clock=time.monotonic):
    """What downloads show through log(line), as they run; None without log.

    A line as each file's download begins, naming the file and its server; while it runs, a line
    at most every `every` seconds (of clock) with how much has come, of how much if the server said,
    and how fast; a line when the file is in place, verified; and a line when the process waits for
    another one that downloads into the same folder. Each line fits 80 columns but for a long name.
    """
    return None if log is None else _DownloadProgress(log, every, clock)


class _DownloadProgress:
    """download_progress's lines: its waiting(folder) and update(url, done, total, final)."""

    def __init__(self, log, every, clock):
        self.log, self.every, self.clock = log, every, clock
        self.started = self.shown = None

    def waiting(self, folder):
        """Show that this process waits for another one that downloads into folder."""
        self.log(f"waiting for another process that is downloading into {folder}")

    def update(self, url, done, total, final):
        """Show that url's download has brought done bytes of total (None: unknown); final: all."""
        name, now = url.rsplit("/", 1)[-1], self.clock()
        if final:
            self.log(f"downloaded {name}: {done / 1e6:.1f} MB, verified")
        elif done == 0:
            self.started = now
            host = urllib.parse.urlsplit(url).hostname or url
            line = f"downloading {name} from {host}"
            # A long host name goes on a line of its own.
            for part in [line] if len(line) <= 80 else [f"downloading {name}", f"  from {host}"]:
                self.log(part)
        elif now - self.shown >= self.every:
            of = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            speed = done / 1e3 / max(now - self.started, 1e-9)
            self.log(f"downloading {name}: {of}, {speed:.0f} kB/s")
        else:
            return
        self.shown = now


def pictures_folder(config):
    """Where the pictures go: --plot-dir, else PREFIX-plots with --model-prefix; empty: nowhere."""
    if config.plot_dir == "none":
        return ""
    return config.plot_dir or (config.model_prefix + "-plots" if config.model_prefix else "")


def pictures_warning():
    """A warning line if matplotlib, which draws the pictures, cannot be imported; else None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return (f"warning: no pictures will be drawn ({err}): "
                f"{shlex.quote(sys.executable)} -m pip install matplotlib")
    return None


def save_pictures(folder, history, scored, dataset):
    """Draw the three pictures into folder; return the line to show (a warning if they failed).

    scored: (probabilities, labels, images) of the test set; dataset: whose class names to show.
    """
    from harness import plots
    try:
        written = plots.save_plots(folder, history, scored, dataset)
    # Pictures are a nicety: no failure of theirs may fail a finished training run.
    except Exception as err:
        return f"warning: no pictures written: {type(err).__name__}: {err}".splitlines()[0][:200]
    return "pictures: " + ", ".join(os.path.relpath(path) for path in written)
