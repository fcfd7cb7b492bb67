"""The benchmarks run end to end, on the synthetic set in one short round; nothing is timed here."""
import json
import math
import os
import subprocess
import sys

from helpers import ROOT


def test_benchmark_runs_every_peer_and_writes_its_figures(synthetic_dir, tmp_path):
    out = tmp_path / "benchmark.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "run.py"),
            "--data-dir",
            synthetic_dir,
            "--epochs",
            "2",
            "--rounds",
            "1",
            "--out",
            str(out),
            "--torch-python",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (
        set(result["peers"]) == {"ours", "plain", "module", "gluon", "floor"}
        and result["rounds"] == 1
    )
    assert all(math.isfinite(value) and value > 0 for value in result["seconds_per_epoch"].values())
    # Each trained peer reports its accuracy: no fast wrong loop.
    for name in ("ours", "plain", "module", "gluon"):
        assert 0.5 < result["peers"][name][0]["test_acc"] <= 1, name
    assert "| ours | " in done.stdout


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


def test_the_tricks_benchmark_runs_every_variant(synthetic_dir, tmp_path):
    out = tmp_path / "tricks.json"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "tricks.py"),
            "--data-dir",
            synthetic_dir,
            "--quick",
            "--rounds",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(out.read_text())["rows"][0]["runs"]
    assert set(runs) == {"plain", "bytes", "flat", "flat+fold", "all"}
    # Every variant trains the same model.
    accuracies = {name: times[0][1] for name, times in runs.items()}
    assert max(accuracies.values()) - min(accuracies.values()) < 1e-3, accuracies
    assert "| 128,64, 100 |" in done.stdout


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
    # Ours runs the update and the gather that the floor does not.
    ours, floor = text.split("**floor**")
    assert "FullyConnected" in floor and "take" not in floor
    assert "engine idle" in ours and "5 other operators" not in floor


def test_the_lenet_variants_benchmark_compares_each_with_the_reference(synthetic_dir):
    out = _benchmark("lenet_variants.py", "--data-dir", synthetic_dir, "--rounds", "1",
                     "--steps", "2")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert set(rows) == {"reference", "no-onednn", "tanh-op", "pool-first", "pool-first+tanh-op",
                         "1-thread"}
    # Pooling first gives the reference's outputs bit for bit; every variant was timed.
    assert rows["reference"][4] == "yes" and rows["pool-first"][4] == "yes"
    assert all(float(row[2]) > 0 for row in rows.values())


def test_the_decomposition_above_the_floor_times_each_part_in_order():
    out = _benchmark("above_floor.py", "--hidden", "32,16", "--rounds", "2", "--chunk", "3")
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| step")]
    assert [row[0][2:].lstrip("+ ") for row in rows] == [
        "floor", "metrics", "folded", "bytes", "gather", "update", "meter"]
    # Every part was timed, and each row's ratio is its time over the floor's.
    times = [float(row[1]) for row in rows]
    assert all(t > 0 for t in times)
    assert all(abs(float(row[3].rstrip(" |")) - t / times[0]) < 0.01 for row, t in zip(rows, times))


def _benchmark(script, *args):
    """Run benchmarks/script with args; return its stdout, once it has exited 0."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout
