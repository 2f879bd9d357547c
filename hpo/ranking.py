"""The one rule for "best": feasibility first, then the objective or the Pareto front.

Every reader that names a best trial calls this module: ``hpo best``, the run's closing
lines, the live line and the sweep's summary (:func:`best_trial`), ``hpo report``
(:func:`best_trial`, :func:`pareto_front`), checkpoint retention (:func:`kept_trials`),
``hpo export`` (:func:`best_trial`), ``hpo narrow`` and warm start (:func:`top_trials`)
and a trainer's :meth:`~hpo.trainer.TrialContext.leads_study` (:func:`leads`).

The rule:

- A trial can be best only when it is *feasible*: completed, with every objective value
  known and finite, and its stored metrics (``hpo:metrics``) meet every constraint of
  the study file. Constraints are checked here, on the metrics, not through Optuna's
  ``constraints_func``: only some samplers take it, so ``study.best_trial`` may name a
  trial that breaks a constraint.
- One objective: the feasible trial with the best value; ties go to the earlier trial
  (as in ``study.best_trial``). The top K are the K best values, best first.
- Several objectives: there is no single best trial but a front, the feasible trials no
  other feasible trial dominates (at least as good in every objective, better in one).
  The top K are the front, then the front of the rest, and so on (oldest first within a
  front) until K are taken. Where one trial must be shown (the live line), it is the
  front's best in the first objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from hpo import storage as st
from hpo.config import StudyConfig

__all__ = [
    "best_trial",
    "feasible",
    "kept_trials",
    "leads",
    "non_dominated",
    "pareto_front",
    "top_trials",
]


def feasible(
    trials: Iterable[Any], config: StudyConfig, directions: Sequence[str] | None = None
) -> list[Any]:
    """The trials that can be ranked: completed, every value known and finite, and the
    stored metrics meeting the study file's constraints.

    Args:
        directions: the objectives' directions when they are not ``config``'s (warm start
            ranks a source study in its own objectives); only their number is used here.
    """
    n = len(directions) if directions is not None else len(config.objectives)
    return [
        t for t in _valued(trials, n) if config.feasible(t.user_attrs.get(st.ATTR_METRICS, {}))
    ]


def _valued(trials: Iterable[Any], n: int) -> list[Any]:
    """The completed trials with ``n`` values, each known and finite."""
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.values is not None
        and len(t.values) == n
        and all(math.isfinite(v) for v in t.values)
    ]


def best_trial(trials: Iterable[Any], config: StudyConfig) -> Any | None:
    """The best feasible trial (several objectives: the front's best in the first one);
    None when no trial is feasible yet.

    Optuna's ``study.best_trial`` raises when constraints leave no feasible trial, which
    a study that has run is not an error: it is "no feasible trial yet".
    """
    candidates = feasible(trials, config)
    if config.multi_objective:
        candidates = non_dominated(candidates, _directions(config))
    if not candidates:
        return None
    return min(candidates, key=_sort_key(_directions(config)[0]))


def pareto_front(trials: Iterable[Any], config: StudyConfig) -> list[Any]:
    """The feasible trials no other feasible trial dominates, by trial number."""
    return non_dominated(feasible(trials, config), _directions(config))


def top_trials(
    trials: Iterable[Any], config: StudyConfig, k: int, directions: Sequence[str] | None = None
) -> list[Any]:
    """The ``k`` best feasible trials, best first (several objectives: successive fronts).

    ``hpo narrow`` and warm start both rank with this, so a narrowed study's warm start
    seeds the very trials its space was narrowed around.

    Args:
        directions: rank in these directions, not ``config``'s (warm start ranks the
            source study in its own; ``config`` still says what is feasible).
    """
    directions = list(directions) if directions is not None else _directions(config)
    return _ranked(feasible(trials, config, directions), directions, k)


def _ranked(rest: list[Any], directions: Sequence[str], k: int) -> list[Any]:
    """The ``k`` best of ``rest``, best first (several objectives: successive fronts)."""
    if len(directions) == 1:
        return sorted(rest, key=_sort_key(directions[0]))[:k]
    taken: list[Any] = []
    while rest and len(taken) < k:
        front = non_dominated(rest, directions)
        taken += front[: k - len(taken)]
        numbers = {t.number for t in front}
        rest = [t for t in rest if t.number not in numbers]
    return taken


def kept_trials(trials: Iterable[Any], config: StudyConfig, k: int) -> list[Any]:
    """The finished trials whose checkpoints retention keeps (``keep_checkpoints: K``).

    One objective: the best ``k``. Several: the whole front, whatever its size (trials on
    a front have no ranking, so K does not apply). Fewer than ``k`` feasible trials leave
    slots, filled with the best trials that break a constraint (ranked as above): the
    constraints live in the study file and may be relaxed, and ``hpo export`` then needs
    those trials' checkpoints. A trial left out never gets back in while the study file
    stays as it is (values are final; new trials only push it further down).
    """
    trials = list(trials)
    directions = _directions(config)
    if config.multi_objective:
        kept = pareto_front(trials, config)
    else:
        kept = top_trials(trials, config, k)
    if len(kept) >= k:
        return kept
    infeasible = [
        t
        for t in _valued(trials, len(directions))
        if not config.feasible(t.user_attrs.get(st.ATTR_METRICS, {}))
    ]
    return kept + _ranked(infeasible, directions, k - len(kept))


def leads(metrics: dict[str, Any], trials: Iterable[Any], config: StudyConfig) -> bool:
    """False only when a trial with these final ``metrics`` can no longer be the best (or
    join the front): they break a constraint, or a finished feasible trial beats them.

    A metric not in ``metrics`` (an objective or a constrained metric computed after the
    call) is not held against the trial. Ties lead.
    """
    known = {c.metric for c in config.constraints} <= metrics.keys()
    if known and not config.feasible(metrics):
        return False
    names = [o.metric for o in config.objectives]
    values = [metrics.get(name) for name in names]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return True
    directions = _directions(config)
    mine = _costs([float(v) for v in values if v is not None], directions)
    others = [_costs(t.values, directions) for t in feasible(trials, config)]
    if not config.multi_objective:
        return all(mine[0] <= other[0] for other in others)
    return not any(_dominates(other, mine) for other in others)


def non_dominated(trials: Sequence[Any], directions: Sequence[str]) -> list[Any]:
    """The trials no other trial dominates (as good in every objective, better in one),
    by trial number."""
    costs = {t.number: _costs(t.values, directions) for t in trials}
    front = [
        t for t in trials if not any(_dominates(costs[o.number], costs[t.number]) for o in trials)
    ]
    return sorted(front, key=lambda t: t.number)


def _directions(config: StudyConfig) -> list[str]:
    return [o.direction for o in config.objectives]


def _costs(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """Values turned into costs to minimize, one per objective."""
    signs = [1.0 if d.lower() == "minimize" else -1.0 for d in directions]
    return [s * v for s, v in zip(signs, values, strict=True)]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _sort_key(direction: str) -> Any:
    """Best value first; ties: the earlier trial."""
    sign = -1.0 if direction.lower() == "maximize" else 1.0
    return lambda t: (sign * t.values[0], t.number)
