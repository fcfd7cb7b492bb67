"""Reporting: the epoch line, progress, the metrics file and the pictures. Lines fit 80 columns."""
import json
import os
import shlex
import shutil
import sys
import time

import numpy as np

import files
import loss
import plots

RECORD_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "samples_per_second")


class Console:
    """Where main() prints: on a terminal, progress is a bar redrawn in place; otherwise a line per report."""

    def __init__(self, stream):
        self.stream, self.tty = stream, stream.isatty()

    def line(self, text):
        """Print a line (on a terminal, over the progress bar)."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def progress(self, figures):
        """Show progress figures: the bar, fitted to the terminal's width, or a plain line."""
        if self.tty:
            self.stream.write("\r" + progress_bar(figures, shutil.get_terminal_size((80, 24)).columns) + "\033[K")
            self.stream.flush()
        else:
            self.line(progress_line(figures))


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
    room = width - 1 - len(head) - len(tail) - 2  # the last column stays free: writing it wraps some terminals
    if room < 5:
        return (head + tail.strip())[:max(width - 1, 0)]
    filled = room * f["batch"] // f["batches"] if f["batches"] else 0
    return f"{head}[{'#' * filled}{'.' * (room - filled)}]{tail}"


def progress_figures(meter, epoch, batch, batches, tic):
    """The epoch's running loss and accuracy, a couple of batches behind, and the speed of all workers so far
    (tic: the epoch's start, as time.perf_counter() read it)."""
    correct, loss_sum, scored, everyone = meter.running()  # waits for those batches: the time is taken after
    return {"epoch": epoch, "batch": batch, "batches": batches, "loss": float(loss_sum / scored),
            "acc": float(correct / scored), "samples_per_second": everyone / (time.perf_counter() - tic)}


def record(epoch, totals, samples, trained, test, seconds):
    """One epoch's figures: train loss and accuracy from the summed totals, test, and the time."""
    correct, loss_sum = totals
    return {"epoch": epoch, "train_loss": float(loss_sum / samples), "train_acc": float(correct / samples),
            "test_loss": test["loss"], "test_acc": test["acc"], "epoch_seconds": seconds,
            "samples_per_second": trained / seconds}


def epoch_line(r):
    """epoch   1  train loss 0.4126 acc 0.8804  test loss 0.2543 acc 0.9239    0.23 s"""
    return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}  "
            f"test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}  {r['epoch_seconds']:6.2f} s")


def scored_line(prefix, epoch, scored):
    return f"checkpoint {prefix}-{epoch:04d}: test loss {scored['loss']:.4f} acc {scored['acc']:.4f}"


def write_metrics(path, record_):
    """Append the record to path as one JSON line, if path is set."""
    if path:
        files.append_line(path, json.dumps(record_))


def download_progress(log):
    """A progress callback for the download that logs a line per tenth of a file."""
    shown = {}

    def progress(name, done, total):
        tenth = done * 10 // total if total else 0
        if shown.get(name) != tenth:
            shown[name] = tenth
            log(f"downloading {name}.gz: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
    return progress


def pictures_folder(config):
    """Where the pictures go: --plot-dir, else PREFIX-plots with --model-prefix; empty for nowhere."""
    if config.plot_dir == "none":
        return ""
    return config.plot_dir or (config.model_prefix + "-plots" if config.model_prefix else "")


def pictures_warning():
    """A warning line if matplotlib, which draws the pictures, cannot be imported; else None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return (f"warning: no pictures will be drawn ({err}): {shlex.quote(sys.executable)} -m pip install "
                "matplotlib")
    return None


def save_pictures(folder, history, group, test_iter, loss_mode):
    """Draw the three pictures into folder; return the line to show (a warning if they could not be drawn)."""
    probs, labels, images = [], [], []
    test_iter.reset()
    for batch in test_iter:
        executors, _ = group.load(batch, train=False)
        for exe in executors:
            exe.forward(is_train=False)
            probs.append(loss.probabilities(exe.outputs[0], loss_mode).asnumpy())
            labels.append(exe.arg_dict["softmax_label"].asnumpy())
            images.append(exe.arg_dict["data"].asnumpy())
    try:
        written = plots.save_plots(folder, history, np.concatenate(probs), np.concatenate(labels).astype(np.int64),
                                   np.concatenate(images))
    except Exception as err:  # pictures are a nicety: no failure of theirs may fail a finished training run
        return f"warning: no pictures written: {type(err).__name__}: {err}".splitlines()[0][:200]
    return "pictures: " + ", ".join(os.path.relpath(path) for path in written)
