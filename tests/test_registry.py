"""Contract: every registered sampler and pruner runs a study through the toy trainer."""

from __future__ import annotations

import inspect
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.registry import PRUNERS, SAMPLERS
from hpo.runner import run_study

STUDY = """\
name: contract
storage: sqlite:///{db}
seed: 5
sampler: {sampler}
pruner: {pruner}
budget: {{n_trials: 6, max_failures: 0}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 4}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true, {step}}}
  dropout: {{type: float, low: 0.0, high: 0.3, {dstep}}}
  per_device_train_batch_size: {{type: categorical, choices: [8, 16]}}
"""

PRUNER_OPTIONS = {
    "percentile": "percentile: 50",
    "patient": "patience: 1",
    "threshold": "lower: 0.5",
}


def run(tmp_path: Path, sampler: str, pruner: str = "none") -> optuna.Study:
    discrete = sampler in ("grid", "bruteforce")
    text = STUDY.format(
        db=tmp_path / "hpo.db",
        sampler=f"{{type: {sampler}}}",
        pruner=f"{{type: {pruner}, {PRUNER_OPTIONS.get(pruner, '')}}}",
        step="" if not discrete else "",
        dstep="step: 0.1" if discrete else "",
    )
    if discrete:  # a discrete learning rate too
        text = text.replace(
            "{type: float, low: 1.0e-5, high: 1.0e-3, log: true, }",
            "{type: categorical, choices: [1.0e-5, 1.0e-4]}",
        )
    path = tmp_path / "contract.yaml"
    path.write_text(text)
    summary = run_study(load_study(path))
    assert summary.finished == 6
    return optuna.load_study(study_name="contract", storage=f"sqlite:///{tmp_path}/hpo.db")


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_a_study(tmp_path: Path, sampler: str) -> None:
    study = run(tmp_path, sampler)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    expected = {"grid": "GridSampler", "tpe": "TPESampler", "random": "RandomSampler"}
    if sampler in expected:
        assert study.user_attrs["hpo:config"]["sampler"]["type"] == sampler


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs_a_study(tmp_path: Path, pruner: str) -> None:
    study = run(tmp_path, "random", pruner)
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


def test_threshold_pruner_prunes_below_its_bound(tmp_path: Path) -> None:
    study = run(tmp_path, "random", "threshold")
    for trial in study.trials:
        if trial.state.name == "PRUNED":
            assert min(trial.intermediate_values.values()) < 0.5


@pytest.mark.parametrize("table, module", [(SAMPLERS, optuna.samplers), (PRUNERS, optuna.pruners)])
def test_options_are_real_constructor_arguments(table, module) -> None:
    """Option models drift from Optuna's signatures only with a failing test."""
    classes = {
        "random": "RandomSampler",
        "grid": "GridSampler",
        "tpe": "TPESampler",
        "gp": "GPSampler",
        "cmaes": "CmaEsSampler",
        "qmc": "QMCSampler",
        "nsga2": "NSGAIISampler",
        "nsga3": "NSGAIIISampler",
        "bruteforce": "BruteForceSampler",
        "none": "NopPruner",
        "median": "MedianPruner",
        "percentile": "PercentilePruner",
        "successive_halving": "SuccessiveHalvingPruner",
        "hyperband": "HyperbandPruner",
        "threshold": "ThresholdPruner",
        "patient": "PatientPruner",
        "wilcoxon": "WilcoxonPruner",
    }
    for name, entry in table.items():
        parameters = inspect.signature(getattr(module, classes[name])).parameters
        ours = set(entry.options.model_fields) - {"type", "wrapped"}
        assert ours <= set(parameters), (name, ours - set(parameters))
