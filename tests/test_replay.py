"""The replay trainer serves recorded learning curves through hpo's runner."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from hpo.config import validate_study
from hpo.runner import run_study
from hpo.study import open_study
from hpo.trainers.replay import DEFAULT_CURVES, load_curves, nearest

CURVES = [
    {
        "params": {"learning_rate": 1e-5, "per_device_train_batch_size": 8},
        "eval_accuracy": [0.5, 0.55, 0.6],
        "eval_loss": [0.69, 0.68, 0.66],
        "seconds": [10.0, 9.0, 9.0],
    },
    {
        "params": {"learning_rate": 1e-4, "per_device_train_batch_size": 8},
        "eval_accuracy": [0.6, 0.7, 0.8],
        "eval_loss": [0.6, 0.5, 0.4],
        "seconds": [10.0, 9.0, 9.0],
    },
]


def write_curves(path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump({"epochs": 3, "curves": CURVES}, f)
    return path


def test_runner_serves_each_recorded_curve_epoch_by_epoch(tmp_path: Path) -> None:
    curves = write_curves(tmp_path / "curves.json.gz")
    config = validate_study(
        {
            "name": "replay",
            "storage": f"sqlite:///{tmp_path / 'hpo.db'}",
            "seed": 0,
            "sampler": {"type": "grid"},
            "budget": {"n_trials": 2},
            "trainer": {"ref": "trainers.replay:train", "args": {"curves": str(curves)}},
            "search_space": {
                "learning_rate": {"type": "categorical", "choices": [1e-5, 1e-4]},
                "per_device_train_batch_size": {"type": "categorical", "choices": [8]},
            },
        },
        path=str(tmp_path / "replay.yaml"),
    )
    summary = run_study(config)
    assert summary.counts == {"COMPLETE": 2}
    for trial in open_study(config).trials:
        recorded = nearest(CURVES, trial.params)
        history = trial.user_attrs["hpo:history"]
        assert [h["eval_accuracy"] for h in history] == recorded["eval_accuracy"]
        assert trial.intermediate_values == dict(enumerate(recorded["eval_accuracy"], start=1))
        assert trial.value == recorded["eval_accuracy"][-1]
        assert trial.user_attrs["hpo:epochs"] == 3


def test_an_unrecorded_configuration_gets_the_nearest_curve() -> None:
    # 5e-5 is nearer 1e-4 than 1e-5 on a log scale (log10 distance 0.3 against 0.7).
    assert nearest(CURVES, {"learning_rate": 5e-5})["params"]["learning_rate"] == 1e-4
    assert nearest(CURVES, {"learning_rate": 2e-5})["params"]["learning_rate"] == 1e-5


def test_the_committed_curves_cover_their_grid() -> None:
    data = load_curves(str(DEFAULT_CURVES))
    recorded = {tuple(sorted(c["params"].items())) for c in data["curves"]}
    size = 1
    for values in data["grid"].values():
        size *= len(values)
    assert len(recorded) == size
    assert all(len(c["eval_loss"]) == data["epochs"] for c in data["curves"])
