"""Checkpoint retention (``keep_checkpoints: K``, 3 unless told) for finished trials.

After each finished trial the runner calls :func:`prune_checkpoints`, which deletes the
``checkpoint-*`` folders of trials that cannot be kept (a trial folder goes too once
nothing else is left in it). A completed trial outside the best K can never get back in
while the study file stays as it is (values are final; new trials only push it further
down), so its checkpoints go; so do pruned and failed trials'. Kept:

- the best K feasible trials, or with several objectives every trial on the feasible
  Pareto front (:func:`hpo.ranking.kept_trials`: the trials ``hpo best`` and ``hpo
  export`` name, so the best trial's checkpoint is always there to export);
- while fewer than K trials are feasible, the best trials that break a constraint fill
  the rest: constraints may be relaxed in the study file, and those become exportable;
- running and waiting trials, and any folder a waiting retry will resume from (a trial
  whose worker died is retried with its ``hpo:checkpoint`` copied over);
- anything outside ``<output_dir>/<study name>/``: a path read from storage never makes
  hpo delete a folder it did not create.

Folders are found through the trial attributes ``hpo:output_dir`` and
``hpo:checkpoint``; a path that does not exist here (another machine's worker wrote it)
is left for that machine's worker to prune.

With ``output_dir`` in object storage (``s3://bucket/prefix``, :mod:`hpo.object_store`)
those attributes are URLs and the same rules delete in the bucket, from any worker: a
checkpoint's ``.complete`` marker first, then its objects; only URLs inside
``<output_dir>/<study name>/``, so nothing else in the bucket is ever touched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hpo import object_store
from hpo import storage as st
from hpo.config import StudyConfig
from hpo.ranking import kept_trials

logger = logging.getLogger(__name__)

_ACTIVE = ("RUNNING", "WAITING")


def prune_checkpoints(study: Any, config: StudyConfig) -> list[str]:
    """Delete checkpoints of trials that can no longer be among the best K; return them."""
    limit = config.checkpoint_limit
    if limit is not None and object_store.is_remote(config.output_dir):
        return _prune_remote(study, config, limit)
    if limit is None or not study_folder(config).is_dir():
        return []  # nothing on this machine to delete: spare the storage read
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in kept_trials(trials, config, limit)}
    root = study_folder(config).resolve()
    protected = [
        Path(p).resolve()
        for t in trials
        if t.state.name in _ACTIVE or t.number in keep
        for p in _folders(t)
    ]
    deleted = []
    for trial in trials:
        if trial.state.name in _ACTIVE or trial.number in keep:
            continue
        for folder in _folders(trial):
            path = Path(folder).resolve()
            if not _deletable(path, root, protected):
                continue
            if _delete_checkpoints(path):
                deleted.append(str(folder))
            logger.debug(
                "trial %d: deleted %s (%s)",
                trial.number,
                folder,
                "not on the Pareto front"
                if config.multi_objective
                else f"not among the best {limit}",
            )
    return deleted


def _prune_remote(study: Any, config: StudyConfig, limit: int) -> list[str]:
    """:func:`prune_checkpoints` for a study whose ``output_dir`` is a URL."""
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in kept_trials(trials, config, limit)}
    root = object_store.study_url(config)
    protected = [
        url for t in trials if t.state.name in _ACTIVE or t.number in keep for url in _folders(t)
    ]
    deleted = []
    for trial in trials:
        if trial.state.name in _ACTIVE or trial.number in keep:
            continue
        for url in _folders(trial):
            if not object_store.is_inside(url, root) or _overlaps(url, protected):
                continue
            if object_store.delete_checkpoints(url):
                deleted.append(url)
                logger.debug("trial %d: deleted %s", trial.number, url)
    return deleted


def _overlaps(url: str, protected: list[str]) -> bool:
    """Whether ``url`` is, holds or lies in a protected URL."""
    url = url.rstrip("/")
    return any(
        p.rstrip("/") == url or p.startswith(url + "/") or url.startswith(p.rstrip("/") + "/")
        for p in protected
    )


def _delete_checkpoints(path: Path) -> bool:
    """Delete a checkpoint, or a trial folder's checkpoints; the folder goes once empty.

    Only ``checkpoint-*`` folders go from a trial folder: the rest (TensorBoard event files,
    error analysis) is small and is what a person reads after a sweep.
    """
    if path.name.startswith("checkpoint-"):
        shutil.rmtree(path, ignore_errors=True)
        return True
    # Every worker prunes after each of its trials, so another process may be deleting the
    # same folder right now: a folder that vanished under us is already pruned.
    found: list[Path] = []
    try:
        found = [child for child in path.glob("checkpoint-*") if child.is_dir()]
        for child in found:
            shutil.rmtree(child, ignore_errors=True)
        if not any(path.iterdir()):
            path.rmdir()
            return True
    except FileNotFoundError:
        return False
    except OSError as e:  # e.g. another process wrote into it between iterdir and rmdir
        logger.debug("could not remove %s: %s", path, e)
    return bool(found)


def _folders(trial: Any) -> list[str]:
    """The trial's own folder (which holds its checkpoints) and its recorded checkpoint."""
    attrs = trial.user_attrs
    return [p for p in (attrs.get(st.ATTR_OUTPUT_DIR), attrs.get(st.ATTR_CHECKPOINT)) if p]


def _deletable(path: Path, root: Path, protected: list[Path]) -> bool:
    if not path.exists() or path == root or not path.is_relative_to(root):
        return False
    # A kept trial's checkpoint may sit inside (or be) this folder: a retry resuming it.
    return not any(
        p == path or p.is_relative_to(path) or path.is_relative_to(p) for p in protected
    )


def study_folder(config: StudyConfig) -> Path:
    """``<output_dir>/<study name>``: where the study's trial folders are (relative paths
    are relative to the working directory).

    The one place a study name becomes a checkpoint path; the name is one folder name
    inside ``output_dir`` (``hpo.config.check_folder_name`` refused any other at
    validation)."""
    return Path(config.output_dir) / config.name


def study_location(config: StudyConfig) -> str:
    """Where the study's trial folders are: :func:`study_folder`, or its URL in object
    storage."""
    if object_store.is_remote(config.output_dir):
        return object_store.study_url(config)
    return str(study_folder(config))


def checkpoint_bytes(config: StudyConfig) -> int:
    """Bytes under :func:`study_folder` on this machine (in object storage, under its URL):
    the disk the study's trials use."""
    if object_store.is_remote(config.output_dir):
        return object_store.remote_bytes(object_store.study_url(config))
    root = study_folder(config)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
