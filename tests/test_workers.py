"""Many workers on one study, on real SQLite and the real Postgres.

Guarantees under test: the budget is exact, every grid point runs once, enqueued trials
run once, a killed worker's trial is failed as worker_lost and resumed from its
checkpoint, a dropped Postgres connection costs no trial, 16 SQLite workers never see
"database is locked".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.runner import run_study
from hpo.study import open_study
from hpo.workers import plan_workers
from tests.conftest import ROOT, count_states

STUDY = """\
name: {name}
storage: {storage}
seed: 3
sampler: {sampler}
budget: {{n_trials: {n_trials}, max_failures: 3}}
workers: {{heartbeat_interval: 1, grace_period: 4}}
output_dir: {output}
trainer:
  ref: trainers.toy:train
  args: {{num_train_epochs: {epochs}, seconds_per_epoch: {epoch_s}, save_checkpoints: true}}
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4]}}
  dropout: {{type: float, low: 0.0, high: 0.3, step: 0.1}}
"""


def make_study(
    tmp_path: Path,
    storage: str,
    name: str = "w",
    *,
    sampler: str = "{type: random}",
    n_trials: int = 12,
    epochs: int = 2,
    epoch_s: float = 0.05,
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        STUDY.format(
            name=name,
            storage=storage,
            sampler=sampler,
            n_trials=n_trials,
            epochs=epochs,
            epoch_s=epoch_s,
            output=tmp_path / "runs",
        )
    )
    return path


def trials_of(config) -> list:
    return optuna.load_study(
        study_name=config.name, storage=open_study(config)._storage
    ).get_trials()


def test_omp_num_threads_caps_the_cores_workers_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user (or a batch system) who sets OMP_NUM_THREADS gets no more threads than that:
    hpo sets torch's thread count itself, so it must honour the variable torch would."""
    import os

    from hpo.trainer import available_cores

    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert available_cores() == affinity
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1 and plan_workers(1, [])[0].threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(affinity + 8))  # never more than the affinity
    assert available_cores() == affinity
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert available_cores() == affinity


def test_plan_splits_cores_and_devices() -> None:
    plan = plan_workers(4, [], cores=8)
    assert [(w.device, w.threads) for w in plan] == [("cpu", 2)] * 4
    plan = plan_workers(1, ["0", "1"], cores=16)  # with GPUs: one worker per device
    assert [w.device for w in plan] == ["cuda:0", "cuda:1"] and plan[0].threads == 8
    plan = plan_workers(3, ["5"], cores=2)
    assert [w.device for w in plan] == ["cuda:5"] * 3 and plan[0].threads == 1


def test_packed_workers_each_get_an_equal_share_of_their_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Trial packing: `--workers 8 --devices 0` puts eight workers on one GPU, each held to
    # an eighth of its memory; a worker alone on its GPU keeps all of it.
    import torch

    from hpo.workers import Worker, pin_device

    packed = plan_workers(8, ["0"], cores=16)
    assert {w.device for w in packed} == {"cuda:0"} and {w.memory_share for w in packed} == {1 / 8}
    assert [w.memory_share for w in plan_workers(3, ["0", "1"], cores=6)] == [0.5, None, 0.5]
    assert {w.memory_share for w in plan_workers(2, ["0", "1"], cores=4)} == {None}
    # A worker process caps its allocator at its share when it takes its GPU (a CPU-only
    # torch here, so CUDA's functions are stood in for; the real cap needs a GPU).
    capped = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (70 * 2**30, 80 * 2**30))
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d: capped.append((f, d))
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert pin_device(packed[3]).memory_share == 1 / 8
    assert capped == [(1 / 8, 0)]
    pin_device(Worker(index=0, device="cuda:0"))  # alone on its GPU: no cap
    assert capped == [(1 / 8, 0)]


def test_one_packed_trials_oom_never_stops_the_others(tmp_path: Path) -> None:
    # Three workers share the study (on a GPU they would share its memory); trials that
    # ask for more than their share fail alone, as `oom`, and the rest of the budget runs.
    study = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=8, epochs=1)
    text = study.read_text().replace(
        "trainers.toy:train", "tests.fake_trainers:oom_when_dropout_high"
    )
    study.write_text(text.replace("max_failures: 3", "max_failures: 100"))
    config = load_study(study)
    summary = run_study(config, workers=3)
    trials = trials_of(config)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert summary.finished == 8 and failed
    assert {t.user_attrs["hpo:failure"] for t in failed} == {"oom"}
    assert all(t.params["dropout"] > 0.2 for t in failed)


def test_visible_devices_reads_the_variable_else_asks_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from hpo.workers import visible_devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_devices() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # the suite hides GPUs (tests/conftest.py)
    assert visible_devices() == [str(i) for i in range(torch.cuda.device_count())]


def test_a_worker_given_one_gpu_sees_only_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # `hpo worker --device 3` and a single `--devices 3` run in the calling process, where
    # the HF Trainer would otherwise take cuda:0 (or all GPUs through DataParallel).
    from hpo.workers import Worker, pin_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    pinned = pin_device(Worker(index=1, device="cuda:3", threads=4))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert (pinned.index, pinned.device, pinned.threads) == (1, "cuda:0", 4)
    assert pin_device(Worker(device="cpu")).device == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_budget_is_exact_with_four_workers(
    tmp_path: Path, storage_url: str, unique_name: str
) -> None:
    config = load_study(make_study(tmp_path, storage_url, unique_name, n_trials=10))
    summary = run_study(config, workers=4)
    trials = trials_of(config)
    assert summary.finished == 10
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 10}
    assert len({t.user_attrs["hpo:worker"] for t in trials}) > 1  # the work was shared


def _hpo(command: str, study_file: Path, cwd: Path) -> subprocess.Popen:
    """``hpo COMMAND STUDY_FILE`` in a process of its own; stderr piped, stdout dropped."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", command, str(study_file)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def hpo_runs_together(study_files: list[Path], cwd: Path) -> None:
    """One ``hpo run`` command per file, started together, as a user starts them; each
    must exit 0 (any left running is killed)."""
    runs = [_hpo("run", study_file, cwd) for study_file in study_files]
    try:
        errors = [run.communicate(timeout=300)[1] for run in runs]
    finally:
        for run in runs:
            run.kill()
    assert [run.returncode for run in runs] == [0] * len(runs), errors


def test_budget_is_exact_with_four_hpo_run_processes(
    tmp_path: Path, storage_url: str, unique_name: str
) -> None:
    # Four separate `hpo run` commands on one study. Zero-length trials keep every process
    # in its claim loop at the budget's edge, where an unlocked storage overshoots (journal
    # without the lock: 14 of 12 in one of three runs here).
    study_file = make_study(tmp_path, storage_url, unique_name, n_trials=12, epochs=1, epoch_s=0)
    hpo_runs_together([study_file] * 4, tmp_path)
    states = Counter(t.state.name for t in trials_of(load_study(study_file)))
    assert states == {"COMPLETE": 12}


def test_grid_points_run_exactly_once(tmp_path: Path, storage_url: str, unique_name: str) -> None:
    # 4 learning rates x 4 dropouts = 16 points; n_trials above it is capped at the grid.
    study = make_study(tmp_path, storage_url, unique_name, sampler="{type: grid}", n_trials=40)
    config = load_study(study)
    run_study(config, workers=4)
    trials = trials_of(config)
    points = Counter(
        tuple(sorted(t.params.items())) for t in trials if t.state.name in ("COMPLETE", "PRUNED")
    )
    assert len(points) == 16
    assert max(points.values()) == 1, f"duplicated points: {points.most_common(3)}"
    assert len(trials) == 16


def test_enqueued_trials_run_once(tmp_path: Path, storage_url: str, unique_name: str) -> None:
    config = load_study(make_study(tmp_path, storage_url, unique_name, n_trials=8))
    study = open_study(config)
    for lr in (1e-5, 3e-5, 1e-4, 3e-4):
        for dropout in (0.0, 0.3):
            study.enqueue_trial({"learning_rate": lr, "dropout": dropout})
    run_study(config, workers=4)
    trials = trials_of(config)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 8}
    points = Counter((t.params["learning_rate"], t.params["dropout"]) for t in trials)
    assert len(points) == 8 and set(points.values()) == {1}


def _worker(study: Path, cwd: Path) -> subprocess.Popen:
    return _hpo("worker", study, cwd)


def test_killed_worker_is_detected_and_its_trial_resumes(
    tmp_path: Path, storage_url: str, unique_name: str
) -> None:
    study_file = make_study(tmp_path, storage_url, unique_name, n_trials=3, epochs=4, epoch_s=0.6)
    config = load_study(study_file)
    victim = _worker(study_file, tmp_path)
    deadline = time.monotonic() + 90
    lost = None
    while time.monotonic() < deadline and lost is None:  # kill it after its 2nd checkpoint
        time.sleep(0.1)
        try:
            running = [t for t in trials_of(config) if t.state.name == "RUNNING"]
        except Exception:
            continue
        lost = next((t for t in running if t.user_attrs.get("hpo:epochs", 0) >= 2), None)
    assert lost is not None, victim.stderr.read() if victim.poll() is not None else "no trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    # The snapshot above may predate the checkpoint the victim recorded before it died.
    lost = next(t for t in trials_of(config) if t.number == lost.number)
    helper = _worker(study_file, tmp_path)
    detected = None
    # One storage for the whole poll: each open_study holds a connection until collected,
    # and a poll on a loaded machine opened enough to exhaust a server's max_connections.
    study = open_study(config)
    while time.monotonic() - killed_at < 60 and detected is None:
        time.sleep(0.2)
        if lost.number in study.user_attrs.get("hpo:lost", []):
            detected = time.monotonic() - killed_at
    assert helper.wait(timeout=120) == 0, helper.stderr.read()
    assert detected is not None and detected < 4 + 1 + 10  # grace period + heartbeat + poll
    trials = trials_of(config)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == 3 and states["RUNNING"] == 0
    assert next(t for t in trials if t.number == lost.number).state.name == "FAIL"
    # Any other failure must be one that is not counted and is retried (a worker starved of
    # CPU past the 4 s grace period on a loaded machine looks lost too): never the trainer's.
    lost_numbers = set(open_study(config).user_attrs.get("hpo:lost", []))
    others = {
        t.number: (t.user_attrs.get("hpo:failure"), t.user_attrs.get("hpo:failure_message"))
        for t in trials
        if t.state.name == "FAIL" and t.number != lost.number
    }
    assert all(n in lost_numbers or why == "storage" for n, (why, _) in others.items()), others
    retry = next(t for t in trials if t.user_attrs.get("hpo:resumed_from") == lost.number)
    assert retry.params == lost.params and retry.state.name == "COMPLETE"
    checkpoint_epoch = int(Path(lost.user_attrs["hpo:checkpoint"]).name.split("-")[1])
    assert retry.user_attrs["hpo:resumed_at_epoch"] == checkpoint_epoch + 1
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]  # a whole learning curve
    print(f"kill -> worker_lost {detected:.1f} s; resumed at epoch {checkpoint_epoch + 1}")


def test_a_worker_killed_before_its_first_heartbeat_blocks_no_one(
    tmp_path: Path, storage_url: str, unique_name: str
) -> None:
    """A worker SIGKILLed between creating its trial and its heartbeat thread's first beat
    leaves a RUNNING trial that never beat, which Optuna's stale-trial check never fails (it
    reads only trials that have beaten). With the rest of the budget claimed, the next run
    waited for it forever (a killed cron sweep hung its next tick so in CI)."""
    study_file = make_study(tmp_path, storage_url, unique_name, n_trials=2, epochs=1)
    run_study(load_study(study_file, overrides=["budget.n_trials=1"]))
    config = load_study(study_file, overrides=["budget.timeout=60"])  # ends the naive wait
    open_study(config).ask()  # the killed worker's claim: RUNNING, never beaten
    run_study(config)
    trials = trials_of(config)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 2, "FAIL": 1}
    lost = next(t for t in trials if t.state.name == "FAIL")
    assert lost.number in open_study(config).user_attrs["hpo:lost"]


def test_sixteen_workers_on_one_sqlite_file(tmp_path: Path) -> None:
    study = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=32, epochs=1, epoch_s=0.0
    )
    config = load_study(study)
    run_study(config, workers=16)
    trials = trials_of(config)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 32}


@pytest.mark.whole_postgres
def test_dropped_postgres_connections_cost_no_trial(
    tmp_path: Path, postgres_url: str, unique_name: str
) -> None:
    import sqlalchemy

    config = load_study(
        make_study(tmp_path, postgres_url, unique_name, n_trials=12, epochs=2, epoch_s=0.15)
    )
    study_file = tmp_path / f"{unique_name}.yaml"
    worker = _worker(study_file, tmp_path)
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    finished = sqlalchemy.text(
        "SELECT count(*) FROM trials JOIN studies USING (study_id) "
        "WHERE study_name = :name AND trials.state = 'COMPLETE'"
    )
    drops, done, deadline = 0, 0, time.monotonic() + 120
    while worker.poll() is None and drops < 3:
        # Drop once per newly finished trial: mid-study, however loaded the machine.
        assert time.monotonic() < deadline, f"{drops} drops in 120 s"
        time.sleep(0.1)
        try:
            with admin.connect() as connection:
                now = connection.execute(finished, {"name": unique_name}).scalar_one()
        except sqlalchemy.exc.ProgrammingError:  # a fresh database: no tables yet
            continue
        if now <= done:
            continue
        done = now
        with admin.connect() as connection:  # what a server restart does to clients
            connection.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        drops += 1
    assert worker.wait(timeout=120) == 0, worker.stderr.read()
    assert drops >= 2
    study = open_study(config)
    failed = [
        (t.number, t.user_attrs.get("hpo:failure"), t.user_attrs.get("hpo:failure_message"))
        for t in study.trials
        if t.state.name == "FAIL"
    ]
    states = count_states(study)
    # The full budget completes and nothing hangs. A drop that kills the study lock's
    # session mid-claim fails that claim as "storage" (ClaimLost: not counted, its
    # parameters retried), at most one per drop; any other failure is a trial caught
    # mid-write (seen once in ~20 runs; the budget absorbs it).
    assert states["COMPLETE"] == 12 and states["RUNNING"] == 0, (failed, states)
    storage = [f for f in failed if f[1] == "storage"]
    assert len(storage) <= drops and len(failed) - len(storage) <= 1, failed


def _restart_postgres() -> bool:
    """Restart the local cluster the way an operator would; False where we cannot."""
    import shutil

    clusters = Path("/etc/postgresql")
    if not shutil.which("pg_ctlcluster") or os.geteuid() != 0 or not clusters.is_dir():
        return False
    version = sorted(p.name for p in clusters.iterdir())[-1]
    result = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        capture_output=True,
        timeout=60,
    )
    return result.returncode == 0


@pytest.mark.whole_postgres
def test_postgres_restart_mid_study(tmp_path: Path, postgres_url: str, unique_name: str) -> None:
    study_file = make_study(
        tmp_path, postgres_url, unique_name, n_trials=10, epochs=2, epoch_s=0.3
    )
    config = load_study(study_file)
    worker = _worker(study_file, tmp_path)
    # Restart once the worker is into the study (a fixed sleep missed it on a loaded
    # machine: the restart came before the worker's first connection).
    deadline = time.monotonic() + 60
    done = 0
    study = open_study(config)  # one storage for the poll (see above: max_connections)
    while time.monotonic() < deadline and done < 2:
        time.sleep(0.2)
        done = count_states(study)["COMPLETE"]
    assert done >= 2, worker.stderr.read() if worker.poll() is not None else "no trial"
    if not _restart_postgres():
        worker.kill()
        pytest.skip("needs root and pg_ctlcluster to restart the local Postgres")
    assert worker.poll() is None  # the database went away under a running worker
    assert worker.wait(timeout=180) == 0, worker.stderr.read()
    states = count_states(open_study(config))
    assert states["COMPLETE"] == 10 and states["FAIL"] == 0 and states["RUNNING"] == 0


def test_ctrl_c_stops_every_worker_and_leaves_nothing_running(tmp_path: Path) -> None:
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=40, epochs=3, epoch_s=0.3
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(study_file), "--workers", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    config = load_study(study_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            if count_states(open_study(config))["COMPLETE"] >= 2:
                break
        except Exception:
            continue
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    states = count_states(open_study(config))
    assert states["RUNNING"] == 0 and states["COMPLETE"] < 40
    interrupted = [t for t in trials_of(config) if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("hpo:failure") == "interrupted" for t in interrupted)


def test_failure_budget_with_workers_exits_1(tmp_path: Path) -> None:
    from tests.conftest import run_hpo

    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=20)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:always_fail")
    )
    result = run_hpo("run", str(study_file), "--workers", "2")
    assert result.returncode == 1
    assert "budget.max_failures=3" in result.stderr.splitlines()[-1]


# --- signals as clusters send them, and processes that never outlive or block each other ---


def _children(pid: int) -> set[int]:
    """Pids of a live process's children (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Poll until none of ``pids`` lives or ``timeout`` passes; the survivors."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    return {pid for pid in pids if _alive(pid)}


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _hpo(command: str, study_file: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", command, str(study_file), *extra],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group, as a pod's or a job step's
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_trials(config, process: subprocess.Popen, complete: int = 1) -> None:
    """Poll until ``complete`` trials finished and one runs with 2 of its 4 epochs (0.5 s
    each) still to go: a signal sent now finds it mid-trial. A trial merely RUNNING may end
    before the signal comes and leave every worker between trials on a loaded machine."""
    deadline = time.monotonic() + 90
    study = None  # opened once the process has created it, then kept (max_connections)
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            study = study or open_study(config)
            trials = study.trials
        except Exception:
            continue
        complete_now = sum(t.state.name == "COMPLETE" for t in trials)
        early = [
            t
            for t in trials
            if t.state.name == "RUNNING" and 1 <= t.user_attrs.get("hpo:epochs", 0) <= 2
        ]
        if complete_now >= complete and early:
            return
    raise AssertionError(f"no trial ran: {process.stderr.read() if process.poll() else ''}")


def _assert_interrupted(config) -> None:
    """Nothing left RUNNING; failed trials were interrupted (retried by the next run)."""
    trials = trials_of(config)
    states = Counter(t.state.name for t in trials)
    failed = [t.user_attrs.get("hpo:failure") for t in trials if t.state.name == "FAIL"]
    assert states["RUNNING"] == 0, states
    assert failed and set(failed) == {"interrupted"}, failed


@pytest.mark.parametrize("to", ["parent", "group"])
def test_sigterm_stops_every_worker_like_ctrl_c(tmp_path: Path, to: str) -> None:
    # Kubernetes signals the container's PID 1 only; Slurm signals every process of a step.
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=200, epochs=4, epoch_s=0.5
    )
    config = load_study(study_file)
    process = _hpo("run", study_file, tmp_path, "--workers", "2")
    _wait_for_trials(config, process)
    children = _children(process.pid)
    try:
        if to == "parent":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=25)  # inside Kubernetes' default 30 s grace
        assert process.returncode == 143, err
        assert err.strip().splitlines()[-1] == "hpo: stopped by SIGTERM", err
        assert _wait_gone(children, timeout=10) == set()
    finally:
        _kill_all(children)
    _assert_interrupted(config)


def test_sigterm_stops_hpo_worker_like_ctrl_c(tmp_path: Path) -> None:
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=50, epochs=4, epoch_s=0.5
    )
    config = load_study(study_file)
    process = _hpo("worker", study_file, tmp_path)
    _wait_for_trials(config, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=25)
    assert process.returncode == 143, err
    _assert_interrupted(config)


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=200, epochs=4, epoch_s=0.5
    )
    config = load_study(study_file)
    process = _hpo("run", study_file, tmp_path, "--workers", "2")
    _wait_for_trials(config, process)
    children = _children(process.pid)
    assert len(children) >= 2
    try:
        process.kill()  # SIGKILL: no handler runs in the parent
        process.communicate(timeout=10)
        assert _wait_gone(children, timeout=30) == set()
    finally:
        _kill_all(children)


def _run_loop(tmp_path: Path, loop: str) -> subprocess.Popen:
    """``run_worker_processes`` with two workers running ``tests.fake_trainers.<loop>``."""
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=4)
    (tmp_path / "runs").mkdir(exist_ok=True)
    script = (
        "import sys\n"
        "from hpo.config import load_study\n"
        "from hpo.study import open_study\n"
        "from hpo.workers import plan_workers, run_worker_processes\n"
        f"from tests.fake_trainers import {loop} as loop\n"
        "config = load_study(sys.argv[1])\n"
        "run_worker_processes(config, plan_workers(2, []), 0, open_study(config), loop)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(study_file)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    parent = _run_loop(tmp_path, "stubborn_loop")
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "runs").glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    children = {int(p.name.split("-")[1]) for p in (tmp_path / "runs").glob("ready-*")}
    assert len(children) == 2, parent.stderr.read() if parent.poll() is not None else ""
    try:
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=25)
        assert _wait_gone(children, timeout=10) == set()
    finally:
        _kill_all(children)


@pytest.mark.parametrize("loop", ["stuck_at_exit_loop", "undecodable_record_loop"])
def test_the_parent_never_waits_forever_on_a_worker(tmp_path: Path, loop: str) -> None:
    parent = _run_loop(tmp_path, loop)
    try:
        _, err = parent.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        children = _children(parent.pid)
        os.killpg(parent.pid, signal.SIGKILL)
        _kill_all(children)
        raise
    if loop == "undecodable_record_loop":  # the relay skipped the odd record, kept the rest
        assert parent.returncode == 0, err
        assert "filler 399" in err


@pytest.fixture
def own_postgres_database(postgres_url: str):
    """A fresh Postgres database of this test's own, dropped after it: its connections are
    the only ones the test may kill (other tests share the server)."""
    import uuid

    import psycopg2
    import sqlalchemy

    url = sqlalchemy.make_url(postgres_url)
    name = f"hpo_chaos_{uuid.uuid4().hex[:12]}"

    def admin():
        connection = psycopg2.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
        )
        connection.autocommit = True
        return connection

    connection = admin()  # not `with connection`: that opens a transaction
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    try:
        yield url.set(database=name).render_as_string(hide_password=False), name, admin
    finally:
        connection = admin()
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


def test_killed_postgres_connections_with_two_workers(
    tmp_path: Path, own_postgres_database
) -> None:
    # Every connection of the study's database is killed every 0.5 s while `hpo run
    # --workers 2` runs: storage errors must not count as the trainer's failures, nothing is
    # left RUNNING, no worker outlives the run, and the run ends with the full budget.
    import threading

    url, database, admin = own_postgres_database
    study_file = make_study(tmp_path, url, "chaos", n_trials=12, epochs=2, epoch_s=0.15)
    config = load_study(study_file)
    open_study(config)  # the schema exists, as on a server a study already uses
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(study_file), "--workers", "2"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
            stdout=out,
            stderr=err,
        )
    children: set[int] = set()
    stop = threading.Event()
    kills = 0

    def started() -> bool:
        log = (tmp_path / "err.txt").read_text()
        return "[w0] trial" in log and "[w1] trial" in log

    def chaos() -> None:
        nonlocal kills
        deadline = time.monotonic() + 60
        connection = admin()
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                with connection.cursor() as cursor:
                    # Until both workers run trials a connection gets its first second: an
                    # open whose every attempt is killed fails fast by design (a wrong host
                    # fails in seconds, rdb.OPEN_RETRIES), which under load ended 4 of 13
                    # runs before any claim. Then every connection, at every tick.
                    young = "" if started() else "AND backend_start < now() - interval '1 s'"
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = %s AND pid <> pg_backend_pid() {young}",
                        (database,),
                    )
                    kills += cursor.rowcount
                stop.wait(0.5)
        finally:
            connection.close()

    thread = threading.Thread(target=chaos)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            children |= _children(process.pid)
            time.sleep(0.1)
        assert process.poll() is not None, "hpo run did not finish within 300 s"
    finally:
        stop.set()
        thread.join()
        if process.poll() is None:
            children |= _children(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            _kill_all(children)
    errors = (tmp_path / "err.txt").read_text()
    assert _wait_gone(children, timeout=15) == set(), errors[-3000:]
    _kill_all(children)
    assert process.returncode == 0, errors[-3000:]
    assert kills > 0
    states = count_states(open_study(config))
    # Exactly the budget: the claim lock dies with a killed connection, and a claim made
    # while it was lost is not counted (before that check: 13 of 12 in one of ~8 runs).
    assert states["RUNNING"] == 0 and states["COMPLETE"] == 12, (states, errors[-3000:])
    failed = [t.user_attrs.get("hpo:failure") for t in trials_of(config) if t.state.name == "FAIL"]
    assert set(failed) <= {"storage", None}, failed  # None: worker_lost (listed in hpo:lost)
    print(f"{kills} connections killed; trials {dict(states)}")


@pytest.mark.process  # its workers start inside hpo.workers, out of the tier guess's sight
def test_a_storage_error_in_the_parents_progress_view_stops_nothing(tmp_path: Path) -> None:
    # The parent's progress view reads the storage; a hiccup there is the view's problem,
    # not a reason to leave (that orphaned the workers, which finished the study unseen).
    import sqlalchemy.exc

    from hpo.runner import run_worker
    from hpo.workers import run_worker_processes

    config = load_study(make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=4))
    calls = []

    def flaky_view(study) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection lost"))

    run_worker_processes(
        config, plan_workers(2, []), 0, open_study(config), run_worker, flaky_view
    )
    assert count_states(open_study(config)) == {"COMPLETE": 4}
    assert len(calls) > 1


def _kill_lock_connection(lock, server_url: str) -> None:
    """Kill the database session that holds ``lock`` (ours), as pg_terminate_backend or an
    operator's KILL would, from another connection."""
    import sqlalchemy

    postgres = server_url.startswith("postgresql")
    own = lock._connection.execute(
        sqlalchemy.text("SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()")
    ).scalar()
    engine = sqlalchemy.create_engine(server_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as admin:
        kill = f"SELECT pg_terminate_backend({int(own)})" if postgres else f"KILL {int(own)}"
        admin.execute(sqlalchemy.text(kill))


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_claim_whose_lock_died_is_not_counted_twice(
    tmp_path: Path, request, server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's lock session is killed after A read the budget (1 slot free) and before its ask():
    # the server dropped the lock, so B claims and finishes the last slot meanwhile. A's
    # claim is then not made: its trial is failed as `storage` untrained, and the study ends
    # with exactly the budget (before: A trained its trial too, 2 COMPLETE of 1).
    import threading

    import hpo.runner
    import hpo.storage
    from hpo.runner import run_worker

    server_url = request.getfixturevalue(f"{server}_url")
    config = load_study(make_study(tmp_path, server_url, unique_name, n_trials=1, epochs=1))
    open_study(config)
    locks: list = []
    fired: list = []
    real_lock, real_usage = hpo.storage.study_lock, hpo.runner.usage

    def study_lock(*args, **kwargs):
        locks.append(real_lock(*args, **kwargs))
        return locks[-1]

    def usage(study, config):
        now = real_usage(study, config)
        if locks[0].held and not fired:  # A, in its claim: kill its lock, B claims the slot
            fired.append(1)
            _kill_lock_connection(locks[0], server_url)
            other = threading.Thread(target=run_worker, args=(config,))
            other.start()
            other.join(timeout=120)
        return now

    monkeypatch.setattr(hpo.storage, "study_lock", study_lock)
    monkeypatch.setattr(hpo.runner, "usage", usage)
    run_worker(config)
    trials = trials_of(config)
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == 1, states
    assert states["RUNNING"] == 0, states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.user_attrs["hpo:failure"] for t in failed] == ["storage"]
    assert "lock" in failed[0].user_attrs["hpo:failure_message"]
    assert "hpo:metrics" not in failed[0].user_attrs  # never trained


def test_an_interrupted_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    # A preempted pod (SIGTERM) fails its trial as `interrupted`; the next run retries the
    # same parameters from the trial's last checkpoint, as a lost worker's trial is, and the
    # budget still ends at its total (before: the next run drew new parameters and started
    # over, so a preempted long fine-tune lost its progress).
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2, epochs=4, epoch_s=0.5
    )
    config = load_study(study_file)
    process = _hpo("run", study_file, tmp_path)
    deadline = time.monotonic() + 90
    while not list((tmp_path / "runs").glob("**/checkpoint-1/state.json")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=25)
    assert process.returncode == 143, err
    _assert_interrupted(config)
    interrupted = next(t for t in trials_of(config) if t.state.name == "FAIL")
    checkpoint_epoch = int(Path(interrupted.user_attrs["hpo:checkpoint"]).name.split("-")[1])
    rerun = _hpo("run", study_file, tmp_path)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    trials = trials_of(config)
    states = Counter(t.state.name for t in trials)
    assert states == {"COMPLETE": 2, "FAIL": 1}, states
    retry = next(t for t in trials if t.user_attrs.get("hpo:resumed_from") == interrupted.number)
    assert retry.params == interrupted.params and retry.state.name == "COMPLETE"
    assert retry.user_attrs["hpo:resumed_at_epoch"] == checkpoint_epoch + 1
