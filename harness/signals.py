"""Signals: SIGINT, SIGTERM and SIGHUP end a process with one line and exit code 130, at any moment.

The entry script calls install() on its first line, before anything heavy loads, and ends by run(),
which never lets Python's own shutdown run: Python would put the default handlers back while MXNet
tears down, and a signal then would kill the process without a word. So from install() to the
process's last instruction (os._exit), every signal that the process handles goes through here:

- before main() runs (the imports), a signal ends the process at once, with its line: there is
  nothing to clean up yet;
- while main() runs, a signal raises errors.Interrupted where the run is, so that clean-up handlers
  run; inside the training loop (`deferred`) it is only recorded, and the loop saves its step first;
- after main() returns, run() finishes what Python's shutdown would have done (garbage, atexit),
  then ends the process: with the signal's line and 130 if one came and main() had succeeded;
- a second signal ends the process at once, whatever the main thread is doing: a thread watches the
  signals as they arrive, so this holds even while the main thread waits inside MXNet, where
  Python's own handlers cannot run.

A signal that was ignored when the process started (`nohup` ignores SIGHUP, a shell's `&` SIGINT)
stays ignored. A parameter server or scheduler of a dist_sync job (DMLC_ROLE) serves its workers
until they stop: its signal asks harness.launch to stop the job, and it ends quietly when the job
does. Imports nothing heavy.
"""
import atexit
import gc
import os
import signal
import sys
import threading

from harness.errors import FAILED, STOPPED, SUCCESS, Interrupted

# SIGHUP: the terminal closed.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a process of a job started by harness.launch tells the launcher on its stdout, on lines of
# their own: a serving process's signal (the job should stop), and a worker's training loop as it
# begins and ends (before it begins, no step can be saved: a stop ends the job at once).
STOP_REQUEST = "@@harness.launch-stop"
LOOP = "@@harness.launch-loop"
# Set by harness.launch in every process of its job.
JOB_TAG = "LAUNCH_JOB_TAG"


class _State:
    """What this process's signals have done so far, and what a stop would mean now."""

    program = "train_mnist.py"
    # The signals this process handles: SIGNALS but those ignored when it started.
    handled = ()
    # The first signal's number, and how many have arrived (counted by the watcher).
    received = None
    count = 0
    # Python's handler has run once: it acts on the first signal alone.
    seen = False
    # What a stop now means, for its one line.
    stage = "before training began; nothing saved"
    # main() is running and will catch Interrupted.
    guarded = False
    # Inside the training loop, or after main() returned: record, don't raise.
    deferred = False
    # A parameter server or scheduler: it serves until the job stops, and says nothing.
    serving = False
    # A worker of harness.launch's job: its signals are one stop. The batch system (Slurm signals
    # every process), its guard and the launcher each pass one on, and the launcher ends a stop
    # that takes too long.
    one_stop = False
    # Called before the process ends at once (the launcher ends its job's processes).
    at_exit_now = None
    exiting = threading.Lock()


def install(program="train_mnist.py"):
    """Take over this process's standard streams and its signals; from the main thread, once.

    program names the process in its lines.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    _State.program = program
    _State.serving = os.environ.get("DMLC_ROLE") in ("server", "scheduler")
    _State.one_stop = os.environ.get("DMLC_ROLE") == "worker" and bool(os.environ.get(JOB_TAG))
    _hold_standard_streams()
    # An Interrupted raised where Python cannot pass it on (a weakref callback, a __del__) is lost,
    # not printed as a traceback: check() raises it again.
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: (
        None if isinstance(unraisable.exc_value, Interrupted) else default_hook(unraisable))
    _State.handled = tuple(s for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)
    for signum in _State.handled:
        signal.signal(signum, _handle)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_end,), daemon=True, name="signal-watcher").start()


def _hold_standard_streams():
    """Put /dev/null on a standard stream that was closed at start (`>&-`), before any file opens.

    Else the first file opened would take its number, and whatever prints would write into it.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        held = os.open(os.devnull, os.O_RDWR)
        if held != fd:
            os.dup2(held, fd)
            os.close(held)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _watch(read_end):
    """Count each signal as it arrives, written here at the C level, whatever the main thread does.

    The first, before main() runs, ends the process; a serving process's asks for the job's stop;
    the second ends the process, but in a worker of harness.launch's job.
    """
    while True:
        for signum in os.read(read_end, 16):
            if signum not in _State.handled:
                continue
            _State.count += 1
            if _State.received is None:
                _State.received = signum
            if _State.serving:
                _request_stop(signum)
            if _State.count >= 2 and not _State.one_stop:
                exit_now(None if _State.serving else
                         f"stopped by a second {name(signum)}; exiting now")
            elif _State.serving or _State.count >= 2:
                continue
            elif not _State.guarded and not _State.deferred:
                # Before main() runs: nothing to clean up, and nobody to catch Interrupted.
                exit_now(_line(signum))


def _handle(signum, frame):
    """Python's handler, in the main thread: record the signal; raise Interrupted for the first.

    Only for the first this handler sees (the watcher may have seen it first), and only where
    main() will catch it and the loop does not defer it: a later one is the watcher's.
    """
    first, _State.seen = not _State.seen, True
    if _State.received is None:
        _State.received = signum
    if not first or _State.serving or _State.deferred:
        return
    if not _State.guarded:
        exit_now(_line(signum))
        return
    raise interrupted(signum)


def _line(signum):
    """The line a stop by signum says now (None: this process says none)."""
    return None if _State.serving else f"stopped by {name(signum)} {_State.stage}"


def interrupted(signum):
    """The Interrupted that signum means now, outside the training loop."""
    return Interrupted(_line(signum), signum, quiet=_State.serving)


def _request_stop(signum):
    """Ask harness.launch, if it started this process, to stop the job: this process serves it.

    The request says which signal of the process's this is: after a second, it ends at once.
    """
    tag = os.environ.get(JOB_TAG)
    if tag:
        role = os.environ.get("DMLC_ROLE", "?")
        say_to_launcher(f"{STOP_REQUEST} {tag} {name(signum)} {_State.count} {role} "
                        f"{os.uname().nodename}")


def say_to_launcher(line):
    """Write a line for harness.launch on stdout in one write, whatever Python's buffer holds.

    The job's processes share one pipe. Python writes print()'s text and its newline apart when
    unbuffered (PYTHONUNBUFFERED, -u), and another process's line could come in between them.
    """
    try:
        os.write(1, (line + "\n").encode())
    except OSError:
        pass


def call_before_exit_now(function):
    """Have function() called, in whichever thread, before the process ends at once on a signal."""
    _State.at_exit_now = function


def exit_now(message):
    """End the process at once with STOPPED and message (None: quietly), once, from any thread."""
    if not _State.exiting.acquire(blocking=False):
        return
    if _State.at_exit_now is not None:
        try:
            _State.at_exit_now()
        except BaseException:
            pass
    if message:
        try:
            os.write(2, f"{_State.program}: {message}\n".encode())
        except OSError:
            pass
    os._exit(STOPPED)


def run(main):
    """Run main(), then end the process with the exit code it returns, never by Python's shutdown.

    What the shutdown would do that matters is done first: garbage is collected (MXNet's objects
    with it: a dist_sync worker's last barrier with its peers), the atexit functions run, the
    streams are flushed. A signal meanwhile is recorded: if main() had succeeded, the process then
    ends with the signal's line and STOPPED; else with main()'s code, whose line is said.
    """
    try:
        code = main()
    except SystemExit as error:
        code = _exit_code(error.code)
    except BaseException:
        # A bug: its traceback, as Python would print it.
        sys.excepthook(*sys.exc_info())
        code = FAILED
    _State.deferred, _State.guarded = True, False
    gc.collect()
    atexit._run_exitfuncs()
    _flush()
    if not _State.exiting.acquire(blocking=False):
        # exit_now is ending the process in another thread.
        threading.Event().wait()
    if code == SUCCESS and _State.received is not None:
        code, line = STOPPED, _line(_State.received)
        if line:
            _say_error(line)
    os._exit(code)


def _exit_code(code):
    """The exit code of SystemExit(code), as Python's own shutdown would give it."""
    if code is None:
        return SUCCESS
    if isinstance(code, int):
        return code & 0xFF
    _say_error(str(code), prefixed=False)
    return FAILED


def _say_error(line, prefixed=True):
    """Write line on stderr in one write, after the program's name if prefixed."""
    try:
        os.write(2, (f"{_State.program}: {line}" if prefixed else line).encode() + b"\n")
    except OSError:
        pass


def _flush():
    """Flush Python's stdout and stderr, whatever has become of them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


class deferred:
    """Inside this block a signal is only recorded: the loop checks `pending` between steps.

    It installs the handlers for its duration if nothing has (train() called from a user's own
    script). In a worker of a job that harness.launch started, it tells the launcher that the loop
    begins and ends.
    """

    def __enter__(self):
        """From now on, record a signal; install the handlers if nothing has."""
        self._previous = {}
        if (
            threading.current_thread() is threading.main_thread()
            and not _State.handled
        ):
            self._previous = {
                signum: signal.signal(signum, _handle) for signum in SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN
            }
        # A signal that came before the block is not forgotten: the first step's check sees it.
        self._outer, _State.deferred = _State.deferred, True
        self._loop("in")
        return self

    def __exit__(self, *exc_info):
        """Back to what a signal meant before the block, and to the handlers it replaced."""
        _State.deferred = self._outer
        self._loop("out")
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @staticmethod
    def _loop(where):
        """Tell harness.launch, in a worker of its job, that the training loop is in or out."""
        tag = os.environ.get(JOB_TAG)
        if tag and os.environ.get("DMLC_ROLE") == "worker":
            say_to_launcher(f"{LOOP} {tag} {where}")

    @property
    def pending(self):
        """The number of the signal received inside the block, or None."""
        return _State.received


class guard:
    """While main() runs: a signal outside the loop raises Interrupted, which main() catches."""

    def __enter__(self):
        _State.guarded = True
        return self

    def __exit__(self, *exc_info):
        _State.guarded = False


class held:
    """Inside this block a signal is only recorded; check() after it raises what came.

    For a step that must finish once begun: MXNet's engine starts inside one, with stderr
    redirected; stopped halfway, MXNet's own exit would start the engine again, and say so.
    """

    def __enter__(self):
        self._outer, _State.deferred = _State.deferred, True
        return self

    def __exit__(self, *exc_info):
        _State.deferred = self._outer
        if (_State.received is not None and not _State.guarded and not _State.deferred
                and not _State.serving):
            # Nobody would catch Interrupted: end as a signal before main() does.
            exit_now(_line(_State.received))


def check():
    """Raise Interrupted if a signal came and its raise was lost (as in a callback of Python's)."""
    if (_State.received is not None and _State.guarded and not _State.deferred
            and not _State.serving):
        raise interrupted(_State.received)


def stop_for(signum):
    """Act as if signum had arrived: recorded in the loop, else raised."""
    if _State.received is None:
        _State.received = signum
    if _State.guarded and not _State.deferred:
        raise interrupted(signum)


def received():
    """The first signal's number since the process started, or None."""
    return _State.received


def set_stage(text):
    """Say what a signal outside the loop now stops, for its message: 'after the last epoch...'."""
    _State.stage = text


def name(signum):
    """SIGINT for signal.SIGINT's number; a closed stdout, for SIGPIPE, says so."""
    if signum == signal.SIGPIPE:
        return "a closed stdout (SIGPIPE)"
    return signal.Signals(signum).name
