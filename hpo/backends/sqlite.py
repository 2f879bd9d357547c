"""SQLite files (``sqlite:///relative.db``, ``sqlite:////absolute.db``): one machine.

Worker processes share the file through write-ahead logging and a long busy timeout;
they claim trials under an ``flock`` on ``<db>.lock`` (SQLite ignores the row locks
Optuna's RDB storage relies on). In-memory SQLite is refused: worker processes could
not share it.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import Any

from hpo.backends.base import Backend, FileLock, Lock, safe_name
from hpo.backends.rdb import COMPLETE_MARK, open_rdb
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
            _require_writable(path)
            _prepare(path)
        if read_only and not _writable(path):
            creator = functools.partial(_connect_read_only, path)
        else:
            creator = functools.partial(_connect, str(path))
        return open_rdb(real_url, {"creator": creator}, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        path = _path(real_url)
        if not path.is_file():
            return False
        try:
            if _writable(path):
                # Connecting creates nothing that outlives the connection (a read-only URI
                # would leave WAL's -shm and -wal files behind).
                connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
            else:
                connection = _connect_read_only(path)  # it reads the file to pick a mode
        except sqlite3.DatabaseError:  # "file is not a database"
            return False
        try:
            # Optuna stamps alembic_version last: until then a run is still creating the
            # storage, and a reader opening it would write the version rows itself.
            rows = connection.execute(f"SELECT 1 FROM {COMPLETE_MARK} LIMIT 1").fetchall()
        except sqlite3.DatabaseError:  # "no such table"
            return False
        finally:
            connection.close()
        return bool(rows)

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        path = _path(real_url)
        _require_writable(path)  # a lock is taken to write; say why not before trying
        # Every study of one file shares <db>.lock: SQLite serialises their writes anyway.
        if kind == "study":
            return FileLock(path.with_name(f"{path.name}.lock"))
        return FileLock(path.with_name(f"{path.name}.{kind}-{safe_name(name)}.lock"))

    def missing(self, shown_url: str) -> str:
        path = sqlite_path(shown_url)
        if path is None:
            return f"no hpo study database at {shown_url}"
        why = (
            "the file exists but has no complete Optuna tables: it is empty, not a study "
            "database, or a run is creating them right now"
            if path.is_file()
            else "the file does not exist"
        )
        return f"no hpo study database at {path.resolve()} ({why})"


def _path(real_url: str) -> Path:
    path = sqlite_path(real_url)
    if path is None:
        raise StorageError(f"{real_url}: in-memory SQLite is not supported; name a file")
    return path


def _writable(path: Path) -> bool:
    """True when SQLite can write the database: the file, and its folder (the -wal, -shm
    and journal files live beside it). ``access`` asks the kernel, so a read-only mount
    or an immutable file counts even for root, whom permissions do not stop."""
    folder = path.parent if str(path.parent) else Path(".")
    return all(os.access(p, os.W_OK) for p in (path, folder) if p.exists())


def _require_writable(path: Path) -> None:
    """Refuse a database hpo cannot write, in one line: SQLite would report it only at
    the first commit, where it looked like a lost connection and was retried a minute."""
    if _writable(path):
        return
    if path.exists() and not os.access(path, os.W_OK):
        where = _why_not_writable(path)
    else:  # SQLite writes its -wal, -shm and journal files beside the database
        where = f"its folder {path.parent.resolve()}: {_why_not_writable(path.parent)}"
    raise StorageError(
        f"{path.resolve()} is read-only ({where}); hpo run writes the study there: copy it "
        "to a writable folder and point storage at the copy, or make it writable. "
        "hpo status, best and report read it as it is"
    )


def _why_not_writable(path: Path) -> str:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return "read-only file system"
    return "no write permission, or an immutable file"


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, to a database hpo cannot write.

    ``mode=ro`` reads the newest commits, those still in the -wal file included, but in
    WAL mode needs the -shm file or a folder to create it in. On a read-only folder
    without one, ``immutable=1`` reads the main file as it is: a closed study's file holds
    everything (the last connection checkpoints and removes the -wal file).
    """
    uri = path.resolve().as_uri()
    connection = sqlite3.connect(
        f"{uri}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False
    )
    try:
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:  # "unable to open database file": no -shm to be had
        connection.close()
        connection = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
    return connection


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
