"""Launch a parameter-server job with MXNet's own launcher, mxnet.tools.launch, and watch it."""
#     python -m harness.launch -n 2 -s 1 -- python train_mnist.py --kv-store dist_sync
#     python -m harness.launch -n 2 -s 1 --launcher ssh -H hosts -- \\
#         python train_mnist.py --kv-store dist_sync
#
# MXNet's launcher (its dmlc tracker) starts the scheduler, the servers and the workers, locally or
# over ssh, with the DMLC_* variables that ps-lite reads. On its own it does not notice a process
# that dies: the job then waits forever, and a stopped launcher leaves the rest running. So this
# module runs it under a watchdog:
#
# - each process of the job runs under a guard (this module with --guard), which reports its exit;
# - when any process fails, or --timeout passes, or a signal comes, the whole job is stopped: the
#   local processes by their session, the remote ones by their ssh connection (run with -tt, so
#   that they get a hangup when it closes) and by a search for the job's tag;
# - the exit code is 0 when every process ended well, 1 naming the first that did not, 124 on
#   --timeout and 130 on a signal.
import argparse
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

_HERE = os.path.abspath(__file__)
_MARK = "@@harness.launch"        # how a guard's report line starts
_GRACE_S = 3.0  # after SIGTERM, before SIGKILL: a process blocked in ps-lite does not see SIGTERM
_LATE_S = 10.0               # how long the reports of a finished job may trail the launcher's exit
_TAG = "LAUNCH_JOB_TAG"      # in every process's environment: how the stop finds them


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--guard"]:
        return _guard(argv[1], argv[3:])
    if argv[:1] == ["--tracker"]:
        return _tracker(argv[1], argv[2:])
    args = _parse(argv)
    tag = "job-" + secrets.token_hex(6)
    command = shlex.join([sys.executable, _guard_path(args), "--guard", tag, "--", *args.command])
    tracker = [
        "-n",
        str(args.num_workers),
        "-s",
        str(args.num_servers),
        "--launcher",
        args.launcher,
    ]
    tracker += ["-H", args.hostfile] if args.hostfile else []
    tracker += ["--sync-dst-dir", args.sync_dst_dir] if args.sync_dst_dir else []
    with tempfile.TemporaryDirectory(prefix="launch-") as shim:
        # The trainer prints its resume command under this launcher, with these words.
        launcher = shlex.join(
            [sys.executable, "-m", "harness.launch", *argv[: len(argv) - len(args.command)]]
        )
        env = dict(os.environ, **{_TAG: tag, "HARNESS_LAUNCHER": launcher})
        if (
            args.launcher == "local"
        ):  # ps-lite's nodes listen on this address (ssh and mpi set their own)
            env.setdefault("DMLC_NODE_HOST", args.host_ip)
        if args.launcher == "ssh":
            env["PATH"] = _ssh_shim(shim, args.ssh_config) + os.pathsep + env["PATH"]
        process = subprocess.Popen(
            [sys.executable, _HERE, "--tracker", args.host_ip, *tracker, command],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        job = _Job(process, args.num_workers + args.num_servers + 1)
        for signum in (
            signal.SIGTERM,
            signal.SIGHUP,
        ):  # as Ctrl-C: the job is stopped, not left running
            signal.signal(signum, _interrupt)
        try:
            return job.watch(args.timeout)
        except KeyboardInterrupt:
            print("harness.launch: interrupted; stopping the job", file=sys.stderr)
            return 130
        finally:
            _stop(process, tag, _hosts(args) if args.launcher == "ssh" else [], args.ssh_config)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m harness.launch",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s -n N [-s S] [--launcher L] [-H HOSTFILE] ... -- COMMAND",
    )
    parser.add_argument(
        "-n", "--num-workers", type=int, required=True, help="the number of workers"
    )
    parser.add_argument(
        "-s", "--num-servers", type=int, help="the number of servers (default: as many as workers)"
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "ssh", "mpi"),
        default="local",
        help="where the processes run: this machine, the hosts over ssh, or mpirun "
        "(default: local)",
    )
    parser.add_argument(
        "-H", "--hostfile", help="the hosts of ssh and mpi, one per line: host or host:port"
    )
    parser.add_argument(
        "--sync-dst-dir", help="with ssh: copy this folder there on every host (rsync) first"
    )
    parser.add_argument(
        "--host-ip",
        default="127.0.0.1",
        help="the address of this machine that the others reach the scheduler at (default: "
        "127.0.0.1, right for --launcher local)",
    )
    parser.add_argument("--ssh-config", help="an ssh_config file for the job's ssh connections")
    parser.add_argument(
        "--timeout", type=float, default=0, help="stop the job after this many seconds; 0: never"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job's command, after --")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    args.num_servers = args.num_workers if args.num_servers is None else args.num_servers
    problems = [
        message
        for failed, message in (
            (not args.command, "give the job's command after --"),
            (
                args.num_workers < 1 or args.num_servers < 1,
                "-n and -s must be >= 1: the parameter server needs both",
            ),
            (
                args.launcher != "local" and not args.hostfile,
                f"--launcher {args.launcher} needs -H HOSTFILE",
            ),
            (
                args.hostfile and not os.path.isfile(args.hostfile or ""),
                f"-H {args.hostfile} is not a file",
            ),
            (
                args.launcher == "mpi" and not shutil.which("mpirun"),
                "--launcher mpi needs mpirun on the PATH",
            ),
            (
                args.launcher == "ssh" and not shutil.which("ssh"),
                "--launcher ssh needs ssh on the PATH",
            ),
            (args.timeout < 0, "--timeout must be >= 0"),
        )
        if failed
    ]
    if problems:
        parser.exit(2, f"harness.launch: error: {problems[0]}\n")
    return args


def _guard_path(args):
    # With --sync-dst-dir the job runs from the copy of the current folder: name this script inside
    # it.
    if args.sync_dst_dir and _HERE.startswith(os.getcwd() + os.sep):
        return os.path.join(args.sync_dst_dir, os.path.relpath(_HERE))
    return _HERE


def _tracker(host_ip, argv):
    """Run mxnet.tools.launch in this process, as `python -m mxnet.tools.launch argv` would."""
    import runpy
    # This file runs as a script here: the project's root makes its package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))
    from harness import compat
    compat.install()
    # The dmlc tracker in mxnet 1.9.1 calls Thread.isAlive(), which Python 3.9 removed (is_alive()
    # remains): the alias lets it run unchanged.
    if not hasattr(threading.Thread, "isAlive"):
        threading.Thread.isAlive = threading.Thread.is_alive
    # mxnet.tools.launch cannot say which address the scheduler listens on; its guess can be one the
    # other hosts do not reach. --host-ip says it.
    from dmlc_tracker import tracker
    tracker.get_host_ip = lambda host_ip_=None: host_ip
    sys.argv = ["mxnet.tools.launch", *argv]
    runpy.run_module("mxnet.tools.launch", run_name="__main__", alter_sys=True)
    return 0


def _guard(tag, command):
    """Run one process of the job."""
    # Report its role, host and exit code on a line the watchdog reads.
    env = dict(os.environ, **{_TAG: tag})
    child = subprocess.Popen(command, env=env)

    def forward(signum, frame):
        child.send_signal(signum)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    role, task = os.environ.get("DMLC_ROLE", "?"), os.environ.get("DMLC_TASK_ID", "")
    print(
        f"{_MARK} {tag} role={role} task={task} host={socket.gethostname()} pid={child.pid} "
        f"code={code}",
        flush=True,
    )
    return code if code >= 0 else 128 - code


class _Job:
    """The tracker's output, relayed line by line, with the guards' reports picked out of it."""

    def __init__(self, process, expected):
        self.process, self.expected, self.reports, self.failed = process, expected, [], None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            match = re.match(
                rf"{_MARK} \S+ role=(\S*) task=(\S*) host=(\S*) pid=(\d+) code=(-?\d+)",
                line.strip(),
            )
            if not match:
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            role, task, host, pid, code = match.groups()
            self.reports.append(int(code))
            if int(code) != 0 and self.failed is None:
                what = f"{role}{' ' + task if task else ''} on {host} (pid {pid})"
                self.failed = f"{what} {_describe(int(code))}"

    def watch(self, timeout):
        """Wait for the job; return its exit code, printing why it failed."""
        started = time.monotonic()
        ended = None
        while True:
            if self.failed:
                return _fail(f"{self.failed} while the job ran; stopping the others")
            if len(self.reports) == self.expected:
                return 0
            if ended is None and self.process.poll() is not None:
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended > _LATE_S:
                return _fail(
                    f"MXNet's launcher ended, but only {len(self.reports)} of the job's "
                    f"{self.expected} "
                    "processes reported an exit; stopping the others"
                )
            if timeout and time.monotonic() - started > timeout:
                print(
                    f"harness.launch: error: the job ran past --timeout {timeout:g} s; stopping it",
                    file=sys.stderr,
                )
                return 124
            time.sleep(0.1)


def _fail(message):
    print(f"harness.launch: error: {message}", file=sys.stderr)
    return 1


def _describe(code):
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"was killed by {signal.Signals(code - 128).name}"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ssh_shim(folder, config):
    """A folder with an `ssh` that adds -tt and the job's ssh_config, to be first on the PATH."""
    # With -tt, the remote processes get a hangup when their connection closes.
    # and the job's ssh_config, for the launcher to find first on its PATH.
    real, extra = (
        shutil.which("ssh"),
        f"-F {shlex.quote(os.path.abspath(config))} " if config else "",
    )
    path = os.path.join(folder, "ssh")
    with open(path, "w") as f:
        # rsync speaks its protocol over the connection, which a terminal would garble: no -tt for
        # it.
        f.write(f'#!/bin/sh\ncase "$*" in *"rsync --server"*) exec {real} {extra}"$@";; esac\n'
                f'exec {real} -tt {extra}"$@"\n')
    os.chmod(path, 0o755)
    return folder


def _hosts(args):
    with open(args.hostfile) as f:
        entries = [line.split("slots=")[0].strip() for line in f if line.strip()]
    return sorted(
        {(entry.split(":")[0], entry.split(":")[1] if ":" in entry else "22") for entry in entries}
    )


def _stop(process, tag, hosts, ssh_config):
    """Stop every process of the job: SIGTERM, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [process.pid] + _tagged(tag):
            try:
                os.killpg(pid, sig) if pid == process.pid else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for host, port in hosts:  # what a lost connection left running, found by the job's tag
            script = (f"for p in /proc/[0-9]*; do grep -qsz {_TAG}={tag} $p/environ && "
                      f"kill -{sig.value} ${{p#/proc/}}; done; true")
            config = ["-F", ssh_config] if ssh_config else []
            try:
                subprocess.run(["ssh", *config, "-o", "BatchMode=yes", "-p", port, host, script],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            except subprocess.TimeoutExpired:
                print(
                    f"harness.launch: warning: could not reach {host} to stop what is left there",
                    file=sys.stderr,
                )
        deadline = time.monotonic() + _GRACE_S
        while (process.poll() is None or _tagged(tag)) and time.monotonic() < deadline:
            time.sleep(0.1)
    process.wait()


def _tagged(tag):
    """The pids of this machine whose environment holds the job's tag."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"{_TAG}={tag}".encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


if __name__ == "__main__":
    sys.exit(main())
