"""Reports built from a study: data first (pure), then plotly figures, then one HTML file.

``build_report`` draws one study (``hpo report``), ``build_comparison`` compares search
strategies by compute (``hpo compare``), ``serve_dashboard`` runs optuna-dashboard on the
study's storage (``hpo dashboard``). Plotly and Optuna are imported inside functions, so
importing this package stays cheap.
"""

from __future__ import annotations

from hpo.dashboards.compare import build_comparison
from hpo.dashboards.report import build_report
from hpo.dashboards.server import serve_dashboard

__all__ = ["build_comparison", "build_report", "serve_dashboard"]
