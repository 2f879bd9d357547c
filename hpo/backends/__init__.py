"""One backend per storage scheme: open, exists, lock, and the read-only open.

``hpo.storage`` is the front door (URLs, redaction, attribute names); it finds the
backend of a URL here. Adding a scheme means adding a module with a ``BACKEND`` and
listing it below.
"""

from __future__ import annotations

from hpo.backends import grpc_proxy, journal, mysql, postgres, sqlite
from hpo.backends.base import Backend, FileLock, Lock

BACKENDS: tuple[Backend, ...] = (
    sqlite.BACKEND,
    postgres.BACKEND,
    mysql.BACKEND,
    journal.BACKEND,
    grpc_proxy.BACKEND,
)
SCHEMES: dict[str, Backend] = {scheme: b for b in BACKENDS for scheme in b.schemes}

__all__ = ["BACKENDS", "SCHEMES", "Backend", "FileLock", "Lock"]
