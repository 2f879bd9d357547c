"""Plain data behind every report figure and table, computed from a study's trials.

Nothing here imports plotly or pandas: each builder takes :class:`TrialRecord` values (or
a stored attribute) and returns lists, dicts and dataclasses, so tests check the numbers
directly and :mod:`dashboards.figures` only draws them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hpo.view import ENDED, trial_attrs

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the report needs it, read once from Optuna's FrozenTrial."""

    number: int
    state: str
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    intermediate: tuple[tuple[int, float], ...] = ()
    started: datetime | None = None
    completed: datetime | None = None
    duration_s: float | None = None
    epochs: float = 0.0
    worker: str = "unknown"
    failure: str | None = None
    failure_message: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # Every objective's value of a completed trial (``value`` is the only one's, or None
    # when a study has several).
    values: tuple[float, ...] = ()
    # What trained (``hpo:adapter``): {"type": "none"}, {"type": "lora", "r": 8, ...}, or
    # {} when the trainer records none.
    adapter: dict[str, Any] = field(default_factory=dict)


def trial_records(trials: Iterable[Any], study_attrs: dict[str, Any]) -> list[TrialRecord]:
    """Records of Optuna trials, with hpo's compute attributes and fallbacks.

    Compute per trial is ``hpo:duration_s`` (else completion minus start) and
    ``hpo:epochs`` (else the last reported step, else 0).
    """
    records = []
    for trial in trials:
        attrs = trial_attrs(trial, study_attrs)
        steps = tuple(
            sorted(
                (int(step), float(value))
                for step, value in trial.intermediate_values.items()
                if value is not None and math.isfinite(value)
            )
        )
        duration = attrs.duration_s
        if duration is None and trial.datetime_start and trial.datetime_complete:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        epochs = attrs.epochs
        if epochs is None:
            epochs = steps[-1][0] if steps else 0.0
        values = tuple(trial.values or ()) if trial.state.name == "COMPLETE" else ()
        value = values[0] if len(values) == 1 else None
        records.append(
            TrialRecord(
                number=trial.number,
                state=trial.state.name,
                value=float(value) if value is not None else None,
                params=dict(trial.params),
                intermediate=steps,
                started=trial.datetime_start,
                completed=trial.datetime_complete,
                duration_s=float(duration) if duration is not None else None,
                epochs=float(epochs),
                worker=str(attrs.worker or "unknown"),
                failure=attrs.failure,
                failure_message=attrs.failure_message,
                metrics=attrs.metrics,
                values=tuple(float(v) for v in values),
                adapter=attrs.adapter,
            )
        )
    return sorted(records, key=lambda r: r.number)


def adapter_label(adapter: dict[str, Any]) -> str:
    """How a report names what a trial trained: ``full`` (full fine-tuning), ``LoRA r=8``
    (the adapter's type and rank), or "" when its trainer records no adapter."""
    kind = adapter.get("type")
    if not kind:
        return ""
    if kind == "none":
        return "full"
    name = {"lora": "LoRA"}.get(kind, str(kind))
    return f"{name} r={adapter['r']}" if "r" in adapter else name


def adapter_labels(records: Sequence[TrialRecord]) -> dict[int, str]:
    """Trial number -> :func:`adapter_label`, when a trial of the study trained an adapter;
    else {} (a study of full fine-tunes only says nothing about adapters)."""
    labels = {r.number: adapter_label(r.adapter) for r in records}
    return labels if any(v not in ("", "full") for v in labels.values()) else {}


def model_labels(records: Sequence[TrialRecord], models: dict[int, str]) -> dict[int, str]:
    """Trial number -> its base model, and what trained on it when the study used adapters
    (``minilm-l6 · LoRA r=8``, ``minilm-l6 · full``): on the Pareto front, full
    fine-tuning and each rank get a colour, a legend entry and a hover label of their own."""
    adapters = adapter_labels(records)
    return {
        number: f"{model} · {adapters[number]}" if adapters.get(number) else model
        for number, model in models.items()
    }


def better(a: float, b: float, direction: str) -> bool:
    """True when ``a`` is at least as good as ``b`` for the study's direction."""
    return a >= b if direction == "maximize" else a <= b


def count_by_state(records: Sequence[TrialRecord]) -> dict[str, int]:
    """Trials per state, in a fixed order (complete, pruned, fail, running, waiting)."""
    counts = Counter(r.state for r in records)
    return {state: counts[state] for state in STATE_ORDER if counts[state]} | {
        state: n for state, n in counts.items() if state not in STATE_ORDER
    }


@dataclass(frozen=True)
class History:
    """Completed trials' values by trial number, and the best value so far after each."""

    numbers: list[int]
    values: list[float]
    best: list[float]


def best_so_far(
    records: Sequence[TrialRecord], direction: str, *, feasible: Container[int] | None = None
) -> History:
    """The optimization history: every completed value and the running best.

    Args:
        feasible: the trials that may be best (:func:`hpo.ranking.feasible`); None: every
            completed one. The running best is NaN (a gap) until the first of them.
    """
    numbers: list[int] = []
    values: list[float] = []
    best: list[float] = []
    for record in records:
        if record.value is None:
            continue
        numbers.append(record.number)
        values.append(record.value)
        counts = feasible is None or record.number in feasible
        last = best[-1] if best else math.nan
        if counts and (math.isnan(last) or better(record.value, last, direction)):
            best.append(record.value)
        else:
            best.append(last)
    return History(numbers, values, best)


@dataclass(frozen=True)
class Curve:
    """One trial's learning curve: the objective at each reported step."""

    number: int
    state: str
    steps: list[int]
    values: list[float]
    best: bool = False


def learning_curves(records: Sequence[TrialRecord], best_number: int | None) -> list[Curve]:
    """Every trial that reported at least once; pruned ones end where they were stopped."""
    return [
        Curve(
            number=r.number,
            state=r.state,
            steps=[step for step, _ in r.intermediate],
            values=[value for _, value in r.intermediate],
            best=r.number == best_number,
        )
        for r in records
        if r.intermediate
    ]


@dataclass(frozen=True)
class Span:
    """A trial's time on a worker (``end`` is "now" for a running trial)."""

    worker: str
    number: int
    state: str
    start: datetime
    end: datetime


def worker_timeline(records: Sequence[TrialRecord], now: datetime) -> list[Span]:
    """Started trials as spans on their worker's row, workers in order of first use."""
    spans = [
        Span(r.worker, r.number, r.state, r.started, r.completed or now)
        for r in records
        if r.started is not None
    ]
    return sorted(spans, key=lambda s: (s.start, s.number))


@dataclass(frozen=True)
class Compute:
    """Training compute spent by finished trials (complete, pruned and failed)."""

    trials: int
    total_seconds: float
    total_epochs: float
    mean_seconds: float
    mean_epochs: float
    wall_seconds: float


def compute_totals(records: Sequence[TrialRecord]) -> Compute:
    """Total and per-trial train seconds and epochs, plus the study's wall-clock span."""
    spent = [r for r in records if r.state in ENDED]
    seconds = sum(r.duration_s or 0.0 for r in spent)
    epochs = sum(r.epochs for r in spent)
    starts = [r.started for r in records if r.started]
    ends = [r.completed for r in records if r.completed]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    n = len(spent)
    return Compute(
        trials=n,
        total_seconds=seconds,
        total_epochs=epochs,
        mean_seconds=seconds / n if n else 0.0,
        mean_epochs=epochs / n if n else 0.0,
        wall_seconds=max(wall, 0.0),
    )


@dataclass(frozen=True)
class ComputeCurve:
    """Best-so-far value against cumulative compute, one point per finished trial.

    Trials count in the order they finished; ``best`` is None until the first completed
    trial. Pruned and failed trials add their compute without a value.
    """

    numbers: list[int]
    epochs: list[float]
    seconds: list[float]
    best: list[float | None]


def compute_curve(
    records: Sequence[TrialRecord], direction: str, *, feasible: Container[int] | None = None
) -> ComputeCurve:
    """Cumulative epochs and train seconds, and the best value reached with them (only
    ``feasible`` trials' values count, as in :func:`best_so_far`)."""
    finished = sorted(
        (r for r in records if r.state in ENDED),
        key=lambda r: (r.completed or datetime.max, r.number),
    )
    curve = ComputeCurve([], [], [], [])
    epochs = seconds = 0.0
    best: float | None = None
    for record in finished:
        epochs += record.epochs
        seconds += record.duration_s or 0.0
        counts = feasible is None or record.number in feasible
        if (
            counts
            and record.value is not None
            and (best is None or better(record.value, best, direction))
        ):
            best = record.value
        curve.numbers.append(record.number)
        curve.epochs.append(epochs)
        curve.seconds.append(seconds)
        curve.best.append(best)
    return curve


@dataclass(frozen=True)
class Reach:
    """Compute a study spent until its best-so-far first matched a target value."""

    trials: int
    epochs: float
    seconds: float


def compute_to_reach(curve: ComputeCurve, target: float, direction: str) -> Reach | None:
    """The first point where the best so far is at least as good as ``target``, or None."""
    for i, best in enumerate(curve.best):
        if best is not None and better(best, target, direction):
            return Reach(trials=i + 1, epochs=curve.epochs[i], seconds=curve.seconds[i])
    return None


@dataclass(frozen=True)
class ErrorAnalysis:
    """The best trial's validation confusion matrix and its most confident mistakes."""

    labels: list[str]
    matrix: list[list[int]]  # rows: true label, columns: predicted label
    errors: list[dict[str, Any]]

    @property
    def total(self) -> int:
        return sum(sum(row) for row in self.matrix)

    @property
    def accuracy(self) -> float:
        correct = sum(self.matrix[i][i] for i in range(len(self.labels)))
        return correct / self.total if self.total else 0.0

    @property
    def recall(self) -> dict[str, float]:
        """Per true label: the share predicted correctly."""
        return {
            label: (self.matrix[i][i] / sum(self.matrix[i])) if sum(self.matrix[i]) else 0.0
            for i, label in enumerate(self.labels)
        }


@dataclass(frozen=True)
class GenerationAnalysis:
    """A generative trial's validation examples of highest loss (trainers/causal_lm.py):
    each with its prompt, reference, the trial's generation (None without ``generate``)
    and its loss."""

    examples: list[dict[str, Any]]
    examples_scored: int
    mean_loss: float | None


def error_analysis(attr: Any) -> ErrorAnalysis | GenerationAnalysis | None:
    """Parse ``hpo:error_analysis``; None when it is missing or not the expected shape."""
    if not isinstance(attr, dict):
        return None
    if attr.get("kind") == "generation":
        return _generation_analysis(attr)
    labels = attr.get("labels")
    matrix = attr.get("confusion_matrix")
    if not isinstance(labels, list) or not isinstance(matrix, list) or not labels:
        return None
    if len(matrix) != len(labels) or any(
        not isinstance(row, list) or len(row) != len(labels) for row in matrix
    ):
        return None
    errors = [
        {
            "text": str(e.get("text", "")),
            "label": str(e.get("label", "")),
            "predicted": str(e.get("predicted", "")),
            "confidence": float(e.get("confidence", math.nan)),
            # An image trainer's thumbnail, kept only when it is an inline PNG/JPEG.
            "image": image if _is_image_uri(image := e.get("image")) else None,
        }
        for e in attr.get("confident_errors") or []
        if isinstance(e, dict)
    ]
    errors.sort(key=lambda e: -e["confidence"] if math.isfinite(e["confidence"]) else 0.0)
    return ErrorAnalysis(
        labels=[str(label) for label in labels],
        matrix=[[int(n) for n in row] for row in matrix],
        errors=errors,
    )


def _generation_analysis(attr: dict[str, Any]) -> GenerationAnalysis | None:
    rows = attr.get("highest_loss")
    if not isinstance(rows, list):
        return None

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    examples = [
        {
            "prompt": str(e.get("prompt", "")),
            "reference": text(e.get("reference")),
            "generation": text(e.get("generation")),
            "loss": float(e.get("loss", math.nan)),
        }
        for e in rows
        if isinstance(e, dict)
    ]
    examples.sort(key=lambda e: -e["loss"] if math.isfinite(e["loss"]) else 0.0)
    mean = attr.get("mean_loss")
    return GenerationAnalysis(
        examples=examples,
        examples_scored=int(attr.get("examples_scored") or len(examples)),
        mean_loss=float(mean) if isinstance(mean, int | float) else None,
    )


def _is_image_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(
        ("data:image/png;base64,", "data:image/jpeg;base64,")
    )


def trial_rows(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """One flat row per trial for ``trials.csv``: state, value, compute, params, metrics."""
    params = sorted({name for r in records for name in r.params})
    metrics = sorted({name for r in records for name in r.metrics})
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "number": r.number,
            "state": r.state,
            "value": r.value,
            "duration_s": r.duration_s,
            "epochs": r.epochs,
            "worker": r.worker,
            "failure": r.failure,
            "datetime_start": r.started.isoformat() if r.started else None,
            "datetime_complete": r.completed.isoformat() if r.completed else None,
        }
        row.update({f"params_{name}": r.params.get(name) for name in params})
        row.update({name: r.metrics.get(name) for name in metrics})
        rows.append(row)
    return rows


def split_metrics(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Validation (``eval_*``) and test (``test_*``) metrics, without runtime counters."""

    def keep(name: str, prefix: str) -> bool:
        return name.startswith(prefix) and not any(
            word in name for word in ("runtime", "per_second")
        )

    validation = {k: v for k, v in metrics.items() if keep(k, "eval_")}
    test = {k: v for k, v in metrics.items() if keep(k, "test_")}
    return validation, test


# What a candidate base model costs, as the HF trainers report it (trainers/_hf.py), and
# what an adapter trial costs to train and ship.
COST_METRICS = (
    "n_parameters",
    "model_size_mb",
    "latency_ms",
    "throughput",
    "trainable_parameters",
    "adapter_size_mb",
)


@dataclass(frozen=True)
class ModelRow:
    """One base model of a study that searched several: how it did and what it costs."""

    model: str
    trials: int  # every trial that drew it, whatever its state
    completed: int
    on_front: int
    best: dict[str, float]  # per objective, the best value among its feasible trials
    best_trial: int | None  # its best trial in the first objective
    cost: dict[str, float]  # COST_METRICS of that trial
    # What trained, when the study used adapters: "full" or "LoRA r=8" (the type and rank).
    adapter: str = ""


def model_comparison(
    records: Sequence[TrialRecord],
    models: dict[int, str],
    objectives: Sequence[tuple[str, str]],
    feasible: set[int],
    front: set[int],
) -> list[ModelRow]:
    """Per base model: trials, completed, on the front, best per objective, and cost.

    Args:
        models: trial number -> the base model it trained.
        objectives: (metric, direction) of each objective, in the study's order.
        feasible: completed trials that meet the constraints (all completed without any).
        front: trials on the feasible Pareto front.

    A study that trained adapters gets a row per base model and adapter (full
    fine-tuning, each type and rank: :func:`adapter_labels`).
    Rows are ordered by the best value of the first objective, best first.
    """
    first_metric, first_direction = objectives[0]
    sign = -1.0 if first_direction == "maximize" else 1.0
    adapters = adapter_labels(records)
    groups = {n: (model, adapters.get(n, "")) for n, model in models.items()}
    rows = []
    for model, adapter in sorted(set(groups.values())):
        mine = [r for r in records if groups.get(r.number) == (model, adapter)]
        done = [r for r in mine if r.values and r.number in feasible]
        best = {
            metric: _best_of([r.values[i] for r in done], direction)
            for i, (metric, direction) in enumerate(objectives)
            if done
        }
        # Its best trial in the first objective (ties: the earlier one), as hpo best picks.
        top = min(done, key=lambda r: (sign * r.values[0], r.number), default=None)
        rows.append(
            ModelRow(
                model=model,
                trials=len(mine),
                completed=sum(r.state == "COMPLETE" for r in mine),
                on_front=sum(r.number in front for r in mine),
                best=best,
                best_trial=top.number if top else None,
                cost={k: top.metrics[k] for k in COST_METRICS if top and k in top.metrics},
                adapter=adapter,
            )
        )
    return sorted(
        rows,
        key=lambda row: (first_metric not in row.best, sign * row.best.get(first_metric, 0.0)),
    )


def _best_of(values: Sequence[float], direction: str) -> float:
    return max(values) if direction == "maximize" else min(values)
