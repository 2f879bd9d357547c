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
trainer: {{ref: trainers.toy:train, args: {{{trainer_args}}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true, {step}}}
  dropout: {{type: float, low: 0.0, high: 0.3, {dstep}}}
  per_device_train_batch_size: {{type: categorical, choices: [8, 16]}}
"""

# Options under which each pruner has a trial of the contract study to prune (seed 5).
PRUNER_OPTIONS = {
    "median": "n_startup_trials: 1",
    "percentile": "percentile: 50, n_startup_trials: 1",
    "patient": "patience: 1",
    "threshold": "lower: 0.7",
    "wilcoxon": "p_threshold: 0.2",
}
# The toy's curves rise every epoch; the patient pruner needs a noisy plateau to see.
TRAINER_ARGS = {"patient": "num_train_epochs: 8, noise: 0.03"}
OPTUNA_CLASSES = {
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


def run(tmp_path: Path, sampler: str, pruner: str = "none") -> tuple[optuna.Study, set]:
    """Run the contract study; the study and the (sampler, pruner) classes its trials met."""
    discrete = sampler in ("grid", "bruteforce")
    text = STUDY.format(
        db=tmp_path / "hpo.db",
        sampler=f"{{type: {sampler}}}",
        pruner=f"{{type: {pruner}, {PRUNER_OPTIONS.get(pruner, '')}}}",
        trainer_args=TRAINER_ARGS.get(pruner, "num_train_epochs: 4"),
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
    used: set[tuple[str, str]] = set()

    def record(study: optuna.Study) -> None:
        used.add((type(study.sampler).__name__, type(study.pruner).__name__))

    summary = run_study(load_study(path), on_progress=record)
    assert summary.finished == 6
    study = optuna.load_study(study_name="contract", storage=f"sqlite:///{tmp_path}/hpo.db")
    return study, used


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_a_study(tmp_path: Path, sampler: str) -> None:
    study, used = run(tmp_path, sampler)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert used == {(OPTUNA_CLASSES[sampler], "NopPruner")}  # the sampler named, not another


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs_a_study(tmp_path: Path, pruner: str) -> None:
    study, used = run(tmp_path, "random", pruner)
    assert used == {("RandomSampler", OPTUNA_CLASSES[pruner])}
    states = [t.state.name for t in study.trials]
    assert set(states) <= {"COMPLETE", "PRUNED"}
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    # Each pruner but "none" has a trial to prune here: one that never prunes fails.
    assert ("PRUNED" in states) == (pruner != "none"), states


def test_threshold_pruner_prunes_below_its_bound(tmp_path: Path) -> None:
    study, _ = run(tmp_path, "random", "threshold")
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert pruned and complete  # the bound (0.7) splits the contract study
    for trial in pruned:  # pruned at the first value below the bound
        values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert values[-1] < 0.7 and all(v >= 0.7 for v in values[:-1])
    for trial in complete:  # asked after every epoch but the last: never below
        steps = sorted(trial.intermediate_values)[:-1]
        assert all(trial.intermediate_values[s] >= 0.7 for s in steps)


@pytest.mark.parametrize("table, module", [(SAMPLERS, optuna.samplers), (PRUNERS, optuna.pruners)])
def test_options_are_real_constructor_arguments(table, module) -> None:
    """Option models drift from Optuna's signatures only with a failing test."""
    for name, entry in table.items():
        parameters = inspect.signature(getattr(module, OPTUNA_CLASSES[name])).parameters
        ours = set(entry.options.model_fields) - {"type", "wrapped"}
        assert ours <= set(parameters), (name, ours - set(parameters))
