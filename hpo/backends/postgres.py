"""PostgreSQL (``postgresql://`` and ``postgresql+psycopg2://``): many workers, many machines.

Both schemes connect through psycopg2. Storage calls retry a lost connection, so a
restarted server costs a reconnect, not a failed trial. Trials are claimed under a session
advisory lock, which works across machines and dies with the worker's connection.
"""

from __future__ import annotations

from typing import Any

from hpo.backends.base import Backend, Lock, redact_url
from hpo.backends.rdb import CONNECT_TIMEOUT_S, SqlLock, has_optuna_tables, open_rdb, url_query

# A storage query runs milliseconds (a full read of a large study, seconds); a minute ends
# one that waits on a stuck session's row lock, and the retry layer then tries it again.
# The study lock's connection has none: its wait lasts as long as another worker claims.
STATEMENT_TIMEOUT = "1min"
# A server that died or vanished mid-connection (no FIN, no RST) is found within about a
# minute: keepalive probes after 30 s idle, every 10 s, 3 unanswered; and data the server
# has not acknowledged for 60 s. Together they bound a wait on the advisory lock, too.
_TCP_LIMITS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _driver_url(real_url: str) -> str:
    """``real_url`` with psycopg2 named as its driver when it names none.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which hpo does not depend
    on (it ships psycopg2-binary): such a URL passed validation and then failed to open
    with "No module named 'psycopg'". Always psycopg2, even where psycopg 3 happens to be
    installed, so one URL means the same driver on every machine of a study, and the one
    hpo is tested with. Only the connection uses this form; messages and the stored config
    keep the URL as written.
    """
    scheme, _, rest = real_url.partition("://")
    return f"postgresql+psycopg2://{rest}" if scheme == "postgresql" else real_url


def connect_args(real_url: str, *, lock: bool = False) -> dict[str, Any]:
    """psycopg2 settings that put a limit on every wait, except those the URL sets itself.

    Args:
        lock: for the study lock's connection: no statement timeout, even one the URL's
            ``options`` sets, since ``pg_advisory_lock`` waits legitimately as long as
            another worker holds the lock (the TCP limits still find a dead server).
    """
    query = url_query(real_url)
    limits: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **_TCP_LIMITS}
    args = {name: value for name, value in limits.items() if name not in query}
    given = query.get("options", "")
    options = " ".join(given) if isinstance(given, tuple) else given  # ?options= repeated
    if lock:
        args["options"] = f"{options} -c statement_timeout=0".strip()
    elif "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT}".strip()
    return args


class AdvisoryLock(SqlLock):
    acquire_sql = "SELECT pg_advisory_lock(hashtext(:key)) IS NOT NULL"
    try_sql = "SELECT pg_try_advisory_lock(hashtext(:key))"
    release_sql = "SELECT pg_advisory_unlock(hashtext(:key))"
    # A one-bigint-key advisory lock shows in pg_locks as its high 32 bits (classid) and
    # low 32 bits (objid) with objsubid 1; hashtext's int4 is sign-extended to that bigint.
    held_sql = (
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND objsubid = 1"
        " AND objid = (hashtext(:key)::bigint & 4294967295)::oid)"
    )


class PostgresBackend(Backend):
    schemes = ("postgresql", "postgresql+psycopg2")
    driver = ("psycopg2", "postgres")  # psycopg2-binary, or a psycopg2 built from source

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        # No pool pre-ping: it was a round trip per storage call (about 15 a trial, +6 ms a
        # trial here), and the retry layer already reconnects after a dropped connection
        # (SQLAlchemy then discards the pool's older connections too). pool_recycle renews
        # connections older than 5 minutes at checkout, so one left idle through a long
        # trial is not dropped under us by a firewall or proxy.
        kwargs = {"pool_recycle": 300, "connect_args": connect_args(real_url)}
        return open_rdb(_driver_url(real_url), kwargs, read_only=read_only, **heartbeat)

    def exists(self, real_url: str) -> bool:
        return has_optuna_tables(_driver_url(real_url), connect_args=connect_args(real_url))

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        # "hpo:<study>" is the key every hpo version has used for the study lock.
        key = f"hpo:{name}" if kind == "study" else f"hpo:{kind}:{name}"
        shown = redact_url(real_url)
        limits = connect_args(real_url, lock=True)
        return AdvisoryLock(
            _driver_url(real_url), key, shown, opening=opening, connect_args=limits
        )

    def missing(self, shown_url: str) -> str:
        return f"no Optuna tables in {shown_url}"


BACKEND = PostgresBackend()
