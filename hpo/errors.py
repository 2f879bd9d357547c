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
    """A study or sweep file, or a command-line override, is invalid (exit code 2).

    One error may carry more problems of the same input (``also``), so a user fixes a
    file in one go: ``str()`` is one line per problem, ``file:line: field: message``.
    """

    exit_code = 2
    MAX_SHOWN = 10

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        field: str | None = None,
        line: int | None = None,
        also: list[ConfigError] | None = None,
    ):
        self.message = message
        self.path = path
        self.field = field
        self.line = line
        self.also = list(also or [])
        super().__init__(message)

    @classmethod
    def join(cls, problems: list[ConfigError]) -> ConfigError:
        """One error for several problems, in file order, at most ``MAX_SHOWN`` of them."""
        ordered = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        first, rest = ordered[0], ordered[1 : cls.MAX_SHOWN]
        if len(ordered) > cls.MAX_SHOWN:
            hidden = len(ordered) - cls.MAX_SHOWN
            more = f"{hidden} more problem(s) not shown; fix these first"
            rest.append(cls(more, path=first.path))
        return cls(first.message, path=first.path, field=first.field, line=first.line, also=rest)

    @property
    def problems(self) -> list[ConfigError]:
        """This problem and the others reported with it."""
        return [self, *self.also]

    def one_line(self) -> str:
        """``file:line: field: message`` for this problem alone."""
        file = f"{self.path}:{self.line}" if self.path and self.line else self.path
        where = ": ".join(part for part in (file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message

    def __str__(self) -> str:
        return "\n".join(problem.one_line() for problem in self.problems)


class FieldValueError(ValueError):
    """A model validator's complaint about one field, so the error names (and finds) it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class StorageError(HpoError):
    """The storage cannot be opened or reached (exit code 1)."""


class ClaimLost(StorageError):
    """The study lock's database session died while a trial was claimed: the storage's
    failure, not the trainer's (the trial is failed as ``storage`` and retried)."""


class StudyStateError(HpoError):
    """The stored study disagrees with the study file, e.g. a changed search space (exit 2)."""

    exit_code = 2


class FailureBudgetExceeded(HpoError):
    """More trials failed than ``budget.max_failures`` allows (exit code 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, as Kubernetes and Slurm send it before SIGKILL (exit code 143).

    A KeyboardInterrupt, so that SIGTERM does everything Ctrl-C does: Optuna fails the
    running trial (hpo records it as ``interrupted``), every ``except KeyboardInterrupt``
    stops the same way, and ``catch=(Exception,)`` does not swallow it. Its own exit code,
    128 + SIGTERM, is what a process stopped by SIGTERM exits with, so schedulers and
    scripts tell "stopped by the cluster" (143) from "stopped by a person" (130).
    """

    exit_code = 143


def missing_extra(module: str, extra: str, needed_by: str) -> str | None:
    """Why ``needed_by`` cannot run on this install, naming the extra of hpo-finetune that
    brings ``module`` (README "Install"); None when ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return None
    fix = f"pip install 'hpo-finetune[{extra}]'"
    return f"{needed_by} needs {module}, which is not installed; {fix}"
