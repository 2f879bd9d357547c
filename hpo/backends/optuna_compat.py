"""Every use of Optuna's private API in hpo, in one place.

Each function here leans on something Optuna does not promise to keep; each has a
contract test in ``tests/test_optuna_compat.py`` that fails on a release that changes
it. Everything else in hpo uses Optuna's public API only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# A trial's last heartbeat in the journal storage: {"trial_id": id, "time": epoch seconds}.
# It names its trial because Optuna's retry callback copies system attributes to the retry.
_HEARTBEAT_KEY = "hpo:heartbeat"


def heartbeat_journal_storage(
    path: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[Any, Any], None] | None = None,
) -> Any:
    """A JournalStorage on ``path`` with Optuna's heartbeat protocol (``BaseHeartbeat``).

    Optuna's optimize loop records heartbeats and fails stale trials for any storage that
    implements ``optuna.storages._heartbeat.BaseHeartbeat`` (private); the journal storage
    does not, so a killed worker's trial would stay RUNNING. Heartbeats are written as a
    trial system attribute, one journal line per interval per running trial.
    """
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalFileBackend

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        def __init__(self) -> None:
            super().__init__(JournalFileBackend(path))
            self._path = path
            self._interval = heartbeat_interval
            self._grace = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
            self._callback = stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(
                trial_id, _HEARTBEAT_KEY, {"trial_id": trial_id, "time": time.time()}
            )

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            assert self._grace is not None
            running = optuna.trial.TrialState.RUNNING
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(running,)):
                beat = trial.system_attrs.get(_HEARTBEAT_KEY) or {}
                last = beat.get("time") if beat.get("trial_id") == trial._trial_id else None
                if last is None and trial.datetime_start is not None:
                    last = trial.datetime_start.timestamp()
                if last is not None and now - last > self._grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, Any], None] | None:
            return self._callback

    return HeartbeatJournalStorage()


# --- studies and trials ---------------------------------------------------------------------

# The system attribute Optuna's RetryHeartbeatStaleTrialCallback sets on a retry: the
# number of the lost trial it repeats.
RETRY_ORIGIN_KEY = "failed_trial"


def storage_of(study: Any) -> Any:
    """The storage a study reads and writes (``Study._storage``)."""
    return study._storage


def study_id_of(study: Any) -> int:
    """The storage's id of a study (``Study._study_id``; optuna-dashboard's URLs use it)."""
    return int(study._study_id)


def frozen_trial(trial: Any) -> Any:
    """A running trial's FrozenTrial as read at ``ask`` (system attributes included).

    Optuna 5's ``Trial`` hides system attributes; its cached frozen copy holds them (and the
    intermediate values a retry inherited) without a storage round trip.
    """
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        return cached
    return trial.study._storage.get_trial(trial._trial_id)


def retry_origin(trial: Any) -> int | None:
    """The number of the lost trial this trial retries, or None."""
    origin = frozen_trial(trial).system_attrs.get(RETRY_ORIGIN_KEY)
    return None if origin is None else int(origin)


def set_trial_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction.

    Optuna's public ``Trial.set_user_attr`` commits once per key; on a database that is a
    round trip (and a disk sync) each. RDB storages get all keys in one session through
    the storage's own upsert; other storages get one call per key. The writes are keyed
    upserts, so retrying the whole batch after a lost connection sets the same values.
    """
    from optuna.storages import RDBStorage

    storage = trial.study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB in a cache
    if isinstance(backend, RDBStorage):
        from hpo.backends.rdb import retrying

        retrying(_set_rdb_attrs)(backend, trial._trial_id, attrs)
    else:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _set_rdb_attrs(storage: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        for key, value in attrs.items():
            storage._set_trial_attr_without_commit(
                session, models.TrialUserAttributeModel, trial_id, key, value
            )


def fail_orphan(study: Any, trial: Any) -> Any:
    """Fail a RUNNING trial nobody runs and hand it to the stale-trial callback.

    Returns the failed trial (as stored), or None when another worker got there first.
    """
    import optuna

    storage = study._storage
    try:
        if not storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    failed = storage.get_trial(trial._trial_id)
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, failed)
    return failed


def contains(distribution: Any, value: Any) -> bool:
    """True when ``value`` lies inside ``distribution`` (``BaseDistribution._contains``)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def heartbeat_ages(study: Any) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat, by trial number.

    Optuna has no public reader for heartbeats. RDB storages: its heartbeat table, read the
    way its own stale-trial check does, with the database's clock on both sides. Journal
    files: hpo's own ``hpo:heartbeat`` system attribute.
    """
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage):
        now = time.time()
        ages = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(_HEARTBEAT_KEY) or {}
            if beat.get("trial_id") == trial._trial_id:
                ages[trial.number] = max(0.0, now - beat["time"])
        return ages
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        now_db = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
            .join(
                models.TrialHeartbeatModel,
                models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id,
            )
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
    if now_db is None:
        return {}
    now_db = now_db.replace(tzinfo=None)
    return {
        number: max(0.0, (now_db - beat.replace(tzinfo=None)).total_seconds())
        for number, beat in rows
    }
