"""Experiment trackers and extra ``TrainingArguments`` for the HF trainers.

``trainer.args.report_to`` (``none``, ``tensorboard``, ``mlflow``, ``wandb`` or a list)
reaches the HF ``Trainer``, whose own callbacks log every evaluation. hpo names each run
``<study>/trial-NNNN`` and, once the trial's final (validation and test) metrics are
known, logs the trial's hyperparameters and those metrics to each tracker.

``trainer.args.training_args`` passes any other ``TrainingArguments`` field through. It
is checked against the installed ``TrainingArguments`` before anything runs: an unknown
name, a field hpo sets itself, and a searched hyperparameter are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from typing import Any, Literal

logger = logging.getLogger(__name__)

Tracker = Literal["none", "tensorboard", "mlflow", "wandb"]
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}

# TrainingArguments fields hpo sets itself, and where a user sets them instead.
_SCHEDULE = "hpo evaluates, saves and reports on one schedule; set trainer.args.eval_steps"
OWNED = {
    "output_dir": "hpo gives each trial its own folder (output_dir/<study>/trial-NNNN)",
    "eval_strategy": _SCHEDULE,
    "save_strategy": _SCHEDULE + " or trainer.args.save_checkpoints",
    "logging_strategy": _SCHEDULE,
    "save_steps": _SCHEDULE,
    "logging_steps": _SCHEDULE,
    "save_total_limit": "hpo keeps one checkpoint per trial (see keep_checkpoints)",
    "seed": "hpo derives it from the study's seed",
    "data_seed": "hpo derives it from the study's seed",
    "report_to": "set trainer.args.report_to",
    "run_name": "hpo names each run <study>/trial-NNNN",
    "disable_tqdm": "hpo shows progress itself",
    "logging_nan_inf_filter": "hpo fails a trial whose loss is NaN or inf (hpo:failure nan)",
    "fp16": "set trainer.args.mixed_precision",
    "bf16": "set trainer.args.mixed_precision",
    "use_cpu": "hpo picks the device per worker",
    "dataloader_pin_memory": "hpo pins memory on CUDA",
    "warmup_steps": "set trainer.args.warmup_ratio",
    "warmup_ratio": "set trainer.args.warmup_ratio",
    "train_sampling_strategy": "set trainer.args.group_by_length (text trainers)",
    "group_by_length": "set trainer.args.group_by_length (text trainers)",
}


def trackers(report_to: str | list[str]) -> list[str]:
    """The trackers to use, as a list without ``none``."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in names if name != "none"]


@functools.cache
def training_argument_fields(config: str = "transformers:TrainingArguments") -> frozenset[str]:
    """Field names of the installed ``TrainingArguments``, or of the subclass ``config``
    names as ``module:Class`` (TRL's ``SFTConfig``); imported only when needed."""
    import importlib

    module, _, name = config.partition(":")
    arguments = getattr(importlib.import_module(module), name)
    return frozenset(f.name for f in dataclasses.fields(arguments) if f.init)


def check_tracking(
    report_to: str | list[str],
    training_args: dict[str, Any],
    own_fields: Iterable[str],
    searched: Iterable[str],
    config: str = "transformers:TrainingArguments",
    owned: dict[str, str] | None = None,
) -> tuple[str, str] | None:
    """The first problem with ``report_to`` / ``training_args`` as (field, message), or None.

    Args:
        own_fields: the trainer's own argument names (hpo passes them to TrainingArguments).
        searched: the hyperparameters in ``search_space``.
        config: the arguments class the trainer makes, as ``module:Class``.
        owned: more fields the trainer sets itself -> why (beside :data:`OWNED`).
    """
    for name in trackers(report_to):
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            return "report_to", f"{name} is not installed; pip install {_PACKAGES[name]}"
    if not training_args:
        return None
    known = training_argument_fields(config)
    searched, own_fields = set(searched), set(own_fields)
    owned = {**OWNED, **(owned or {})}
    shown = config.partition(":")[0].split(".")[0] + " " + config.partition(":")[2]
    for name in training_args:
        field = f"training_args.{name}"
        if name not in known:
            return field, f"not a field of the installed {shown}"
        if name in searched:
            return field, f"searched in search_space.{name}; hpo sets it for each trial"
        if name in own_fields:
            return field, f"hpo sets it from trainer.args.{name}; set it there"
        if name in owned:
            return field, f"hpo sets it: {owned[name]}"
    return None


def run_name(ctx: Any) -> str:
    """``<study>/trial-NNNN``: the same name in every tracker."""
    study = getattr(getattr(ctx.trial, "study", None), "study_name", None) or "hpo"
    return f"{study}/trial-{ctx.number:04d}"


def start_runs(report_to: str | list[str], ctx: Any) -> None:
    """Open the trial's MLflow run, so the final metrics land in the run the Trainer used.

    The HF MLflow callback ends a run it started at the end of training, before hpo scores
    the test split; a run that hpo starts stays open until :func:`log_final`.
    """
    if "mlflow" in trackers(report_to):
        import mlflow

        name = run_name(ctx)
        if mlflow.active_run() is not None:  # a previous trial that raised
            mlflow.end_run(status="FAILED")
        # MLFLOW_EXPERIMENT_NAME wins, as in the HF callback; otherwise one experiment per study.
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or name.rsplit("/", 1)[0])
        mlflow.start_run(run_name=name)


def log_final(
    report_to: str | list[str], ctx: Any, params: dict[str, Any], metrics: dict[str, float]
) -> None:
    """Log the trial's hyperparameters and final metrics to each tracker."""
    names = trackers(report_to)
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter

        # Beside the Trainer's own event files (output_dir/runs/...), one run of its own.
        with SummaryWriter(log_dir=str(ctx.output_dir / "runs" / "final")) as writer:
            writer.add_text("hyperparameters", json.dumps(params, default=str))
            for key, value in metrics.items():
                writer.add_scalar(f"final/{key}", value)
            writer.add_hparams(
                {k: v for k, v in params.items() if isinstance(v, int | float | str | bool)},
                {f"hparam/{k}": v for k, v in metrics.items()},
                run_name=".",
            )
    if "mlflow" in names:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_params({f"hpo.{k}": v for k, v in params.items()})
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            mlflow.end_run()
    if "wandb" in names:
        import wandb

        if wandb.run is not None:
            wandb.run.config.update({"hpo": params}, allow_val_change=True)
            wandb.run.summary.update({f"final/{k}": v for k, v in metrics.items()})
            wandb.finish()


def end_runs_after_failure(report_to: str | list[str]) -> None:
    """Close a run the trial left open, marked failed."""
    if "mlflow" in trackers(report_to):
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
