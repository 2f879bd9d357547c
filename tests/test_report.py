"""Reports and strategy comparisons: pure data builders, then real SQLite studies via the CLI."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.config import load_study
from hpo.dashboards import data as d
from hpo.dashboards.report import build_report
from tests.conftest import run_hpo

T0 = datetime(2026, 1, 1, 12, 0, 0)


def record(
    number: int, state: str = "COMPLETE", value: float | None = None, **kw
) -> d.TrialRecord:
    return d.TrialRecord(number=number, state=state, value=value, **kw)


# --- data builders -------------------------------------------------------------------


def test_best_so_far_keeps_the_running_best_for_either_direction() -> None:
    records = [
        record(0, value=0.5),
        record(1, "PRUNED"),
        record(2, value=0.7),
        record(3, value=0.6),
        record(4, "FAIL"),
        record(5, value=0.9),
    ]
    up = d.best_so_far(records, "maximize")
    assert up.numbers == [0, 2, 3, 5]
    assert up.values == [0.5, 0.7, 0.6, 0.9]
    assert up.best == [0.5, 0.7, 0.7, 0.9]
    assert d.best_so_far(records, "minimize").best == [0.5, 0.5, 0.5, 0.5]
    # Only trials that may be best (hpo.ranking.feasible) move it; a gap before the first.
    feasible = d.best_so_far(records, "maximize", feasible={2, 3})
    assert str(feasible.best) == "[nan, 0.7, 0.7, 0.7]"


def test_learning_curves_end_where_pruned_trials_stopped() -> None:
    records = [
        record(0, value=0.8, intermediate=((1, 0.5), (2, 0.7), (3, 0.8))),
        record(1, "PRUNED", intermediate=((1, 0.3),)),
        record(2, "FAIL"),  # never reported: no curve
    ]
    curves = d.learning_curves(records, best_number=0)
    assert [(c.number, c.state, c.steps, c.values, c.best) for c in curves] == [
        (0, "COMPLETE", [1, 2, 3], [0.5, 0.7, 0.8], True),
        (1, "PRUNED", [1], [0.3], False),
    ]


def test_compute_totals_count_finished_trials_only() -> None:
    records = [
        record(
            0,
            value=0.8,
            duration_s=10.0,
            epochs=3,
            started=T0,
            completed=T0 + timedelta(seconds=10),
        ),
        record(
            1, "PRUNED", duration_s=4.0, epochs=1, started=T0, completed=T0 + timedelta(seconds=4)
        ),
        record(
            2, "FAIL", duration_s=1.0, epochs=0, started=T0, completed=T0 + timedelta(seconds=30)
        ),
        record(3, "RUNNING", epochs=2, started=T0 + timedelta(seconds=5)),
    ]
    totals = d.compute_totals(records)
    assert (totals.trials, totals.total_seconds, totals.total_epochs) == (3, 15.0, 4.0)
    assert totals.mean_seconds == pytest.approx(5.0)
    assert totals.mean_epochs == pytest.approx(4 / 3)
    assert totals.wall_seconds == 30.0
    assert d.count_by_state(records) == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1, "RUNNING": 1}


def test_compute_curve_follows_completion_order_and_reach_finds_the_first_match() -> None:
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    records = [
        record(0, value=0.6, epochs=3, duration_s=30, completed=at(30)),
        record(1, "PRUNED", epochs=1, duration_s=8, completed=at(10)),
        record(2, value=0.9, epochs=3, duration_s=20, completed=at(60)),
        record(3, "RUNNING", epochs=2),
    ]
    curve = d.compute_curve(records, "maximize")
    assert curve.numbers == [1, 0, 2]
    assert curve.epochs == [1, 4, 7]
    assert curve.seconds == [8, 38, 58]
    assert curve.best == [None, 0.6, 0.9]
    assert d.compute_to_reach(curve, 0.6, "maximize") == d.Reach(trials=2, epochs=4, seconds=38)
    assert d.compute_to_reach(curve, 0.85, "maximize") == d.Reach(trials=3, epochs=7, seconds=58)
    assert d.compute_to_reach(curve, 0.95, "maximize") is None
    assert d.compute_to_reach(d.compute_curve(records, "minimize"), 0.7, "minimize").trials == 2


def test_worker_timeline_has_one_span_per_started_trial() -> None:
    now = T0 + timedelta(minutes=5)
    records = [
        record(0, worker="a:1", started=T0, completed=T0 + timedelta(seconds=3)),
        record(1, "RUNNING", worker="b:2", started=T0 + timedelta(seconds=1)),
        record(2, "WAITING"),
    ]
    spans = d.worker_timeline(records, now)
    assert [(s.worker, s.number, s.end) for s in spans] == [
        ("a:1", 0, T0 + timedelta(seconds=3)),
        ("b:2", 1, now),
    ]


def test_error_analysis_parses_the_trainer_attribute() -> None:
    attr = {
        "labels": ["neg", "pos"],
        "confusion_matrix": [[8, 2], [1, 9]],
        "confident_errors": [
            {"text": "meh", "label": "pos", "predicted": "neg", "confidence": 0.7},
            {"text": "great?", "label": "neg", "predicted": "pos", "confidence": 0.95},
        ],
    }
    analysis = d.error_analysis(attr)
    assert analysis.total == 20
    assert analysis.accuracy == pytest.approx(0.85)
    assert analysis.recall == {"neg": pytest.approx(0.8), "pos": pytest.approx(0.9)}
    assert [e["confidence"] for e in analysis.errors] == [0.95, 0.7]
    assert d.error_analysis(None) is None
    assert d.error_analysis({"labels": ["a", "b"], "confusion_matrix": [[1]]}) is None


def test_trial_records_fall_back_to_timestamps_and_reported_steps() -> None:
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    plain = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED,
        params={"x": 0.5},
        distributions={"x": distribution},
        intermediate_values={1: 0.2, 2: 0.4},
    )
    plain.number = 0
    plain.datetime_start, plain.datetime_complete = T0, T0 + timedelta(seconds=12)
    hpo = optuna.trial.create_trial(
        value=0.9,
        params={"x": 0.1},
        distributions={"x": distribution},
        user_attrs={
            "hpo:duration_s": 3.5,
            "hpo:epochs": 2.5,
            "hpo:worker": "h:9",
            "hpo:metrics": {"eval_accuracy": 0.9, "test_accuracy": 0.8, "eval_runtime": 1.0},
        },
    )
    hpo.number = 1
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL)
    failed.number = 2
    records = d.trial_records([hpo, plain, failed], {"hpo:lost": [2]})
    assert [r.number for r in records] == [0, 1, 2]
    assert (records[0].duration_s, records[0].epochs, records[0].value) == (12.0, 2.0, None)
    assert (records[1].duration_s, records[1].epochs, records[1].worker) == (3.5, 2.5, "h:9")
    assert records[2].failure == "worker_lost"
    assert d.split_metrics(records[1].metrics) == ({"eval_accuracy": 0.9}, {"test_accuracy": 0.8})
    rows = d.trial_rows(records)
    assert rows[1]["params_x"] == 0.1 and rows[1]["test_accuracy"] == 0.8
    assert rows[0]["state"] == "PRUNED" and rows[0]["value"] is None


# --- adapters: full fine-tuning against LoRA at several ranks ---------------------------

LORA_8 = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "targets": ["query", "value"]}
ADAPTERS = [{"type": "none"}, {**LORA_8, "r": 4}, LORA_8, LORA_8]


def adapter_trials() -> list:
    """Full fine-tuning, LoRA r=4, and LoRA r=8 twice, as the HF trainers store them:
    (accuracy, trainable parameters) each, hpo:adapter and the cost metrics."""
    distribution = optuna.distributions.CategoricalDistribution([4, 8])
    values = [(0.90, 22e6), (0.86, 0.1e6), (0.88, 0.2e6), (0.80, 0.2e6)]
    trials = []
    for number, (adapter, (accuracy, trainable)) in enumerate(zip(ADAPTERS, values, strict=True)):
        trial = optuna.trial.create_trial(
            values=[accuracy, trainable],
            params={"adapter.r": adapter.get("r", 8)},
            distributions={"adapter.r": distribution},
            user_attrs={
                "hpo:adapter": adapter,
                "hpo:metrics": {"eval_accuracy": accuracy, "trainable_parameters": trainable},
            },
        )
        trial.number = number
        trials.append(trial)
    return trials


def test_the_report_data_names_each_trials_adapter_type_and_rank() -> None:
    records = d.trial_records(adapter_trials(), {})
    assert [d.adapter_label(r.adapter) for r in records] == [
        "full", "LoRA r=4", "LoRA r=8", "LoRA r=8"]  # fmt: skip
    models = dict.fromkeys(range(4), "minilm-l6")
    # The Pareto plot's colours, legend and hover: the model and what trained on it.
    assert d.model_labels(records, models) == {
        0: "minilm-l6 · full",
        1: "minilm-l6 · LoRA r=4",
        2: "minilm-l6 · LoRA r=8",
        3: "minilm-l6 · LoRA r=8",
    }
    objectives = [("eval_accuracy", "maximize"), ("trainable_parameters", "minimize")]
    rows = d.model_comparison(records, models, objectives, {0, 1, 2, 3}, {0, 1, 2})
    assert [(r.model, r.adapter, r.trials, r.best_trial) for r in rows] == [
        ("minilm-l6", "full", 1, 0),
        ("minilm-l6", "LoRA r=8", 2, 2),
        ("minilm-l6", "LoRA r=4", 1, 1),
    ]
    assert rows[2].cost == {"trainable_parameters": 0.1e6}
    # A study of full fine-tunes only (or a trainer with no adapters) says nothing of them.
    plain = [record(0, values=(0.9, 1.0)), record(1, values=(0.8, 2.0), adapter={"type": "none"})]
    assert d.model_labels(plain, {0: "m", 1: "m"}) == {0: "m", 1: "m"}
    assert [r.adapter for r in d.model_comparison(plain, {0: "m", 1: "m"}, objectives,
                                                  {0, 1}, {0})] == [""]  # fmt: skip


def test_the_report_of_an_adapter_study_shows_adapter_and_rank_in_front_and_tables(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(
        study_name="lora", storage=storage, directions=["maximize", "minimize"]
    )
    study.add_trials(adapter_trials())
    study_file = tmp_path / "lora.yaml"
    study_file.write_text(
        f"name: lora\nstorage: {storage}\nbudget: {{n_trials: 4}}\n"
        "objective:\n  - {metric: eval_accuracy, direction: maximize}\n"
        "  - {metric: trainable_parameters, direction: minimize}\n"
        "trainer: {ref: trainers.toy:train, args: {model: minilm-l6}}\n"
        "search_space: {learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3}}\n"
    )
    build_report(load_study(study_file), tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [(r["number"], r["adapter"]) for r in summary["pareto_front"]] == [
        (0, "full"), (1, "LoRA r=4"), (2, "LoRA r=8")]  # fmt: skip
    assert {(m["adapter"], m["on_front"]) for m in summary["models"]} == {
        ("full", 1), ("LoRA r=4", 1), ("LoRA r=8", 1)}  # fmt: skip
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<th>adapter</th>" in page and "<td>LoRA r=4</td>" in page
    # The Pareto plot's legend, and its hover (the trace's name beside each point).
    for trace in ("minilm-l6 · LoRA r=8, dominated", "minilm-l6 · full, on the front"):
        assert trace in page
    assert "\\u003cextra\\u003eminilm-l6 · LoRA r=4\\u003c" in page


# --- real studies ----------------------------------------------------------------------


def run(study_file: Path, *extra: str) -> None:
    assert main(["run", str(study_file), *extra]) == 0


def stored(tmp_path: Path, name: str = "toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'hpo.db'}")


def system_attrs(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def add_odd_trials(study: optuna.Study) -> None:
    """A failed trial, one whose worker died, and one still running, as hpo leaves them."""
    failed = study.ask()
    failed.set_user_attr("hpo:failure", "oom")
    failed.set_user_attr("hpo:failure_message", "OutOfMemoryError: CUDA out of memory")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    lost = study.ask()
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    study.set_user_attr("hpo:lost", [lost.number])
    running = study.ask(
        {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
    )
    running.report(0.6, 1)


def test_report_of_a_study_with_failed_pruned_and_running_trials(
    toy_study, tmp_path: Path, capsys
) -> None:
    study_file = toy_study(n_trials=12)
    study_file.write_text(study_file.read_text() + "pruner: {type: median, n_startup_trials: 2}\n")
    run(study_file)
    add_odd_trials(stored(tmp_path))

    assert main(["report", str(study_file), "--attach"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "dashboards" / "toy"
    assert f"{Path('dashboards/toy/report.html')}" in out
    summary = json.loads((folder / "summary.json").read_text())
    states = summary["trials_by_state"]
    assert states["FAIL"] == 2 and states["RUNNING"] == 1
    assert states["COMPLETE"] + states.get("PRUNED", 0) == 12
    assert {f["reason"] for f in summary["failures"]} == {"oom", "worker_lost"}
    # The same table as `hpo status`: failed with why, running with where.
    attention = {a["number"]: a for a in summary["attention"]}
    assert sorted(a["reason"] or a["state"] for a in attention.values()) == [
        "RUNNING",
        "oom",
        "worker_lost",
    ]
    failed = next(a for a in attention.values() if a["reason"] == "oom")
    assert failed["message"] == "OutOfMemoryError: CUDA out of memory"
    assert f"trial {failed['number']} FAILED (oom): OutOfMemoryError: CUDA out of memory" in out
    assert "RUNNING on" in out
    page = (folder / "report.html").read_text()
    assert "Trials needing attention" in page and "last heartbeat" in page
    best = stored(tmp_path).best_trial
    assert summary["best"]["number"] == best.number
    assert summary["best"]["value"] == pytest.approx(best.value)
    assert summary["best"]["params"] == pytest.approx(best.params)
    assert set(summary["best"]["test_metrics"]) == {"test_accuracy"}
    assert summary["sampler"]["type"] == "random" and summary["pruner"]["type"] == "median"
    assert summary["compute"]["total_epochs"] == pytest.approx(
        sum(
            t.user_attrs.get("hpo:epochs", 0)
            for t in stored(tmp_path).trials
            if t.state.is_finished()
        )
    )
    assert summary["error_analysis"] is None
    with (folder / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and {"params_learning_rate", "params_dropout", "epochs"} <= set(rows[0])
    page = (folder / "report.html").read_text()
    assert "<script src=" not in page and "<link" not in page  # everything inline
    for div in (
        "fig-history",
        "fig-learning_curves",
        "fig-importances",
        "fig-parallel",
        "fig-slice",
        "fig-contour",
        "fig-timeline",
    ):
        assert f'id="{div}"' in page
    assert "no confusion matrix" in page and "CUDA out of memory" in page
    # --attach put the figures into the study too, where optuna-dashboard lists them.
    assert "dashboard:plot_data:hpo-report-history:0" in system_attrs(stored(tmp_path))


def test_report_of_a_single_trial_study(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=1)
    run(study_file)
    out = tmp_path / "single"
    assert main(["report", str(study_file), "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials_by_state"] == {"COMPLETE": 1}
    assert summary["importances"] == {}
    assert summary["importance_method"] == "needs at least 2 completed trials"
    page = (out / "report.html").read_text()
    assert 'id="fig-history"' in page and 'id="fig-contour"' not in page
    assert "No contour" in page


def test_report_of_a_study_whose_trials_all_failed_says_why(toy_study, tmp_path: Path) -> None:
    """The report a user needs most: every trial failed, and the table says why."""
    study_file = toy_study(n_trials=3)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:disk_quota")
    )
    assert run_hpo("run", str(study_file)).returncode == 1  # max_failures: 3
    result = run_hpo("report", str(study_file))
    assert result.returncode == 0, result.stderr
    assert "report of study 'toy' (3 fail)" in result.stdout
    for number in range(3):
        line = f"trial {number} FAILED (exception): RuntimeError: disk quota exceeded on /scratch"
        assert line in result.stdout
    folder = tmp_path / "dashboards" / "toy"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials_by_state"] == {"FAIL": 3} and summary["best"] is None
    assert [a["reason"] for a in summary["attention"]] == ["exception"] * 3
    assert [f["number"] for f in summary["failures"]] == [0, 1, 2]
    with (folder / "trials.csv").open() as handle:
        assert [row["state"] for row in csv.DictReader(handle)] == ["FAIL"] * 3
    page = (folder / "report.html").read_text()
    assert "Trials needing attention" in page and "disk quota exceeded on /scratch" in page
    assert "No trial has completed yet" in page
    assert 'id="fig-timeline"' in page  # figures that need completed trials are left out
    for div in ("fig-history", "fig-parallel", "fig-slice", "fig-importances"):
        assert f'id="{div}"' not in page


def test_report_of_several_objectives_whose_trials_all_failed(tmp_path: Path) -> None:
    from tests.test_pareto import multi

    path = multi(tmp_path, sampler="{type: random}", n_trials=2)
    path.write_text(
        path.read_text().replace("trainers.toy:train", "tests.fake_trainers:always_fail")
    )
    assert run_hpo("run", str(path), "--set", "budget.max_failures=2").returncode == 1
    result = run_hpo("report", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "dashboards" / "multi" / "summary.json").read_text())
    assert summary["pareto_front"] == [] and len(summary["attention"]) == 2
    assert "trial 1 FAILED (exception): ValueError: simulated bug" in result.stdout


def test_report_of_a_study_without_trials_is_one_line_and_writes_nothing(
    toy_study, tmp_path: Path, capsys
) -> None:
    study_file = toy_study()
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert main(["report", str(study_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "hpo: error: study 'toy' has no trials yet; nothing to report. "
        f"Run it first: hpo run {study_file}"
    )
    study.ask()  # a running trial: the report shows it, a comparison has nothing to compare
    assert main(["compare", str(study_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpo: error: study 'toy' has no completed trial yet (1 running)")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "dashboards").exists()


def test_report_of_a_missing_study_or_file_exits_2(toy_study, tmp_path: Path) -> None:
    study_file = toy_study()
    result = run_hpo("report", str(study_file))
    assert result.returncode == 2
    assert result.stderr.startswith("hpo: error: no study 'toy': no hpo study database at /")
    assert "Traceback" not in result.stderr
    missing = run_hpo("compare", str(study_file), "nope.yaml")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "hpo: error: nope.yaml: file not found; check the path"
    assert not (tmp_path / "dashboards").exists()


def test_report_shows_the_best_trials_error_analysis(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=3)
    run(study_file)
    study = stored(tmp_path)
    params = study.best_trial.params
    best = study.ask(study.best_trial.distributions)
    best.set_user_attr(
        "hpo:error_analysis",
        {
            "labels": ["negative", "positive"],
            "confusion_matrix": [[5, 1], [2, 4]],
            "confident_errors": [
                {
                    "text": "<b>not</b> bad",
                    "label": "positive",
                    "predicted": "negative",
                    "confidence": 0.91,
                },
            ],
        },
    )
    assert set(best.params) == set(params)
    study.tell(best, 1.0)  # above any toy accuracy: the best trial
    report = build_report(load_study(study_file), tmp_path / "out")
    assert report.summary["best"]["number"] == best.number
    assert report.summary["error_analysis"]["matrix"] == [[5, 1], [2, 4]]
    assert "confusion" in report.figures
    heatmap = report.figures["confusion"].data[0]
    assert list(heatmap.z[0]) == [2, 4]  # drawn bottom-up: the last true label on top
    page = report.html.read_text()
    assert "&lt;b&gt;not&lt;/b&gt; bad" in page and "<b>not</b> bad" not in page
    assert "accuracy 75.0%" in page


def test_large_studies_are_drawn_from_a_sample(toy_study, tmp_path: Path, monkeypatch) -> None:
    import hpo.dashboards.importance
    import hpo.dashboards.report

    monkeypatch.setattr(
        hpo.dashboards.report, "DRAW_SAMPLE", {"parallel": 8, "slice": 30, "contour": 6}
    )
    monkeypatch.setattr(hpo.dashboards.importance, "FANOVA_SAMPLE", 10)
    study_file = toy_study(n_trials=20)
    run(study_file)
    report = build_report(load_study(study_file), tmp_path / "out", save_to_study=False)
    assert report.summary["importance_method"] == (
        "fANOVA, 32 trees, sample of 10 of 20 completed trials"
    )
    # Optuna draws one line trace per trial in its parallel coordinates.
    assert sum(t.mode == "lines" for t in report.figures["parallel"].data) == 8
    assert len(report.figures["slice"].data[0].x) == 20
    # The history and learning curves always show every trial.
    assert len(report.figures["history"].data[0].x) == 20
    assert "seeded sample of its 20 completed trials (parallel 8, contour 6;" in (
        report.html.read_text()
    )
    assert "dashboard:plot_data:hpo-report-history:0" not in system_attrs(stored(tmp_path))


GRID_TOY = """\
name: {name}
storage: sqlite:///{db}
seed: 3
sampler: {sampler}
{pruner}
budget: {{n_trials: 9}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 3}}}}
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-5, 1.0e-4, 1.0e-3]}}
  dropout: {{type: float, low: 0.0, high: 0.2, step: 0.1}}
"""


def strategy_file(tmp_path: Path, name: str, sampler: str, pruner: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        GRID_TOY.format(name=name, db=tmp_path / "hpo.db", sampler=sampler, pruner=pruner)
    )
    return path


def test_compare_strategies_against_random_search(tmp_path: Path, capsys) -> None:
    files = [
        strategy_file(tmp_path, "grid", "{type: grid}"),
        # Random sampling with a pruner is Hyperband, not the plain random baseline.
        strategy_file(tmp_path, "hyperband", "{type: random}", "pruner: {type: hyperband}"),
        strategy_file(tmp_path, "random", "{type: random}"),
        strategy_file(
            tmp_path, "tpe", "{type: tpe, n_startup_trials: 3}", "pruner: {type: median}"
        ),
    ]
    for path in files:
        run(path)
    assert main(["compare", *map(str, files), "-o", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "comparison: " in out and "random (random): best" in out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["baseline"] == "random" and data["metric"] == "eval_accuracy"
    random_best = stored(tmp_path, "random").best_value
    assert data["target"] == pytest.approx(random_best)
    by_name = {s["name"]: s for s in data["studies"]}
    assert [s["sampler"] for s in data["studies"]] == ["grid", "random", "random", "tpe"]
    # Random search reaches its own best exactly at its best trial's position.
    random_curve = by_name["random"]["curve"]
    first = random_curve["best"].index(random_best)
    assert by_name["random"]["reach"]["epochs"] == random_curve["epochs"][first]
    for study in data["studies"]:
        curve = study["curve"]
        trials = stored(tmp_path, study["name"]).trials
        assert curve["epochs"][-1] == pytest.approx(
            sum(t.user_attrs["hpo:epochs"] for t in trials)
        )
        assert curve["best"][-1] == pytest.approx(study["best"])
        reach = study["reach"]
        if reach is not None:
            assert curve["best"][reach["trials"] - 1] >= random_best
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert 'id="fig-epochs"' in page and 'id="fig-seconds"' in page
    assert "epochs to reach" in page


def test_compare_without_random_search_says_so(tmp_path: Path) -> None:
    files = [strategy_file(tmp_path, "grid", "{type: grid}")]
    run(files[0])
    result = run_hpo("compare", str(files[0]), "-o", "cmp")
    assert result.returncode == 0, result.stderr
    assert "no study uses sampler.type: random" in result.stdout
    assert "No study uses the random sampler" in (tmp_path / "cmp" / "compare.html").read_text()


def test_compare_refuses_studies_of_different_objectives(tmp_path: Path, capsys) -> None:
    a = strategy_file(tmp_path, "a", "{type: random}")
    b = strategy_file(tmp_path, "b", "{type: random}")
    b.write_text(b.read_text() + "objective: {metric: eval_loss, direction: minimize}\n")
    run(a)
    run(b)
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"hpo: error: {b}: objective: optimizes eval_loss (minimize) but {a} optimizes "
        "eval_accuracy (maximize); compare studies of one objective"
    )
    assert main(["compare", str(a), str(a)]) == 2
    assert "is also named in" in capsys.readouterr().err


def test_dashboard_on_a_busy_port_is_one_line(toy_study, capsys) -> None:
    import socket

    study_file = toy_study(n_trials=1)
    run(study_file)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert main(["dashboard", str(study_file), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hpo: error: cannot serve on 127.0.0.1:{port}: ")
    assert err.endswith("pick another --port") and len(err.splitlines()) == 1
