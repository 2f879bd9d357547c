"""One self-contained HTML page: plotly.js inlined once, then sections of tables and figures.

The page requests nothing from any host, so it opens offline by double-click and can be
mailed or archived as a single file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #f6f7f9; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; color: #c9d1d9; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 32px 48px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px;
          padding: 12px 20px 16px; margin: 16px 0; }
section h2 { font-size: 18px; margin: 4px 0 10px; }
.note { color: #57606a; font-size: 13px; margin: 6px 0; }
.grid { display: flex; flex-wrap: wrap; gap: 12px 32px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e1e4e8; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 640px; }
.figure { width: 100%; overflow-x: auto; }
"""


@dataclass
class Section:
    """A titled block of the page: HTML body, optionally with a note under the title."""

    title: str
    body: str
    note: str = ""
    anchor: str = ""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The full HTML document with plotly.js inlined in its head."""
    from plotly.offline import get_plotlyjs

    nav = " · ".join(
        f'<a href="#{s.anchor}" style="color:#c9d1d9">{html.escape(s.title)}</a>'
        for s in sections
        if s.anchor
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        # window.PlotlyConfig must exist before plotly.js loads to keep MathJax off.
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>",
        f"<p>{nav}</p></header><main>" if nav else "</header><main>",
    ]
    for section in sections:
        anchor = f' id="{section.anchor}"' if section.anchor else ""
        note = f'<p class="note">{section.note}</p>' if section.note else ""
        parts.append(
            f"<section{anchor}><h2>{html.escape(section.title)}</h2>{note}{section.body}</section>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def figure_html(figure: Any, div_id: str) -> str:
    """A figure as a div and its drawing script (plotly.js comes from the page head)."""
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
        default_height=f"{figure.layout.height or 420}px",
        default_width=f"{figure.layout.width}px" if figure.layout.width else "100%",
    )


class Thumbnail(str):
    """A table cell holding an image's ``data:image/png;base64,...`` URI, drawn as <img>."""


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned and formatted, thumbnails drawn, the rest escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, Thumbnail):
                cells.append(f'<td><img alt="example" src="{html.escape(cell)}"></td>')
            elif isinstance(cell, bool) or cell is None:
                cells.append(f"<td>{'' if cell is None else cell}</td>")
            elif isinstance(cell, int | float):
                cells.append(f'<td class="num">{format_number(cell)}</td>')
            else:
                text = html.escape(str(cell))
                css = ' class="text"' if len(text) > 60 else ""
                cells.append(f"<td{css}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def format_number(value: float) -> str:
    """Integers as they are, floats to 4 significant decimals (scientific when tiny)."""
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "nan"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"


def key_values(items: dict[str, Any]) -> str:
    """A two-column table of names and values."""
    return table_html(["", ""], [[k, v] for k, v in items.items()]).replace(
        "<thead><tr><th></th><th></th></tr></thead>", ""
    )
