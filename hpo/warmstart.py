"""Warm start: enqueue the best configurations of an earlier study (``warm_start:``).

``warm_start: {from: STUDY, top_k: 5, storage: URL}`` takes the ``top_k`` best completed
trials of ``STUDY`` (in this study's storage unless ``storage`` says otherwise) among those
that meet this study's constraints, ranked as ``hpo narrow`` ranks them, keeps the
parameters that exist in this study's search space and fit its distributions, and
enqueues each resulting point unless this study already holds a trial (of any state,
waiting ones included) that agrees with it on every one of those parameters.

The candidates are always the source's ``top_k`` best, never "the next best until
``top_k`` are new", so a second call enqueues nothing: warm start is idempotent and the
runner calls it at every worker start (under the study lock). Points beyond the study's
remaining budget are not enqueued: a waiting trial the budget will never run would hold
a slot forever.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hpo.backends.optuna_compat import contains, storage_of
from hpo.config import StudyConfig
from hpo.storage import ATTR_WARM_START

logger = logging.getLogger(__name__)


def enqueue_warm_start(study: Any, config: StudyConfig) -> int:
    """Enqueue up to ``warm_start.top_k`` best points of ``warm_start.from``; return how many."""
    spec = config.warm_start
    if spec is None:
        return 0
    ranked = best_points(study, config)
    if ranked is None:
        return 0
    from hpo.budget import usage_of

    trials = study.get_trials(deepcopy=False)
    existing = [_trial_params(t) for t in trials]
    # Slots no trial holds or waits for: a waiting trial the budget never runs would hold
    # a slot forever.
    room = usage_of(trials, study.user_attrs, config).unclaimed
    enqueued = 0
    for number, params in ranked:
        if not params or any(_covers(seen, params) for seen in existing):
            continue
        if enqueued >= room:
            logger.info(
                "warm start: budget full; not enqueuing trial %d of %r", number, spec.from_study
            )
            continue
        study.enqueue_trial(
            params,
            user_attrs={ATTR_WARM_START: {"study": spec.from_study, "trial": number}},
            skip_if_exists=False,
        )
        existing.append(params)
        enqueued += 1
    logger.info(
        "warm start: enqueued %d of the %d best points of study %r",
        enqueued,
        len(ranked),
        spec.from_study,
    )
    return enqueued


def best_points(study: Any, config: StudyConfig) -> list[tuple[int, dict[str, Any]]] | None:
    """The source study's ``top_k`` best trials as (number, params fitting this space).

    Returns None (and logs why) when the source study does not exist or cannot be ranked.
    """
    from hpo.ranking import feasible, top_trials
    from hpo.space import to_distributions

    spec = config.warm_start
    if spec is None:
        return None
    # The study's own storage when the source URL is the same: a second SQLite storage on
    # one file would wait on the file lock this worker holds while it enqueues.
    same = spec.storage is None or spec.storage == config.storage
    storage = _source_storage(study, None if same else spec.storage)
    try:
        study_id = storage.get_study_id_from_name(spec.from_study)
    except KeyError:
        logger.warning(
            "warm start: no study %r in %s yet; starting %r without warm start",
            spec.from_study,
            _redacted(spec.storage or config.storage),
            config.name,
        )
        return None
    directions = [d.name for d in storage.get_study_directions(study_id)]
    source = storage.get_all_trials(study_id, deepcopy=False)
    # Only points that meet this study's constraints (on the metrics each source trial
    # returned): an infeasible one would spend a trial off this study's front. When fewer
    # than top_k are feasible, only those are seeded, as hpo narrow takes only those.
    n_feasible = len(feasible(source, config, directions))
    n_completed = sum(t.state.name == "COMPLETE" for t in source)
    if n_feasible < n_completed:
        logger.info(
            "warm start: %d of the %d completed trials of %r meet the constraints",
            n_feasible,
            n_completed,
            spec.from_study,
        )
    # Ranked in the source's own objectives; several have no single ranking: its Pareto
    # front (every trade-off it found), then the next front, as hpo narrow ranks them.
    top = top_trials(source, config, spec.top_k, directions)
    distributions = to_distributions(config.search_space)
    return [(t.number, _fitting(t.params, distributions)) for t in top]


def _fitting(params: dict[str, Any], distributions: dict[str, Any]) -> dict[str, Any]:
    """The params that exist in this space and lie inside their distribution."""
    kept = {}
    for name, value in params.items():
        distribution = distributions.get(name)
        if distribution is None:
            continue
        if contains(distribution, value):
            kept[name] = value
    return kept


def _trial_params(trial: Any) -> dict[str, Any]:
    """A trial's parameters; a waiting (enqueued) trial's are its fixed params."""
    if trial.state.name == "WAITING":
        return dict(trial.system_attrs.get("fixed_params", {}))
    return dict(trial.params)


def _covers(seen: dict[str, Any], point: dict[str, Any]) -> bool:
    """True when ``seen`` agrees with ``point`` on every parameter ``point`` sets."""
    return all(name in seen and _same(seen[name], value) for name, value in point.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    return bool(a == b)


def _source_storage(study: Any, url: str | None) -> Any:
    if url is None:
        return storage_of(study)  # the same storage: reuse its connection pool
    from hpo.storage import open_storage, storage_exists

    if not storage_exists(url):
        return _NoStorage()
    return open_storage(url, read_only=True)  # the source study is only read


class _NoStorage:
    """A source storage that does not exist yet: it holds no study (and is not created)."""

    def get_study_id_from_name(self, name: str) -> int:
        raise KeyError(name)


def _redacted(url: str) -> str:
    from hpo.storage import redact_url

    return redact_url(url)
