"""Run an MXNet parameter-server job on this machine: a scheduler, servers and workers on 127.0.0.1.

    python launch_local.py -n 2 -s 1 -- python train_mnist.py --kv-store dist_sync

Every process gets the DMLC_* variables that ps-lite reads; the scheduler and the servers are plain
`import mxnet` processes (MXNet starts its server loop on import when DMLC_ROLE says so). A watchdog
ends the job with a clear error as soon as any process of it dies, and on --timeout: ps-lite itself
never notices a dead worker, and the others would wait for its gradients forever.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

_POLL_S = 0.1
_GRACE_S = 3.0  # after SIGTERM, before SIGKILL: a worker blocked inside a kvstore call does not see SIGTERM


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--num-workers", type=int, required=True)
    parser.add_argument("-s", "--num-servers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0, help="stop the whole job after this many seconds; 0: never")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.num_workers < 1 or args.num_servers < 1:
        parser.error("need -n >= 1, -s >= 1 and a worker command after --")

    base = dict(os.environ, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(_free_port()),
                DMLC_NODE_HOST="127.0.0.1", DMLC_NUM_SERVER=str(args.num_servers),
                DMLC_NUM_WORKER=str(args.num_workers))
    serve = [sys.executable, "-c", "import mxnet"]
    plan = [("scheduler", serve)] + [("server", serve)] * args.num_servers + [("worker", command)] * args.num_workers
    processes = []
    try:
        for role, argv_ in plan:
            # A session of its own, so that stopping the job reaches whatever the process started.
            processes.append((role, subprocess.Popen(argv_, env=dict(base, DMLC_ROLE=role), start_new_session=True)))
        return _watch(processes, args.timeout)
    except KeyboardInterrupt:
        print("launch_local.py: interrupted; stopping the job", file=sys.stderr)
        return 130
    finally:
        _stop([p for _, p in processes])


def _watch(processes, timeout):
    """Wait for the workers; return 0 when all succeed, else report the first failure and return non-zero."""
    started = time.monotonic()
    workers = [p for role, p in processes if role == "worker"]
    while True:
        for i, (role, process) in enumerate(processes):
            code = process.poll()
            # Servers and the scheduler exit 0 only once every worker has finished with ps-lite, so any
            # non-zero exit, of any role, is a failure.
            if code:
                print(f"launch_local.py: error: {role} #{i} (pid {process.pid}) {_describe(code)} while the job "
                      f"ran; stopping the other processes", file=sys.stderr)
                return code if code > 0 else 1
        if not _running(workers):
            return 0
        if timeout and time.monotonic() - started > timeout:
            print(f"launch_local.py: error: the job ran past --timeout {timeout:g} s; stopping it", file=sys.stderr)
            return 124
        time.sleep(_POLL_S)


def _running(workers):
    return any(p.poll() is None for p in workers)


def _describe(code):
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def _stop(processes):
    """SIGTERM every process group still alive, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _GRACE_S
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(_POLL_S)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
