"""Broad, then narrow: a new study file around the best trials of a finished one.

``hpo narrow FILE --top K -o NEW.yaml`` reads the study of FILE, takes its top K
completed trials (the best values; with several objectives, successive Pareto fronts
of the feasible trials), and writes a copy of FILE whose search space is shrunk around
them: each float or int range to the span those trials used (in log space for a log
parameter) plus a small margin, never outside the old bounds; each categorical to the
choices they used (models included). The new file has a new name and a ``warm_start``
from the source study, so its first trials are the source's best points.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from hpo.config import StudyConfig, read_yaml
from hpo.errors import ConfigError, StudyStateError
from hpo.ranking import top_trials as ranked
from hpo.space import CategoricalParam, FloatParam, IntParam

MARGIN = 0.1  # of the top trials' span on each side (of the old range when they agree)


def top_trials(study: Any, config: StudyConfig, k: int) -> list[Any]:
    """The ``k`` best feasible completed trials (:func:`hpo.ranking.top_trials`)."""
    return ranked(study.get_trials(deepcopy=False), config, k)


def narrowed_space(config: StudyConfig, trials: list[Any]) -> dict[str, dict[str, Any]]:
    """Each search-space entry as written in a study file, shrunk around ``trials``."""
    space = {}
    for name, spec in config.search_space.items():
        used = [t.params[name] for t in trials if name in t.params]
        data = spec.model_dump(exclude_none=True)
        if used and isinstance(spec, CategoricalParam):
            data["choices"] = [c for c in spec.choices if c in used]
        elif used and isinstance(spec, FloatParam | IntParam):
            data["low"], data["high"] = _span(spec, [float(v) for v in used])
        space[name] = data
    return space


def _span(spec: FloatParam | IntParam, used: list[float]) -> tuple[Any, Any]:
    """The used range plus a margin, in the parameter's own scale, inside the old bounds."""
    to, back = (math.log, math.exp) if spec.log else (float, float)
    low, high = to(min(used)), to(max(used))
    old_low, old_high = to(spec.low), to(spec.high)
    margin = MARGIN * ((high - low) or (old_high - old_low))
    new_low = max(old_low, low - margin)
    new_high = min(old_high, high + margin)
    lo, hi = back(new_low), back(new_high)
    if isinstance(spec, IntParam):
        step = spec.step
        lo_i = spec.low + math.floor((lo - spec.low) / step + 1e-9) * step
        hi_i = spec.low + math.ceil((hi - spec.low) / step - 1e-9) * step
        return max(spec.low, int(lo_i)), min(spec.high, int(hi_i))
    if spec.step is not None:  # stay on the old grid so the points remain the same values
        grid, base = Decimal(str(spec.step)), Decimal(str(spec.low))
        lo_d = base + grid * math.floor((Decimal(str(lo)) - base) / grid)
        hi_d = base + grid * math.ceil((Decimal(str(hi)) - base) / grid)
        return float(max(lo_d, base)), float(min(hi_d, Decimal(str(spec.high))))
    lo, hi = max(spec.low, _round(lo)), min(spec.high, _round(hi))
    return lo, hi


def _round(value: float) -> float:
    """Four significant digits: the file stays readable (bounds are clipped afterwards)."""
    return float(f"{value:.4g}")


def narrow_study(
    config: StudyConfig, study: Any, top: int, output: Path, name: str | None = None
) -> dict[str, Any]:
    """Write the narrowed study file to ``output``; return its raw mapping.

    Raises:
        StudyStateError: the study has no completed (feasible) trial.
        ConfigError: ``output`` exists or is the source file itself.
    """
    if config.source is None:
        raise ConfigError("narrow needs a study file", field="FILE")
    if output.resolve() == Path(config.source).resolve():
        raise ConfigError(f"{output} is the source file; give a new file", field="-o")
    if output.exists():
        raise ConfigError(f"{output} exists; choose a new file or remove it", field="-o")
    trials = top_trials(study, config, top)
    if not trials:
        feasible = " feasible" if config.constraints else ""
        raise StudyStateError(
            f"study {config.name!r} has no completed{feasible} trial to narrow around; "
            f"run it first ({config.run_command()})"
        )
    raw = read_yaml(Path(config.source))
    raw["name"] = name or f"{config.name}-narrow"
    raw["search_space"] = narrowed_space(config, trials)
    # Same storage field, so the source study is found there without a storage of its own.
    raw["warm_start"] = {"from": config.name, "top_k": len(trials)}
    numbers = ", ".join(str(t.number) for t in trials)
    header = (
        f"# Narrowed by `hpo narrow` from {config.source} (study {config.name!r}) around its "
        f"top {len(trials)} trials ({numbers}).\n"
    )
    output.write_text(header + yaml.safe_dump(raw, sort_keys=False, width=99), encoding="utf-8")
    return raw
