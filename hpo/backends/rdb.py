"""What the SQL backends share: opening an RDBStorage, retrying lost connections, and a
lock held on a database connection (Postgres advisory locks, MySQL ``GET_LOCK``)."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import Any

from hpo.backends.base import Lock, heartbeats_can_be_judged, note_storage_unreachable
from hpo.backends.optuna_compat import stale_trial_ids, write_rdb_trial

logger = logging.getLogger(__name__)

STORAGE_RETRIES = 8  # 0.5 s doubling to 10 s: about a minute for a database to come back
# Opening retries briefly (a server restarting as workers start); a wrong host or port
# should fail in seconds (0.5 + 1 + 2), not after the minute a running worker waits.
OPEN_RETRIES = 3
# Seconds to connect (Postgres: the server's greeting included; MySQL's greeting falls under
# its read timeout). A server that accepted the TCP connection and said nothing for this
# long is hung, or no database at all.
CONNECT_TIMEOUT_S = 10
# Set while a retrying call runs in this thread: the calls it makes do not retry again
# (Optuna's storage methods call each other; nested retries multiplied to 9 x 9 attempts).
_RETRYING = threading.local()


def open_rdb(
    real_url: str, engine_kwargs: dict[str, Any], *, read_only: bool, **heartbeat: Any
) -> Any:
    """An RDBStorage whose calls survive a database restart.

    ``read_only`` skips table creation; the caller has checked the tables exist (so
    Optuna's version row exists too and nothing is written). A ``pool_size`` in
    ``heartbeat`` caps the connections the storage opens (the storage proxy's).
    """
    pool_size = heartbeat.pop("pool_size", None)
    if pool_size:
        engine_kwargs = {**engine_kwargs, "pool_size": pool_size, "max_overflow": 0}
    # Optuna's schema check holds a session's connection while it opens another, which a
    # one-connection pool never gives: a capped open comes after an uncapped one that
    # created and checked the tables (hpo.storage_proxy), so it skips the check.
    capped = {"skip_compatibility_check": True} if pool_size else {}
    create = retrying(
        lambda cls: cls(
            real_url,
            engine_kwargs=engine_kwargs,
            skip_table_creation=read_only,
            heartbeat_interval=heartbeat.get("heartbeat_interval"),
            grace_period=heartbeat.get("grace_period"),
            heartbeat_stale_trial_callback=heartbeat.get("stale_trial_callback"),
            **capped,
        ),
        retries=OPEN_RETRIES,
        retry_timeouts=False,
    )
    return create(retrying_storage_class())


def url_query(real_url: str) -> dict[str, Any]:
    """The query parameters of ``real_url``: a user's own driver settings, which hpo's
    defaults must not override (SQLAlchemy's ``connect_args`` win over the URL's)."""
    import sqlalchemy.engine

    return dict(sqlalchemy.engine.make_url(real_url).query)


# The table Optuna fills last when it creates a storage (``_VersionManager._init_alembic``).
# Until it has its row, a run is still creating the storage, and a reader that opened it
# would write Optuna's version rows itself, racing the creator ("UNIQUE constraint
# failed: alembic_version"); readers call such a storage missing.
COMPLETE_MARK = "alembic_version"


def has_optuna_tables(real_url: str, **engine_kwargs: Any) -> bool:
    """True when the database holds Optuna's tables, completely created; reads only."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        real_url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs
    )
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        if not {"studies", "version_info", COMPLETE_MARK} <= tables:
            return False
        with engine.connect() as connection:
            query = sqlalchemy.text(f"SELECT 1 FROM {COMPLETE_MARK}")
            return connection.execute(query).first() is not None
    finally:
        engine.dispose()


class SqlLock(Lock):
    """A lock that lives on its own database connection: it works across machines and
    dies with the connection (a killed worker's lock goes with its session)."""

    #: SQL with a ``:key`` parameter; each returns a truthy scalar when the lock is taken.
    acquire_sql = ""
    try_sql = ""
    release_sql = ""
    #: Truthy when this session holds the lock (:meth:`still_held`).
    held_sql = ""

    def __init__(
        self,
        real_url: str,
        key: str,
        shown_url: str,
        *,
        opening: bool = False,
        connect_args: dict[str, Any] | None = None,
    ):
        super().__init__()
        self._real_url = real_url
        self._shown_url = shown_url
        self._key = key
        # A lock taken while the storage opens fails as fast as the open (Backend.lock).
        self._retries = OPEN_RETRIES if opening else STORAGE_RETRIES
        self._opening = opening
        self._connect_args = connect_args or {}
        self._connection: Any = None

    def still_held(self) -> bool:
        """Ask the server, on the lock's own session and never through a new one, whether
        the lock is still ours. A killed session (``pg_terminate_backend``, ``KILL``, a
        restarted server) dropped it silently, and another worker may have taken it since:
        the lock is then marked lost and the next :meth:`acquire` reconnects."""
        import sqlalchemy

        if not self.held:
            return False
        held = False
        if self._connection is not None:
            try:
                query = sqlalchemy.text(self.held_sql)
                held = bool(self._connection.execute(query, {"key": self._key}).scalar())
            except sqlalchemy.exc.DBAPIError:
                held = False
        if not held:
            self.held = False
            self._close()
        return held

    def _take(self, *, block: bool) -> str | None:
        got = self._execute(self.acquire_sql if block else self.try_sql)
        # A blocking acquire may wait in bounded rounds (MySQL: each below the read
        # timeout that detects a hung server); the holder is alive, so wait another.
        while block and not got:
            got = self._execute(self.acquire_sql)
        if got:
            return None
        return f"another invocation (lock {self._key!r} in {self._shown_url})"

    def _give(self) -> None:
        try:
            self._execute(self.release_sql, retries=0)
        except Exception:  # a lost connection already dropped the lock with it
            self._close()

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a dead connection holds no lock anyway
                pass
            self._connection = None

    def _execute(self, sql: str, retries: int | None = None) -> Any:
        retries = self._retries if retries is None else retries
        call = retrying(SqlLock._execute_once, retries, retry_timeouts=not self._opening)
        return call(self, sql)

    def _execute_once(self, sql: str) -> Any:
        import sqlalchemy

        if self._connection is None:
            engine = sqlalchemy.create_engine(
                self._real_url,
                poolclass=sqlalchemy.pool.NullPool,
                connect_args=self._connect_args,
            )
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return self._connection.execute(sqlalchemy.text(sql), {"key": self._key}).scalar()
        except sqlalchemy.exc.DBAPIError:
            self._connection = None  # reconnect on the retry; the server dropped our locks
            raise


# --- retrying lost database connections ---------------------------------------------------


def is_connection_error(error: BaseException) -> bool:
    """True for errors that mean "the connection went away", not "the request was wrong"."""
    import sqlalchemy.exc

    for cause in (error, error.__cause__):
        if proxy_unavailable(cause):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        # A query retried inside the transaction the lost connection broke (Optuna's
        # _get_trials does so); Optuna's session has been rolled back when it reaches us.
        if isinstance(cause, sqlalchemy.exc.PendingRollbackError):
            return cause.__context__ is not None and is_connection_error(cause.__context__)
        if isinstance(cause, sqlalchemy.exc.OperationalError):
            text = str(cause).lower()
            # "readonly": a read-only SQLite file does not come back by waiting.
            words = ("locked", "syntax", "no such", "readonly")
            return not any(word in text for word in words)
    return False


def proxy_unavailable(error: BaseException | None) -> bool:
    """True for a gRPC error that means "the storage proxy is not there (now)": a restart or
    a lost network, retried like a lost database connection. (grpc is imported only when
    the error is one of its own: it is an extra.)"""
    if error is None or type(error).__module__.split(".")[0] != "grpc":
        return False
    import grpc

    return isinstance(error, grpc.RpcError) and error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    )


def is_timeout(error: BaseException) -> bool:
    """True when the server did not answer in time (psycopg2 and PyMySQL word it so)."""
    text = f"{error} {error.__cause__}".lower()
    return "timeout expired" in text or "timed out" in text


def retrying(method: Any, retries: int = STORAGE_RETRIES, *, retry_timeouts: bool = True) -> Any:
    """``method`` retried with backoff while the database connection is lost.

    Only the outermost retrying call in a thread retries; the calls it makes run once
    each, so one operation is attempted at most ``retries + 1`` times.

    Args:
        retry_timeouts: False while opening: a restarting server refuses or says so at
            once, while one that let a connect time out is hung or no database, and each
            retry would wait the whole timeout again (four times ten seconds, not one).
    """

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_RETRYING, "active", False):
            return method(self, *args, **kwargs)
        _RETRYING.active = True
        try:
            return _with_retries(method, retries, retry_timeouts, self, *args, **kwargs)
        finally:
            _RETRYING.active = False

    return call


def _with_retries(
    method: Any, retries: int, retry_timeouts: bool, *args: Any, **kwargs: Any
) -> Any:
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            answer = method(*args, **kwargs)
        except Exception as e:
            if is_connection_error(e):
                note_storage_unreachable()
            if attempt == retries or not is_connection_error(e):
                raise
            if not retry_timeouts and is_timeout(e):
                raise
            logger.warning(
                "storage connection lost during %s (%s); retry %d in %.1f s",
                getattr(method, "__name__", "a call"),
                type(e.__cause__ or e).__name__,
                attempt + 1,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        else:
            if attempt:  # back in reach: other workers' heartbeats may still be on the way
                note_storage_unreachable()
            return answer
    raise AssertionError("unreachable")


# Deferred trial attributes (``optuna_compat.set_trial_user_attrs(..., defer=True)``) per
# storage object, by trial id. One lock for all: the heartbeat thread and the worker's own
# thread flush them; a module-level lock keeps the storage picklable, as Optuna's is.
_PENDING_LOCK = threading.Lock()


class _TrialWrites:
    """Trial writes of hpo's RDBStorage: hpo's attributes ride along in the transactions a
    trial makes anyway (its heartbeats and its tell) instead of adding their own.

    Methods here run on the storage object; see :func:`retrying_storage_class`.
    """

    def defer_trial_user_attrs(
        self, trial_id: int, attrs: dict[str, Any], *, newer_win: bool = False
    ) -> None:
        """Keep ``attrs`` for the trial's next write (heartbeat, attributes or tell);
        ``newer_win`` keeps values deferred meanwhile over these (a failed write's)."""
        with _PENDING_LOCK:
            kept = self.__dict__.setdefault("_hpo_pending", {}).setdefault(trial_id, {})
            kept.update({**attrs, **kept} if newer_win else attrs)

    def set_trial_user_attrs_now(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Write ``attrs`` (and any deferred ones) in one transaction."""
        self._write_trial(trial_id, attrs)

    def record_heartbeat(self, trial_id: int) -> None:
        import optuna

        try:
            self._write_trial(trial_id, {}, heartbeat=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker already failed the trial (its heartbeat looked stale): its
            # attributes are read-only now, but the heartbeat goes on, as in Optuna.
            self._take_pending(trial_id)
            retrying(write_rdb_trial)(self, trial_id, {}, heartbeat=True)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        """Optuna's state change, with the deferred attributes, surviving a lost commit.

        A retry after a commit whose answer was lost finds the trial already in the new
        state; that is success, not the "trial already finished" error a blind repeat
        raises. (Under hpo's claim lock no other worker can have moved the trial meanwhile.)
        """
        import optuna

        attempts = 0

        def once(storage: Any, attrs: dict[str, Any]) -> bool:
            nonlocal attempts
            attempts += 1
            base = optuna.storages.RDBStorage
            if attempts > 1 and base.get_trial(storage, trial_id).state == state:
                return True
            return write_rdb_trial(storage, trial_id, attrs, state=state, values=values)

        return bool(self._write_trial(trial_id, {}, write=once))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale-trial check (``fail_stale_trials``, which its optimize runs before
        every trial), queried at most once per heartbeat interval per study.

        A query a trial was, for an answer that changes on the heartbeat's time scale: a
        lost worker's trial is now found within ``grace_period + heartbeat_interval`` of
        its last heartbeat instead of ``grace_period`` (the README says so). None while
        this process met an outage within the grace period (``heartbeats_can_be_judged``).
        """
        checked = self.__dict__.setdefault("_hpo_stale_checked", {})
        now = time.monotonic()
        interval = getattr(self, "heartbeat_interval", None) or 0
        if now - checked.get(study_id, -math.inf) < interval:
            return []
        if not heartbeats_can_be_judged(getattr(self, "grace_period", None) or 2 * interval):
            return []
        stale = retrying(stale_trial_ids)(self, study_id)
        checked[study_id] = now
        return stale

    def _write_trial(
        self, trial_id: int, attrs: dict[str, Any], write: Any = None, **kw: Any
    ) -> Any:
        pending = self._take_pending(trial_id)
        write = write or (lambda storage, merged: write_rdb_trial(storage, trial_id, merged, **kw))
        try:
            return retrying(write)(self, {**pending, **attrs})
        except BaseException:
            # Not written: keep the deferred ones for the next write (newer values win).
            self.defer_trial_user_attrs(trial_id, pending, newer_win=True)
            raise

    def _take_pending(self, trial_id: int) -> dict[str, Any]:
        with _PENDING_LOCK:
            return dict(self.__dict__.get("_hpo_pending", {}).pop(trial_id, {}))


@functools.cache
def retrying_storage_class() -> type:
    """RDBStorage whose calls survive a database restart: retried with backoff.

    Optuna's RDBStorage raises on the first broken connection; pool pre-ping only helps
    when a connection is checked out, not when the server drops it mid-query. Retried:
    reads, and writes a repeat cannot double (attributes, values and heartbeats are keyed
    upserts; a state change checks whether its lost commit went through). Heartbeats and
    state changes also carry the trial's deferred attributes (:class:`_TrialWrites`), so
    hpo's attributes cost no transaction of their own. Not retried:
    ``create_new_trial`` (a repeat after a lost commit would leave a second, orphaned
    RUNNING trial); the runner's claim loop recovers from it instead
    (``hpo.runner._recover_orphans``). Never nested: see :func:`retrying`.
    """
    import optuna

    base = optuna.storages.RDBStorage
    methods = {
        name: retrying(getattr(base, name))
        for name in dir(base)
        if callable(getattr(base, name, None))
        # Optuna's cache calls these private ones directly (_set_trial_param on every
        # suggest after a trial's first); a repeated param write is an ignored duplicate.
        and (not name.startswith("_") or name in ("_get_trials", "_set_trial_param"))
        and name
        not in (
            "remove_session",
            "upgrade",
            "get_current_version",
            "get_head_version",
            "get_all_versions",
            "create_new_trial",
            *(name for name in vars(_TrialWrites) if not name.startswith("__")),
        )
    }
    methods["__module__"] = "hpo.storage"
    return type("RetryingRDBStorage", (_TrialWrites, base), methods)
