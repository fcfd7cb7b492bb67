"""Throughput with 1, 2 and 4 CPU contexts in one process, and with 1, 2 and 4 dist_sync workers (one server)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(prefix, flags, data_dir, epochs):
    """Train with flags; return the median samples/s over epochs 2..N, read from the metrics file."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        command = prefix + [sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", data_dir,
                            "--num-epochs", str(epochs), "--disp-batches", "0", "--metrics-file", metrics] + flags
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(metrics) as f:
            records = [json.loads(line) for line in f]
    return statistics.median(r["samples_per_second"] for r in records[1:]), records[-1]["test_acc"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "scaling.json"))
    args = parser.parse_args()
    launch = [sys.executable, os.path.join(ROOT, "launch_local.py"), "-s", "1", "--timeout", "900", "-n"]
    rows, base = [], {}
    for kind, counts in (("cpu contexts", (1, 2, 4)), ("dist workers", (1, 2, 4))):
        for n in counts:
            if kind == "cpu contexts":
                speed, acc = _run([], ["--cpus", str(n)], args.data_dir, args.epochs)
            else:
                speed, acc = _run(launch + [str(n), "--"], ["--kv-store", "dist_sync"], args.data_dir, args.epochs)
            speedup = speed / base.setdefault(kind, speed)  # against the same kind with n = 1
            rows.append({"kind": kind, "n": n, "samples_per_second": speed, "speedup": speedup,
                         "efficiency": speedup / n, "test_acc": acc})
            print(f"{kind:13s} {n}: {speed:9.0f} samples/s  speedup {speedup:5.2f}  efficiency {speedup / n:6.1%}  "
                  f"test acc {acc:.4f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"epochs": args.epochs, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
