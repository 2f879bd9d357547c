"""Replay recorded learning curves: a real fine-tuning landscape at zero training cost.

``benchmarks/record_curves.py`` trains the text-classification trainer once per point of
a discrete grid and stores each configuration's per-epoch validation metrics and wall
seconds. This trainer serves them back through the same context as the real trainer:
one ``ctx.report`` per epoch, stopping when the pruner says so. A configuration that was
not recorded gets the nearest recorded one (learning rate compared on a log scale, other
numbers relative to their recorded range, categories by equality).
"""

from __future__ import annotations

import gzip
import json
import math
import time
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hpo.contract import Trainer
from hpo.trainer import TrialContext

DEFAULT_CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "curves.json.gz"


class ReplayArgs(BaseModel):
    """Where the curves are, how many epochs to serve; hyperparameters pick the curve."""

    model_config = ConfigDict(extra="allow")

    curves: str = Field(str(DEFAULT_CURVES), description="curves.json.gz; relative to study")
    num_train_epochs: int | None = Field(None, gt=0, description="default: all recorded")
    seconds_scale: float = Field(0.0, ge=0, description="sleep this share of recorded seconds")


@cache
def load_curves(path: str) -> dict[str, Any]:
    """The recorded curves file, read once per process."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def nearest(curves: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The recorded curve whose configuration is closest to ``params``."""
    names = list(curves[0]["params"])
    spans = {name: _span([c["params"][name] for c in curves], name) for name in names}

    def distance(curve: dict[str, Any]) -> float:
        return sum(
            _gap(curve["params"][name], params.get(name), name, spans[name]) for name in names
        )

    return min(curves, key=distance)


def _scale(value: float, name: str) -> float:
    return math.log10(value) if "learning_rate" in name and value > 0 else float(value)


def _span(values: list[Any], name: str) -> float:
    numbers = [_scale(v, name) for v in values if isinstance(v, int | float)]
    if not numbers or max(numbers) == min(numbers):
        return 1.0
    return max(numbers) - min(numbers)


def _gap(recorded: Any, wanted: Any, name: str, span: float) -> float:
    if wanted is None:
        return 0.0
    numeric = isinstance(recorded, int | float) and isinstance(wanted, int | float)
    if numeric and not isinstance(recorded, bool):
        return abs(_scale(recorded, name) - _scale(wanted, name)) / span
    return 0.0 if recorded == wanted else 1.0


def train(ctx: TrialContext) -> dict[str, float]:
    """Serve the nearest recorded curve epoch by epoch; stop early when pruned."""
    args = ReplayArgs.model_validate(ctx.params)
    data = load_curves(str(ctx.resolve_path(args.curves)))
    hyper = {k: v for k, v in ctx.params.items() if k not in ReplayArgs.model_fields}
    curve = nearest(data["curves"], hyper)
    epochs = min(args.num_train_epochs or len(curve["eval_accuracy"]), len(curve["eval_accuracy"]))
    metrics: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        seconds = curve["seconds"][epoch - 1]
        if args.seconds_scale:
            time.sleep(seconds * args.seconds_scale)
        metrics = {
            "eval_accuracy": curve["eval_accuracy"][epoch - 1],
            "eval_loss": curve["eval_loss"][epoch - 1],
            "epoch": float(epoch),
            "recorded_seconds": seconds,
        }
        ctx.report(epoch, metrics)
        if ctx.should_prune():
            break
    return metrics


TRAINER = Trainer(train, args_model=ReplayArgs)
