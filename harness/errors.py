"""Every way a run ends early: one line for the user, with the exit code that main() returns."""
import sys

# The exit codes, the one table of them (docs/reliability.md says when each is given):
# the run did what was asked;
SUCCESS = 0
# it failed in a way no check could foresee: a write the OS refused, divergence, MXNet's own error;
FAILED = 1
# it was refused before anything happened: a flag, a file, an environment variable;
REFUSED = 2
# a signal stopped it (128 + SIGINT, as a shell reports Ctrl-C), after saving what it could.
STOPPED = 130


class RunError(Exception):
    """A problem the user can act on: bad input, exit code REFUSED."""

    exit_code = REFUSED


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
    """The OS refused a write (disk full, permissions): the file and the OS's reason; FAILED."""

    exit_code = FAILED


class Diverged(RunError):
    """Training produced a non-finite loss or parameter: FAILED, with the epoch and the flag."""

    exit_code = FAILED


class Interrupted(BaseException):
    """The one meaning of "stopped by a signal": exit code STOPPED, after saving what could be.

    Raised where the run is when a signal arrives outside the training loop (harness/signals.py),
    and by the loop after the step in progress is saved (harness/run.py); a closed stdout stops the
    run as a SIGPIPE would. A BaseException, as KeyboardInterrupt is, so that no `except Exception`
    takes it. message is the whole line; signum the signal (None: one that another worker had);
    quiet, that another process says the line (a worker of rank > 0, a parameter server).
    """

    exit_code = STOPPED

    def __init__(self, message, signum=None, quiet=False):
        super().__init__(message)
        self.signum, self.quiet = signum, quiet


def mxnet_reason(error):
    """The line of an MXNetError's text that says what failed, without MXNet's own stack trace."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [
        line for line in lines if not line.startswith(("[bt]", "File ", "Traceback", "Stack trace"))
    ]
    reason = (useful or ["(MXNet gave no reason)"])[-1]
    return reason.split("MXNetError: ", 1)[-1][:300]


class reported:
    """Within it, every way a run can end early becomes one line on stderr, and .code its exit code.

    What no check foresaw (MemoryError, OSError, MXNet's own errors) is still one line; any other
    exception is a bug of ours, and its traceback is what helps. SystemExit and KeyboardInterrupt
    pass through as they are.
    """

    def __init__(self, program):
        """program: the name the lines start with."""
        self.program, self.code = program, SUCCESS

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """Say error's one line and keep its code; let through what is no error of the run's."""
        from harness import signals
        if error is None or not isinstance(error, (Exception, Interrupted)):
            return False
        if isinstance(error, Interrupted):
            self.code, line = error.exit_code, None if error.quiet else f"{self.program}: {error}"
        elif isinstance(error, RunError):
            self.code, line = error.exit_code, f"{self.program}: error: {error}"
        elif isinstance(error, (MemoryError, OSError)):
            self.code = FAILED
            line = f"{self.program}: error: {type(error).__name__}: {error}".splitlines()[0][:300]
        elif type(error).__name__ == "MXNetError":
            self.code, line = FAILED, f"{self.program}: error: MXNet: {mxnet_reason(error)}"
        elif signals.received() is not None:
            # A signal's Interrupted raised inside an import can come out as another exception
            # (numpy's turns it into an ImportError): the run still ended on that signal.
            return self.__exit__(Interrupted, signals.interrupted(signals.received()), None)
        else:
            return False
        if line:
            # One write, line and newline: under a launcher, other processes share this pipe.
            sys.stderr.write(line + "\n")
        return True
