"""Running a study: create or resume it, claim trials within budget, call the trainer.

One worker runs :func:`run_worker`: it claims a trial under the study lock (so the
budget is exact and no enqueued trial or grid point is taken twice), lets Optuna's
``optimize`` run it (heartbeats, stale-trial recovery and tell come from Optuna), and
records hpo's trial attributes. :func:`run_study` runs one worker in this process or
several worker processes, then summarizes the study.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import storage as st
from hpo.checkpoints import prune_checkpoints
from hpo.config import StudyConfig, resolve_trainer
from hpo.errors import FailureBudgetExceeded, HpoError, StudyStateError
from hpo.space import grid, grid_size, suggest
from hpo.trainer import NonFiniteError, TrialContext, available_cores
from hpo.warmstart import enqueue_warm_start

logger = logging.getLogger(__name__)

# States that use up budget: finished ones, and ones that will finish unless they fail.
_FINISHED = ("COMPLETE", "PRUNED")
_SHARED_SEED_SAMPLERS = ("grid", "qmc", "bruteforce")
# Failures that say nothing about the parameters: the trial is retried, not counted.
_NOT_COUNTED_FAILURES = ("worker_lost", "interrupted")
_WAIT_POLL_S = 1.0


@dataclass
class Summary:
    """What a run did and where the study stands, for the CLI's closing lines."""

    study_name: str
    n_trials: int
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    ran: int = 0
    wall_time_s: float = 0.0
    already_done: bool = False

    @property
    def finished(self) -> int:
        return sum(self.counts.get(state, 0) for state in _FINISHED)


def effective_budget(config: StudyConfig) -> int:
    """Trials to finish: ``n_trials``, capped by the grid size for a grid study."""
    if config.sampler.type == "grid":
        return min(config.budget.n_trials, grid_size(config.search_space))
    return config.budget.n_trials


def open_study(config: StudyConfig, *, allow_space_change: bool = False, seed_offset: int = 0):
    """Create the study, or load it and check it still matches the study file.

    Raises:
        StudyStateError: the stored search space differs and ``allow_space_change`` is off.
    """
    import optuna

    storage = st.open_storage(
        config.storage,
        heartbeat_interval=config.workers.heartbeat_interval,
        grace_period=config.workers.grace_period,
        stale_trial_callback=_retry_lost_trial(config.workers.max_retries),
    )
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        sampler=_build_sampler(config, _sampler_seed(config, seed_offset, 0)),
        pruner=_build_pruner(config),
        direction=config.objective.direction,
        load_if_exists=True,
    )
    stored_trials = len(study.get_trials(deepcopy=False, states=None))
    if stored_trials and config.sampler.type not in _SHARED_SEED_SAMPLERS:
        study.sampler = _build_sampler(config, _sampler_seed(config, seed_offset, stored_trials))
    stored = study.user_attrs.get(st.ATTR_CONFIG)
    current = config.stored_form()
    if stored and stored.get("search_space") != current["search_space"] and not allow_space_change:
        changed = sorted(
            name
            for name in set(stored["search_space"]) | set(current["search_space"])
            if stored["search_space"].get(name) != current["search_space"].get(name)
        )
        raise StudyStateError(
            f"{config.source or config.name}: search_space: differs from the stored study "
            f"{config.name!r} (changed: {', '.join(changed)}); restore it, use a new `name`, "
            "or pass --allow-space-change"
        )
    if stored != current:
        study.set_user_attr(st.ATTR_CONFIG, current)
    return study


def load_existing_study(config: StudyConfig) -> Any:
    """The stored study, read-only: never created, its stored config never rewritten.

    Raises:
        StudyStateError: the storage holds no study of that name.
        StorageError: the storage cannot be opened.
    """
    import optuna

    storage = st.open_storage(config.storage)
    if config.name not in optuna.get_all_study_names(storage):
        raise StudyStateError(
            f"no study {config.name!r} in {st.redact_url(config.storage)}; "
            f"run it first (hpo run {config.source or 'FILE'})"
        )
    # A sampler is required to load; RandomSampler is the one that costs nothing to build.
    return optuna.load_study(
        study_name=config.name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )


def _sampler_seed(config: StudyConfig, worker_offset: int, stored_trials: int) -> int | None:
    """The sampler seed for one worker, reproducible from the study seed.

    Stochastic samplers get a seed per worker, or parallel workers would propose the same
    points, and a new one on resume, or a resumed study would repeat its first draws.
    Grid, QMC and brute force keep the study seed: their order is the seed's, and every
    worker and every resume must agree on it.
    """
    if config.seed is None:
        return None
    if config.sampler.type in _SHARED_SEED_SAMPLERS:
        return config.seed
    return config.seed + worker_offset + 10_007 * stored_trials


def _build_sampler(config: StudyConfig, seed: int | None) -> Any:
    from hpo.registry import build_sampler

    space = grid(config.search_space) if config.sampler.type == "grid" else None
    return build_sampler(config.sampler, seed=seed, grid=space)


def _build_pruner(config: StudyConfig) -> Any:
    from hpo.registry import build_pruner

    return build_pruner(config.pruner)


def _retry_lost_trial(max_retries: int) -> Callable[[Any, Any], None]:
    """Optuna's retry callback for trials whose worker stopped sending heartbeats."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    # Intermediate values carry over, so pruners and learning curves see the epochs the
    # lost worker already ran; the retry resumes from its last checkpoint.
    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True
    )

    def on_stale(study: Any, trial: Any) -> None:
        logger.warning(
            "trial %d: worker lost (no heartbeat); retrying its parameters", trial.number
        )
        # A finished trial's attributes are read-only in Optuna, so the reason lives in
        # the study: hpo:lost lists the trial numbers whose worker died.
        lost = study.user_attrs.get("hpo:lost", [])
        study.set_user_attr("hpo:lost", sorted(set(lost) | {trial.number}))
        retry(study, trial)

    return on_stale


@dataclass
class Usage:
    """Where the study stands against its budget, from one read of its trials.

    ``finished`` trials are complete or pruned; ``claimed`` also counts running ones (they
    finish unless they fail). Waiting (enqueued) trials are not claimed: a worker's next
    ``ask()`` picks them up. In a grid study a failed point is not drawn again, so its
    failure uses up that point (a lost worker's point is retried and does not).
    ``failures`` counts failures that weigh against ``budget.max_failures``.
    """

    finished: int = 0
    claimed: int = 0
    failures: int = 0


def usage(study: Any, config: StudyConfig) -> Usage:
    """Count the study's trials against its budget (one storage read, two with failures)."""
    trials = study.get_trials(deepcopy=False)
    # Study attributes are one more query; only failures need them (the hpo:lost list).
    attrs = study.user_attrs if any(t.state.name == "FAIL" for t in trials) else {}
    result = Usage()
    for trial in trials:
        state = trial.state.name
        failed = failure_reason(trial, attrs) not in (None, *_NOT_COUNTED_FAILURES)
        done = state in _FINISHED or (failed and config.sampler.type == "grid")
        result.finished += done
        result.claimed += done or state == "RUNNING"
        result.failures += failed
    return result


def count_states(study: Any) -> Counter[str]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def failure_reason(trial: Any, study_attrs: dict[str, Any]) -> str | None:
    """Why a FAIL trial failed: its hpo:failure attribute, or worker_lost."""
    if trial.state.name != "FAIL":
        return None
    if trial.number in study_attrs.get("hpo:lost", []):
        return "worker_lost"
    return trial.user_attrs.get(st.ATTR_FAILURE, "exception")


@dataclass
class Worker:
    """One worker's identity and share of the machine."""

    index: int = 0
    device: str = "cpu"
    threads: int | None = None

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


def run_worker(
    config: StudyConfig,
    *,
    worker: Worker | None = None,
    allow_space_change: bool = False,
    failures_before: int | None = None,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> int:
    """Run trials until the study's budget is met, the timeout passes or failures run out.

    Returns:
        The number of trials this worker ran.

    Raises:
        FailureBudgetExceeded: more than ``budget.max_failures`` trials failed in this run.
    """

    worker = worker or Worker()
    study = open_study(config, allow_space_change=allow_space_change, seed_offset=worker.index)
    trainer = resolve_trainer(config.trainer.ref, config.study_dir)
    lock = st.StudyLock(config.storage, config.name)
    budget = effective_budget(config)
    deadline = time.monotonic() + config.budget.timeout if config.budget.timeout else math.inf
    baseline = usage(study, config).failures if failures_before is None else failures_before
    interrupts = _Interrupts()
    objective = _Objective(config, trainer, worker, lock, interrupts)
    callbacks = [_log_trial] + ([on_trial] if on_trial else [])
    if config.keep_checkpoints:
        callbacks.append(lambda study, trial: prune_checkpoints(study, config))
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
                lock.release()
                _wait_for_others(study)
                continue
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            finally:
                lock.release()
            ran += 1
    finally:
        interrupts.uninstall()
        lock.close()
    return ran


class _Interrupts:
    """Ctrl-C lands inside the trainer, never between Optuna's storage calls.

    Optuna fails a trial whose objective raises KeyboardInterrupt, but an interrupt during
    ``study.ask()`` would leave a RUNNING trial with no heartbeat that nothing ever fails.
    So SIGINT raises only while a trainer runs; elsewhere it is noted and acted on at the
    next loop turn.
    """

    def __init__(self) -> None:
        self.requested = False
        self._in_trainer = False
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deliverable(self) -> Iterator[None]:
        self.check()
        self._in_trainer = True
        try:
            yield
        finally:
            self._in_trainer = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._in_trainer:
            raise KeyboardInterrupt


def _wait_for_others(study: Any) -> None:
    from optuna.storages import fail_stale_trials

    time.sleep(_WAIT_POLL_S)
    fail_stale_trials(study)


class _Objective:
    """The function Optuna calls per trial: suggest, call the trainer, record attributes."""

    def __init__(
        self,
        config: StudyConfig,
        trainer: Any,
        worker: Worker,
        lock: st.StudyLock,
        interrupts: _Interrupts,
    ):
        self.config = config
        self.trainer = trainer
        self.worker = worker
        self.lock = lock
        self.interrupts = interrupts

    def __call__(self, trial: Any) -> float:
        import optuna

        try:
            params = suggest(trial, self.config.search_space)
            ctx = self._context(trial, params)
        except BaseException as e:
            _record_failure(trial, e)
            raise
        finally:
            # The trial is claimed and its point sampled: other workers may claim theirs.
            self.lock.release()
        try:
            with self.interrupts.deliverable():
                metrics = self.trainer(ctx)
        except BaseException as e:
            _record_failure(trial, e)
            raise
        finally:
            trial.set_user_attr(st.ATTR_DURATION, round(time.monotonic() - ctx.started, 3))
        if ctx.pruned:
            last = ctx.history[-1]["step"] if ctx.history else 0
            raise optuna.TrialPruned(f"pruned at step {last}")
        return self._objective_value(trial, metrics)

    def _context(self, trial: Any, params: dict[str, Any]) -> TrialContext:
        output_dir = Path(self.config.output_dir) / self.config.name / f"trial-{trial.number:04d}"
        resume_from, history = None, []
        # Optuna 5's Trial hides system attrs; its frozen copy (read at ask) holds the
        # retry's origin, so no storage round trip is needed.
        frozen = getattr(trial, "_cached_frozen_trial", None) or trial.study._storage.get_trial(
            trial._trial_id
        )
        retried = frozen.system_attrs.get("failed_trial")
        if retried is not None:
            # The retry copied the lost trial's attributes: its checkpoint and evaluations.
            checkpoint = trial.user_attrs.get(st.ATTR_CHECKPOINT)
            if checkpoint and Path(checkpoint).exists():
                resume_from = Path(checkpoint)
                history = list(trial.user_attrs.get(st.ATTR_HISTORY, []))
                output_dir = resume_from.parent
            trial.set_user_attr(st.ATTR_RESUMED_FROM, retried)
        trial.set_user_attr(st.ATTR_WORKER, self.worker.name)
        trial.set_user_attr(st.ATTR_DEVICE, self.worker.device)
        trial.set_user_attr(st.ATTR_OUTPUT_DIR, str(output_dir))
        return TrialContext(
            trial=trial,
            params={**self.config.trainer.args, **params},
            objective=self.config.objective.metric,
            direction=self.config.objective.direction,
            seed=self.config.seed if self.config.seed is not None else 0,
            output_dir=output_dir,
            study_dir=self.config.study_dir,
            device=self.worker.device,
            threads=self.worker.threads,
            resume_from=resume_from,
            history=history,
            reported_steps=set(frozen.intermediate_values),
        )

    def _objective_value(self, trial: Any, metrics: dict[str, Any]) -> float:
        metric = self.config.objective.metric
        if metric not in metrics:
            trial.set_user_attr(st.ATTR_FAILURE, "exception")
            raise KeyError(
                f"trainer returned {sorted(metrics)} without objective.metric {metric!r}"
            )
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        trial.set_user_attr(st.ATTR_METRICS, clean)
        value = float(metrics[metric])
        if not math.isfinite(value):
            trial.set_user_attr(st.ATTR_FAILURE, "nan")  # Optuna fails non-finite values
        return value


def _record_failure(trial: Any, error: BaseException) -> None:
    """Store why a trial failed; Optuna then marks it FAIL (attributes are read-only after)."""
    try:
        trial.set_user_attr(st.ATTR_FAILURE, _classify(error))
        trial.set_user_attr(st.ATTR_FAILURE_MESSAGE, f"{type(error).__name__}: {error}"[:1000])
    except Exception:  # the storage itself may be what failed; the original error matters
        logger.debug("could not record why trial %d failed", trial.number, exc_info=True)


def _classify(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, NonFiniteError):
        return "nan"
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
        return "oom"
    return "exception"


def _log_trial(study: Any, trial: Any) -> None:
    value = "" if trial.value is None else f" value={trial.value:.4f}"
    reason = trial.user_attrs.get(st.ATTR_FAILURE)
    why = f" ({reason}: {trial.user_attrs.get(st.ATTR_FAILURE_MESSAGE, '')})" if reason else ""
    epochs = trial.user_attrs.get(st.ATTR_EPOCHS)
    at = f" after {epochs:g} epochs" if epochs is not None else ""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    logger.info("trial %d %s%s%s%s [%s]", trial.number, trial.state.name, value, at, why, params)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summarize(study: Any, config: StudyConfig, *, ran: int = 0, wall: float = 0.0) -> Summary:
    """Trials by state and the best trial so far."""
    summary = Summary(
        study_name=config.name,
        n_trials=effective_budget(config),
        counts=dict(count_states(study)),
        ran=ran,
        wall_time_s=wall,
    )
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if completed:
        best = study.best_trial
        summary.best_value = best.value
        summary.best_params = dict(best.params)
        summary.best_number = best.number
        summary.best_metrics = dict(best.user_attrs.get(st.ATTR_METRICS, {}))
    return summary


def run_study(
    config: StudyConfig,
    *,
    workers: int = 1,
    devices: list[str] | None = None,
    allow_space_change: bool = False,
    on_progress: Callable[[Any], None] | None = None,
) -> Summary:
    """Run the study until its budget is met; a finished study runs nothing.

    Args:
        workers: worker processes on this machine (1 runs in this process).
        devices: GPU ids, one worker per device; None uses every visible GPU, [] none.
        on_progress: called with the study after each finished trial (for a progress bar).

    Raises:
        FailureBudgetExceeded: ``budget.max_failures`` trials failed in this run.
    """
    started = time.monotonic()
    study = open_study(config, allow_space_change=allow_space_change)
    now = usage(study, config)
    if now.finished >= effective_budget(config):
        summary = summarize(study, config)
        summary.already_done = True
        return summary
    plan = plan_workers(workers, visible_devices() if devices is None else devices)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    if len(plan) == 1:
        on_trial = (lambda study, trial: on_progress(study)) if on_progress else None
        run_worker(config, worker=plan[0], on_trial=on_trial)
    else:
        run_worker_processes(config, plan, now.failures, study, on_progress)
    ran = sum(t.number not in before for t in study.get_trials(deepcopy=False))
    return summarize(study, config, ran=ran, wall=time.monotonic() - started)


def visible_devices() -> list[str]:
    """Ids of the CUDA devices this process may use (none without torch or CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def plan_workers(workers: int, devices: list[str], cores: int | None = None) -> list[Worker]:
    """One Worker per process: a device each (round robin) and a fair share of CPU threads.

    With GPUs and no explicit ``workers`` (1), there is one worker per device.
    Oversubscribed threads cut MiniLM throughput 4x in a measurement here, so the cores
    are split, never shared.
    """
    cores = cores or available_cores()
    count = max(workers, len(devices)) if workers == 1 else workers
    threads = max(1, cores // count)
    return [
        Worker(
            index=i,
            device=f"cuda:{devices[i % len(devices)]}" if devices else "cpu",
            threads=threads,
        )
        for i in range(count)
    ]


def run_worker_processes(
    config: StudyConfig,
    plan: list[Worker],
    failures_before: int,
    study: Any,
    on_progress: Callable[[Any], None] | None = None,
) -> None:
    """Run one process per planned worker and wait for all; Ctrl-C stops them all.

    Raises:
        FailureBudgetExceeded: a worker stopped because the failure budget ran out.
        HpoError: a worker failed for another reason (its exit code is kept).
    """
    import multiprocessing

    # spawn, not fork: CUDA and SQLite connections must not be shared with children.
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_process,
            args=(config, w, failures_before, logging.getLogger().level),
            name=f"hpo-worker-{w.index}",
        )
        for w in plan
    ]
    for process in processes:
        process.start()
    seen = -1
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            finished = sum(
                s in _FINISHED for s in (t.state.name for t in study.get_trials(deepcopy=False))
            )
            if on_progress and finished != seen:
                seen = finished
                on_progress(study)
    except KeyboardInterrupt:
        # Children got the same SIGINT from the terminal; each fails its running trial
        # as "interrupted" and exits. Give them time, then stop the stragglers.
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    codes = [p.exitcode for p in processes]
    if on_progress:
        on_progress(study)
    if any(code == FailureBudgetExceeded.exit_code + 10 for code in codes):
        raise FailureBudgetExceeded(
            f"study {config.name!r}: workers stopped after budget.max_failures="
            f"{config.budget.max_failures} failed trials; see hpo:failure (hpo status)"
        )
    bad = [code for code in codes if code]
    if bad:
        raise HpoError(
            f"study {config.name!r}: {len(bad)} of {len(codes)} workers exited "
            f"with codes {bad}; rerun to continue (the study resumes)"
        )


def _worker_process(
    config: StudyConfig, worker: Worker, failures_before: int, log_level: int
) -> None:
    """Entry point of a worker process (spawned: configure threads before torch loads)."""
    import sys

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(worker.threads or 1)
    if worker.device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = worker.device.removeprefix("cuda:")
        worker = Worker(index=worker.index, device="cuda:0", threads=worker.threads)
    logging.basicConfig(level=log_level, format=f"[w{worker.index}] %(message)s", force=True)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        run_worker(config, worker=worker, allow_space_change=True, failures_before=failures_before)
    except FailureBudgetExceeded as e:
        logger.error("%s", e)
        sys.exit(FailureBudgetExceeded.exit_code + 10)
    except KeyboardInterrupt:
        sys.exit(130)
    except HpoError as e:
        logger.error("%s", e)
        sys.exit(e.exit_code)
