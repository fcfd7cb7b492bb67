"""What each speed trick of fast.py saves at several sizes: the trainer, tricks added one by one."""
# Variants: plain (--no-fast), bytes (pixels kept as uint8 on the device), flat (one flat update),
# flat+fold (and lr / batch folded into backward), and all (what --fast picks). Each run is its own
# process, set up as main() sets one up (its thread rule, subnormals flushed), with fast.tricks
# swapped for the variant's; the runs are interleaved over rounds, and each figure is the median
# over rounds of a run's median seconds per epoch (epochs 2..N). It asserts nothing.
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

ROWS = [((128, 64), 100, 4), ((128, 64), 1000, 4), ((512, 512), 100, 3), ((1024, 1024), 100, 3)]
QUICK = [((128, 64), 100, 2)]
VARIANTS = ["plain", "bytes", "flat", "flat+fold", "all"]

_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from harness import compat, cpu
compat.install()
import network
variant, hidden, data_dir = sys.argv[2], tuple(map(int, sys.argv[3].split(","))), sys.argv[6]
batch, epochs = map(int, sys.argv[4:6])
cpu.use_threads(cpu.choose_threads("auto", network.multiply_adds("mlp", hidden), batch, 1)[0])
cpu.flush_denormals()
from harness import fast
import train_mnist
every = fast.tricks
def variant_tricks(config, opt):
    fold = every(config, opt).fold
    return {"bytes": fast.Tricks(flat=False, fold=None, pixel_bytes=True, pool_first=False),
            "flat": fast.Tricks(flat=True, fold=None, pixel_bytes=False, pool_first=False),
            "flat+fold": fast.Tricks(flat=True, fold=fold, pixel_bytes=False, pool_first=False),
            "all": every(config, opt)}[variant]
# The one seam the variants need: binding calls it once.
fast.tricks = variant_tricks
config = train_mnist.Config(data_dir=data_dir, num_hidden=hidden, batch_size=batch,
                            num_epochs=epochs,
                            fast=variant != "plain", disp_batches=0, plot_dir="none")
print(json.dumps([[r["epoch_seconds"], r["test_acc"]] for r in train_mnist.train(config)]))
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
    parser.add_argument(
        "--quick", action="store_true", help="one small row, two epochs: a check that it runs"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "tricks.json"))
    args = parser.parse_args()
    rows = QUICK if args.quick else ROWS
    results = {(row, variant): [] for row in rows for variant in VARIANTS}
    for round_ in range(args.rounds):
        for row in rows:
            hidden, batch, epochs = row
            for variant in VARIANTS:
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _RUN,
                        ROOT,
                        variant,
                        ",".join(map(str, hidden)),
                        str(batch),
                        str(epochs),
                        os.path.abspath(args.data_dir),
                    ],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ, MXNET_SUBGRAPH_VERBOSE="0"),
                )
                if done.returncode:
                    raise RuntimeError(f"{row} {variant}: {done.stderr[-2000:]}")
                history = json.loads(done.stdout.strip().splitlines()[-1])
                seconds = [s for s, _ in history]
                results[(row, variant)].append(
                    (statistics.median(seconds[1:] or seconds), history[-1][1])
                )
                print(
                    f"round {round_ + 1}: {row[:2]} {variant}: "
                    f"{results[(row, variant)][-1][0]:.3f} s/epoch",
                    file=sys.stderr,
                    flush=True,
                )
    print("| hidden, batch | " + " | ".join(VARIANTS) + " | all / plain |")
    print("|---|" + "---|" * (len(VARIANTS) + 1))
    for row in rows:
        got = {v: statistics.median(s for s, _ in results[(row, v)]) for v in VARIANTS}
        print(
            f"| {','.join(map(str, row[0]))}, {row[1]} | "
            + " | ".join(f"{got[v]:.3f}" for v in VARIANTS)
            + f" | {got['all'] / got['plain']:.2f} |"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rounds": args.rounds, "rows": [
            {"hidden": row[0], "batch": row[1], "epochs": row[2],
             "runs": {v: results[(row, v)] for v in VARIANTS}} for row in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
