"""harness.launch's signals: to the launcher, to a server or the scheduler, at any moment, nohup."""
# Every test here launches a job of 2 workers, 1 server and the scheduler on this machine, and
# signals some of its processes: all slow.
import os
import re
import shlex
import signal
import subprocess
import time

import numpy as np
import pytest

from harness import checkpoint
from helpers import (
    JOB_MARK,
    ROOT,
    TRAIN,
    flags,
    launch,
    marked_processes,
    wait_for_signal_handlers,
)

pytestmark = pytest.mark.slow

# Batches of 10: 105 steps an epoch; the epochs are each test's.
FLAGS = flags(num_epochs=None, batch_size=10, kv_store="dist_sync")


def _start(jobs, folder, prefix=None, epochs=1000, **popen):
    """A job training for a long time (epochs), with its checkpoints under prefix if given."""
    command = TRAIN + ["--data-dir", folder, "--num-epochs", str(epochs), *FLAGS]
    command += ["--model-prefix", prefix] if prefix else []
    job = jobs(launch(["-n", "2", "-s", "1"], command), **popen)
    wait_for_signal_handlers(job.process.pid)
    return job


def _training(job, prefix):
    """Wait until the job has saved its first epoch: every worker is in its training loop."""
    job.wait_for(prefix + "-0001.manifest.json", timeout=120)


def _wait_delivered(pid, signum):
    """Wait until signum, sent to process pid, is no longer pending: its handler has taken it."""
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            pending = [int(line.split()[1], 16) for line in f
                       if line.startswith(("SigPnd:", "ShdPnd:"))]
        if not any(mask & bit for mask in pending):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} never took signal {signum}")


def _said(out, err):
    """The lines of the job's output (both streams) that say how it stopped or failed."""
    return [line for line in (out + err).splitlines()
            if "stopped by" in line or "stopped:" in line or "error" in line]


def _ended_with_one_line(job, code=130):
    """Assert the job ended with code, one line that says so, no traceback and nothing left."""
    got, out, err = job.finish(timeout=120)
    said = _said(out, err)
    assert got == code and len(said) == 1 and "Traceback" not in out + err, (got, out, err)
    assert not job.processes()
    return said[0], out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_launcher_in_its_first_seconds_stops_the_job_before_the_workers_exist(
    synthetic_dir, jobs, signum
):
    # From the launcher's first line: before its tracker, its scheduler or its workers exist, or
    # while they start. Without training, nothing is saved: the launcher says so and ends them.
    rng = np.random.RandomState(signum)
    for delay in [0.0, *rng.uniform(0, 1.5, size=2)]:
        job = _start(jobs, synthetic_dir)
        time.sleep(delay)
        job.process.send_signal(signum)
        line, _ = _ended_with_one_line(job)
        name = signal.Signals(signum).name
        assert line in (f"harness.launch: stopped by {name} before the job started; nothing ran",
                        f"harness.launch: stopped by {name} before training began; nothing saved"
                        ), (delay, line)


def test_three_quick_sigints_at_random_moments_end_the_job_without_a_traceback_or_a_process_left(
    synthetic_dir, jobs
):
    rng = np.random.RandomState(3)
    for delay in rng.uniform(0, 12, size=5):
        job = _start(jobs, synthetic_dir)
        time.sleep(delay)
        for _ in range(3):
            job.process.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0, 0.05))
        got, out, err = job.finish(timeout=120)
        assert got == 130 and "Traceback" not in out + err and "KeyboardInterrupt" not in err, (
            delay, out, err)
        assert err.splitlines()[-1] == "harness.launch: stopped by a second SIGINT; exiting now"
        assert 1 <= len(_said(out, err)) <= 2, (delay, out, err)
        # The launcher ended every process before it ended: none was left even for a moment.
        assert not job.processes()


@pytest.mark.parametrize("role", ["server", "scheduler"])
def test_a_sigterm_to_a_serving_process_stops_the_job_cleanly_with_rank_0s_line(
    synthetic_dir, tmp_path, jobs, role
):
    prefix = str(tmp_path / "m")
    job = _start(jobs, synthetic_dir, prefix)
    _training(job, prefix)
    os.kill(job.processes(role, trainers=True)[0], signal.SIGTERM)
    line, out = _ended_with_one_line(job)
    # Mostly in epoch 2; now and then between epochs, when the save of epoch 1 is the one named.
    # The launcher signals each worker: rank 0 names the signal unless rank 1's stop came first.
    stop = re.match(r"train_mnist\.py: stopped by (?:SIGTERM|a signal to another worker) "
                    r"(in|after) epoch \d+.*; saved \S+\. Resume with: ", line)
    assert stop, line
    between = stop.group(1) == "after"
    stem = line.split("; saved ")[1].split(". Resume with")[0]
    tags = checkpoint.listing(prefix)
    assert stem == tags[-1].stem(prefix) and tags[-1].interrupted != between
    checkpoint.verify(prefix, tags[-1])
    # Each of the job's four processes printed its threads line; the job shows it once.
    assert out.count("threads: ") == 1, out


def test_a_second_sigterm_to_the_server_ends_the_job_at_once(synthetic_dir, tmp_path, jobs):
    prefix = str(tmp_path / "m")
    job = _start(jobs, synthetic_dir, prefix)
    _training(job, prefix)
    server = job.processes("server", trainers=True)[0]
    os.kill(server, signal.SIGTERM)
    # Two signals sent together can reach a process as one: the second once the first is taken.
    _wait_delivered(server, signal.SIGTERM)
    os.kill(server, signal.SIGTERM)
    got, out, err = job.finish(timeout=120)
    assert got == 130 and "Traceback" not in out + err, (out, err)
    assert err.splitlines()[-1].startswith(
        "harness.launch: stopped by a second SIGTERM to the server on "), err
    assert not job.processes()


def test_a_sigterm_to_the_server_before_training_ends_the_job_with_the_launchers_line(
    synthetic_dir, jobs
):
    job = _start(jobs, synthetic_dir)
    deadline = time.time() + 60
    while not job.processes("server", trainers=True):
        assert time.time() < deadline, "no server started"
        time.sleep(0.01)
    server = job.processes("server", trainers=True)[0]
    wait_for_signal_handlers(server)
    os.kill(server, signal.SIGTERM)
    line, _ = _ended_with_one_line(job)
    assert line.startswith("harness.launch: stopped by SIGTERM to the server on "), line
    assert line.endswith(" before training began; nothing saved"), line


def test_a_signal_to_the_launcher_as_the_job_ends_lets_it_end_and_says_so(synthetic_dir, tmp_path,
                                                                          jobs):
    # The workers have left their loops when rank 0 prints its final line: nothing is left to stop.
    ended_by_signal = 0
    for i in range(3):
        prefix = str(tmp_path / f"m{i}")
        job = _start(jobs, synthetic_dir, prefix, epochs=2)
        job.wait_for_line("final test accuracy")
        job.process.send_signal(signal.SIGINT)
        got, out, err = job.finish(timeout=120)
        assert "Traceback" not in out + err and not job.processes(), (out, err)
        checkpoint.verify(prefix, checkpoint.Tag(2))
        if got == 0:
            # The launcher had ended before the signal came.
            assert err == "", err
            continue
        assert got == 130 and err == ("harness.launch: stopped by SIGINT as the job ended; its "
                                      "training had finished\n"), (got, err)
        ended_by_signal += 1
    assert ended_by_signal >= 1


def test_a_job_launched_under_nohup_trains_through_hangups(synthetic_dir, tmp_path, jobs):
    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    prefix = str(tmp_path / "m")
    job = _start(jobs, synthetic_dir, prefix, epochs=4, preexec_fn=nohup)
    _training(job, prefix)
    # The terminal closes: the launcher and every process of its job ignore it.
    for pid in [job.process.pid, *job.processes(trainers=True)]:
        os.kill(pid, signal.SIGHUP)
    got, out, err = job.finish(timeout=180)
    assert got == 0 and "final test accuracy" in out and err == "", (out, err)
    checkpoint.verify(prefix, checkpoint.Tag(4))


def test_a_stdout_closed_under_the_launcher_stops_the_job_with_its_line_on_stderr(synthetic_dir,
                                                                                   tmp_path):
    # `| head -4` leaves after the threads line and the config's three: the job stops, as a
    # SIGPIPE would stop it, and the line that says how goes to stderr.
    mark = f"closed-{os.getpid()}"
    job = launch(["-n", "2", "-s", "1"],
                 [*TRAIN, "--data-dir", synthetic_dir, "--num-epochs", "1000", *FLAGS])
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shlex.join(job) + " | head -4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **{JOB_MARK: mark}))
    assert done.returncode == 130 and done.stdout.startswith("threads: "), done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "stopped by " in lines[0] and "Traceback" not in done.stderr, lines
    left = marked_processes(JOB_MARK, mark)
    assert not left

