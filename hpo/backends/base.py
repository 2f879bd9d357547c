"""What every storage backend offers, and the one lock mechanism they all use.

A backend knows one family of storage URLs. It opens an Optuna storage (for a worker,
or read-only for reports), says whether a storage exists without creating it, and
hands out locks. The same lock serves two purposes: the runner's blocking study lock,
held while a worker claims a trial (exact budget, grid points and enqueued trials
taken once), and the sweep's non-blocking lock against overlapping invocations.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote_plus, urlsplit

from hpo.errors import StorageError, missing_extra

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# A URL inside a message (a driver's error, a ``storage=URL`` override).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# Query keys that carry a credential: a key whose lowercased name holds one of these.
# psycopg2 (libpq) takes password and sslpassword, PyMySQL password and passwd; token,
# secret and key cover what other drivers and proxies take (auth_token, api_key). A
# substring, not a list of names: masking a harmless key (sslkey, a file path) costs a
# "***" in a message, missing a credential leaks it.
_SECRET_KEYS = ("pass", "pwd", "secret", "token", "key", "credential")


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (safe for logs, errors and reports).

    The userinfo password and the value of every credential query key
    (``?password=...``) are hidden; the rest stays as written, ``${VAR}`` references
    included. Also takes a message: every URL in it is redacted.
    """
    return _URL_IN_TEXT.sub(lambda m: _redact_one(m[0]), url)


def split_userinfo(parts: SplitResult) -> tuple[str | None, str]:
    """A server URL's userinfo (None when it has none) and host part, split as urllib reads
    them: a host holds no "@", so the last "@" ends the userinfo and a password may hold "@"
    as written. Redaction and :func:`hpo.storage.expand_url` both split here, so the part
    hidden is the part that connects."""
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return (userinfo if at else None), hostport


def userinfo_spilled(parts: SplitResult) -> bool:
    """True when a "/", "?" or "#" written unescaped into a password ended the host part
    before the password's "@": the rest of the password, and the real host, then sit in
    the path, query or fragment, where urllib would never hide them.

    An "@" after the host part is read so: in the fragment always; in the path or query
    when the host part has no "@" (a database named ``team@x`` after ``u:pw@host`` is
    one); in the query also when there is no path (``u:p@ss?word@host``).
    """
    if "@" in parts.fragment:
        return True
    if "@" not in parts.netloc:
        return "@" in parts.path + parts.query
    return not parts.path and "@" in parts.query


def is_secret_key(key: str) -> bool:
    """True when a URL query key names a credential (``password``, ``sslpassword``, ...)."""
    return any(word in key.lower() for word in _SECRET_KEYS)


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" of an IPv6 host: show no part of it
        return url.partition("://")[0] + "://***"
    if not parts.netloc and not parts.query:  # sqlite:///path, journal:///path: a file
        return url
    scheme = url[: url.index("://") + 3]
    if parts.netloc and userinfo_spilled(parts):
        # The password runs on past the host part: show the user name, nothing after it.
        return f"{scheme}{parts.netloc.partition(':')[0]}:***"
    userinfo, hostport = split_userinfo(parts)
    netloc = parts.netloc
    if userinfo is not None and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    # Rebuilt by hand: urlunsplit drops the "//" of a URL without a host.
    head = scheme + netloc + parts.path
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return head + (f"?{query}" if parts.query else "") + fragment


def _redact_pair(pair: str) -> str:
    key, equals, _ = pair.partition("=")
    return f"{key}=***" if equals and is_secret_key(unquote_plus(key)) else pair


# When this process last met an unreachable storage (time.monotonic()): a lost connection
# or an absent proxy, and the first answer after one (hpo.backends.rdb retries them).
_unreachable_at = -math.inf


def note_storage_unreachable() -> None:
    """Record that a storage call just met a lost connection, or the first answer after one."""
    global _unreachable_at
    _unreachable_at = time.monotonic()


def heartbeats_can_be_judged(grace_period: float | None) -> bool:
    """False while this process met an unreachable storage within the last grace period.

    A heartbeat older than the grace period means a dead worker only if beats could arrive
    meanwhile. After a database or proxy restart, or a network cut, other workers' beats
    were held up as this process's calls were, and failing their trials as lost would drop
    live work. So every stale-trial check waits until the storage has been in reach for a
    whole grace period; a worker that really died is found that much later.
    """
    return not grace_period or time.monotonic() - _unreachable_at >= grace_period


def holder_line() -> str:
    """Who holds a lock: host, pid and since when (for "already running" messages)."""
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"{socket.gethostname()} pid {os.getpid()} since {started}"


def safe_name(name: str) -> str:
    """``name`` made safe for a file name."""
    return _UNSAFE.sub("-", name)


class Lock:
    """A lock shared by processes (and, for database servers, by machines).

    ``acquire`` blocks; ``try_acquire`` does not and says who holds the lock instead.
    Holding is idempotent in one object; the lock dies with the process (a file lock with
    its file descriptor, a database lock with its connection), so a killed worker or
    sweep never blocks the next one.
    """

    def __init__(self) -> None:
        self.held = False

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        if not self.held:
            self._take(block=True)
            self.held = True

    def try_acquire(self) -> str | None:
        """Take the lock if it is free: None on success, else a description of the holder."""
        if self.held:
            return None
        holder = self._take(block=False)
        self.held = holder is None
        return holder

    def release(self) -> None:
        """Let the next process in; a no-op when not held."""
        if self.held:
            self.held = False
            self._give()

    def close(self) -> None:
        """Release and drop the file or connection the lock lives on."""
        self.release()
        self._close()

    def still_held(self) -> bool:
        """True when this process still holds the lock it took.

        A file lock cannot be taken away; a database lock dies with its session, without a
        word to its holder (a killed backend, a restarted server), so a claim made under it
        must ask before it counts (:class:`~hpo.backends.rdb.SqlLock`).
        """
        return self.held

    def _take(self, *, block: bool) -> str | None:
        raise NotImplementedError

    def _give(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class FileLock(Lock):
    """An exclusive ``flock`` on a file beside the database: processes of one machine.

    A non-blocking holder writes who it is into the file, so the next invocation can say
    who holds it.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self._file: Any = None

    def _take(self, *, block: bool) -> str | None:
        import fcntl

        if self._file is None:
            if not self.path.parent.exists():
                raise StorageError(
                    f"cannot create {self.path}: folder {self.path.parent} does not exist"
                )
            self._file = open(self.path, "a+")  # noqa: SIM115 - held open while locked
        if block:
            fcntl.flock(self._file, fcntl.LOCK_EX)
            return None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            who = self._file.read().strip() or "another process"
            return f"{who} (lock {self.path})"
        self._file.seek(0)
        self._file.truncate()
        self._file.write(holder_line() + "\n")
        self._file.flush()
        return None

    def _give(self) -> None:
        import fcntl

        fcntl.flock(self._file, fcntl.LOCK_UN)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Backend:
    """One family of storage URLs; subclasses fill in each method for their scheme."""

    #: URL schemes this backend opens.
    schemes: tuple[str, ...] = ()
    #: False where the URL names a file (no user, password or host): ``${VAR}`` fills
    #: its path in as text, not into the fields of a server URL.
    credentials: bool = True
    #: The driver module a database server's URLs connect through, and the extra of
    #: hpo-finetune that installs it (None: the standard library's).
    driver: tuple[str, str] | None = None

    def refusal(self, real_url: str) -> str | None:
        """Why hpo cannot use this URL (e.g. no lock across processes, no driver), or None."""
        if self.driver is None:
            return None
        module, extra = self.driver
        return missing_extra(module, extra, f"a {real_url.partition(':')[0]}:// storage")

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        """An Optuna storage; ``read_only`` creates no file, table or row."""
        raise NotImplementedError

    def exists(self, real_url: str) -> bool:
        """True when the storage holds Optuna's tables or log; never creates anything."""
        raise NotImplementedError

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        """The lock ``kind`` ("study" or "sweep") of ``name`` in this storage.

        ``opening``: the lock is taken while the storage opens, so an unreachable server
        fails it as fast as the open itself (a few seconds), not after a worker's minute.
        """
        raise NotImplementedError

    def missing(self, shown_url: str) -> str:
        """What to tell a user whose storage does not exist yet (no fix included)."""
        return f"no hpo storage at {shown_url}"
