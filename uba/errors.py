"""Exceptions that separate a user's mistake from a bug.

The CLI prints a ``UserError`` as one line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: bad input, missing partition, bad setting."""


class BundleError(UserError):
    """A model bundle that is missing, incomplete, tampered with or incompatible."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, else its type's name: Polars appends hint
    paragraphs to its errors, and a one-line error (CLI, log line, API detail) quotes only
    the problem."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
