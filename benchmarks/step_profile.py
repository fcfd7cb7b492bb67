"""Where a step's time goes: MXNet's profiler over ours and the floor, PyTorch's over its step."""
# Each peer runs in its own process, with the threads the trainer's rule picks for the row (and
# PyTorch at the same count), and is profiled over one epoch after a warm-up epoch:
# - ours: train_mnist.train() as a user runs it; its second epoch is profiled, scoring excluded;
# - floor: the bound network's forward and backward alone, on one resident batch;
# - torch (with --torch-python): PyTorch's whole step, under torch.profiler.
# For MXNet, operators are timed as the engine runs them. The profiler is set before anything is
# bound, and MXNet then runs each of a graph's operators alone instead of in bulk: each is named,
# and the wall clock is somewhat above an unprofiled run's.
# Printed per peer: milliseconds per step of the wall clock, of each operator, of the engine's
# idle time (the wall clock less every operator's), and of the host waiting on the engine.
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

# Light: network.py builds symbols and imports no MXNet at the top.
import network
from harness import compat, cpu

LR = 0.1
# What the host does while it waits for the engine.
_WAITS = ("MXNDArrayWaitToRead", "MXNDArraySyncCopyToCPU", "MXNDArrayWaitAll")


def _profiled_ours(args):
    """Train two epochs as a user does; profile the second one's steps."""
    import mxnet as mx

    import train_mnist
    from harness import run as run_module
    config = train_mnist.Config(
        data_dir=args.data_dir, network=args.network, num_hidden=args.hidden or (128, 64),
        batch_size=args.batch, num_epochs=2, lr=LR, disp_batches=0, plot_dir="none",
        fast=not args.no_fast)
    # The profiler starts at the second epoch's first step and stops after its last one.
    batches, marks = run_module.Run.batches, {"steps": 0}

    def profiled_batches(run, train_iter):
        if run.epoch != 2:
            yield from batches(run, train_iter)
            return
        mx.nd.waitall()
        mx.profiler.set_state("run")
        tic = time.perf_counter()
        for batch in batches(run, train_iter):
            marks["steps"] += 1
            yield batch
        mx.nd.waitall()
        marks["seconds"] = time.perf_counter() - tic
        mx.profiler.set_state("stop")

    run_module.Run.batches = profiled_batches
    train_mnist.train(config, log=lambda line: None)
    return marks["seconds"], marks["steps"]


def _profiled_floor(args):
    """Forward and backward of the bound network, one epoch's worth of steps, nothing else."""
    import mxnet as mx
    import numpy as np
    symbol = network.get_symbol(args.network, args.hidden)
    grad_req = {name: "null" if name in ("data", "softmax_label") else "write"
                for name in symbol.list_arguments()}
    exe = symbol.simple_bind(mx.cpu(), grad_req=grad_req,
                             data=(args.batch, *network.sample_shape(args.network)))
    rng = np.random.RandomState(0)
    for name, array in exe.arg_dict.items():
        array[:] = (rng.randint(0, 10, array.shape) if name == "softmax_label"
                    else rng.uniform(-0.05, 0.05, array.shape))
    steps = 60000 // args.batch
    for profiled in (False, True):
        mx.nd.waitall()
        if profiled:
            mx.profiler.set_state("run")
        tic = time.perf_counter()
        for _ in range(steps):
            exe.forward(is_train=True)
            exe.backward()
        mx.nd.waitall()
        seconds = time.perf_counter() - tic
    mx.profiler.set_state("stop")
    return seconds, steps


def _mxnet_peer(args):
    """One MXNet peer's profile, as a JSON-able dict."""
    threads = _threads(args)
    cpu.use_threads(threads)
    cpu.flush_denormals()
    import mxnet as mx
    mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                           filename=os.path.join(args.scratch, f"{args.peer}.json"))
    seconds, steps = (_profiled_ours if args.peer == "ours" else _profiled_floor)(args)
    stats = json.loads(mx.profiler.dumps(reset=True, format="json"))["Time"]
    operators = {name: figures["Total"] / steps for name, figures in stats["operator"].items()
                 if name not in ("WaitForVar", "DeleteVariable", "DeleteOperator")}
    api = stats.get("MXNET_C_API", {})
    waiting = sum(api[name]["Total"] for name in _WAITS if name in api) / steps
    return {"wall": 1e3 * seconds / steps, "operators": operators, "host_waits": waiting,
            "threads": threads, "steps": steps}


def _torch_peer(args):
    """PyTorch's step of the same network, profiled operator by operator."""
    import torch
    threads = _threads(args)
    torch.set_num_threads(threads)
    sys.argv = ["peers.py"]
    sys.path.insert(0, HERE)
    import peers
    net = peers.torch_network(args.network, args.hidden)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    x = torch.rand(args.batch, *network.sample_shape(args.network))
    y = torch.randint(0, 10, (args.batch,))
    steps = 60000 // args.batch

    def epoch():
        tic = time.perf_counter()
        for _ in range(steps):
            out = net(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - tic

    epoch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        seconds = epoch()
    # Self time: each operator's own, without the operators it calls.
    operators = {event.key: event.self_cpu_time_total / 1e3 / steps
                 for event in prof.key_averages() if event.self_cpu_time_total > 0}
    return {"wall": 1e3 * seconds / steps, "operators": operators, "host_waits": 0.0,
            "threads": threads, "steps": steps}


def _threads(args):
    return cpu.choose_threads("auto", network.multiply_adds(args.network, args.hidden),
                              args.batch, 1)[0]


def _table(name, profile, top):
    """A peer's profile as Markdown: the wall clock per step, then where it went."""
    ops = sorted(profile["operators"].items(), key=lambda item: -item[1])
    busy = sum(ms for _, ms in ops)
    lines = [f"**{name}** ({profile['threads']} thread(s), {profile['steps']} steps): "
             f"{profile['wall']:.3f} ms a step", "", "| where | ms a step | share |",
             "|---|---|---|"]
    for op, ms in ops[:top]:
        lines.append(f"| {_short(op)} | {ms:.4f} | {ms / profile['wall']:.1%} |")
    rest = sum(ms for _, ms in ops[top:])
    if rest:
        lines.append(f"| {len(ops) - top} other operators | {rest:.4f} | "
                     f"{rest / profile['wall']:.1%} |")
    if name != "torch":
        idle = profile["wall"] - busy
        lines.append(f"| engine idle (wall less operators) | {idle:.4f} | "
                     f"{idle / profile['wall']:.1%} |")
        waits = profile["host_waits"]
        lines.append(f"| host waiting on the engine (overlaps the above) | {waits:.4f} | "
                     f"{waits / profile['wall']:.1%} |")
    return "\n".join(lines)


def _short(op):
    """An operator's name, a bulked block's as its first operators."""
    if op.startswith("[") and len(op) > 60:
        names = op.strip("[]").split(",")
        return f"[{', '.join(names[:3])}, ... {len(names)} operators]"
    return op


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get(
        "MNIST_DIR", os.path.join(ROOT, "..", "shared", "mnist")))
    parser.add_argument("--network", default="mlp", choices=("mlp", "lenet"))
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--no-fast", action="store_true",
                        help="profile ours with the update in MXNet's operators")
    parser.add_argument("--top", type=int, default=12, help="operators listed per peer")
    parser.add_argument("--torch-python", default="",
                        help="a Python with torch==2.13.0, to profile PyTorch's step too")
    parser.add_argument("--peer", choices=("ours", "floor", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.hidden = tuple(int(w) for w in args.hidden.split(",")) if args.network == "mlp" else ()
    if args.peer:
        compat.install()
        profile = (_torch_peer if args.peer == "torch" else _mxnet_peer)(args)
        print(json.dumps(profile))
        return
    import tempfile
    row = f"{args.network} {','.join(map(str, args.hidden)) or '-'}, batch {args.batch}"
    print(f"{row}; ms per step\n")
    peers = ["ours", "floor"] + (["torch"] if args.torch_python else [])
    with tempfile.TemporaryDirectory() as scratch:
        for peer in peers:
            python = args.torch_python if peer == "torch" else sys.executable
            command = [python, os.path.abspath(__file__), "--peer", peer, "--scratch", scratch,
                       *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{peer} failed: {done.stderr[-2000:]}")
            print(_table(peer, json.loads(done.stdout.splitlines()[-1]), args.top) + "\n")


if __name__ == "__main__":
    main()
