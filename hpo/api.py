"""The Python API: what a script or notebook calls in place of the command line.

:func:`optimize` is ``hpo run`` for Python: a study file or the same content as a
mapping, ``--set``-style overrides, optionally a Python trainer in place of
``trainer.ref``; it returns a :class:`StudyResult` holding the ``optuna.Study``, the
run's :class:`~hpo.budget.Summary` and the validated config. :func:`best`,
:func:`pareto_front` and :func:`study_status` are ``hpo best`` / ``hpo status`` for Python
(not ``status``: that is the module :mod:`hpo.status`): plain data, the same as those
commands print with ``--json`` (the command line calls the same functions), ranked by the
one rule of :mod:`hpo.ranking`.

Bad input raises :class:`~hpo.errors.ConfigError` (its one line per problem names the
file, the line and the field), before anything is written; other failures raise the
:class:`~hpo.errors.HpoError` subclasses the command line turns into exit codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.budget import Summary
from hpo.config import StudyConfig, load_study
from hpo.contract import Trainer
from hpo.errors import HpoError
from hpo.view import StudyView, open_view

__all__ = ["StudyResult", "best", "optimize", "pareto_front", "study_status"]

# What a Python caller may name a study with: a study file, its content as a mapping, a
# config already loaded, or what optimize returned.
Study = str | os.PathLike[str] | Mapping[str, Any] | StudyConfig
Overrides = Sequence[str] | Mapping[str, Any]


@dataclass(frozen=True)
class StudyResult:
    """What :func:`optimize` returns: the Optuna study, the run's summary, the config.

    Attributes:
        study: the ``optuna.Study`` in the study's storage (Optuna's plots,
            ``trials_dataframe()``...). Its ``best_trial`` ignores the study file's
            constraints; :meth:`best` applies them.
        summary: trials by state, what this call ran and the best trial (or the front),
            as ``hpo run`` closes with.
        config: the validated study (overrides applied).
    """

    study: Any
    summary: Summary
    config: StudyConfig

    def best(self) -> dict[str, Any] | None:
        """The best trial as :func:`best` gives it, read from the storage now."""
        return best_data(self._view())

    def pareto_front(self) -> list[dict[str, Any]]:
        """The feasible Pareto front as :func:`pareto_front` gives it, read now."""
        return front_data(self._view())

    def status(self) -> dict[str, Any]:
        """Where the study stands as :func:`study_status` gives it, read now."""
        return status_data(self._view())

    def _view(self) -> StudyView:
        return StudyView(self.study, self.config)


def optimize(
    study: str | os.PathLike[str] | Mapping[str, Any],
    *,
    trainer: Callable[..., Any] | Trainer | None = None,
    overrides: Overrides | None = None,
    workers: int = 1,
    devices: Sequence[str] | None = None,
    allow_space_change: bool = False,
    progress: bool = True,
) -> StudyResult:
    """Run a study until its budget is met (``hpo run`` for Python); returns the study.

    Like ``hpo run``: the budget is the study's total, so calling it again resumes an
    interrupted study and returns at once for a finished one (``summary.already_done``).

    Args:
        study: a study file, or its content as a mapping (the same validation and
            messages; relative paths in a mapping resolve against the working directory).
        trainer: a function ``train(ctx) -> dict[str, float]`` (see :mod:`hpo.trainer`)
            or an :class:`hpo.Trainer` with hooks, run instead of importing
            ``trainer.ref`` (which may then be left out; the study records the function's
            ``module:name``). With ``workers > 1`` each worker process imports it by
            name: a function from a ``.py`` module works, one defined in a notebook, a
            lambda or a nested function is refused before anything runs.
        overrides: ``["budget.n_trials=20", "sampler={type: random}"]`` as ``--set``
            takes them (values are YAML), or a mapping ``{"budget.n_trials": 20}`` of
            Python values.
        workers: worker processes on this machine (1 runs in this process).
        devices: GPU ids, one worker per device; None uses every visible GPU, [] none.
        allow_space_change: resume although ``search_space`` differs from the stored study.
        progress: show the study's progress while it runs: a live area and one line per
            event on stderr (a terminal as ``hpo run`` shows it; in Jupyter, a cell output
            redrawn in place and plain lines). Off, hpo's log records go wherever the
            caller's ``logging`` sends them.

    Returns:
        The Optuna study, the run's summary and the validated config.

    Raises:
        ConfigError: the study file, mapping, overrides or trainer is invalid (one line
            per problem, naming the file and field); nothing was written.
        StudyStateError: the stored study disagrees (a changed search space).
        FailureBudgetExceeded: ``budget.max_failures`` trials failed in this run.
        StorageError: the storage cannot be opened.
    """
    from hpo.budget import effective_budget
    from hpo.console import LiveView, python_output, show_workers
    from hpo.contract import as_trainer
    from hpo.errors import ConfigError, StudyStateError
    from hpo.runner import run_and_summarize
    from hpo.study import load_existing_study
    from hpo.workers import check_sendable

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, but got {workers}")
    given = as_trainer(trainer) if trainer is not None else None
    config = load_study(study, overrides, trainer=given, what="overrides")
    if given is not None and workers > 1:
        check_sendable(given)
    with python_output(progress) as console:
        show_workers(workers > 1)
        view = LiveView(
            console, config.name, effective_budget(config), config.objectives[0].metric, config
        )
        try:
            view.read(load_existing_study(config))
        except StudyStateError:  # a new study starts at 0
            pass
        with view:
            ran, summary = run_and_summarize(
                config,
                workers=workers,
                devices=list(devices) if devices is not None else None,
                allow_space_change=allow_space_change,
                on_progress=view.update,
                trainer=given,
            )
    return StudyResult(ran, summary, config)


def best(study: Study | StudyResult, overrides: Overrides | None = None) -> dict[str, Any] | None:
    """The best trial (``hpo best --json``), or None while no trial is feasible.

    Feasible first (completed, and the stored metrics meet the study file's constraints),
    then the best objective value; ties go to the earlier trial (:mod:`hpo.ranking`).

    Returns:
        ``{"study", "trial", "value", "params", "metrics"}``; ``metrics`` are the quality
        and serving-cost metrics (training bookkeeping left out).

    Raises:
        HpoError: the study has several objectives (it has a front, not one best trial:
            see :func:`pareto_front`); StudyStateError if it does not exist.
    """
    return best_data(_open(study, overrides))


def pareto_front(study: Study | StudyResult, overrides: Overrides | None = None) -> list[dict]:
    """The feasible Pareto front (``hpo best --json`` of several objectives), by number.

    Returns:
        One ``{"number", "model", "values": {metric: value}, "params", "metrics"}`` per
        trial ([] while none is feasible); with one objective, the best trial(s).
    """
    return front_data(_open(study, overrides))


def study_status(study: Study | StudyResult, overrides: Overrides | None = None) -> dict[str, Any]:
    """Where the study stands (``hpo status --json``).

    Returns:
        ``{"study", "budget", "finished", "trials_by_state", "best", "attention",
        "checkpoints"}``: ``best`` as :func:`best` (None with several objectives or none
        feasible), ``attention`` the failed and running trials, ``checkpoints`` the disk
        the study's trial folders use on this machine.
    """
    return status_data(_open(study, overrides))


def _open(study: Study | StudyResult, overrides: Overrides | None) -> StudyView:
    """The stored study, read-only; a file or mapping is validated without importing its
    trainer (reading runs no trainer code)."""
    if isinstance(study, StudyResult):
        study = study.config
    if isinstance(study, StudyConfig):
        if overrides:
            raise HpoError("overrides apply to a study file or mapping, not a loaded config")
        return open_view(study)
    return open_view(load_study(study, overrides, import_trainer=False, what="overrides"))


def best_data(view: StudyView) -> dict[str, Any] | None:
    """The best trial of one objective as ``hpo best --json`` prints it."""
    from hpo.status import shown_metrics

    config = view.config
    if config.multi_objective:
        raise HpoError(
            f"study {config.name!r} has {len(config.objectives)} objectives: no single "
            "trial is best; use pareto_front() (hpo best shows the front)"
        )
    trial = view.best()
    if trial is None:
        return None
    return {
        "study": config.name,
        "trial": trial.number,
        "value": trial.value,
        "params": dict(trial.params),
        "metrics": shown_metrics(view.attrs(trial).metrics),
    }


def front_data(view: StudyView) -> list[dict[str, Any]]:
    """The front's rows as ``hpo best --json`` prints them (bookkeeping metrics left out)."""
    from hpo.status import shown_metrics

    return [{**row, "metrics": shown_metrics(row["metrics"])} for row in view.front_rows()]


def status_data(view: StudyView) -> dict[str, Any]:
    """``hpo status --json``: counts, the best trial, trials needing attention, disk."""
    from hpo.checkpoints import checkpoint_bytes, study_location

    config = view.config
    summary = view.summary()
    kept: int | str = config.checkpoint_limit or "all"
    if config.multi_objective and config.checkpoint_limit is not None:
        kept = "pareto_front"
    return {
        "study": summary.study_name,
        "budget": summary.n_trials,
        "finished": summary.finished,
        "trials_by_state": summary.counts,
        "best": None if config.multi_objective else best_data(view),
        "attention": [line.as_dict() for line in view.attention()],
        "checkpoints": {
            "dir": study_location(config),
            "bytes": checkpoint_bytes(config),
            "keep": kept,
        },
    }
