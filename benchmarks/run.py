"""The tutorial's size (784-128-64-10, batch 100): the trainer against its peers, over rounds."""
# Each peer runs in its own process (benchmarks/peers.py), every round runs each once, and each
# figure is the median over the rounds of each run's median of epochs 2..N. Prints a table with each
# peer's time against ours, test accuracy and peak memory, and writes it as JSON. It asserts
# nothing.
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_peer(name, python, data_dir, epochs, seed):
    command = [
        python,
        os.path.join(HERE, "peers.py"),
        name,
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _epoch_time(seconds):
    # Epoch 1 pays one-off costs (binding, first touch of the data); the median of the rest is
    # steadier.
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_DIR", os.path.join(HERE, "..", "..", "shared", "mnist")),
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--torch-python",
        default=sys.executable if importlib.util.find_spec("torch") else "",
        help="a Python with torch==2.13.0 and this project's requirements; empty: no PyTorch",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "..", "results", "benchmark.json"))
    args = parser.parse_args()
    peers = ["ours", "plain", "module", "gluon", "floor"] + (["torch"] if args.torch_python else [])
    runs = {name: [] for name in peers}
    for round_ in range(1, args.rounds + 1):
        for name in peers:
            print(f"round {round_}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            python = args.torch_python if name == "torch" else sys.executable
            runs[name].append(_run_peer(name, python, args.data_dir, args.epochs, args.seed))
    times = {
        name: statistics.median(_epoch_time(r["epoch_seconds"]) for r in results)
        for name, results in runs.items()
    }
    print(
        f"{args.epochs} epochs, batch 100, SGD lr 0.1, seed {args.seed}, {os.cpu_count()} CPUs, "
        f"median of {args.rounds} rounds"
    )
    print(
        "| peer | s/epoch | vs ours | test acc | peak RSS MB | s/epoch by round "
        "|\n|---|---|---|---|---|---|"
    )
    for name, results in runs.items():
        acc = results[-1]["test_acc"]
        by_round = ", ".join(f"{_epoch_time(r['epoch_seconds']):.3f}" for r in results)
        print(f"| {name} | {times[name]:.3f} | {times[name] / times['ours']:.2f}x | "
              f"{'-' if acc is None else f'{acc:.4f}'} | "
              f"{statistics.median(r['peak_rss_mb'] for r in results):.0f} | {by_round} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "epochs": args.epochs,
                "seed": args.seed,
                "rounds": args.rounds,
                "seconds_per_epoch": times,
                "peers": runs,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
