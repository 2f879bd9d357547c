"""Storage URLs to Optuna storages, URL redaction, locks, and the ``hpo:`` attribute names.

The front door of the storage layer: each scheme's backend (``hpo.backends``) does the
work; this module picks it from the URL, expands ``${VAR}`` references, and keeps
credentials out of every message. hpo keeps no tables of its own: a study is plain
Optuna storage plus study and trial user attributes whose names start with ``hpo:``, so
optuna-dashboard and ``optuna trials`` read it as they read any study.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, quote_plus, unquote, urlsplit

from hpo.backends import SCHEMES, Backend, Lock
from hpo.backends.base import is_secret_key, redact_url, split_userinfo, userinfo_spilled
from hpo.backends.journal import journal_path
from hpo.backends.sqlite import sqlite_path
from hpo.errors import ConfigError, StorageError, StudyStateError

logger = logging.getLogger(__name__)

# Every name hpo stores in a study starts with this; a trainer's own attributes
# (TrialContext.set_attr) are ATTR_PREFIX + its key. Each name is spelled here only, and
# hpo writes and reads it through these constants (tests/test_imports.py checks; the one
# exception, the journal heartbeat, is Optuna's protocol, kept in the compat module).
ATTR_PREFIX = "hpo:"
# Study attributes.
ATTR_CONFIG = "hpo:config"
# Trial attributes.
ATTR_METRICS = "hpo:metrics"  # final metrics the trainer returned (validation and test)
# Each of those metrics again, flat (hpo:metric:eval_f1): a number per attribute is what
# optuna-dashboard shows as a sortable trials-table column and offers to plot.
ATTR_METRIC_PREFIX = "hpo:metric:"
ATTR_HISTORY = "hpo:history"  # every report: [{"step": 1, "eval_accuracy": ...}, ...]
ATTR_FAILURE = "hpo:failure"  # exception | nan | oom | worker_lost | interrupted | storage
ATTR_FAILURE_MESSAGE = "hpo:failure_message"
ATTR_CHECKPOINT = "hpo:checkpoint"  # folder of the last checkpoint the trainer wrote
ATTR_OUTPUT_DIR = "hpo:output_dir"
ATTR_DEVICE = "hpo:device"
ATTR_WORKER = "hpo:worker"  # host:pid of the worker that ran the trial
ATTR_DURATION = "hpo:duration_s"
ATTR_EPOCHS = "hpo:epochs"  # training epochs actually run (pruned trials run fewer)
ATTR_RESUMED_FROM = "hpo:resumed_from"  # trial number whose checkpoint a retry resumed
ATTR_WARM_START = "hpo:warm_start"  # {"study": source name, "trial": number}
# Written by trainers (ctx.set_attr("model"), ctx.set_attr("error_analysis"), ...).
ATTR_MODEL = "hpo:model"  # facts about the base model: name, size, ...
ATTR_ERROR_ANALYSIS = "hpo:error_analysis"
ATTR_ADAPTER = "hpo:adapter"  # what trained: {"type": "none"} or a LoRA adapter's settings
# A generative trial's greedy generations on the fixed validation prompts:
# [{"prompt", "reference", "generation"}, ...] (trainers/causal_lm.py, generate).
ATTR_GENERATIONS = "hpo:generations"
# Study attribute: numbers of FAIL trials whose worker died (a finished trial's own
# attributes are read-only, so the mark goes on the study).
STUDY_ATTR_LOST = "hpo:lost"

SUPPORTED_SCHEMES = tuple(SCHEMES)
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
__all__ = [
    "SUPPORTED_SCHEMES",
    "Lock",
    "check_url",
    "expand_url",
    "journal_path",
    "open_storage",
    "redact_url",
    "require_storage",
    "sqlite_path",
    "storage_exists",
    "study_lock",
    "sweep_lock",
]


def expand_url(url: str) -> str:
    """The URL to connect with: ``${ENV_VAR}`` references filled in. It holds secrets:
    never log it.

    A server URL is split as urllib splits it (as :func:`redact_url` does, so what is
    hidden is what connects) and built with SQLAlchemy's ``URL.create``: user, password,
    database and query values are filled into their fields, so a value needs no escaping
    (a password holding "@", "/" or "#" stays a password). A password written into the
    URL may hold "@" (the last "@" ends it); "/", "?" and "#" must be percent-encoded
    there, as in any URL (:func:`check_url` refuses them, and so an "@" in the query of a
    URL with no "@" before its host, which such a password would leave). SQLAlchemy's
    own parser is not used on the text: it ends a password at its first "@" and reads an
    "@" in the query as the end of a password. A file URL (``sqlite:///``, ``journal:///``) has no
    credentials: its path is filled in as text.

    Raises:
        ConfigError: the host part, filled in, is not ``host:port`` (the message shows the
            URL as written, redacted).
    """
    from sqlalchemy.engine import URL

    parts = urlsplit(url)
    if _names_a_file(url):
        return ENV_VAR.sub(_env_value, url)
    userinfo, hostport = split_userinfo(parts)
    try:
        host = urlsplit("//" + ENV_VAR.sub(_env_value, hostport))
        port = host.port
    except ValueError as e:
        raise ConfigError(
            f"cannot read host:port of the storage URL {redact_url(url)}: {e}", field="storage"
        ) from None
    user, colon, password = (userinfo or "").partition(":")
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(_fill(key), []).append(_fill(value))
    real = URL.create(
        parts.scheme,
        username=_fill(unquote(user)) if userinfo is not None else None,
        password=_fill(unquote(password)) if colon else None,
        host=host.hostname,
        port=port,
        database=_fill(unquote(parts.path.removeprefix("/"))) or None,
        query=query,
    )
    return real.render_as_string(hide_password=False)


def _names_a_file(url: str) -> bool:
    backend = SCHEMES.get(urlsplit(url).scheme)
    return backend is not None and not backend.credentials


def _env_value(match: re.Match[str]) -> str:
    return os.environ.get(match[1], "")


def _fill(text: str | None) -> Any:
    """``text`` with its ``${VAR}`` references replaced by their values (None stays None)."""
    return None if text is None else ENV_VAR.sub(_env_value, text)


def _url_secrets(url: str) -> list[str]:
    """The credentials ``url`` connects with (password, credential query values), longest
    first: what a driver's message must never show, even outside a URL."""
    from sqlalchemy.engine import make_url

    if _names_a_file(url):
        return []
    real = make_url(expand_url(url))
    found = [real.password or ""]
    for key, values in real.query.items():
        if is_secret_key(key):
            found += [values] if isinstance(values, str) else list(values)
    return sorted({str(s) for s in found if s}, key=len, reverse=True)


def check_url(url: str) -> None:
    """Reject URLs hpo cannot open, with a correction where one is obvious.

    Raises:
        ValueError: unsupported scheme, a file path where a URL belongs, or a storage
            hpo cannot lock across worker processes (in-memory SQLite).
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if not scheme or "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith((".db", ".sqlite", ".sqlite3")) else None
        fix = f"; for a SQLite file write {hint}" if hint else ""
        # Not a URL, so its password cannot be found: nothing before an "@" is shown.
        shown = f"***@{url.rpartition('@')[2]}" if "@" in url else url
        raise ValueError(f"expected a storage URL such as sqlite:///hpo.db, got {shown!r}{fix}")
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"unsupported storage scheme {scheme!r}; use one of {', '.join(SUPPORTED_SCHEMES)}"
        )
    if parts.netloc and _host_moved(parts):
        raise ValueError(
            "cannot find host:port in the storage URL: a password written into it must "
            "percent-encode '/', '?' and '#' (%2F, %3F, %23), or come from ${VAR}; "
            "an '@' in the database name or query must be written %40"
        )
    # Checked on the URL as written: ${VAR} references never hide the file part.
    refusal = SCHEMES[scheme].refusal(url)
    if refusal:
        raise ValueError(refusal)


def _host_moved(parts: SplitResult) -> bool:
    """True when a "/", "?" or "#" in a written password ended the host part early, so
    urllib would read part of the password as the host or port (and never hide it)."""
    _, hostport = split_userinfo(parts)
    try:
        # Reading the port checks it is a number; a ${PORT} counts as one.
        urlsplit("//" + ENV_VAR.sub("1", hostport)).port  # noqa: B018
    except ValueError:
        return True
    return userinfo_spilled(parts)


def backend_of(url: str) -> Backend:
    """The backend of ``url`` (checked first).

    Raises:
        ConfigError: a scheme hpo does not support, or a storage it cannot lock.
    """
    try:
        check_url(url)
    except ValueError as e:
        raise ConfigError(str(e), field="storage") from None
    return SCHEMES[urlsplit(url).scheme]


def open_storage(
    url: str,
    *,
    read_only: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Any = None,
    pool_size: int | None = None,
) -> Any:
    """An Optuna storage for ``url`` (``${VAR}`` expanded), tuned for concurrent workers.

    ``pool_size``: at most this many database connections (``hpo storage-proxy``'s cap);
    SQL storages only.

    A worker's open creates the database and Optuna's tables when missing; a
    ``read_only`` open creates nothing (call :func:`require_storage` first to say why a
    missing storage is missing).

    Raises:
        ConfigError: a scheme hpo does not support.
        StorageError: the database cannot be opened or reached.
    """
    backend = backend_of(url)
    real_url = expand_url(url)
    heartbeat = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
        "stale_trial_callback": stale_trial_callback,
    }
    if pool_size:
        heartbeat["pool_size"] = pool_size
    if read_only:
        return _guarded(url, lambda: backend.open(real_url, read_only=True, **heartbeat))
    # Workers starting together on a new database would race to create Optuna's tables.
    creation_lock = backend.lock(real_url, "study", "__schema__", opening=True)

    def create() -> Any:
        creation_lock.acquire()
        return backend.open(real_url, **heartbeat)

    try:
        return _guarded(url, create)
    finally:
        creation_lock.close()


def storage_exists(url: str) -> bool:
    """True when ``url`` holds Optuna's tables or log; reads only, never creates anything.

    Raises:
        StorageError: a database server cannot be reached.
    """
    backend = backend_of(url)
    return bool(_guarded(url, lambda: backend.exists(expand_url(url))))


def require_storage(url: str, study_name: str, run_command: str) -> None:
    """Stop a read-only command on a storage that does not exist yet (creating nothing).

    Args:
        run_command: the ``hpo run`` command that creates the study (in the message).

    Raises:
        StudyStateError: the storage does not exist (exit 2); the message names where it
            was looked for and the command that creates it.
    """
    if not storage_exists(url):
        raise StudyStateError(
            f"no study {study_name!r}: {backend_of(url).missing(redact_url(url))}; "
            "nothing was created. "
            f"Run the study first: {run_command}"
        )


def study_lock(url: str, study_name: str) -> Lock:
    """The blocking lock a worker holds while it claims a trial of ``study_name``.

    Claiming means: count the trials already running or finished, and ask Optuna for the
    next one. Holding this lock across both makes the budget exact and stops two workers
    from taking the same enqueued trial or grid point. Optuna has no such lock: its RDB
    storage relies on row locks that SQLite ignores, and the journal has none.
    """
    return backend_of(url).lock(expand_url(url), "study", study_name)


def sweep_lock(url: str, sweep_name: str) -> Lock:
    """The lock a sweep holds (``try_acquire``) in ``url`` against overlapping runs."""
    return backend_of(url).lock(expand_url(url), "sweep", sweep_name)


def _guarded(url: str, call: Any) -> Any:
    """``call()``, with any driver error turned into a StorageError naming the redacted URL."""
    try:
        return call()
    except (StorageError, ConfigError):
        raise
    except Exception as e:  # SQLAlchemy and driver errors vary by backend
        reason = redact_url(str(e).splitlines()[0] if str(e) else type(e).__name__)
        # A driver may echo a credential outside any URL (or in a URL split oddly).
        for secret in _bare_secrets(url):
            for form in (secret, quote(secret, safe=""), quote_plus(secret)):
                reason = reason.replace(form, "***")
        raise StorageError(f"cannot open storage {redact_url(url)}: {reason}") from None


# Secrets shorter than this are hidden only in URLs: replacing one or two letters wherever
# they appear would turn a driver's message into "***" and say nothing.
_MIN_BARE_SECRET = 4


def _bare_secrets(url: str) -> list[str]:
    """The credentials of ``url`` to hide in a driver's message outside any URL."""
    try:
        secrets = _url_secrets(url)
    except Exception:  # noqa: BLE001 - a URL that cannot be expanded must not hide the error
        logger.debug("cannot read the credentials of %s", redact_url(url), exc_info=True)
        return []
    return [s for s in secrets if len(s) >= _MIN_BARE_SECRET]
