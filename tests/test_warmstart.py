"""Warm start: exactly the source's top_k points that fit this space, once."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.runner import run_study
from hpo.study import open_study
from hpo.warmstart import ATTR_WARM_START, enqueue_warm_start

SOURCE = """\
name: source
storage: {storage}
seed: 3
sampler: {{type: random}}
budget: {{n_trials: 8}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 2}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.5}}
  weight_decay: {{type: float, low: 0.0, high: 0.1}}
"""

# Narrower dropout than the source, no weight_decay, a new batch size parameter.
TARGET = """\
name: target
storage: {storage}
seed: 4
sampler: {{type: tpe}}
budget: {{n_trials: {n_trials}}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 2}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.25}}
  per_device_train_batch_size: {{type: categorical, choices: [16, 32]}}
warm_start: {{from: {source}, top_k: 4{extra}}}
"""


def _files(tmp_path: Path, n_trials: int = 6, source: str = "source", extra: str = ""):
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    src = tmp_path / "source.yaml"
    src.write_text(SOURCE.format(storage=storage))
    tgt = tmp_path / "target.yaml"
    tgt.write_text(TARGET.format(storage=storage, n_trials=n_trials, source=source, extra=extra))
    return storage, src, tgt


def expected_points(storage: str, top_k: int = 4) -> list[dict]:
    """Computed independently: best top_k of the source, params kept if they fit."""
    source = optuna.load_study(study_name="source", storage=storage)
    done = sorted(
        (t for t in source.trials if t.state.name == "COMPLETE"),
        key=lambda t: (-t.value, t.number),
    )[:top_k]
    points = []
    for t in done:
        point = {"learning_rate": t.params["learning_rate"]}
        if t.params["dropout"] <= 0.25:
            point["dropout"] = t.params["dropout"]
        points.append(point)
    return points


def waiting_points(study) -> list[dict]:
    return [
        t.system_attrs["fixed_params"] for t in study.get_trials() if t.state.name == "WAITING"
    ]


@pytest.fixture
def source_done(tmp_path: Path):
    storage, src, tgt = _files(tmp_path)
    run_study(load_study(src))
    return storage, tgt


def test_enqueues_exactly_the_fitting_best_points_once(source_done) -> None:
    storage, tgt = source_done
    config = load_study(tgt)
    study = open_study(config)
    expected = expected_points(storage)
    assert any("dropout" not in p for p in expected)  # the narrower space dropped one
    assert enqueue_warm_start(study, config) == 4
    assert waiting_points(study) == expected
    marks = [t.user_attrs[ATTR_WARM_START]["study"] for t in study.get_trials()]
    assert marks == ["source"] * 4
    # Idempotent: a second worker start enqueues nothing new.
    assert enqueue_warm_start(study, config) == 0
    assert waiting_points(study) == expected


def test_points_already_tried_are_skipped_and_a_rerun_adds_nothing(source_done) -> None:
    storage, tgt = source_done
    config = load_study(tgt)
    study = open_study(config)
    expected = expected_points(storage)
    # This study already tried the second point (with a batch size the source lacks).
    study.enqueue_trial({**expected[1], "per_device_train_batch_size": 32})
    assert enqueue_warm_start(study, config) == 3
    summary = run_study(config)  # runs the enqueued points first, then samples
    assert summary.finished == 6
    trials = optuna.load_study(study_name="target", storage=storage).trials
    rest = expected[:1] + expected[2:]
    first = [{k: t.params[k] for k in p} for t, p in zip(trials[1:4], rest, strict=True)]
    assert first == rest
    # A re-run of the finished study (or tomorrow's worker start) enqueues nothing.
    assert enqueue_warm_start(open_study(config), config) == 0
    assert len(optuna.load_study(study_name="target", storage=storage).trials) == 6


def test_enqueues_no_more_than_the_remaining_budget(source_done, tmp_path: Path) -> None:
    storage, _ = source_done
    _, _, tgt = _files(tmp_path, n_trials=2)
    config = load_study(tgt)
    study = open_study(config)
    assert enqueue_warm_start(study, config) == 2
    assert waiting_points(study) == expected_points(storage)[:2]
    assert run_study(config).finished == 2  # and the waiting points do not block the run


def test_another_storage_and_a_missing_source(tmp_path: Path, caplog) -> None:
    other = tmp_path / "other"
    other.mkdir()
    storage, src, _ = _files(other)
    run_study(load_study(src))
    _, _, tgt = _files(tmp_path, extra=f", storage: '{storage}'")
    config = load_study(tgt)
    assert enqueue_warm_start(open_study(config), config) == 4
    _, _, missing = _files(tmp_path, source="nope")
    config = load_study(missing, ["name=cold"])
    with caplog.at_level(logging.WARNING, logger="hpo.warmstart"):
        assert enqueue_warm_start(open_study(config), config) == 0
    assert "no study 'nope'" in caplog.text and "without warm start" in caplog.text


# Bigger toy models learn better but serve slower (latency_ms = 4 * size): the best values
# tend to be the infeasible sizes 2 and 4.
CONSTRAINED = """\
name: {name}
storage: sqlite:///{db}
seed: 5
objective: {objective}
constraints: [{{metric: latency_ms, max: 5}}]
sampler: {{type: random}}
budget: {{n_trials: {n_trials}}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 2}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
  size: {{type: categorical, choices: [0.5, 1.0, 2.0, 4.0]}}
"""
SINGLE = "{metric: eval_accuracy, direction: maximize}"
SEVERAL = (
    "[{metric: eval_accuracy, direction: maximize}, {metric: latency_ms, direction: minimize}]"
)


@pytest.mark.parametrize("objective", [SINGLE, SEVERAL], ids=["single", "several"])
def test_seeds_only_feasible_points_the_ones_narrow_ranks_top(tmp_path: Path, objective) -> None:
    from hpo.narrow import top_trials
    from hpo.study import load_existing_study

    def study_file(name: str, n_trials: int, extra: str = "") -> Path:
        text = CONSTRAINED.format(
            name=name, db=tmp_path / "hpo.db", objective=objective, n_trials=n_trials
        )
        (tmp_path / f"{name}.yaml").write_text(text + extra)
        return tmp_path / f"{name}.yaml"

    source = load_study(study_file("broad", 16))
    run_study(source)
    trials = load_existing_study(source).trials
    assert any(t.params["size"] > 1.0 for t in trials)  # infeasible points exist to skip
    top = top_trials(load_existing_study(source), source, 4)
    assert len(top) == 4 and all(t.params["size"] <= 1.0 for t in top)
    # What hpo narrow writes: a warm start from the source with top_k = its top K.
    config = load_study(study_file("narrow", 8, "warm_start: {from: broad, top_k: 4}\n"))
    study = open_study(config)
    assert enqueue_warm_start(study, config) == 4
    assert waiting_points(study) == [t.params for t in top]
