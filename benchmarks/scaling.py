"""Throughput on 1, 2 and 4 CPU contexts in one process, and 1, 2 and 4 workers of each engine."""
# The engines: MXNet's parameter server (dist_sync, one server, through harness.launch) and Horovod
# (horovodrun --gloo).
# Each setup runs once per round, the rounds interleaved, and each figure is the median over the
# rounds of the median samples/s of epochs 2..N. It writes a Markdown table and the JSON; it asserts
# nothing.
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAIN = [sys.executable, os.path.join(ROOT, "train_mnist.py")]


def _command(kind, n, flags):
    if kind == "contexts":
        return TRAIN + flags + ["--cpus", str(n)]
    if kind == "dist_sync":
        return (
            [
                sys.executable,
                os.path.join(ROOT, "harness", "launch.py"),
                "-n",
                str(n),
                "-s",
                "1",
                "--timeout",
                "1800",
                "--",
            ]
            + TRAIN
            + flags
            + ["--kv-store", "dist_sync"]
        )
    if kind == "horovod":
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        return (
            [horovodrun, "--gloo", "-np", str(n), "-H", f"localhost:{n}"]
            + TRAIN
            + flags
            + ["--kv-store", "horovod"]
        )
    raise ValueError(kind)


def _run(kind, n, data_dir, epochs, extra):
    """Samples/s (median of epochs 2..N) and the final test accuracy of one setup."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        flags = [
            "--data-dir",
            data_dir,
            "--num-epochs",
            str(epochs),
            "--disp-batches",
            "0",
            "--plot-dir",
            "none",
            "--metrics-file",
            metrics,
            *extra,
        ]
        subprocess.run(_command(kind, n, flags), check=True, stdout=subprocess.DEVNULL)
        with open(metrics) as f:
            records = [json.loads(line) for line in f]
    return statistics.median(r["samples_per_second"] for r in records[1:]), records[-1]["test_acc"]


def _print_table(rows, first, epochs):
    """Print the Markdown table of the rows, each setup's speed-up against n=first."""
    print(
        f"| setup | n | samples/s | vs n={first} | test acc after {epochs} epochs | "
        "samples/s by round |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        by_round = ", ".join(f"{s:.0f}" for s in row["rounds"])
        print(
            f"| {row['kind']} | {row['n']} | {row['samples_per_second']:.0f} | "
            f"{row['speedup']:.2f}x | "
            f"{100 * row['test_acc']:.2f}% | {by_round} |"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")),
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "scaling.json"))
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="more flags for train_mnist.py, after --"
    )
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    kinds = ["contexts", "dist_sync"] + (
        ["horovod"]
        if shutil.which("horovodrun")
        or os.path.exists(os.path.join(os.path.dirname(sys.executable), "horovodrun"))
        else []
    )
    counts = [int(n) for n in args.counts.split(",")]
    runs = {(kind, n): [] for kind in kinds for n in counts}
    for round_ in range(args.rounds):
        for key in runs:
            print(
                f"round {round_ + 1}/{args.rounds}: {key[0]} x{key[1]} ...",
                file=sys.stderr,
                flush=True,
            )
            runs[key].append(_run(*key, args.data_dir, args.epochs, extra))
    rows = []
    for (kind, n), results in runs.items():
        speed = statistics.median(s for s, _ in results)
        base = statistics.median(s for s, _ in runs[(kind, counts[0])])
        rows.append({"kind": kind, "n": n, "samples_per_second": speed, "speedup": speed / base,
                     "test_acc": results[-1][1], "rounds": [s for s, _ in results]})
    _print_table(rows, counts[0], args.epochs)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "epochs": args.epochs,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "extra": extra,
                "rows": rows,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
