"""SIGKILL at random moments and between files: the newest intact checkpoint resumes exactly."""
# And the metrics file holds each epoch once, in order, as the checkpoints do.
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from harness import checkpoint
from helpers import FIGURES, flags, train_with_faults, write_mnist

# Every test here kills trainers.
pytestmark = pytest.mark.slow

# 6 epochs of 11 steps (1050 samples in batches of 100), with momentum.
FLAGS = flags(num_epochs=6, mom=0.9)


def _run(folder, prefix, *extra, env=None, wait=True):
    """train_with_faults on folder, saving under prefix and its metrics in prefix.jsonl."""
    return train_with_faults(["--data-dir", folder, "--model-prefix", prefix, "--metrics-file",
                              prefix + ".jsonl", *FLAGS, *extra], env=env, wait=wait)


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


def _metrics(prefix):
    with open(prefix + ".jsonl") as f:
        return [[json.loads(line)[k] for k in FIGURES] for line in f]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    (folder / "mnist").mkdir()
    write_mnist(str(folder / "mnist"))
    code, err = _run(str(folder / "mnist"), str(folder / "mlp"))
    assert code == 0, err
    with open(folder / "mlp-0006.params", "rb") as f:
        return str(folder / "mnist"), f.read(), _metrics(str(folder / "mlp"))


def _check_finished(prefix, expected):
    _, params, metrics = expected
    with open(prefix + "-0006.params", "rb") as f:
        assert f.read() == params
    # Each epoch once, in order, with the figures of the run that never stopped.
    assert _metrics(prefix) == metrics
    folder = os.path.dirname(prefix)
    assert not [name for name in os.listdir(folder) if name.endswith((".tmp", ".lock"))]


# Writes in order: the symbol and the inference symbol, then the state's arrays and JSON, the params
# and the manifest of each epoch (epoch 1 is writes 1 to 6, epoch 2 writes 7 to 10). An interrupt
# after batch 15 (epoch 2, batch 4) saves four files: writes 7 to 10; one after batch 40 (epoch 4,
# batch 7): 15 to 18.
KILLS = [dict(KILL_AT_WRITE=str(n)) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9)] + [
    dict(INTERRUPT_AT_BATCH="15", KILL_AT_WRITE="7"),
    dict(INTERRUPT_AT_BATCH="15", KILL_AT_WRITE="9"),
    dict(INTERRUPT_AT_BATCH="15"),
    dict(INTERRUPT_AT_BATCH="40", KILL_AT_WRITE="16"),
    dict(INTERRUPT_AT_BATCH="40", SIGNAL="SIGTERM"),
    dict(INTERRUPT_AT_BATCH="66"),
]


@pytest.mark.parametrize(
    "faults",
    KILLS,
    ids=["-".join(f"{k.split('_')[0].lower()}{v}" for k, v in f.items()) for f in KILLS],
)
def test_a_kill_between_the_files_of_a_checkpoint_leaves_the_newest_intact_one_to_resume_exactly(
    straight, tmp_path, faults
):
    prefix = str(tmp_path / "mlp")
    code, err = _run(straight[0], prefix, env=faults)
    assert code in (-signal.SIGKILL, 130), err
    tag = _newest_intact(prefix)
    if not (tag is not None and not tag.interrupted and tag.epoch == 6):
        code, err = _run(straight[0], prefix, *_resume_flags(tag))
        assert code == 0, err
    _check_finished(prefix, straight)


def test_sigkill_at_random_moments_then_resume_from_the_newest_intact_checkpoint(
    straight, tmp_path
):
    prefix = str(tmp_path / "mlp")
    rng = np.random.RandomState(0)
    for _ in range(5):
        process = _run(
            straight[0],
            prefix,
            *_resume_flags(_newest_intact(prefix)),
            "--batch-size",
            "100",
            wait=False,
        )
        # Start-up takes about 2.5 s; an epoch a fraction of a second.
        time.sleep(rng.uniform(2.0, 4.5))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        tag = _newest_intact(prefix)
        if tag is not None and not tag.interrupted and tag.epoch == 6:
            break
    tag = _newest_intact(prefix)
    if not (tag is not None and not tag.interrupted and tag.epoch == 6):
        code, err = _run(straight[0], prefix, *_resume_flags(tag))
        assert code == 0, err
    # A SIGKILL leaves the run's lock files; the next run takes them over, and removes them as it
    # ends.
    _check_finished(prefix, straight)
    shutil.rmtree(tmp_path)
