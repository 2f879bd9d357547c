"""Checkpoint retention (``keep_checkpoints: K``) for finished trials.

After each finished trial the runner calls :func:`prune_checkpoints`. A completed trial
outside the best K can never get back in (values are final; new trials only push it
further down), so its folder goes; so do pruned and failed trials' folders. Kept:

- the best K completed trials (ties: the earlier trial wins, as in ``study.best_trial``);
- running and waiting trials, and any folder a waiting retry will resume from (a trial
  whose worker died is retried with its ``hpo:checkpoint`` copied over);
- anything outside ``<output_dir>/<study name>/``: a path read from storage never makes
  hpo delete a folder it did not create.

Folders are found through the trial attributes ``hpo:output_dir`` and
``hpo:checkpoint``; a path that does not exist here (another machine's worker wrote it)
is left for that machine's worker to prune.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from hpo import storage as st
from hpo.config import StudyConfig

logger = logging.getLogger(__name__)

_ACTIVE = ("RUNNING", "WAITING")


def prune_checkpoints(study: Any, config: StudyConfig) -> list[str]:
    """Delete checkpoints of trials that can no longer be among the best K; return them."""
    if not config.keep_checkpoints:
        return []
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in best_trials(trials, config, config.keep_checkpoints)}
    root = (Path(config.output_dir) / config.name).resolve()
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
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(str(folder))
            logger.debug(
                "trial %d: deleted %s (not among the best %d)",
                trial.number,
                folder,
                config.keep_checkpoints,
            )
    return deleted


def best_trials(trials: list[Any], config: StudyConfig, k: int) -> list[Any]:
    """The best ``k`` completed trials with a finite value, best first."""
    sign = -1.0 if config.objectives[0].direction == "maximize" else 1.0
    completed = [
        t
        for t in trials
        if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)
    ]
    return sorted(completed, key=lambda t: (sign * t.value, t.number))[:k]


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
