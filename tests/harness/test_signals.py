"""harness/signals.py and run.py: a signal at any phase ends a run with exit 130 and a true line."""
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from harness import checkpoint
from helpers import ROOT, synthetic_arrays, train_with_faults, write_mnist

FLAGS = ["--num-hidden", "32,16", "--num-epochs", "2", "--disp-batches", "0"]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals") / "mnist"
    folder.mkdir()
    write_mnist(str(folder))
    return str(folder)


def _stopped(mnist, tmp_path, phase, *extra):
    """Run with a SIGINT at phase, (variable, "module:name"); return (its one line, the prefix)."""
    prefix = str(tmp_path / "m")
    code, err = train_with_faults(["--data-dir", mnist, "--model-prefix", prefix, *FLAGS, *extra],
                                  env={phase[0]: phase[1]})
    assert code == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("train_mnist.py: "), (
        err
    )
    return err.strip(), prefix


@pytest.mark.parametrize("phase", [("SIGNAL_IN", "harness.idx_files:read"),
                                   ("SIGNAL_IN", "harness.devices:simple_bind"),
                                   ("SIGNAL_IN", "harness.run:Run.restore")],
                         ids=["reading the data", "binding", "restoring"])
def test_before_training_a_signal_stops_the_run_and_nothing_is_saved(mnist, tmp_path, phase):
    line, prefix = _stopped(mnist, tmp_path, phase)
    assert line == "train_mnist.py: stopped by SIGINT before training began; nothing saved"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("phase", [("SIGNAL_IN", "train_mnist:evaluate"),
                                   ("SIGNAL_IN", "harness.checkpoint:save"),
                                   ("SIGNAL_AFTER", "harness.checkpoint:save")],
                         ids=["scoring the epoch", "saving the epoch", "just after saving"])
def test_at_the_end_of_an_epoch_a_signal_saves_it_and_names_the_resume(mnist, tmp_path, phase):
    line, prefix = _stopped(mnist, tmp_path, phase)
    assert line.startswith(f"train_mnist.py: stopped by SIGINT after epoch 1; saved {prefix}-0001. "
                           "Resume with: ")
    assert "--load-epoch 1" in line
    checkpoint.verify(prefix, checkpoint.Tag(1))
    assert not checkpoint.listing(prefix)[1:]


@pytest.mark.parametrize(
    "phase",
    [
        ("SIGNAL_AFTER", "harness.report:epoch_line"),
        ("SIGNAL_IN", "harness.report:save_pictures"),
        ("SIGNAL_AFTER", "harness.run:Run.finish"),
        ("SIGNAL_AFTER", "train_mnist:main"),
    ],
    ids=[
        "after the last epoch's line",
        "drawing the pictures",
        "after the final line",
        "as main() returns",
    ],
)
def test_after_the_last_epoch_a_signal_says_that_it_is_saved_and_that_nothing_is_left(
    mnist, tmp_path, phase
):
    # One epoch, the last; with a prefix, pictures are drawn, so that phase is reached.
    line, prefix = _stopped(mnist, tmp_path, phase, "--num-epochs", "1")
    assert "stopped by SIGINT" in line and f"{prefix}-0001" in line
    assert "Resume with" not in line and "leaves nothing to train" not in line
    checkpoint.verify(prefix, checkpoint.Tag(1))


def test_after_the_last_epoch_without_a_prefix_the_line_says_nothing_was_to_be_saved(
    mnist, tmp_path
):
    code, err = train_with_faults(["--data-dir", mnist, *FLAGS, "--plot-dir", "none"],
                                  env={"SIGNAL_AFTER": "harness.run:Run.finish"})
    assert code == 130 and err == (
        "train_mnist.py: stopped by SIGINT after the run ended; nothing was to be saved\n"
    )


@pytest.fixture(scope="module")
def big_mnist(tmp_path_factory):
    """8,000 training samples: 8 long steps an epoch at batch 1000."""
    folder = tmp_path_factory.mktemp("signals") / "big"
    folder.mkdir()
    write_mnist(str(folder), synthetic_arrays(num_train=8000, num_test=200))
    return str(folder)


def _long_run(folder, prefix):
    """LeNet at batch 1000 in the background, once its first progress line is out."""
    command = [sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", folder,
               "--model-prefix", prefix, "--network", "lenet", "--batch-size", "1000",
               "--num-epochs", "1000", "--disp-batches", "1", "--plot-dir", "none"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while " batch " not in process.stdout.readline():
        pass
    return process


def test_a_signal_in_a_long_step_is_honoured_within_two_steps(big_mnist, tmp_path):
    # LeNet at batch 1000: each step is long, and Python could queue an epoch of them ahead of
    # MXNet's engine; it waits for the step before the one it queued, so a signal is seen within two
    # steps.
    process = _long_run(big_mnist, str(tmp_path / "m"))
    # A step's time: the median gap between progress lines, as two can leave the pipe together.
    times = []
    for _ in range(5):
        process.stdout.readline()
        times.append(time.monotonic())
    step = statistics.median(b - a for a, b in zip(times, times[1:]))
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    took = time.monotonic() - signalled
    assert (
        process.returncode == 130 and "stopped by SIGINT in epoch" in err and err.count("\n") == 1
    ), err
    # Two steps, and the save of the checkpoint it names.
    assert took < 3 * step + 2.0, (took, step)


def test_a_second_signal_ends_the_process_at_once_even_inside_mxnet(big_mnist, tmp_path):
    process = _long_run(big_mnist, str(tmp_path / "m"))
    process.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and time.monotonic() - signalled < 1.0
    assert err.splitlines()[-1] == "train_mnist.py: stopped by a second SIGTERM; exiting now"
    assert 1 <= err.count("\n") <= 2 and "Traceback" not in err


_CONVERTED = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from harness import errors, signals
signals.install("prog")
with signals.guard(), errors.reported("prog") as outcome:
    # As numpy's import does with any error inside it: the signal's Stop becomes an ImportError.
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except BaseException:
        raise ImportError("PyCapsule_Import could not import module") from None
sys.exit(outcome.code)
"""


def test_a_signal_whose_stop_an_import_turns_into_another_error_is_still_the_stop():
    done = subprocess.run([sys.executable, "-c", _CONVERTED, ROOT], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "prog: stopped by SIGINT before training began; nothing saved\n"
