"""Optuna's gRPC storage proxy (``grpc://host:port``): many workers, one database connection.

``hpo storage-proxy`` (:mod:`hpo.storage_proxy`) runs Optuna's ``GrpcStorageProxy``
server in front of a database and, on the same port, hpo's own small service
(:data:`SERVICE`): what Optuna's protocol lacks for hpo's guarantees.

- **The claim lock lives in the proxy.** A worker holds it as an open gRPC stream
  (:class:`ProxyLock`): the proxy serializes the study's claims in memory and also takes
  the database's own study lock (a Postgres advisory lock, a MySQL ``GET_LOCK``, an
  ``flock`` beside SQLite) for each one, so workers through a proxy, workers on the
  database itself and other proxies all exclude each other. The lock dies with the
  stream: a killed worker's stream ends (TCP reset, or gRPC keepalive on a vanished
  machine) and the proxy releases.
- **Heartbeats are the database's.** A worker's heartbeat and the stale-trial check run
  in the proxy on Optuna's heartbeat table with the database's clock, as a direct
  worker's do, so the two kinds of worker find each other's lost trials. Neither side
  judges heartbeats for a grace period after it lost the other (a restart held them up:
  ``hpo.backends.base.heartbeats_can_be_judged``).
- **Budget counts, waiting trials and attribute batches** run in the proxy as one query
  or one transaction, instead of shipping every running trial to each worker inside each
  claim (Optuna's client refetches all unfinished trials on every read).

Messages of hpo's service are JSON; Optuna's are its own protobufs. A lost proxy
(restart, network) is retried like a lost database connection
(:func:`hpo.backends.rdb.is_connection_error`). With :data:`TOKEN_VARIABLE` set, every
call carries it as a bearer token (:func:`open_channel`), which a proxy started with one
requires of every call, Optuna's and hpo's. ``grpcs://host:port`` is the same over TLS, the
proxy's certificate checked against :data:`CA_VARIABLE`'s file or the system's roots.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from hpo.backends.base import Backend, Lock, heartbeats_can_be_judged, holder_line
from hpo.backends.rdb import STORAGE_RETRIES, retrying
from hpo.errors import ConfigError, StorageError

logger = logging.getLogger(__name__)

#: hpo's gRPC service beside Optuna's ``optuna.StorageService`` on the proxy's port.
SERVICE = "hpo.StorageProxy"
# Seconds to reach a proxy that opens a storage: a down proxy is one line, not a hang.
CONNECT_TIMEOUT_S = 10
# gRPC keepalive on both ends: a machine that vanished (no FIN, no RST) loses its stream,
# and so the claim lock it held, within about keepalive time + timeout.
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# Optuna's own client sends whole studies: no cap on what it receives.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), *KEEPALIVE]
#: The shared secret of a proxy and its workers, from the environment on both sides (a
#: Kubernetes Secret, say): never in a study file, a URL or a log.
TOKEN_VARIABLE = "HPO_PROXY_TOKEN"
#: A PEM file of the certificates that sign a ``grpcs://`` proxy's (a private CA, or the
#: proxy's self-signed certificate); unset, the system's roots.
CA_VARIABLE = "HPO_PROXY_CA"
# Bytes read at most from a PEM file: a certificate chain is a few kilobytes.
MAX_PEM_BYTES = 1 << 20


def proxy_token() -> str | None:
    """The proxy token this process holds (:data:`TOKEN_VARIABLE`), or None."""
    return os.environ.get(TOKEN_VARIABLE) or None


def open_channel(host: str, port: int, tls: bool = False) -> Any:
    """A channel to the proxy at ``host:port`` (over TLS: ``tls``), with keepalive, that
    sends this process's proxy token (if it holds one) with every call."""
    import grpc

    if tls:
        trusted = grpc.ssl_channel_credentials(root_certificates=trusted_certificates())
        channel = grpc.secure_channel(f"{host}:{port}", trusted, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
    token = proxy_token()
    return grpc.intercept_channel(channel, _token_sender_class()(token)) if token else channel


def trusted_certificates() -> bytes | None:
    """The PEM certificates :data:`CA_VARIABLE` names, or None (the system's roots).

    Raises:
        ConfigError: the file cannot be read, or holds no PEM certificate.
    """
    path = os.environ.get(CA_VARIABLE)
    if not path:
        return None
    return read_pem(path, CA_VARIABLE, "CERTIFICATE")


def read_pem(path: str, field: str, kind: str) -> bytes:
    """The PEM file at ``path`` (bounded), which must hold a ``kind`` block.

    Raises:
        ConfigError: naming ``field``: unreadable, too big, or no such block.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", field=field) from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{path} is over {MAX_PEM_BYTES >> 20} MiB: not a PEM file", field=field)
    # "-----BEGIN CERTIFICATE-----"; a key's line may name its kind ("BEGIN RSA PRIVATE KEY").
    if b"-----BEGIN " not in data or f"{kind}-----".encode() not in data:
        raise ConfigError(f"{path} holds no PEM {kind.lower()}", field=field)
    return data


def uses_tls(url: str) -> bool:
    """True for a ``grpcs://`` URL: the proxy speaks TLS."""
    return urlsplit(url).scheme == "grpcs"


@functools.cache
def _token_sender_class() -> type:
    """A client interceptor adding ``authorization: Bearer <token>`` to each call's
    metadata: Optuna's generated stub takes no metadata of its own."""
    import grpc

    class CallDetails(
        collections.namedtuple(
            "CallDetails",
            ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
        ),
        grpc.ClientCallDetails,
    ):
        pass

    class TokenSender(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
        def __init__(self, token: str):
            self._metadata = (("authorization", f"Bearer {token}"),)

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = (*(details.metadata or ()), *self._metadata)
            with_token = CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                details.compression,
            )
            return continuation(with_token, request)

        intercept_unary_stream = intercept_unary_unary

    return TokenSender


def refused_token(error: BaseException) -> bool:
    """True for a proxy's refusal of a call whose token was missing or wrong."""
    if type(error).__module__.split(".")[0] != "grpc":
        return False
    import grpc

    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict[str, Any]:
    # Always an object: gRPC reads a deserializer's None as a failure to deserialize.
    return dict(json.loads(data.decode()))


def host_port(url: str) -> tuple[str, int]:
    """Host and port of a ``grpc://host:port`` URL (checked by :meth:`GrpcBackend.refusal`)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


class _Stub:
    """Unary calls of hpo's service on one channel, JSON both ways."""

    def __init__(self, channel: Any):
        self._channel = channel
        self._calls: dict[str, Any] = {}

    def call(self, method: str, timeout: float | None = None, **request: Any) -> Any:
        """One call, not retried: the storage's methods retry as a whole (``retrying``)."""
        if method not in self._calls:
            self._calls[method] = self._channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=encode, response_deserializer=decode
            )
        return self._calls[method](request, timeout=timeout)["result"]


class ProxyLock(Lock):
    """The study (or sweep) lock, held in the proxy for as long as this worker keeps a
    ``Hold`` stream open; the proxy also holds the database's lock meanwhile."""

    def __init__(self, host: str, port: int, kind: str, name: str, tls: bool = False):
        super().__init__()
        self._target = (host, port, tls)
        self._request = {"kind": kind, "name": name}
        self._channel: Any = None
        self._stream: Any = None
        self._token = ""

    def _open(self) -> Any:
        if self._channel is None:
            self._channel = open_channel(*self._target)
        return self._channel

    def _take(self, *, block: bool) -> str | None:
        def hold() -> Any:
            self._token = uuid.uuid4().hex
            request = {**self._request, "block": block, "token": self._token}
            request["who"] = holder_line()
            hold_call = self._open().unary_stream(
                f"/{SERVICE}/Hold", request_serializer=encode, response_deserializer=decode
            )
            stream = hold_call(request)
            try:
                return stream, next(stream)
            except BaseException:
                stream.cancel()
                raise

        stream, answer = retrying(lambda _: hold(), STORAGE_RETRIES)(None)
        if answer.get("held"):
            self._stream = stream
            return None
        stream.cancel()
        return str(answer.get("holder") or "another invocation (through the storage proxy)")

    def still_held(self) -> bool:
        """Ask the proxy whether this stream still holds the lock (and the database's lock
        under it is alive); a restarted proxy or database dropped it silently."""
        if not self.held:
            return False
        held = False
        if self._stream is not None and self._stream.is_active():
            try:
                held = bool(_Stub(self._open()).call("Held", token=self._token))
            except Exception:  # noqa: BLE001 - an unreachable proxy holds nothing for us
                held = False
        if not held:
            self.held = False
            self._give()
        return held

    def _give(self) -> None:
        if self._stream is not None:
            self._stream.cancel()  # the proxy releases when the stream ends
            self._stream = None

    def _close(self) -> None:
        self._give()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class _NoLock(Lock):
    """A lock nobody else wants: taking it costs nothing."""

    def _take(self, *, block: bool) -> str | None:
        return None

    def _give(self) -> None:
        pass

    def _close(self) -> None:
        pass


class GrpcBackend(Backend):
    schemes = ("grpc", "grpcs")
    credentials = False  # grpc://host:port: ${VAR} is filled in as text
    driver = ("grpc", "proxy")

    def refusal(self, real_url: str) -> str | None:
        parts = urlsplit(real_url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or (port is None and "${" not in parts.netloc):
            return "a storage proxy URL names host and port: grpc://proxy-host:13000"
        if parts.path.strip("/") or parts.query or parts.username:
            return (
                "a storage proxy URL is grpc://host:port (grpcs:// over TLS) and nothing "
                "else: the database, user and password belong to `hpo storage-proxy --storage`"
            )
        return super().refusal(real_url)

    def open(self, real_url: str, *, read_only: bool = False, **heartbeat: Any) -> Any:
        host, port = host_port(real_url)
        heartbeat.pop("pool_size", None)  # the proxy's own connections are its business
        storage = proxy_storage_class()(host=host, port=port, tls=uses_tls(real_url), **heartbeat)
        try:
            # One cheap call first: a refused token or a failed TLS handshake is one line
            # now (not a failed trial later, nor a 10 s wait for a readiness that never comes).
            refusal = _refusal(storage, real_url, timeout=2)
            if refusal is None:  # nothing answers yet: a proxy starting beside its workers
                try:
                    storage.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
                except ConnectionError:
                    raise StorageError(
                        f"cannot reach the storage proxy at {real_url}: no answer within "
                        f"{CONNECT_TIMEOUT_S} s; is `hpo storage-proxy` running there?"
                    ) from None
                refusal = _refusal(storage, real_url, timeout=CONNECT_TIMEOUT_S)
            if refusal:
                raise StorageError(refusal)
        except BaseException:
            storage.close()
            raise
        return storage

    def exists(self, real_url: str) -> bool:
        # The proxy created Optuna's tables when it started: reachable means present.
        self.open(real_url, read_only=True).close()
        return True

    def lock(self, real_url: str, kind: str, name: str, *, opening: bool = False) -> Lock:
        if opening:  # the proxy created Optuna's tables when it started: nothing to guard
            return _NoLock()
        host, port = host_port(real_url)
        return ProxyLock(host, port, kind, name, tls=uses_tls(real_url))

    def missing(self, shown_url: str) -> str:
        return f"no storage proxy answering at {shown_url}"


BACKEND = GrpcBackend()

# A TLS proxy reached without TLS, or whose certificate this process does not trust: gRPC
# says so only in a failed call's details.
_HANDSHAKE = (
    "the TLS handshake failed: the proxy's certificate must be signed by what "
    f"{CA_VARIABLE} names (or by a root this system trusts), and a proxy started without "
    "--tls-cert takes grpc://"
)
_TLS_HINTS = {
    "ssl": _HANDSHAKE,
    "handshake": _HANDSHAKE,
    "certificate": _HANDSHAKE,
    "socket closed": "the proxy closed the connection: one started with --tls-cert takes grpcs://",
}


def _refusal(storage: Any, url: str, timeout: float) -> str | None:
    """Why the proxy at ``url`` will not serve this process, after one call: "" when it
    answered, None when nothing answered (within ``timeout`` seconds), else the reason."""
    try:
        storage._hpo.call("Held", token="", timeout=timeout)
    except Exception as e:  # noqa: BLE001 - whatever is not a refusal, the caller waits out
        if refused_token(e):
            refused = (
                f"refused the token in {TOKEN_VARIABLE}: set it to"
                if proxy_token()
                else f"requires a token: set {TOKEN_VARIABLE} to"
            )
            return f"the storage proxy at {url} {refused} the one it was started with"
        details = str(getattr(e, "details", lambda: "")() or "").lower()
        for word, hint in _TLS_HINTS.items():
            if word in details:
                return f"cannot reach the storage proxy at {url}: {hint}"
        return None
    return ""


class _ProxyMethods:
    """What hpo's client storage adds to Optuna's ``GrpcStorageProxy``: the heartbeat
    protocol, budget counts and attribute batches, each run in the proxy. Mixed in by
    :func:`proxy_storage_class`."""

    _host: str
    _port: int

    def __init__(
        self,
        *,
        host: str,
        port: int,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        stale_trial_callback: Any = None,
        tls: bool = False,
    ) -> None:
        self._tls = tls
        self.heartbeat_interval = heartbeat_interval
        default_grace = 2 * heartbeat_interval if heartbeat_interval else None
        self.grace_period = grace_period or default_grace
        self._stale_callback = stale_trial_callback
        self._stale_checked: dict[int, float] = {}
        super().__init__(host=host, port=port)  # type: ignore[call-arg]  # Optuna's client

    def _setup(self) -> None:
        """Optuna's client setup, on a channel with keepalive (and the proxy token), plus
        hpo's stub."""
        from hpo.backends.optuna_compat import grpc_client_parts

        cache_class, stub_class, _ = grpc_client_parts()
        self._channel = open_channel(self._host, self._port, self._tls)
        self._stub = stub_class(self._channel)
        self._cache = cache_class(self._stub)
        self._hpo = _Stub(self._channel)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_channel", "_stub", "_cache", "_hpo"):
            state.pop(name, None)
        return state

    def wait_server_ready(self, timeout: float | None = None) -> None:
        """Optuna's, on this storage's own channel (Optuna's opens a plain one, which a TLS
        proxy never answers)."""
        import grpc

        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise ConnectionError("gRPC connection timeout") from e

    def record_heartbeat(self, trial_id: int) -> None:
        self._hpo.call("RecordHeartbeat", trial_id=trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # At most once per heartbeat interval per study, as hpo's RDB storage asks.
        now = time.monotonic()
        if now - self._stale_checked.get(study_id, -math.inf) < (self.heartbeat_interval or 0):
            return []
        if not heartbeats_can_be_judged(self.grace_period):
            return []
        stale = self._hpo.call("StaleTrialIds", study_id=study_id, grace_period=self.grace_period)
        self._stale_checked[study_id] = now
        return [int(trial_id) for trial_id in stale]

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> Any:
        """Optuna's, but the waiting trials ``ask()`` looks for under the claim lock come
        from one filtered query in the proxy: Optuna's client would fetch every running
        trial for it, a cost that grows with the workers and that every claim waited on."""
        import copy

        from optuna.trial import TrialState

        if states is not None and list(states) == [TrialState.WAITING]:
            ids = self._hpo.call("WaitingTrialIds", study_id=study_id)
            trials = [self.get_trial(int(trial_id)) for trial_id in ids]  # type: ignore[attr-defined]
            return copy.deepcopy(trials) if deepcopy else trials
        return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)  # type: ignore[misc]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._stale_callback

    def heartbeat_ages(self, study_id: int) -> dict[int, float]:
        """Seconds since each running trial's last heartbeat, by trial number."""
        ages = self._hpo.call("HeartbeatAges", study_id=study_id)
        return {int(number): float(age) for number, age in ages.items()}

    def budget_counts(
        self, study_id: int, failure_key: str, lost_key: str
    ) -> tuple[dict[str, int], list[tuple[int, Any]], list[int]]:
        """:func:`hpo.backends.optuna_compat.budget_counts`, as one query in the proxy."""
        counts, failed, lost = self._hpo.call(
            "BudgetCounts", study_id=study_id, failure_key=failure_key, lost_key=lost_key
        )
        return counts, [(int(n), v) for n, v in failed], [int(n) for n in lost]

    def set_trial_user_attrs_now(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several attributes in one call and one transaction."""
        self._hpo.call("SetTrialUserAttrs", trial_id=trial_id, attrs=attrs)

    def defer_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        # Through the proxy there is no transaction to ride along with: one batch, now.
        self.set_trial_user_attrs_now(trial_id, attrs)


@functools.cache
def proxy_storage_class() -> type:
    """Optuna's ``GrpcStorageProxy`` with :class:`_ProxyMethods`, every call retried with
    backoff while the proxy is unavailable (a restart costs a wait, not a trial), except
    ``create_new_trial``: as on a database, a repeat after a lost answer would leave an
    orphan, which the claim loop recovers instead."""
    from optuna.storages import GrpcStorageProxy

    from hpo.backends.optuna_compat import grpc_client_parts

    *_, BaseHeartbeat = grpc_client_parts()  # noqa: N806 - a class

    bases = (_ProxyMethods, GrpcStorageProxy, BaseHeartbeat)
    names = {n for b in bases for n in dir(b) if not n.startswith("_")}
    names |= {"_get_stale_trial_ids"}
    skip = {"create_new_trial", "close", "wait_server_ready"}
    methods: dict[str, Any] = {}
    for name in sorted(names - skip):
        for b in bases:
            value = b.__dict__.get(name)
            if callable(value):
                methods[name] = retrying(value)
                break
    methods["__module__"] = "hpo.storage"
    return type("ProxyStorage", bases, methods)
