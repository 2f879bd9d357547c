"""Errors hpo raises on purpose.

Every message says what is wrong, where (file and field, or trial number) and how to
fix it. The CLI turns an :class:`HpoError` into one line on stderr and its
``exit_code``; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every error hpo reports to a user."""

    exit_code = 1


class ConfigError(HpoError):
    """A study or sweep file, or a command-line override, is invalid (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        self.path = path
        self.field = field
        where = ": ".join(part for part in (path, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class StorageError(HpoError):
    """The storage cannot be opened or reached (exit code 1)."""


class StudyStateError(HpoError):
    """The stored study disagrees with the study file, e.g. a changed search space (exit 2)."""

    exit_code = 2


class FailureBudgetExceeded(HpoError):
    """More trials failed than ``budget.max_failures`` allows (exit code 1)."""
