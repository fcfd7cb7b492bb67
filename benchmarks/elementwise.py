"""The flat update's one pass, w -= g over every parameter: MXNet's element-wise kernels, numpy."""
# For the parameter counts of the sweep's MLPs, at each thread count (each in its own process, since
# MXNet reads its threads as it loads): milliseconds per pass, the median over repeats. It asserts
# nothing.
import argparse
import json
import os
import subprocess
import sys

_RUN = """
import json, os, statistics, sys, time
n, threads, repeats = map(int, sys.argv[1:4])
os.environ.update(OMP_NUM_THREADS=str(threads), MXNET_OMP_MAX_THREADS=str(threads))
sys.path.insert(0, sys.argv[4])
from harness import compat
compat.install()
import mxnet as mx
import numpy as np
w, g = mx.nd.ones(n), mx.nd.full(n, 1e-3)
w_np, g_np = np.ones(n, np.float32), np.full(n, 1e-3, np.float32)
def subtract():
    w.__isub__(g)  # what the hand-written optimizer's `weight -= descent` runs
ops = {"w -= g": subtract, "elemwise_add": lambda: mx.nd.elemwise_add(w, g, out=w),
       "sgd_update": lambda: mx.nd.sgd_update(w, g, lr=1.0, wd=0.0, out=w),
       "numpy": lambda: np.subtract(w_np, g_np, out=w_np)}
times = {name: [] for name in ops}
for _ in range(repeats):
    for name, op in ops.items():
        op(); mx.nd.waitall()
        tic = time.perf_counter()
        for _ in range(50):
            op()
        mx.nd.waitall()
        times[name].append((time.perf_counter() - tic) / 50 * 1e3)
print(json.dumps({name: statistics.median(values) for name, values in times.items()}))
"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMETERS = {"128,64": 109_386, "512,512": 669_706, "1024,1024": 1_863_690, "2048,2048": 5_824_522}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "elementwise.json"))
    args = parser.parse_args()
    rows = []
    print(
        "| MLP hidden | parameters | threads | w -= g | elemwise_add | sgd_update | numpy "
        "| w -= g / numpy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for hidden, n in PARAMETERS.items():
        for threads in map(int, args.threads.split(",")):
            done = subprocess.run(
                [sys.executable, "-c", _RUN, str(n), str(threads), str(args.repeats), ROOT],
                capture_output=True,
                text=True,
                check=True,
            )
            ms = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"hidden": hidden, "parameters": n, "threads": threads, "ms": ms})
            print(
                f"| {hidden} | {n:,} | {threads} | "
                + " | ".join(
                    f"{ms[k]:.3f}" for k in ("w -= g", "elemwise_add", "sgd_update", "numpy")
                )
                + f" | {ms['w -= g'] / ms['numpy']:.1f} |"
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
