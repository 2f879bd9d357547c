"""``hpo dashboard``: optuna-dashboard on the study's storage, and an artifact folder if
there is one; read-only unless told.

optuna-dashboard's ``wsgi`` app is served by the standard library's threaded WSGI
server; binding before printing the URL makes ``--port 0`` (any free port) work and
turns a busy port into a one-line error.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpo.dashboards.study import load_stored_study
from hpo.errors import HpoError

logger = logging.getLogger(__name__)


def artifact_folder(config: Any) -> Path:
    """``<output_dir>/artifacts``: where optuna-dashboard keeps uploaded artifacts."""
    return Path(config.output_dir) / "artifacts"


# Methods that change nothing. optuna-dashboard routes a write as POST, PUT or DELETE; its
# only POST routes that write nothing (/api/llm/...) need an LLM provider hpo never passes.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITES_REFUSED = (
    "this dashboard is read-only; to save notes or upload artifacts, "
    "restart it with hpo dashboard --allow-writes"
)


def read_only(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``app`` refusing (403) every request whose method could change the storage.

    A middleware because optuna-dashboard (0.21) has no read-only switch: its API deletes,
    creates and renames studies, rewrites notes and user attributes, tells trials and
    migrates the database schema for anyone who can reach the port. The refusal is JSON
    with a ``reason``, which optuna-dashboard's page shows the user as it is.
    """
    body = json.dumps({"reason": WRITES_REFUSED}).encode()

    def refuse_writes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD", "GET").upper() in READ_METHODS:
            return app(environ, start_response)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]

    return refuse_writes


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine (``localhost``, 127/8, ::1).

    Any other name is not: it may resolve to a reachable address, and an empty host binds
    every interface.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_loopback


def warn_if_exposed(host: str, port: int, allow_writes: bool) -> None:
    """One warning line when the dashboard listens beyond this machine."""
    if is_loopback(host):
        return
    risk = "read the study" + (", and change or delete it" if allow_writes else "")
    logger.warning(
        "dashboard: --host %r is not a loopback address: anyone who can reach port %d of "
        "this machine can %s (use --host 127.0.0.1 and an SSH tunnel)",
        host,
        port,
        risk,
    )


def make_server(
    config: Any, host: str, port: int, *, allow_writes: bool = False
) -> tuple[Any, str]:
    """A bound (not yet serving) WSGI server for the study's storage, and the study's URL.

    Args:
        config: the study's config.
        host: the address to bind; other than loopback, a warning is logged.
        port: the port (0: any free one).
        allow_writes: let visitors change the storage (notes, artifact uploads, but also
            deleting the study); without it every such request is refused with 403.

    Raises:
        StudyStateError: no such study in the storage.
        HpoError: the address cannot be bound (port in use, unknown host).
    """
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    view = load_stored_study(config)
    folder = artifact_folder(config)
    # Browsing writes nothing: artifacts (uploads from the dashboard) only where the user
    # made the folder for them, and only with allow_writes (read_only refuses the upload).
    store = FileSystemArtifactStore(str(folder)) if folder.is_dir() else None
    if store is None:
        logger.debug("dashboard: no %s folder, so artifact uploads are off (mkdir it)", folder)
    app = optuna_dashboard.wsgi(view.storage, artifact_store=store)
    if not allow_writes:
        app = read_only(app)

    class _Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("dashboard: " + format, *args)

    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as e:
        raise HpoError(
            f"cannot serve on {host}:{port}: {e.strerror or e}; pick another --port"
        ) from None
    warn_if_exposed(host, server.server_port, allow_writes)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/dashboard/studies/{view.study_id}"
    return server, url


def serve_dashboard(
    config: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    on_ready: Callable[[str], None],
    allow_writes: bool = False,
) -> None:
    """Serve optuna-dashboard until interrupted; ``on_ready`` gets the study's URL.

    Read-only unless ``allow_writes`` (see make_server).
    """
    server, url = make_server(config, host, port, allow_writes=allow_writes)
    on_ready(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
