"""Failures in plain sight, and summaries that show model quality only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna

from hpo import storage as st
from hpo.config import load_study
from hpo.status import attention, shown_metrics
from hpo.study import open_study

SERVING_COSTS = ("n_parameters", "model_size_mb", "latency_ms", "throughput")


def _with_trainer(study_file: Path, ref: str) -> Path:
    study_file.write_text(study_file.read_text().replace("trainers.toy:train", ref))
    return study_file


def test_failed_trials_are_named_with_reason_and_first_line(run_cli, toy_study) -> None:
    study_file = _with_trainer(toy_study(n_trials=3), "tests.fake_trainers:disk_quota")
    run = run_cli("run", str(study_file))
    assert run.returncode == 1  # max_failures: 3
    # The run's closing lines name the failed trials and their first message.
    assert "3 trials failed in this run:" in run.stdout
    assert (
        "trial 0 FAILED (exception): RuntimeError: disk quota exceeded on /scratch" in run.stdout
    )
    status = run_cli("status", str(study_file))
    assert status.returncode == 0, status.stderr
    for number in range(3):
        line = f"trial {number} FAILED (exception): RuntimeError: disk quota exceeded on /scratch"
        assert line in status.stdout
    assert "while writing checkpoint-1" not in status.stdout  # first line only
    data = json.loads(run_cli("status", str(study_file), "--json").stdout)
    assert data["attention"][0] == {
        "number": 0,
        "state": "FAIL",
        "reason": "exception",
        "message": "RuntimeError: disk quota exceeded on /scratch",
        "worker": data["attention"][0]["worker"],
        "heartbeat_age_s": None,
        "started": data["attention"][0]["started"],
    }
    assert re.fullmatch(r".+:\d+", data["attention"][0]["worker"])  # host:pid


def test_lost_interrupted_and_running_trials(run_cli, toy_study, tmp_path: Path) -> None:
    config = load_study(toy_study(n_trials=5))
    study = open_study(config)
    lost, interrupted, running = study.ask(), study.ask(), study.ask()
    interrupted.set_user_attr(st.ATTR_FAILURE, "interrupted")
    interrupted.set_user_attr(st.ATTR_FAILURE_MESSAGE, "KeyboardInterrupt: ")
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    study.set_user_attr("hpo:lost", [lost.number])
    running.set_user_attr(st.ATTR_WORKER, "gpu-node-3:4242")
    study._storage.record_heartbeat(running._trial_id)
    lines = {line.number: line for line in attention(study)}
    assert lines[lost.number].reason == "worker_lost"
    assert lines[interrupted.number].reason == "interrupted"
    assert lines[running.number].state == "RUNNING"
    assert lines[running.number].worker == "gpu-node-3:4242"
    assert 0 <= lines[running.number].heartbeat_age_s < 3600
    status = run_cli("status", str(config.source))
    assert f"trial {lost.number} FAILED (worker_lost)" in status.stdout
    assert f"trial {interrupted.number} FAILED (interrupted): KeyboardInterrupt" in status.stdout
    assert re.search(
        rf"trial {running.number} RUNNING on gpu-node-3:4242, last heartbeat \d+ s ago",
        status.stdout,
    )


def test_summaries_and_best_show_quality_and_serving_costs_only(run_cli, toy_study) -> None:
    study_file = _with_trainer(toy_study(n_trials=2), "tests.fake_trainers:with_throughput")
    run = run_cli("run", str(study_file))
    assert run.returncode == 0, run.stderr
    best_text = run_cli("best", str(study_file)).stdout
    best_json = json.loads(run_cli("best", str(study_file), "--json").stdout)
    for shown in (run.stdout, best_text, json.dumps(best_json)):
        assert "eval_accuracy" in shown and "test_accuracy" in shown
        for cost in SERVING_COSTS:  # they matter when choosing a base model
            assert cost in shown
        for noise in ("runtime", "per_second", "preparation_time", "total_flos", "epoch"):
            assert noise not in shown
    # Everything is still stored.
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{study_file.parent}/hpo.db")
    assert "eval_samples_per_second" in study.best_trial.user_attrs[st.ATTR_METRICS]


def test_best_of_several_objectives_shows_the_same_metrics(run_cli, tmp_path: Path) -> None:
    """The Pareto front's entries in `hpo best --json` leave out bookkeeping too."""
    from tests.test_pareto import multi

    path = _with_trainer(multi(tmp_path, n_trials=4), "tests.fake_trainers:with_throughput")
    assert run_cli("run", str(path)).returncode == 0
    front = json.loads(run_cli("best", str(path), "--json").stdout)["pareto_front"]
    assert front
    for row in front:
        assert {"eval_accuracy", "test_accuracy", *SERVING_COSTS} <= set(row["metrics"])
        for noise in ("runtime", "per_second", "preparation_time", "total_flos", "epoch"):
            assert not [name for name in row["metrics"] if noise in name], row["metrics"]


def test_quality_metrics() -> None:
    metrics = {
        "eval_accuracy": 0.9,
        "eval_f1": 0.8,
        "eval_loss": 0.3,
        "train_loss": 0.2,
        "eval_runtime": 1.0,
        "eval_samples_per_second": 3.0,
        "test_steps_per_second": 3.0,
        "epoch": 3.0,
        "total_flos": 1e9,
    }
    assert shown_metrics(metrics) == {
        "eval_accuracy": 0.9,
        "eval_f1": 0.8,
        "eval_loss": 0.3,
        "train_loss": 0.2,
    }


def test_status_of_a_study_named_like_a_path_is_exit_2_and_measures_nothing(
    run_cli, toy_study, tmp_path: Path
) -> None:
    """``name: /usr`` once made status sum /usr's files as the study's checkpoints."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "not-a-checkpoint.bin").write_bytes(b"x" * 1000)
    study_file = toy_study(text=TOY_STUDY_NAMED.format(name=elsewhere, db=tmp_path / "hpo.db"))
    optuna.create_study(study_name=str(elsewhere), storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    result = run_cli("status", str(study_file), "--json")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(f"hpo: error: {study_file}:1: name: '{elsewhere}' becomes")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["not-a-checkpoint.bin"]


TOY_STUDY_NAMED = """\
name: {name}
storage: sqlite:///{db}
budget: {{n_trials: 1}}
trainer: {{ref: trainers.toy:train}}
search_space: {{dropout: {{type: float, low: 0.0, high: 0.3}}}}
"""
