"""What a study has used against its budget: finished, running, failed and why.

The one rule for counting trials: the runner reads it before each claim, the sweep
before each study (and for ``--dry-run``), warm start before enqueuing, the live line,
the CLI for its closing lines and reports for their totals. All of it is computed from
one read of the study's trials; nothing here writes to the storage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpo import storage as st
from hpo.backends.optuna_compat import budget_counts
from hpo.backends.rdb import retrying
from hpo.config import StudyConfig
from hpo.space import grid_size

# States that use up budget: finished ones, and ones that will finish unless they fail.
FINISHED = ("COMPLETE", "PRUNED")
# Trials that ended, failed ones included: their compute is spent (reports total it).
ENDED = (*FINISHED, "FAIL")
# Failures that say nothing about the parameters: the trial is retried, not counted.
# "storage": the database failed under the trial (hpo.runner), not the trainer.
NOT_COUNTED_FAILURES = ("worker_lost", "interrupted", "storage")


def effective_budget(config: StudyConfig) -> int:
    """Trials to finish: ``n_trials``, capped by the grid size for a grid study."""
    if config.sampler.type == "grid":
        return min(config.budget.n_trials, grid_size(config.search_space))
    return config.budget.n_trials


@dataclass
class Usage:
    """Where the study stands against its budget, from one read of its trials.

    ``finished`` trials are complete or pruned; ``claimed`` also counts running ones (they
    finish unless they fail). Waiting (enqueued) trials are not claimed: a worker's next
    ``ask()`` picks them up. In a grid study a failed point is not drawn again, so its
    failure uses up that point (a lost worker's point is retried and does not).
    ``failures`` counts failures that weigh against ``budget.max_failures``.
    """

    budget: int = 0
    finished: int = 0
    claimed: int = 0
    failures: int = 0
    waiting: int = 0

    @property
    def unclaimed(self) -> int:
        """Budget slots that no trial holds or waits for: what may still be enqueued."""
        return max(0, self.budget - self.claimed - self.waiting)


def usage(study: Any, config: StudyConfig) -> Usage:
    """Count the study's trials against its budget (one narrow storage read: counts by
    state, and the failed trials' reasons, not every trial's parameters and attributes)."""
    # Retried like every storage read: the claim loop must survive a database restart.
    counts, failed, lost = retrying(budget_counts)(study, st.ATTR_FAILURE, st.STUDY_ATTR_LOST)
    reasons = [_reason("FAIL", number in lost, failure) for number, failure in failed]
    return _tally(counts, reasons, config)


def usage_of(trials: list[Any], study_attrs: dict[str, Any], config: StudyConfig) -> Usage:
    """:func:`usage` of trials already read (``study.get_trials()``, ``study.user_attrs``)."""
    reasons = [failure_reason(t, study_attrs) for t in trials if t.state.name == "FAIL"]
    return _tally(Counter(t.state.name for t in trials), reasons, config)


def _tally(counts: Mapping[str, int], reasons: list[str | None], config: StudyConfig) -> Usage:
    """Usage from trials counted by state and the failed trials' reasons."""
    result = Usage(
        budget=effective_budget(config),
        finished=sum(counts.get(state, 0) for state in FINISHED),
        waiting=counts.get("WAITING", 0),
    )
    result.claimed = result.finished + counts.get("RUNNING", 0)
    for reason in reasons:
        if reason in NOT_COUNTED_FAILURES:
            continue
        result.failures += 1
        if config.sampler.type == "grid":  # a failed grid point is not drawn again
            result.finished += 1
            result.claimed += 1
    return result


def failure_reason(trial: Any, study_attrs: dict[str, Any]) -> str | None:
    """Why a FAIL trial failed: its hpo:failure attribute, or worker_lost."""
    lost = trial.number in study_attrs.get(st.STUDY_ATTR_LOST, [])
    return _reason(trial.state.name, lost, trial.user_attrs.get(st.ATTR_FAILURE))


def _reason(state: str, lost: bool, failure: str | None) -> str | None:
    if state != "FAIL":
        return None
    return "worker_lost" if lost else failure or "exception"


@dataclass
class Summary:
    """What a run did and where the study stands, for the CLI's closing lines."""

    study_name: str
    n_trials: int
    counts: dict[str, int]
    finished: int = 0  # as the runner counts them (a failed grid point is finished too)
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    ran: int = 0
    wall_time_s: float = 0.0
    already_done: bool = False
    # Several objectives: the feasible Pareto front (as ``hpo best --json`` rows), no best.
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    constrained: bool = False  # "best" means the best trial that meets the constraints


def summarize(study: Any, config: StudyConfig, *, ran: int = 0, wall: float = 0.0) -> Summary:
    """Trials by state and the best feasible trial so far (the front, with several
    objectives)."""
    trials = study.get_trials(deepcopy=False)
    return summary_of(trials, study.user_attrs, config, ran=ran, wall=wall)


def summary_of(
    trials: list[Any],
    study_attrs: dict[str, Any],
    config: StudyConfig,
    *,
    ran: int = 0,
    wall: float = 0.0,
) -> Summary:
    """:func:`summarize` of trials already read (``study.get_trials()``,
    ``study.user_attrs``)."""
    summary = Summary(
        study_name=config.name,
        n_trials=effective_budget(config),
        counts=dict(Counter(t.state.name for t in trials)),
        finished=usage_of(trials, study_attrs, config).finished,
        ran=ran,
        wall_time_s=wall,
        constrained=bool(config.constraints),
    )
    from hpo.pareto import front_rows
    from hpo.ranking import best_trial

    if config.multi_objective:
        summary.pareto_front = front_rows(trials, config)
    elif (best := best_trial(trials, config)) is not None:
        summary.best_value = best.value
        summary.best_params = dict(best.params)
        summary.best_number = best.number
        summary.best_metrics = dict(best.user_attrs.get(st.ATTR_METRICS, {}))
    return summary
