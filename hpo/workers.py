"""Worker processes on this machine: who runs where, with how many threads, and signals.

:func:`plan_workers` gives each worker a device and a share of the CPU cores;
:func:`run_worker_processes` starts one spawned process per worker, each running the
trial loop it is given (``hpo.runner.run_worker``), and waits for them. Ctrl-C and SIGTERM
(what Kubernetes and Slurm send) reach every worker; :class:`Interrupts` makes them land
inside the trainer, never between Optuna's storage calls. A worker never outlives the
parent (the kernel kills it with its parent) and the parent never waits forever on one.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hpo.budget import usage
from hpo.config import StudyConfig
from hpo.errors import FailureBudgetExceeded, HpoError, Terminated
from hpo.events import forward_to_queue, start_relay, stop_relay
from hpo.trainer import available_cores

logger = logging.getLogger(__name__)

# Seconds a worker gets to fail its running trial and exit once asked to stop (or after its
# loop ended) before it is killed: well inside Kubernetes' default 30 s grace period.
STOP_GRACE_S = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Worker:
    """One worker's identity and share of the machine."""

    index: int = 0
    device: str = "cpu"
    threads: int | None = None
    #: The fraction of its GPU's memory this worker may allocate, when workers share the
    #: GPU (trial packing: ``--workers 8 --devices 0`` gives each 1/8); None: all of it.
    memory_share: float | None = None

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


class Interrupts:
    """Ctrl-C and SIGTERM land inside the trainer, never between Optuna's storage calls.

    Optuna fails a trial whose objective raises KeyboardInterrupt, but an interrupt during
    ``study.ask()`` would leave a RUNNING trial with no heartbeat that nothing ever fails.
    So SIGINT and SIGTERM raise only while a trainer runs, once; elsewhere they are noted
    and acted on at the next loop turn. SIGTERM raises :class:`~hpo.errors.Terminated`,
    a KeyboardInterrupt: the trial is failed as ``interrupted`` either way.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._in_trainer = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def check(self) -> None:
        if self.requested:
            raise self.error()

    def error(self) -> KeyboardInterrupt:
        """The exception the noted signal stands for."""
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def deliverable(self) -> Iterator[None]:
        self.check()
        self._in_trainer = True
        try:
            yield
        finally:
            self._in_trainer = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal (Ctrl-C, then the parent's forward) adds nothing
            return
        self.requested, self.signum = True, signum
        if self._in_trainer:
            self._in_trainer = False
            raise self.error()


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`~hpo.errors.Terminated`, as SIGINT raises
    KeyboardInterrupt; the trial loops narrow both to the trainer (:class:`Interrupts`).

    Without it SIGTERM kills the process at once, leaving its trial RUNNING and its worker
    processes orphaned; as a container's PID 1 it would even be ignored until SIGKILL.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent ``parent`` dies.

    ``prctl(PR_SET_PDEATHSIG)`` rather than a thread polling ``os.getppid()``: the kernel
    acts at once, and even when this process is stuck in C code or holds the GIL (a CUDA
    call, a blocked database read). SIGKILL rather than SIGTERM: with its parent gone no
    one reads the worker's log queue, so a graceful exit could block on it; the trial it
    leaves RUNNING stops its heartbeat and is failed as ``worker_lost`` and retried from
    its checkpoint, like any lost worker's. Elsewhere than Linux this does nothing (the
    parent still stops its workers on every exit it survives).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect


def visible_devices() -> list[str]:
    """Ids of the CUDA devices this process may use (none without torch or CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",")]
        return [d for d in ids if d and d != "-1"]
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
    pinned = Worker(
        index=worker.index,
        device="cuda:0",
        threads=worker.threads,
        memory_share=worker.memory_share,
    )
    cap_gpu_memory(pinned)
    return pinned


def cap_gpu_memory(worker: Worker) -> None:
    """Hold a worker that shares its GPU to its share of the memory.

    Trial packing puts several workers (processes) on one GPU. Without a cap the first
    trial to grow takes memory the others then miss, and they fail with out-of-memory for
    its sake; with it, PyTorch's caching allocator refuses this process past its share, so
    a trial that needs more fails alone, as ``oom`` (retried with half the micro-batch
    under ``trainer.args.oom_retry``), and the other trials on the GPU never notice. A
    share larger than what is free now (another process holds memory) is warned about.
    """
    if not worker.memory_share or not worker.device.startswith("cuda"):
        return
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    free, total = torch.cuda.mem_get_info(0)
    torch.cuda.set_per_process_memory_fraction(worker.memory_share, 0)
    share_gib = worker.memory_share * total / 2**30
    logger.info(
        "worker %d: at most %.2f of the GPU's memory (%.1f GiB)",
        worker.index,
        worker.memory_share,
        share_gib,
    )
    if worker.memory_share * total > free:
        logger.warning(
            "worker %d: its share of the GPU (%.1f GiB) exceeds what is free now (%.1f GiB): "
            "another process holds GPU memory; use fewer workers per GPU",
            worker.index,
            share_gib,
            free / 2**30,
        )


def plan_workers(workers: int, devices: list[str], cores: int | None = None) -> list[Worker]:
    """One Worker per process: a device each (round robin) and a fair share of CPU threads.

    With GPUs and no explicit ``workers`` (1), there is one worker per device.
    Oversubscribed threads cut MiniLM throughput 4x in a measurement here, so the cores
    are split, never shared.
    """
    cores = cores or available_cores()
    count = max(workers, len(devices)) if workers == 1 else workers
    threads = max(1, cores // count)
    placed = [devices[i % len(devices)] if devices else None for i in range(count)]
    sharing = Counter(placed)
    return [
        Worker(
            index=i,
            device=f"cuda:{device}" if device is not None else "cpu",
            threads=threads,
            # Packed trials: each worker on a shared GPU gets an equal share of its memory.
            memory_share=1 / sharing[device]
            if device is not None and sharing[device] > 1
            else None,
        )
        for i, device in enumerate(placed)
    ]


def check_sendable(trainer: Any) -> None:
    """Refuse a Python trainer that worker processes could not get, before anything runs.

    Workers are spawned: each unpickles the trainer, which imports its function by module
    and name. A lambda or a function defined inside another cannot be pickled; one defined
    in a notebook (or ``python -c``) pickles as ``__main__.name``, but a new process has no
    such ``__main__`` to import it from. A script's own functions are fine: spawn imports
    the script in each worker (under ``if __name__ == "__main__":``, as multiprocessing asks).

    Raises:
        ConfigError: at ``trainer``, saying why and how to fix it.
    """
    import pickle
    import pickletools
    import sys

    from hpo.errors import ConfigError

    train = getattr(trainer, "train", trainer)
    name = getattr(train, "__qualname__", None) or type(train).__name__
    fix = "define it at the top level of a .py module and import it from there, or use workers=1"
    try:
        data = pickle.dumps(trainer, protocol=2)  # protocol 2 names every global it needs
    except Exception as e:  # noqa: BLE001 - pickle raises several kinds for this
        raise ConfigError(
            f"{name} cannot be sent to worker processes ({e}); {fix}", field="trainer"
        ) from e
    modules = {
        str(arg).partition(" ")[0]
        for op, arg, _ in pickletools.genops(data)
        if op.name == "GLOBAL"
    }
    main = sys.modules["__main__"]
    # What multiprocessing's spawn imports in a worker as its __main__: a module run with
    # -m, or a script file.
    importable = main.__spec__ is not None or os.path.isfile(getattr(main, "__file__", "") or "")
    if "__main__" in modules and not importable:
        raise ConfigError(
            f"{name} is defined in this notebook or interactive session, which worker "
            f"processes cannot import; {fix}",
            field="trainer",
        )


def run_worker_processes(
    config: StudyConfig,
    plan: list[Worker],
    failures_before: int,
    study: Any,
    loop: Callable[..., int],
    on_progress: Callable[[Any], None] | None = None,
) -> None:
    """Run one process per planned worker and wait for all; Ctrl-C or SIGTERM stops them all.

    ``loop`` is the trial loop each process runs (``hpo.runner.run_worker``, passed in so
    that this module does not import the runner that starts it). However this returns or
    raises, no worker is left running: each is asked to stop (SIGTERM, it fails its trial
    as ``interrupted``) and killed if it has not exited :data:`STOP_GRACE_S` later.

    Raises:
        FailureBudgetExceeded: a worker stopped because the failure budget ran out.
        HpoError: a worker failed for another reason (its exit code is kept).
        KeyboardInterrupt: Ctrl-C (:class:`~hpo.errors.Terminated` for SIGTERM).
    """
    import multiprocessing

    # spawn, not fork: CUDA and SQLite connections must not be shared with children.
    context = multiprocessing.get_context("spawn")
    # Workers format nothing themselves: their records come here (see hpo.events).
    records, relay = start_relay(context)
    done = [context.Event() for _ in plan]  # set by a worker whose loop has ended
    processes = [
        context.Process(
            target=_worker_process,
            args=(config, w, failures_before, _log_level(), loop, records),
            kwargs={"parent": os.getpid(), "done": done[w.index]},
            name=f"hpo-worker-{w.index}",
        )
        for w in plan
    ]
    interrupts = Interrupts()
    try:
        interrupts.install()
        for process in processes:
            process.start()
        _wait_for_workers(processes, done, study, config, on_progress, interrupts)
    finally:
        # The relay still drains the workers' records here: a worker blocked writing its
        # log queue could not exit (see "joining processes that use queues").
        stop_workers(processes, interrupts.signum or signal.SIGTERM)
        interrupts.uninstall()
        stop_relay(records, relay)
    interrupts.check()
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


def _log_level() -> int:
    """The level workers log at: what reaches hpo's loggers here (a Python caller may show
    hpo's events without lowering the root logger's level)."""
    return logging.getLogger("hpo").getEffectiveLevel()


def _wait_for_workers(
    processes: list[Any],
    done: list[Any],
    study: Any,
    config: StudyConfig,
    on_progress: Callable[[Any], None] | None,
    interrupts: Interrupts,
) -> None:
    """Wait for every worker, reporting progress, until all exit or a signal comes.

    A worker whose loop has ended but whose process has not exited :data:`STOP_GRACE_S`
    later is killed: nothing is left for it to do, and waiting could be forever.
    """
    from multiprocessing.connection import wait

    seen = -1
    ended: dict[int, float] = {}
    while not interrupts.requested and any(p.is_alive() for p in processes):
        wait([p.sentinel for p in processes if p.is_alive()], timeout=0.5)
        for i, process in enumerate(processes):
            if done[i].is_set() and process.is_alive():
                since = ended.setdefault(i, time.monotonic())
                if time.monotonic() - since > STOP_GRACE_S:
                    logger.warning(
                        "worker w%d did not exit %.0f s after its last trial; killed",
                        i,
                        STOP_GRACE_S,
                    )
                    process.kill()
        seen = _show_progress(study, config, on_progress, seen)
    if not interrupts.requested:
        _show_progress(study, config, on_progress, -1)


def _show_progress(
    study: Any, config: StudyConfig, on_progress: Callable[[Any], None] | None, seen: int
) -> int:
    """Call ``on_progress`` when the finished count changed; returns the count shown.

    Progress is a view: a storage error here is the workers' to handle (they retry and
    recover), never a reason for the parent to stop them.
    """
    if on_progress is None:
        return seen
    try:
        finished = usage(study, config).finished  # as the runner counts (hpo.budget)
        if finished != seen:
            on_progress(study)
        return finished
    except Exception as e:  # noqa: BLE001 - see above
        logger.debug("progress not shown: %s", e)
        return seen


def stop_workers(processes: list[Any], signum: int) -> None:
    """Stop every worker still running, within a bounded time.

    Each gets ``signum`` (it reaches only the parent when Kubernetes stops a pod), fails
    its running trial as ``interrupted`` and exits; one still running after
    :data:`STOP_GRACE_S` is killed (its trial is then failed as ``worker_lost`` later).
    """
    running = [p for p in processes if p.is_alive()]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in running:
        if process.is_alive():
            logger.warning("%s did not stop within %.0f s; killed", process.name, STOP_GRACE_S)
            process.kill()
            process.join(timeout=5)


def _worker_process(
    config: StudyConfig,
    worker: Worker,
    failures_before: int,
    log_level: int,
    loop: Callable[..., int],
    records: Any,
    *,
    parent: int,
    done: Any,
) -> None:
    """Entry point of a worker process (spawned: configure threads before torch loads)."""
    import sys

    die_with_parent(parent)
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
    except Terminated:
        sys.exit(Terminated.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except HpoError as e:
        logger.error("%s", e)
        sys.exit(e.exit_code)
    finally:
        done.set()
