"""The benchmarks run end to end, on the synthetic set in one short round; nothing is timed here."""
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import ROOT

# Each runs a benchmark's processes through whole trainings.
pytestmark = pytest.mark.slow


def test_the_size_sweep_runs_and_fills_the_docs_table(synthetic_dir, tmp_path):
    doc = tmp_path / "speed.md"
    doc.write_text("before\n<!-- sweep table -->\nold\n<!-- sweep table -->\nafter\n")
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "sweep.py"),
            "--data-dir",
            synthetic_dir,
            "--quick",
            "--rows",
            "2",
            "--rounds",
            "1",
            "--torch-python",
            "",
            "--out",
            str(tmp_path / "sweep.json"),
            "--doc",
            str(doc),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [row["hidden"] for row in rows] == [[512, 512]]
    assert all(
        len(times) == 1 and times[0][0] > 0 for row in rows for times in row["peers"].values()
    )
    text = doc.read_text()
    assert (
        text.startswith("before\n")
        and text.endswith("after\n")
        and "old" not in text
        and "| mlp 512,512, 100 |" in text
    )


def test_the_scaling_benchmark_runs_every_setup(synthetic_dir, tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "scaling.py"),
            "--data-dir",
            synthetic_dir,
            "--epochs",
            "2",
            "--rounds",
            "1",
            "--counts",
            "1,2",
            "--out",
            str(out),
            "--",
            "--num-hidden",
            "32,16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {row["kind"] for row in rows} >= {"contexts", "dist_sync"} and len(rows) % 2 == 0
    assert all(row["samples_per_second"] > 0 and 0.5 < row["test_acc"] <= 1 for row in rows)
    assert "| contexts | 2 |" in done.stdout


def test_the_thread_crossover_benchmark_runs_each_count(synthetic_dir, tmp_path):
    out = tmp_path / "threads.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "threads.py"),
            "--data-dir",
            synthetic_dir,
            "--quick",
            "--rounds",
            "1",
            "--counts",
            "1,2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["hidden"] for row in rows] == [[128, 64], [256, 256]]
    assert all(set(row["seconds_per_epoch"]) == {"1", "2"} for row in rows)
    assert all(
        len(times) == 1 and times[0] > 0
        for row in rows
        for times in row["seconds_per_epoch"].values()
    )
    assert "| mlp 256,256, 100 | 161 |" in done.stdout


def test_the_subnormals_benchmark_runs_both_ways(synthetic_dir):
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "subnormals.py"),
            "--data-dir",
            synthetic_dir,
            "--rounds",
            "1",
            "--epochs",
            "2",
            "--lrs",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if line.startswith("| 0.1 |")]
    assert len(row) == 1 and float(row[0].split("|")[2]) > 0 and float(row[0].split("|")[3]) > 0, (
        done.stdout
    )


def test_the_elementwise_benchmark_times_each_kernel(tmp_path):
    out = tmp_path / "elementwise.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "elementwise.py"),
            "--threads",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    # Each count is the MLP's of that width.
    import network
    for row in rows:
        hidden = tuple(map(int, row["hidden"].split(",")))
        shapes, _, _ = network.get_symbol("mlp", hidden).infer_shape(data=(1, 784))
        names = network.get_symbol("mlp", hidden).list_arguments()
        assert row["parameters"] == sum(math.prod(shape) for name, shape in zip(names, shapes)
                                        if name not in ("data", "softmax_label")), row
    assert len(rows) == 4
    assert all(
        set(row["ms"]) == {"w -= g", "elemwise_add", "sgd_update", "numpy"}
        and min(row["ms"].values()) > 0
        for row in rows
    )


def test_the_step_profile_names_the_operators_of_ours_and_of_the_floor(synthetic_dir):
    text = _benchmark("step_profile.py", "--data-dir", synthetic_dir, "--hidden", "32,16",
                      "--top", "4")
    assert "**ours** (1 thread(s), 11 steps)" in text
    assert "**floor** (1 thread(s), 600 steps)" in text
    # Ours runs the gather that the floor does not.
    ours, floor = text.split("**floor**")
    assert "FullyConnected" in floor and "take" not in floor and "take" in ours
    assert "engine idle" in ours


def test_the_decomposition_above_the_floor_times_each_variant_on_each_engine():
    out = _benchmark("above_floor.py", "--hidden", "32,16", "--rounds", "2", "--chunk", "3")
    floor = float(out.split("the lower floor (")[1].split(")")[0])
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")]
    assert [row[0][2:] for row in rows] == [
        "floor", "metrics", "gather", "update:mxnet", "update:numpy", "meter:mxnet", "meter:numpy"]
    # Every variant was timed on both engines, each with its ratio to the lower floor.
    for row in rows:
        for cell in row[1:]:
            ms, ratio = cell.rstrip(" |").rstrip(")").split(" (")
            # The floor is printed to 3 decimals: the ratio to within its rounding.
            assert float(ms) > 0 and float(ratio) == pytest.approx(float(ms) / floor, rel=0.01,
                                                                   abs=0.01), row
    assert min(float(row[i].split(" (")[0]) for row in rows[:1] for i in (1, 2)) == floor


def _benchmark(script, *args):
    """Run benchmarks/script with args; return its stdout, once it has exited 0."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout
