"""Checkpoints in object storage: ``output_dir: s3://bucket/prefix`` (any fsspec scheme).

Trainers always write to a local folder. With a remote ``output_dir`` that folder is the
worker's staging folder (:func:`staging_folder`, under ``$HPO_CACHE_DIR``), laid out as
``<output_dir>/<name>/trial-NNNN/checkpoint-E`` is; each checkpoint the trainer records
is uploaded there through fsspec (s3fs for ``s3://``; ``gs://`` and ``az://`` work the
same way with gcsfs or adlfs installed) and ``hpo:checkpoint`` holds its URL.

An upload is all-or-nothing for readers: its files go first and an empty ``.complete``
object last, and the URL is recorded only after that, so a checkpoint whose upload was
cut (a server restart, a killed worker) has no marker and is never resumed from or
exported. A lost connection is retried with backoff for about a minute; an upload that
still fails fails the trial as ``storage`` (not counted against ``budget.max_failures``;
its parameters are retried from the last complete checkpoint). A retry on any machine
downloads that checkpoint into its own staging folder and resumes from it. Once a trial
ends its local checkpoints go (they are in the bucket); retention deletes in the bucket
(:mod:`hpo.checkpoints`). Credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` ... for S3), never from the study file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hpo.errors import HpoError, missing_extra

logger = logging.getLogger(__name__)

MARKER = ".complete"  # written last: a checkpoint without it is incomplete
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
_LOCAL_SCHEMES = ("file", "local")
# The schemes hpo names an extra for; any other fsspec scheme names its package.
_EXTRAS = {"s3": "s3", "s3a": "s3"}
_RETRY_FOR_S = 60.0  # about what storage calls retry a lost database connection for
_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
# A checkpoint inside the study folder, as the runner names it: trial-0007/checkpoint-120.
_CHECKPOINT = re.compile(r"trial-\d{4,}/[^/]+")

T = TypeVar("T")


class ObjectStorageError(HpoError):
    """The object store failed an upload or download after its retries (trial: ``storage``)."""


def is_remote(output_dir: str) -> bool:
    """Whether ``output_dir`` is a URL of an object store (``s3://...``), not a folder."""
    match = _URL.match(output_dir)
    return match is not None and match.group(1).lower() not in _LOCAL_SCHEMES


def check_output_dir(value: str) -> None:
    """Raise ``ValueError`` (a one-line fix) for a URL whose filesystem cannot be used here."""
    if not is_remote(value):
        return
    from fsspec.registry import known_implementations, registry

    scheme = _URL.match(value).group(1).lower()  # type: ignore[union-attr]
    known = known_implementations.get(scheme)
    if known is None and scheme not in registry:
        raise ValueError(
            f"{scheme}:// is no filesystem fsspec knows; use s3://bucket/prefix (or gs://, "
            "az://), or a folder"
        )
    module = (known or {}).get("class", "").split(".")[0]
    if not module:
        return
    needed_by = f"output_dir {scheme}://"
    extra = _EXTRAS.get(scheme)
    problem = missing_extra(module, extra, needed_by) if extra else None
    if extra is None and missing_extra(module, module, needed_by):
        problem = f"{needed_by} needs {module}, which is not installed; pip install {module}"
    if problem:
        raise ValueError(problem)


def study_url(config: Any) -> str:
    """``<output_dir>/<study name>`` as a URL: where the study's trial folders are."""
    return f"{config.output_dir.rstrip('/')}/{config.name}"


def cache_root() -> Path:
    """This machine's hpo cache: ``$HPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpo`` or
    ``~/.cache/hpo``."""
    if os.environ.get("HPO_CACHE_DIR"):
        return Path(os.environ["HPO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpo"


def staging_folder(config: Any) -> Path:
    """This machine's local copy of :func:`study_url`, where trainers write.

    Keyed by a hash of the ``output_dir`` URL, so two studies of one name in two buckets
    never share a folder."""
    key = hashlib.sha256(config.output_dir.rstrip("/").encode()).hexdigest()[:12]
    return cache_root() / "staging" / key / config.name


def publish_checkpoint(config: Any, local: Path) -> str:
    """Upload the checkpoint folder ``local`` (inside :func:`staging_folder`); its URL.

    Whatever was at that URL goes first (a cut upload of the same checkpoint), the
    marker last.

    Raises:
        ObjectStorageError: the store failed it after about a minute of retries.
    """
    try:
        relative = Path(local).resolve().relative_to(staging_folder(config).resolve())
    except ValueError:
        raise ObjectStorageError(
            f"checkpoint {local} is outside this study's staging folder "
            f"{staging_folder(config)}; a trainer writes checkpoints into ctx.output_dir"
        ) from None
    url = f"{study_url(config)}/{relative.as_posix()}"
    fs, path = _filesystem(url)

    def upload() -> None:
        if fs.exists(path):
            _remove(fs, path)
        fs.invalidate_cache(path)
        fs.put(f"{local}/", f"{path}/", recursive=True)
        _check_uploaded(fs, path, local)
        fs.pipe_file(f"{path}/{MARKER}", b"")

    _retrying(upload, f"uploading checkpoint {local} to {url}")
    _follow_rotation(fs, path, local)
    return url


def _follow_rotation(fs: Any, path: str, local: Path) -> None:
    """Delete the trial's earlier remote checkpoints that its staging folder no longer has.

    A trainer that keeps only its last checkpoints (the HF trainers: ``save_total_limit``)
    deletes the others locally; the bucket follows, or it would hold every epoch's. Only
    ``checkpoint-*`` siblings in this trial's own folder; best effort: a failure leaves
    them for retention.
    """
    parent = path.rsplit("/", 1)[0]
    try:
        fs.invalidate_cache(parent)
        for sibling in fs.glob(f"{parent}/checkpoint-*"):
            name = sibling.rstrip("/").rsplit("/", 1)[-1]
            if sibling.rstrip("/") != path and not (local.parent / name).exists():
                _remove(fs, sibling.rstrip("/"))
    except Exception as e:  # noqa: BLE001 - the checkpoint itself is safe in the bucket
        logger.debug("could not delete earlier checkpoints beside %s: %s", path, e)


def _check_uploaded(fs: Any, path: str, local: Path) -> None:
    """Raise ``OSError`` unless every file of ``local`` is at ``path`` with its size.

    The client retries each request on its own: a server that restarted mid-upload (and
    lost what it had, as an in-memory test server does) would otherwise get the marker
    beside only the files sent after the restart.
    """
    expected = {
        p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()
    }
    fs.invalidate_cache(path)
    found = {
        name[len(path) + 1 :]: int(info["size"])
        for name, info in fs.find(path, detail=True).items()
    }
    if found != expected:
        missing = sorted(set(expected.items()) - set(found.items()))[:3]
        raise OSError(f"{path} lacks {missing} after the upload")


def fetch_checkpoint(config: Any, url: str, number: int) -> Path | None:
    """Download a lost trial's checkpoint ``url`` into this machine's staging folder.

    None when it must not be resumed from: outside ``<output_dir>/<name>/trial-NNNN/``
    (the URL comes from storage: hpo follows only its own), or without its marker (an
    upload that was cut, or a checkpoint retention deleted).

    Raises:
        ObjectStorageError: the store failed the download after its retries.
    """
    relative = _relative(url, study_url(config))
    if relative is None or not _CHECKPOINT.fullmatch(relative):
        logger.warning(
            "trial %d: not resuming from %s, which is not a checkpoint folder of a trial in "
            "%s; it starts over",
            number,
            url,
            study_url(config),
        )
        return None
    fs, path = _filesystem(url)
    if not _retrying(lambda: fs.exists(f"{path}/{MARKER}"), f"reading {url}"):
        logger.warning(
            "trial %d: checkpoint %s is incomplete (no %s: its upload was cut) or deleted; "
            "the retry starts over",
            number,
            url,
            MARKER,
        )
        return None
    local = staging_folder(config) / relative

    def download() -> None:
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        fs.get(f"{path}/", f"{local}/", recursive=True)

    _retrying(download, f"downloading checkpoint {url}")
    return local


def download_complete(url: str, into: Path) -> bool:
    """Download the checkpoint at ``url`` into the folder ``into``; False when it has no
    marker (an incomplete or deleted checkpoint)."""
    fs, path = _filesystem(url)
    if not _retrying(lambda: fs.exists(f"{path}/{MARKER}"), f"reading {url}"):
        return False
    _retrying(lambda: fs.get(f"{path}/", f"{into}/", recursive=True), f"downloading {url}")
    (into / MARKER).unlink(missing_ok=True)
    return True


def is_inside(url: str, root: str) -> bool:
    """Whether ``url`` names something strictly inside ``root`` (no ``..`` tricks)."""
    return _relative(url, root) is not None


def delete_checkpoints(url: str) -> bool:
    """Delete a remote checkpoint, or a remote trial folder's ``checkpoint-*`` ones.

    The marker goes first: a reader never takes a half-deleted checkpoint for a whole one.
    Object stores have no empty folders: a trial folder goes with its last object.
    """
    fs, path = _filesystem(url)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        found = [path] if name.startswith("checkpoint-") else fs.glob(f"{path}/checkpoint-*")
        deleted = False
        for folder in found:
            if fs.exists(folder):
                _remove(fs, folder)
                deleted = True
        return deleted
    except FileNotFoundError:  # another worker pruned it first
        return False


def remote_bytes(url: str) -> int:
    """Bytes stored under ``url`` (0 when nothing is, or the store cannot be read)."""
    try:
        fs, path = _filesystem(url)
        return int(fs.du(path)) if fs.exists(path) else 0
    except Exception as e:  # noqa: BLE001 - a status line must not fail on the bucket
        logger.debug("could not measure %s: %s", url, e)
        return 0


def discard_local_checkpoints(config: Any, trial_folder: Path) -> None:
    """Delete the ``checkpoint-*`` folders of a finished trial's staging folder (each is in
    the bucket); the rest (TensorBoard events, error analysis) stays on this machine."""
    root = staging_folder(config).resolve()
    folder = trial_folder.resolve()
    if folder.parent != root or not folder.is_dir():
        return
    for child in folder.glob("checkpoint-*"):
        shutil.rmtree(child, ignore_errors=True)


def _remove(fs: Any, path: str) -> None:
    """Delete a checkpoint folder, its marker first."""
    try:
        fs.rm_file(f"{path}/{MARKER}")
    except FileNotFoundError:
        pass
    fs.rm(path, recursive=True)


def _relative(url: str, root: str) -> str | None:
    """``url`` relative to ``root`` (both URLs), or None when it is not strictly inside."""
    root = root.rstrip("/") + "/"
    if not url.startswith(root):
        return None
    relative = url[len(root) :].rstrip("/")
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") for p in parts):
        return None
    return relative


def _filesystem(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    return fs, path.rstrip("/")


def _retrying(action: Callable[[], T], what: str) -> T:
    """Run ``action``, retrying a failure of the store with backoff for about a minute.

    Hand-written: the clients' own retries (botocore's, s3fs's) cover one request, not a
    folder's worth of them, and give up on a server that restarts. A refusal
    (``PermissionError``: credentials, a bucket policy) is not retried: a repeat would
    only be refused again.
    """
    started = time.monotonic()
    for attempt in range(len(_BACKOFF_S) + 1):
        try:
            return action()
        except PermissionError as e:
            raise ObjectStorageError(f"{what}: refused ({e}); check the credentials") from e
        except Exception as e:  # noqa: BLE001 - botocore's errors are not OSErrors
            waited = time.monotonic() - started
            if attempt == len(_BACKOFF_S) or waited >= _RETRY_FOR_S:
                raise ObjectStorageError(
                    f"{what}: {type(e).__name__}: {e} (gave up after {waited:.0f} s)"
                ) from e
            delay = _BACKOFF_S[attempt]
            logger.warning("%s failed (%s); retrying in %.0f s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
