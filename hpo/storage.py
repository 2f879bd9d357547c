"""Storage URLs to Optuna storages, URL redaction, and the ``hpo:`` attribute names.

hpo keeps no tables of its own: a study is plain Optuna storage plus study and trial
user attributes whose names start with ``hpo:``, so optuna-dashboard and
``optuna trials`` read it as they read any study.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hpo.errors import ConfigError, StorageError

logger = logging.getLogger(__name__)

# Study attributes.
ATTR_CONFIG = "hpo:config"
# Trial attributes.
ATTR_METRICS = "hpo:metrics"  # final metrics the trainer returned (validation and test)
ATTR_HISTORY = "hpo:history"  # every report: [{"step": 1, "eval_accuracy": ...}, ...]
ATTR_FAILURE = "hpo:failure"  # exception | nan | oom | worker_lost
ATTR_FAILURE_MESSAGE = "hpo:failure_message"
ATTR_CHECKPOINT = "hpo:checkpoint"  # folder of the last checkpoint the trainer wrote
ATTR_OUTPUT_DIR = "hpo:output_dir"
ATTR_DEVICE = "hpo:device"
ATTR_WORKER = "hpo:worker"  # host:pid of the worker that ran the trial
ATTR_DURATION = "hpo:duration_s"
ATTR_EPOCHS = "hpo:epochs"  # training epochs actually run (pruned trials run fewer)
ATTR_RESUMED_FROM = "hpo:resumed_from"  # trial number whose checkpoint a retry resumed
ATTR_ERROR_ANALYSIS = "hpo:error_analysis"

SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql+pymysql", "journal")
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Greedy up to the last "@" of the authority, so a password holding "@" is hidden whole.
_PASSWORD = re.compile(
    r"(?P<head>[a-z0-9+]+://[^:/@\s]*:)(?P<password>[^\s/]*)(?P<tail>@[^@\s/]*)"
)
SQLITE_BUSY_TIMEOUT_S = 60
STORAGE_RETRIES = 8  # 0.5 s doubling to 10 s: about a minute for a database to come back


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs, errors and reports)."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def expand_url(url: str) -> str:
    """Expand ``${ENV_VAR}`` references; the result may hold secrets, never log it."""
    return ENV_VAR.sub(lambda m: os.environ.get(m[1], ""), url)


def check_url(url: str) -> None:
    """Reject URLs hpo cannot open, with a correction where one is obvious.

    Raises:
        ValueError: unsupported scheme or a file path where a URL belongs.
    """
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith((".db", ".sqlite", ".sqlite3")) else None
        fix = f"; for a SQLite file write {hint}" if hint else ""
        raise ValueError(f"expected a storage URL such as sqlite:///hpo.db, got {url!r}{fix}")
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"unsupported storage scheme {scheme!r}; use one of {', '.join(SUPPORTED_SCHEMES)}"
        )


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for other storages."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Any = None,
) -> Any:
    """An Optuna storage for ``url`` (``${VAR}`` expanded), tuned for concurrent workers.

    SQLite gets write-ahead logging and a long busy timeout so local worker processes
    wait for each other instead of failing with "database is locked"; Postgres gets
    pre-ping so a restarted server costs a reconnect, not a failed trial.

    Raises:
        ConfigError: a scheme hpo does not support.
        StorageError: the database cannot be opened or reached.
    """
    try:
        check_url(url)
    except ValueError as e:
        raise ConfigError(str(e), field="storage") from None
    real_url = expand_url(url)
    if url.startswith("journal://"):
        return _open_journal(real_url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    path = sqlite_path(real_url)
    if path is not None:
        _prepare_sqlite(path)
        engine_kwargs = {"creator": functools.partial(_connect_sqlite, str(path))}
    # Workers starting together on a new database would race to create Optuna's tables.
    creation_lock = StudyLock(url, "__schema__", retries=3)
    try:
        creation_lock.acquire()
        # Opening retries briefly (a server restarting as workers start); a wrong host or
        # port should fail in seconds, not after the minute a running worker waits.
        create = _retrying(
            lambda cls: cls(
                real_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
            ),
            retries=3,
        )
        return create(_retrying_storage_class())
    except Exception as e:  # SQLAlchemy and driver errors vary by backend
        reason = redact_url(str(e).splitlines()[0]).replace(expand_url(url), redact_url(url))
        raise StorageError(f"cannot open storage {redact_url(url)}: {reason}") from None
    finally:
        creation_lock.close()


def _prepare_sqlite(path: Path) -> None:
    if path.parent and not path.parent.exists():
        raise StorageError(f"cannot create {path}: folder {path.parent} does not exist")
    # WAL persists in the file, so setting it once here serves every later connection.
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """A SQLite connection for concurrent local workers.

    WAL lets readers and a writer work at once; the busy timeout makes a writer wait for
    the lock instead of failing with "database is locked"; synchronous=NORMAL drops the
    disk sync per commit (1-4 ms here), which WAL makes safe against a crashed process —
    only an OS crash or power cut can lose the last commits.
    """
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _open_journal(url: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    # Same convention as SQLite: journal:///relative.log, journal:////absolute.log
    path = Path(url.removeprefix("journal:///"))
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


class StudyLock:
    """A lock shared by every worker of one study, held while a worker claims a trial.

    Claiming means: count the trials already running or finished, and ask Optuna for the
    next one. Holding this lock across both makes the budget exact and stops two workers
    from taking the same enqueued trial or grid point. SQLite gets a file lock beside the
    database (its workers share one machine); Postgres gets an advisory lock, which works
    across machines. Optuna has no such lock: its RDB storage relies on row locks that
    SQLite ignores.
    """

    def __init__(self, url: str, study_name: str, *, retries: int = STORAGE_RETRIES):
        self._url = url
        self._retries = retries
        self._key = f"hpo:{study_name}"
        self._held = False
        self._file: Any = None
        self._connection: Any = None
        real_url = expand_url(url)
        self._sqlite = sqlite_path(real_url)
        self._postgres = real_url.startswith("postgresql")
        self._real_url = real_url

    def acquire(self) -> None:
        """Block until this worker holds the lock."""
        if self._held:
            return
        if self._sqlite is not None:
            import fcntl

            if self._file is None:
                self._file = open(f"{self._sqlite}.lock", "a+")  # noqa: SIM115
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._postgres:
            self._pg_execute("SELECT pg_advisory_lock(hashtext(:key))")
        self._held = True

    def release(self) -> None:
        """Let the next worker claim a trial; a no-op when not held."""
        if not self._held:
            return
        self._held = False
        if self._sqlite is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._postgres:
            try:
                self._pg_execute("SELECT pg_advisory_unlock(hashtext(:key))")
            except Exception:  # a lost connection already dropped the lock with it
                self._connection = None

    def close(self) -> None:
        """Release and drop the lock's own file handle or connection."""
        self.release()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _pg_execute(self, sql: str) -> None:
        _retrying(StudyLock._pg_execute_once, self._retries)(self, sql)

    def _pg_execute_once(self, sql: str) -> None:
        import sqlalchemy

        if self._connection is None:
            engine = sqlalchemy.create_engine(self._real_url, pool_pre_ping=True)
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._connection.execute(sqlalchemy.text(sql), {"key": self._key})
        except sqlalchemy.exc.DBAPIError:
            self._connection = None  # reconnect on the retry; the server dropped our locks
            raise


# --- retrying lost database connections ---------------------------------------------------


def _is_connection_error(error: BaseException) -> bool:
    """True for errors that mean "the connection went away", not "the request was wrong"."""
    import sqlalchemy.exc

    for cause in (error, error.__cause__):
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, sqlalchemy.exc.OperationalError):
            text = str(cause).lower()
            return not any(word in text for word in ("locked", "syntax", "no such"))
    return False


def _retrying(method: Any, retries: int = STORAGE_RETRIES) -> Any:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if attempt == retries or not _is_connection_error(e):
                    raise
                logger.warning(
                    "storage connection lost during %s (%s); retry %d in %.1f s",
                    method.__name__,
                    type(e.__cause__ or e).__name__,
                    attempt + 1,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    return call


@functools.cache
def _retrying_storage_class() -> type:
    """RDBStorage whose calls survive a database restart: retried with backoff.

    Optuna's RDBStorage raises on the first broken connection; pool pre-ping only helps
    when a connection is checked out, not when the server drops it mid-query. The retry
    covers reads and writes alike (a write whose commit was lost is redone; Optuna's
    writes are keyed, so a redo sets the same values).
    """
    import optuna

    base = optuna.storages.RDBStorage
    methods = {
        name: _retrying(getattr(base, name))
        for name in dir(base)
        if callable(getattr(base, name, None))
        and (not name.startswith("_") or name in ("_get_trials", "_get_stale_trial_ids"))
        and name
        not in (
            "remove_session",
            "upgrade",
            "get_current_version",
            "get_head_version",
            "get_all_versions",
        )
    }
    methods["__module__"] = __name__
    return type("RetryingRDBStorage", (base,), methods)


def __getattr__(name: str) -> Any:
    # Built on first use, so importing hpo.storage does not import Optuna; pickling a
    # storage (worker processes) finds the class here by name.
    if name == "RetryingRDBStorage":
        return _retrying_storage_class()
    raise AttributeError(name)
