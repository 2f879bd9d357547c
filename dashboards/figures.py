"""Plotly figures drawn from :mod:`dashboards.data`, plus Optuna's own plot builders.

Each ``*_figure`` function takes plain data and returns a ``plotly.graph_objects.Figure``.
Parallel coordinates, slices and the contour come straight from
``optuna.visualization``. Many trials are drawn as a few traces whose lines are split
by ``None`` gaps, so a 5,000-trial study is still a light page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpo.dashboards.data import ComputeCurve, Curve, ErrorAnalysis, History, Span

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#d62728",
    "FAIL": "#7f7f7f",
    "RUNNING": "#2ca02c",
    "WAITING": "#bcbd22",
}
BEST_COLOR = "#ff7f0e"
STUDY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
STUDY_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_MARGIN = {"l": 70, "r": 30, "t": 60, "b": 60}


def _layout(fig: Any, title: str, x: str, y: str, height: int = 420) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin=_MARGIN,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.18, "x": 0},
        hovermode="closest",
    )
    return fig


def history_figure(history: History, metric: str) -> Any:
    """Every completed trial's value and the best-so-far line, by trial number."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=history.numbers,
            y=history.values,
            mode="markers",
            name="completed trial",
            marker={"color": STATE_COLORS["COMPLETE"], "size": 6, "opacity": 0.6},
            hovertemplate="trial %{x}<br>" + metric + " %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=history.numbers,
            y=history.best,
            mode="lines",
            line={"color": BEST_COLOR, "width": 3, "shape": "hv"},
            name="best so far",
            hovertemplate="after trial %{x}<br>best %{y:.4f}<extra></extra>",
        )
    )
    return _layout(fig, "Optimization history", "trial number", metric)


def learning_curves_figure(curves: Sequence[Curve], metric: str) -> Any:
    """Every trial's reported values by step; pruned trials end early with a red cross."""
    import plotly.graph_objects as go

    fig = go.Figure()
    # Pruned trials first, so completed ones are drawn on top of them; thousands of lines
    # get fainter so the bundle's shape, not a solid block, shows.
    for state in ("PRUNED", "FAIL", "WAITING", "RUNNING", "COMPLETE"):
        group = [c for c in curves if c.state == state and not c.best]
        if not group:
            continue
        opacity = max(0.12, min(0.6, 40 / len(group)))
        x: list[Any] = []
        y: list[Any] = []
        text: list[Any] = []
        for curve in group:
            x += [*curve.steps, None]
            y += [*curve.values, None]
            text += [f"trial {curve.number}"] * len(curve.steps) + [None]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                text=text,
                mode="lines",
                name=f"{state.lower()} ({len(group)})",
                line={
                    "color": STATE_COLORS[state],
                    "width": 1,
                    "dash": "dot" if state == "PRUNED" else "solid",
                },
                opacity=opacity,
                hovertemplate="%{text}<br>step %{x}: %{y:.4f}<extra></extra>",
            )
        )
        if state == "PRUNED":
            fig.add_trace(
                go.Scatter(
                    x=[c.steps[-1] for c in group],
                    y=[c.values[-1] for c in group],
                    text=[f"trial {c.number} pruned" for c in group],
                    mode="markers",
                    name="pruned here",
                    marker={
                        "color": STATE_COLORS["PRUNED"],
                        "symbol": "x",
                        "size": 8 if len(group) < 200 else 5,
                        "opacity": max(opacity, 0.3),
                    },
                    hovertemplate="%{text} at step %{x}<extra></extra>",
                )
            )
    for curve in curves:
        if curve.best:
            fig.add_trace(
                go.Scatter(
                    x=curve.steps,
                    y=curve.values,
                    mode="lines+markers",
                    name=f"best trial {curve.number}",
                    line={"color": BEST_COLOR, "width": 3},
                    hovertemplate="best trial<br>step %{x}: %{y:.4f}<extra></extra>",
                )
            )
    return _layout(fig, "Learning curves (objective at each evaluation)", "step", metric)


def importance_figure(importances: dict[str, float], evaluator: str) -> Any:
    """Horizontal bars of parameter importance, most important on top."""
    import plotly.graph_objects as go

    names = list(importances)[::-1]
    values = [importances[n] for n in names]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            marker_color=STATE_COLORS["COMPLETE"],
            text=[f"{v:.2f}" for v in values],
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            cliponaxis=False,
        )
    )
    fig = _layout(
        fig,
        f"Hyperparameter importances ({evaluator})",
        "importance (share of objective variance)",
        "",
        height=max(260, 60 + 45 * len(names)),
    )
    fig.update_layout(margin={**_MARGIN, "l": 200}, xaxis_range=[0, max(values) * 1.15 or 1])
    return fig


def timeline_figure(spans: Sequence[Span]) -> Any:
    """Trials as bars on the row of the worker that ran them, coloured by state."""
    import plotly.graph_objects as go

    workers = list(dict.fromkeys(s.worker for s in spans))
    fig = go.Figure()
    for state, color in STATE_COLORS.items():
        group = [s for s in spans if s.state == state]
        if not group:
            continue
        fig.add_trace(
            go.Bar(
                base=[s.start.isoformat() for s in group],
                x=[max((s.end - s.start).total_seconds() * 1000, 1.0) for s in group],
                y=[s.worker for s in group],
                orientation="h",
                name=state.lower(),
                # A white edge separates neighbouring bars, but would hide thousands of thin ones.
                marker={
                    "color": color,
                    "line": {"color": "white", "width": 0.5 if len(spans) < 300 else 0},
                },
                text=[f"trial {s.number}" for s in group],
                hovertemplate="%{text}<br>%{base} (+%{x:,.0f} ms)<extra>%{y}</extra>",
                textposition="none",
            )
        )
    fig = _layout(
        fig,
        "Timeline of trials per worker",
        "time",
        "",
        height=max(260, 140 + 40 * len(workers)),
    )
    longest = max((len(w) for w in workers), default=10)
    fig.update_layout(
        barmode="overlay",
        margin={**_MARGIN, "l": min(40 + 7 * longest, 320)},
        yaxis={"categoryorder": "array", "categoryarray": workers[::-1]},
        xaxis={"type": "date"},
        # Below the plot the legend would cover the date line of the time axis.
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def confusion_figure(analysis: ErrorAnalysis) -> Any:
    """The validation confusion matrix as an annotated heatmap (rows true, columns predicted)."""
    import plotly.graph_objects as go

    n = len(analysis.labels)
    fig = go.Figure(
        go.Heatmap(
            z=analysis.matrix[::-1],
            x=analysis.labels,
            y=analysis.labels[::-1],
            colorscale="Blues",
            text=[[str(v) for v in row] for row in analysis.matrix[::-1]],
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} examples<extra></extra>",
            showscale=False,
        )
    )
    size = min(140 + 70 * n, 700)
    fig = _layout(fig, "Confusion matrix (validation)", "predicted label", "true label", size)
    # Wide enough that plotly's tool bar sits beside the title, not over it.
    fig.update_layout(width=max(size + 120, 560), xaxis={"side": "bottom", "type": "category"})
    fig.update_yaxes(type="category")
    return fig


def optuna_figures(studies: dict[str, Any], top_params: Sequence[str]) -> dict[str, Any]:
    """Optuna's parallel-coordinate and slice plots, and a contour of the top two params.

    Args:
        studies: the study (or a sample of it) to draw for "parallel", "slice", "contour".
        top_params: parameter names, most important first.
    """
    from optuna.visualization import plot_contour, plot_parallel_coordinate, plot_slice

    figures = {
        "parallel": plot_parallel_coordinate(studies["parallel"]),
        "slice": plot_slice(studies["slice"]),
    }
    if len(top_params) >= 2:
        figures["contour"] = plot_contour(studies["contour"], params=list(top_params[:2]))
    for name, fig in figures.items():
        fig.update_layout(template="plotly_white", margin=_MARGIN)
        if name == "slice":
            # Optuna sets 300 px per parameter, wider than the page past four parameters;
            # let plotly fit the subplots to the page instead.
            fig.update_layout(height=420, width=None, autosize=True)
        if name == "contour":
            fig.update_layout(height=520, width=720)
    return figures


def compare_figure(
    curves: dict[str, ComputeCurve], *, compute: str, metric: str, target: float | None
) -> Any:
    """Best-so-far value against cumulative compute (``epochs`` or ``seconds``) per study."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, curve) in enumerate(curves.items()):
        xs = curve.epochs if compute == "epochs" else curve.seconds
        fig.add_trace(
            go.Scatter(
                x=[0.0, *xs],
                y=[None, *curve.best],
                mode="lines+markers",
                name=name,
                # Dashes differ per study so lines that coincide stay distinguishable.
                line={
                    "shape": "hv",
                    "width": 2.5,
                    "color": STUDY_COLORS[i % len(STUDY_COLORS)],
                    "dash": STUDY_DASHES[i % len(STUDY_DASHES)],
                },
                marker={"size": 5},
                text=[None, *[f"trial {n}" for n in curve.numbers]],
                hovertemplate=name
                + "<br>%{text}<br>%{x:,.1f} "
                + compute
                + "<br>best %{y:.4f}<extra></extra>",
            )
        )
    if target is not None:
        fig.add_hline(
            y=target,
            line={"dash": "dash", "color": "#555"},
            annotation_text="random search's best",
            annotation_position="top left",
        )
    label = "training epochs" if compute == "epochs" else "training seconds"
    return _layout(
        fig, f"Best {metric} so far against cumulative {label}", f"cumulative {label}", metric
    )


def pareto_figure(
    study: Any,
    metric_names: Sequence[str],
    models: dict[int, str],
    constraints: Any = None,
) -> Any:
    """Optuna's Pareto-front plot, its points coloured by the base model each trial trained.

    ``models``: trial number -> its label (:func:`dashboards.data.model_labels`: the base
    model, and in a study that trained adapters, ``full`` or the adapter's type and rank),
    shown in the legend and beside each point's hover text.

    Optuna colours points by trial number; to choose a model, the colour that matters is
    the model. Its traces are kept (infeasible grey, dominated, front) and split by model,
    front points filled, dominated ones open. Only the first two objectives are drawn.
    """
    import plotly.graph_objects as go
    from optuna.visualization import plot_pareto_front

    names = list(metric_names)
    optuna_fig = plot_pareto_front(
        study,
        target_names=names[:2] if len(names) > 2 else names,
        targets=(lambda t: t.values[:2]) if len(names) > 2 else None,
        constraints_func=constraints,
    )
    palette = {
        m: STUDY_COLORS[i % len(STUDY_COLORS)] for i, m in enumerate(sorted(set(models.values())))
    }
    fig = go.Figure(layout=optuna_fig.layout)
    for trace in optuna_fig.data:
        kind = (trace.hovertemplate or "").rsplit("<extra>", 1)[-1].replace("</extra>", "")
        numbers = trace.marker.color
        if kind == "Infeasible Trial" or not isinstance(numbers, list | tuple):
            trace.update(name="infeasible", showlegend=True)
            fig.add_trace(trace)
            continue
        on_front = kind == "Best Trial"
        for model, color in palette.items():
            keep = [i for i, n in enumerate(numbers) if models.get(int(n)) == model]
            if not keep:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[trace.x[i] for i in keep],
                    y=[trace.y[i] for i in keep],
                    text=[trace.text[i] for i in keep] if trace.text else None,
                    hovertemplate=f"%{{text}}<extra>{model}</extra>",
                    mode="markers",
                    name=f"{model}, {'on the front' if on_front else 'dominated'}",
                    legendgroup=model,
                    marker={
                        "color": color,
                        "size": 12 if on_front else 8,
                        "symbol": "circle" if on_front else "circle-open",
                        "line": {"color": "#333333", "width": 1 if on_front else 0},
                    },
                )
            )
    x, y = (names + [""])[:2] if len(names) >= 2 else (names[0], "")
    return _layout(fig, "Pareto front (coloured by base model)", x, y, 480)
