"""Signals: SIGINT, SIGTERM and SIGHUP end a run with one line and exit code 130, at any moment."""
# While main() runs, a signal raises Stop where the run is (clean-up handlers still run), except
# inside the training loop, where it is only recorded, so that the loop can finish its step and save
# it first. Before main() runs (the imports) and after it returns, a signal ends the process at once
# with its line. A second signal always ends the process at once: a thread watches the signals as
# they arrive, so this holds even while the main thread waits inside MXNet, where Python's own
# handlers cannot run. Imports nothing heavy: the entry script installs this on its first line,
# before MXNet loads.
import os
import signal
import sys
import threading

# SIGHUP: the terminal closed.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODE = 130


class Stop(BaseException):
    """Raised by a signal outside the training loop."""
    # A BaseException, so no `except Exception` takes it.

    def __init__(self, signum):
        super().__init__(f"stopped by {name(signum)} {_State.stage}")
        self.signum = signum


class _State:
    # Inside the training loop: record, don't raise.
    deferred = False
    # The first signal's number.
    received = None
    # How many signals have arrived, counted by the watcher.
    count = 0
    program = "train_mnist.py"
    # What a stop now means, for its one line.
    stage = "before training began; nothing saved"
    # main() is running and will catch Stop.
    guarded = False
    exiting = threading.Lock()


def install(program="train_mnist.py"):
    """Handle the signals from now on in this process."""
    # From the main thread only, as Python allows.
    _State.program = program
    if threading.current_thread() is not threading.main_thread():
        return
    # A Stop raised where Python cannot pass it on (a weakref callback, a __del__) is lost, not
    # printed as a traceback: the next check() raises it again.
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: (None if isinstance(unraisable.exc_value, Stop)
                                             else default_hook(unraisable))
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_end,), daemon=True, name="signal-watcher").start()


def _watch(read_end):
    # Each signal that arrives writes its number here, at the C level, whatever the main thread is
    # doing.
    while True:
        for signum in os.read(read_end, 16):
            if signum not in SIGNALS:
                continue
            _State.count += 1
            if _State.received is None:
                _State.received = signum
            if _State.count >= 2:
                exit_now(f"stopped by a second {name(signum)}; exiting now")


def exit_now(message):
    """Print message on stderr and end the process with EXIT_CODE, once, from any thread."""
    if _State.exiting.acquire(blocking=False):
        os.write(2, f"{_State.program}: {message}\n".encode())
        os._exit(EXIT_CODE)


def _handle(signum, frame):
    if _State.received is None:
        _State.received = signum
    if _State.count >= 2:
        return
    if not _State.guarded:
        # Before main() runs, or after it returned: nothing to clean up, and nobody to catch Stop.
        exit_now(f"stopped by {name(signum)} {_State.stage}")
    if not _State.deferred:
        raise Stop(signum)


class deferred:
    """Inside this block a signal is only recorded: the loop checks `pending` between steps."""
    # It installs the handlers for its duration if nothing has (train() called from a user's own
    # script).

    def __enter__(self):
        self._previous = {}
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(SIGNALS[0]) is not _handle
        ):
            self._previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
        # A signal that came before the block is not forgotten: the first step's check sees it.
        _State.deferred = True
        return self

    def __exit__(self, *exc_info):
        _State.deferred = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def pending(self):
        """The number of the signal received inside the block, or None."""
        return _State.received


class guard:
    """While main() runs: a signal outside the loop raises Stop, which main() catches."""

    def __enter__(self):
        _State.guarded = True
        return self

    def __exit__(self, *exc_info):
        _State.guarded = False


def check():
    """Raise Stop if a signal came and its raise was lost (Python ignores it in some callbacks)."""
    if _State.received is not None and _State.guarded and not _State.deferred:
        raise Stop(_State.received)


def stop_for(signum):
    """Act as if signum had arrived (a closed stdout is SIGPIPE)."""
    # Recorded in the loop, else Stop.
    if _State.received is None:
        _State.received = signum
    if _State.guarded and not _State.deferred:
        raise Stop(signum)


def received():
    """The first signal's number since the process started, or None."""
    return _State.received


def stage():
    """What a signal outside the loop now stops."""
    return _State.stage


def set_stage(text):
    """Say what a signal outside the loop now stops, for its message: 'after the last epoch...'."""
    _State.stage = text


def name(signum):
    """SIGINT for signal.SIGINT's number."""
    return signal.Signals(signum).name
