"""What progress reporting costs: epoch time with and without it, interleaved in one process."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

from harness import compat

compat.install()

import train_mnist


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "mnist")))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--disp-batches", type=int, default=100)
    args = parser.parse_args()
    seconds = {0: [], args.disp_batches: []}
    shown = []
    for _ in range(args.rounds):
        # interleaved, so drift in the machine's speed hits both alike
        for disp in seconds:
            config = train_mnist.Config(
                data_dir=args.data_dir, num_epochs=args.epochs, disp_batches=disp
            )
            history = train_mnist.train(config, progress=shown.append)
            seconds[disp] += [r["epoch_seconds"] for r in history[1:]]
    off, on = (statistics.median(seconds[d]) for d in seconds)
    print(
        f"median epoch: {off:.4f} s without progress, {on:.4f} s with a report every "
        f"{args.disp_batches} "
        f"batches ({len(shown)} reports): {100 * (on / off - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
