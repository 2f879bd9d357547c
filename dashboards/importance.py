"""Hyperparameter importances, computed once per report and kept fast on large studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpo.dashboards.study import sample_study

# fANOVA (Optuna's default evaluator) walks every leaf of every tree per parameter: on a
# 2-core CPU, 32 trees take ~1.5 s on 300 completed trials but ~4 s on 556 and tens of
# seconds on thousands. Its ranking on a 300-trial sample matched the full fit on the
# toy study, so past 300 completed trials it sees a seeded sample (best trial kept).
FANOVA_SAMPLE = 300
FANOVA_TREES = 32


def param_importances(
    study: Any, completed: Sequence[Any], best_number: int | None
) -> tuple[dict[str, float], str]:
    """Normalized importances (most important first) and how they were computed.

    Args:
        study: the Optuna study.
        completed: its completed trials (FrozenTrial), already read.
        best_number: the best trial's number, always kept in a sample (None: no trial
            is feasible).

    Returns an empty dict when the study cannot support an estimate (fewer than two
    completed trials, or no parameter that varies).
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(completed) < 2:
        return {}, "needs at least 2 completed trials"
    sample, n = sample_study(study, completed, FANOVA_SAMPLE, best_number)
    how = f"fANOVA, {FANOVA_TREES} trees, " + (
        f"sample of {n} of {len(completed)} completed trials"
        if n < len(completed)
        else f"{n} completed trials"
    )
    evaluator = FanovaImportanceEvaluator(n_trees=FANOVA_TREES, seed=0)
    try:
        importances = get_param_importances(sample, evaluator=evaluator)
    except (ValueError, RuntimeError) as e:  # e.g. every parameter took a single value
        return {}, f"not computable: {e}"
    return dict(sorted(importances.items(), key=lambda kv: -kv[1])), how
