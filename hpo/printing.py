"""What the commands print: summaries, tables and JSON, formatted from plain data.

The handlers in :mod:`hpo.cli` decide what to show; the shapes shared by several
commands (a study's summary, the Pareto front, trials needing attention) live here.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hpo.errors import HpoError


def print_validation(
    study_file: Any, config: Any, grid_size: int | None, models: list[dict[str, Any]]
) -> None:
    """What ``hpo validate`` prints of a valid study file: its choices, space and models."""
    from hpo.space import describe

    print(
        f"{study_file}: ok — study {config.name!r}, sampler {config.sampler.type}, "
        f"pruner {config.pruner.type if config.pruner else 'none'}, "
        f"{config.budget.n_trials} trials"
    )
    print("search space:")
    for line in describe(config.search_space):
        print(f"  {line}")
    size = grid_size if grid_size is not None else "not griddable (continuous floats)"
    print(f"grid size: {size}")
    if models:
        print("models:")
        for line in model_table(models):
            print(f"  {line}")


def model_table(models: list[dict[str, Any]]) -> list[str]:
    """One aligned row per candidate base model: what its own files say."""

    def count(n: int | None) -> str:
        for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if n is not None and n >= scale:
                return f"{n / scale:.1f}{unit}"
        return "?" if n is None else str(n)

    header = ("model", "resolves to", "arch", "params", "size MB", "max len", "license", "data")
    rows = [header]
    for m in models:
        where = m["source"] if m["source"] == "packaged" else f"{m['source']} {m['path']}"
        if not m.get("checked", True):
            where += " (not checked offline)"
        data = m.get("datasets") or []
        rows.append(
            (
                m["name"],
                where,
                m.get("architecture") or "?",
                count(m.get("n_parameters")),
                "?" if m.get("size_mb") is None else f"{m['size_mb']:g}",
                str(m.get("max_seq_length") or "?"),
                m.get("license") or "unknown",
                ", ".join(data[:3]) + (f" +{len(data) - 3} more" if len(data) > 3 else "")
                or "unknown",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def print_best(metric: str, best: dict[str, Any]) -> None:
    """``hpo best`` of one objective: the trial and value, then its params and metrics."""
    print(f"trial {best['trial']}: {metric}={best['value']:.4f}")
    for key, value in {**best["params"], **best["metrics"]}.items():
        print(f"  {key}: {value}")


def print_front(study_name: str, rows: list[dict[str, Any]], *, constrained: bool) -> None:
    """``hpo best`` of several objectives: the (feasible) Pareto front as a table."""
    feasible = " (feasible trials only)" if constrained else ""
    print(f"Pareto front of study {study_name!r}: {len(rows)} trials{feasible}")
    for line in front_table(rows):
        print(f"  {line}")


def front_table(rows: list[dict[str, Any]]) -> list[str]:
    """The front as aligned rows: trial, model, each objective, the other params."""
    metrics = list(rows[0]["values"]) if rows else []
    header = ["trial", "model", *metrics, "params"]
    table = [header]
    for row in rows:
        params = {k: v for k, v in row["params"].items() if k != "model"}
        model = row.get("model") or "?"
        table.append(
            [
                str(row["number"]),
                str(model),
                *(f"{row['values'][m]:.4g}" for m in metrics),
                ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items()
                ),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def print_json(data: Any) -> None:
    """``data`` as indented JSON (what every ``--json`` prints)."""
    print(json.dumps(data, indent=2, default=str))


def print_attention(lines: list[Any]) -> None:
    """The trials ``hpo status`` and ``hpo report`` point out, one line each."""
    if not lines:
        return
    print("trials needing attention:")
    for line in lines:
        print(f"  {line.describe()}")


def print_failed_since(config: Any, started: dt.datetime) -> None:
    """The run's closing lines name the trials that failed in it, with their first message."""
    from hpo.status import attention, failed_since
    from hpo.study import load_existing_study

    try:
        failed = failed_since(attention(load_existing_study(config)), started)
    except HpoError:  # nothing stored (e.g. a dry start); the summary said what it could
        return
    if failed:
        print(f"{len(failed)} trials failed in this run:")
        for line in failed:
            print(f"  {line.describe()}")


def describe_disk(disk: dict[str, Any]) -> str:
    """The checkpoints line of ``hpo status``."""
    kept = {
        "all": "every trial's kept",
        "pareto_front": "the Pareto front's kept",
    }.get(disk["keep"], f"the best {disk['keep']} trials' kept")
    return f"checkpoints: {disk['bytes'] / 1e6:.1f} MB in {disk['dir']} ({kept})"


def print_summary(summary: Any) -> None:
    """A study's closing lines: trials by state, wall time, the best trial or the front."""
    from hpo.status import shown_metrics

    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.counts.items())) or "none"
    print(
        f"study {summary.study_name!r}: {summary.finished}/{summary.n_trials} trials "
        f"finished ({states})"
    )
    if summary.ran or summary.wall_time_s:
        print(f"ran {summary.ran} trials in {summary.wall_time_s:.1f} s wall time")
    if summary.pareto_front:
        print(f"Pareto front: {len(summary.pareto_front)} trials")
        for line in front_table(summary.pareto_front):
            print(f"  {line}")
        return
    if summary.best_number is None:
        feasible = " that meets the constraints" if summary.constrained else ""
        print(f"no completed trial{feasible} yet")
        return
    print(f"best: trial {summary.best_number}, value {summary.best_value:.4f}")
    print("best params: " + ", ".join(f"{k}={v}" for k, v in summary.best_params.items()))
    shown = shown_metrics(summary.best_metrics)
    if shown:
        print("best metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))


def print_sweep_plan(sweep: Any, rows: list[Any]) -> None:
    """``hpo sweep --dry-run``: each study's remaining trials, overrides and command."""
    from hpo.sweep import run_command, shown_overrides

    print(f"sweep {sweep.name!r}: {len(sweep.studies)} studies (dry run; nothing runs)")
    for row in rows:
        changes = ", ".join(f"{k}={v}" for k, v in shown_overrides(row.study).items())
        print(
            f"{row.study.name}: {row.remaining} of {row.budget} trials remaining"
            f"{'' if row.exists else ' (new study)'}; overrides: {changes or 'none'}"
        )
        print(f"  {run_command(sweep, row.study)}")
