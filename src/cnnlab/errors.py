"""Error types that decide how the command line exits.

``UserError``: bad input (config, data, arguments). The CLI prints its message as one paragraph
and exits with status 2, no traceback. ``RunFailure``: something went wrong while running a valid
experiment (a NaN loss, a killed worker); exit status 1.
"""

from __future__ import annotations

# Messages are one paragraph: the CLI shows newlines in them escaped (a newline in a path must not
# split the message), except before this prefix, which marks quoted output of another process
# (the last lines a failed training process printed).
QUOTE = "\n  | "


def quote_lines(lines: list[str]) -> str:
    """Another process's output lines, for the end of a message: each on its own line, prefixed."""
    return "".join(QUOTE + line for line in lines)


# Control characters (an escape sequence or a newline in a file name, a NUL) are shown escaped: a
# message must not recolour or rewrite the user's terminal, nor split into several paragraphs. Only
# the newlines that start quoted lines of another process's output (errors.QUOTE) stay.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0, 32), 127)} | {ord("\n"): "\\n", ord("\t"): "\\t"}


def printable(text: object) -> str:
    """``text`` safe to print as one paragraph on a terminal (control characters escaped)."""
    escaped_quote = QUOTE.translate(_CONTROL)
    return str(text).translate(_CONTROL).replace(escaped_quote, QUOTE)


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, clipped to about ``limit`` characters: a message quotes what
    the user gave, and a megabyte-long name must not become a megabyte-long message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as text"
    return f"{text[:limit - 20]}... ({size})"


class UserError(Exception):
    """Bad input: the message says what, where, and what is allowed. Exit status 2."""


class RunFailure(Exception):
    """A valid experiment failed while running. Exit status 1."""


class ReportedUserError(UserError):
    """Bad input that a child process (rank 0 of a launched run) has already described on this
    terminal: the CLI exits with status 2 without printing the paragraph a second time. The message
    is still complete for callers of the Python API."""
