"""SQLite files (``sqlite:///relative.db``, ``sqlite:////absolute.db``): one machine.

Worker processes share the file through write-ahead logging and a long busy timeout;
they claim trials under an ``flock`` on ``<db>.lock`` (SQLite ignores the row locks
Optuna's RDB storage relies on). In-memory SQLite is refused: worker processes could
not share it.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

from hpo.backends.base import Backend, FileLock, Lock, safe_name
from hpo.backends.rdb import open_rdb
from hpo.errors import StorageError

SQLITE_BUSY_TIMEOUT_S = 60


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for other storages."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


class SqliteBackend(Backend):
    schemes = ("sqlite",)
    credentials = False

    def refusal(self, real_url: str) -> str | None:
        if sqlite_path(real_url) is None:
            return (
                "in-memory SQLite cannot be shared by worker processes or read back later; "
                "name a file such as sqlite:///hpo.db"
            )
        return None

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        path = _path(real_url)
        if not read_only:
            _prepare(path)
        creator = functools.partial(_connect, str(path))
        return open_rdb(real_url, {"creator": creator}, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        path = _path(real_url)
        if not path.is_file():
            return False
        # The file exists, so connecting creates nothing that outlives the connection
        # (a read-only URI would leave WAL's -shm and -wal files behind).
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='studies'"
            ).fetchall()
        except sqlite3.DatabaseError:
            return False
        finally:
            connection.close()
        return bool(rows)

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        path = _path(real_url)
        # Every study of one file shares <db>.lock: SQLite serialises their writes anyway.
        if kind == "study":
            return FileLock(path.with_name(f"{path.name}.lock"))
        return FileLock(path.with_name(f"{path.name}.{kind}-{safe_name(name)}.lock"))

    def missing(self, shown_url: str) -> str:
        path = sqlite_path(shown_url)
        if path is None:
            return f"no hpo study database at {shown_url}"
        why = (
            "the file exists but has no Optuna tables: it is empty or not a study database"
            if path.is_file()
            else "the file does not exist"
        )
        return f"no hpo study database at {path.resolve()} ({why})"


def _path(real_url: str) -> Path:
    path = sqlite_path(real_url)
    if path is None:
        raise StorageError(f"{real_url}: in-memory SQLite is not supported; name a file")
    return path


def _prepare(path: Path) -> None:
    if path.parent and not path.parent.exists():
        raise StorageError(f"cannot create {path}: folder {path.parent} does not exist")
    # WAL persists in the file, so setting it once here serves every later connection.
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _connect(path: str) -> sqlite3.Connection:
    """A SQLite connection for concurrent local workers.

    WAL lets readers and a writer work at once; the busy timeout makes a writer wait for
    the lock instead of failing with "database is locked"; synchronous=NORMAL drops the
    disk sync per commit (1-4 ms here), which WAL makes safe against a crashed process —
    only an OS crash or power cut can lose the last commits.
    """
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


BACKEND = SqliteBackend()
