"""Hyperparameter importances, computed once per report and kept fast on large studies."""

from __future__ import annotations

from typing import Any

from dashboards.study import sample_study

# fANOVA fits a random forest; on a few thousand trials that alone takes tens of
# seconds on 2 cores. Importance estimates settle well before that, so past this many
# completed trials fANOVA sees a seeded sample (best trial kept). Measured: 1,000 trials,
# 32 trees ~2 s on a 2-core CPU.
FANOVA_SAMPLE = 1000
FANOVA_TREES = 32


def param_importances(study: Any) -> tuple[dict[str, float], str]:
    """Normalized importances (most important first) and how they were computed.

    Returns an empty dict when the study cannot support an estimate (fewer than two
    completed trials, or no parameter that varies).
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}, "needs at least 2 completed trials"
    sample, n = sample_study(study, FANOVA_SAMPLE)
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
