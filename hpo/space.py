"""The search space: parameter specs from the study file, Optuna distributions, grids.

A parameter is ``{type: float|int, low, high, log, step}`` or
``{type: categorical, choices}``. Specs validate themselves (Optuna's messages are
reused where they exist), turn into Optuna distributions, and expand into grid
values with both bounds included.

A parameter's name is its path in ``trainer.args``: ``learning_rate``, or a dotted path
into a nested argument (``adapter.r`` sets ``r`` of ``trainer.args.adapter``);
:func:`trial_args` is the one place a trial's values meet the fixed arguments.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = Union[bool, int, float, str, None]


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Param):
    """A real-valued parameter; ``step`` makes it discrete (and griddable)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_numeric(self.low, self.high, self.log, self.step)
        return self

    def to_distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list[Scalar]:
        if self.step is None:
            raise ValueError("a float needs `step` to be part of a grid (or make it categorical)")
        # Decimal arithmetic so that 0.1 steps land on 0.3, not 0.30000000000000004.
        low, step = Decimal(str(self.low)), Decimal(str(self.step))
        count = int((Decimal(str(self.high)) - low) / step) + 1
        return [float(low + i * step) for i in range(count)]


class IntParam(_Param):
    """An integer parameter; bounds are inclusive."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_numeric(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self

    def to_distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list[Scalar]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(_Param):
    """A parameter drawn from a fixed list of choices (numbers, strings, booleans, null)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices must be distinct, but got {self.choices}")
        return self

    def to_distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def suggest(self, trial: Any, name: str) -> Scalar:
        return trial.suggest_categorical(name, self.choices)

    def grid_values(self) -> list[Scalar]:
        return list(self.choices)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]
SearchSpace = dict[str, ParamSpec]


def _check_numeric(low: float, high: float, log: bool, step: float | None) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`low` and `high` must be finite, but got (low={low}, high={high})")
    if low > high:
        raise ValueError(f"`low <= high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ValueError(f"`low > 0` must hold when `log: true`, but got (low={low})")
    if log and step is not None:
        raise ValueError("`step` and `log: true` cannot be used together; drop one")
    if step is not None and step <= 0:
        raise ValueError(f"`step > 0` must hold, but got (step={step})")
    if step is not None:
        _check_step(low, high, step)


def _check_step(low: float, high: float, step: float) -> None:
    """Refuse a ``step`` that Optuna would silently fit by moving ``high`` down."""
    # Decimal so that 0.3 - 0.0 is a whole number of 0.1 steps.
    d_low, d_high, d_step = (Decimal(str(v)) for v in (low, high, step))
    span = d_high - d_low
    if span % d_step == 0:
        return
    below = d_low + (span // d_step) * d_step
    above = below + d_step
    kind = int if isinstance(low, int) and isinstance(step, int) else float
    if d_step > span:
        raise ValueError(
            f"`step` {step} is larger than `high - low` ({kind(span)}), so only `low` would "
            f"be used; the nearest valid `high` is {kind(above)}, or use a smaller step"
        )
    nearest = below if d_high - below <= above - d_high else above
    raise ValueError(
        f"`step` {step} does not divide `high - low` ({kind(span)}), so Optuna would move "
        f"`high` to {kind(below)}; the nearest valid `high` is {kind(nearest)}"
    )


def to_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions for every parameter, by name."""
    return {name: spec.to_distribution() for name, spec in space.items()}


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for one value of every parameter, in the file's order."""
    return {name: spec.suggest(trial, name) for name, spec in space.items()}


def trial_args(args: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``args`` (``trainer.args``) with a trial's ``params`` set at their paths.

    A plain name replaces the argument of that name; a dotted one (``adapter.r``) sets a
    field inside a nested argument, keeping its other fields (``adapter.type`` as fixed in
    ``args``), and makes the mapping when ``args`` has none. ``args`` is not changed.
    """
    merged = dict(args)
    for name, value in params.items():
        *parents, last = name.split(".")
        node = merged
        for part in parents:
            child = node.get(part)
            # A copy: the fixed args are shared by every trial of the study.
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[last] = value
    return merged


def grid(space: SearchSpace) -> dict[str, list[Scalar]]:
    """Grid values of every parameter, bounds inclusive.

    Raises:
        ValueError: naming the first parameter that cannot be gridded.
    """
    values: dict[str, list[Scalar]] = {}
    for name, spec in space.items():
        try:
            values[name] = spec.grid_values()
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return values


def grid_size(space: SearchSpace) -> int:
    """Number of points in the grid of ``space``."""
    return math.prod(len(v) for v in grid(space).values())


def describe(space: SearchSpace) -> list[str]:
    """One human-readable line per parameter, for ``hpo validate``."""
    lines = []
    for name, spec in space.items():
        if isinstance(spec, CategoricalParam):
            lines.append(f"{name}: one of {spec.choices}")
        else:
            extra = " (log)" if spec.log else ""
            if (
                isinstance(spec, FloatParam)
                and spec.step is not None
                or (isinstance(spec, IntParam) and spec.step != 1)
            ):
                extra += f" step {spec.step}"
            lines.append(f"{name}: {spec.type} in [{spec.low}, {spec.high}]{extra}")
    return lines
