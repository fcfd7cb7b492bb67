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
                           "--epochs", "2", "--rounds", "1", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert {"ours", "module", "gluon", "floor"} <= set(result["peers"]) and result["rounds"] == 1
    assert set(result["figures"]) == set(result["targets"])
    assert all(math.isfinite(value) and value > 0 for value in result["figures"].values())
    for name in ("ours", "module", "gluon"):  # each trained peer reports a test accuracy, to catch a fast wrong loop
        assert 0.5 < result["peers"][name]["test_acc"] <= 1, name
    assert "epoch time vs forward+backward floor" in done.stdout and "target <= 1.3" in done.stdout


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
