"""harness/cpu.py: the threads, and subnormals flushed to zero in MXNet's own threads."""
import subprocess
import sys

import pytest

from helpers import ROOT

_PROBE = """
import sys
sys.path.insert(0, {root!r})
from harness import compat, cpu
compat.install()
flushed = cpu.flush_denormals() if sys.argv[1] == "on" else False
import mxnet as mx, numpy as np
tiny = mx.nd.array(np.full(1000, 1e-39, np.float32))
# Computed by MXNet's engine thread, not this one.
kept = float((tiny * 1.0).asnumpy().max())
print(flushed, kept)
"""


def _probe(mode):
    """(whether the flags were set, the largest subnormal MXNet's thread kept) with mode on/off."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(root=ROOT), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    flushed, kept = done.stdout.split()
    return flushed == "True", float(kept)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="FTZ and DAZ are set on x86-64 Linux"
)
def test_subnormals_are_flushed_in_mxnets_threads_and_kept_without_the_flags():
    # What they cost, with and without the flags, is benchmarks/subnormals.py's to measure.
    flushed, kept = _probe("on")
    assert flushed and kept == 0.0
    # Without the flags, MXNet keeps the subnormals: the check can fail.
    flushed, kept = _probe("off")
    assert not flushed and 0 < kept < 1.2e-38


def test_main_sets_the_flags_before_mxnet_loads():
    probe = (
        "import sys; sys.argv = ['train_mnist.py', '--help']; sys.path.insert(0, {root!r}); "
        "from harness import cpu; import train_mnist; calls = []; "
        "cpu.flush_denormals = lambda: calls.append('mxnet' in sys.modules); "
        "code = None\ntry:\n    train_mnist.main(['--bogus'])\nexcept SystemExit as e:\n    code "
        "= e.code\n"
        "train_mnist.main(['--num-epochs', '1', '--data-dir', '/nonexistent'])\nprint(calls)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe.format(root=ROOT)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "[False]", done.stdout + done.stderr


@pytest.mark.parametrize(
    "hidden, batch, contexts, cores, expected",
    [
        # the default: 66 MFLOP a step, a second thread only slows it
        ((128, 64), 100, 1, 2, 1),
        # 161 MFLOP: at the crossover measured here
        ((256, 256), 100, 1, 2, 1),
        # 401 MFLOP: two threads pay
        ((512, 512), 100, 1, 2, 2),
        # as many as the cores
        ((4096, 4096), 256, 1, 2, 2),
        # on a 64-core machine too
        ((4096, 4096), 256, 1, 64, 64),
        # 1.1 GFLOP: a thread per 200 MFLOP, not all 64
        ((1024, 1024), 100, 1, 64, 5),
        # four contexts share the cores
        ((4096, 4096), 256, 4, 64, 16),
        # more contexts than cores: one each
        ((4096, 4096), 256, 4, 2, 1),
    ],
)
def test_the_thread_rule_weighs_the_work_and_the_cores(
    monkeypatch, hidden, batch, contexts, cores, expected
):
    import network
    from harness import cpu
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = cpu.choose_threads(
        "auto", network.multiply_adds("mlp", hidden), batch, contexts, cores
    )
    assert threads == expected and why.startswith("auto: ") and f"{cores} cores" in why


def test_an_explicit_count_and_the_environment_override_the_rule(monkeypatch):
    from harness import cpu
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu.choose_threads("3", 10 ** 6, 100, 1, 2) == (3, "as --threads says")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu.choose_threads("auto", 10 ** 6, 100, 1, 2) == (4, "as OMP_NUM_THREADS says")


def test_the_first_line_of_a_run_says_its_threads_and_why(tmp_path):
    done = subprocess.run(
        [sys.executable, "train_mnist.py", "--data-dir", str(tmp_path), "--threads", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.splitlines()[0] == "threads: 2 (as --threads says)"


def test_a_run_that_draws_pictures_prints_nothing_on_stderr(synthetic_dir, tmp_path):
    # With subnormals flushed, numpy warns about float32's limits as matplotlib asks for them.
    done = subprocess.run(
        [
            sys.executable,
            "train_mnist.py",
            "--data-dir",
            synthetic_dir,
            "--num-epochs",
            "1",
            "--num-hidden",
            "32,16",
            "--plot-dir",
            str(tmp_path / "pics"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "" and "pictures: " in done.stdout
