"""Launch a parameter-server job with MXNet's own launcher, mxnet.tools.launch, and watch it.

    python -m harness.launch -n 2 -s 1 -- python train_mnist.py --kv-store dist_sync
    python -m harness.launch -n 2 -s 1 --launcher ssh -H hosts -- \\
        python train_mnist.py --kv-store dist_sync

MXNet's launcher (its dmlc tracker) starts the scheduler, the servers and the workers, locally,
over ssh or with mpirun, with the DMLC_* variables that ps-lite reads. On its own it does not
notice a process that dies: the job then waits forever, and a stopped launcher leaves the rest
running. So this module runs it under a watchdog (harness/launched.py is its side inside the job):

- each process of the job runs under a guard, which reports its exit;
- the scheduler listens on a free port of its own, drawn below the system's range for bind(0),
  so that jobs on one machine do not collide;
- the launcher owns its signals from its first line (harness/signals.py). A stop, whether a signal
  to the launcher, to a server or to the scheduler (which ask the launcher for it), is a clean stop
  once every worker is in its training loop: SIGTERM to the workers alone, which agree on the step
  to stop after, and rank 0 saves it and prints the job's one line. Before that, no step can be
  saved: the job ends at once, with the launcher's line. A second signal ends every process now;
- a worker that a signal stopped (exit 130) stops the job: the others stop with it in the loop;
  before it, the job ends at once;
- when a process fails, or --timeout passes, every process is stopped: the local ones by their
  session, the remote ones by their ssh connection (run with -tt, so that they get a hangup when
  it closes) and by a search for the job's tag.
The exit code is 0 when every process ended well, 130 on a stop, 2 for bad flags, 1 otherwise
(naming the first process that failed, or the timeout).
"""
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script (python harness/launch.py), it finds its package beside this file's folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import signals

if __name__ == "__main__":
    # First of all: from this line on, a signal to the launcher ends it with one line, and with it
    # whatever of its job it has started.
    signals.install("harness.launch")

import argparse
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import launched
from harness.errors import FAILED, REFUSED, STOPPED, SUCCESS

# The lowest port the scheduler may listen on: many services have theirs below it.
_LOWEST_PORT = 10000
# After SIGTERM, before SIGKILL: a process blocked in ps-lite does not see SIGTERM.
_GRACE_S = 3.0
# How long the reports of a job may trail the tracker's exit, when its scheduler did not end well.
_LATE_S = 10.0
# What the trainer prints its resume command with.
_LAUNCHER_ENV = "HARNESS_LAUNCHER"
_TAG, _CHILD = launched.TAG, launched.CHILD


def main(argv=None):
    """Launch the job that argv describes, watch it, and return the launcher's exit code."""
    argv = sys.argv[1:] if argv is None else argv
    signals.set_stage("before the job started; nothing ran")
    args = _parse(argv)
    tag = "job-" + secrets.token_hex(6)
    command = shlex.join([sys.executable, _guard_path(args), "--guard", tag, "--", *args.command])
    tracker = ["-n", str(args.num_workers), "-s", str(args.num_servers),
               "--launcher", args.launcher]
    tracker += ["-H", args.hostfile] if args.hostfile else []
    tracker += ["--sync-dst-dir", args.sync_dst_dir] if args.sync_dst_dir else []
    own = argv[:len(argv) - len(args.command)]
    env = dict(os.environ, **{_TAG: tag, _LAUNCHER_ENV: shlex.join(
        [sys.executable, "-m", "harness.launch", *own])})
    if args.launcher == "local":
        # ps-lite's nodes listen on this address (ssh and mpi set their own).
        env.setdefault("DMLC_NODE_HOST", args.host_ip)
    hosts = _hosts(args) if args.launcher == "ssh" else []
    # From here a signal is recorded, and the watch acts on it: no process is ever left unwatched.
    with signals.deferred(), tempfile.TemporaryDirectory(prefix="launch-") as shim:
        if args.launcher == "ssh":
            env["PATH"] = _ssh_shim(shim, args.ssh_config) + os.pathsep + env["PATH"]
        process = subprocess.Popen(
            [sys.executable, launched.HERE, "--tracker", args.host_ip, str(_free_port()), *tracker,
             command], env=env, start_new_session=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        job = _Job(process, (args.num_workers, args.num_servers), (tag, hosts, args.ssh_config))
        signals.call_before_exit_now(lambda: (job.end_now(), shutil.rmtree(shim, True)))
        try:
            return job.watch(args.timeout)
        finally:
            _stop(process, tag, hosts, args.ssh_config)
            # Used only if the job succeeded: its training had finished.
            signals.set_stage("as the job ended; its training had finished")


def _parse(argv):
    """The launcher's flags and the job's command from argv; a flag it refuses exits with 2."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.launch", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        parser.exit(REFUSED, f"harness.launch: error: {problems[0]}\n")
    return args


def _guard_path(args):
    """The guard's script on the hosts: with --sync-dst-dir, in the copy of the current folder."""
    if args.sync_dst_dir and launched.HERE.startswith(os.getcwd() + os.sep):
        return os.path.join(args.sync_dst_dir, os.path.relpath(launched.HERE))
    return launched.HERE


def _free_port():
    """A free port for the scheduler, drawn at random below the system's range for bind(0).

    The tracker's own search gives two jobs started together the same port. A port from bind(0)
    is no better: ps-lite's other nodes, and every outgoing connection, take theirs from that
    range, so another job can hold it before the scheduler binds it. Below the range, only another
    draw of the same port can.
    """
    first = _first_ephemeral_port()
    if first - _LOWEST_PORT >= 1000:
        draw = random.SystemRandom()
        for _ in range(100):
            port = draw.randrange(_LOWEST_PORT, first)
            with socket.socket() as probe:
                try:
                    probe.bind(("", port))
                except OSError:
                    continue
            return port
    # No room below the range, or nothing free there.
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _first_ephemeral_port():
    """The first port of the range the system gives out for bind(0) and connect()."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read(64).split()[0])
    except (OSError, ValueError, IndexError):
        # Not Linux: the range IANA suggests, which macOS and Windows use.
        return 49152


class _Job:
    """The tracker's output, relayed line by line, with the job's own lines picked out of it.

    Those are the guards' reports of each process's exit, the tracker's of a launch that failed,
    the workers' word that their training loop begins and ends, and a serving process's request to
    stop the job (harness/signals.py).
    """

    def __init__(self, process, sizes, where):
        """Start reading process's output, the tracker's, in a thread of its own.

        sizes: (workers, servers); where: (the job's tag, its ssh hosts, their ssh_config).
        """
        self.process, (self.workers, servers), self.where = process, sizes, where
        self.expected = self.workers + servers + 1
        self.reports, self.requests, self.loops = [], [], {"in": 0, "out": 0}
        # Why the job failed, or which process a signal killed; since when it stops cleanly; a
        # stop that came as it ended.
        self.failed, self.killed, self.stopping, self.late = None, None, None, None
        # The launcher's own signal was acted on; the job is being ended (its output is dropped);
        # the launcher's stdout was closed under it.
        self.signalled, self.ending, self.closed = False, False, False
        # A process's line has said how the job stopped: the same line from another is dropped.
        # The lock keeps the job's stop to one line, whichever thread says it.
        self.stop_said, self.speaking = False, threading.RLock()
        # When the tracker ended.
        self.ended = None
        # The first threads line of each kind: each process prints its own.
        self.threads = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        """Read the tracker's output to its end: act on the job's own lines, relay the rest."""
        tag = re.escape(self.where[0])
        patterns = (rf"{launched.MARK} {tag} role=(\S*) task=(\S*) host=(\S*) pid=(\d+) "
                    r"code=(-?\d+)", rf"{launched.LOST} role=(\S*) host=(\S*) code=(-?\d+)",
                    rf"{signals.STOP_REQUEST} {tag} (\S+) (\d+) (\S+) (\S+)",
                    rf"{signals.LOOP} {tag} (in|out)")
        cut = False
        for line in self.process.stdout:
            # A job's line may follow another process's unfinished one: a progress bar on a
            # terminal (ssh -tt), or a line printed unbuffered, whose newline then comes next.
            found = [re.search(pattern + r"\s*$", line) for pattern in patterns]
            kind = next((i for i, match in enumerate(found) if match), None)
            if kind is None:
                if not (cut and line == "\n"):
                    self._relay(line)
                cut = False
                continue
            cut = found[kind].start() > 0
            self._relay(line[:found[kind].start()])
            self._take(kind, found[kind].groups())

    def _take(self, kind, fields):
        """A line of the job's own, by its kind: a report, a lost launch, a stop request, a loop."""
        if kind == 0:
            self._report(*fields)
        elif kind == 1:
            role, host, code = fields
            # 255: ssh's own failure, not the process's (whose guard has reported it).
            if code == "255" and self.failed is None:
                self.failed = f"the connection to {role} on {host} was lost"
        elif kind == 2:
            self.requests.append(fields)
        elif kind == 3:
            self.loops[fields[0]] += 1
        else:
            raise ValueError(f"no kind of line {kind}")

    def _relay(self, text):
        """Show text of the job's output, but once the job is being ended, and but repeats.

        Each process of the job prints its threads line: each different one is shown once. The
        job's stop is said once: when each worker had the signal, each says the same line. A
        stdout closed under the launcher stops the job, as a SIGPIPE would; the line that says how
        a process of it ended (`PROGRAM: stopped by...`, `PROGRAM: error: ...`) then goes to stderr.
        """
        plain = text.replace("\x1b[K", "").strip()
        with self.speaking:
            self._show(text, plain)

    def _show(self, text, plain):
        """_relay's work, under the lock that keeps the job's stop to one line."""
        stop = re.match(r"\S+: stopped by ", plain)
        if (self.ending or not text or plain.startswith("threads: ") and plain in self.threads
                or stop and self.stop_said):
            return
        if plain.startswith("threads: "):
            self.threads.add(plain)
        self.stop_said = self.stop_said or bool(stop)
        if self.closed:
            if re.match(r"\S+: (stopped by |error: )", plain):
                print(plain, file=sys.stderr, flush=True)
            return
        try:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            signals.stop_for(signal.SIGPIPE)

    def _report(self, role, task, host, pid, code):
        """A guard's report: a worker that a signal stopped stops the job; any other failure too."""
        code = int(code)
        self.reports.append((role, code))
        what = f"{role}{' ' + task if task else ''} on {host} (pid {pid})"
        if code == STOPPED and role == "worker":
            self.requests.append((None, None, what, None))
        elif code < 0 and -code in signals.SIGNALS and self.killed is None:
            # Killed by a signal before it could take one (its interpreter was starting): a stop.
            self.killed = f"{what} {_describe(code)}"
        # A serving process that a signal stopped (130) ends as the job does, or has asked for the
        # end now.
        elif code not in (SUCCESS, STOPPED) and self.failed is None:
            self.failed = f"{what} {_describe(code)}"

    def on_stop(self, cause, by_worker=False):
        """A stop: clean in the loop; at once before it; as it ends, none. Return a code, or None.

        cause: what stopped the job, for the line (None: a worker, which has said its own).
        """
        if self.stopping or self.late:
            return None
        if self.loops["in"] < self.workers:
            with self.speaking:
                # Every worker had the signal too (Slurm sends it to every process): a worker's
                # line has said the stop.
                if by_worker or self.stop_said:
                    self.ending = True
                    return STOPPED
                return self._end(f"stopped by {cause} before training began; nothing saved",
                                 STOPPED)
        if self.loops["out"]:
            # Training is over: the job ends by itself, and a worker's own stop has said so.
            self.late = None if by_worker else cause
            return None
        self.stopping = time.monotonic()
        if not by_worker:
            _signal_workers(signal.SIGTERM, *self.where)
        return None

    def _take_stops(self):
        """Act on the stops that came since the last look: the launcher's signal, and requests."""
        if signals.received() is not None and not self.signalled:
            self.signalled = True
            code = self.on_stop(signals.name(signals.received()))
            if code is not None:
                return code
        while self.requests:
            signame, count, role, host = self.requests.pop(0)
            if signame is None:
                code = self.on_stop(None, by_worker=True)
            elif count == "1":
                code = self.on_stop(f"{signame} to the {role} on {host}")
            else:
                code = self._end(f"stopped by a second {signame} to the {role} on {host}; "
                                 "ending the job now", STOPPED)
            if code is not None:
                return code
        return None

    def watch(self, timeout):
        """Wait for the job; return its exit code, having printed why it failed or stopped."""
        started = time.monotonic()
        while True:
            code = self._take_stops()
            if code is None:
                code = self._verdict()
            if code is not None:
                return code
            if timeout and time.monotonic() - started > timeout:
                return self._end(f"error: the job ran past --timeout {timeout:g} s; stopping it",
                                 FAILED)
            time.sleep(0.1)

    def _verdict(self):
        """The job's exit code once it is known, else None."""
        if self.killed:
            return self._end(f"stopped: {self.killed}; stopping the others", STOPPED)
        if self.failed:
            return self._end(f"error: {self.failed} while the job ran; stopping the others", FAILED)
        workers = [code for role, code in self.reports if role == "worker"]
        if len(self.reports) == self.expected or self.stopping and self._workers_done():
            # A late signal, unless the workers had stopped by themselves (each process had the
            # signal, as Slurm sends it): rank 0 has then said the stop's line.
            if self.late and STOPPED not in workers:
                return self._end(f"stopped by {self.late} as the job ended; its training had "
                                 "finished", STOPPED)
            # A clean stop: rank 0 has said what it saved, and how to resume.
            return STOPPED if self.stopping or STOPPED in workers else SUCCESS
        if self.stopping and time.monotonic() - self.stopping > launched.STOPPING_S:
            return self._end(f"error: the job did not stop within {launched.STOPPING_S:g} s of a "
                             "signal; ended it", FAILED)
        return self._tracker_verdict(workers)

    def _tracker_verdict(self, workers):
        """After the tracker ended: the job's code once the reports are overdue, else None."""
        if self.process.poll() is None:
            return None
        if self.ended is None:
            self.ended = time.monotonic()
        # A scheduler that ended well has seen every worker's last step: what is left is their
        # shutdown, which can take many seconds on a busy machine.
        late = launched.STOPPING_S if ("scheduler", 0) in self.reports else _LATE_S
        if time.monotonic() - self.ended <= late:
            return None
        if self._workers_done() and set(workers) == {0}:
            return SUCCESS
        return self._end(f"error: MXNet's launcher ended, but after {late:g} s no exit was "
                         f"reported by {self._missing()}; stopping the others", FAILED)

    def _end(self, line, code):
        """Say line, stop relaying the job's output, and return code: the job is ended."""
        with self.speaking:
            self.ending = True
            print(f"harness.launch: {line}", file=sys.stderr, flush=True)
        return code

    def end_now(self):
        """Before the launcher ends at once (a second signal): every local process of the job too.

        The remote ones get a hangup as their ssh connections, the tracker's children, end.
        """
        self.ending = True
        _kill_now(self.process, self.where[0])

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
        """Whether every worker has reported its exit."""
        return sum(1 for role, _ in self.reports if role == "worker") == self.workers


def _describe(code):
    """What a guard's report of a child's return code means."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _ssh_shim(folder, config):
    """A folder with an `ssh` that adds -tt and the job's ssh_config, to be first on the PATH.

    With -tt, the remote processes get a hangup when their connection closes. The keepalives notice
    a host that is gone within 20 s: an idle connection would never notice.
    """
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


def _kill(process, tag, signum):
    """Send signum to the tracker's session and to every process here with the job's tag.

    SIGTERM goes to the tracker and to the job's own processes alone, not to their guards, which
    would pass it on: each process gets it once, and stops as for one signal.
    """
    if signum == signal.SIGTERM:
        targets = [(os.kill, process.pid)] + [(os.kill, pid) for pid in _tagged(tag, child=True)]
    else:
        targets = [(os.killpg, process.pid)] + [(os.kill, pid) for pid in _tagged(tag)]
    for send, pid in targets:
        try:
            send(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_now(process, tag):
    """SIGKILL to the tracker's session and the job's processes here, until none is left.

    Within the grace period: a process dies some milliseconds after SIGKILL, and one the tracker
    forked as the signals went out is found on the next look.
    """
    deadline = time.monotonic() + _GRACE_S
    while True:
        _kill(process, tag, signal.SIGKILL)
        if process.poll() is not None and not _tagged(tag) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    process.wait()


def _stop(process, tag, hosts, ssh_config):
    """Stop every process of the job: SIGTERM, then SIGKILL what is left after a grace period."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _kill(process, tag, signum)
        # What a lost connection left running, found by the job's tag (first its own processes,
        # not their guards, as here).
        only = f"grep -qsz {_CHILD}=1 $p/environ && " if signum == signal.SIGTERM else ""
        _on_hosts(f"{only}kill -{int(signum)} ${{p#/proc/}}", tag, hosts, ssh_config)
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


def _tagged(tag, worker=False, child=False):
    """The pids here whose environment holds the job's tag.

    worker: only its worker trainers; child: only the processes its guards run.
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"{_TAG}={tag}".encode() not in env:
                continue
            if (worker or child) and f"{_CHILD}=1".encode() not in env:
                continue
            if not worker or b"DMLC_ROLE=worker" in env:
                found.append(int(entry))
    return found


if __name__ == "__main__":
    signals.run(main)
