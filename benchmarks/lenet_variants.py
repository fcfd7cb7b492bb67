"""LeNet's forward and backward in each form this wheel offers of one function, side by side."""
# Each variant binds LeNet on one resident batch of real MNIST, with the trainer's own initial
# weights, and times forward and backward alone (as the sweep's floor does) in its own process;
# the variants are interleaved over rounds. Each is checked against the reference: its outputs
# bit for bit, and its gradients to the largest difference relative to their size. Variants:
# - reference: network.py's LeNet (convolution, tanh, max pooling), oneDNN on, the rule's threads;
# - no-onednn: the same with MXNET_MKLDNN_ENABLED=0 (MXNet's own kernels and OpenBLAS);
# - tanh-op: the element-wise tanh operator in place of Activation(act_type='tanh');
# - pool-first: max pooling before tanh, which gives the same outputs since tanh only rises,
#   with a quarter of the tanh work (gradients differ only where tanh rounds two inputs of one
#   window to the same float);
# - 1-thread: the reference on one OpenMP thread.
# It asserts nothing.
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ["reference", "no-onednn", "tanh-op", "pool-first", "pool-first+tanh-op", "1-thread"]


def _symbol(variant):
    """LeNet as the variant builds it, its parameters named as network.py names them."""
    from mxnet import sym

    from harness.datasets import DATA, LABEL
    tanh_op = "tanh-op" in variant
    x = sym.var(DATA)

    def tanh(x, name):
        return sym.tanh(x, name=name) if tanh_op else sym.Activation(x, act_type="tanh", name=name)

    for i, filters in enumerate((20, 50), start=1):
        x = sym.Convolution(x, kernel=(5, 5), num_filter=filters, name=f"conv{i}")
        if "pool-first" in variant:
            x = tanh(sym.Pooling(x, pool_type="max", kernel=(2, 2), stride=(2, 2),
                                 name=f"pool{i}"), f"tanh{i}")
        else:
            x = sym.Pooling(tanh(x, f"tanh{i}"), pool_type="max", kernel=(2, 2), stride=(2, 2),
                            name=f"pool{i}")
    x = sym.Flatten(x, name="flatten")
    x = tanh(sym.FullyConnected(x, num_hidden=500, name="fc1"), "tanh3")
    x = sym.FullyConnected(x, num_hidden=10, name="fc2")
    return sym.SoftmaxOutput(x, label=sym.var(LABEL), name="softmax")


def _measure(variant, data_dir, batch, steps, out):
    """Time the variant's steps; save its outputs and gradients to out for the comparison."""
    sys.path.insert(0, ROOT)
    from harness import compat, cpu
    compat.install()
    import network
    threads = 1 if variant == "1-thread" else cpu.choose_threads(
        "auto", network.multiply_adds("lenet", ()), batch, 1)[0]
    cpu.use_threads(threads)
    if variant == "no-onednn":
        os.environ["MXNET_MKLDNN_ENABLED"] = "0"
    cpu.flush_denormals()
    import mxnet as mx
    import numpy as np

    import data
    import train_mnist
    symbol = _symbol(variant)
    grad_req = {name: "null" if name in ("data", "softmax_label") else "write"
                for name in symbol.list_arguments()}
    exe = symbol.simple_bind(mx.cpu(), grad_req=grad_req, data=(batch, 1, 28, 28))
    params = {name: exe.arg_dict[name] for name in symbol.list_arguments()
              if name not in ("data", "softmax_label")}
    train_mnist.initialize(params, np.random.RandomState(42))
    images, labels = data.load_mnist(data_dir)[:2]
    exe.arg_dict["data"][:] = images[:batch].reshape(batch, 1, 28, 28)
    exe.arg_dict["softmax_label"][:] = labels[:batch]
    exe.forward(is_train=True)
    exe.backward()
    arrays = {"output": exe.outputs[0].asnumpy(),
              **{name: exe.grad_dict[name].asnumpy() for name in params}}
    np.savez(out, **arrays)
    mx.nd.waitall()
    tic = time.perf_counter()
    for _ in range(steps):
        exe.forward(is_train=True)
        exe.backward()
    mx.nd.waitall()
    return {"ms": 1e3 * (time.perf_counter() - tic) / steps, "threads": threads}


def _compare(reference, other):
    """(outputs bit for bit, the largest gradient difference relative to the gradient's size)."""
    import numpy as np
    with np.load(reference) as a, np.load(other) as b:
        same = a["output"].tobytes() == b["output"].tobytes()
        gaps = [float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30))
                for k in a.files if k != "output"]
    return same, max(gaps)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get(
        "MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")))
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_measure(args.variant, args.data_dir, args.batch, args.steps, args.out)))
        return
    import tempfile
    times = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                out = os.path.join(scratch, variant + ".npz")
                done = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--out", out,
                     "--data-dir", args.data_dir, "--batch", str(args.batch),
                     "--steps", str(args.steps)], capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{variant} failed: {done.stderr[-2000:]}")
                times[variant].append(json.loads(done.stdout.splitlines()[-1]))
        reference = os.path.join(scratch, "reference.npz")
        base = statistics.median(t["ms"] for t in times["reference"])
        print(f"LeNet, batch {args.batch}, forward and backward alone; ms per step, the median "
              f"of {args.rounds} rounds of {args.steps} steps\n")
        print("| variant | threads | ms a step | vs reference | outputs bit for bit | "
              "largest gradient difference | ms by round |")
        print("|---|---|---|---|---|---|---|")
        for variant in VARIANTS:
            ms = [t["ms"] for t in times[variant]]
            same, gap = _compare(reference, os.path.join(scratch, variant + ".npz"))
            print(f"| {variant} | {times[variant][0]['threads']} | {statistics.median(ms):.2f} | "
                  f"{statistics.median(ms) / base:.2f} | {'yes' if same else 'no'} | {gap:.1e} | "
                  f"{', '.join(f'{m:.1f}' for m in ms)} |")


if __name__ == "__main__":
    main()
