"""``hpo storage-proxy``: Optuna's gRPC storage proxy in front of a database, with hpo's
claim lock and heartbeats beside it on the same port.

Workers use ``storage: grpc://host:port`` (:mod:`hpo.backends.grpc_proxy`, which also
describes the protocol). The proxy opens the database once, as hpo's workers open it
(connection retries and timeouts, Optuna's tables created), with one connection for
storage calls, and serves:

- Optuna's ``StorageService`` (``optuna.storages.run_grpc_proxy_server``'s servicer), on
  Optuna's in-process cache, as Optuna recommends (one that also takes the parameters of
  a trial made through another proxy or before a restart: ``optuna_compat.proxy_cache``);
- hpo's :data:`~hpo.backends.grpc_proxy.SERVICE`: ``Hold`` (the study and sweep locks, as
  a stream held open), ``Held``, ``RecordHeartbeat``, ``StaleTrialIds``,
  ``HeartbeatAges``, ``BudgetCounts``, ``WaitingTrialIds`` and ``SetTrialUserAttrs``.

With ``HPO_PROXY_TOKEN`` set, the proxy refuses every call that does not carry it
(:func:`require_token`); workers holding the same variable send it. With ``--tls-cert``
and ``--tls-key`` it speaks TLS (workers: ``grpcs://host:port``).

Each lock is held in memory (claims of one study through this proxy queue here) and, for
as long as a worker holds it, as the database's own study lock on one more connection, so
direct workers and other proxies stay excluded. A server thread waits per held or queued
lock, so the thread pool is sized for three calls per worker (its lock, a storage call,
its heartbeat): ``--threads``.
"""

from __future__ import annotations

import hmac
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hpo import storage as st
from hpo.backends.grpc_proxy import (
    KEEPALIVE,
    SERVICE,
    TOKEN_VARIABLE,
    decode,
    encode,
    read_pem,
)
from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 13000
# Three calls per worker at most (its held lock, a storage call, its heartbeat thread's):
# 512 threads serve about 170 workers. Threads are created as calls need them.
DEFAULT_THREADS = 512
# Storage calls share this many database connections (the lock takes one more while held).
DEFAULT_CONNECTIONS = 1
# Seconds a stopping proxy lets calls in flight finish.
STOP_GRACE_S = 5.0
# The shortest proxy token taken: 16 characters of `openssl rand -hex` are 64 bits.
MIN_TOKEN_CHARS = 16
# A client without the token is logged at most this often (its retries would flood the log).
REFUSAL_LOG_INTERVAL_S = 60.0


class Locks:
    """The locks workers hold through this proxy: in memory, and the database's beneath."""

    def __init__(self, real_url: str):
        self._real_url = real_url
        self._guard = threading.Lock()
        self._mutexes: dict[tuple[str, str], threading.Lock] = {}
        self._database: dict[tuple[str, str], st.Lock] = {}
        self._holders: dict[tuple[str, str], str] = {}
        self._tokens: dict[str, tuple[str, str]] = {}
        self._queued: Counter[tuple[str, str]] = Counter()

    def hold(self, request: dict[str, Any], context: Any) -> Iterator[dict[str, Any]]:
        """Answer ``{"held": true}`` once the lock is this stream's and keep it until the
        stream ends; ``{"held": false, "holder": ...}`` at once for a busy try."""
        key = (str(request["kind"]), str(request["name"]))
        with self._guard:
            mutex = self._mutexes.setdefault(key, threading.Lock())
            self._queued[key] += 1
        try:
            got = self._wait(mutex, bool(request.get("block", True)), context)
        finally:
            with self._guard:
                self._queued[key] -= 1
        if got is None:  # the worker gave up (or died) while queued
            return
        if not got:
            yield {"held": False, "holder": self._holders.get(key, "another invocation")}
            return
        token = str(request["token"])
        try:
            database = self._database_lock(key)
            if request.get("block", True):
                database.acquire()
            elif (holder := database.try_acquire()) is not None:
                yield {"held": False, "holder": holder}
                return
            ended = threading.Event()
            if not context.add_callback(ended.set):
                return  # the stream ended while the database's lock was awaited
            self._holders[key] = str(request.get("who") or "a worker")
            self._tokens[token] = key
            yield {"held": True}
            ended.wait()
        finally:
            self._tokens.pop(token, None)
            self._holders.pop(key, None)
            self._release_database(key)
            mutex.release()

    @staticmethod
    def _wait(mutex: threading.Lock, block: bool, context: Any) -> bool | None:
        """Take ``mutex``: True; busy for a try: False; None when the stream ended first."""
        if not block:
            return mutex.acquire(blocking=False)
        while not mutex.acquire(timeout=1.0):
            if not context.is_active():
                return None
        return True

    def _release_database(self, key: tuple[str, str]) -> None:
        """Release the database's lock; with no worker queued for it, close its connection
        too, so a proxy serving many studies over time holds none for idle ones."""
        lock = self._database.get(key)
        if lock is None:
            return
        with self._guard:
            idle = self._queued[key] == 0
            if idle:
                del self._database[key]
        lock.close() if idle else lock.release()

    def held(self, token: str) -> bool:
        """True while ``token``'s stream holds its lock and the database lock under it is
        alive (a restarted database dropped it without a word)."""
        key = self._tokens.get(token)
        lock = self._database.get(key) if key is not None else None
        return lock is not None and lock.still_held()

    def _database_lock(self, key: tuple[str, str]) -> st.Lock:
        if key not in self._database:  # kept while workers queue for it: one connection
            kind, name = key
            backend = st.backend_of(self._real_url)
            self._database[key] = backend.lock(st.expand_url(self._real_url), kind, name)
        return self._database[key]

    def close(self) -> None:
        for lock in list(self._database.values()):
            lock.close()


def open_proxied_storage(url: str, connections: int) -> Any:
    """The database behind the proxy, opened as a worker opens it, its pool capped at
    ``connections``.

    Raises:
        ConfigError: a storage Optuna's proxy cannot front (journal files, another proxy).
    """
    scheme = url.partition(":")[0]
    if scheme == "journal":
        raise ConfigError(
            "--storage: Optuna's gRPC proxy serves database storages only (not journal "
            "files, optuna/optuna#6084); put the study in sqlite:///, postgresql:// or mysql://",
            field="storage",
        )
    if scheme == "grpc":
        raise ConfigError(
            "--storage: a proxy fronts a database, not another proxy; give the database URL",
            field="storage",
        )
    # Optuna creates its tables on two connections at once (its version check inside an
    # open session): created first on an uncapped pool, then opened again capped.
    st.open_storage(url).engine.dispose()
    return st.open_storage(url, pool_size=connections)


#: The Postgres ``application_name`` of the proxy's connections (``pg_stat_activity``).
APPLICATION_NAME = "hpo-storage-proxy"


def named_connections(url: str) -> str:
    """``url`` with the proxy's connections named, on Postgres (unless the URL names them):
    an operator counts them in ``pg_stat_activity``, and so do the tests."""
    if not url.startswith("postgresql") or "application_name=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}application_name={APPLICATION_NAME}"


def build_server(
    url: str,
    host: str,
    port: int,
    *,
    threads: int = DEFAULT_THREADS,
    connections: int = DEFAULT_CONNECTIONS,
    token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[Any, Callable[[], None]]:
    """The proxy's gRPC server, bound (``port`` 0: a free one) and not started, and the
    function that closes what it opened. Returns ``(server, close)``; ``server.port`` is
    the bound port. ``token``: required of every call (:func:`require_token`). ``tls``:
    the PEM certificate chain and private key it serves TLS with (:func:`read_tls`)."""
    import grpc

    from hpo.backends.optuna_compat import add_optuna_storage_service, proxy_cache

    url = named_connections(url)
    rdb = open_proxied_storage(url, connections)
    locks = Locks(url)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads),
        options=KEEPALIVE,
        interceptors=[require_token(token)] if token else None,
    )
    add_optuna_storage_service(server, proxy_cache(rdb))
    server.add_generic_rpc_handlers([_hpo_service(rdb, locks)])
    if tls:
        chain, key = tls
        credentials = grpc.ssl_server_credentials([(key, chain)])
        server.port = server.add_secure_port(f"{host}:{port}", credentials)
    else:
        server.port = server.add_insecure_port(f"{host}:{port}")
    if not server.port:
        raise ConfigError(f"--port: cannot listen on {host}:{port} (in use?)", field="port")

    def close() -> None:
        locks.close()
        rdb.engine.dispose()

    return server, close


def check_token(token: str) -> None:
    """Refuse a token short enough to guess.

    Raises:
        ConfigError: fewer than :data:`MIN_TOKEN_CHARS` characters.
    """
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{len(token)} characters can be guessed; use at least "
            f"{MIN_TOKEN_CHARS}, such as the output of `openssl rand -hex 32`",
            field=TOKEN_VARIABLE,
        )


def read_tls(cert: str, key: str) -> tuple[bytes, bytes]:
    """The certificate chain and private key PEM files of ``--tls-cert`` and ``--tls-key``,
    checked as Python's ssl module loads them (a key that does not match its certificate
    is refused here, not at each worker's handshake).

    Raises:
        ConfigError: a file unreadable, not PEM, or a key that does not match.
    """
    import ssl

    chain = read_pem(cert, "--tls-cert", "CERTIFICATE")
    private = read_pem(key, "--tls-key", "PRIVATE KEY")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        raise ConfigError(
            f"--tls-cert {cert} and --tls-key {key} do not load as a certificate and its "
            f"unencrypted key ({e.reason or e})",
            field="--tls-key",
        ) from None
    return chain, private


def require_token(token: str) -> Any:
    """A server interceptor that refuses (``UNAUTHENTICATED``) every call, of Optuna's
    service or hpo's, whose ``authorization`` metadata is not ``Bearer <token>``."""
    import grpc

    expected = f"Bearer {token}".encode()
    warned = [-math.inf]

    def refuse(request: Any, context: Any) -> Any:
        peer = context.peer()
        if time.monotonic() - warned[0] > REFUSAL_LOG_INTERVAL_S:  # one line a minute at most
            warned[0] = time.monotonic()
            logger.warning("refused a call from %s without the proxy token", peer)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"this proxy requires {TOKEN_VARIABLE}")

    def refuse_stream(request: Any, context: Any) -> Iterator[Any]:
        refuse(request, context)
        yield  # never reached: abort raises

    class TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            given = dict(details.invocation_metadata or ()).get("authorization", "")
            if handler is None or hmac.compare_digest(str(given).encode(), expected):
                return handler
            if handler.response_streaming:
                return grpc.unary_stream_rpc_method_handler(refuse_stream)
            return grpc.unary_unary_rpc_method_handler(refuse)

    return TokenCheck()


def _hpo_service(rdb: Any, locks: Locks) -> Any:
    """hpo's methods, JSON in and out; each runs on the proxy's own storage object."""
    import grpc

    from hpo.backends.base import heartbeats_can_be_judged
    from hpo.backends.optuna_compat import (
        rdb_budget_counts,
        rdb_heartbeat_ages,
        rdb_waiting_trial_ids,
        stale_trial_ids,
    )
    from hpo.backends.rdb import retrying

    def unary(function: Callable[..., Any]) -> Any:
        def handle(request: dict[str, Any], context: Any) -> dict[str, Any]:
            return {"result": function(**request)}

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=decode, response_serializer=encode
        )

    def set_attrs(trial_id: int, attrs: dict[str, Any]) -> None:
        rdb.set_trial_user_attrs_now(trial_id, attrs)

    def stale(study_id: int, grace_period: int) -> list[int]:
        # The database restarting behind the proxy held up the workers' heartbeats here.
        if not heartbeats_can_be_judged(grace_period):
            return []
        return list(retrying(stale_trial_ids)(rdb, study_id, grace_period))

    def ages(study_id: int) -> dict[str, float]:
        found = retrying(rdb_heartbeat_ages)(rdb, study_id)
        return {str(number): age for number, age in found.items()}

    def budget(study_id: int, failure_key: str, lost_key: str) -> Any:
        return retrying(rdb_budget_counts)(rdb, study_id, failure_key, lost_key)

    def waiting(study_id: int) -> list[int]:
        return list(retrying(rdb_waiting_trial_ids)(rdb, study_id))

    methods = {
        "WaitingTrialIds": unary(waiting),
        "Hold": grpc.unary_stream_rpc_method_handler(
            locks.hold, request_deserializer=decode, response_serializer=encode
        ),
        "Held": unary(locks.held),
        "RecordHeartbeat": unary(rdb.record_heartbeat),
        "StaleTrialIds": unary(stale),
        "HeartbeatAges": unary(ages),
        "BudgetCounts": unary(budget),
        "SetTrialUserAttrs": unary(set_attrs),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def serve(
    url: str,
    host: str,
    port: int,
    *,
    threads: int = DEFAULT_THREADS,
    connections: int = DEFAULT_CONNECTIONS,
    token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the proxy until SIGINT or SIGTERM, then let calls in flight finish."""
    server, close = build_server(
        url, host, port, threads=threads, connections=connections, token=token, tls=tls
    )
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    try:
        server.start()
        if on_ready:
            on_ready(f"{'grpcs' if tls else 'grpc'}://{host}:{server.port}")
        stop.wait()
    finally:
        server.stop(STOP_GRACE_S).wait()
        close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
