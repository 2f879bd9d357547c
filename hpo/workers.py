"""Worker processes on this machine: who runs where, with how many threads, and signals.

:func:`plan_workers` gives each worker a device and a share of the CPU cores;
:func:`run_worker_processes` starts one spawned process per worker, each running the
trial loop it is given (``hpo.runner.run_worker``), and waits for them. Ctrl-C reaches
every worker; :class:`Interrupts` makes it land inside the trainer, never between
Optuna's storage calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hpo.budget import FINISHED
from hpo.config import StudyConfig
from hpo.errors import FailureBudgetExceeded, HpoError
from hpo.events import forward_to_queue, start_relay, stop_relay
from hpo.trainer import available_cores

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker's identity and share of the machine."""

    index: int = 0
    device: str = "cpu"
    threads: int | None = None

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


class Interrupts:
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


def pin_device(worker: Worker) -> Worker:
    """Make the worker's GPU the only one this process sees; return it as ``cuda:0``.

    The HF Trainer in a single process trains on ``cuda:0`` and wraps the model in
    DataParallel when it sees several GPUs, so a worker given ``cuda:3`` must hide the
    others. ``CUDA_VISIBLE_DEVICES`` only counts before CUDA starts in the process; after
    that (hpo never starts it itself) the worker keeps its device and a warning says why.
    """
    if not worker.device.startswith("cuda:"):
        return worker
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        logger.warning(
            "CUDA already started in this process; %s cannot be made the only visible GPU",
            worker.device,
        )
        return worker
    os.environ["CUDA_VISIBLE_DEVICES"] = worker.device.removeprefix("cuda:")
    return Worker(index=worker.index, device="cuda:0", threads=worker.threads)


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
    loop: Callable[..., int],
    on_progress: Callable[[Any], None] | None = None,
) -> None:
    """Run one process per planned worker and wait for all; Ctrl-C stops them all.

    ``loop`` is the trial loop each process runs (``hpo.runner.run_worker``, passed in so
    that this module does not import the runner that starts it).

    Raises:
        FailureBudgetExceeded: a worker stopped because the failure budget ran out.
        HpoError: a worker failed for another reason (its exit code is kept).
    """
    import multiprocessing

    # spawn, not fork: CUDA and SQLite connections must not be shared with children.
    context = multiprocessing.get_context("spawn")
    # Workers format nothing themselves: their records come here (see hpo.events).
    records, relay = start_relay(context)
    processes = [
        context.Process(
            target=_worker_process,
            args=(config, w, failures_before, logging.getLogger().level, loop, records),
            name=f"hpo-worker-{w.index}",
        )
        for w in plan
    ]
    for process in processes:
        process.start()
    try:
        _wait_for_workers(processes, study, on_progress)
    finally:
        stop_relay(records, relay)
    codes = [p.exitcode for p in processes]
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


def _wait_for_workers(
    processes: list[Any], study: Any, on_progress: Callable[[Any], None] | None
) -> None:
    """Wait for every worker, reporting progress; Ctrl-C stops them all."""
    seen = -1
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            finished = sum(
                s in FINISHED for s in (t.state.name for t in study.get_trials(deepcopy=False))
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
    if on_progress:
        on_progress(study)


def _worker_process(
    config: StudyConfig,
    worker: Worker,
    failures_before: int,
    log_level: int,
    loop: Callable[..., int],
    records: Any,
) -> None:
    """Entry point of a worker process (spawned: configure threads before torch loads)."""
    import sys

    forward_to_queue(records, log_level, worker_label=f"w{worker.index}")
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(worker.threads or 1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        loop(config, worker=worker, allow_space_change=True, failures_before=failures_before)
    except FailureBudgetExceeded as e:
        logger.error("%s", e)
        sys.exit(FailureBudgetExceeded.exit_code + 10)
    except KeyboardInterrupt:
        sys.exit(130)
    except HpoError as e:
        logger.error("%s", e)
        sys.exit(e.exit_code)
