"""Where a second OpenMP thread starts to pay: the trainer at each --threads count, side by side."""
# For each row (network, hidden widths, batch), `python train_mnist.py --threads N` runs in its own
# process for every N, interleaved over rounds; each figure is the median over rounds of a run's
# median seconds per epoch (epochs 2..N), beside the work of a step that the rule in cpu.py reads.
# It asserts nothing.
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# Light: network.py builds symbols and imports no MXNet at the top.
import network
from harness import compat

compat.install()

# (network, hidden widths, batch, epochs): from a step far below the rule's threshold to far above
# it.
ROWS = [("mlp", (128, 64), 100, 4), ("mlp", (256, 256), 100, 4), ("mlp", (512, 512), 100, 3),
        ("mlp", (128, 64), 1000, 4), ("mlp", (1024, 1024), 100, 3)]
QUICK = [("mlp", (128, 64), 100, 2), ("mlp", (256, 256), 100, 2)]


def _seconds_per_epoch(row, threads, data_dir):
    name, hidden, batch, epochs = row
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        command = [
            sys.executable,
            os.path.join(ROOT, "train_mnist.py"),
            "--data-dir",
            data_dir,
            "--network",
            name,
            "--batch-size",
            str(batch),
            "--num-epochs",
            str(epochs),
            "--threads",
            str(threads),
            "--disp-batches",
            "0",
            "--plot-dir",
            "none",
            "--metrics-file",
            metrics,
        ]
        command += ["--num-hidden", ",".join(map(str, hidden))] if hidden else []
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                              env=dict(os.environ, MXNET_SUBGRAPH_VERBOSE="0"))
        if done.returncode:
            raise RuntimeError(f"{row} at {threads} threads failed: {done.stderr[-2000:]}")
        with open(metrics) as f:
            records = [json.loads(line) for line in f]
    seconds = [record["epoch_seconds"] for record in records]
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds), records[-1]["test_acc"]


def _table(rows, counts, results):
    """The Markdown table of the rows: seconds per epoch at each thread count, and accuracies."""
    head = ["network, hidden, batch", "MFLOP a step"] + [f"{count} threads" for count in counts]
    head += [f"{count} / {counts[0]} threads" for count in counts[1:]] + ["test acc, each count"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name, hidden, batch, _ = row
        got = [
            statistics.median(seconds for seconds, _ in results[(row, count)]) for count in counts
        ]
        accuracies = " / ".join(f"{100 * results[(row, count)][-1][1]:.2f}%" for count in counts)
        cells = [f"{name} {','.join(map(str, hidden)) or '-'}, {batch}",
                 f"{6 * network.multiply_adds(name, hidden) * batch / 1e6:,.0f}"]
        cells += (
            [f"{value:.3f}" for value in got]
            + [f"{value / got[0]:.2f}" for value in got[1:]]
            + [accuracies]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")),
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--counts", default=f"1,{len(os.sched_getaffinity(0))}", help="thread counts to compare"
    )
    parser.add_argument(
        "--quick", action="store_true", help="two small rows, two epochs: a check that it runs"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "threads.json"))
    args = parser.parse_args()
    rows = QUICK if args.quick else ROWS
    counts = [int(count) for count in args.counts.split(",")]
    results = {(row, count): [] for row in rows for count in counts}
    for round_ in range(args.rounds):
        for row in rows:
            for count in counts:
                results[(row, count)].append(
                    _seconds_per_epoch(row, count, os.path.abspath(args.data_dir))
                )
                print(f"round {round_ + 1}/{args.rounds}: {row[:3]} {count} threads: "
                      f"{results[(row, count)][-1][0]:.3f} s/epoch", file=sys.stderr, flush=True)
    print(_table(rows, counts, results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "rounds": args.rounds,
                "rows": [
                    {
                        "network": row[0],
                        "hidden": row[1],
                        "batch": row[2],
                        "epochs": row[3],
                        "seconds_per_epoch": {
                            str(count): [s for s, _ in results[(row, count)]] for count in counts
                        },
                        "test_acc": {
                            str(count): [a for _, a in results[(row, count)]] for count in counts
                        },
                    }
                    for row in rows
                ],
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
