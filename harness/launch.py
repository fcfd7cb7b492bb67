"""Launch a parameter-server job with MXNet's own launcher, mxnet.tools.launch, and watch it."""
#     python -m harness.launch -n 2 -s 1 -- python train_mnist.py --kv-store dist_sync
#     python -m harness.launch -n 2 -s 1 --launcher ssh -H hosts -- \
#         python train_mnist.py --kv-store dist_sync
#
# MXNet's launcher (its dmlc tracker) starts the scheduler, the servers and the workers, locally,
# over ssh or with mpirun, with the DMLC_* variables that ps-lite reads. On its own it does not
# notice a process that dies: the job then waits forever, and a stopped launcher leaves the rest
# running. So this module runs it under a watchdog:
#
# - each process of the job runs under a guard (this module with --guard), which reports its exit;
# - the scheduler listens on a free port of its own, so that jobs on one machine do not collide;
# - a worker that a signal stopped (exit 130, its step saved) stops the job cleanly: the other
#   workers stop with it (they agree on it in the gradients' sum), and the job ends with exit 130
#   and the one line that rank 0 prints;
# - a signal to this launcher is passed to the job's workers alone, for the same clean stop; a
#   second one, or a clean stop that does not end in time, ends every process at once;
# - when a process fails, or --timeout passes, every process is stopped: the local ones by their
#   session, the remote ones by their ssh connection (run with -tt, so that they get a hangup when
#   it closes) and by a search for the job's tag.
# The exit code is 0 when every process ended well, 1 naming the first that did not, 124 on
# --timeout, 130 on a signal.
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
# How a guard's report line starts, and the tracker's of a launch command that failed.
_MARK = "@@harness.launch"
_LOST = "@@harness.launch-failed"
# After SIGTERM, before SIGKILL: a process blocked in ps-lite does not see SIGTERM.
_GRACE_S = 3.0
# How long the reports of a job may trail the tracker's exit, when its scheduler did not end well.
_LATE_S = 10.0
# How long a clean stop may take: every worker's last step, rank 0's save, ps-lite's shutdown.
_STOPPING_S = 60.0
# In every process's environment: how a stop finds them. The guard marks its own child.
_TAG, _CHILD = "LAUNCH_JOB_TAG", "LAUNCH_JOB_CHILD"
# What the trainer prints its resume command with.
_LAUNCHER_ENV = "HARNESS_LAUNCHER"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--guard"]:
        return _guard(argv[1], argv[3:])
    if argv[:1] == ["--tracker"]:
        return _tracker(argv[1], int(argv[2]), argv[3:])
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
    own = argv[:len(argv) - len(args.command)]
    env = dict(os.environ, **{_TAG: tag, _LAUNCHER_ENV: shlex.join(
        [sys.executable, "-m", "harness.launch", *own])})
    if args.launcher == "local":
        # ps-lite's nodes listen on this address (ssh and mpi set their own).
        env.setdefault("DMLC_NODE_HOST", args.host_ip)
    hosts = _hosts(args) if args.launcher == "ssh" else []
    with tempfile.TemporaryDirectory(prefix="launch-") as shim:
        if args.launcher == "ssh":
            env["PATH"] = _ssh_shim(shim, args.ssh_config) + os.pathsep + env["PATH"]
        port = _free_port()
        process = subprocess.Popen([sys.executable, _HERE, "--tracker", args.host_ip, str(port),
                                    *tracker, command], env=env, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        job = _Job(process, (args.num_workers, args.num_servers), (tag, hosts, args.ssh_config))
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, job.on_signal)
        try:
            return job.watch(args.timeout)
        finally:
            _stop(process, tag, hosts, args.ssh_config)


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m harness.launch", description=__doc__,
        usage="%(prog)s -n N [-s S] [--launcher L] [-H HOSTFILE] ... -- COMMAND")
    parser.add_argument(
        "-n", "--num-workers", type=int, required=True, help="the number of workers"
    )
    parser.add_argument("-s", "--num-servers", type=int,
                        help="the number of servers (default: as many as workers)")
    parser.add_argument("--launcher", choices=("local", "ssh", "mpi"), default="local",
                        help="where the processes run: here, on the hosts over ssh, or with mpirun")
    parser.add_argument(
        "-H", "--hostfile", help="the hosts of ssh and mpi, one per line: host[:port]"
    )
    parser.add_argument(
        "--sync-dst-dir", help="with ssh: copy this folder there on every host first"
    )
    parser.add_argument("--host-ip", default="127.0.0.1",
                        help="the address of this machine that the others reach the scheduler at "
                             "(default: 127.0.0.1, right for --launcher local)")
    parser.add_argument("--ssh-config", help="an ssh_config file for the job's ssh connections")
    parser.add_argument("--timeout", type=float, default=0,
                        help="stop the job after this many seconds; 0: never")
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
    # With --sync-dst-dir the job runs from the copy of the current folder: this file, in it.
    if args.sync_dst_dir and _HERE.startswith(os.getcwd() + os.sep):
        return os.path.join(args.sync_dst_dir, os.path.relpath(_HERE))
    return _HERE


def _free_port():
    """A port that the system has just given out, not the tracker's first free one from 9091."""
    # The tracker's own search gives two jobs started together the same port.
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _tracker(host_ip, port, argv):
    """Run mxnet.tools.launch in this process, as `python -m mxnet.tools.launch argv` would."""
    import runpy
    # This file runs as a script here: the project's root makes its package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))
    from harness import compat
    compat.install()
    # The dmlc tracker in mxnet 1.9.1 calls Thread.isAlive(), which Python 3.9 removed: the alias
    # lets it run unchanged.
    if not hasattr(threading.Thread, "isAlive"):
        threading.Thread.isAlive = threading.Thread.is_alive
    from dmlc_tracker import tracker
    # mxnet.tools.launch cannot say which address the scheduler listens on; its guess can be one
    # the other hosts do not reach. --host-ip says it, and the port is the one chosen for this job.
    tracker.get_host_ip = lambda host_ip_=None: host_ip
    tracker.PSTracker.__init__.__defaults__ = (port, port + 1, None)
    # A launch command that fails raises in the tracker's thread, which prints a traceback and ends,
    # while the job waits for its process forever: report it instead, as a guard reports an exit.
    threading.excepthook = _report_launch_failure
    sys.argv = ["mxnet.tools.launch", *argv]
    runpy.run_module("mxnet.tools.launch", run_name="__main__", alter_sys=True)
    return 0


def _report_launch_failure(hook):
    """A failed launch command of the tracker's: a line for the watchdog, not a traceback."""
    error = hook.exc_value
    # The local launcher's way of saying a process exited non-zero, which its guard has reported.
    if isinstance(error, RuntimeError) and str(error).startswith("Get nonzero return code="):
        return None
    if not isinstance(error, subprocess.CalledProcessError):
        return threading.__excepthook__(hook)
    command = str(error.cmd)
    role = re.search(r"DMLC_ROLE=(\w+)", command)
    host = re.search(r"DMLC_NODE_HOST=([^;\s']+)", command)
    print(f"{_LOST} role={role[1] if role else '?'} host={host[1] if host else '?'} "
          f"code={error.returncode}", flush=True)


def _guard(tag, command):
    """Run one process of the job; report its role, host and exit on a line the watchdog reads."""
    role = os.environ.get("DMLC_ROLE", "?")
    child = subprocess.Popen(command, env=dict(os.environ, **{_TAG: tag, _CHILD: "1"}))

    def forward(signum, frame):
        # A scheduler or a server must outlive the workers' last step: a stop is for workers.
        if role == "worker":
            child.send_signal(signum)
        # A hangup: the connection to the launcher is gone, and with it the launcher's stop. The
        # child has the clean stop's time, then ends, whatever it waits for.
        if signum == signal.SIGHUP:
            timer = threading.Timer(_STOPPING_S, lambda: child.poll() is None and child.kill())
            timer.daemon = True
            timer.start()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    task = os.environ.get("DMLC_TASK_ID", "")
    print(f"{_MARK} {tag} role={role} task={task} host={socket.gethostname()} pid={child.pid} "
          f"code={code}", flush=True)
    return code if code >= 0 else 128 - code


class _Job:
    """The tracker's output, relayed line by line, with the guards' reports picked out of it."""

    def __init__(self, process, sizes, where):
        # sizes: (workers, servers); where: (the job's tag, its ssh hosts, their ssh_config).
        self.process, (self.workers, servers), self.where = process, sizes, where
        self.expected = self.workers + servers + 1
        self.reports, self.failed, self.stopping, self.signals = [], None, None, 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        pattern = rf"{_MARK} \S+ role=(\S*) task=(\S*) host=(\S*) pid=(\d+) code=(-?\d+)"
        for line in self.process.stdout:
            lost = re.match(rf"{_LOST} role=(\S*) host=(\S*) code=(-?\d+)", line.strip())
            if lost:
                role, host, code = lost.groups()
                # 255: ssh's own failure, not the process's (whose guard has reported it).
                if code == "255" and self.failed is None:
                    self.failed = f"the connection to {role} on {host} was lost"
                continue
            match = re.match(pattern, line.strip())
            if not match:
                sys.stdout.write(line)
                sys.stdout.flush()
                continue
            role, task, host, pid, code = match.groups()
            self.reports.append((role, int(code)))
            if role == "worker" and int(code) == 130:
                # A worker stopped on a signal, after saving: the others stop with it.
                self.stopping = self.stopping or time.monotonic()
            elif int(code) != 0 and self.failed is None:
                what = f"{role}{' ' + task if task else ''} on {host} (pid {pid})"
                self.failed = f"{what} {_describe(int(code))}"

    def on_signal(self, signum, frame):
        """A signal to the launcher: a clean stop of the job's workers; a second, the end now."""
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt
        self.stopping = self.stopping or time.monotonic()
        _signal_workers(signal.SIGTERM, *self.where)

    def watch(self, timeout):
        """Wait for the job; return its exit code, printing why it failed."""
        started, ended = time.monotonic(), None
        try:
            while True:
                if self.failed:
                    return _fail(f"{self.failed} while the job ran; stopping the others")
                workers = [code for role, code in self.reports if role == "worker"]
                if len(self.reports) == self.expected or self.stopping and self._workers_done():
                    # A clean stop: rank 0 has said what it saved, and how to resume.
                    return 130 if self.stopping or 130 in workers else 0
                if self.stopping and time.monotonic() - self.stopping > _STOPPING_S:
                    return _fail(
                        f"the job did not stop within {_STOPPING_S:g} s of a signal; ended it"
                    )
                if ended is None and self.process.poll() is not None:
                    ended = time.monotonic()
                # A scheduler that ended well has seen every worker's last step: what is left is
                # their shutdown, which can take many seconds on a busy machine.
                late = _STOPPING_S if ("scheduler", 0) in self.reports else _LATE_S
                if ended is not None and time.monotonic() - ended > late:
                    if self._workers_done() and set(workers) == {0}:
                        return 0
                    return _fail(f"MXNet's launcher ended, but after {late:g} s no exit was "
                                 f"reported by {self._missing()}; stopping the others")
                if timeout and time.monotonic() - started > timeout:
                    print(f"harness.launch: error: the job ran past --timeout {timeout:g} s; "
                          "stopping it", file=sys.stderr)
                    return 124
                time.sleep(0.1)
        except KeyboardInterrupt:
            print("harness.launch: stopped by a second signal; ending the job now", file=sys.stderr)
            return 130

    def _missing(self):
        """Which of the job's processes have not reported, as "1 of 3 workers"."""
        expected = {"worker": self.workers, "server": self.expected - self.workers - 1,
                    "scheduler": 1}
        parts = []
        for role, count in expected.items():
            left = count - sum(1 for reported, _ in self.reports if reported == role)
            if left > 0:
                parts.append(f"{left} of {count} {role}{'s' if count > 1 else ''}")
        return " and ".join(parts) or "none of them"

    def _workers_done(self):
        return sum(1 for role, _ in self.reports if role == "worker") == self.workers


def _fail(message):
    print(f"harness.launch: error: {message}", file=sys.stderr)
    return 1


def _describe(code):
    """What a guard's report of a child's return code means."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ssh_shim(folder, config):
    """A folder with an `ssh` that adds -tt and the job's ssh_config, to be first on the PATH."""
    # With -tt, the remote processes get a hangup when their connection closes. The keepalives
    # notice a host that is gone within 20 s: an idle connection would never notice.
    real = shutil.which("ssh")
    extra = "-o ServerAliveInterval=5 -o ServerAliveCountMax=3 "
    extra += f"-F {shlex.quote(os.path.abspath(config))} " if config else ""
    path = os.path.join(folder, "ssh")
    with open(path, "w") as f:
        # rsync speaks its protocol over the connection, which a terminal would garble: no -tt.
        f.write(f'#!/bin/sh\ncase "$*" in *"rsync --server"*) exec {real} {extra}"$@";; esac\n'
                f'exec {real} -tt {extra}"$@"\n')
    os.chmod(path, 0o755)
    return folder


def _hosts(args):
    with open(args.hostfile) as f:
        entries = [line.split("slots=")[0].strip() for line in f if line.strip()]
    return sorted({(entry.split(":")[0], entry.split(":")[1] if ":" in entry else "22")
                   for entry in entries})


def _signal_workers(signum, tag, hosts, ssh_config):
    """Send signum to the job's worker processes, here and on every host, not to their guards."""
    for pid in _tagged(tag, worker=True):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    _on_hosts(f"grep -qsz {_CHILD}=1 $p/environ && grep -qsz DMLC_ROLE=worker $p/environ && "
              f"kill -{int(signum)} ${{p#/proc/}}", tag, hosts, ssh_config)


def _stop(process, tag, hosts, ssh_config):
    """Stop every process of the job: SIGTERM, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [process.pid] + _tagged(tag):
            try:
                os.killpg(pid, sig) if pid == process.pid else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        # What a lost connection left running, found by the job's tag.
        _on_hosts(f"kill -{int(sig)} ${{p#/proc/}}", tag, hosts, ssh_config)
        deadline = time.monotonic() + _GRACE_S
        while (process.poll() is None or _tagged(tag)) and time.monotonic() < deadline:
            time.sleep(0.1)
    process.wait()


def _on_hosts(action, tag, hosts, ssh_config):
    """Run action for each process of the job ($p: its /proc folder) on every remote host."""
    script = f"for p in /proc/[0-9]*; do grep -qsz {_TAG}={tag} $p/environ && {action}; done; true"
    config = ["-F", ssh_config] if ssh_config else []
    for host, port in hosts:
        try:
            subprocess.run(["ssh", *config, "-o", "BatchMode=yes", "-p", port, host, script],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        except subprocess.TimeoutExpired:
            print(
                f"harness.launch: warning: could not reach {host} to stop the job's processes "
                "there",
                file=sys.stderr,
            )


def _tagged(tag, worker=False):
    """The pids here whose environment holds the job's tag (worker: only its worker trainers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"{_TAG}={tag}".encode() in env and (
                    not worker or b"DMLC_ROLE=worker" in env and f"{_CHILD}=1".encode() in env):
                found.append(int(entry))
    return found


if __name__ == "__main__":
    sys.exit(main())
