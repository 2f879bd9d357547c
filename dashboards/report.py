"""``hpo report``: one study read back, drawn, and written as HTML, CSV and JSON.

The steps stay apart: read the trials once into records, build plain data
(:mod:`dashboards.data`), draw it (:mod:`dashboards.figures`), then write
``report.html``, ``trials.csv`` and ``summary.json`` and save the figures into the
study, where optuna-dashboard shows them.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hpo.dashboards import data as d
from hpo.dashboards.page import (
    Section,
    Thumbnail,
    figure_html,
    format_number,
    key_values,
    render_page,
    table_html,
)
from hpo.dashboards.study import load_stored_study, require_trials, strategy
from hpo.view import StudyView, redact_url

logger = logging.getLogger(__name__)

# Optuna's builders draw at most this many completed trials (a seeded sample that keeps
# the best trial; see sample_study). Its parallel coordinates are one trace per trial,
# slow to render past a few hundred; its contour interpolates on a grid of every distinct
# value pair, so 1,500 trials make a 28 MB figure and 200 about 0.5 MB.
DRAW_SAMPLE = {"parallel": 500, "slice": 2000, "contour": 200}
# The confident-error table lists at most this many examples.
MAX_ERRORS_SHOWN = 20
DASHBOARD_PREFIX = "hpo-report-"


@dataclass
class Report:
    """Where a report was written and what it holds."""

    html: Path
    trials_csv: Path
    summary_json: Path
    summary: dict[str, Any]
    figures: dict[str, Any]


def default_output(config: Any) -> Path:
    """``dashboards/<study name>/`` (git-ignored), relative to the working directory."""
    return Path("dashboards") / _folder_name(config.name)


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def build_report(
    config: Any, output: Path | None = None, *, save_to_study: bool = False
) -> Report:
    """Read the study, draw every figure and write the report files.

    ``save_to_study`` also stores the figures in the study for optuna-dashboard (``hpo
    report --attach``); without it the report only reads the storage.

    A study whose trials all failed (or still run) gets a report too: its summary has no
    best trial, its table of trials needing attention says why, and only the figures that
    draw completed trials are left out.

    Raises:
        StudyStateError: no such study in the storage.
        HpoError: the study has no trials at all; nothing is written.
    """
    view = load_stored_study(config)
    study = view.study
    trials = view.trials
    records = d.trial_records(trials, view.study_attrs)
    counts = d.count_by_state(records)
    require_trials(config, counts)
    how = strategy(view)
    if config.multi_objective:
        return _build_front_report(config, view, records, counts, how, output, save_to_study)
    metric = how["objective"]["metric"]
    direction = how["objective"]["direction"]

    from hpo.dashboards import figures as f
    from hpo.dashboards.importance import param_importances
    from hpo.dashboards.study import sample_study

    # The best trial as hpo best names it: feasible first (constraints), then the value.
    chosen = view.best()
    best = next((r for r in records if chosen and r.number == chosen.number), None)
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    figures: dict[str, Any] = {
        # A failed trial's epochs before it failed are a curve too.
        "learning_curves": f.learning_curves_figure(
            d.learning_curves(records, best.number if best else None), metric
        ),
        "timeline": f.timeline_figure(d.worker_timeline(records, _now(records))),
    }
    importances: dict[str, float] = {}
    importance_how = "needs completed trials"
    analysis = None
    drawn: dict[str, tuple[Any, int]] = {}
    if completed:  # the figures of objective values need a completed trial
        number = best.number if best else None
        importances, importance_how = param_importances(study, completed, number)
        if chosen is not None:
            analysis = d.error_analysis(view.attrs(chosen).error_analysis)
        drawn = {
            name: sample_study(study, completed, limit, number)
            for name, limit in DRAW_SAMPLE.items()
        }
        counted = {t.number for t in view.feasible()}
        figures["history"] = f.history_figure(
            d.best_so_far(records, direction, feasible=counted), metric
        )
        if importances:
            figures["importances"] = f.importance_figure(importances, "fANOVA")
        figures.update(f.optuna_figures({k: s for k, (s, _) in drawn.items()}, list(importances)))
        if isinstance(analysis, d.ErrorAnalysis):
            figures["confusion"] = f.confusion_figure(analysis)

    compute = d.compute_totals(records)
    summary = _summary(config, how, records, best, compute, importances, importance_how)
    summary["attention"] = [line.as_dict() for line in view.attention()]
    summary["error_analysis"] = asdict(analysis) if analysis else None
    n_complete = counts.get("COMPLETE", 0)
    sampled = [f"{name} {n}" for name, (_, n) in drawn.items() if n < n_complete]
    notes = {
        "importances": importance_how,
        "sample": (
            f"Large study: these plots show a seeded sample of its {n_complete} completed "
            f"trials ({', '.join(sampled)}; best trial included, trial numbers renumbered)."
            if sampled
            else ""
        ),
    }
    page = render_page(
        f"hpo report: {config.name}",
        f"{metric} ({direction}) · {how['sampler'].get('type')} sampler · "
        f"{how['pruner'].get('type', 'none')} pruner · {len(records)} trials · "
        f"{view.storage_url}",
        _sections(summary, figures, analysis, records, notes),
    )

    return _write_report(
        output or default_output(config), page, records, summary, figures, study, save_to_study
    )


def _write_report(
    output: Path,
    page: str,
    records: list[d.TrialRecord],
    summary: dict[str, Any],
    figures: dict[str, Any],
    study: Any,
    save_to_study: bool,
) -> Report:
    output.mkdir(parents=True, exist_ok=True)
    report = Report(
        html=output / "report.html",
        trials_csv=output / "trials.csv",
        summary_json=output / "summary.json",
        summary=summary,
        figures=figures,
    )
    report.html.write_text(page, encoding="utf-8")
    _write_csv(report.trials_csv, d.trial_rows(records))
    report.summary_json.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    if save_to_study:
        save_figures(study, figures)
    return report


def _build_front_report(
    config: Any,
    view: StudyView,
    records: list[d.TrialRecord],
    counts: dict[str, int],
    how: dict[str, Any],
    output: Path | None,
    save_to_study: bool,
) -> Report:
    """The report of a study with several objectives: there is no single best trial, so
    it shows the feasible Pareto front (table and Optuna's plot, coloured by base model)
    and what each base model achieved and costs. A study that trained adapters shows
    each trial's (full fine-tuning, or the type and rank: ``LoRA r=8``) in the tables, and
    colours and labels the plot by base model and adapter."""
    from hpo.dashboards import figures as f

    objectives = [(o.metric, o.direction) for o in config.objectives]
    models = {t.number: view.base_model(t) or "(unnamed model)" for t in view.trials}
    adapters = d.adapter_labels(records)  # {} unless the study trained adapters
    front = [{**row, "adapter": adapters.get(row["number"], "")} for row in view.front_rows()]
    feasible = {t.number for t in view.feasible()}
    by_model = d.model_comparison(
        records, models, objectives, feasible, {row["number"] for row in front}
    )

    def constraint_values(trial: Any) -> list[float]:
        return config.constraint_values(view.attrs(trial).metrics)

    figures = {
        "pareto": f.pareto_figure(
            view.study,
            [m for m, _ in objectives],
            d.model_labels(records, models),  # and the adapter: a colour per adapter rank
            constraint_values if config.constraints else None,
        ),
        "timeline": f.timeline_figure(d.worker_timeline(records, _now(records))),
    }
    summary = {
        "study": config.name,
        "storage": view.storage_url,
        "objectives": [o.model_dump() for o in config.objectives],
        "constraints": [c.model_dump() for c in config.constraints],
        "sampler": how["sampler"],
        "pruner": how["pruner"],
        "trials_by_state": counts,
        "pareto_front": front,
        "models": [asdict(row) for row in by_model],
        "compute": asdict(d.compute_totals(records)),
        "attention": [line.as_dict() for line in view.attention()],
        "generated_at": datetime.now().isoformat(timespec="seconds"),
    }
    goals = " · ".join(f"{m} ({direction})" for m, direction in objectives)
    page = render_page(
        f"hpo report: {config.name}",
        f"{goals} · {how['sampler'].get('type')} sampler · {len(records)} trials · "
        f"{view.storage_url}",
        _front_sections(summary, figures, objectives),
    )
    return _write_report(
        output or default_output(config),
        page,
        records,
        summary,
        figures,
        view.study,
        save_to_study,
    )


def _front_sections(
    summary: dict[str, Any], figures: dict[str, Any], objectives: list[tuple[str, str]]
) -> list[Section]:
    metrics = [m for m, _ in objectives]
    feasible = " (trials that meet the constraints only)" if summary["constraints"] else ""
    # An adapter column (full, LoRA r=8, ...) where the study trained adapters.
    adapted = any(m["adapter"] for m in summary["models"])
    front_table = table_html(
        ["trial", "model", *(["adapter"] if adapted else []), *metrics, "params"],
        [
            [
                row["number"],
                row["model"] or "",
                *([row["adapter"]] if adapted else []),
                *[row["values"][m] for m in metrics],
                ", ".join(
                    f"{k}={format_number(v) if isinstance(v, float) else v}"
                    for k, v in row["params"].items()
                ),
            ]
            for row in summary["pareto_front"]
        ],
    )
    overview = "".join(
        [
            '<div class="grid"><div><h3>Trials by state</h3>',
            key_values({s.lower(): n for s, n in summary["trials_by_state"].items()}),
            "</div><div><h3>Strategy</h3>",
            key_values(
                {
                    "objectives": ", ".join(f"{m} ({d_})" for m, d_ in objectives),
                    "constraints": ", ".join(
                        f"{c['metric']} "
                        + (f"<= {c['max']}" if c["max"] is not None else "")
                        + (f" >= {c['min']}" if c["min"] is not None else "")
                        for c in summary["constraints"]
                    )
                    or "none",
                    "sampler": _options(summary["sampler"]),
                }
            ),
            "</div></div>",
            f"<h3>Pareto front{feasible}: {len(summary['pareto_front'])} trials</h3>",
            front_table
            if summary["pareto_front"]
            else "<p class='note'>No completed trial meets the constraints yet.</p>",
        ]
    )
    cost_names = [c for c in d.COST_METRICS if any(c in m["cost"] for m in summary["models"])]
    models_table = table_html(
        ["model", *(["adapter"] if adapted else []), "trials", "completed", "on the front"]
        + [f"best {m}" for m in metrics]
        + [*cost_names, "best trial"],
        [
            [m["model"], *([m["adapter"]] if adapted else [])]
            + [m["trials"], m["completed"], m["on_front"]]
            + [m["best"].get(metric, "") for metric in metrics]
            + [m["cost"].get(c, "") for c in cost_names]
            + ["" if m["best_trial"] is None else m["best_trial"]]
            for m in summary["models"]
        ],
    )
    sections = [
        Section("Summary", overview, anchor="summary"),
        Section(
            "Pareto front",
            _fig(figures, "pareto"),
            note=f"Filled points are on the front{feasible}; open points are dominated; "
            "grey points break a constraint. Hover a point for its trial and parameters.",
            anchor="front",
        ),
        Section(
            "Base models",
            models_table,
            note=f"Best values are over each model's completed trials{feasible}; its cost "
            f"columns are those of its best trial in {metrics[0]}.",
            anchor="models",
        ),
    ]
    attention_section = _attention_section(summary["attention"])
    if attention_section is not None:
        sections.append(attention_section)
    sections.append(Section("Timeline", _fig(figures, "timeline"), anchor="timeline"))
    return sections


def _now(records: list[d.TrialRecord]) -> datetime:
    stamp = max((r.completed or r.started for r in records if r.started), default=None)
    now = datetime.now(stamp.tzinfo) if stamp else datetime.now()
    return max(now, stamp) if stamp else now


def _summary(
    config: Any,
    how: dict[str, Any],
    records: list[d.TrialRecord],
    best: d.TrialRecord | None,
    compute: d.Compute,
    importances: dict[str, float],
    importance_how: str,
) -> dict[str, Any]:
    failed = [
        {"number": r.number, "reason": r.failure, "message": r.failure_message}
        for r in records
        if r.state == "FAIL"
    ]
    return {
        "study": config.name,
        "storage": redact_url(config.storage),
        "objective": how["objective"],
        "sampler": how["sampler"],
        "pruner": how["pruner"],
        "trials_by_state": d.count_by_state(records),
        "best": _best_summary(best),
        "compute": asdict(compute),
        "importances": importances,
        "importance_method": importance_how,
        "failures": failed,
        "generated_at": datetime.now().isoformat(timespec="seconds"),
    }


def _best_summary(best: d.TrialRecord | None) -> dict[str, Any] | None:
    """The best trial as summary.json holds it; None while no trial has completed."""
    if best is None:
        return None
    validation, test = d.split_metrics(best.metrics)
    return {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "validation_metrics": validation,
        "test_metrics": test,
        "epochs": best.epochs,
        "train_seconds": best.duration_s,
    }


def _sections(
    summary: dict[str, Any],
    figures: dict[str, Any],
    analysis: d.ErrorAnalysis | d.GenerationAnalysis | None,
    records: list[d.TrialRecord],
    notes: dict[str, str],
) -> list[Section]:
    best = summary["best"]
    compute = summary["compute"]
    overview = "".join(
        [
            '<div class="grid">',
            _best_html(best, summary["objective"]["metric"]),
            "<div><h3>Trials by state</h3>",
            key_values({s.lower(): n for s, n in summary["trials_by_state"].items()}),
            "<h3>Compute (finished trials)</h3>",
            key_values(
                {
                    "train seconds, total": compute["total_seconds"],
                    "train seconds per trial": compute["mean_seconds"],
                    "epochs, total": compute["total_epochs"],
                    "epochs per trial": compute["mean_epochs"],
                    "wall clock seconds": compute["wall_seconds"],
                }
            ),
            "</div><div><h3>Strategy</h3>",
            key_values(
                {
                    "objective": f"{summary['objective']['metric']} "
                    f"({summary['objective']['direction']})",
                    "sampler": _options(summary["sampler"]),
                    "pruner": _options(summary["pruner"]),
                }
            ),
            "</div></div>",
        ]
    )
    sections = [Section("Summary", overview, anchor="summary")]
    attention_section = _attention_section(summary["attention"])
    if attention_section is not None:
        sections.append(attention_section)
    if best is None:  # nothing completed: no values to draw, only where time went
        if any(r.intermediate for r in records):
            sections.append(
                Section("Learning curves", _fig(figures, "learning_curves"), anchor="curves")
            )
        sections.append(Section("Timeline", _fig(figures, "timeline"), anchor="timeline"))
        return sections
    sections.append(Section("Optimization history", _fig(figures, "history"), anchor="history"))
    n_pruned = sum(r.state == "PRUNED" for r in records)
    sections.append(
        Section(
            "Learning curves",
            _fig(figures, "learning_curves"),
            note=(
                f"Dotted red lines are pruned trials ({n_pruned}), cut short where the "
                "pruner stopped them (red ×). "
                if n_pruned
                else "No trial was pruned. "
            )
            + "The thick orange line is the best trial.",
            anchor="curves",
        )
    )
    sections.append(
        Section(
            "Hyperparameters",
            _fig(figures, "importances")
            + _fig(figures, "parallel")
            + _fig(figures, "slice")
            + (
                _fig(figures, "contour")
                if "contour" in figures
                else "<p class='note'>No contour: it needs two parameters with importances.</p>"
            ),
            note=html.escape(
                "Importances: " + notes["importances"] + ". " + notes["sample"]
            ).strip(),
            anchor="params",
        )
    )
    sections.append(Section("Timeline", _fig(figures, "timeline"), anchor="timeline"))
    sections.append(_error_section(analysis, figures))
    return sections


def _best_html(best: dict[str, Any] | None, metric: str) -> str:
    """The summary's best-trial columns: trial, value, params, validation and test metrics."""
    if best is None:
        return (
            "<div><h3>Best trial</h3><p class='note'>No trial has completed yet, so there is "
            "no best trial and no figure of objective values; the trials needing attention "
            "say why.</p></div>"
        )
    return "".join(
        [
            "<div><h3>Best trial</h3>",
            key_values(
                {
                    "trial": best["number"],
                    metric: best["value"],
                    "epochs trained": best["epochs"],
                    "train seconds": best["train_seconds"],
                }
            ),
            "<h3>Parameters</h3>",
            key_values(best["params"]),
            "</div><div><h3>Validation metrics</h3>",
            key_values(best["validation_metrics"]) or "<p class='note'>none stored</p>",
            "<h3>Test metrics</h3>",
            key_values(best["test_metrics"])
            if best["test_metrics"]
            else "<p class='note'>none stored (no test split)</p>",
            "</div>",
        ]
    )


def _attention_section(lines: list[dict[str, Any]]) -> Section | None:
    """The same table as `hpo status`: failed trials with why, running ones with where."""
    if not lines:
        return None
    rows = [
        [
            a["number"],
            "running" if a["state"] == "RUNNING" else a["reason"],
            a["message"] or "",
            a["worker"] or "",
            "" if a["heartbeat_age_s"] is None else f"{a['heartbeat_age_s']:.0f} s",
        ]
        for a in lines[:50]
    ]
    more = len(lines) - len(rows)
    return Section(
        "Trials needing attention",
        table_html(["trial", "reason", "message", "worker", "last heartbeat"], rows),
        note=f"{more} more in `hpo status --json`" if more > 0 else "",
        anchor="failures",
    )


def _error_section(
    analysis: d.ErrorAnalysis | d.GenerationAnalysis | None, figures: dict[str, Any]
) -> Section:
    if isinstance(analysis, d.GenerationAnalysis):
        return _generation_section(analysis)
    if analysis is None:
        return Section(
            "Error analysis",
            "",
            note="The best trial stored no hpo:error_analysis (the toy trainer does not; the "
            "text-classification trainer does, with error_examples > 0), so there is no "
            "confusion matrix or error list.",
            anchor="errors",
        )
    recall = ", ".join(f"{label} {value:.1%}" for label, value in analysis.recall.items())
    shown = analysis.errors[:MAX_ERRORS_SHOWN]
    images = any(e.get("image") for e in shown)  # an image trainer: thumbnails first
    rows = [
        [*([Thumbnail(e["image"] or "")] if images else []), e["label"], e["predicted"]]
        + [e["confidence"], e["text"]]
        for e in shown
    ]
    headers = [*(["image"] if images else []), "true", "predicted", "confidence"]
    table = (
        table_html([*headers, "source" if images else "text"], rows)
        if rows
        else "<p class='note'>No validation example was misclassified.</p>"
    )
    body = (
        f'<div class="grid"><div>{_fig(figures, "confusion")}</div>'
        f"<div><h3>Most confidently wrong</h3>{table}</div></div>"
    )
    return Section(
        "Error analysis (best trial, validation split)",
        body,
        note=html.escape(
            f"{analysis.total} validation examples, accuracy {analysis.accuracy:.1%}; "
            f"recall per true label: {recall}."
        ),
        anchor="errors",
    )


def _generation_section(analysis: d.GenerationAnalysis) -> Section:
    """A generative trial's highest-loss validation examples, generation beside reference."""
    shown = analysis.examples[:MAX_ERRORS_SHOWN]
    rows = [[e["loss"], e["prompt"], e["reference"] or "", e["generation"] or ""] for e in shown]
    table = table_html(["loss", "prompt", "reference", "generation"], rows)
    mean = f", mean loss {analysis.mean_loss:.4f}" if analysis.mean_loss is not None else ""
    return Section(
        "Error analysis (best trial, validation split)",
        f"<div><h3>Highest-loss examples</h3>{table}</div>",
        note=f"{analysis.examples_scored} validation examples scored{mean}; a generation "
        "shows where the study sets trainer.args.generate.",
        anchor="errors",
    )


def _fig(figures: dict[str, Any], name: str) -> str:
    if name not in figures:
        return ""
    return f'<div class="figure">{figure_html(figures[name], f"fig-{name}")}</div>'


def _options(spec: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type" and v is not None)
    return f"{spec.get('type')}" + (f" ({options})" if options else "")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def save_figures(study: Any, figures: dict[str, Any]) -> None:
    """Store the figures in the study, overwriting the last report's (optuna-dashboard)."""
    from optuna_dashboard import save_plotly_graph_object

    for name, figure in figures.items():
        save_plotly_graph_object(study, figure, graph_object_id=DASHBOARD_PREFIX + name)
