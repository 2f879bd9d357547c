"""Opening a study: create or load it, check it against the study file, seed its sampler.

:func:`open_study` is what a worker uses (it creates the study and stores the resolved
config under ``hpo:config``); :func:`load_existing_study` is the read-only loader that
readers use, through :mod:`hpo.view` (it never creates a study or rewrites an attribute).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hpo import storage as st
from hpo.config import StudyConfig
from hpo.errors import StudyStateError
from hpo.space import grid

logger = logging.getLogger(__name__)

# Samplers whose order is the study seed's: every worker and every resume shares it.
SHARED_SEED_SAMPLERS = ("grid", "qmc", "bruteforce")


def open_study(config: StudyConfig, *, allow_space_change: bool = False, seed_offset: int = 0):
    """Create the study, or load it and check it still matches the study file.

    Raises:
        StudyStateError: the stored search space differs and ``allow_space_change`` is off.
    """
    import optuna

    storage = st.open_storage(
        config.storage,
        heartbeat_interval=config.workers.heartbeat_interval,
        grace_period=config.workers.grace_period,
        stale_trial_callback=_retry_lost_trial(config.workers.max_retries),
    )
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        sampler=_build_sampler(config, _sampler_seed(config, seed_offset, 0)),
        pruner=_build_pruner(config),
        directions=[o.direction for o in config.objectives],
        load_if_exists=True,
    )
    _check_objectives(study, config)
    stored_trials = len(study.get_trials(deepcopy=False, states=None))
    if stored_trials and config.sampler.type not in SHARED_SEED_SAMPLERS:
        study.sampler = _build_sampler(config, _sampler_seed(config, seed_offset, stored_trials))
    stored = study.user_attrs.get(st.ATTR_CONFIG)
    current = config.stored_form()
    if stored and stored.get("search_space") != current["search_space"] and not allow_space_change:
        changed = sorted(
            name
            for name in set(stored["search_space"]) | set(current["search_space"])
            if stored["search_space"].get(name) != current["search_space"].get(name)
        )
        raise StudyStateError(
            f"{config.source or config.name}: search_space: differs from the stored study "
            f"{config.name!r} (changed: {', '.join(changed)}); restore it, use a new `name`, "
            "or pass --allow-space-change"
        )
    if stored != current:
        study.set_user_attr(st.ATTR_CONFIG, current)
    return study


def _check_objectives(study: Any, config: StudyConfig) -> None:
    """A resumed study keeps its objectives; a new one is named after them (dashboards)."""
    import warnings

    import optuna

    directions = [d.name.lower() for d in study.directions]
    wanted = [o.direction for o in config.objectives]
    if directions != wanted:
        raise StudyStateError(
            f"{config.source or config.name}: objective: the stored study {config.name!r} "
            f"optimizes {len(directions)} objective(s) ({', '.join(directions)}), the file "
            f"{len(wanted)} ({', '.join(wanted)}); restore it or use a new `name`"
        )
    names = [o.metric for o in config.objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():  # experimental in Optuna, and stable enough for us
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def load_existing_study(config: StudyConfig) -> Any:
    """The stored study, read-only: never created, its stored config never rewritten.

    Raises:
        StudyStateError: the storage, or a study of that name in it, does not exist
            (nothing is created).
        StorageError: the storage cannot be opened.
    """
    import optuna

    st.require_storage(config.storage, config.name, config.run_command())
    storage = st.open_storage(config.storage, read_only=True)
    if config.name not in optuna.get_all_study_names(storage):
        raise StudyStateError(
            f"no study {config.name!r} in {st.redact_url(config.storage)}; "
            f"run it first ({config.run_command()})"
        )
    # A sampler is required to load; RandomSampler is the one that costs nothing to build.
    return optuna.load_study(
        study_name=config.name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )


def _sampler_seed(config: StudyConfig, worker_offset: int, stored_trials: int) -> int | None:
    """The sampler seed for one worker, reproducible from the study seed.

    Stochastic samplers get a seed per worker, or parallel workers would propose the same
    points, and a new one on resume, or a resumed study would repeat its first draws.
    Grid, QMC and brute force keep the study seed: their order is the seed's, and every
    worker and every resume must agree on it.
    """
    if config.seed is None:
        return None
    if config.sampler.type in SHARED_SEED_SAMPLERS:
        return config.seed
    return config.seed + worker_offset + 10_007 * stored_trials


def _build_sampler(config: StudyConfig, seed: int | None) -> Any:
    from hpo.registry import build_sampler

    space = grid(config.search_space) if config.sampler.type == "grid" else None
    return build_sampler(config.sampler, seed=seed, grid=space)


def _build_pruner(config: StudyConfig) -> Any:
    from hpo.registry import build_pruner

    return build_pruner(config.pruner)


def _retry_lost_trial(max_retries: int) -> Callable[[Any, Any], None]:
    """Optuna's retry callback for trials whose worker stopped sending heartbeats."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    # Intermediate values carry over, so pruners and learning curves see the epochs the
    # lost worker already ran; the retry resumes from its last checkpoint.
    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True
    )

    def on_stale(study: Any, trial: Any) -> None:
        logger.warning(
            "trial %d: worker lost (no heartbeat); retrying its parameters", trial.number
        )
        mark_lost(study, trial.number)
        retry(study, trial)

    return on_stale


def mark_lost(study: Any, number: int) -> None:
    """Record that trial ``number`` failed because its worker died (``worker_lost``).

    A finished trial's attributes are read-only in Optuna, so the mark lives in the
    study: ``hpo:lost`` lists the trial numbers whose worker died.
    """
    lost = study.user_attrs.get(st.STUDY_ATTR_LOST, [])
    study.set_user_attr(st.STUDY_ATTR_LOST, sorted(set(lost) | {number}))
