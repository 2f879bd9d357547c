"""Every use of Optuna's private API in hpo, in one place.

Each function here leans on something Optuna does not promise to keep; each has a
contract test in ``tests/test_optuna_compat.py`` that fails on a release that changes
it. Everything else in hpo uses Optuna's public API only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hpo.backends.base import heartbeats_can_be_judged

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
            if not heartbeats_can_be_judged(self._grace):
                return []
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


def stored_trial(study: Any, trial: Any) -> Any:
    """A trial's FrozenTrial as stored now (another worker may have failed it meanwhile)."""
    return study._storage.get_trial(trial._trial_id)


def retry_origin(trial: Any) -> int | None:
    """The number of the lost trial this trial retries, or None."""
    origin = frozen_trial(trial).system_attrs.get(RETRY_ORIGIN_KEY)
    return None if origin is None else int(origin)


def set_trial_user_attrs(trial: Any, attrs: dict[str, Any], *, defer: bool = False) -> None:
    """Set several user attributes of a running trial in one transaction.

    Optuna's public ``Trial.set_user_attr`` commits once per key; on a database that is a
    round trip (and a disk sync) each. RDB storages get all keys in one session through
    the storage's own upsert; other storages get one call per key. The writes are keyed
    upserts, so retrying the whole batch after a lost connection sets the same values.

    ``defer=True`` (RDB storages; others write now) costs no transaction of its own: the
    attributes ride along with the trial's next write, whichever comes first of its next
    heartbeat, its next undeferred attribute write, and its tell (the state change).
    """
    storage = trial.study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB in a cache
    if hasattr(backend, "defer_trial_user_attrs"):
        if defer:
            backend.defer_trial_user_attrs(trial._trial_id, attrs)
        else:
            backend.set_trial_user_attrs_now(trial._trial_id, attrs)
    else:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def write_rdb_trial(
    storage: Any,
    trial_id: int,
    attrs: dict[str, Any],
    *,
    heartbeat: bool = False,
    state: Any = None,
    values: Any = None,
) -> bool:
    """One transaction on an RDBStorage trial: user attributes, then optionally a heartbeat
    or a state change (with values).

    The heartbeat and the state change mirror ``RDBStorage.record_heartbeat`` and
    ``RDBStorage.set_trial_state_values`` (a contract test compares the rows they leave);
    they are repeated here because Optuna offers no way to add attributes to their
    transactions. Returns what ``set_trial_state_values`` returns (True without a state).
    """
    import datetime as dt

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    with _create_scoped_session(storage.scoped_session, True) as session:
        if state is not None or attrs:
            # Lock the row first, as Optuna does, so two workers cannot finish one trial.
            trial = models.TrialModel.find_or_raise_by_id(
                trial_id, session, for_update=state is not None
            )
            storage.check_trial_is_updatable(trial_id, trial.state)
        if attrs:
            _upsert_user_attrs(storage, session, trial_id, attrs)
        if heartbeat:
            beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
            if beat is None:
                session.add(models.TrialHeartbeatModel(trial_id=trial_id))
            else:
                beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar_one()
        if state is None:
            return True
        if values is not None:
            for objective, value in enumerate(values):
                storage._set_trial_value_without_commit(session, trial, objective, value)
        if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
            return False
        trial.state = state
        if state == TrialState.RUNNING:
            trial.datetime_start = dt.datetime.now()
        if state.is_finished():
            trial.datetime_complete = dt.datetime.now()
    return True


def _upsert_user_attrs(storage: Any, session: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """All of ``attrs`` in one statement: Optuna's per-key upsert is two statements a key
    (a trial lookup and the upsert), a network round trip each on a database server."""
    import json

    from optuna.storages._rdb import models

    model = models.TrialUserAttributeModel
    rows = [
        {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()
    ]
    dialect = storage.engine.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (postgresql if dialect == "postgresql" else sqlite).insert(model).values(rows)
        statement = insert.on_conflict_do_update(
            index_elements=[model.trial_id, model.key],
            set_={"value_json": insert.excluded.value_json},
        )
    elif dialect == "mysql":
        from sqlalchemy.dialects import mysql

        insert = mysql.insert(model).values(rows)
        statement = insert.on_duplicate_key_update(value_json=insert.inserted.value_json)
    else:  # Optuna's own path, one key at a time
        for key, value in attrs.items():
            storage._set_trial_attr_without_commit(session, model, trial_id, key, value)
        return
    session.execute(statement)


def budget_counts(
    study: Any, failure_key: str, lost_key: str
) -> tuple[dict[str, int], list[tuple[int, Any]], list[int]]:
    """What budget accounting reads before each claim: the study's trials counted by state
    name, each FAIL trial's (number, ``failure_key`` user attribute), and the study's
    ``lost_key`` list (read only when a trial failed).

    RDB storages: a ``GROUP BY`` on Optuna's ``trials`` table, then (only with failures)
    the failed trials' reasons and the lost list, in one transaction; the answer's size
    does not grow with the study. Other storages: counted from the trials.
    Not retried here (this module imports nothing of hpo's); the caller retries.
    """
    from collections import Counter

    from optuna.storages import RDBStorage

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if hasattr(backend, "budget_counts"):  # hpo's gRPC client: counted in the proxy
        return tuple(backend.budget_counts(study._study_id, failure_key, lost_key))  # type: ignore[return-value]
    if not isinstance(backend, RDBStorage):
        trials = study.get_trials(deepcopy=False)
        failed = [
            (t.number, t.user_attrs.get(failure_key)) for t in trials if t.state.name == "FAIL"
        ]
        lost = study.user_attrs.get(lost_key, []) if failed else []
        return dict(Counter(t.state.name for t in trials)), failed, list(lost)
    return rdb_budget_counts(backend, study._study_id, failure_key, lost_key)


def rdb_budget_counts(
    backend: Any, study_id: int, failure_key: str, lost_key: str
) -> tuple[dict[str, int], list[tuple[int, Any]], list[int]]:
    """:func:`budget_counts` on an RDBStorage, by study id (the storage proxy runs it)."""
    import json

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    trial, attr = models.TrialModel, models.TrialUserAttributeModel
    with _create_scoped_session(backend.scoped_session) as session:
        counts = {
            state.name: int(n)
            for state, n in session.query(trial.state, sqlalchemy.func.count())
            .filter(trial.study_id == study_id)
            .group_by(trial.state)
            .all()
        }
        if not counts.get("FAIL"):
            return counts, [], []
        found = (
            session.query(trial.number, attr.value_json)
            .outerjoin(
                attr, sqlalchemy.and_(attr.trial_id == trial.trial_id, attr.key == failure_key)
            )
            .filter(trial.study_id == study_id, trial.state == TrialState.FAIL)
            .all()
        )
        lost_json = (
            session.query(models.StudyUserAttributeModel.value_json)
            .filter(models.StudyUserAttributeModel.study_id == study_id)
            .filter(models.StudyUserAttributeModel.key == lost_key)
            .scalar()
        )
    failed = [(n, None if v is None else json.loads(v)) for n, v in found]
    return counts, failed, list(json.loads(lost_json)) if lost_json else []


def stale_trial_ids(storage: Any, study_id: int, grace_period: int | None = None) -> list[int]:
    """The study's RUNNING trials whose last heartbeat is older than the grace period, as
    Optuna's own stale-trial check finds them (``RDBStorage._get_stale_trial_ids``).

    ``grace_period``: the asking worker's, where it is not the storage's own (the storage
    proxy answers for workers of several studies).
    """
    import types

    from optuna.storages import RDBStorage

    if grace_period is not None:
        # Optuna's check reads the grace period off the storage; lend it the worker's.
        storage = types.SimpleNamespace(
            heartbeat_interval=1, grace_period=grace_period, scoped_session=storage.scoped_session
        )
    return list(RDBStorage._get_stale_trial_ids(storage, study_id))


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
    if backend is not None and hasattr(backend, "heartbeat_ages"):  # hpo's gRPC client
        return dict(backend.heartbeat_ages(study._study_id))
    if not isinstance(backend, RDBStorage):
        now = time.time()
        ages = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(_HEARTBEAT_KEY) or {}
            if beat.get("trial_id") == trial._trial_id:
                ages[trial.number] = max(0.0, now - beat["time"])
        return ages
    return rdb_heartbeat_ages(backend, study._study_id)


def rdb_waiting_trial_ids(backend: Any, study_id: int) -> list[int]:
    """Ids of the study's WAITING trials (enqueued, not yet taken), oldest first, in one
    filtered query on an RDBStorage (the storage proxy answers ``ask()`` with it)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    trial = models.TrialModel
    with _create_scoped_session(backend.scoped_session) as session:
        rows = (
            session.query(trial.trial_id)
            .filter(trial.study_id == study_id, trial.state == TrialState.WAITING)
            .order_by(trial.trial_id)
            .all()
        )
    return [int(trial_id) for (trial_id,) in rows]


def rdb_heartbeat_ages(backend: Any, study_id: int) -> dict[int, float]:
    """:func:`heartbeat_ages` on an RDBStorage, by study id (the storage proxy runs it)."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    with _create_scoped_session(backend.scoped_session) as session:
        now_db = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
            .join(
                models.TrialHeartbeatModel,
                models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id,
            )
            .filter(models.TrialModel.study_id == study_id)
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


# --- Optuna's gRPC storage proxy ------------------------------------------------------------


def grpc_client_parts() -> tuple[type, type, type]:
    """Optuna's gRPC client cache and generated stub classes, to build a client on a
    channel of hpo's own (keepalive options) as ``GrpcStorageProxy._setup`` does, and
    ``BaseHeartbeat``: a storage that is one gets Optuna's heartbeats and stale-trial
    checks in ``optimize``."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.client import GrpcClientCache
    from optuna.storages._heartbeat import BaseHeartbeat

    return GrpcClientCache, api_pb2_grpc.StorageServiceStub, BaseHeartbeat


def proxy_cache(backend: Any) -> Any:
    """Optuna's in-process cache in front of ``backend``, as ``run_grpc_proxy_server`` puts
    one in front of its database, for a proxy that may share the database.

    Optuna's cache takes a parameter only for a trial made or read through it: a trial made
    through another proxy of the database, or through this one before it restarted (a
    failed trial's retry, waiting there), gets ``KeyError`` until something reads the
    study's trials. Such a trial's parameter goes to the database directly, which checks
    the distribution against the study's own (one more query).
    """
    from optuna.storages._cached_storage import _CachedStorage

    class ProxyCache(_CachedStorage):
        def set_trial_param(
            self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
        ) -> None:
            with self._lock:
                known = trial_id in self._trial_id_to_study_id_and_number
            if known:
                super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            else:
                self._backend._set_trial_param(
                    trial_id, param_name, param_value_internal, distribution, None
                )

    return ProxyCache(backend)


def add_optuna_storage_service(server: Any, storage: Any) -> None:
    """Serve Optuna's storage protocol for ``storage`` on ``server`` (what
    ``optuna.storages.run_grpc_proxy_server`` does, on a server hpo also adds to)."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
