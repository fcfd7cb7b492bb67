"""Every way a run ends early: one line for the user, with the exit code that main() returns."""
import signal
import sys


class RunError(Exception):
    """A problem the user can act on: bad input, exit code 2."""

    exit_code = 2


class ConfigError(RunError, ValueError):
    """A flag, a combination of flags or an environment variable that cannot work."""


class DataError(RunError):
    """Data files that are missing, damaged or not of the kind asked for."""


class OutputError(RunError):
    """An output path that cannot be written, or that collides with another output."""


class BusyError(RunError):
    """A prefix or a metrics file that another process is using now."""


class CheckpointError(RunError):
    """A checkpoint that is missing, torn, or does not fit this run."""


class DeviceError(RunError):
    """A device that cannot be used as asked."""


class MemoryBudgetError(RunError):
    """The configuration needs more memory than the machine or the process limit allows."""


class WriteError(RunError):
    """The OS refused a write (disk full, permissions): the file and the OS's reason."""
    # Exit code 1.

    exit_code = 1


class Diverged(RunError):
    """Training produced a non-finite loss or parameter; exit code 3."""

    exit_code = 3


class Interrupted(RunError):
    """A signal stopped the run, after saving where it could: exit code 130, as for Ctrl-C."""
    # A closed stdout stops it as SIGPIPE would: quietly, with exit code 141, as a shell says.

    def __init__(self, message, signum=None, quiet=False):
        super().__init__(message)
        # quiet: nothing to say (another worker says it, or stdout is closed).
        self.signum, self._quiet = signum, quiet

    @property
    def quiet(self):
        return self._quiet or self.signum == signal.SIGPIPE

    @property
    def exit_code(self):
        return 141 if self.signum == signal.SIGPIPE else 130


def mxnet_reason(error):
    """The line of an MXNetError's text that says what failed, without MXNet's own stack trace."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line for line in lines if not line.startswith(("[bt]", "File ", "Traceback", "Stack trace"))
    ]
    reason = (useful or ["(MXNet gave no reason)"])[-1]
    return reason.split("MXNetError: ", 1)[-1][:300]


class reported:
    """Within it, every way a run can end early becomes one line on stderr."""
    # And .code its exit code.
    # What no check foresaw (MemoryError, OSError, MXNet's own errors) is still one line; any other
    # exception is a bug of ours, and its traceback is what helps.

    def __init__(self, program):
        self.program, self.code = program, 0

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from harness import signals
        if error is None:
            return False
        if isinstance(error, (signals.Stop, Interrupted)):
            piped = getattr(error, "signum", None) == signal.SIGPIPE
            self.code = 128 + signal.SIGPIPE if piped else 130
            line = None if piped or getattr(error, "quiet", False) else f"{self.program}: {error}"
        elif isinstance(error, RunError):
            self.code, line = error.exit_code, f"{self.program}: error: {error}"
        elif isinstance(error, (MemoryError, OSError)):
            self.code = 1
            line = f"{self.program}: error: {type(error).__name__}: {error}".splitlines()[0][:300]
        elif type(error).__name__ == "MXNetError":
            self.code, line = 1, f"{self.program}: error: MXNet: {mxnet_reason(error)}"
        elif signals.received() is not None:
            # A signal's Stop raised inside an import can come out as another exception (numpy's
            # turns it into an ImportError): the run still ended on that signal.
            return self.__exit__(signals.Stop, signals.Stop(signals.received()), None)
        else:
            return False
        if line:
            print(line, file=sys.stderr)
        return True
