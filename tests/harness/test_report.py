"""harness/report.py and plots.py, and beyond the tutorial: the optimizers, the gradients."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import train_mnist
from harness import datasets, plots, report
from helpers import ROOT, TRAIN, config, run_cli

# Progress lines every 100 batches, and the pictures of a run with a prefix.
SHOWN = dict(disp_batches=100, plot_dir="")


def test_the_manual_gradient_trains_like_the_builtin_one(synthetic_dir):
    builtin = train_mnist.train(config(synthetic_dir, SHOWN, gradient="builtin"))
    manual = train_mnist.train(config(synthetic_dir, SHOWN, gradient="manual"))
    assert manual[-1]["test_acc"] > 0.9 and manual[-1]["train_loss"] < manual[0]["train_loss"]
    for ours, theirs in zip(manual, builtin):
        # Same gradients to 1e-6 each step: the runs part only by float rounding.
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert ours["test_acc"] == pytest.approx(theirs["test_acc"], abs=2 / 230)


@pytest.mark.parametrize("optimizer, lr, mom, wd", [("sgd", 0.1, 0.9, 1e-4), ("nag", 0.1, 0.9, 0.0),
                                                    ("adam", None, 0.0, 1e-4)])
def test_each_optimizer_learns(synthetic_dir, optimizer, lr, mom, wd):
    history = train_mnist.train(config(synthetic_dir, SHOWN, optimizer=optimizer, lr=lr, mom=mom,
                                       wd=wd))
    assert (
        history[-1]["test_acc"] > 0.9 and history[-1]["train_loss"] < history[0]["train_loss"] / 2
    )


@pytest.mark.parametrize("argv, expected", [
    (["--optimizer", "rmsprop"], "--optimizer must be one of adam, nag, sgd"),
    (["--optimizer", "adam", "--mom", "0.9"], "--mom does not apply to adam"),
    (["--lr-scheduler", "linear"], "argument --lr-scheduler: invalid choice: 'linear'"),
    (["--lr-scheduler", "step"], "--lr-scheduler step needs --lr-step-epochs"),
    (["--lr-scheduler", "step", "--lr-step-epochs", "15"], "--lr-step-epochs must lie in 1..14"),
    (["--lr-factor", "2"], "--lr-factor must be in (0, 1]"),
    (["--lr-step-epochs", "5,x"], "comma-separated integers"),
    (["--gradient", "hinge"], "argument --gradient: invalid choice: 'hinge'"),
    (["--disp-batches", "-1"], "--disp-batches must be >= 0"),
    (["--clip-gradient", "-1"], "--clip-gradient must be a number >= 0"),
])
def test_bad_extra_flags_are_one_line_and_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and expected in err


def test_pictures_are_written_and_tell_the_truth(synthetic_dir, tmp_path):
    lines = []
    train_mnist.train(config(synthetic_dir, SHOWN, plot_dir=str(tmp_path / "pics")),
                      log=lines.append)
    for name in (plots.CURVES, plots.CONFUSION, plots.MISTAKES):
        with open(tmp_path / "pics" / name, "rb") as f:
            head = f.read()
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 2_000
    assert lines[-2].startswith("pictures: ") and plots.CURVES in lines[-2]


def test_the_confusion_matrix_counts_and_the_worst_mistakes_come_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0, 0])
    np.testing.assert_array_equal(
        plots.confusion_matrix(probs.argmax(axis=1), labels, 2), [[1, 2], [1, 1]]
    )
    # Wrong: rows 2 (70% sure), 3 (60%), 4 (55%): most confident first.
    assert list(plots.worst_mistakes(probs, labels, 2)) == [2, 3]


@pytest.mark.slow
def test_a_closed_stdout_stops_the_run_with_its_step_saved_and_one_line(synthetic_dir, tmp_path):
    prefix = str(tmp_path / "m")
    # The reader leaves after the first progress line, however many lines the config took.
    reader = "awk '{print} /^epoch/{exit}'"
    command = (
        f"{sys.executable} train_mnist.py --data-dir {synthetic_dir} --num-hidden 32,16 "
        f"--batch-size 10 --num-epochs 100 --disp-batches 1 --model-prefix {prefix} | {reader}"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.splitlines()[-1].startswith("epoch   1  batch") and done.returncode == 130
    saved = sorted(name for name in os.listdir(tmp_path) if name.endswith(".manifest.json"))
    assert saved and saved[-1].startswith("m-interrupted-0001-")
    stem = saved[-1][:-len(".manifest.json")]
    assert done.stderr.startswith(
        "train_mnist.py: stopped by a closed stdout (SIGPIPE) in epoch 1 after batch "
    ) and f"saved {prefix[:-1]}{stem}. Resume with: " in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


def test_without_matplotlib_the_run_warns_at_its_start_with_the_command_that_fixes_it(
    synthetic_dir, tmp_path, monkeypatch
):
    # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    lines = []
    history = train_mnist.train(
        config(synthetic_dir, SHOWN, plot_dir=str(tmp_path / "pics")), log=lines.append
    )
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    warnings = [
        i for i, line in enumerate(lines) if line.startswith("warning: no pictures will be drawn")
    ]
    assert (
        warnings
        and warnings[0] < first_epoch
        and f"{sys.executable} -m pip install matplotlib" in lines[warnings[0]]
    )
    assert len(history) == 3 and lines[-2].startswith("warning: no pictures written")


def test_pictures_name_the_classes_of_the_dataset(tmp_path):
    probs = np.eye(10)[[0, 1, 2, 9]] * 0.9 + 0.01
    fashion = datasets.Dataset(
        "fashion",
        "f",
        (),
        {},
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        "item",
    )
    history = [dict(epoch=1, train_loss=1, train_acc=0.5, test_loss=1, test_acc=0.5)]
    written = plots.save_plots(
        str(tmp_path), history, (probs, np.array([0, 1, 3, 9]), np.zeros((4, 784))), fashion
    )
    assert len(written) == 3 and all(os.path.getsize(path) > 2000 for path in written)


def test_a_plotting_failure_is_a_warning_not_a_failed_run(synthetic_dir, tmp_path, monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'")
    monkeypatch.setattr(plots, "save_plots", no_matplotlib)
    lines = []
    history = train_mnist.train(
        config(synthetic_dir, SHOWN, plot_dir=str(tmp_path / "pics")), log=lines.append
    )
    assert len(history) == 3
    assert (
        lines[-2]
        == "warning: no pictures written: ModuleNotFoundError: No module named 'matplotlib'"
    )
    assert lines[-1] == f"final test accuracy {history[-1]['test_acc']:.4f} after 3 epochs"


def test_progress_lines_every_disp_batches_without_a_terminal(capsys, synthetic_dir):
    code, out, _ = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-epochs",
        "2",
        "--num-hidden",
        "32,16",
        "--batch-size",
        "50",
        "--disp-batches",
        "5",
    )
    progress = [line for line in out.splitlines() if " batch " in line]
    # 1050 samples: 21 batches of 50, a report per 5
    assert code == 0 and len(progress) == 2 * (
        21 // 5
    )
    assert (
        progress[0].startswith("epoch   1  batch     5/21  loss ")
        and progress[-1].split()[3] == "20/21"
    )
    assert all(len(line) <= 80 and " acc " in line for line in progress)
    assert "\r" not in out
    code, out, _ = run_cli(
        capsys, "--data-dir", synthetic_dir, "--num-epochs", "1", "--disp-batches", "0"
    )
    assert code == 0 and " batch " not in out


def test_progress_figures_do_not_depend_on_how_often_they_are_read(synthetic_dir):
    def figures(disp):
        shown = []
        train_mnist.train(
            config(synthetic_dir, SHOWN, num_epochs=2, batch_size=50, disp_batches=disp),
            progress=shown.append,
        )
        return {(f["epoch"], f["batch"]): (f["loss"], f["acc"]) for f in shown}
    every, fourth = figures(1), figures(4)
    assert len(every) == 2 * 21 and len(fourth) == 2 * 5
    # each read sums only the batches new to it, and starts afresh each epoch
    for (
        key,
        value,
    ) in fourth.items():
        assert value == pytest.approx(every[key], rel=1e-6)
    # The first report of epoch 2 is of epoch 2 alone: its one batch read scores better than epoch
    # 1's average.
    assert every[(2, 1)][0] < every[(1, 21)][0]


@pytest.mark.slow
def test_an_80_column_terminal_gets_a_bar_redrawn_in_place_with_accuracy(synthetic_dir):
    import fcntl
    import os
    import pty
    import struct
    import termios

    # The trainer on a pseudo-terminal of 80 columns, made without forking this process (whose
    # threads a fork would copy half-way): its output as a terminal shows it.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with subprocess.Popen(TRAIN + ["--data-dir", synthetic_dir, "--num-epochs", "2",
                                   "--batch-size", "10", "--disp-batches", "10", "--num-hidden",
                                   "32,16"],
                          stdin=slave, stdout=slave, stderr=slave, env=env,
                          start_new_session=True) as trainer:
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                # EIO: the trainer's side of the terminal is closed.
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
    assert trainer.returncode == 0, output[-2000:]
    lines = output.decode().replace("\033[K", "").split("\r\n")
    bars = [line for line in lines if line.count("\r") >= 2 and "[" in line]
    assert bars, "no line holds a bar drawn over itself"
    for line in lines:
        for piece in line.split("\r"):
            # the last column stays free: writing there wraps some terminals
            assert len(piece) <= 79, (
                piece
            )
    assert all("acc " in piece for line in bars for piece in line.split("\r") if "[" in piece)


@pytest.mark.slow
def test_adam_with_its_own_default_rate_reaches_97_5_percent_on_real_mnist(real_mnist):
    history = train_mnist.train(
        train_mnist.Config(data_dir=real_mnist, optimizer="adam", disp_batches=0)
    )
    assert len(history) == 15 and history[-1]["test_acc"] >= 0.975


def _record(epoch):
    return dict(zip(report.RECORD_KEYS, (epoch, 0.5, 0.9, 0.4, 0.91, 1.0, 0.8, 1000.0)))


def test_a_metrics_file_resumes_from_a_checkpoint_saved_in_the_first_epoch(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"from": "an earlier run"}\n')
    # A checkpoint saved in the first epoch of a run: no records yet, where the file stood.
    saved = dict(report.MetricsFile(str(path)).at)
    again = report.MetricsFile(str(path))
    assert again.resume(saved, [], 1) is None and again.at == saved
    # The same after a warm start from epoch 3; a stopped run had written epoch 4 past the
    # checkpoint, which the resume trains again: its record goes, and is written once later.
    with open(path, "a") as f:
        f.write(json.dumps(_record(4)) + "\n")
    again = report.MetricsFile(str(path))
    assert "removed the records past the checkpoint" in again.resume(saved, [], 4)
    assert path.read_text() == '{"from": "an earlier run"}\n' and again.at == saved
    again.append(_record(4))
    assert [json.loads(line).get("epoch") for line in path.read_text().splitlines()] == [None, 4]


def test_the_final_line_counts_one_epoch_as_one_epoch(synthetic_dir):
    lines = []
    train_mnist.train(config(synthetic_dir, SHOWN, num_epochs=1, plot_dir="none"), log=lines.append)
    assert lines[-1].endswith(" after 1 epoch")


@pytest.mark.parametrize("argv, expected", [
    (["--lr-step-epochs", "1", "--num-epochs", "1"],
     "--lr-step-epochs 1: a step lowers the rate for the epochs after it, and --num-epochs 1 "
     "leaves none; give more epochs, or no --lr-step-epochs"),
    (["--lr-step-epochs", "2,3", "--num-epochs", "3"],
     "--lr-step-epochs must lie in 1..2 (a step lowers the rate for the epochs after it, up to "
     "--num-epochs 3), got 2,3"),
])
def test_step_epochs_are_refused_by_the_rule_they_break(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err == f"train_mnist.py: error: {expected}\n"
