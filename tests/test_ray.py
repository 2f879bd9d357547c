"""`hpo run --ray`: the study's workers as tasks on a real local Ray cluster.

One cluster per module (`ray start --head --block`, two CPUs), started as a user starts
one; its worker processes import this checkout's hpo (PYTHONPATH), as a cluster's nodes
have hpo-finetune installed. Guarantees under test: the budget is exact, with Ray workers
alone and beside a plain `hpo run`; SIGTERM stops every Ray worker, their trials end
`interrupted` and nothing stays RUNNING; a missing ray or an unreachable address is one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo.config import load_study
from tests.conftest import ROOT
from tests.test_workers import make_study, trials_of

# One worker runs them all, on one cluster (pyproject: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The address of a local Ray head (2 CPUs), and its session id (its processes').

    One cluster on the machine at a time: the suite's parallel workers (pytest-xdist) that
    reach this module each start one, and two on a small machine slow both past the
    tests' waits, so the next waits for the lock (one file every test run here finds).
    """
    pytest.importorskip("ray")
    with open(Path(tempfile.gettempdir()) / "hpo-tests-ray.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # closing the file at the end releases it
        yield from _start_cluster(tmp_path_factory)


def _start_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    temp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    log = temp / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
            + [f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
            + ["--include-dashboard=false", f"--temp-dir={temp}"]
            + ["--object-store-memory=100000000", f"--ray-client-server-port={_free_port()}"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"},
            cwd=temp,
            start_new_session=True,  # its own group: teardown ends exactly what it started
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", head.pid
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the cluster it runs
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        # Whatever of its session is left (`ray stop` would end every cluster on the machine).
        for pid in _session_processes(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _session_processes(session: int) -> list[int]:
    """Pids of the live processes of ``session`` (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[3]) == session and stat[0] not in "ZX":
                found.append(int(proc.name))
    return found


def _running_ray_workers(session: int) -> list[int]:
    """Pids of the cluster's processes running an hpo worker (Ray titles a worker process
    by its task's name: ``ray::hpo-worker-0``, ``ray::IDLE`` between tasks)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[3]) == session and "hpo-worker" in title and stat[0] not in "ZX":
            found.append(int(proc.name))
    return found


def _hpo(study_file: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(study_file), *extra],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_ray_workers_share_the_budget_exactly(
    tmp_path: Path, ray_cluster: tuple[str, int], storage: str, request: pytest.FixtureRequest
) -> None:
    address, _ = ray_cluster
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    if storage == "postgres":
        url = request.getfixturevalue("postgres_url")
    study_file = make_study(
        tmp_path, url, f"r{uuid.uuid4().hex[:10]}", n_trials=6, epochs=2, epoch_s=0.2
    )
    run = _hpo(study_file, tmp_path, "--ray", address, "--workers", "2")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    trials = trials_of(load_study(study_file))
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 6}, err
    workers = {t.user_attrs["hpo:worker"] for t in trials}
    assert len(workers) == 2 and str(run.pid) not in {w.split(":")[1] for w in workers}
    assert "[w1]" in err and "trial" in err  # the workers' events reach `hpo run`


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_ray_worker_and_leaves_nothing_running(
    tmp_path: Path, ray_cluster: tuple[str, int], signum: int
) -> None:
    # To `hpo run` alone: Kubernetes stops a pod's PID 1 so (SIGTERM); Ctrl-C (SIGINT)
    # reaches only the terminal's process group, of which the cluster's workers are not.
    address, session = ray_cluster
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=100, epochs=4, epoch_s=0.5
    )
    run = _hpo(study_file, tmp_path, "--ray", address, "--workers", "2")
    config = load_study(study_file)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.3)
        try:
            trials = trials_of(config)
        except Exception:
            continue
        running = [t for t in trials if t.state.name == "RUNNING"]
        if len(running) == 2 and all(t.user_attrs.get("hpo:epochs", 0) >= 1 for t in running):
            break
    assert len(_running_ray_workers(session)) == 2
    run.send_signal(signum)
    started = time.monotonic()
    _, err = run.communicate(timeout=60)
    assert run.returncode == (143 if signum == signal.SIGTERM else 130), err
    assert time.monotonic() - started < 20, err
    last = "hpo: stopped by SIGTERM" if signum == signal.SIGTERM else "hpo: interrupted"
    assert err.strip().splitlines()[-1] == last, err
    assert _running_ray_workers(session) == []
    trials = trials_of(config)
    states = Counter(t.state.name for t in trials)
    failed = [t.user_attrs.get("hpo:failure") for t in trials if t.state.name == "FAIL"]
    assert states["RUNNING"] == 0 and states["COMPLETE"] < 100, states
    assert failed and set(failed) == {"interrupted"}, failed
    time.sleep(2)  # no worker goes on claiming trials
    assert len(trials_of(config)) == len(trials)


STUCK_TRAINER = """\
import time


def train(ctx):
    time.sleep(300)  # one call in C: an interrupt waits for it to return (a stuck CUDA call)
"""


def test_a_ray_worker_stuck_in_c_is_killed_and_its_trial_lost_not_left_running(
    tmp_path: Path, ray_cluster: tuple[str, int]
) -> None:
    from hpo.budget import failure_reason
    from hpo.study import open_study

    address, session = ray_cluster
    (tmp_path / "stuck.py").write_text(STUCK_TRAINER)
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=4)
    toy = study_file.read_text()
    study_file.write_text(toy.replace("trainers.toy:train", "stuck:train"))
    config = load_study(study_file)
    run = _hpo(study_file, tmp_path, "--ray", address, "--workers", "2")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.3)
        with contextlib.suppress(Exception):
            if sum(t.state.name == "RUNNING" for t in trials_of(config)) == 2:
                break
    run.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert time.monotonic() - started < 25, err  # STOP_GRACE_S, then killed
    assert "did not stop within 10 s; killed" in err
    assert _running_ray_workers(session) == []
    # Their trials stay RUNNING only until a worker sees no heartbeat for grace_period (4 s).
    study_file.write_text(toy.replace("n_trials: 4", "n_trials: 1"))
    time.sleep(5)
    after = _hpo(study_file, tmp_path)
    _, err = after.communicate(timeout=120)
    assert after.returncode == 0, err
    study = open_study(load_study(study_file))
    lost = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(lost) == 2 and all(t.state.name != "RUNNING" for t in study.trials)
    assert {failure_reason(t, study.user_attrs) for t in lost} == {"worker_lost"}


def test_ray_workers_end_when_hpo_run_is_killed(
    tmp_path: Path, ray_cluster: tuple[str, int]
) -> None:
    # kill -9 leaves no handler to cancel anything: Ray ends the tasks of a driver it lost.
    address, session = ray_cluster
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=100, epochs=4, epoch_s=0.5
    )
    run = _hpo(study_file, tmp_path, "--ray", address, "--workers", "2")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(_running_ray_workers(session)) < 2:
        time.sleep(0.3)
    assert len(_running_ray_workers(session)) == 2
    run.kill()
    run.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running_ray_workers(session):
        time.sleep(0.3)
    assert _running_ray_workers(session) == []


def test_budget_is_exact_with_a_ray_run_beside_a_plain_run(
    tmp_path: Path, ray_cluster: tuple[str, int]
) -> None:
    address, _ = ray_cluster
    study_file = make_study(
        tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=10, epochs=2, epoch_s=0.5
    )
    config = load_study(study_file)
    on_ray = _hpo(study_file, tmp_path, "--ray", address, "--workers", "1")
    deadline = time.monotonic() + 60  # Ray takes seconds to start its worker: wait for it
    while time.monotonic() < deadline and on_ray.poll() is None:
        time.sleep(0.3)
        with contextlib.suppress(Exception):
            if trials_of(config):
                break
    here = _hpo(study_file, tmp_path)
    for run in (on_ray, here):
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    trials = trials_of(config)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 10}
    pids = Counter(t.user_attrs["hpo:worker"].split(":")[1] for t in trials)
    assert str(here.pid) in pids and len(pids) == 2, pids  # both ran trials


def test_the_failure_budget_on_ray_exits_1_in_one_line(
    tmp_path: Path, ray_cluster: tuple[str, int]
) -> None:
    # The workers' errors come back through Ray as hpo's own, as from worker processes.
    address, _ = ray_cluster
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=20)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:always_fail")
    )
    run = _hpo(study_file, tmp_path, "--ray", address, "--workers", "2")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    assert "budget.max_failures=3" in err.strip().splitlines()[-1], err


def test_an_unreachable_ray_address_is_one_line_in_bounded_time(tmp_path: Path, run_cli) -> None:
    pytest.importorskip("ray")
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2)
    started = time.monotonic()
    result = run_cli("run", str(study_file), "--ray", f"127.0.0.1:{_free_port()}")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    (line,) = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert line.startswith("hpo: error: --ray 127.0.0.1:") and "no Ray cluster answers" in line
    assert not (tmp_path / "hpo.db").exists()  # the cluster is checked first


def test_ray_workers_take_a_gpu_each_or_a_share_of_the_cpus() -> None:
    from hpo.ray_workers import plan_ray_workers

    plan = plan_ray_workers(1, {"CPU": 16.0, "GPU": 4.0})  # like --devices: one per GPU
    assert [p.options for p in plan] == [{"num_gpus": 1.0, "num_cpus": 1}] * 4
    assert plan[0].worker.threads == 1 and [p.worker.index for p in plan] == [0, 1, 2, 3]
    assert plan_ray_workers(4, {"CPU": 8.0, "GPU": 2.0})[0].options["num_gpus"] == 0.5
    assert [p.options for p in plan_ray_workers(2, {"CPU": 5.0})] == [{"num_cpus": 2}] * 2
    assert plan_ray_workers(4, {"CPU": 2.0})[0].options == {"num_cpus": 0.5}
    assert plan_ray_workers(1, {"CPU": 2.0})[0].worker.threads == 2


def test_a_file_storage_on_a_cluster_of_several_nodes_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from hpo.ray_workers import _warn_if_storage_is_local

    config = load_study(make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}"))
    one, two = ([{"Alive": True}] * n + [{"Alive": False}] for n in (1, 2))
    _warn_if_storage_is_local(config, SimpleNamespace(nodes=lambda: one))
    assert not caplog.records
    _warn_if_storage_is_local(config, SimpleNamespace(nodes=lambda: two))
    assert "use a database server" in caplog.text and "2 nodes" in caplog.text


def test_devices_with_ray_is_refused(tmp_path: Path, run_cli) -> None:
    pytest.importorskip("ray")
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2)
    result = run_cli("run", str(study_file), "--ray", "--devices", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: --devices picks GPUs of this machine; with --ray, Ray assigns them"
    )


def test_hpo_run_ray_without_ray_names_the_extra(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # how Python marks a module unimportable
    study_file = make_study(tmp_path, f"sqlite:///{tmp_path / 'hpo.db'}", n_trials=2)
    result = run_cli("run", str(study_file), "--ray")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: hpo run --ray needs ray, which is not installed; "
        "pip install 'hpo-finetune[ray]'"
    )
    assert not (tmp_path / "hpo.db").exists()  # nothing written
