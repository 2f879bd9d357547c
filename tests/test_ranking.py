"""One rule for "best" and one for "finished": every reader agrees with hpo.ranking and
hpo.budget.

The studies here run ``tests.fake_trainers:FIXED_METRICS``: trial N returns row N of a
table, so which trial is best is known before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.cli import main

# Maximize eval_accuracy with latency_ms <= 10: trials 1 and 5 score higher than trial 2
# but break the constraint, so trial 2 is the best.
CONSTRAINED = [
    {"eval_accuracy": 0.70, "latency_ms": 5},
    {"eval_accuracy": 0.93, "latency_ms": 40},
    {"eval_accuracy": 0.90, "latency_ms": 5},
    {"eval_accuracy": 0.60, "latency_ms": 5},
    {"eval_accuracy": 0.85, "latency_ms": 5},
    {"eval_accuracy": 0.95, "latency_ms": 50},
]
CONSTRAINED_BEST = 2

# Maximize eval_accuracy, minimize latency_ms, with model_size_mb <= 100: trial 3 would
# dominate every other but breaks the constraint; 4 is dominated by 2, 5 by 1 (a tie in
# accuracy, slower), so the feasible front is 0, 1, 2.
SEVERAL = [
    {"eval_accuracy": 0.70, "latency_ms": 2, "model_size_mb": 50},
    {"eval_accuracy": 0.90, "latency_ms": 8, "model_size_mb": 50},
    {"eval_accuracy": 0.80, "latency_ms": 4, "model_size_mb": 50},
    {"eval_accuracy": 0.95, "latency_ms": 1, "model_size_mb": 500},
    {"eval_accuracy": 0.75, "latency_ms": 6, "model_size_mb": 50},
    {"eval_accuracy": 0.90, "latency_ms": 9, "model_size_mb": 50},
]
SEVERAL_FRONT = [0, 1, 2]

STUDY = """\
name: {name}
storage: sqlite:///{folder}/hpo.db
output_dir: {folder}/runs
seed: 1
sampler: {{type: random}}
budget: {{n_trials: {n}, max_failures: 3}}
{keep}trainer: {{ref: "tests.fake_trainers:FIXED_METRICS", args: {{table: {table}}}}}
search_space:
  x: {{type: float, low: 0.0, high: 1.0}}
{goals}
"""


def constrained_study(folder: Path, name: str = "constrained", keep: int = 1) -> Path:
    goals = (
        "objective: {metric: eval_accuracy, direction: maximize}\n"
        "constraints: [{metric: latency_ms, max: 10}]\n"
    )
    return _write(folder, name, CONSTRAINED, goals, keep)


def several_study(folder: Path, name: str = "several") -> Path:
    goals = (
        "objective:\n"
        "  - {metric: eval_accuracy, direction: maximize}\n"
        "  - {metric: latency_ms, direction: minimize}\n"
        "constraints: [{metric: model_size_mb, max: 100}]\n"
    )
    # keep_checkpoints left out: the front's checkpoints stay
    return _write(folder, name, SEVERAL, goals, None)


def _write(folder: Path, name: str, table: list, goals: str, keep: int | None) -> Path:
    path = folder / f"{name}.yaml"
    text = STUDY.format(
        name=name,
        folder=folder,
        n=len(table),
        keep="" if keep is None else f"keep_checkpoints: {keep}\n",
        table=json.dumps(table),
        goals=goals,
    )
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, overrides: list[str] | None = None):
    from hpo.config import load_study

    return load_study(path, overrides)


def _stored(path: Path):
    from hpo.study import load_existing_study

    return load_existing_study(_load(path))


def _kept(path: Path) -> list[int]:
    """Trials whose checkpoint folder survived retention."""
    runs = path.parent / "runs" / _load(path).name
    return sorted(int(p.parent.name.split("-")[1]) for p in runs.glob("trial-*/checkpoint-*"))


def _best_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["best", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _report_summary(path: Path, folder: Path) -> dict:
    assert main(["report", str(path), "-o", str(folder / "report")]) == 0
    return json.loads((folder / "report" / "summary.json").read_text())


# --- the three bugs ----------------------------------------------------------------------


def test_report_names_the_best_trial_that_meets_the_constraints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = constrained_study(tmp_path)
    assert main(["run", str(path)]) == 0

    assert _best_json(path, capsys)["trial"] == CONSTRAINED_BEST
    assert _report_summary(path, tmp_path)["best"]["number"] == CONSTRAINED_BEST


def test_retention_keeps_the_best_feasible_trials_checkpoint_so_export_finds_it(
    tmp_path: Path,
) -> None:
    path = constrained_study(tmp_path, keep=1)
    assert main(["run", str(path)]) == 0

    assert _kept(path) == [CONSTRAINED_BEST]
    assert main(["export", str(path), "--to", str(tmp_path / "model")]) == 0
    facts = json.loads((tmp_path / "model" / "hpo_export.json").read_text())
    assert facts["trial"] == CONSTRAINED_BEST


def test_retention_keeps_the_best_infeasible_checkpoints_while_too_few_trials_are_feasible(
    tmp_path: Path,
) -> None:
    """Constraints live in the study file and may be relaxed after the run: with no
    feasible trial, retention keeps the best trial by the objective, which export then
    finds."""
    path = constrained_study(tmp_path, keep=1)
    path.write_text(path.read_text().replace("max: 10}", "max: 1}"))  # none meets it
    assert main(["run", str(path)]) == 0

    assert _kept(path) == [5]  # the best eval_accuracy, 0.95

    path.write_text(path.read_text().replace("max: 1}", "max: 100}"))  # relaxed
    assert main(["export", str(path), "--to", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "hpo_export.json").read_text())["trial"] == 5


def test_a_grid_study_with_a_failed_point_is_finished_for_the_sweep_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "grid.yaml").write_text(
        "name: grid\n"
        f"storage: sqlite:///{tmp_path}/hpo.db\n"
        "seed: 1\n"
        "sampler: {type: grid}\n"
        "budget: {n_trials: 10, max_failures: 3}\n"
        "trainer: {ref: 'tests.fake_trainers:fail_when_dropout_high', "
        "args: {num_train_epochs: 1}}\n"
        "search_space:\n"
        "  dropout: {type: categorical, choices: [0.0, 0.1, 0.3]}\n",
        encoding="utf-8",
    )
    (tmp_path / "sweep.yaml").write_text("studies: [grid.yaml]\n", encoding="utf-8")
    assert main(["run", "grid.yaml"]) == 0  # two points complete, dropout 0.3 fails
    capsys.readouterr()

    assert main(["sweep", "sweep.yaml", "--dry-run", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["studies"]
    assert row["remaining"] == 0
    assert main(["sweep", "sweep.yaml"]) == 0
    assert "all 1 studies are already finished; nothing to run" in capsys.readouterr().out


def test_a_sweeps_closing_line_reads_the_storage_without_creating_it(tmp_path: Path) -> None:
    from hpo.sweep import _outcome

    config = _load(constrained_study(tmp_path, name="never-ran"))

    outcome = _outcome(config)

    assert outcome.finished == 0 and outcome.best_number is None
    assert not (tmp_path / "hpo.db").exists()


# --- one study, every reader -------------------------------------------------------------


def _every_readers_best(
    path: Path, folder: Path, capsys: pytest.CaptureFixture[str], top: int
) -> dict[str, object]:
    """What each reader of the stored study calls its best (a list: its best ``top``)."""
    from hpo.console import LiveView
    from hpo.narrow import top_trials
    from hpo.warmstart import best_points

    config = _load(path)
    study = _stored(path)
    trials = study.get_trials(deepcopy=False)
    best = _best_json(path, capsys)
    report = _report_summary(path, folder)
    view = LiveView(None, config.name, 6, "eval_accuracy", config)
    view.read(study)
    warm_start = f"warm_start={{from: {config.name}, top_k: {top}}}"
    warm = _load(path, [f"name={config.name}-2", warm_start])
    capsys.readouterr()
    code = main(["export", str(path), "--to", str(folder / "model")])
    err = capsys.readouterr().err
    if code == 0:
        exported: object = json.loads((folder / "model" / "hpo_export.json").read_text())["trial"]
    elif "front: " in err:  # several objectives: export asks for one of the front
        exported = sorted(int(n) for n in err.split("front: ")[1].split(";")[0].split(", "))
    else:
        exported = err.strip()
    return {
        "hpo best": (
            [row["number"] for row in best["pareto_front"]]
            if "pareto_front" in best
            else best["trial"]
        ),
        "hpo report": (
            report["best"]["number"]
            if "best" in report
            else [row["number"] for row in report["pareto_front"]]
        ),
        "retention": _kept(path),
        "export": exported,
        "narrow": [t.number for t in top_trials(study, config, top)],
        "warm start": [number for number, _ in best_points(study, warm)],
        "led when it finished": [t.number for t in trials if t.user_attrs.get("hpo:led")],
        "live line": view.best_trial,
    }


def test_every_reader_names_the_same_best_trial_of_a_constrained_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = constrained_study(tmp_path, keep=1)
    assert main(["run", str(path)]) == 0

    found = _every_readers_best(path, tmp_path, capsys, top=1)

    one = CONSTRAINED_BEST
    # Trials lead when they finish unless a finished feasible trial beats them: trial 0 led
    # (the first), then trial 2; 1 and 5 break the constraint, 3 and 4 are beaten.
    assert found == {
        "hpo best": one,
        "hpo report": one,
        "retention": [one],
        "export": one,
        "narrow": [one],
        "warm start": [one],
        "led when it finished": [0, one],
        "live line": one,
    }


def test_every_reader_names_the_same_front_of_a_study_with_several_objectives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = several_study(tmp_path)
    assert main(["run", str(path)]) == 0

    found = _every_readers_best(path, tmp_path, capsys, top=len(SEVERAL_FRONT))

    front = SEVERAL_FRONT
    assert found == {
        "hpo best": front,
        "hpo report": front,
        "retention": front,
        "export": front,
        "narrow": front,
        "warm start": front,
        "led when it finished": front,
        # The live line shows one number: the front's best trial in the first objective.
        "live line": 1,
    }


def test_with_several_objectives_only_trials_that_break_a_constraint_fill_the_kept_slots(
    tmp_path: Path,
) -> None:
    """A front smaller than K is topped up with the best infeasible trials, never with
    feasible trials off the front (they can never be exported as best)."""
    from optuna.trial import create_trial

    from hpo.ranking import kept_trials

    config = _load(several_study(tmp_path))
    trials = []
    for number, row in enumerate(SEVERAL):
        trial = create_trial(
            values=[row["eval_accuracy"], row["latency_ms"]], user_attrs={"hpo:metrics": row}
        )
        trial.number = number
        trials.append(trial)

    # Trial 3 alone breaks the constraint; 4 and 5 are feasible but off the front.
    assert [t.number for t in kept_trials(trials, config, 5)] == [*SEVERAL_FRONT, 3]
