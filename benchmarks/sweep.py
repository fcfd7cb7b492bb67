"""The size sweep: seconds per epoch of the trainer and its peers, from the tutorial's MLP up.

Each peer runs in its own process (benchmarks/peers.py); every round runs every row and peer
once, the rounds interleaved, and each figure is the median over the rounds of each run's median
of epochs 2..N. MXNet's peers (Module.fit, Gluon, the forward+backward floor, our update alone)
get the threads the trainer's own rule picks for the row; PyTorch runs at 1 thread and at all
cores. The floor runs on each of MXNet's engines, the threaded one (its default) and the naive
one (the default run's on one CPU), and the table gives the lower. Ours is timed over its training
steps, without scoring the test set, as every peer is. It writes results/sweep.json and the
Markdown table, into docs/speed.md with --doc. It asserts nothing.
"""
import argparse
import importlib.util
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
from harness import compat, cpu, files

compat.install()

# (network, hidden widths, batch, epochs): the widest rows get fewer epochs, each being minutes long
# here.
ROWS = [("mlp", (128, 64), 100, 4), ("mlp", (128, 64), 1000, 4), ("mlp", (512, 512), 100, 3),
        ("mlp", (1024, 1024), 100, 3), ("mlp", (2048, 2048), 256, 2), ("mlp", (4096, 4096), 256, 2),
        ("lenet", (), 100, 2)]
QUICK = [("mlp", (128, 64), 100, 2), ("mlp", (512, 512), 100, 2)]
_MARK = "<!-- sweep table -->"


def _peers(row, torch_python, skipped):
    names = ["ours", "plain", "module", "gluon", "floor", "floor:naive", "update"]
    names += ["gemm"] if row[0] == "mlp" else []
    names += ["torch:1", f"torch:{os.cpu_count()}"] if torch_python else []
    return [name for name in names if name not in skipped]


def _run(peer, row, data_dir, python, threads):
    name, hidden, batch, epochs = row
    peer_name, _, variant = peer.partition(":")
    torch_threads = variant if peer_name == "torch" else "0"
    command = [python, os.path.join(HERE, "peers.py"), peer_name, "--data-dir", data_dir,
               "--network", name, "--batch", str(batch), "--epochs", str(epochs),
               "--threads", torch_threads]
    command += ["--hidden", ",".join(map(str, hidden))] if hidden else []
    env = dict(os.environ)
    # MXNet's peers: the threads of the trainer's own rule
    if peer_name in ("module", "gluon", "floor", "update"):
        env.update(OMP_NUM_THREADS=str(threads), MXNET_OMP_MAX_THREADS=str(threads))
    if variant == "naive":
        env.update(MXNET_ENGINE_TYPE="NaiveEngine")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{peer} on {row} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = result["epoch_seconds"]
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds), result["test_acc"]


def cpu_kind():
    """This CPU's model name and its widest vector extension, as /proc/cpuinfo says."""
    with open("/proc/cpuinfo") as f:
        info = f.read()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "an unknown CPU")
    isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{model}, {isa}, {os.cpu_count()} cores"


def _threads(row):
    name, hidden, batch, _ = row
    return cpu.choose_threads("auto", network.multiply_adds(name, hidden), batch, 1)[0]


def _table(rows, results, peers_of):
    names = {"ours": "ours", "plain": "ours --no-fast", "module": "Module.fit", "gluon": "Gluon",
             "torch:1": "PyTorch 1 thread", f"torch:{os.cpu_count()}":
             f"PyTorch {os.cpu_count()} threads", "floor": "MXNet fwd+bwd floor",
             "update": "our update alone", "gemm": "GEMMs only"}
    # The columns of the peers that some row measured.
    columns = [peer for peer in names if any(peer in peers_of[row] for row in rows)]
    head = ["network, hidden, batch", "threads", *(names[peer] for peer in columns),
            "ours / floor", "ours / best PyTorch"]
    lines = [f"On {time.strftime('%Y-%m-%d')}, on {cpu_kind()}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        got = {peer: statistics.median(s for s, _ in results[(row, peer)])
               for peer in peers_of[row]}
        # The floor: MXNet's forward and backward on whichever engine runs them faster.
        got["floor"] = min(got.pop("floor"), got.pop("floor:naive"))
        torch_best = min((got[p] for p in got if p.startswith("torch")), default=None)
        cells = [f"{row[0]} {','.join(map(str, row[1])) or '-'}, {row[2]}", str(_threads(row))]
        cells += [f"{got[c]:.3f}" if c in got else "-" for c in columns]
        cells += [f"{got['ours'] / got['floor']:.2f}",
                  f"{got['ours'] / torch_best:.2f}" if torch_best else "-"]
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
        "--quick", action="store_true", help="two small rows, two epochs: a check that it runs"
    )
    parser.add_argument(
        "--rows", help="only these rows of the full sweep, by number from 1, such as 1,2"
    )
    parser.add_argument(
        "--torch-python",
        default=sys.executable if importlib.util.find_spec("torch") else "",
        help="a Python with torch==2.13.0 (and this project's requirements); empty: no PyTorch",
    )
    parser.add_argument(
        "--skip", default="", help="peers left out, such as update,gemm (the floor's never)"
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "sweep.json"))
    parser.add_argument(
        "--doc", help="replace the table in this Markdown file (between its sweep markers)"
    )
    args = parser.parse_args()
    rows = QUICK if args.quick else ROWS
    if args.rows:
        numbers = [int(number) if number.isdigit() else 0 for number in args.rows.split(",")]
        if not all(1 <= number <= len(rows) for number in numbers):
            parser.error(
                f"--rows takes row numbers from 1 to {len(rows)}, such as 1,2; got {args.rows}"
            )
        rows = [rows[number - 1] for number in numbers]
    skipped = set(filter(None, args.skip.split(","))) - {"ours", "floor", "floor:naive"}
    peers_of = {row: _peers(row, args.torch_python, skipped) for row in rows}
    results = {(row, peer): [] for row in rows for peer in peers_of[row]}
    started = time.time()
    for round_ in range(args.rounds):
        for row in rows:
            for peer in peers_of[row]:
                python = args.torch_python if peer.startswith("torch") else sys.executable
                results[(row, peer)].append(_run(peer, row, args.data_dir, python, _threads(row)))
                # Each figure as it comes, so that a sweep cut short still leaves its measurements
                # in its log.
                print(
                    f"round {round_ + 1}/{args.rounds}: {row[:3]} {peer}: "
                    f"{results[(row, peer)][-1][0]:.3f} s/epoch"
                    f" (at {time.time() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        # After every round: a sweep stopped later keeps these.
        _write(args, rows, peers_of, results, round_ + 1)
    print(_table(rows, results, peers_of))


def _write(args, rows, peers_of, results, rounds):
    """The JSON of the rounds done, and with --doc the table in its Markdown file."""
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figures = {
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "rows": [
            {
                "network": row[0],
                "hidden": row[1],
                "batch": row[2],
                "epochs": row[3],
                "threads": _threads(row),
                "peers": {peer: results[(row, peer)] for peer in peers_of[row]},
            }
            for row in rows
        ],
    }
    files.write_bytes(args.out, json.dumps(figures, indent=1).encode())
    if args.doc:
        with open(args.doc) as f:
            before, _, rest = f.read().partition(_MARK)
            _, _, after = rest.partition(_MARK)
        files.write_bytes(
            args.doc, f"{before}{_MARK}\n{_table(rows, results, peers_of)}\n{_MARK}{after}".encode()
        )


if __name__ == "__main__":
    main()
