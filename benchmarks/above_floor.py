"""What each part of the trainer's step adds to MXNet's own forward and backward, and where.

For one network and batch, in one process per MXNet engine (the threaded one, MXNet's default,
and the naive one, which the default run uses on one CPU), each variant adds one part of the
step to the one before it, from the floor (the bound network's forward and backward on a resident
batch) to the whole step but for the trainer's own Python loop:

- metrics: the graph training binds, with the batch's [correct, summed loss] as a second output;
- gather: each batch's rows taken from the resident set into the executor's inputs (data.py);
- update: optimizer.SGD stepping each parameter by name, in one of two places: `numpy`, over the
  executor's own memory after waiting for the gradients (the default path), or `mxnet`, in
  MXNet's operators queued without waiting (--no-fast, and a GPU);
- meter: the batch's metrics copied into their slot (metrics.Meter.add).

Every variant runs in chunks of --chunk steps, interleaved over --rounds rounds, so that a change
in the machine's speed hits all of them alike; each figure is the median over the rounds, in
milliseconds per step. The variants compute on random data and do not learn. It asserts nothing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# Light: network.py builds symbols and imports no MXNet at the top.
import network
from harness import compat, cpu

ENGINES = ("ThreadedEnginePerDevice", "NaiveEngine")
VARIANTS = ("floor", "metrics", "gather", "update:mxnet", "update:numpy", "meter:mxnet",
            "meter:numpy")
LR = 0.1


def _bound(net, shape, rng):
    """An executor of net on the CPU, with random weights, and no gradients for the inputs."""
    import mxnet as mx

    from harness.datasets import DATA, LABEL
    req = {name: "null" if name in (DATA, LABEL) else "write" for name in net.list_arguments()}
    exe = net.simple_bind(mx.cpu(), grad_req=req, **{DATA: shape, LABEL: shape[:1]})
    for name, array in exe.arg_dict.items():
        array[:] = (rng.randint(0, 10, array.shape) if name == LABEL
                    else rng.uniform(-0.05, 0.05, array.shape))
    return exe


def _places(exe):
    """place -> (params, grads) of exe by name: the NDArrays (mxnet) or numpy views of them."""
    from harness import fast
    from harness.datasets import DATA, LABEL
    names = [name for name in exe.arg_dict if name not in (DATA, LABEL)]
    return {
        "mxnet": ({n: exe.arg_dict[n] for n in names}, {n: exe.grad_dict[n] for n in names}),
        "numpy": ({n: fast.host_view(exe.arg_dict[n]) for n in names},
                  {n: fast.host_view(exe.grad_dict[n]) for n in names}),
    }


def _variants(network_name, hidden, batch):
    """variant -> a function that runs one step of it (its step number given)."""
    import mxnet as mx
    import numpy as np

    import metrics
    import optimizer
    from harness.datasets import DATA, LABEL
    symbol = network.get_symbol(network_name, hidden)
    shape = (batch, *network.sample_shape(network_name))
    rng = np.random.RandomState(0)
    plain = _bound(symbol, shape, rng)
    full = _bound(network.training_graph(symbol, "builtin"), shape, rng)
    resident = mx.nd.array(rng.uniform(0, 1, (10 * batch, *shape[1:])))
    labels = mx.nd.array(rng.randint(0, 10, 10 * batch))
    order = mx.nd.array(rng.permutation(10 * batch), dtype=np.int32)
    places = _places(full)
    sgd, meter = optimizer.SGD(LR), metrics.Meter()

    def floor(step):
        plain.forward(is_train=True)
        plain.backward()

    def forward_backward(step, gather):
        if gather:
            rows = order[(step % 10) * batch:(step % 10 + 1) * batch]
            mx.nd.take(resident, rows, out=full.arg_dict[DATA])
            mx.nd.take(labels, rows, out=full.arg_dict[LABEL])
        full.forward(is_train=True)
        full.backward()

    def update(step, place):
        if place == "numpy":
            # What Model.sum_grads does before numpy touches the arrays.
            mx.nd.waitall()
        params, grads = places[place]
        sgd.update(params, grads, rescale_grad=1.0 / batch)

    def whole(step, place):
        forward_backward(step, True)
        update(step, place)
        if step % 600 == 0:
            meter.reset()
        meter.add([full], batch)
        # As Run.batches bounds the queue: wait for the step before this one.
        if len(meter.samples) > 1:
            meter.wait(len(meter.samples) - 2)

    return {
        "floor": floor,
        "metrics": lambda step: forward_backward(step, False),
        "gather": lambda step: forward_backward(step, True),
        "update:mxnet": lambda step: (forward_backward(step, True), update(step, "mxnet")),
        "update:numpy": lambda step: (forward_backward(step, True), update(step, "numpy")),
        "meter:mxnet": lambda step: whole(step, "mxnet"),
        "meter:numpy": lambda step: whole(step, "numpy"),
    }


def _measure(args):
    """One engine's figures: variant -> [ms per step, per round]."""
    import mxnet as mx
    steps = _variants(args.network, args.hidden, args.batch)
    times = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds + 1):
        for name in VARIANTS:
            mx.nd.waitall()
            tic = time.perf_counter()
            for step in range(args.chunk):
                steps[name](step)
            mx.nd.waitall()
            # The first round warms up: not counted.
            if round_:
                times[name].append(1e3 * (time.perf_counter() - tic) / args.chunk)
    return times


def _threads(args):
    return cpu.choose_threads("auto", network.multiply_adds(args.network, args.hidden),
                              args.batch, 1)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="mlp", choices=("mlp", "lenet"))
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=100, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=0, help="0: the trainer's own rule")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.hidden = tuple(int(w) for w in args.hidden.split(",")) if args.network == "mlp" else ()
    threads = args.threads or _threads(args)
    if args.engine:
        cpu.use_threads(threads)
        cpu.flush_denormals()
        os.environ["MXNET_ENGINE_TYPE"] = args.engine
        compat.install()
        print(json.dumps(_measure(args)))
        return
    results = {}
    for engine in ENGINES:
        command = [sys.executable, os.path.abspath(__file__), "--engine", engine,
                   "--threads", str(threads), *sys.argv[1:]]
        env = dict(os.environ, MXNET_SUBGRAPH_VERBOSE="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(f"{engine} failed: {done.stderr[-2000:]}")
        results[engine] = {name: statistics.median(ms) for name, ms in
                           json.loads(done.stdout.splitlines()[-1]).items()}
    floor = min(figures["floor"] for figures in results.values())
    row = f"{args.network} {','.join(map(str, args.hidden)) or '-'}, batch {args.batch}"
    print(f"{row}, {threads} thread(s), {args.rounds} rounds of {args.chunk} steps; "
          f"ms per step, and / the lower floor ({floor:.3f})\n")
    print("| variant | " + " | ".join(ENGINES) + " |\n|---|" + "---|" * len(ENGINES))
    for name in VARIANTS:
        cells = [f"{results[e][name]:.3f} ({results[e][name] / floor:.2f})" for e in ENGINES]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
