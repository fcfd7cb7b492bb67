"""--kv-store horovod: allreduce over processes that horovodrun starts with Gloo, here."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, assert_params_close, run_cli, saved_params

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
TRAIN = [sys.executable, os.path.join(ROOT, "train_mnist.py")]
FLAGS = [
    "--num-epochs",
    "3",
    "--batch-size",
    "64",
    "--num-hidden",
    "32,16",
    "--mom",
    "0.9",
    "--disp-batches",
    "0",
    "--plot-dir",
    "none",
]
needs_horovod = pytest.mark.skipif(
    not os.path.exists(HOROVODRUN),
    reason="Horovod is not installed (requirements-horovod.txt; .ci/run builds it)",
)


@needs_horovod
def test_two_horovod_processes_train_like_one_and_end_on_their_own(synthetic_dir, tmp_path):
    single = subprocess.run(
        TRAIN + ["--data-dir", synthetic_dir, *FLAGS, "--model-prefix", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    started = time.time()
    job = subprocess.run(
        [
            HOROVODRUN,
            "--gloo",
            "-np",
            "2",
            "-H",
            "localhost:2",
            *TRAIN,
            "--data-dir",
            synthetic_dir,
            *FLAGS,
            "--kv-store",
            "horovod",
            "--model-prefix",
            str(tmp_path / "hvd"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert time.time() - started < 240
    for epoch in (1, 3):
        assert_params_close(
            saved_params(tmp_path / "hvd", epoch), saved_params(tmp_path / "one", epoch)
        )
    # Rank 0 alone reports.
    assert job.stdout.count("final test accuracy") == 1


@needs_horovod
def test_a_killed_rank_ends_the_job_with_a_clear_error_in_bounded_time(synthetic_dir, tmp_path):
    prefix = str(tmp_path / "hvd")
    job = subprocess.Popen(
        [
            HOROVODRUN,
            "--gloo",
            "--gloo-timeout-seconds",
            "20",
            "-np",
            "2",
            "-H",
            "localhost:2",
            *TRAIN,
            "--data-dir",
            synthetic_dir,
            *FLAGS,
            "--num-epochs",
            "1000",
            "--kv-store",
            "horovod",
            "--model-prefix",
            prefix,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not os.path.exists(prefix + "-0002.manifest.json") and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(prefix + "-0002.manifest.json"), "the job never got going"
    ranks = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"HOROVOD_RANK" in env and any(word.endswith(b"train_mnist.py") for word in words):
            ranks.append((int(env[b"HOROVOD_RANK"]), int(entry)))
    assert sorted(rank for rank, _ in ranks) == [0, 1]
    victim = max(ranks)[1]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    output, _ = job.communicate(timeout=90)
    assert time.time() - killed_at < 60
    assert (
        job.returncode != 0
        and "exited with non-zero status" in output
        and "Exit code: 137" in output
    )


def test_without_horovod_the_flag_is_one_line_with_the_install_command(
    capsys, synthetic_dir, monkeypatch
):
    # as if it were not installed
    monkeypatch.setitem(sys.modules, "horovod", None)
    monkeypatch.setitem(sys.modules, "horovod.mxnet", None)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--kv-store", "horovod")
    assert code == 2 and err.count("\n") == 1 and "needs Horovod, which is not installed" in err
    assert "requirements-horovod.txt" in err and "epoch" not in out
