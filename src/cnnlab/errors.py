"""Error types that decide how the command line exits.

``UserError``: bad input (config, data, arguments). The CLI prints its message as one paragraph
and exits with status 2, no traceback. ``RunFailure``: something went wrong while running a valid
experiment (a NaN loss, a killed worker); exit status 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what, where, and what is allowed. Exit status 2."""


class RunFailure(Exception):
    """A valid experiment failed while running. Exit status 1."""


class ReportedUserError(UserError):
    """Bad input that a child process (rank 0 of a launched run) has already described on this
    terminal: the CLI exits with status 2 without printing the paragraph a second time. The message
    is still complete for callers of the Python API."""
