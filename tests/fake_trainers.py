"""Trainers that misbehave on purpose, referenced from test study files."""

from __future__ import annotations

import math
import os

from hpo.trainer import NonFiniteError, TrialContext
from trainers import toy


def fail_when_dropout_high(ctx: TrialContext) -> dict[str, float]:
    """Raise for dropout above 0.15 (about half the trials), else behave like toy."""
    if ctx.params["dropout"] > 0.15:
        raise RuntimeError("simulated crash in the data loader")
    return toy.train(ctx)


def always_fail(ctx: TrialContext) -> dict[str, float]:
    raise ValueError("simulated bug")


def nan_loss(ctx: TrialContext) -> dict[str, float]:
    raise NonFiniteError("training loss became nan at step 3")


def nan_value(ctx: TrialContext) -> dict[str, float]:
    return {"eval_accuracy": math.nan}


def oom(ctx: TrialContext) -> dict[str, float]:
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def no_objective(ctx: TrialContext) -> dict[str, float]:
    return {"eval_f1": 0.5}


def slow_epochs(ctx: TrialContext) -> dict[str, float]:
    """Toy curve, but each epoch takes HPO_TEST_EPOCH_S seconds (for kill tests)."""
    delay = float(os.environ.get("HPO_TEST_EPOCH_S", "0.5"))
    ctx.params = {**ctx.params, "seconds_per_epoch": delay}
    return toy.train(ctx)
