"""Signals: SIGINT, SIGTERM and SIGHUP end a run with one line and exit code 130, at any moment.

Outside training, a signal stops the run where it is (clean-up handlers still run). Inside the training loop,
it is only recorded, so the loop can finish its step and save it first. A second signal ends the process at
once. Imports nothing heavy: the entry script installs this on its first line, before MXNet loads.
"""
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed
EXIT_CODE = 130


class Stop(BaseException):
    """Raised by a signal outside the training loop; a BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name} {_State.stage}")
        self.signum = signum


class _State:
    deferred = False   # inside the training loop: record, don't raise
    received = None    # the first signal's number
    program = "train_mnist.py"
    stage = "before training began; nothing saved"  # what a stop now means, for its one line
    guarded = False    # main() is running and will catch Stop


def install(program="train_mnist.py"):
    """Handle the signals from now on in this process (from the main thread only, as Python allows)."""
    _State.program = program
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def _handle(signum, frame):
    if _State.received is not None:
        # The second signal: the user insists. Nothing more is saved; a half-written file is only ever a
        # temporary one, and the next save into its folder removes it.
        os.write(2, f"\n{_State.program}: stopped by a second {name(signum)}; exiting now\n".encode())
        os._exit(EXIT_CODE)
    _State.received = signum
    if not _State.guarded:  # before main() runs (the imports): nothing to clean up, and nobody to catch Stop
        os.write(2, f"{_State.program}: stopped by {name(signum)} {_State.stage}\n".encode())
        os._exit(EXIT_CODE)
    if not _State.deferred:
        raise Stop(signum)


class deferred:
    """Inside this block a signal is only recorded: the loop checks `pending` between steps.

    It installs the handlers for its duration if nothing has (train() called from a user's own script).
    """

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
        _State.received, _State.deferred = None, True
        return self

    def __exit__(self, *exc_info):
        _State.deferred = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def pending(self):
        """The number of the signal received inside the block, or None."""
        return _State.received


def guard():
    """From now on a signal outside the loop raises Stop, which main() catches (clean-up handlers then run)."""
    _State.guarded = True


def set_stage(text):
    """Say what a signal outside the loop now stops, for its message: 'after training; ...'."""
    _State.stage = text


def name(signum):
    """SIGINT for signal.SIGINT's number."""
    return signal.Signals(signum).name
