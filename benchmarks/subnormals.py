"""What flushing subnormals to zero (FTZ/DAZ) saves: Adam with and without the flags."""
# Adam at lr 0.1 kills most first-layer ReLUs within a few epochs; their gradients are then exactly
# zero and Adam's first moment decays into subnormal floats. Each run trains in its own process
# through train_mnist.train, which leaves the CPU flags alone (main() sets them), so "flushed" and
# "kept" differ only in that call. Each figure is the median over rounds of the median seconds of a
# run's last 3 epochs. It asserts nothing.
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from harness import compat, cpu
compat.install()
if sys.argv[2] == "flushed":
    cpu.flush_denormals()
import train_mnist
lr = None if sys.argv[3] == "default" else float(sys.argv[3])
config = train_mnist.Config(data_dir=sys.argv[5], optimizer="adam", lr=lr,
                            num_epochs=int(sys.argv[4]),
                            disp_batches=0, plot_dir="none")
history = train_mnist.train(config)
print(json.dumps([[record["epoch_seconds"], record["test_acc"]] for record in history]))
"""


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")),
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--lrs", default="0.1,default", help="Adam's learning rates; 'default' is its own 0.001"
    )
    args = parser.parse_args()
    results = {}
    for round_ in range(args.rounds):
        for lr in args.lrs.split(","):
            for mode in ("flushed", "kept"):
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _RUN,
                        ROOT,
                        mode,
                        lr,
                        str(args.epochs),
                        os.path.abspath(args.data_dir),
                    ],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, MXNET_SUBGRAPH_VERBOSE="0"),
                )
                if done.returncode:
                    raise RuntimeError(f"adam lr {lr}, {mode}: {done.stderr[-2000:]}")
                history = json.loads(done.stdout.strip().splitlines()[-1])
                seconds = statistics.median(s for s, _ in history[-3:])
                results.setdefault((lr, mode), []).append((seconds, [acc for _, acc in history]))
                print(f"round {round_ + 1}: adam lr {lr}, subnormals {mode}: {seconds:.3f} s/epoch",
                      file=sys.stderr, flush=True)
    print(
        "| Adam lr | subnormals flushed | kept | kept / flushed | test accuracy the same, to 4 "
        "places, every epoch |"
    )
    print("|---|---|---|---|---|")
    for lr in args.lrs.split(","):
        flushed, kept = ([s for s, _ in results[(lr, mode)]] for mode in ("flushed", "kept"))
        same = all([round(a, 4) for a in x[1]] == [round(b, 4) for b in y[1]]
                   for x, y in zip(results[(lr, "flushed")], results[(lr, "kept")]))
        print(
            f"| {lr} | {statistics.median(flushed):.3f} | {statistics.median(kept):.3f} | "
            f"{statistics.median(kept) / statistics.median(flushed):.2f} | "
            f"{'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
