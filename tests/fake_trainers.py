"""Trainers that misbehave on purpose, referenced from test study files."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from hpo.contract import Trainer
from hpo.trainer import NonFiniteError, TrialContext
from hpo.trainers import toy


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


def oom_when_dropout_high(ctx: TrialContext) -> dict[str, float]:
    """One trial of a packed GPU asks for more than its share; the others fit."""
    if ctx.params.get("dropout", 0.0) > 0.2:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return toy.train(ctx)


def no_objective(ctx: TrialContext) -> dict[str, float]:
    return {"eval_f1": 0.5}


def slow_epochs(ctx: TrialContext) -> dict[str, float]:
    """Toy curve, but each epoch takes HPO_TEST_EPOCH_S seconds (for kill tests)."""
    delay = float(os.environ.get("HPO_TEST_EPOCH_S", "0.5"))
    ctx.params = {**ctx.params, "seconds_per_epoch": delay}
    return toy.train(ctx)


def disk_quota(ctx: TrialContext) -> dict[str, float]:
    """Fail with a two-line message; only the first line belongs in a summary."""
    raise RuntimeError("disk quota exceeded on /scratch\nwhile writing checkpoint-1")


def with_throughput(ctx: TrialContext) -> dict[str, float]:
    """Toy metrics plus the bookkeeping the HF Trainer returns beside them, and the serving
    costs the HF trainers add (trainers/_hf.py cost_metrics)."""
    metrics = toy.train(ctx)
    return {
        **metrics,
        "eval_runtime": 1.5,
        "eval_samples_per_second": 400.0,
        "eval_steps_per_second": 20.0,
        "eval_tokens_per_second": 9000.0,
        "eval_model_preparation_time": 0.01,
        "test_samples_per_second": 380.0,
        "train_runtime": 12.0,
        "total_flos": 1e12,
        "n_parameters": 22_700_000.0,
        "model_size_mb": 86.6,
        "throughput": 400.0,
    }


def fixed_metrics(ctx: TrialContext) -> dict[str, float]:
    """Trial N returns row N of ``trainer.args.table`` (a null row fails), saves a checkpoint
    as the HF trainers lay it out, and records whether it led the study when it finished
    (``hpo:led``, from :meth:`TrialContext.leads_study`, as the HF trainers ask before their
    test pass)."""
    row = ctx.params["table"][ctx.number]
    if row is None:
        raise RuntimeError("simulated failure")
    metrics = {k: float(v) for k, v in row.items()}
    checkpoint = ctx.output_dir / "checkpoint-1"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    ctx.set_checkpoint(checkpoint)
    ctx.set_attr("led", ctx.leads_study(metrics))
    return metrics


def _copy_checkpoint(checkpoint: Path, target: Path, args: dict, study_dir: Path) -> None:
    shutil.copytree(checkpoint, target, dirs_exist_ok=True)


# A ref names this Trainer (tests.fake_trainers:FIXED_METRICS) to get its export hooks.
FIXED_METRICS = Trainer(
    fixed_metrics, save_model=_copy_checkpoint, resolve_model=lambda name, study_dir: name
)


# --- worker loops that misbehave (``hpo.workers.run_worker_processes``'s ``loop``) ---------


def stubborn_loop(config, **kwargs) -> int:
    """A worker that ignores SIGTERM and SIGINT and never returns (a hung trainer)."""
    import signal
    import time
    from pathlib import Path

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (Path(config.output_dir) / f"ready-{os.getpid()}").touch()
    while True:
        time.sleep(1)


def stuck_at_exit_loop(config, **kwargs) -> int:
    """A worker whose loop returns but whose process cannot exit (a non-daemon thread)."""
    import threading
    import time

    threading.Thread(target=lambda: time.sleep(10**6), daemon=False).start()
    return 0


class _Undecodable:
    """Pickles fine in the worker, fails to unpickle in the parent."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("cannot rebuild this object")


def undecodable_record_loop(config, **kwargs) -> int:
    """Log one record the parent cannot unpickle, then more than a pipe's buffer holds."""
    import logging

    log = logging.getLogger("hpo.test")
    log.warning("an odd record", extra={"odd": _Undecodable()})
    for i in range(400):
        log.warning("filler %d %s", i, "x" * 1000)
    return 0


def storage_error_once(ctx: TrialContext) -> dict[str, float]:
    """Toy, but the first run of each point loses the database after its first epoch's
    checkpoint: the error Optuna raises when a report's retries ran out (a connection killed
    mid-transaction). A retry resumes from the checkpoint and completes."""
    import hashlib

    import optuna
    import sqlalchemy.exc

    point = hashlib.sha256(repr(sorted(ctx.params.items())).encode()).hexdigest()[:12]
    marker = ctx.output_dir.parent / f"storage-error-{point}"
    if ctx.resume_from is not None or marker.exists():
        return toy.train(ctx)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    ctx.params = {**ctx.params, "num_train_epochs": 1}
    toy.train(ctx)
    raise optuna.exceptions.StorageInternalError(
        "An exception is raised during the commit."
    ) from sqlalchemy.exc.PendingRollbackError(
        "Can't reconnect until invalid transaction is rolled back"
    )


def storage_rejects_data(ctx: TrialContext) -> dict[str, float]:
    """The storage refuses what the trial wrote (a value too long for its column): Optuna
    wraps it in the same StorageInternalError as a lost connection, but retrying the point
    cannot help, so it counts as the trial's failure."""
    import optuna
    import sqlalchemy.exc

    raise optuna.exceptions.StorageInternalError(
        "An exception is raised during the commit."
    ) from sqlalchemy.exc.DataError(
        "INSERT INTO trial_user_attributes ...", {}, Exception("Data too long for column")
    )
