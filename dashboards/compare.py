"""``hpo compare``: which search strategy reaches a good value with the least compute.

Each study becomes a best-so-far curve against cumulative training epochs and seconds
(trials in the order they finished; pruned and failed trials add their compute). The
table shows the compute each study needed to match the best value plain random search
found, the usual baseline for a search strategy.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpo.dashboards import data as d
from hpo.dashboards.page import Section, figure_html, render_page, table_html
from hpo.dashboards.study import load_stored_study, require_completed, strategy
from hpo.errors import ConfigError, HpoError


@dataclass
class StudyResult:
    """One study of a comparison: its strategy, best value and compute curve."""

    name: str
    source: str
    sampler: str
    pruner: str
    best: float
    finished: int
    curve: d.ComputeCurve
    reach: d.Reach | None = None


@dataclass
class Comparison:
    """Where the comparison was written, its studies and random search's best value."""

    html: Path
    json: Path
    metric: str
    direction: str
    studies: list[StudyResult]
    baseline: str | None
    target: float | None


def default_output(configs: list[Any]) -> Path:
    """``dashboards/compare-<name>-<name>.../`` (git-ignored)."""
    names = "-".join(c.name for c in configs)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in names)[:100]
    return Path("dashboards") / f"compare-{safe}"


def study_results(configs: list[Any]) -> tuple[list[StudyResult], str, str]:
    """Read every study; they must share one objective metric and direction.

    Raises:
        ConfigError: the studies optimize different metrics or directions (exit 2).
        HpoError: a study is missing or has no completed trial.
    """
    results: list[StudyResult] = []
    objective: tuple[str, str] | None = None
    first = ""
    for config in configs:
        view = load_stored_study(config)
        records = d.trial_records(view.trials, view.study_attrs)
        require_completed(view.study, config, d.count_by_state(records))
        how = strategy(view)
        this = (how["objective"]["metric"], how["objective"]["direction"])
        if objective is None:
            objective, first = this, str(config.source)
        elif this != objective:
            raise ConfigError(
                f"optimizes {this[0]} ({this[1]}) but {first} optimizes {objective[0]} "
                f"({objective[1]}); compare studies of one objective",
                path=str(config.source),
                field="objective",
            )
        # As hpo best ranks them: feasible first (constraints), then the value.
        best = view.best()
        if best is None:
            raise HpoError(
                f"study {config.name!r} has no completed trial that meets its constraints; "
                "nothing to compare"
            )
        counted = {t.number for t in view.feasible()}
        results.append(
            StudyResult(
                name=config.name,
                source=str(config.source),
                sampler=str(how["sampler"].get("type")),
                pruner=str(how["pruner"].get("type", "none")),
                best=best.value,
                finished=view.usage().finished,
                curve=d.compute_curve(records, this[1], feasible=counted),
            )
        )
    assert objective is not None
    return results, objective[0], objective[1]


def reach_random_best(
    results: list[StudyResult], direction: str
) -> tuple[str | None, float | None]:
    """Fill each study's compute to reach random search's best; returns (baseline, target).

    Plain random search is a random sampler without a pruner (hyperband.yaml samples at
    random too, but prunes); failing that, any random sampler; among several, the first.
    """
    randoms = [r for r in results if r.sampler == "random"]
    baseline = next((r for r in randoms if r.pruner == "none"), randoms[0] if randoms else None)
    if baseline is None:
        return None, None
    for result in results:
        result.reach = d.compute_to_reach(result.curve, baseline.best, direction)
    return baseline.name, baseline.best


def build_comparison(configs: list[Any], output: Path | None = None) -> Comparison:
    """Read the studies, draw the comparison page and write it with its data as JSON."""
    from hpo.dashboards import figures as f

    results, metric, direction = study_results(configs)
    baseline, target = reach_random_best(results, direction)
    curves = {r.name: r.curve for r in results}
    figures = {
        compute: f.compare_figure(curves, compute=compute, metric=metric, target=target)
        for compute in ("epochs", "seconds")
    }
    page = render_page(
        "hpo compare: " + ", ".join(r.name for r in results),
        f"{metric} ({direction}) · best so far against the training compute spent",
        [
            Section(
                "Compute to reach random search's best",
                _table(results, baseline, target),
                note=_baseline_note(baseline, target),
                anchor="table",
            ),
            *(
                Section(
                    f"Best so far against cumulative training {compute}",
                    figure_html(fig, f"fig-{compute}"),
                    note="Trials count in the order they finished; pruned and failed "
                    "trials add the compute they spent.",
                    anchor=compute,
                )
                for compute, fig in figures.items()
            ),
        ],
    )
    output = output or default_output(configs)
    output.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(
        html=output / "compare.html",
        json=output / "compare.json",
        metric=metric,
        direction=direction,
        studies=results,
        baseline=baseline,
        target=target,
    )
    comparison.html.write_text(page, encoding="utf-8")
    comparison.json.write_text(
        json.dumps(
            {
                "metric": metric,
                "direction": direction,
                "baseline": baseline,
                "target": target,
                "studies": [asdict(r) for r in results],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return comparison


def _baseline_note(baseline: str | None, target: float | None) -> str:
    if baseline is None:
        return (
            "No study uses the random sampler (sampler.type: random), so there is no "
            "random-search baseline; the table shows each study's best and total compute."
        )
    return html.escape(
        f"Baseline: study {baseline!r} (random search), best {target:.4f}. Each row shows "
        "the compute a study spent until its best so far first matched it."
    )


def _table(results: list[StudyResult], baseline: str | None, target: float | None) -> str:
    base = next((r for r in results if r.name == baseline), None)
    rows = []
    for r in results:
        total_epochs = r.curve.epochs[-1] if r.curve.epochs else 0.0
        total_seconds = r.curve.seconds[-1] if r.curve.seconds else 0.0
        row: list[Any] = [
            r.name,
            r.sampler,
            r.pruner,
            r.finished,
            r.best,
            total_epochs,
            total_seconds,
        ]
        if base is not None:
            if r.reach is None:
                row += ["not reached", "", "", ""]
            else:
                ratio = (
                    r.reach.epochs / base.reach.epochs
                    if base.reach and base.reach.epochs
                    else None
                )
                row += [
                    r.reach.trials,
                    r.reach.epochs,
                    r.reach.seconds,
                    f"{ratio:.2f}×" if ratio is not None else "",
                ]
        rows.append(row)
    headers = ["study", "sampler", "pruner", "finished trials", "best", "epochs", "seconds"]
    if base is not None:
        headers += ["trials to reach", "epochs to reach", "seconds to reach", "epochs vs random"]
    return table_html(headers, rows)
