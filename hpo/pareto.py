"""The Pareto front of a study with several objectives, as ``hpo best`` and reports show it.

Which trials are on the front is :mod:`hpo.ranking`'s rule (feasible, then not
dominated); this module turns them into rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpo.config import StudyConfig
from hpo.ranking import pareto_front
from hpo.storage import ATTR_METRICS, ATTR_MODEL


def front_rows(trials: Iterable[Any], config: StudyConfig) -> list[dict[str, Any]]:
    """The front of ``trials`` (``study.get_trials()``) as rows: number, model, values by
    metric, params and every stored metric (``hpo best`` leaves out the bookkeeping ones,
    see hpo.status.shown_metrics)."""
    metrics_of = [o.metric for o in config.objectives]
    return [
        {
            "number": t.number,
            "model": trial_model(t, config),
            "values": dict(zip(metrics_of, t.values, strict=True)),
            "params": dict(t.params),
            "metrics": dict(t.user_attrs.get(ATTR_METRICS, {})),
        }
        for t in pareto_front(trials, config)
    ]


def trial_model(trial: Any, config: StudyConfig) -> str | None:
    """The base model a trial trained: its ``model`` param, else the fixed one."""
    if "model" in trial.params:
        return str(trial.params["model"])
    facts = trial.user_attrs.get(ATTR_MODEL) or {}
    return facts.get("name") or config.trainer.args.get("model")
