"""``hpo dashboard``: optuna-dashboard on the study's storage, and an artifact folder if
there is one.

optuna-dashboard's ``wsgi`` app is served by the standard library's threaded WSGI
server; binding before printing the URL makes ``--port 0`` (any free port) work and
turns a busy port into a one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards.study import load_stored_study
from hpo.backends.optuna_compat import storage_of, study_id_of
from hpo.errors import HpoError

logger = logging.getLogger(__name__)


def artifact_folder(config: Any) -> Path:
    """``<output_dir>/artifacts``: where optuna-dashboard keeps uploaded artifacts."""
    return Path(config.output_dir) / "artifacts"


def make_server(config: Any, host: str, port: int) -> tuple[Any, str]:
    """A bound (not yet serving) WSGI server for the study's storage, and the study's URL.

    Raises:
        StudyStateError: no such study in the storage.
        HpoError: the address cannot be bound (port in use, unknown host).
    """
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    study = load_stored_study(config)
    folder = artifact_folder(config)
    # Browsing writes nothing: artifacts (uploads from the dashboard) only where the user
    # made the folder for them.
    store = FileSystemArtifactStore(str(folder)) if folder.is_dir() else None
    if store is None:
        logger.debug("dashboard: no %s folder, so artifact uploads are off (mkdir it)", folder)
    app = optuna_dashboard.wsgi(storage_of(study), artifact_store=store)

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
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_port}/dashboard/studies/{study_id_of(study)}"
    return server, url


def serve_dashboard(
    config: Any, host: str = "127.0.0.1", port: int = 8080, *, on_ready: Callable[[str], None]
) -> None:
    """Serve optuna-dashboard until interrupted; ``on_ready`` gets the study's URL."""
    server, url = make_server(config, host, port)
    on_ready(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
