"""MySQL and MariaDB through PyMySQL (``mysql+pymysql://``): many workers, many machines.

Trials are claimed under a named lock (``GET_LOCK``), which, like a Postgres advisory
lock, works across machines and dies with the worker's connection.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hpo.backends.base import Backend, Lock, redact_url
from hpo.backends.rdb import SqlLock, has_optuna_tables, open_rdb

# GET_LOCK takes seconds; a year is "wait as long as it takes" on MySQL and MariaDB alike.
_FOREVER_S = 365 * 24 * 3600


class NamedLock(SqlLock):
    acquire_sql = f"SELECT GET_LOCK(:key, {_FOREVER_S})"
    try_sql = "SELECT GET_LOCK(:key, 0)"
    release_sql = "SELECT RELEASE_LOCK(:key)"


class MysqlBackend(Backend):
    schemes = ("mysql+pymysql",)

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        # pool_recycle: MySQL drops idle connections after wait_timeout (8 h by default).
        kwargs = {"pool_pre_ping": True, "pool_recycle": 3600}
        return open_rdb(real_url, kwargs, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        return has_optuna_tables(real_url)

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        # Lock names are at most 64 characters; a digest keeps any study name within it.
        digest = hashlib.sha1(f"{kind}:{name}".encode()).hexdigest()
        return NamedLock(real_url, f"hpo:{digest}", redact_url(real_url), opening=opening)

    def missing(self, shown_url: str) -> str:
        return f"no Optuna tables in {shown_url}"


BACKEND = MysqlBackend()
