"""The ways a run ends early: each error is one line for the user, with the exit code main() returns."""


class RunError(Exception):
    """A problem the user can act on: bad input, exit code 2."""

    exit_code = 2


class ConfigError(RunError, ValueError):
    """A flag, or a combination of flags, that cannot work."""


class WriteError(RunError):
    """The OS refused a write (disk full, permissions): the file and the OS's reason; exit code 1."""

    exit_code = 1


class Diverged(RunError):
    """Training produced a non-finite loss or parameter; exit code 3."""

    exit_code = 3


class Interrupted(RunError):
    """A signal stopped the run (after saving, where it could); exit code 130, as a shell reports Ctrl-C."""

    exit_code = 130
