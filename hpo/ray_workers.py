"""Workers on a Ray cluster: ``hpo run study.yaml --ray [ADDRESS]``.

Each worker is one Ray task running the same trial loop as a local worker process
(``hpo.runner.run_worker``) against the study's storage: workers claim trials under the
study lock, so the budget stays exact whether the study's workers run on Ray, on this
machine, or both. A worker takes one GPU (``num_gpus=1``) when the cluster has GPUs, else
its share of the cluster's CPUs.

Tasks, not actors: ``ray.cancel`` interrupts a running task's main thread with
KeyboardInterrupt, which :class:`hpo.workers.Interrupts` turns into an ``interrupted``
trial (not counted, retried), as Ctrl-C does locally; a running actor method cannot be
interrupted, only killed. So Ctrl-C or SIGTERM on ``hpo run --ray`` cancels every task and,
after :data:`hpo.workers.STOP_GRACE_S`, force-cancels (kills) what is left, whose trial is
then failed as ``worker_lost`` by the heartbeat. The tasks belong to the ``hpo run``
process: Ray ends them when it dies, even by ``kill -9``.

Nothing is shipped to the cluster: ``hpo-finetune`` must be installed on its nodes, and the
study's folder (its trainer module, its data, ``output_dir``) and ``hpo run``'s working
directory must be at the same path there (a local cluster, a shared file system, or an
image), as for ``hpo worker`` on other machines: a validated study holds absolute paths of
this machine, which a copied folder would not make true. A worker that does not find the
study folder fails at once, naming the node.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from hpo.config import StudyConfig
from hpo.errors import ConfigError, FailureBudgetExceeded, HpoError, missing_extra
from hpo.events import forward_to_queue
from hpo.workers import STOP_GRACE_S, Interrupts, Worker

logger = logging.getLogger(__name__)

#: ``--ray`` without an address: RAY_ADDRESS, else the cluster ``ray start`` runs on this
#: machine. ``hpo run`` never starts a cluster itself.
DEFAULT_ADDRESS = "auto"
# An address that does not answer makes ray.init retry for minutes; a TCP connect first
# gives up within this.
CONNECT_TIMEOUT_S = 10.0
_WAIT_POLL_S = 0.5


@dataclass
class RayWorker:
    """One worker to start on the cluster: its identity and the resources it asks for."""

    worker: Worker
    options: dict[str, Any] = field(default_factory=dict)


def plan_ray_workers(workers: int, resources: dict[str, float]) -> list[RayWorker]:
    """One task per worker, from the cluster's total ``resources`` (``ray.cluster_resources``).

    As :func:`hpo.workers.plan_workers` does on one machine: with GPUs and no explicit
    ``workers`` (1), one worker per GPU, each taking one (a share of one when there are
    more workers than GPUs) and one CPU; without GPUs, each takes its share of the CPUs
    (whole CPUs when there are enough). A worker's torch threads are the CPUs it takes.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1)) or 1.0
    count = max(workers, gpus) if workers == 1 else workers
    if gpus:
        # One CPU reserved, so one thread: the cluster's CPUs may lie on nodes without GPUs,
        # and more threads than reserved would crowd the node's other tasks.
        options: dict[str, Any] = {"num_gpus": min(1.0, gpus / count), "num_cpus": 1}
        threads = 1
    else:
        share = cpus / count
        options = {"num_cpus": math.floor(share) if share >= 1 else round(share, 4)}
        threads = max(1, int(share))
    return [
        RayWorker(Worker(index=i, device="cpu", threads=threads), dict(options))
        for i in range(count)
    ]


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address``; returns the ``ray`` module.

    Raises:
        ConfigError: ray is not installed (the ``ray`` extra).
        HpoError: nothing answers at ``address`` (within :data:`CONNECT_TIMEOUT_S`), or
            ``auto`` finds no cluster.
    """
    ray = _import_ray()
    target = os.environ.get("RAY_ADDRESS", "") if address == DEFAULT_ADDRESS else address
    if target and target != DEFAULT_ADDRESS:
        _check_reachable(target)
    # ray.init installs a SIGTERM handler that exits at once; hpo's (hpo.workers) stays.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise HpoError(
            f"--ray {address}: cannot connect to a Ray cluster ({first}); start one "
            "(`ray start --head`) or pass its address (--ray HOST:PORT)"
        ) from e
    finally:
        if threading.current_thread() is threading.main_thread() and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return ray


@contextlib.contextmanager
def connection(address: str | None) -> Iterator[None]:
    """Connected to the Ray cluster at ``address`` within the block (see :func:`connect`).

    Nothing happens when ``address`` is None, or when this process is connected already
    (``ray.init`` in a notebook, or an outer block): that connection is kept.
    """
    if address is None or _import_ray().is_initialized():
        yield
        return
    ray = connect(address)
    try:
        yield
    finally:
        ray.shutdown()


def _import_ray() -> Any:
    """The ray module, or the one-line error naming the ``ray`` extra (exit 2)."""
    problem = missing_extra("ray", "ray", "hpo run --ray")
    if problem:
        raise ConfigError(problem)
    import ray

    return ray


def _check_reachable(address: str) -> None:
    """Fail in bounded time, in one line, when nothing listens at ``address``.

    Hand-written: ray.init has no connect timeout of its own (it retries for minutes).
    """
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host:
        raise ConfigError(f"--ray {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    port = port or (10001 if parts.scheme == "ray" and "://" in address else 6379)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise HpoError(
            f"--ray {address}: no Ray cluster answers at {host}:{port} ({e.strerror or e}); "
            "check the address, or start one there (`ray start --head`)"
        ) from e


def run_ray_workers(
    config: StudyConfig,
    address: str,
    workers: int,
    failures_before: int,
    study: Any,
    on_progress: Any = None,
    *,
    loop: Callable[..., int],
) -> None:
    """Run the study's workers as tasks on the Ray cluster at ``address`` and wait for all.

    ``loop`` is the trial loop each task runs (``hpo.runner.run_worker``; passed in, as to
    local worker processes, so this module does not import the runner).

    However this returns or raises, no task is left running (see the module's docstring).
    A process already connected to a cluster (``ray.init`` in a notebook, ``hpo run``
    before it opens the storage) stays connected to it, and ``address`` is not used.

    Raises:
        FailureBudgetExceeded: a worker stopped because the failure budget ran out.
        HpoError: the cluster is unreachable, or a worker failed for another reason.
        KeyboardInterrupt: Ctrl-C (:class:`~hpo.errors.Terminated` for SIGTERM).
    """
    from hpo.workers import _show_progress

    ray = _import_ray()
    with connection(address):
        plan = plan_ray_workers(workers, ray.cluster_resources())
        _warn_if_storage_is_local(config, ray)
        logger.info(
            "%d workers on the Ray cluster at %s (%s each)",
            len(plan),
            address,
            ", ".join(f"{k}={v:g}" for k, v in plan[0].options.items()),
        )
        records, relay = _start_relay(ray)
        task = ray.remote(max_retries=0)(_ray_worker)
        cwd = os.getcwd()
        level = logging.getLogger("hpo").getEffectiveLevel()
        refs = [
            task.options(name=f"hpo-worker-{p.worker.index}", **p.options).remote(
                config, p.worker, failures_before, level, records, cwd, loop
            )
            for p in plan
        ]
        interrupts = Interrupts()
        try:
            interrupts.install()
            pending, seen = list(refs), -1
            while pending and not interrupts.requested:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=_WAIT_POLL_S)
                seen = _show_progress(study, config, on_progress, seen)
            if not interrupts.requested:
                _show_progress(study, config, on_progress, -1)
        finally:
            stop_tasks(ray, refs)
            interrupts.uninstall()
            _stop_relay(records, relay)
        interrupts.check()
        _raise_failures(ray, config, refs)


def stop_tasks(ray: Any, refs: list[Any]) -> None:
    """Cancel every task still running, within a bounded time.

    A cancel raises KeyboardInterrupt in the task: its trial fails as ``interrupted`` and
    the task ends. One still running :data:`STOP_GRACE_S` later is force-cancelled (its
    process killed; the trial is failed as ``worker_lost`` by the heartbeat).
    """
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in running:
        ray.cancel(ref, force=False)
    if not running:
        return
    _, left = ray.wait(running, num_returns=len(running), timeout=STOP_GRACE_S)
    for ref in left:
        logger.warning("a Ray worker did not stop within %.0f s; killed", STOP_GRACE_S)
        with contextlib.suppress(Exception):  # it may have ended meanwhile
            ray.cancel(ref, force=True)


def _raise_failures(ray: Any, config: StudyConfig, refs: list[Any]) -> None:
    """Raise what the workers' tasks ended with, as hpo.workers does for processes."""
    problems: list[str] = []
    for ref in refs:
        try:
            ray.get(ref, timeout=CONNECT_TIMEOUT_S)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause
            if isinstance(cause, FailureBudgetExceeded):
                raise FailureBudgetExceeded(str(cause)) from None
            problems.append(str(cause) if isinstance(cause, HpoError) else _first_line(e))
        except ray.exceptions.RayError as e:
            problems.append(_first_line(e))
    if problems:
        raise HpoError(
            f"study {config.name!r}: {len(problems)} of {len(refs)} Ray workers failed "
            f"({problems[0]}); rerun to continue (the study resumes)"
        )


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _warn_if_storage_is_local(config: StudyConfig, ray: Any) -> None:
    """A file storage (SQLite, journal) is shared only by workers on this machine, unless
    it lies on a shared file system with working locks; say so when the cluster has more
    nodes than this one."""
    from hpo.storage import backend_of, redact_url

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not backend_of(config.storage).credentials:
        logger.warning(
            "storage %s is a file; the Ray cluster has %d nodes, whose workers share it only "
            "on a shared file system with working locks: use a database server "
            "(postgresql://) for a cluster",
            redact_url(config.storage),
            len(nodes),
        )


def _ray_worker(
    config: StudyConfig,
    worker: Worker,
    failures_before: int,
    log_level: int,
    records: Any,
    cwd: str,
    loop: Callable[..., int],
) -> int:
    """A Ray task: one worker's trial loop, its events sent to ``hpo run`` (``records``)."""
    import ray

    forward_to_queue(records, log_level, worker_label=f"w{worker.index}")
    if not config.study_dir.is_dir():
        raise HpoError(
            f"the study folder {config.study_dir} is not on Ray node {socket.gethostname()}; "
            "Ray workers need it at the same path (a shared file system or the image)"
        )
    if os.path.isdir(cwd):  # relative paths (a sqlite:///hpo.db, a trainer module) as here
        os.chdir(cwd)
    gpus = ray.get_gpu_ids()
    if gpus:  # Ray set CUDA_VISIBLE_DEVICES to it; pin_device keeps it the only one
        worker = replace(worker, device=f"cuda:{gpus[0]}")
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(worker.threads or 1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return loop(config, worker=worker, allow_space_change=True, failures_before=failures_before)


def _start_relay(ray: Any) -> tuple[Any, threading.Thread]:
    """A queue on the cluster for the workers' log records, and the thread that logs them
    here (as hpo.events relays worker processes' records: one format, one console)."""
    from ray.util.queue import Queue

    # No CPU: a queue must not take a worker's place on a small cluster.
    records = Queue(actor_options={"num_cpus": 0})
    thread = threading.Thread(target=_relay, args=(records,), daemon=True, name="hpo-ray-relay")
    thread.start()
    return records, thread


def _relay(records: Any) -> None:
    # Unlike hpo.events._relay, any error ends it: a queue actor that is gone stays gone.
    while True:
        try:
            record = records.get()
        except Exception as e:  # noqa: BLE001 - the cluster or the queue went away
            logger.debug("Ray log relay stopped: %r", e)
            return
        if record is None:
            return
        try:
            logging.getLogger(record.name).handle(record)
        except Exception:  # noqa: BLE001 - a handler's own failure loses this line only
            logger.debug("could not show a Ray worker's record", exc_info=True)


def _stop_relay(records: Any, thread: threading.Thread) -> None:
    with contextlib.suppress(Exception):
        records.put(None, timeout=CONNECT_TIMEOUT_S)
    thread.join(timeout=CONNECT_TIMEOUT_S)
