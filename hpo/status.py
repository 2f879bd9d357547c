"""Where a study stands, for a person: trials that need attention, metrics worth showing.

``hpo status``, ``hpo report`` and the closing lines of ``hpo run`` all show the same
table of trials that failed, were interrupted or lost their worker (with the reason and
the first line of the message) and of trials running now (with their worker and how old
their last heartbeat is). Everything here only reads the study.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from typing import Any

from hpo import storage as st

# Bookkeeping the HF Trainer returns beside the metrics (its speed_metrics: *_runtime and
# every *_per_second; model preparation time, FLOPs, the epoch): stored, never shown. The
# serving costs the HF trainers add (n_parameters, model_size_mb, latency_ms, throughput)
# are shown: they matter when choosing a base model.
_BOOKKEEPING = re.compile(r"(^|_)(runtime|model_preparation_time|total_flos|epoch)$|_per_second$")
_BOOKKEEPING_NAMES = {"step"}


def shown_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a user is shown: model quality and serving costs, no bookkeeping.

    Training runtimes, per-second speeds, epochs and FLOP counts stay stored, unshown.
    """
    return {
        k: v
        for k, v in metrics.items()
        if k not in _BOOKKEEPING_NAMES and not _BOOKKEEPING.search(k)
    }


@dataclass
class TrialLine:
    """One trial that needs attention: failed, interrupted, lost, or running now."""

    number: int
    state: str  # FAIL or RUNNING
    reason: str | None = None  # exception | nan | oom | storage | interrupted | worker_lost
    message: str | None = None  # the first line of the failure message
    worker: str | None = None
    heartbeat_age_s: float | None = None
    started: str | None = None  # ISO-8601

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a terminal or a log."""
        if self.state == "RUNNING":
            age = (
                f", last heartbeat {self.heartbeat_age_s:.0f} s ago"
                if self.heartbeat_age_s is not None
                else ""
            )
            return f"trial {self.number} RUNNING on {self.worker or 'an unknown worker'}{age}"
        message = f": {self.message}" if self.message else ""
        return f"trial {self.number} FAILED ({self.reason}){message}"


def attention(
    study: Any,
    *,
    trials: list[Any] | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> list[TrialLine]:
    """Failed (with why) and running (with worker and heartbeat age) trials, by number.

    Args:
        trials: the study's trials already read (read from ``study`` when None).
        study_attrs: the study's user attributes already read (likewise).
    """
    from hpo.budget import failure_reason

    if trials is None:
        trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if t.state.name in ("FAIL", "RUNNING")]
    if not trials:
        return []
    if study_attrs is None:
        study_attrs = study.user_attrs
    ages = heartbeat_ages(study) if any(t.state.name == "RUNNING" for t in trials) else {}
    lines = []
    for trial in trials:
        message = trial.user_attrs.get(st.ATTR_FAILURE_MESSAGE)
        lines.append(
            TrialLine(
                number=trial.number,
                state=trial.state.name,
                reason=failure_reason(trial, study_attrs),
                message=message.strip().splitlines()[0] if message and message.strip() else None,
                worker=trial.user_attrs.get(st.ATTR_WORKER),
                heartbeat_age_s=ages.get(trial.number),
                started=trial.datetime_start.isoformat() if trial.datetime_start else None,
            )
        )
    return sorted(lines, key=lambda line: line.number)


def failed_since(lines: list[TrialLine], moment: dt.datetime) -> list[TrialLine]:
    """The failed trials among ``lines`` that started at or after ``moment``."""
    return [
        line
        for line in lines
        if line.state == "FAIL"
        and line.started is not None
        and dt.datetime.fromisoformat(line.started) >= moment
    ]


def heartbeat_ages(study: Any) -> dict[int, float]:
    """Seconds since each running trial's last heartbeat, by trial number."""
    from hpo.backends.optuna_compat import heartbeat_ages as ages

    return ages(study)
