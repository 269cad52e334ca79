"""One exception type for every failure a user can cause or fix.

The CLI turns an `E4EError` into one line on stderr and a non-zero exit (no traceback
unless `E4E_DEBUG=1`). Library code raises it with a message that says what went wrong
and, where possible, what to do about it.
"""


# Exit codes of the `e4e` command (the README's "Exit codes" table)
OK, FAILURE, USAGE, MISSING_WEIGHTS, INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    OK: "success",
    FAILURE: "failure (bad input, a failed download, some inputs of a batch failed)",
    USAGE: "usage error (unknown option or command, bad option value, missing argument)",
    MISSING_WEIGHTS: "a weights file is missing (the message names the download to run)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}


class E4EError(Exception):
    """A user-facing error: `str(err)` is one line that explains the problem."""

    exit_code = FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class MissingWeightsError(E4EError):
    """A weights file is not present; the message names the download to run."""

    exit_code = MISSING_WEIGHTS


class Cancelled(Exception):
    """A decode stopped between two blocks because its caller's `should_stop` said so (a newer
    request made it stale). Not an `E4EError`: nothing went wrong, and nothing is to be shown."""
