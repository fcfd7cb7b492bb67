"""--kv-store horovod: allreduce over processes that horovodrun starts with Gloo, here."""
import os
import signal
import sys
import time

import pytest

from helpers import (
    JOB_MARK,
    TRAIN,
    assert_params_close,
    flags,
    marked_processes,
    run_alone,
    run_cli,
    saved_params,
)

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
# 3 epochs of 17 steps (1050 samples in batches of 64), with momentum.
FLAGS = flags(batch_size=64, mom=0.9)
needs_horovod = pytest.mark.skipif(
    not os.path.exists(HOROVODRUN),
    reason="Horovod is not installed (requirements-horovod.txt; .ci/run builds it)",
)


def _horovod(folder, prefix, *extra, gloo=()):
    """horovodrun's command: two ranks here, with Gloo, training on folder, saving under prefix."""
    return [HOROVODRUN, "--gloo", *gloo, "-np", "2", "-H", "localhost:2", *TRAIN, "--data-dir",
            folder, *FLAGS, "--kv-store", "horovod", "--model-prefix", prefix, *extra]


@pytest.mark.slow
@needs_horovod
def test_two_horovod_processes_train_like_one_and_end_on_their_own(synthetic_dir, tmp_path, jobs):
    run_alone(TRAIN + ["--data-dir", synthetic_dir, *FLAGS, "--model-prefix",
                       str(tmp_path / "one")])
    code, out, err = jobs(_horovod(synthetic_dir, str(tmp_path / "hvd"))).finish(timeout=240)
    assert code == 0, out[-3000:] + err[-3000:]
    for epoch in (1, 3):
        assert_params_close(
            saved_params(tmp_path / "hvd", epoch), saved_params(tmp_path / "one", epoch)
        )
    # Rank 0 alone reports.
    assert out.count("final test accuracy") == 1


@pytest.mark.slow
@needs_horovod
def test_a_killed_rank_ends_the_job_with_a_clear_error_in_bounded_time(synthetic_dir, tmp_path,
                                                                        jobs):
    prefix = str(tmp_path / "hvd")
    job = jobs(_horovod(synthetic_dir, prefix, "--num-epochs", "1000",
                        gloo=["--gloo-timeout-seconds", "20"]))
    job.wait_for(prefix + "-0002.manifest.json", timeout=120)
    ranks = [(int(env["HOROVOD_RANK"]), pid)
             for pid, (env, words) in marked_processes(JOB_MARK, job.mark).items()
             if "HOROVOD_RANK" in env and any(word.endswith("train_mnist.py") for word in words)]
    assert sorted(rank for rank, _ in ranks) == [0, 1]
    victim = max(ranks)[1]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    code, out, err = job.finish(timeout=90)
    assert time.time() - killed_at < 60
    said = out + err
    assert code != 0 and "exited with non-zero status" in said and "Exit code: 137" in said


def test_without_horovod_the_flag_is_one_line_with_the_install_command(
    capsys, synthetic_dir, monkeypatch
):
    # as if it were not installed
    monkeypatch.setitem(sys.modules, "horovod", None)
    monkeypatch.setitem(sys.modules, "horovod.mxnet", None)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--kv-store", "horovod")
    assert code == 2 and err.count("\n") == 1 and "needs Horovod, which is not installed" in err
    assert "requirements-horovod.txt" in err and "epoch" not in out
