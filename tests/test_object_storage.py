"""Checkpoints in object storage (``output_dir: s3://...``) against a real S3 server.

The server is moto's, started as its own process (``python -m moto.server``) on a free
port; the tests kill and restart it like any server. Each "machine" is a worker process
with its own working folder and ``HPO_CACHE_DIR`` (its staging folder): only the bucket
and the study's storage are shared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo import object_store
from hpo.config import load_study
from hpo.runner import run_study
from tests.conftest import ROOT, run_hpo, trials_when_ready

STUDY = """\
name: {name}
storage: sqlite:///{db}
seed: 3
sampler: {{type: random}}
budget: {{n_trials: {n_trials}, max_failures: 3}}
workers: {{heartbeat_interval: 1, grace_period: 4}}
output_dir: s3://{bucket}/runs
keep_checkpoints: {keep}
trainer:
  ref: {ref}
  args: {args}
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-5, 3.0e-5, 1.0e-4, 3.0e-4]}}
  dropout: {{type: float, low: 0.0, high: 0.3, step: 0.1}}
"""


class MotoServer:
    """moto's S3 server in its own process, on one port for its whole life."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto did not start on port {self.port}: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = MotoServer(port, tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture
def s3(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh bucket on the server; the credentials and endpoint in the environment (as
    a user's would be), so hpo and its worker processes reach it."""
    import s3fs

    for key, value in {
        "HPO_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto.url,
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"hpo-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    return fs, bucket


def _study(
    tmp_path: Path,
    bucket: str,
    *,
    n_trials: int = 4,
    keep: str = "all",
    ref: str = "trainers.toy:train",
    args: str = "{num_train_epochs: 2, save_checkpoints: true}",
) -> Path:
    path = tmp_path / "study.yaml"
    db = tmp_path / "hpo.db"
    text = STUDY.format(
        name="obj", db=db, n_trials=n_trials, bucket=bucket, keep=keep, ref=ref, args=args
    )
    path.write_text(text)
    return path


def _machine(tmp_path: Path, name: str) -> dict[str, str]:
    """Another machine: its own working folder and cache (so its own staging folder)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    return {"HPO_CACHE_DIR": str(home / "cache"), "cwd": str(home)}


def _worker(study: Path, machine: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_CACHE_DIR": machine["HPO_CACHE_DIR"]}
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", str(study)],
        cwd=machine["cwd"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _trials(study: Path) -> list:
    config = load_study(study)
    return trials_when_ready(config.storage, config.name) or []


def test_checkpoints_go_to_the_bucket_and_nothing_to_a_local_runs_folder(
    tmp_path: Path, s3
) -> None:
    fs, bucket = s3
    config = load_study(_study(tmp_path, bucket, n_trials=3))
    run_study(config)
    trials = _trials(tmp_path / "study.yaml")
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 3}
    for trial in trials:
        url = trial.user_attrs["hpo:checkpoint"]
        assert url == f"s3://{bucket}/runs/obj/trial-{trial.number:04d}/checkpoint-2"
        assert (
            trial.user_attrs["hpo:output_dir"]
            == f"s3://{bucket}/runs/obj/trial-{trial.number:04d}"
        )
        stored = fs.find(url)
        assert sorted(Path(p).name for p in stored) == [".complete", "state.json"]
        assert json.loads(fs.cat(f"{url}/state.json")) == {"epoch": 2}
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s3:").exists()
    # The staging copies went once their trial ended (they are in the bucket).
    assert not list((tmp_path / "cache").rglob("checkpoint-*"))


def test_a_lost_trial_resumes_on_another_machine_from_the_bucket(tmp_path: Path, s3) -> None:
    fs, bucket = s3
    study = _study(
        tmp_path,
        bucket,
        n_trials=3,
        args="{num_train_epochs: 4, seconds_per_epoch: 0.6, save_checkpoints: true}",
    )
    first, second = _machine(tmp_path, "a"), _machine(tmp_path, "b")
    victim = _worker(study, first)
    deadline, lost = time.monotonic() + 90, None
    while time.monotonic() < deadline and lost is None:  # kill it after its 2nd checkpoint
        time.sleep(0.1)
        running = [t for t in _trials(study) if t.state.name == "RUNNING"]
        lost = next((t for t in running if t.user_attrs.get("hpo:epochs", 0) >= 2), None)
    assert lost is not None, victim.stderr.read() if victim.poll() is not None else "no trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    lost = next(t for t in _trials(study) if t.number == lost.number)
    checkpoint = lost.user_attrs["hpo:checkpoint"]
    assert checkpoint.startswith(f"s3://{bucket}/runs/obj/trial-")
    helper = _worker(study, second)
    assert helper.wait(timeout=120) == 0, helper.stderr.read()
    trials = _trials(study)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 3, "FAIL": 1}
    retry = next(t for t in trials if t.user_attrs.get("hpo:resumed_from") == lost.number)
    epoch = int(checkpoint.rsplit("-", 1)[1])
    assert retry.user_attrs["hpo:resumed_at_epoch"] == epoch + 1
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    # It wrote on beside the lost trial's checkpoints, in the bucket.
    assert retry.user_attrs["hpo:checkpoint"] == checkpoint.rsplit("/", 1)[0] + "/checkpoint-4"
    assert fs.exists(retry.user_attrs["hpo:checkpoint"] + "/.complete")
    assert not (tmp_path / "a" / "runs").exists() and not (tmp_path / "b" / "runs").exists()


def test_retention_deletes_in_the_bucket_inside_the_study_only(tmp_path: Path, s3) -> None:
    fs, bucket = s3
    # Someone else's objects: beside the study, and a trial-like folder of another study.
    foreign = [f"{bucket}/runs/other/trial-0001/checkpoint-2/x", f"{bucket}/notes.txt"]
    for key in foreign:
        fs.pipe(key, b"not hpo's")
    study = _study(tmp_path, bucket, n_trials=4, keep="1")
    result = run_hpo("run", str(study), env={"HPO_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    trials = _trials(study)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    left = {p.split("/")[3] for p in fs.find(f"{bucket}/runs/obj")}
    assert left == {f"trial-{best.number:04d}"}
    assert fs.exists(best.user_attrs["hpo:checkpoint"] + "/.complete")
    assert all(fs.cat(key) == b"not hpo's" for key in foreign)
    status = run_hpo("status", str(study), "--json")
    disk = json.loads(status.stdout)["checkpoints"]
    assert disk["dir"] == f"s3://{bucket}/runs/obj"
    assert disk["bytes"] == fs.du(f"{bucket}/runs/obj") > 0


def test_export_reads_the_best_checkpoint_from_the_bucket(tmp_path: Path, s3) -> None:
    fs, bucket = s3
    table = [{"eval_accuracy": a} for a in (0.5, 0.9, 0.7)]
    args = "{table: " + json.dumps(table) + "}"
    study = _study(
        tmp_path, bucket, n_trials=3, ref="tests.fake_trainers:FIXED_METRICS", args=args
    )
    env = {"HPO_CACHE_DIR": str(tmp_path / "cache")}
    result = run_hpo("run", str(study), env=env)
    assert result.returncode == 0, result.stderr
    exported = run_hpo("export", str(study), "--to", str(tmp_path / "model"), env=env)
    assert exported.returncode == 0, exported.stderr
    facts = json.loads((tmp_path / "model" / "hpo_export.json").read_text())
    assert facts["trial"] == 1
    assert facts["checkpoint"] == f"s3://{bucket}/runs/obj/trial-0001/checkpoint-1"
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    assert not (tmp_path / "model" / ".complete").exists()


def test_an_upload_cut_by_a_server_restart_is_retried_and_the_budget_is_met(
    tmp_path: Path, s3, moto: MotoServer
) -> None:
    fs, bucket = s3
    size = 24 * 2**20  # large enough that uploads take most of each trial
    study = _study(
        tmp_path,
        bucket,
        n_trials=4,
        args=f"{{num_train_epochs: 3, save_checkpoints: true, checkpoint_bytes: {size}}}",
    )
    worker = _worker(study, _machine(tmp_path, "a"))
    # An upload in flight: a checkpoint's state.json is in, its weights and marker not yet.
    deadline, in_flight = time.monotonic() + 90, None
    while time.monotonic() < deadline and in_flight is None and worker.poll() is None:
        fs.invalidate_cache()
        names = fs.find(f"{bucket}/runs/obj")
        folders = {p.rsplit("/", 1)[0] for p in names}
        in_flight = next((f for f in folders if f + "/.complete" not in names), None)
    assert in_flight is not None, worker.stderr.read() if worker.poll() is not None else "none"
    moto.kill()
    time.sleep(2)
    moto.start()
    fs.mkdir(bucket)  # moto keeps nothing across a restart: the bucket comes back empty
    assert worker.wait(timeout=240) == 0, worker.stderr.read()
    trials = _trials(study)
    assert Counter(t.state.name for t in trials)["COMPLETE"] == 4
    # Every checkpoint with a marker is whole: none got its marker beside only the files
    # sent after the restart, so none can be resumed from or exported half.
    fs.invalidate_cache()
    names = set(fs.find(f"{bucket}/runs/obj"))
    marked = [n.rsplit("/", 1)[0] for n in names if n.endswith("/.complete")]
    assert marked
    for folder in marked:
        assert {f"{folder}/state.json", f"{folder}/weights.bin"} <= names, folder
        assert fs.size(f"{folder}/weights.bin") == size


def test_a_checkpoint_without_its_marker_is_never_resumed_from(tmp_path: Path, s3) -> None:
    """An upload cut before its marker: the objects are there, the checkpoint is not."""
    fs, bucket = s3
    config = load_study(_study(tmp_path, bucket))
    url = f"{object_store.study_url(config)}/trial-0000/checkpoint-3"
    fs.pipe(f"{url}/state.json", json.dumps({"epoch": 3}).encode())
    assert object_store.fetch_checkpoint(config, url, 1) is None
    fs.pipe(f"{url}/.complete", b"")
    local = object_store.fetch_checkpoint(config, url, 1)
    assert local is not None and json.loads((local / "state.json").read_text()) == {"epoch": 3}
    # Only the study's own checkpoints are followed, whatever storage says.
    outside = f"s3://{bucket}/elsewhere/trial-0000/checkpoint-3"
    fs.pipe(f"{outside}/.complete", b"")
    assert object_store.fetch_checkpoint(config, outside, 1) is None
    assert object_store.fetch_checkpoint(config, f"{url}/../../../x/y", 1) is None


def test_the_bucket_follows_a_trainer_that_keeps_only_its_last_checkpoint(
    tmp_path: Path, s3
) -> None:
    """The HF trainers keep one checkpoint locally (save_total_limit): the one they deleted
    goes from the bucket too, and nothing else in the trial folder."""
    fs, bucket = s3
    config = load_study(_study(tmp_path, bucket))
    trial = object_store.staging_folder(config) / "trial-0000"
    for epoch in (1, 2):
        (trial / f"checkpoint-{epoch}").mkdir(parents=True)
        (trial / f"checkpoint-{epoch}" / "state.json").write_text(str(epoch))
        if epoch == 2:
            shutil.rmtree(trial / "checkpoint-1")  # the trainer's rotation
        object_store.publish_checkpoint(config, trial / f"checkpoint-{epoch}")
    remote = f"{bucket}/runs/obj/trial-0000"
    fs.pipe(f"{remote}/events.txt", b"kept")
    object_store.publish_checkpoint(config, trial / "checkpoint-2")
    fs.invalidate_cache()
    assert sorted(fs.find(remote)) == [
        f"{remote}/checkpoint-2/.complete",
        f"{remote}/checkpoint-2/state.json",
        f"{remote}/events.txt",
    ]


def test_an_s3_output_dir_without_s3fs_is_one_line_naming_the_extra(
    run_cli, toy_study, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    study = toy_study()
    result = run_cli("validate", str(study), "--set", "output_dir=s3://bucket/runs")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"hpo: error: {study}: output_dir: output_dir s3:// needs s3fs, which is not "
        "installed; pip install 'hpo-finetune[s3]'"
    ]
    assert run_cli("validate", str(study), "--set", "output_dir=nope://x").returncode == 2


def test_an_upload_that_keeps_failing_fails_the_trial_as_storage() -> None:
    """Not the trainer's failure: not counted, and its parameters are retried."""
    from hpo.runner import _classify

    error = object_store.ObjectStorageError("uploading checkpoint x: gave up after 61 s")
    try:
        raise RuntimeError("in the trainer's callback") from error
    except RuntimeError as wrapped:
        assert _classify(wrapped) == "storage"
