"""The benchmark still runs end to end (on the synthetic set, one short round); it times nothing here."""
import json
import math
import os
import subprocess
import sys

from helpers import ROOT


def test_benchmark_runs_every_peer_and_writes_its_figures(synthetic_dir, tmp_path):
    out = tmp_path / "benchmark.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--data-dir", synthetic_dir,
                           "--epochs", "2", "--rounds", "1", "--out", str(out), "--torch-python", ""],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["peers"]) == {"ours", "plain", "module", "gluon", "floor"} and result["rounds"] == 1
    assert all(math.isfinite(value) and value > 0 for value in result["seconds_per_epoch"].values())
    for name in ("ours", "plain", "module", "gluon"):  # each trained peer reports its accuracy: no fast wrong loop
        assert 0.5 < result["peers"][name][0]["test_acc"] <= 1, name
    assert "| ours | " in done.stdout


def test_the_size_sweep_runs_and_fills_the_docs_table(synthetic_dir, tmp_path):
    doc = tmp_path / "speed.md"
    doc.write_text("before\n<!-- sweep table -->\nold\n<!-- sweep table -->\nafter\n")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sweep.py"), "--data-dir", synthetic_dir,
                           "--quick", "--rounds", "1", "--torch-python", "", "--out", str(tmp_path / "sweep.json"),
                           "--doc", str(doc)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [row["hidden"] for row in rows] == [[128, 64], [512, 512]]
    assert all(len(times) == 1 and times[0][0] > 0 for row in rows for times in row["peers"].values())
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text and "| mlp 512,512, 100 |" in text


def test_the_scaling_benchmark_runs_every_setup(synthetic_dir, tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scaling.py"), "--data-dir", synthetic_dir,
                           "--epochs", "2", "--rounds", "1", "--counts", "1,2", "--out", str(out), "--",
                           "--num-hidden", "32,16"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {row["kind"] for row in rows} >= {"contexts", "dist_sync"} and len(rows) % 2 == 0
    assert all(row["samples_per_second"] > 0 and 0.5 < row["test_acc"] <= 1 for row in rows)
    assert "| contexts | 2 |" in done.stdout
