"""Samplers and pruners by name: each ``type`` maps to an Optuna factory and an options model.

The options model lists the Optuna constructor arguments a study file may set, so a
typo is an error instead of being ignored. Arguments that take Python objects
(callables, nested samplers) are left out: a study file cannot build arbitrary objects.
Optuna classes are imported inside the factories so importing hpo stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class Options(BaseModel):
    """Base for option models: unknown keys are errors, values are frozen.

    Each subclass has a ``type`` literal, so pydantic picks the model by the ``type`` key
    (a tagged union) and reports an unknown type with the list of known ones.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments for the Optuna class."""
        # None means "Optuna's default": passing it explicitly trips deprecation warnings.
        return self.model_dump(exclude={"type"}, exclude_none=True)


@dataclass(frozen=True)
class Entry:
    """How to build one sampler or pruner ``type``."""

    options: type[Options]
    factory: Callable[..., Any]
    summary: str


# --- samplers --------------------------------------------------------------------------
# Sampler factories take (options, seed, grid); grid is the expanded search space, which
# only the grid sampler uses.


class RandomOptions(Options):
    type: Literal["random"]


class GridOptions(Options):
    type: Literal["grid"]


class TPEOptions(Options):
    type: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=0)
    n_ei_candidates: PositiveInt = 24
    multivariate: bool | None = None
    group: bool = False
    constant_liar: bool = True


class GPOptions(Options):
    type: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0)
    deterministic_objective: bool = False


class CmaEsOptions(Options):
    type: Literal["cmaes"]
    sigma0: float | None = Field(None, gt=0)
    n_startup_trials: int = Field(1, ge=0)
    popsize: PositiveInt | None = None
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    consider_pruned_trials: bool = False


class QMCOptions(Options):
    type: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = False


class NSGA2Options(Options):
    type: Literal["nsga2"]
    population_size: int = Field(50, ge=2)
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float = Field(0.9, ge=0, le=1)
    swapping_prob: float = Field(0.5, ge=0, le=1)


class NSGA3Options(NSGA2Options):
    type: Literal["nsga3"]  # type: ignore[assignment]


class BruteForceOptions(Options):
    type: Literal["bruteforce"]
    avoid_premature_stop: bool = False


def _sampler(class_name: str) -> Callable[..., Any]:
    def build(
        options: Options, seed: int | None, grid: dict[str, list[Any]] | None, **extra: Any
    ) -> Any:
        import optuna

        return getattr(optuna.samplers, class_name)(seed=seed, **options.kwargs(), **extra)

    return build


def _grid_sampler(
    options: Options, seed: int | None, grid: dict[str, list[Any]] | None, **extra: Any
) -> Any:
    import optuna

    return optuna.samplers.GridSampler(grid or {}, seed=seed)


SAMPLERS: dict[str, Entry] = {
    "random": Entry(RandomOptions, _sampler("RandomSampler"), "uniform random search"),
    "grid": Entry(GridOptions, _grid_sampler, "every point of the grid, bounds inclusive"),
    "tpe": Entry(TPEOptions, _sampler("TPESampler"), "tree-structured Parzen estimator"),
    "gp": Entry(GPOptions, _sampler("GPSampler"), "Gaussian-process Bayesian optimization"),
    "cmaes": Entry(CmaEsOptions, _sampler("CmaEsSampler"), "CMA evolution strategy"),
    "qmc": Entry(QMCOptions, _sampler("QMCSampler"), "quasi-Monte Carlo (Sobol, Halton)"),
    "nsga2": Entry(NSGA2Options, _sampler("NSGAIISampler"), "NSGA-II genetic algorithm"),
    "nsga3": Entry(NSGA3Options, _sampler("NSGAIIISampler"), "NSGA-III genetic algorithm"),
    "bruteforce": Entry(BruteForceOptions, _sampler("BruteForceSampler"), "every point"),
}


# Samplers that handle several objectives, and those that sample with the constraints the
# runner sets on each trial (Trial.set_constraint; the others ignore them while sampling,
# and hpo still keeps infeasible trials off the Pareto front).
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "nsga2", "nsga3", "qmc", "grid", "bruteforce")
CONSTRAINED_SAMPLERS = ("tpe", "gp", "nsga2", "nsga3", "cmaes")


# --- pruners ---------------------------------------------------------------------------


class NopOptions(Options):
    type: Literal["none"]


class MedianOptions(Options):
    type: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: PositiveInt = 1
    n_min_trials: PositiveInt = 1


class PercentileOptions(MedianOptions):
    type: Literal["percentile"]  # type: ignore[assignment]
    percentile: float = Field(25.0, ge=0, le=100)


class SuccessiveHalvingOptions(Options):
    type: Literal["successive_halving"]
    min_resource: PositiveInt | Literal["auto"] = "auto"
    reduction_factor: int = Field(4, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)
    bootstrap_count: int = Field(0, ge=0)


class HyperbandOptions(Options):
    type: Literal["hyperband"]
    min_resource: PositiveInt = 1
    max_resource: PositiveInt | Literal["auto"] = "auto"
    reduction_factor: int = Field(3, ge=2)
    bootstrap_count: int = Field(0, ge=0)


class ThresholdOptions(Options):
    type: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: PositiveInt = 1


class WilcoxonOptions(Options):
    type: Literal["wilcoxon"]
    p_threshold: float = Field(0.1, gt=0, lt=1)
    n_startup_steps: int = Field(2, ge=0)


def _pruner(class_name: str) -> Callable[..., Any]:
    def build(options: Options) -> Any:
        import optuna

        return getattr(optuna.pruners, class_name)(**options.kwargs())

    return build


InnerPrunerSpec = Annotated[
    Union[
        NopOptions,
        MedianOptions,
        PercentileOptions,
        SuccessiveHalvingOptions,
        HyperbandOptions,
        ThresholdOptions,
        WilcoxonOptions,
    ],
    Field(discriminator="type"),
]


class PatientOptions(Options):
    """Patience around an optional inner pruner: ``wrapped: {type: median, ...}``."""

    type: Literal["patient"]
    patience: int = Field(ge=0)
    min_delta: float = Field(0.0, ge=0)
    wrapped: InnerPrunerSpec | None = None


def _patient_pruner(options: PatientOptions) -> Any:
    import optuna

    inner = PRUNERS[options.wrapped.type].factory(options.wrapped) if options.wrapped else None
    return optuna.pruners.PatientPruner(
        inner, patience=options.patience, min_delta=options.min_delta
    )


PRUNERS: dict[str, Entry] = {
    "none": Entry(NopOptions, _pruner("NopPruner"), "never prune"),
    "median": Entry(MedianOptions, _pruner("MedianPruner"), "below the median at a step"),
    "percentile": Entry(PercentileOptions, _pruner("PercentilePruner"), "below a percentile"),
    "successive_halving": Entry(
        SuccessiveHalvingOptions, _pruner("SuccessiveHalvingPruner"), "asynchronous SHA"
    ),
    "hyperband": Entry(HyperbandOptions, _pruner("HyperbandPruner"), "Hyperband brackets"),
    "threshold": Entry(ThresholdOptions, _pruner("ThresholdPruner"), "outside fixed bounds"),
    "patient": Entry(PatientOptions, _patient_pruner, "tolerate N steps without improvement"),
    "wilcoxon": Entry(WilcoxonOptions, _pruner("WilcoxonPruner"), "Wilcoxon signed-rank test"),
}


if TYPE_CHECKING:  # a union built at run time is opaque to a type checker
    SamplerSpec = Any
    PrunerSpec = Any
else:
    SamplerSpec = Annotated[
        Union[tuple(entry.options for entry in SAMPLERS.values())],
        Field(discriminator="type"),
    ]
    PrunerSpec = Annotated[
        Union[tuple(entry.options for entry in PRUNERS.values())],
        Field(discriminator="type"),
    ]


def build_sampler(spec: Options, *, seed: int | None, grid: dict[str, list[Any]] | None) -> Any:
    """An Optuna sampler for a validated ``sampler:`` section."""
    return SAMPLERS[spec.type].factory(spec, seed, grid)  # type: ignore[attr-defined]


def build_pruner(spec: Options | None) -> Any:
    """An Optuna pruner for a validated ``pruner:`` section (``None`` means no pruning)."""
    return (
        PRUNERS[spec.type].factory(spec)  # type: ignore[attr-defined]
        if spec
        else PRUNERS["none"].factory(NopOptions(type="none"))
    )  # type: ignore[attr-defined]
