"""Experiment trackers and extra ``TrainingArguments`` for the HF trainers.

``trainer.args.report_to`` takes what the installed transformers takes: ``none``,
``all``, one integration name (``tensorboard``, ``mlflow``, ``wandb``, ``trackio``,
``comet_ml``, ...) or a list of them. It reaches the HF ``Trainer``, whose own callbacks
log every evaluation. hpo names each run ``<study>/trial-NNNN`` and, once the trial's
final (validation and test) metrics are known, logs the trial's hyperparameters and those
metrics to TensorBoard, MLflow and W&B, and lays their runs out per study:

- TensorBoard: one run per trial, the trial's folder (``tensorboard --logdir
  runs/<study>``);
- MLflow: a parent run per study, each trial a run nested under it;
- W&B: hpo opens each trial's run (in the study's group) before training, the Trainer's
  callback logs into it, and hpo closes the run it opened.

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
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# What each integration transformers knows needs installed, where that is not a module of
# its own name, and the pip package to name when it is missing (transformers' is_*_available
# checks the same modules; comet_ml's also wants an API key, which is its business).
_MODULES = {
    "azure_ml": ("azureml.core",),
    "dagshub": ("dagshub", "mlflow"),
    "flyte": ("flytekit",),
    "kubeflow": (),
}
_PACKAGES = {
    "azure_ml": "azureml-core",
    "comet_ml": "comet-ml",
    "dagshub": "dagshub mlflow-skinny",
    "mlflow": "mlflow-skinny",
}

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
    """The integrations to use, as a list without ``none``; ``all``: those installed, as
    transformers picks them."""
    if report_to == "all" or report_to == ["all"]:
        from transformers.integrations import get_available_reporting_integrations

        return list(get_available_reporting_integrations())
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for name in names if name != "none"]


@functools.cache
def known_integrations() -> tuple[str, ...]:
    """The ``report_to`` names the installed transformers knows (besides none and all)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return tuple(INTEGRATION_TO_CALLBACK)


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (a dotted one: each of its parents too)."""
    parts = module.split(".")
    return all(
        importlib.util.find_spec(".".join(parts[: i + 1])) is not None for i in range(len(parts))
    )


def check_report_to(report_to: str | list[str]) -> str | None:
    """What is wrong with ``report_to``, or None: a name the installed transformers does not
    know (with its list), ``all`` or ``none`` beside other names, or an integration whose
    package is not installed (with the package to install)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if not names:
        return "name an integration, or write none"
    if len(names) > 1 and {"all", "none"} & set(names):
        word = "all" if "all" in names else "none"
        return f"{word} stands alone; write {word} or a list of integrations"
    if names in (["all"], ["none"]):
        return None
    known = known_integrations()
    for name in names:
        if name not in known:
            return (
                f"{name!r} is not an integration of the installed transformers; "
                f"one of none, all, {', '.join(known)}"
            )
        if name == "kubeflow" and not os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"):
            return "kubeflow reports from a Kubeflow TrainJob only (KUBEFLOW_TRAINER_SERVER_URL)"
        # tensorboard, not transformers' other choice tensorboardX: hpo writes the final
        # metrics with torch's SummaryWriter, which needs it.
        modules = _MODULES.get(name, (name,))
        if not all(_installed(m) for m in modules):
            return f"{name} is not installed; pip install {_PACKAGES.get(name, name)}"
    return None


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
    problem = check_report_to(report_to)
    if problem:
        return "report_to", problem
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


def study_name(ctx: Any) -> str:
    return getattr(getattr(ctx.trial, "study", None), "study_name", None) or "hpo"


def run_name(ctx: Any) -> str:
    """``<study>/trial-NNNN``: the same name in every tracker."""
    return f"{study_name(ctx)}/trial-{ctx.number:04d}"


@dataclasses.dataclass
class Runs:
    """A trial's runs in the trackers hpo lays out (what :func:`start_runs` opened)."""

    names: list[str]
    tensorboard_dir: Path | None = None
    mlflow_parent: str | None = None
    wandb_run: Any = None


def start_runs(report_to: str | list[str], ctx: Any) -> Runs:
    """Open the trial's runs before training, so the Trainer's callbacks log into them.

    MLflow: the trial's run, nested under the study's parent run; the HF callback ends a
    run it started at the end of training, before hpo scores the test split, while one
    that hpo starts stays open until :func:`log_final`. W&B: the trial's run in the
    study's group (the HF callback logs into an open run, and never closes it: hpo, which
    opened it, does).
    """
    runs = Runs(trackers(report_to))
    study, name = study_name(ctx), run_name(ctx)
    if "tensorboard" in runs.names:
        # TENSORBOARD_LOGGING_DIR, which the HF callback reads, is one folder for every
        # trial; hpo keeps one run per trial: the trial's folder, or one under that root.
        root = os.environ.get("TENSORBOARD_LOGGING_DIR")
        runs.tensorboard_dir = (
            Path(root).expanduser() / study / f"trial-{ctx.number:04d}"
            if root
            else Path(ctx.output_dir)
        )
    if "mlflow" in runs.names:
        import mlflow

        if mlflow.active_run() is not None:  # a previous trial that raised
            mlflow.end_run(status="FAILED")
        # MLFLOW_EXPERIMENT_NAME wins, as in the HF callback; otherwise one experiment per study.
        experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or study)
        runs.mlflow_parent = _mlflow_parent(experiment.experiment_id, study)
        mlflow.start_run(
            run_name=name,
            parent_run_id=runs.mlflow_parent,
            tags={"hpo.study": study, "hpo.trial": str(ctx.number)},
        )
    if "wandb" in runs.names:
        import wandb

        runs.wandb_run = wandb.init(
            # The HF callback's default project; WANDB_RUN_GROUP, wandb's own, wins.
            project=os.environ.get("WANDB_PROJECT", "huggingface"),
            name=name,
            group=os.environ.get("WANDB_RUN_GROUP") or study,
            job_type="trial",
            config={"hpo": dict(ctx.trial.params)},
            reinit="finish_previous",
        )
    return runs


def _mlflow_parent(experiment_id: str, study: str) -> str:
    """The id of the study's parent MLflow run (tagged ``hpo.study``), created once.

    Looked up for each trial (one query), not cached: the tracking URI may change between
    studies of one process. Workers of one study may create it at the same time; each
    then keeps the oldest and deletes its own, so the trials of a study share one parent.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()

    def oldest() -> str | None:
        found = client.search_runs(
            [experiment_id],
            filter_string="tags.`hpo.role` = 'study'",
            order_by=["attributes.start_time ASC"],
        )
        ids = [r.info.run_id for r in found if r.data.tags.get("hpo.study") == study]
        return ids[0] if ids else None

    parent = oldest()
    if parent is None:
        mine = client.create_run(
            experiment_id, run_name=study, tags={"hpo.study": study, "hpo.role": "study"}
        ).info.run_id
        parent = oldest() or mine
        if parent != mine:
            client.delete_run(mine)
    return parent


def attach(trainer: Any, runs: Runs) -> None:
    """Point the Trainer's TensorBoard callback at the trial's folder."""
    if runs.tensorboard_dir is None:
        return
    from transformers.integrations import TensorBoardCallback

    trainer.remove_callback(TensorBoardCallback)
    callback = TensorBoardCallback()
    callback.logging_dir = str(runs.tensorboard_dir)  # read when training begins
    trainer.add_callback(callback)


def log_final(runs: Runs, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Log the trial's hyperparameters and final metrics to each tracker; close its runs."""
    if runs.tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        # Beside the Trainer's own event file: one TensorBoard run per trial.
        with SummaryWriter(log_dir=str(runs.tensorboard_dir)) as writer:
            writer.add_text("hyperparameters", json.dumps(params, default=str))
            for key, value in metrics.items():
                writer.add_scalar(f"final/{key}", value)
            writer.add_hparams(
                {k: v for k, v in params.items() if isinstance(v, int | float | str | bool)},
                {f"hparam/{k}": v for k, v in metrics.items()},
                run_name=".",
            )
    if runs.mlflow_parent is not None:
        import mlflow
        from mlflow.tracking import MlflowClient

        if mlflow.active_run() is not None:
            mlflow.log_params({f"hpo.{k}": v for k, v in params.items()})
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            mlflow.end_run()
        # The parent's end time: its latest trial's.
        MlflowClient().set_terminated(runs.mlflow_parent)
    if runs.wandb_run is not None:
        runs.wandb_run.summary.update({f"final/{k}": v for k, v in metrics.items()})
        runs.wandb_run.finish()
        runs.wandb_run = None


def end_runs_after_failure(runs: Runs) -> None:
    """Close the runs the trial left open, marked failed."""
    if runs.mlflow_parent is not None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
    if runs.wandb_run is not None:
        runs.wandb_run.finish(exit_code=1)
        runs.wandb_run = None
