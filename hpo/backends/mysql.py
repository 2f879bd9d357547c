"""MySQL and MariaDB through PyMySQL (``mysql+pymysql://``): many workers, many machines.

Trials are claimed under a named lock (``GET_LOCK``), which, like a Postgres advisory
lock, works across machines and dies with the worker's connection.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hpo.backends.base import Backend, Lock, redact_url
from hpo.backends.rdb import CONNECT_TIMEOUT_S, SqlLock, has_optuna_tables, open_rdb, url_query

# PyMySQL's read timeout is the one limit on a server that stops answering: it bounds the
# server's greeting (connect_timeout covers the TCP connect only), so it also decides how
# long an open waits on a hung server. Storage queries run milliseconds and Optuna's row
# locks are held for one short transaction; one cut at 30 s is retried as a lost
# connection. The study lock waits longer in rounds below it (NamedLock).
IO_TIMEOUT_S = 30


def connect_args(real_url: str) -> dict[str, Any]:
    """PyMySQL settings that put a limit on every wait, except those the URL sets itself."""
    query = url_query(real_url)
    limits = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": IO_TIMEOUT_S,
        "write_timeout": IO_TIMEOUT_S,
    }
    return {name: value for name, value in limits.items() if name not in query}


class NamedLock(SqlLock):
    """``GET_LOCK``, waited for in rounds shorter than the connection's read timeout: the
    timeout still finds a hung server, and the wait lasts as long as the holder claims."""

    try_sql = "SELECT GET_LOCK(:key, 0)"
    release_sql = "SELECT RELEASE_LOCK(:key)"
    held_sql = "SELECT IS_USED_LOCK(:key) = CONNECTION_ID()"

    def __init__(self, *args: Any, read_timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # GET_LOCK returns 0 after a round; SqlLock._take then starts the next one.
        self.acquire_sql = f"SELECT GET_LOCK(:key, {max(1, int(read_timeout_s) // 3)})"


class MysqlBackend(Backend):
    schemes = ("mysql+pymysql",)
    driver = ("pymysql", "mysql")

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        # pool_recycle: MySQL drops idle connections after wait_timeout (8 h by default).
        kwargs = {
            "pool_pre_ping": True,
            "pool_recycle": 3600,
            "connect_args": connect_args(real_url),
        }
        return open_rdb(real_url, kwargs, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        return has_optuna_tables(real_url, connect_args=connect_args(real_url))

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        # Lock names are at most 64 characters; a digest keeps any study name within it.
        digest = hashlib.sha1(f"{kind}:{name}".encode()).hexdigest()
        read_timeout = float(url_query(real_url).get("read_timeout", IO_TIMEOUT_S))
        return NamedLock(
            real_url,
            f"hpo:{digest}",
            redact_url(real_url),
            opening=opening,
            connect_args=connect_args(real_url),
            read_timeout_s=read_timeout,
        )

    def missing(self, shown_url: str) -> str:
        return f"no Optuna tables in {shown_url}"


BACKEND = MysqlBackend()
