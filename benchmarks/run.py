"""Benchmark: each peer in its own process, one after another, on the same data, settings and seed.

Prints a table and the ratios that the speed work targets, and writes them as JSON. Nothing here asserts a time.
With --rounds N every peer runs N times, the rounds interleaved, and each figure is the median over the rounds:
a process's speed can differ from the next one's by several percent on a shared machine.
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


def _epoch_time(seconds):
    # Epoch 1 pays one-off costs (allocation, first-touch of the data); the median of the rest is steadier.
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def _median_result(runs):
    """One peer's rounds as one result: the median of each figure over the rounds, and every round's epoch time."""
    first = runs[0]
    return {**first, "round_epoch_seconds": [_epoch_time(r["epoch_seconds"]) for r in runs],
            "epoch_s": statistics.median(_epoch_time(r["epoch_seconds"]) for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            **({"score_ms": statistics.median(r["score_ms"] for r in runs)} if "score_ms" in first else {})}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR", os.path.join(HERE, "..", "..", "shared", "mnist")))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "results", "benchmark.json"))
    args = parser.parse_args()
    peers = PEERS + (("torch",) if importlib.util.find_spec("torch") else ())

    runs, startups = {name: [] for name in peers}, []
    for round_ in range(1, args.rounds + 1):
        startup = _run_peer("startup", args.data_dir, 1, args.seed)
        startups.append(startup["first_batch_at"] - startup["started_at"])
        for name in peers:
            print(f"round {round_}/{args.rounds}: running {name} ...", file=sys.stderr, flush=True)
            runs[name].append(_run_peer(name, args.data_dir, args.epochs, args.seed))
    results = {name: _median_result(peer_runs) for name, peer_runs in runs.items()}
    ours = results["ours"]["epoch_s"]
    figures = {
        "ours_vs_module": ours / results["module"]["epoch_s"],
        "ours_vs_gluon": ours / results["gluon"]["epoch_s"],
        "ours_vs_floor": ours / results["floor"]["epoch_s"],
        "score_ms": results["ours"]["score_ms"],
        "startup_s": statistics.median(startups),
        "rss_vs_module": results["ours"]["peak_rss_mb"] / results["module"]["peak_rss_mb"],
    }

    print(f"{args.epochs} epochs, batch 100, plain SGD lr 0.1, seed {args.seed}, {os.cpu_count()} CPUs, "
          f"median of {args.rounds} rounds")
    print(f"{'peer':8s} {'s/epoch':>8s} {'vs ours':>8s} {'test acc':>9s} {'peak RSS MB':>12s}  s/epoch by round")
    for name, result in results.items():
        acc = "-" if result["test_acc"] is None else f"{result['test_acc']:.4f}"
        by_round = " ".join(f"{s:.3f}" for s in result["round_epoch_seconds"])
        print(f"{name:8s} {result['epoch_s']:8.3f} {result['epoch_s'] / ours:7.2f}x {acc:>9s} "
              f"{result['peak_rss_mb']:12.0f}  {by_round}")
    print()
    for label, key, target in TARGETS:
        verdict = "met" if figures[key] <= target else "NOT met"
        print(f"{label:40s} {figures[key]:8.3f}   target <= {target:<5}  {verdict}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), prefix=".benchmark.")
    with os.fdopen(fd, "w") as f:
        json.dump({"epochs": args.epochs, "seed": args.seed, "rounds": args.rounds, "peers": results,
                   "figures": figures, "targets": {key: target for _, key, target in TARGETS}}, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {os.path.relpath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
