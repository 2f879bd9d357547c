"""The best feasible trial of a study, and the Pareto front of one with several objectives.

A trial is on the front when no other feasible completed trial is at least as good in
every objective and better in one. Feasibility is the study file's ``constraints``
checked against the trial's stored metrics (``hpo:metrics``), so the front is the same
whichever sampler ran (only some samplers take Optuna's ``constraints_func``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpo.config import StudyConfig

ATTR_METRICS = "hpo:metrics"
ATTR_MODEL = "hpo:model"


def feasible_trials(study: Any, config: StudyConfig) -> list[Any]:
    """Completed trials whose values are all known and that meet every constraint."""
    return feasible(study.get_trials(deepcopy=False), config)


def feasible(trials: Sequence[Any], config: StudyConfig) -> list[Any]:
    """Those of ``trials`` that completed with every value known and meet the constraints."""
    n = len(config.objectives)
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.values is not None
        and len(t.values) == n
        and config.feasible(t.user_attrs.get(ATTR_METRICS, {}))
    ]


def best_trial(trials: Sequence[Any], config: StudyConfig) -> Any | None:
    """The best feasible completed trial in the first objective (ties: the earlier one);
    None when there is none yet.

    Optuna's ``study.best_trial`` raises when constraints leave no feasible trial, which
    a study that has run is not an error: it is "no feasible trial yet".
    """
    candidates = feasible(trials, config)
    if not candidates:
        return None
    sign = -1.0 if config.objectives[0].direction == "maximize" else 1.0
    return min(candidates, key=lambda t: (sign * t.values[0], t.number))


def best_trials(trials: Sequence[Any], directions: Sequence[str], k: int) -> list[Any]:
    """The ``k`` best of ``trials`` (completed, feasible ones), best first.

    One objective: by value (ties: the earlier trial). Several: the Pareto front, then the
    front of the rest, and so on (oldest first within a front) until ``k`` are taken.
    ``hpo narrow`` and warm start both rank with this, so a narrowed study's warm start
    seeds the very trials its space was narrowed around.
    """
    if len(directions) == 1:
        sign = -1.0 if directions[0].lower() == "maximize" else 1.0
        return sorted(trials, key=lambda t: (sign * t.values[0], t.number))[:k]
    rest = list(trials)
    taken: list[Any] = []
    while rest and len(taken) < k:
        front = non_dominated(rest, directions)
        taken += front[: k - len(taken)]
        numbers = {t.number for t in front}
        rest = [t for t in rest if t.number not in numbers]
    return taken


def pareto_front(study: Any, config: StudyConfig) -> list[Any]:
    """The non-dominated feasible trials, by trial number."""
    directions: list[str] = [o.direction for o in config.objectives]
    return non_dominated(feasible_trials(study, config), directions)


def non_dominated(trials: list[Any], directions: Sequence[str]) -> list[Any]:
    """The trials no other trial dominates (as good in every objective, better in one)."""
    signs = [1.0 if d.lower() == "minimize" else -1.0 for d in directions]
    # Minimize sign * value in every objective.
    costs = {t.number: [s * v for s, v in zip(signs, t.values, strict=True)] for t in trials}

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    front = [
        t for t in trials if not any(dominates(costs[o.number], costs[t.number]) for o in trials)
    ]
    return sorted(front, key=lambda t: t.number)


def front_rows(study: Any, config: StudyConfig) -> list[dict[str, Any]]:
    """The front's rows: number, model, values by metric, params and every stored metric
    (``hpo best`` leaves out the bookkeeping ones, see hpo.status.shown_metrics)."""
    metrics_of = [o.metric for o in config.objectives]
    return [
        {
            "number": t.number,
            "model": trial_model(t, config),
            "values": dict(zip(metrics_of, t.values, strict=True)),
            "params": dict(t.params),
            "metrics": dict(t.user_attrs.get(ATTR_METRICS, {})),
        }
        for t in pareto_front(study, config)
    ]


def trial_model(trial: Any, config: StudyConfig) -> str | None:
    """The base model a trial trained: its ``model`` param, else the fixed one."""
    if "model" in trial.params:
        return str(trial.params["model"])
    facts = trial.user_attrs.get(ATTR_MODEL) or {}
    return facts.get("name") or config.trainer.args.get("model")
