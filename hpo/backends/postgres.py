"""PostgreSQL (``postgresql://`` and ``postgresql+psycopg2://``): many workers, many machines.

Storage calls retry a lost connection, so a restarted server costs a reconnect, not a
failed trial. Trials are claimed under a session advisory lock, which works across
machines and dies with the worker's connection.
"""

from __future__ import annotations

from typing import Any

from hpo.backends.base import Backend, Lock, redact_url
from hpo.backends.rdb import SqlLock, has_optuna_tables, open_rdb


class AdvisoryLock(SqlLock):
    acquire_sql = "SELECT pg_advisory_lock(hashtext(:key)) IS NOT NULL"
    try_sql = "SELECT pg_try_advisory_lock(hashtext(:key))"
    release_sql = "SELECT pg_advisory_unlock(hashtext(:key))"


class PostgresBackend(Backend):
    schemes = ("postgresql", "postgresql+psycopg2")

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        # No pool pre-ping: it was a round trip per storage call (about 15 a trial, +6 ms a
        # trial here), and the retry layer already reconnects after a dropped connection
        # (SQLAlchemy then discards the pool's older connections too). pool_recycle renews
        # connections older than 5 minutes at checkout, so one left idle through a long
        # trial is not dropped under us by a firewall or proxy.
        return open_rdb(real_url, {"pool_recycle": 300}, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        return has_optuna_tables(real_url)

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        # "hpo:<study>" is the key every hpo version has used for the study lock.
        key = f"hpo:{name}" if kind == "study" else f"hpo:{kind}:{name}"
        return AdvisoryLock(real_url, key, redact_url(real_url), opening=opening)

    def missing(self, shown_url: str) -> str:
        return f"no Optuna tables in {shown_url}"


BACKEND = PostgresBackend()
