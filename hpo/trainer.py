"""What a trainer gets per trial: the :class:`TrialContext` of ``train(ctx) -> dict``.

hpo calls one shared trainer function per trial with a :class:`TrialContext`. The
trainer reads ``ctx.params`` (fixed ``trainer.args`` with this trial's hyperparameters
set at their paths, :func:`hpo.space.trial_args`), calls ``ctx.report(step, metrics)``
after each evaluation, stops early when ``ctx.should_prune()`` says so, and returns its
final metrics. The runner, not the trainer, turns a prune decision into a pruned trial
and picks the objective.

The base model is the ``model`` argument (``trainer.args.model``, or a categorical
``search_space.model`` whose choices are the candidates). The hooks a trainer offers
around its function (an args model and checks, model facts for ``hpo validate``, export,
``hpo init`` drafting) are one :class:`hpo.contract.Trainer` its module exports as
``TRAINER``; hpo never imports a trainer by name.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hpo import storage
from hpo.backends.optuna_compat import set_trial_user_attrs
from hpo.config import Objective, StudyConfig
from hpo.events import emit

logger = logging.getLogger(__name__)


class NonFiniteError(ArithmeticError):
    """Raised by a trainer whose loss became NaN or infinite; the trial fails as ``nan``."""


class TrainerFn(Protocol):
    """What ``trainer.ref`` must point at."""

    def __call__(self, ctx: TrialContext) -> dict[str, float]: ...


@dataclass
class TrialContext:
    """Everything a trainer needs from the orchestrator for one trial.

    Attributes:
        trial: the Optuna trial (for attributes; samplers are hpo's business).
        params: ``trainer.args`` with this trial's hyperparameters set at their paths
            (``adapter.r`` inside ``adapter``: :func:`hpo.space.trial_args`).
        objective: the metric name the study optimizes; ``report`` feeds it to the pruner.
        direction: ``"maximize"`` or ``"minimize"`` (for a trainer's own early stopping).
        seed: a per-trial seed derived from the study seed.
        output_dir: a folder of this trial's own for checkpoints and artifacts.
        study_dir: folder of the study file; relative data paths resolve against it.
        device: ``"cuda:N"`` or ``"cpu"``, chosen by the worker.
        threads: CPU threads this worker may use (workers split the machine's cores).
        resume_from: a checkpoint folder of an earlier attempt at these parameters.
        templates: the params that held ``${VAR}``, as written: dotted path in ``params``
            -> the text with ``${VAR}``. What a trainer saves to disk (its arguments in a
            checkpoint) holds these in place of the values, which may be secrets.
        config: the study's config (set by the runner): its objectives and constraints
            say which trial leads (:meth:`leads_study`).
        publish: with ``output_dir`` in object storage, uploads a checkpoint folder and
            returns its URL (:func:`hpo.object_store.publish_checkpoint`); None otherwise.
    """

    trial: Any
    params: dict[str, Any]
    objective: str
    seed: int
    output_dir: Path
    study_dir: Path = field(default_factory=Path.cwd)
    direction: str = "maximize"
    device: str = "cpu"
    threads: int | None = None
    resume_from: Path | None = None
    templates: dict[str, str] = field(default_factory=dict)
    config: StudyConfig | None = None
    publish: Callable[[Path], str] | None = None
    # False in a study with several objectives: Optuna prunes (and takes intermediate
    # values) only with one, so evaluations are recorded but not reported to a pruner.
    prunable: bool = True
    history: list[dict[str, float]] = field(default_factory=list)
    reported_steps: set[int] = field(default_factory=set)
    pruned: bool = False
    epochs: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def number(self) -> int:
        """The Optuna trial number."""
        return int(self.trial.number)

    def report(self, step: int, metrics: dict[str, float], *, epoch: float | None = None) -> None:
        """Record one evaluation; the objective metric goes to the pruner at ``step``.

        Args:
            step: the pruning resource, normally the epoch (1, 2, ...).
            metrics: evaluation metrics; must contain the study's objective metric.
            epoch: training epochs done so far (defaults to ``step``), for compute accounting.
        """
        if self.objective not in metrics and not self.prunable:
            self._record(step, metrics, epoch)
            return
        if self.objective not in metrics:
            raise KeyError(
                f"trainer reported {sorted(metrics)} without the objective {self.objective!r}; "
                "fix objective.metric in the study file or the trainer's metric names"
            )
        value = float(metrics[self.objective])
        # A resumed trial inherited the lost trial's intermediate values, and Optuna keeps
        # the first value of a step: report only steps it has not seen.
        if math.isfinite(value) and step not in self.reported_steps and self.prunable:
            self.trial.report(value, step)
            self.reported_steps.add(step)
        self._record(step, metrics, epoch)
        self._log_evaluation(step, value, metrics)

    def _record(self, step: int, metrics: dict[str, float], epoch: float | None) -> None:
        """Keep this evaluation in the trial's history (``hpo:history``)."""
        self.epochs = float(step if epoch is None else epoch)
        # Steps repeated after a checkpoint replace their history entry.
        self.history = [h for h in self.history if h["step"] < step]
        self.history.append({"step": step, "epoch": self.epochs, **_floats(metrics)})
        # One transaction for both: this runs after every evaluation.
        set_trial_user_attrs(
            self.trial, {storage.ATTR_HISTORY: self.history, storage.ATTR_EPOCHS: self.epochs}
        )

    def _log_evaluation(self, step: int, value: float, metrics: dict[str, float]) -> None:
        """One event per evaluation: where the trial is and how it is doing."""
        total = self.params.get("num_train_epochs")
        total = total if isinstance(total, int | float) else None
        loss = next((float(metrics[k]) for k in ("eval_loss", "loss") if k in metrics), None)
        elapsed = time.monotonic() - self.started
        at = f"epoch {self.epochs:g}/{total:g}" if total else f"step {step}"
        shown_loss = f" loss={loss:.4f}" if loss is not None else ""
        emit(
            logger,
            "evaluation",
            "trial %d %s: %s=%.4f%s (%.1f s)",
            self.number,
            at,
            self.objective,
            value,
            shown_loss,
            elapsed,
            trial=self.number,
            step=step,
            epoch=self.epochs,
            epochs=total,
            value=value,
            loss=loss,
            elapsed_s=round(elapsed, 3),
        )

    def should_prune(self) -> bool:
        """True when the pruner wants this trial stopped; the trainer should return soon."""
        if self.prunable and self.trial.should_prune():
            self.pruned = True
        return self.pruned

    def leads_study(self, metrics: dict[str, float]) -> bool:
        """False only when these final ``metrics`` can no longer make this trial the
        study's best (with several objectives: put it on the Pareto front).

        Finished values never change and later trials only raise the bar, so a trial that
        does not lead when it finishes can never be the study's best; a trainer skips work
        only the best trial needs (the test pass). The rule is :func:`hpo.ranking.leads`,
        the one ``hpo best`` ranks by: metrics that break a constraint do not lead, nor do
        ones a finished feasible trial beats (or dominates); ties lead, and a metric not
        in ``metrics`` yet (one computed after the call) is not held against the trial.
        """
        from hpo.ranking import leads

        config = self.config
        if config is None:
            # A context built by hand (a trainer run on its own): its objective, no
            # constraints. model_construct: these two fields are all ranking reads.
            config = StudyConfig.model_construct(
                objective=Objective.model_validate(
                    {"metric": self.objective, "direction": self.direction}
                )
            )
        return leads(metrics, self.trial.study.get_trials(deepcopy=False), config)

    def set_checkpoint(self, path: str | Path) -> None:
        """Record the newest checkpoint folder, so a retry can resume from it.

        With ``output_dir`` in object storage the folder is uploaded first and its URL is
        recorded: a retry on any machine finds it (training waits for the upload).
        """
        recorded = self.publish(Path(path)) if self.publish else str(path)
        self.trial.set_user_attr(storage.ATTR_CHECKPOINT, recorded)

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON-serializable value on the trial under ``hpo:<key>``."""
        self.trial.set_user_attr(storage.ATTR_PREFIX + key, value)

    def resolve_path(self, value: str | Path) -> Path:
        """A path from trainer args: relative ones are relative to the study file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.study_dir / path


def available_cores() -> int:
    """CPU cores this process may run on: its affinity, not the machine's total, and no
    more than ``OMP_NUM_THREADS`` when that is set (how a shared machine, a batch system or
    parallel test workers say "use fewer"; torch would honour it, were it not for hpo
    setting the thread count itself)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
