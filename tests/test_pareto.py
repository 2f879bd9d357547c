"""Several objectives: config checks, the Pareto front in best/status, constraints, resume,
workers and warm start, on the toy trainer and real SQLite (the real-model path is in
tests/test_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.ranking import non_dominated
from hpo.runner import run_study
from tests.conftest import run_hpo

MULTI = """\
name: {name}
storage: sqlite:///{db}
seed: 7
objective:
  - {{metric: eval_accuracy, direction: maximize}}
  - {{metric: latency_ms, direction: minimize}}
{extra}sampler: {sampler}
budget: {{n_trials: {n_trials}}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 2}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
  size: {{type: categorical, choices: [0.5, 1.0, 2.0, 4.0]}}
"""


def multi(
    tmp_path: Path,
    name: str = "multi",
    sampler: str = "{type: nsga2, population_size: 4}",
    n_trials: int = 12,
    extra: str = "",
) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        MULTI.format(
            name=name, db=tmp_path / "hpo.db", sampler=sampler, n_trials=n_trials, extra=extra
        )
    )
    return path


def stored(path: Path) -> optuna.Study:
    config = load_study(path)
    return optuna.load_study(study_name=config.name, storage=config.storage)


def test_list_objective_makes_a_multi_objective_study_and_best_prints_its_front(
    tmp_path: Path,
) -> None:
    path = multi(tmp_path)
    result = run_hpo("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "Pareto front:" in result.stdout
    study = stored(path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["eval_accuracy", "latency_ms"]  # shown by optuna-dashboard
    best = run_hpo("best", str(path), "--json")
    assert best.returncode == 0, best.stderr
    front = json.loads(best.stdout)["pareto_front"]
    expected = sorted(t.number for t in study.best_trials)  # Optuna's own front
    assert [row["number"] for row in front] == expected
    by_number = {t.number: t for t in study.trials}
    for row in front:
        trial = by_number[row["number"]]
        assert row["values"] == {"eval_accuracy": trial.values[0], "latency_ms": trial.values[1]}
        assert row["params"] == trial.params and "test_accuracy" in row["metrics"]
    assert len({row["params"]["size"] for row in front}) >= 2  # a real trade-off
    table = run_hpo("best", str(path)).stdout
    assert "trial" in table and "eval_accuracy" in table and "latency_ms" in table


def test_constraints_reach_the_sampler_and_keep_the_front_feasible(tmp_path: Path) -> None:
    extra = "constraints:\n  - {metric: latency_ms, max: 5}\n"
    path = multi(tmp_path, sampler="{type: tpe, n_startup_trials: 4}", extra=extra)
    assert run_hpo("run", str(path)).returncode == 0
    study = stored(path)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    # Every trial carries its constraint values, which the sampler reads.
    assert all(t.constraints == {"0:latency_ms": t.values[1] - 5} for t in complete)
    assert any(t.values[1] > 5 for t in complete)  # some trials were infeasible...
    front = json.loads(run_hpo("best", str(path), "--json").stdout)["pareto_front"]
    assert front and all(row["values"]["latency_ms"] <= 5 for row in front)  # ...none on it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pruner={type: median}", "pruner: Optuna cannot prune a study with several objectives"),
        ("sampler={type: cmaes}", "sampler: cmaes optimizes one objective"),
        ("keep_checkpoints=2", "keep_checkpoints: ranks trials by one objective"),
        (
            "constraints=[{metric: latency_ms}]",
            "constraints.0: give `max` or `min` for 'latency_ms'",
        ),
    ],
)
def test_what_several_objectives_cannot_do_is_exit_2(
    tmp_path: Path, change: str, message: str
) -> None:
    result = run_hpo("validate", str(multi(tmp_path)), "--set", change)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_single_objective_output_is_unchanged(toy_study) -> None:
    path = toy_study(n_trials=3)
    assert run_hpo("run", str(path)).returncode == 0
    data = json.loads(run_hpo("best", str(path), "--json").stdout)
    assert set(data) == {"study", "trial", "value", "params", "metrics"}


def test_resume_and_two_workers_complete_the_total(tmp_path: Path) -> None:
    path = multi(tmp_path, sampler="{type: random}", n_trials=4)
    assert run_study(load_study(path)).finished == 4
    more = load_study(path, ["budget.n_trials=8"])
    summary = run_study(more, workers=2)
    assert summary.finished == 8 and summary.pareto_front
    assert all(len(t.values) == 2 for t in stored(path).trials)


def test_a_changed_number_of_objectives_is_refused_on_resume(tmp_path: Path) -> None:
    path = multi(tmp_path, sampler="{type: random}", n_trials=2)
    run_study(load_study(path))
    result = run_hpo("run", str(path), "--set", "objective={metric: eval_accuracy}")
    assert result.returncode == 2
    assert "objective: the stored study 'multi' optimizes 2 objective(s)" in result.stderr


def test_warm_start_from_several_objectives_enqueues_the_pareto_front(tmp_path: Path) -> None:
    source = multi(tmp_path, name="broad", sampler="{type: random}", n_trials=8)
    run_study(load_study(source))
    front = non_dominated(
        [t for t in stored(source).trials if t.state.name == "COMPLETE"],
        ["maximize", "minimize"],
    )
    extra = "warm_start: {from: broad, top_k: 10}\n"
    target = multi(tmp_path, name="narrow", sampler="{type: random}", n_trials=10, extra=extra)
    run_study(load_study(target))
    first = stored(target).trials[: len(front)]
    assert [t.params for t in first] == [t.params for t in front]


def test_export_needs_a_trial_with_several_objectives(tmp_path: Path) -> None:
    path = multi(tmp_path, sampler="{type: random}", n_trials=3)
    assert run_hpo("run", str(path)).returncode == 0
    result = run_hpo("export", str(path), "--to", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "several objectives, so no single best trial" in result.stderr
    assert "--trial N (front: " in result.stderr


def test_report_draws_the_front_by_model_and_compares_the_models(tmp_path: Path) -> None:
    extra = "constraints:\n  - {metric: latency_ms, max: 12}\n"
    path = multi(tmp_path, sampler="{type: random}", n_trials=10, extra=extra)
    text = path.read_text().replace(
        "  size: {type: categorical, choices: [0.5, 1.0, 2.0, 4.0]}",
        "  size: {type: categorical, choices: [0.5, 1.0, 2.0, 4.0]}\n"
        "  model: {type: categorical, choices: [small-model, large-model]}",
    )
    path.write_text(text)
    assert run_hpo("run", str(path)).returncode == 0
    result = run_hpo("report", str(path), "-o", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    front = json.loads(run_hpo("best", str(path), "--json").stdout)["pareto_front"]
    assert [r["number"] for r in summary["pareto_front"]] == [r["number"] for r in front]
    study = stored(path)
    rows = {m["model"]: m for m in summary["models"]}
    assert set(rows) == {"small-model", "large-model"}
    for model, row in rows.items():
        mine = [t for t in study.trials if t.params["model"] == model]
        feasible = [t for t in mine if t.state.name == "COMPLETE" and t.values[1] <= 12]
        assert row["trials"] == len(mine)
        assert row["on_front"] == sum(r["model"] == model for r in front)
        assert row["best"]["eval_accuracy"] == max(t.values[0] for t in feasible)
        assert row["best"]["latency_ms"] == min(t.values[1] for t in feasible)
        assert set(row["cost"]) == {"latency_ms"}  # the toy reports no parameter count
    page = (tmp_path / "report" / "report.html").read_text()
    assert front
    for model, row in rows.items():  # a trace per model and kind, only where it has points
        mine = [t for t in study.trials if t.params["model"] == model]
        feasible = [t for t in mine if t.state.name == "COMPLETE" and t.values[1] <= 12]
        assert (f"{model}, on the front" in page) == (row["on_front"] > 0)
        assert (f"{model}, dominated" in page) == (len(feasible) > row["on_front"])
    assert "infeasible" in page  # a size of 4 breaks the latency limit: drawn grey


def test_a_sweep_of_studies_with_several_objectives_runs_and_reruns(tmp_path: Path) -> None:
    multi(tmp_path, name="base", sampler="{type: random}", n_trials=3)
    (tmp_path / "sweep.yaml").write_text(
        "base: base.yaml\nmatrix: {sampler.type: [random, nsga2]}\n"
    )
    for _ in range(2):  # the second call finds both finished and says so
        result = run_hpo("sweep", str(tmp_path / "sweep.yaml"), "--no-compare")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr
    assert "already finished" in result.stdout


def test_one_objective_with_no_feasible_trial_is_no_crash(toy_study) -> None:
    # toy's latency_ms is 4 * size = 4: a 1 ms limit leaves no feasible trial.
    path = toy_study(n_trials=3)
    limit = ["--set", "constraints=[{metric: latency_ms, max: 1}]"]
    result = run_hpo("run", str(path), *limit)
    assert result.returncode == 0, result.stderr
    assert "no completed trial that meets the constraints yet" in result.stdout
    assert "best 0." not in result.stderr  # the progress line shows no infeasible best
    best = run_hpo("best", str(path), *limit)
    assert best.returncode == 1
    assert "has no completed trial that meets the constraints yet" in best.stderr
    assert run_hpo("status", str(path), *limit).returncode == 0
    feasible = run_hpo(
        "best", str(path), "--json", "--set", "constraints=[{metric: latency_ms, max: 9}]"
    )
    assert feasible.returncode == 0 and json.loads(feasible.stdout)["value"] is not None
