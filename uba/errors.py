"""Exceptions that separate a user's mistake from a bug.

The CLI prints a ``UserError`` as one line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: bad input, missing partition, bad setting."""


class BundleError(UserError):
    """A model bundle that is missing, incomplete, tampered with or incompatible."""
