"""The side of harness.launch inside its job: the tracker, and a guard around each process.

harness.launch runs this file as a script: `python launched.py --tracker HOST_IP PORT ARGS...`
runs MXNet's own launcher (its dmlc tracker), which starts the scheduler, the servers and the
workers, each as `python launched.py --guard TAG -- COMMAND`. A guard runs its process and reports
its role, host and exit on a line of its own, which harness.launch reads on the tracker's output.
It imports nothing heavy, but for the tracker, which loads MXNet.
"""
import os
import sys

if __name__ == "__main__":
    # Run as a script, it finds its package beside this file's folder.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import re
import signal
import socket
import subprocess
import threading

from harness.signals import JOB_TAG, say_to_launcher

HERE = os.path.abspath(__file__)
# How a guard's report line starts, and the tracker's of a launch command that failed.
MARK = "@@harness.launch"
LOST = "@@harness.launch-failed"
# In every process's environment, how a stop finds them: the job's tag; and the guard's mark on
# its own child.
TAG, CHILD = JOB_TAG, "LAUNCH_JOB_CHILD"
# How long a clean stop may take: every worker's last step, rank 0's save, ps-lite's shutdown.
STOPPING_S = 60.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv):
    """Run as the tracker or as a guard, as argv says; end with the exit code to give."""
    if argv[:1] == ["--guard"]:
        return guard(argv[1], argv[3:])
    if argv[:1] == ["--tracker"]:
        return tracker(argv[1], int(argv[2]), argv[3:])
    raise ValueError(f"launched.py runs as --guard or --tracker, not {argv[:1]}")


def tracker(host_ip, port, argv):
    """Run mxnet.tools.launch in this process, as `python -m mxnet.tools.launch argv` would."""
    import runpy

    from harness import compat
    compat.install()
    # The dmlc tracker in mxnet 1.9.1 calls Thread.isAlive(), which Python 3.9 removed: the alias
    # lets it run unchanged.
    if not hasattr(threading.Thread, "isAlive"):
        threading.Thread.isAlive = threading.Thread.is_alive
    from dmlc_tracker import tracker as dmlc
    # mxnet.tools.launch cannot say which address the scheduler listens on; its guess can be one
    # the other hosts do not reach. --host-ip says it, and the port is the one chosen for this job.
    dmlc.get_host_ip = lambda host_ip_=None: host_ip
    dmlc.PSTracker.__init__.__defaults__ = (port, port + 1, None)
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
    say_to_launcher(f"{LOST} role={role[1] if role else '?'} host={host[1] if host else '?'} "
                    f"code={error.returncode}")


def guard(tag, command):
    """Run one process of the job; report its role, host and exit on a line the watchdog reads.

    A signal to the guard is passed to a worker (a scheduler or a server must outlive the workers'
    last step); a hangup also ends the child after a clean stop's time. A signal that was ignored
    when the guard started (nohup) stays ignored, by the guard and by its child.
    """
    role = os.environ.get("DMLC_ROLE", "?")
    child, pending = [], []

    def forward(signum, frame):
        """Pass signum on to a worker child, or keep it until the child exists."""
        if not child:
            pending.append(signum)
            return
        if role == "worker":
            child[0].send_signal(signum)
        # A hangup: the connection to the launcher is gone, and with it the launcher's stop. The
        # child has the clean stop's time, then ends, whatever it waits for.
        if signum == signal.SIGHUP:
            timer = threading.Timer(STOPPING_S, lambda: child[0].poll() is None and child[0].kill())
            timer.daemon = True
            timer.start()
    # Before the child exists: a signal then is passed on as soon as it does.
    for signum in _SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, forward)
    child.append(subprocess.Popen(command, env=dict(os.environ, **{TAG: tag, CHILD: "1"})))
    for signum in pending:
        forward(signum, None)
    code = child[0].wait()
    task = os.environ.get("DMLC_TASK_ID", "")
    say_to_launcher(f"{MARK} {tag} role={role} task={task} host={socket.gethostname()} "
                    f"pid={child[0].pid} code={code}")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if sys.argv[1:2] == ["--guard"]:
        # The report is out: no signal in Python's own shutdown may change the guard's exit code.
        os._exit(code)
    # The tracker is in a session of its own, which only harness.launch signals.
    sys.exit(code)
