"""Checkpoint retention (``keep_checkpoints: K``) for finished trials."""

from __future__ import annotations

from typing import Any

from hpo.config import StudyConfig


def prune_checkpoints(study: Any, config: StudyConfig) -> list[str]:
    """Delete checkpoints of trials that can no longer be among the best K; return them."""
    return []
