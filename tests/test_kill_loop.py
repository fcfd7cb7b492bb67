"""SIGKILL at random moments and between the files of one checkpoint: the newest intact one resumes exactly."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint
from helpers import ROOT, write_mnist

FLAGS = ["--num-hidden", "32,16", "--num-epochs", "6", "--mom", "0.9", "--disp-batches", "0", "--plot-dir", "none"]

# Runs train_mnist.main() with faults injected through public names: a SIGKILL of itself right after the
# KILL_AT_WRITE-th file it writes, and a SIGINT of itself after the INTERRUPT_AT_BATCH-th batch.
_DRIVER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import files, metrics
writes, batches = [0], [0]
kill_at, interrupt_at = int(os.environ.get("KILL_AT_WRITE", 0)), int(os.environ.get("INTERRUPT_AT_BATCH", 0))
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
        os.kill(os.getpid(), signal.SIGINT)
files.write_atomic, metrics.Meter.add = counted_write, counted_add
import train_mnist
sys.exit(train_mnist.main(sys.argv[2:]))
"""


def _train(folder, prefix, *extra, env=None, wait=True):
    command = [sys.executable, "-c", _DRIVER, ROOT, "--data-dir", folder, "--model-prefix", prefix, *FLAGS, *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, **(env or {})))
    if not wait:
        return process
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _newest_intact(prefix):
    for tag in reversed(checkpoint.listing(prefix)):
        try:
            checkpoint.verify(prefix, tag)
            return tag
        except checkpoint.CheckpointError:
            continue
    return None


def _resume_flags(tag):
    if tag is None:
        return ["--start-over"]
    return ["--resume"] if tag.interrupted else ["--load-epoch", str(tag.epoch)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    (folder / "mnist").mkdir()
    write_mnist(str(folder / "mnist"))
    code, err = _train(str(folder / "mnist"), str(folder / "mlp"))
    assert code == 0, err
    with open(folder / "mlp-0006.params", "rb") as f:
        return str(folder / "mnist"), f.read()


# Writes in order: the symbol, then params, sidecar and manifest of each epoch (epoch 1 is writes 1 to 4,
# epoch 2 writes 5 to 7). An interrupt after batch 15 (epoch 2, batch 4) saves params, sidecar, manifest.
KILLS = [dict(KILL_AT_WRITE="1"), dict(KILL_AT_WRITE="2"), dict(KILL_AT_WRITE="3"), dict(KILL_AT_WRITE="5"),
         dict(KILL_AT_WRITE="6"), dict(KILL_AT_WRITE="7"),
         dict(INTERRUPT_AT_BATCH="15", KILL_AT_WRITE="5"), dict(INTERRUPT_AT_BATCH="15", KILL_AT_WRITE="6"),
         dict(INTERRUPT_AT_BATCH="15"), dict(INTERRUPT_AT_BATCH="40", KILL_AT_WRITE="13")]


@pytest.mark.parametrize("faults", KILLS, ids=["-".join(f"{k.split('_')[0].lower()}{v}" for k, v in f.items())
                                               for f in KILLS])
def test_a_kill_between_the_files_of_a_checkpoint_leaves_the_newest_intact_one_to_resume_exactly(
        straight, tmp_path, faults):
    folder, expected = straight
    prefix = str(tmp_path / "mlp")
    code, err = _train(folder, prefix, env=faults)
    assert code in (-signal.SIGKILL, 130), err
    tag = _newest_intact(prefix)
    code, err = _train(folder, prefix, *_resume_flags(tag))
    assert code == 0, err
    with open(prefix + "-0006.params", "rb") as f:
        assert f.read() == expected
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_sigkill_at_random_moments_then_resume_from_the_newest_intact_checkpoint(straight, tmp_path):
    folder, expected = straight
    prefix = str(tmp_path / "mlp")
    rng = np.random.RandomState(0)
    for _ in range(4):
        process = _train(folder, prefix, *_resume_flags(_newest_intact(prefix)), "--batch-size", "100", wait=False)
        time.sleep(rng.uniform(2.0, 4.5))  # start-up takes about 2.5 s; an epoch a fraction of a second
        process.send_signal(signal.SIGKILL)
        process.communicate()
        tag = _newest_intact(prefix)
        if tag is not None and not tag.interrupted and tag.epoch == 6:
            break
    tag = _newest_intact(prefix)
    if not (tag is not None and not tag.interrupted and tag.epoch == 6):
        code, err = _train(folder, prefix, *_resume_flags(tag))
        assert code == 0, err
    with open(prefix + "-0006.params", "rb") as f:
        assert f.read() == expected
    shutil.rmtree(tmp_path)
