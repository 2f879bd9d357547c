"""Optuna journal files (``journal:///relative.log``, ``journal:////absolute.log``): one
machine, or a shared file system with working ``flock``.

Optuna's journal storage has no heartbeat, so hpo adds one (see
``optuna_compat.heartbeat_journal_storage``): without it a killed worker's trial would
stay RUNNING forever and hold a slot of the budget. Trials are claimed under an
``flock`` on ``<log>.hpo.lock``; ``<log>.lock`` is Optuna's own lock and is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.backends.base import Backend, FileLock, Lock, safe_name
from hpo.backends.sqlite import _require_writable as require_writable
from hpo.errors import StorageError


def journal_path(url: str) -> Path:
    """The log file of a ``journal:///`` URL (same slashes convention as SQLite)."""
    return Path(url.removeprefix("journal:///"))


class JournalBackend(Backend):
    schemes = ("journal",)
    credentials = False

    def refusal(self, real_url: str) -> str | None:
        if not real_url.startswith("journal:///") or real_url == "journal:///":
            return "a journal URL names a file: journal:///hpo.log or journal:////abs/hpo.log"
        return None

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        from hpo.backends.optuna_compat import heartbeat_journal_storage

        path = journal_path(real_url)
        if not read_only and path.parent and not path.parent.exists():
            raise StorageError(f"cannot create {path}: folder {path.parent} does not exist")
        if not read_only:  # the log, Optuna's lock file and hpo's beside it: as SQLite's
            require_writable(path)
        return heartbeat_journal_storage(
            str(path),
            heartbeat_interval=heartbeat.get("heartbeat_interval"),
            grace_period=heartbeat.get("grace_period"),
            stale_trial_callback=heartbeat.get("stale_trial_callback"),
        )

    def exists(self, real_url: str) -> bool:
        path = journal_path(real_url)
        return path.is_file() and path.stat().st_size > 0

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        path = journal_path(real_url)
        require_writable(path)  # a lock is taken to write; say why not before trying
        if kind == "study":
            return FileLock(path.with_name(f"{path.name}.hpo.lock"))
        return FileLock(path.with_name(f"{path.name}.{kind}-{safe_name(name)}.lock"))

    def missing(self, shown_url: str) -> str:
        return f"no journal file at {journal_path(shown_url).resolve()}"


BACKEND = JournalBackend()
