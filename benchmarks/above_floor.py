"""What each part of the trainer's step adds to MXNet's own forward and backward, part by part."""
# In one process, on the trainer's threads for the row, each variant adds one part of the fast
# path's step to the one before it, from the floor (the bound network's forward and backward on a
# resident batch) to the whole step but for Python's own loop:
# - metrics: the graph training binds, with the batch's [correct, summed loss] as an output;
# - folded: SoftmaxOutput's grad_scale set, as the fold sets it;
# - bytes: the pixels taken as uint8 and dequantized in the graph;
# - gather: each batch's rows taken from the resident set on the device (two take operators);
# - update: the hand-written SGD stepping the flat parameters, as the fast path runs it;
# - meter: the batch's metrics copied into their slot (Meter.add).
# The variants run in chunks of --chunk steps, interleaved over --rounds rounds, so that a change
# in the machine's speed hits all of them alike; each figure is the median over the rounds. The
# variants compute on random data and do not train. It asserts nothing.
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

# Light: network.py builds symbols and imports no MXNet at the top.
import network
from harness import compat, cpu

PARTS = ["floor", "metrics", "folded", "bytes", "gather", "update", "meter"]
LR = 0.1


def _variants(hidden, batch):
    """part -> a function of the step number that queues one step with the parts up to it."""
    import mxnet as mx
    import numpy as np

    import optimizer
    from harness import fast
    from harness.datasets import DATA, LABEL
    symbol = network.get_symbol("mlp", hidden)
    trained = network.training_graph(symbol, "builtin")
    folded = fast._rewritten(trained, -LR / batch, pool_first=False)
    pixels = mx.sym.contrib.dequantize(mx.sym.var(DATA, dtype=np.uint8),
                                       mx.sym.var("pixel_min"), mx.sym.var("pixel_max"))
    rng = np.random.RandomState(0)

    def bind(graph, **extra):
        req = {name: "write" if name.endswith(("_weight", "_bias")) else "null"
               for name in graph.list_arguments()}
        exe = graph.simple_bind(mx.cpu(), grad_req=req, data=(batch, 784), **extra)
        for name, array in exe.arg_dict.items():
            if name.endswith("_weight"):
                array[:] = rng.uniform(-0.05, 0.05, array.shape)
            elif name == LABEL:
                array[:] = rng.randint(0, 10, array.shape)
            elif name == DATA:
                array[:] = rng.uniform(0, 1, array.shape)
        return exe

    executors = {"floor": bind(symbol), "metrics": bind(trained), "folded": bind(folded),
                 "bytes": bind(folded(**{DATA: pixels}), type_dict={DATA: np.uint8},
                               pixel_min=(1,), pixel_max=(1,))}
    executors["bytes"].arg_dict["pixel_max"][:] = 1
    images = mx.nd.array(rng.randint(0, 256, (60000, 784)), dtype=np.uint8)
    labels = mx.nd.array(rng.randint(0, 10, 60000))
    order = mx.nd.array(rng.permutation(60000), dtype=np.int32)
    size = sum(int(np.prod(array.shape)) for name, array in executors["bytes"].arg_dict.items()
               if name.endswith(("_weight", "_bias")))
    params = {"flat_weight": fast._elementwise(mx.nd.zeros(size))}
    grads = {"flat_weight": fast._elementwise(mx.nd.ones(size) * -1e-6)}
    opt = optimizer.SGD(LR)
    opt.fold(-LR)
    slot = mx.nd.zeros(2)

    def step(graph, parts):
        exe = executors[graph]

        def run(i):
            if "gather" in parts:
                begin = i * batch % (60000 - batch)
                rows = order[begin:begin + batch]
                mx.nd.take(images, rows, out=exe.arg_dict[DATA])
                mx.nd.take(labels, rows, out=exe.arg_dict[LABEL])
            exe.forward(is_train=True)
            exe.backward()
            if "update" in parts:
                opt.update(params, grads, rescale_grad=1.0 / batch)
            if "meter" in parts:
                exe.outputs[1].copyto(slot)
        return run

    return {part: step(PARTS[min(i, 3)], PARTS[:i + 1]) for i, part in enumerate(PARTS)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=50, help="steps of a variant at a time")
    args = parser.parse_args()
    hidden = tuple(int(w) for w in args.hidden.split(","))
    compat.install()
    threads = cpu.choose_threads("auto", network.multiply_adds("mlp", hidden), args.batch, 1)[0]
    cpu.use_threads(threads)
    cpu.flush_denormals()
    import mxnet as mx
    variants = _variants(hidden, args.batch)
    ms = {part: [] for part in PARTS}
    # A first chunk each, untimed: the first steps of an executor allocate and pick kernels.
    for run in variants.values():
        for i in range(args.chunk):
            run(i)
    for _ in range(args.rounds):
        for part, run in variants.items():
            mx.nd.waitall()
            tic = time.perf_counter()
            for i in range(args.chunk):
                run(i)
            mx.nd.waitall()
            ms[part].append(1e3 * (time.perf_counter() - tic) / args.chunk)
    medians = {part: statistics.median(values) for part, values in ms.items()}
    print(f"mlp {args.hidden}, batch {args.batch}, {threads} thread(s): ms per step, the median "
          f"of {args.rounds} rounds of {args.chunk} steps\n")
    print("| step | ms a step | added | vs floor |")
    print("|---|---|---|---|")
    previous = None
    for part in PARTS:
        added = "" if previous is None else f"{medians[part] - medians[previous]:+.4f}"
        print(f"| {'+ ' if previous else ''}{part} | {medians[part]:.4f} | {added} | "
              f"{medians[part] / medians['floor']:.2f} |")
        previous = part


if __name__ == "__main__":
    main()
