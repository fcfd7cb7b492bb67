"""harness/signals.py and run.py: a signal at any phase ends a run with exit 130 and a true line."""
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from harness import checkpoint
from helpers import (
    ROOT,
    TRAIN,
    flags,
    synthetic_arrays,
    train_with_faults,
    wait_for_signal_handlers,
    write_mnist,
)

# 2 epochs; pictures, under the prefix, unless a test says otherwise.
FLAGS = flags(num_epochs=2, plot_dir=None)


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


@pytest.mark.slow
@pytest.mark.parametrize("phase", [("SIGNAL_IN", "harness.idx_files:read"),
                                   ("SIGNAL_IN", "harness.devices:Model.binding"),
                                   ("SIGNAL_IN", "harness.run:Run.restore")],
                         ids=["reading the data", "binding", "restoring"])
def test_before_training_a_signal_stops_the_run_and_nothing_is_saved(mnist, tmp_path, phase):
    line, prefix = _stopped(mnist, tmp_path, phase)
    assert line == "train_mnist.py: stopped by SIGINT before training began; nothing saved"
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    command = TRAIN + ["--data-dir", folder,
               "--model-prefix", prefix, "--network", "lenet", "--batch-size", "1000",
               "--num-epochs", "1000", "--disp-batches", "1", "--plot-dir", "none"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while " batch " not in process.stdout.readline():
        pass
    return process


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_signal_whose_stop_an_import_turns_into_another_error_is_still_the_stop():
    done = subprocess.run([sys.executable, "-c", _CONVERTED, ROOT], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "prog: stopped by SIGINT before training began; nothing saved\n"


# What a process's first line leaves: which signals it handles, which it ignores, and where its
# standard streams go.
_INSTALLED = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from harness import signals
signals.install("prog")
for signum in signals.SIGNALS:
    handler = signal.getsignal(signum)
    kind = "ignored" if handler is signal.SIG_IGN else "handled" if callable(handler) else "default"
    sys.stderr.write(f"{signal.Signals(signum).name} {kind}\\n")
for fd in (0, 1, 2):
    sys.stderr.write(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}\\n")
print("stdout works")
"""


def _installed(**popen):
    """What _INSTALLED says, run with popen's settings: {SIGINT: handled, ..., 0: /dev/pts/0...}."""
    done = subprocess.run([sys.executable, "-c", _INSTALLED, ROOT], stderr=subprocess.PIPE,
                          text=True, timeout=60, **popen)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stderr.splitlines())


@pytest.mark.parametrize("ignored", [["SIGHUP"], ["SIGINT"], ["SIGINT", "SIGHUP", "SIGTERM"]],
                         ids=["nohup", "a script's &", "all three"])
def test_a_signal_ignored_at_the_start_stays_ignored_and_the_others_are_handled(ignored):
    def start():
        for name in ignored:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    said = _installed(preexec_fn=start, stdout=subprocess.DEVNULL)
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    assert {name: said[name] for name in names} == {
        name: "ignored" if name in ignored else "handled" for name in names
    }


@pytest.mark.parametrize("closed", [(0,), (1,), (0, 1)], ids=["stdin", "stdout", "both"])
def test_a_standard_stream_closed_at_the_start_is_held_by_dev_null_before_any_file_opens(closed):
    def start():
        for fd in closed:
            os.close(fd)
    said = _installed(preexec_fn=start, stdout=subprocess.PIPE)
    # Not the signal watcher's pipe, which install() opens next.
    for fd in closed:
        assert said[str(fd)] == os.devnull


# main() returns a code; then, as run() ends the process (its atexit functions), a signal comes.
_AT_THE_END = """
import atexit, os, signal, sys
sys.path.insert(0, sys.argv[1])
from harness import errors, signals
signals.install("prog")
atexit.register(os.kill, os.getpid(), signal.SIGTERM)
def main():
    with signals.guard(), errors.reported("prog") as outcome:
        signals.set_stage("after the run ended; nothing was to be saved")
        if sys.argv[2] == "refused":
            raise errors.ConfigError("--lr must be a number > 0")
    return outcome.code
signals.run(main)
"""


@pytest.mark.parametrize("outcome, code, err", [
    ("succeeded", 130, "prog: stopped by SIGTERM after the run ended; nothing was to be saved\n"),
    ("refused", 2, "prog: error: --lr must be a number > 0\n"),
])
def test_a_signal_as_the_process_ends_stops_a_run_that_succeeded_and_leaves_a_failure_as_it_was(
    outcome, code, err
):
    done = subprocess.run([sys.executable, "-c", _AT_THE_END, ROOT, outcome], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr) == (code, err)


def _tiny_run(folder, *extra, **popen):
    """train_mnist.py itself, as a user starts it: a second or two of training on folder."""
    command = TRAIN + ["--data-dir", folder,
               "--num-hidden", "16", "--num-epochs", "1", "--batch-size", "50", "--disp-batches",
               "0", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def _ended_well(process, stopped_line):
    """Assert process ended with its one line and 130, or (the signal came too late) succeeded.

    Return whether the signal stopped it.
    """
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err, err
    if process.returncode == 0:
        assert err == "", err
        return False
    assert process.returncode == 130 and err.count("\n") in (1, 2), (process.returncode, err)
    first = err.splitlines()[0]
    assert stopped_line(first) or first.startswith("train_mnist.py: stopped by a second "), err
    return True


@pytest.mark.slow
def test_a_signal_at_a_random_moment_after_the_final_line_ends_the_run_with_its_line(
    mnist, tmp_path
):
    # Python's shutdown would put the default handlers back while MXNet tears down; the trainer
    # ends by os._exit instead. 20 moments from 0 to 0.2 s after the final line, 5 of them at once.
    rng = np.random.RandomState(5)
    delays = [0.0] * 5 + list(rng.uniform(0, 0.2, size=15))
    stopped = 0
    for i, delay in enumerate(delays):
        prefix = str(tmp_path / f"m{i}")
        process = _tiny_run(mnist, "--model-prefix", prefix, "--plot-dir", "none")
        while not process.stdout.readline().startswith("final test accuracy"):
            pass
        time.sleep(delay)
        process.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]))
        stopped += _ended_well(process, lambda line: line.startswith(
            "train_mnist.py: stopped by SIG") and line.endswith(
            f"after the run ended; {prefix}-0001 is saved"))
        checkpoint.verify(prefix, checkpoint.Tag(1))
    # Some signals came while the process still ran: the test tried the last instant.
    assert stopped >= 1


@pytest.mark.slow
def test_two_signals_at_a_random_moment_of_start_up_end_the_run_with_one_or_two_lines(mnist):
    # From the entry's first line (its handlers taken) through the imports of numpy and MXNet, 30
    # ms apart: each is honoured, the second at once; no traceback, no death by the signal.
    rng = np.random.RandomState(6)
    for delay in rng.uniform(0, 1.0, size=16):
        process = _tiny_run(mnist, "--plot-dir", "none")
        wait_for_signal_handlers(process.pid)
        time.sleep(delay)
        first, second = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP], size=2)
        process.send_signal(first)
        time.sleep(0.03)
        process.send_signal(second)
        _ended_well(process, lambda line: line.startswith(
            f"train_mnist.py: stopped by {signal.Signals(first).name} "))


@pytest.mark.slow
def test_a_signal_at_any_moment_of_a_run_ends_it_with_its_line_and_130_or_it_finished(mnist,
                                                                                        tmp_path):
    # Random moments over a whole short run, from the first line to the last, one signal or two.
    rng = np.random.RandomState(7)
    stopped = 0
    for i, delay in enumerate(rng.uniform(0, 4.0, size=16)):
        process = _tiny_run(mnist, "--model-prefix", str(tmp_path / f"m{i}"))
        wait_for_signal_handlers(process.pid)
        time.sleep(delay)
        for _ in range(rng.randint(1, 3)):
            process.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]))
        stopped += _ended_well(process, lambda line: line.startswith("train_mnist.py: stopped by "))
    assert stopped >= 1


@pytest.mark.slow
@pytest.mark.parametrize("ignored, sent", [("SIGHUP", "SIGHUP"), ("SIGINT", "SIGINT")],
                         ids=["nohup", "a script's &"])
def test_a_run_that_started_with_a_signal_ignored_trains_through_it(mnist, tmp_path, ignored,
                                                                      sent):
    def start():
        signal.signal(getattr(signal, ignored), signal.SIG_IGN)
    prefix = str(tmp_path / "m")
    process = _tiny_run(mnist, "--model-prefix", prefix, "--num-epochs", "3", preexec_fn=start)
    wait_for_signal_handlers(process.pid)
    # During start-up and in the first epoch, as a closed terminal would send it.
    for _ in range(3):
        process.send_signal(getattr(signal, sent))
        time.sleep(0.3)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == "", err
    checkpoint.verify(prefix, checkpoint.Tag(3))


@pytest.mark.slow
def test_a_run_that_ignores_sighup_still_stops_on_sigterm(mnist, tmp_path):
    def start():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    process = _tiny_run(mnist, "--num-epochs", "1000", preexec_fn=start)
    while " train loss " not in process.stdout.readline():
        pass
    process.send_signal(signal.SIGHUP)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.startswith("train_mnist.py: stopped by SIGTERM ")
    assert err.count("\n") == 1, err



# A signal inside signals.held() (as MXNet's engine starts): the block finishes, then the stop.
_HELD = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from harness import errors, signals
signals.install("prog")
def block():
    with signals.held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        print("the block finished", flush=True)
def main():
    if sys.argv[2] == "unguarded":
        block()
    with signals.guard(), errors.reported("prog") as outcome:
        signals.set_stage("before training began; nothing saved")
        block()
        signals.check()
        print("not stopped", flush=True)
    return outcome.code
signals.run(main)
"""


@pytest.mark.parametrize("where", ["guarded", "unguarded"])
def test_a_signal_inside_a_held_block_stops_the_process_once_the_block_is_done(where):
    done = subprocess.run([sys.executable, "-c", _HELD, ROOT, where], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 130 and done.stdout == "the block finished\n", done
    assert done.stderr == "prog: stopped by SIGTERM before training began; nothing saved\n"
