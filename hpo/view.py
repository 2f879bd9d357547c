"""The read-only study view: how readers (reports, ``compare``, ``dashboard``, ``export``,
``status``) see a stored study.

:func:`open_view` loads the study through the read-only loader
(:func:`hpo.study.load_existing_study`: it never creates a study or rewrites an
attribute) and wraps it in a :class:`StudyView`: the storage, the study, its trials read
once, the ``hpo:`` attributes decoded (:class:`TrialAttrs`), and the best trial, the
feasible ones and the Pareto front as :mod:`hpo.ranking` (the one rule) names them.

Readers outside the core (``dashboards/``) import nothing of hpo but this module,
:mod:`hpo.errors` and :mod:`hpo.config`; ``tests/test_imports.py`` holds them to it, so
the modules below (storage, budget, ranking, status, study, backends) stay free to change.
The attribute names live in :mod:`hpo.storage`, not here: the writers (runner, trainer
context, warm start) and the modules this one builds on spell them too, and they sit
below this module in the import order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from hpo import storage as st
from hpo.backends.optuna_compat import storage_of, study_id_of
from hpo.budget import ENDED, Summary, Usage, failure_reason, summary_of, usage_of
from hpo.config import StudyConfig
from hpo.pareto import front_rows, trial_model
from hpo.ranking import best_trial, feasible, pareto_front
from hpo.status import TrialLine, attention, shown_metrics
from hpo.storage import redact_url

__all__ = [
    "ENDED",
    "StudyView",
    "Summary",
    "TrialAttrs",
    "TrialLine",
    "Usage",
    "open_view",
    "redact_url",
    "shown_metrics",
    "trial_attrs",
]


@dataclass(frozen=True)
class TrialAttrs:
    """What hpo stored on one trial (its ``hpo:`` user attributes), decoded.

    Values are as stored (JSON); a missing attribute is None, or empty for a dict or list.
    """

    metrics: dict[str, Any] = field(default_factory=dict)  # final metrics (validation, test)
    history: list[dict[str, Any]] = field(default_factory=list)  # every report
    # A FAIL trial: exception | nan | oom | storage | interrupted | worker_lost.
    failure: str | None = None
    failure_message: str | None = None
    checkpoint: str | None = None  # the last checkpoint folder the trainer wrote
    output_dir: str | None = None
    device: str | None = None
    worker: str | None = None  # host:pid
    duration_s: float | None = None  # training seconds
    epochs: float | None = None  # epochs actually run
    resumed_from: int | None = None  # the trial whose checkpoint a retry resumed
    model: dict[str, Any] = field(default_factory=dict)  # the trainer's base-model facts
    error_analysis: Any = None  # the trainer's confusion matrix and confident errors
    # What trained (HF trainers): {"type": "none"}, or {"type": "lora", "r", "alpha", ...}.
    adapter: dict[str, Any] = field(default_factory=dict)
    warm_start: dict[str, Any] | None = None  # {"study": source, "trial": number}


def trial_attrs(trial: Any, study_attrs: dict[str, Any]) -> TrialAttrs:
    """Decode ``trial``'s ``hpo:`` attributes; ``study_attrs`` (the study's user attributes)
    say whether a failed trial's worker died (``hpo:lost``)."""
    attrs = trial.user_attrs
    return TrialAttrs(
        metrics=dict(attrs.get(st.ATTR_METRICS) or {}),
        history=list(attrs.get(st.ATTR_HISTORY) or []),
        failure=failure_reason(trial, study_attrs),
        failure_message=attrs.get(st.ATTR_FAILURE_MESSAGE),
        checkpoint=attrs.get(st.ATTR_CHECKPOINT),
        output_dir=attrs.get(st.ATTR_OUTPUT_DIR),
        device=attrs.get(st.ATTR_DEVICE),
        worker=attrs.get(st.ATTR_WORKER),
        duration_s=attrs.get(st.ATTR_DURATION),
        epochs=attrs.get(st.ATTR_EPOCHS),
        resumed_from=attrs.get(st.ATTR_RESUMED_FROM),
        model=dict(attrs.get(st.ATTR_MODEL) or {}),
        error_analysis=attrs.get(st.ATTR_ERROR_ANALYSIS),
        adapter=dict(attrs.get(st.ATTR_ADAPTER) or {}),
        warm_start=attrs.get(st.ATTR_WARM_START),
    )


def open_view(config: StudyConfig) -> StudyView:
    """The stored study named in ``config``, read-only.

    Raises:
        StudyStateError: the storage, or a study of that name in it, does not exist
            (nothing is created).
        StorageError: the storage cannot be opened.
    """
    from hpo.study import load_existing_study

    return StudyView(load_existing_study(config), config)


class StudyView:
    """A stored study as readers see it; reading it writes nothing.

    ``study`` is the Optuna study itself, for Optuna's own readers (plot builders,
    importances); ``hpo report --attach`` and ``hpo dashboard --allow-writes`` write
    through it and :attr:`storage` only because the user asked them to.
    """

    def __init__(self, study: Any, config: StudyConfig) -> None:
        self.study = study
        self.config = config

    @property
    def storage(self) -> Any:
        """The Optuna storage the study lives in (optuna-dashboard serves it)."""
        return storage_of(self.study)

    @property
    def study_id(self) -> int:
        """The study's id in its storage (optuna-dashboard's URLs use it)."""
        return study_id_of(self.study)

    @property
    def storage_url(self) -> str:
        """The study file's storage URL, credentials hidden."""
        return redact_url(self.config.storage)

    @functools.cached_property
    def trials(self) -> list[Any]:
        """Every trial, read once: what a reader shows is one snapshot of the study."""
        return list(self.study.get_trials(deepcopy=False))

    @functools.cached_property
    def study_attrs(self) -> dict[str, Any]:
        """The study's user attributes, read once."""
        return dict(self.study.user_attrs)

    @property
    def stored_config(self) -> dict[str, Any] | None:
        """The resolved config the study last ran with (``hpo:config``); None when hpo did
        not run it."""
        return self.study_attrs.get(st.ATTR_CONFIG)

    def attrs(self, trial: Any) -> TrialAttrs:
        """``trial``'s ``hpo:`` attributes, decoded."""
        return trial_attrs(trial, self.study_attrs)

    def completed(self) -> list[Any]:
        """The completed trials, by number."""
        return [t for t in self.trials if t.state.name == "COMPLETE"]

    def best(self) -> Any | None:
        """The best feasible trial (:func:`hpo.ranking.best_trial`); None when none is."""
        return best_trial(self.trials, self.config)

    def feasible(self) -> list[Any]:
        """The trials that can be ranked (:func:`hpo.ranking.feasible`)."""
        return feasible(self.trials, self.config)

    def pareto_front(self) -> list[Any]:
        """The feasible Pareto front (:func:`hpo.ranking.pareto_front`), by number."""
        return pareto_front(self.trials, self.config)

    def front_rows(self) -> list[dict[str, Any]]:
        """The front as ``hpo best --json`` lists it (:func:`hpo.pareto.front_rows`)."""
        return front_rows(self.trials, self.config)

    def base_model(self, trial: Any) -> str | None:
        """The base model ``trial`` trained: its ``model`` param, else the fixed one."""
        return trial_model(trial, self.config)

    def usage(self) -> Usage:
        """Where the study stands against its budget (:mod:`hpo.budget`'s count)."""
        return usage_of(self.trials, self.study_attrs, self.config)

    def summary(self) -> Summary:
        """Trials by state and the best trial or front, as ``hpo status`` and ``best`` say."""
        return summary_of(self.trials, self.study_attrs, self.config)

    def attention(self) -> list[TrialLine]:
        """Failed and running trials of :attr:`trials`, as ``hpo status`` lists them (the
        running ones' heartbeat ages are read now)."""
        return attention(self.study, trials=self.trials, study_attrs=self.study_attrs)
