"""The trial loop: claim a trial within budget, ask, call the trainer, tell.

One worker runs :func:`run_worker`: it claims a trial under the study lock (so the
budget is exact and no enqueued trial or grid point is taken twice), lets Optuna's
``optimize`` run it (heartbeats, stale-trial recovery and tell come from Optuna), and
records hpo's trial attributes. :func:`run_study` runs one worker in this process,
several worker processes (``hpo.workers``) or tasks on a Ray cluster (``hpo.ray_workers``),
then summarizes the study. Budget accounting lives in ``hpo.budget``, opening the study in
``hpo.study``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo import object_store
from hpo import storage as st
from hpo.backends.base import heartbeats_can_be_judged
from hpo.backends.optuna_compat import (
    fail_orphan,
    frozen_trial,
    heartbeat_ages,
    retry_origin,
    set_trial_user_attrs,
    stored_trial,
)
from hpo.backends.rdb import is_connection_error
from hpo.budget import Summary, effective_budget, summarize, usage
from hpo.checkpoints import prune_checkpoints, study_folder
from hpo.config import StudyConfig
from hpo.contract import Trainer, as_trainer, resolve_trainer
from hpo.errors import ClaimLost, ConfigError, FailureBudgetExceeded, StorageError
from hpo.events import emit
from hpo.space import suggest, trial_args
from hpo.study import mark_lost, open_study
from hpo.trainer import NonFiniteError, TrialContext
from hpo.warmstart import enqueue_warm_start
from hpo.workers import (
    Interrupts,
    Worker,
    check_sendable,
    pin_device,
    plan_workers,
    run_worker_processes,
    visible_devices,
)

logger = logging.getLogger(__name__)

_WAIT_POLL_S = 1.0
_ORPHAN_AGE_S = 2.0  # a claimed trial starts its heartbeat well within this
# A trial's folder in the study folder, as TrialRunner names it (trial-0007).
_TRIAL_FOLDER = re.compile(r"trial-\d{4,}")


def run_worker(
    config: StudyConfig,
    *,
    worker: Worker | None = None,
    allow_space_change: bool = False,
    failures_before: int | None = None,
    on_trial: Callable[[Any, Any], None] | None = None,
    trainer: Trainer | None = None,
) -> int:
    """Run trials until the study's budget is met, the timeout passes or failures run out.

    ``trainer``: a Python trainer to call instead of importing ``trainer.ref``.

    Returns:
        The number of trials this worker ran.

    Raises:
        FailureBudgetExceeded: more than ``budget.max_failures`` trials failed in this run.
    """

    worker = pin_device(worker or Worker())
    study = open_study(config, allow_space_change=allow_space_change, seed_offset=worker.index)
    trainer = trainer or resolve_trainer(config.trainer.ref, config.study_dir)
    lock = st.study_lock(config.storage, config.name)
    budget = effective_budget(config)
    deadline = time.monotonic() + config.budget.timeout if config.budget.timeout else math.inf
    baseline = usage(study, config).failures if failures_before is None else failures_before
    interrupts = Interrupts()
    objective = _Objective(config, trainer, worker, lock, interrupts)
    callbacks: list[Callable[[Any, Any], Any]] = [_log_trial] + ([on_trial] if on_trial else [])
    retry_failure = _retry_failure(config.workers.max_retries)
    callbacks.append(retry_failure)
    if config.checkpoint_limit is not None:
        callbacks.append(lambda study, trial: _prune_checkpoints(study, config))
    ran = 0
    try:
        interrupts.install()
        if config.warm_start:
            lock.acquire()  # two workers starting together must not enqueue twice
            try:
                enqueue_warm_start(study, config)
            finally:
                lock.release()
        while time.monotonic() < deadline:
            interrupts.check()
            lock.acquire()
            now = usage(study, config)
            failed = now.failures - baseline
            if failed >= max(config.budget.max_failures, 1):
                raise FailureBudgetExceeded(
                    f"study {config.name!r}: {failed} trials failed "
                    f"(budget.max_failures={config.budget.max_failures}); see the trials' "
                    "hpo:failure attributes (hpo status) and fix the trainer or the space"
                )
            if now.finished >= budget:
                break
            if now.claimed >= budget:
                # Every remaining slot is taken by a running trial; wait in case one fails.
                _fail_unbeaten(study, older_than=config.workers.grace_period)
                lock.release()
                _wait_for_others(study)
                continue
            objective.trial = None
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except KeyboardInterrupt:
                # Optuna failed the trial and runs no callback for an interrupt.
                _retry_interrupted(study, objective.trial, retry_failure)
                raise
            except Exception as e:
                if _failed_elsewhere(study, objective.trial, e):
                    continue
                if not is_connection_error(e):
                    raise
                # Trial creation is never retried blindly; find what a lost commit left.
                logger.warning("storage connection lost while claiming a trial; recovering")
                lock.acquire()
                _recover_orphans(study)
                continue
            finally:
                lock.release()
            ran += 1
    finally:
        interrupts.uninstall()
        lock.close()
    return ran


def _failed_elsewhere(study: Any, trial: Any | None, error: Exception) -> bool:
    """True when Optuna could not tell our trial because it had already failed: another
    worker's stale-trial check took it (storage retries held up its heartbeat longer than
    ``workers.grace_period``) and retries it. Only that trial ends, not the worker."""
    # Optuna raises ValueError("Cannot tell a FAIL trial"), replaced by the AssertionError
    # of its own log step when the objective returned a value.
    told = (error, error.__context__)
    if trial is None or not any(isinstance(e, ValueError) for e in told):
        return False
    try:
        state = stored_trial(study, trial).state
    except Exception:  # noqa: BLE001 - unknown: the original error stands
        return False
    if state.name != "FAIL":
        return False
    logger.warning(
        "trial %d: failed by another worker meanwhile (no heartbeat within "
        "workers.grace_period); its result is dropped",
        trial.number,
    )
    return True


def _recover_orphans(study: Any) -> None:
    """Fail (and retry) RUNNING trials that never sent a heartbeat: orphans of a lost
    ``create_new_trial`` commit. Called under the claim lock.

    Every worker starts its trial's heartbeat before it releases the claim lock, so a
    RUNNING trial older than the wait below with no heartbeat has no worker, unless the
    outage that lost this commit also held up that first beat. A lost commit's trial was
    never sampled (its worker never learned its id), while every claimed trial has its
    parameters before its worker lets go of the lock: only unsampled ones are failed here.
    A sampled trial whose worker died is the grace period's to fail (:func:`_fail_unbeaten`).
    """
    time.sleep(_ORPHAN_AGE_S + 0.5)
    _fail_unbeaten(
        study,
        older_than=_ORPHAN_AGE_S,
        why="created by a lost commit, never run",
        unsampled_only=True,
    )


def _fail_unbeaten(
    study: Any,
    older_than: float,
    why: str = "its worker died before its first heartbeat",
    *,
    unsampled_only: bool = False,
) -> None:
    """Fail (and retry) RUNNING trials with no heartbeat started over ``older_than`` seconds
    ago. Called under the claim lock, so no worker is creating one of them now.

    Optuna's stale-trial check reads only trials that have beaten, so a worker killed
    between creating its trial and its heartbeat thread's first beat (or a lost commit)
    leaves a trial RUNNING forever, holding a slot of the budget. The start time stands in
    for the first beat: it is the creating machine's clock, which is why the wait is a whole
    grace period.
    """
    from optuna.trial import TrialState

    if not heartbeats_can_be_judged(older_than):  # its first beat may be on the way
        return
    ages = heartbeat_ages(study)
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if trial.number in ages or now - started < older_than:
            continue
        if unsampled_only and trial.params:
            continue
        if fail_orphan(study, trial) is not None:
            logger.warning("trial %d: %s; failed", trial.number, why)
            mark_lost(study, trial.number)


# Failures whose parameters are retried from the trial's last checkpoint: the storage
# failed under the trial, or a signal stopped it (a preempted pod, Ctrl-C).
_RETRIED_FAILURES = {"storage": "storage error", "interrupted": "interrupted"}


def _retry_failure(max_retries: int) -> Callable[[Any, Any], None]:
    """After a trial the storage failed (``storage``) or a signal stopped (``interrupted``),
    retry its parameters from its last checkpoint, as a lost worker's trial is (up to
    ``workers.max_retries`` times). The retry waits in the study until a claim under the
    study lock picks it up (Optuna's ``ask()`` takes waiting trials first), once.

    The trainer did nothing wrong: the failure is not counted against
    ``budget.max_failures`` (``hpo.budget``), and the point is not given up.
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True
    )

    def after(study: Any, trial: Any) -> None:
        reason = trial.user_attrs.get(st.ATTR_FAILURE)
        if trial.state.name != "FAIL" or reason not in _RETRIED_FAILURES:
            return
        # The retry starts clean: it has not failed (yet).
        failure = (st.ATTR_FAILURE, st.ATTR_FAILURE_MESSAGE)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in failure}
        try:
            retry(study, trial)
        except Exception as e:  # noqa: BLE001 - the budget then draws a new point instead
            logger.warning("trial %d: could not retry its parameters (%s)", trial.number, e)
            return
        why = _RETRIED_FAILURES[reason]
        logger.warning("trial %d: %s; retrying its parameters", trial.number, why)

    return after


def _retry_interrupted(study: Any, trial: Any | None, retry: Callable[[Any, Any], None]) -> None:
    """Queue the retry of the trial an interrupt just failed (a next run or another worker
    resumes it from its checkpoint). Best effort: the process is stopping, and a storage
    that fails now leaves the trial failed as ``interrupted``, as before."""
    if trial is None:
        return
    try:
        retry(study, stored_trial(study, trial))
    except Exception as e:  # noqa: BLE001 - stopping must not be blocked by the retry
        logger.warning("trial %d: could not queue its retry (%s)", trial.number, e)


def _prune_checkpoints(study: Any, config: StudyConfig) -> None:
    """Checkpoint retention after a trial: housekeeping, so a disk error is a warning that
    the next trial's pruning retries, never the end of the worker."""
    try:
        prune_checkpoints(study, config)
    except OSError as e:
        logger.warning("could not delete old checkpoints (%s); will retry after the next trial", e)


def _wait_for_others(study: Any) -> None:
    from optuna.storages import fail_stale_trials

    time.sleep(_WAIT_POLL_S)
    fail_stale_trials(study)


class _Objective:
    """The function Optuna calls per trial: suggest, call the trainer, record attributes."""

    def __init__(
        self,
        config: StudyConfig,
        trainer: Trainer,
        worker: Worker,
        lock: st.Lock,
        interrupts: Interrupts,
    ):
        self.config = config
        self.trainer = trainer
        self.worker = worker
        self.lock = lock
        self.interrupts = interrupts
        #: The trial being run (the claim loop retries it after an interrupt).
        self.trial: Any = None

    def __call__(self, trial: Any) -> float | list[float]:
        import optuna

        self.trial = trial
        try:
            params = suggest(trial, self.config.search_space)
            ctx = self._context(trial, params)
            self._confirm_claim(trial)
        except BaseException as e:
            _record_failure(trial, e)
            raise
        finally:
            # The trial is claimed and its point sampled: other workers may claim theirs.
            self.lock.release()
        emit(
            logger,
            "trial_started",
            "trial %d started [%s]",
            trial.number,
            _describe_params(params),
            trial=trial.number,
            params=params,
            worker=f"w{self.worker.index}",
            device=self.worker.device,
        )
        try:
            with self.interrupts.deliverable():
                metrics = self.trainer.train(ctx)
        except BaseException as e:
            _record_failure(trial, e, {st.ATTR_DURATION: _duration(ctx)})
            raise
        finally:
            if ctx.publish is not None:  # its checkpoints are in the bucket
                object_store.discard_local_checkpoints(self.config, ctx.output_dir)
        if ctx.pruned:
            set_trial_user_attrs(trial, {st.ATTR_DURATION: _duration(ctx)}, defer=True)
            last = ctx.history[-1]["step"] if ctx.history else 0
            raise optuna.TrialPruned(f"pruned at step {last}")
        return self._objective_value(trial, metrics, _duration(ctx))

    def _confirm_claim(self, trial: Any) -> None:
        """Count the claim only if the study lock was held throughout it.

        A database lock dies with its session without telling its holder; another worker
        may then have read the budget before this trial existed and claimed the same slot.
        The lock still held now, after the trial's creation committed, means no one else
        held it in between. Otherwise the trial fails untrained as ``storage`` (not counted,
        its parameters retried like any storage failure's) and the loop claims again.
        """
        if not self.lock.still_held():
            raise ClaimLost(
                f"trial {trial.number}: the study lock's database session was lost while "
                "claiming it; the claim is not counted and its parameters are retried"
            )

    def _context(self, trial: Any, params: dict[str, Any]) -> TrialContext:
        remote = object_store.is_remote(self.config.output_dir)
        # In object storage, trainers write to this machine's staging copy of the folder.
        folder = object_store.staging_folder(self.config) if remote else study_folder(self.config)
        output_dir = folder / f"trial-{trial.number:04d}"
        resume_from, history = None, []
        attrs: dict[str, Any] = {}
        retried = retry_origin(trial)
        if retried is not None:
            # The retry copied the lost trial's attributes: its checkpoint and evaluations.
            checkpoint = trial.user_attrs.get(st.ATTR_CHECKPOINT)
            if checkpoint and remote:
                resume_from = object_store.fetch_checkpoint(self.config, checkpoint, trial.number)
            elif checkpoint and _resumable(Path(checkpoint), folder, trial.number):
                resume_from = Path(checkpoint)
            if resume_from is not None:
                history = list(trial.user_attrs.get(st.ATTR_HISTORY, []))
                output_dir = resume_from.parent
            attrs[st.ATTR_RESUMED_FROM] = retried
        attrs[st.ATTR_WORKER] = self.worker.name
        attrs[st.ATTR_DEVICE] = self.worker.device
        remote_dir = f"{object_store.study_url(self.config)}/{output_dir.name}"
        attrs[st.ATTR_OUTPUT_DIR] = remote_dir if remote else str(output_dir)
        # No transaction of their own: they go with the trial's next heartbeat (status shows
        # where a running trial runs within one heartbeat interval), evaluation or tell.
        set_trial_user_attrs(trial, attrs, defer=True)
        return TrialContext(
            trial=trial,
            params=trial_args(self.config.trainer.args, params),
            objective=self.config.objectives[0].metric,
            direction=self.config.objectives[0].direction,
            prunable=not self.config.multi_objective,
            seed=self.config.seed if self.config.seed is not None else 0,
            output_dir=output_dir,
            study_dir=self.config.study_dir,
            device=self.worker.device,
            threads=self.worker.threads,
            resume_from=resume_from,
            templates=_param_templates(self.config.env_templates, params),
            config=self.config,
            history=history,
            reported_steps=set(frozen_trial(trial).intermediate_values),
            publish=functools.partial(object_store.publish_checkpoint, self.config)
            if remote
            else None,
        )

    def _objective_value(
        self, trial: Any, metrics: dict[str, Any], duration: float
    ) -> float | list[float]:
        """The objective value (a list of them with several objectives) from the metrics.

        The trial's closing attributes go in the transaction of Optuna's tell; the
        constraints are set on the trial, where the samplers read them.
        """
        names = [o.metric for o in self.config.objectives]
        # A constraint on a metric the trainer never returns (a typo of its name) would
        # make every trial infeasible without a word; it fails the trial as a missing
        # objective does, so the first trial says which name is wrong.
        wanted = [("objective.metric", m) for m in names] + [
            ("constraints.metric", c.metric) for c in self.config.constraints
        ]
        missing = [(field, m) for field, m in wanted if m not in metrics]
        if missing:
            field, metric = missing[0]
            error = KeyError(f"trainer returned {sorted(metrics)} without {field} {metric!r}")
            _record_failure(trial, error, {st.ATTR_DURATION: duration})
            raise error
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        attrs: dict[str, Any] = {st.ATTR_DURATION: duration, st.ATTR_METRICS: clean}
        attrs.update({st.ATTR_METRIC_PREFIX + name: value for name, value in clean.items()})
        # Optuna's samplers (tpe, gp, nsga2, nsga3, cmaes) and best_trials read these.
        for i, violation in enumerate(self.config.constraint_values(clean)):
            trial.set_constraint(f"{i}:{self.config.constraints[i].metric}", violation)
        values = [float(metrics[m]) for m in names]
        if not all(math.isfinite(v) for v in values):
            attrs[st.ATTR_FAILURE] = "nan"  # Optuna fails non-finite values
        set_trial_user_attrs(trial, attrs, defer=True)
        return values if self.config.multi_objective else values[0]


def _param_templates(env_templates: dict[str, str], searched: dict[str, Any]) -> dict[str, str]:
    """The ``trainer.args`` that held ``${VAR}``, keyed by their path in a trial's params
    (a searched hyperparameter replaces the arg at its path, and its template with it)."""
    prefix = "trainer.args."

    def replaced(path: str) -> bool:
        return any(path == name or path.startswith(name + ".") for name in searched)

    return {
        path.removeprefix(prefix): template
        for path, template in env_templates.items()
        if path.startswith(prefix) and not replaced(path.removeprefix(prefix))
    }


def _duration(ctx: TrialContext) -> float:
    return round(time.monotonic() - ctx.started, 3)


def _resumable(checkpoint: Path, study_folder: Path, number: int) -> bool:
    """Whether a retry resumes from (and so writes beside) ``checkpoint``.

    The path comes from storage, not from the user: only a checkpoint folder of a trial of
    this study (``<study folder>/trial-NNNN/<checkpoint>``) is followed, since the retry
    writes into its parent; anything else (a folder elsewhere, the study folder itself, a
    trial folder) is not, and the trial starts over.
    """
    if not checkpoint.exists():
        return False
    resolved = checkpoint.resolve()
    if resolved.parent.parent == study_folder.resolve() and _TRIAL_FOLDER.fullmatch(
        resolved.parent.name
    ):
        return True
    logger.warning(
        "trial %d: not resuming from %s, which is not a checkpoint folder of a trial in %s; "
        "it starts over",
        number,
        checkpoint,
        study_folder,
    )
    return False


def _record_failure(trial: Any, error: BaseException, extra: dict[str, Any] | None = None) -> None:
    """Store why a trial failed, with the FAIL Optuna then tells (read-only after that)."""
    message = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None and _is_storage_wrapper(error):
        # Optuna's StorageInternalError blames "invalid data"; the cause says what happened.
        first = (str(cause).strip().splitlines() or [""])[0]
        message = f"{message.strip()} (caused by {type(cause).__name__}: {first})"
    attrs = {
        **(extra or {}),
        st.ATTR_FAILURE: _classify(error),
        st.ATTR_FAILURE_MESSAGE: message[:1000],
    }
    try:
        set_trial_user_attrs(trial, attrs, defer=True)
    except Exception:  # the storage itself may be what failed; the original error matters
        logger.debug("could not record why trial %d failed", trial.number, exc_info=True)


def _classify(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if _is_storage_error(error):
        return "storage"
    if isinstance(error, NonFiniteError):
        return "nan"
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
        return "oom"
    return "exception"


def _is_storage_error(error: BaseException) -> bool:
    """The storage lost its connection under the trial (a report or attribute write whose
    retries ran out), or the object store holding ``output_dir`` failed an upload: the
    storage failed, not the trainer.

    Only a lost connection (or a claim whose lock died, or an upload that kept failing):
    Optuna raises the same StorageInternalError for data the database refuses (a value too
    long for its column), which a retry would only repeat, so that one counts as the
    trial's failure.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, ClaimLost | object_store.ObjectStorageError):
            return True
        if is_connection_error(link) or _lost_transaction(link):
            return True
        link = link.__cause__ or link.__context__
    return False


def _lost_transaction(error: BaseException) -> bool:
    """SQLAlchemy's refusal to go on in a transaction whose connection was invalidated (it
    may reach us without the error that invalidated it)."""
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.PendingRollbackError) and (
        "can't reconnect until invalid" in str(error).lower()
    )


def _is_storage_wrapper(error: BaseException) -> bool:
    """An error of the storage layer (SQLAlchemy's, Optuna's wrapper of them, hpo's)."""
    import optuna
    import sqlalchemy.exc

    wrappers = (
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,
        StorageError,
    )
    return isinstance(error, wrappers)


def _log_trial(study: Any, trial: Any) -> None:
    """The trial_finished event: state, value, epochs, why it failed, and its params."""
    values = trial.values or []
    value = f" value={'/'.join(f'{v:.4f}' for v in values)}" if values else ""
    reason = trial.user_attrs.get(st.ATTR_FAILURE)
    message = trial.user_attrs.get(st.ATTR_FAILURE_MESSAGE) or ""
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    why = f" ({reason}: {first_line})" if reason else ""
    epochs = trial.user_attrs.get(st.ATTR_EPOCHS)
    at = f" after {epochs:g} epochs" if epochs is not None else ""
    emit(
        logger,
        "trial_finished",
        "trial %d %s%s%s%s [%s]",
        trial.number,
        trial.state.name,
        value,
        at,
        why,
        _describe_params(trial.params),
        trial=trial.number,
        state=trial.state.name,
        value=values[0] if len(values) == 1 else None,
        values=values if len(values) > 1 else None,
        epochs=epochs,
        reason=reason,
        failure_message=first_line or None,
        duration_s=trial.user_attrs.get(st.ATTR_DURATION),
        params=dict(trial.params),
    )


def _describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_study(
    config: StudyConfig,
    *,
    workers: int = 1,
    devices: list[str] | None = None,
    allow_space_change: bool = False,
    on_progress: Callable[[Any], None] | None = None,
    trainer: Trainer | Callable[..., Any] | None = None,
    ray: str | None = None,
) -> Summary:
    """Run the study until its budget is met; a finished study runs nothing.

    :func:`hpo.optimize` is the entry point for Python callers: it validates a study file
    or mapping and returns the Optuna study as well.

    Args:
        workers: worker processes on this machine (1 runs in this process).
        devices: GPU ids, one worker per device; None uses every visible GPU, [] none.
        on_progress: called with the study after each finished trial (for a progress bar).
        trainer: a Python trainer (a function or an :class:`hpo.Trainer`) to call instead
            of importing ``trainer.ref``; with several workers it must be importable by
            them (:func:`hpo.workers.check_sendable`).
        ray: the address of a Ray cluster to run the workers on (``auto``: RAY_ADDRESS or
            this machine's), as tasks (``hpo.ray_workers``); None runs them here.

    Raises:
        FailureBudgetExceeded: ``budget.max_failures`` trials failed in this run.
    """
    return run_and_summarize(
        config,
        workers=workers,
        devices=devices,
        allow_space_change=allow_space_change,
        on_progress=on_progress,
        trainer=trainer,
        ray=ray,
    )[1]


def run_and_summarize(
    config: StudyConfig,
    *,
    workers: int = 1,
    devices: list[str] | None = None,
    allow_space_change: bool = False,
    on_progress: Callable[[Any], None] | None = None,
    trainer: Trainer | Callable[..., Any] | None = None,
    ray: str | None = None,
) -> tuple[Any, Summary]:
    """:func:`run_study`, returning the ``optuna.Study`` it ran as well as the summary."""
    started = time.monotonic()
    given = as_trainer(trainer) if trainer is not None else None
    if given is not None and ray is not None:
        raise ConfigError("a Python trainer cannot run on Ray: name it in trainer.ref")
    if given is not None and workers > 1:
        check_sendable(given)
    study = open_study(config, allow_space_change=allow_space_change)
    now = usage(study, config)
    if now.finished >= effective_budget(config):
        summary = summarize(study, config)
        summary.already_done = True
        return study, summary
    plan = plan_workers(workers, visible_devices() if devices is None else devices)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    if ray is not None:
        from hpo.ray_workers import run_ray_workers

        run_ray_workers(config, ray, workers, now.failures, study, on_progress, loop=run_worker)
    elif len(plan) == 1:
        on_trial = (lambda study, trial: on_progress(study)) if on_progress else None
        run_worker(config, worker=plan[0], on_trial=on_trial, trainer=given)
    else:
        # The workers get the trainer by pickle: a module function travels as its name.
        loop = functools.partial(run_worker, trainer=given) if given else run_worker
        run_worker_processes(config, plan, now.failures, study, loop, on_progress)
    ran = sum(t.number not in before for t in study.get_trials(deepcopy=False))
    return study, summarize(study, config, ran=ran, wall=time.monotonic() - started)
