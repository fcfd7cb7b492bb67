"""Benchmark: each peer in its own process, one after another, on the same data, settings and seed.

Prints a table and the ratios that the speed work targets, and writes them as JSON. Nothing here asserts a time.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ("ours", "module", "gluon", "floor")

# (label, figure, target): each figure is computed from the peers' results below.
TARGETS = (
    ("epoch time vs Module.fit", "ours_vs_module", 0.35),
    ("epoch time vs Gluon hybridized", "ours_vs_gluon", 0.55),
    ("epoch time vs forward+backward floor", "ours_vs_floor", 1.3),
    ("scoring 10,000 test images (ms)", "score_ms", 25),
    ("start to first training batch (s)", "startup_s", 2.5),
    ("peak RSS vs Module.fit", "rss_vs_module", 0.6),
)


def _run_peer(name, data_dir, epochs, seed):
    command = [sys.executable, os.path.join(HERE, "peers.py"), name, "--data-dir", data_dir,
               "--epochs", str(epochs), "--seed", str(seed)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["started_at"] = started
    return result


def _epoch_time(result):
    seconds = result["epoch_seconds"]
    # Epoch 1 pays one-off costs (allocation, first-touch of the data); the median of the rest is steadier.
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR", os.path.join(HERE, "..", "..", "shared", "mnist")))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "results", "benchmark.json"))
    args = parser.parse_args()
    peers = PEERS + (("torch",) if importlib.util.find_spec("torch") else ())

    startup = _run_peer("startup", args.data_dir, 1, args.seed)
    results = {}
    for name in peers:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = _run_peer(name, args.data_dir, args.epochs, args.seed)
    ours = _epoch_time(results["ours"])
    figures = {
        "ours_vs_module": ours / _epoch_time(results["module"]),
        "ours_vs_gluon": ours / _epoch_time(results["gluon"]),
        "ours_vs_floor": ours / _epoch_time(results["floor"]),
        "score_ms": results["ours"]["score_ms"],
        "startup_s": startup["first_batch_at"] - startup["started_at"],
        "rss_vs_module": results["ours"]["peak_rss_mb"] / results["module"]["peak_rss_mb"],
    }

    print(f"{args.epochs} epochs, batch 100, plain SGD lr 0.1, seed {args.seed}, {os.cpu_count()} CPUs")
    print(f"{'peer':8s} {'s/epoch':>8s} {'vs ours':>8s} {'test acc':>9s} {'peak RSS MB':>12s}")
    for name, result in results.items():
        acc = "-" if result["test_acc"] is None else f"{result['test_acc']:.4f}"
        print(f"{name:8s} {_epoch_time(result):8.3f} {_epoch_time(result) / ours:7.2f}x {acc:>9s} "
              f"{result['peak_rss_mb']:12.0f}")
    print()
    for label, key, target in TARGETS:
        verdict = "met" if figures[key] <= target else "NOT met"
        print(f"{label:40s} {figures[key]:8.3f}   target <= {target:<5}  {verdict}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), prefix=".benchmark.")
    with os.fdopen(fd, "w") as f:
        json.dump({"epochs": args.epochs, "seed": args.seed, "peers": results, "figures": figures,
                   "targets": {key: target for _, key, target in TARGETS}}, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {os.path.relpath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
