"""User-facing errors: every problem a user can cause is raised as one of these, with a hint on what to do.

The CLI renders them as one readable line (no traceback unless --debug). Torch-free on purpose: the runtime uses it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input, configuration or environment, with a hint for the user."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(UserError):
    """A dataset file is malformed: the message names the file, the row and the problem."""

    def __init__(self, path, problem: str, row: int | None = None, hint: str | None = None):
        where = f"{path}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {problem}", hint)
        self.path = str(path)
        self.row = row
        self.problem = problem


class BundleError(UserError):
    """A bundle is missing, incomplete, tampered with or of an incompatible version."""
