"""Search-space specs: distributions, validation messages, grids with inclusive bounds."""

from __future__ import annotations

import optuna
import pytest
from pydantic import TypeAdapter, ValidationError

from hpo.space import (
    ParamSpec,
    describe,
    grid,
    grid_size,
    suggest,
    to_distributions,
    trial_args,
)

SPEC = TypeAdapter(ParamSpec)


def space(**params):
    return {name: SPEC.validate_python(p) for name, p in params.items()}


def test_distributions_match_the_spec() -> None:
    dists = to_distributions(
        space(
            lr={"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            layers={"type": "int", "low": 0, "high": 4, "step": 2},
            bs={"type": "categorical", "choices": [8, 16]},
        )
    )
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["layers"] == optuna.distributions.IntDistribution(0, 4, step=2)
    assert dists["bs"] == optuna.distributions.CategoricalDistribution([8, 16])


def test_grid_includes_both_bounds_without_float_drift() -> None:
    values = grid(
        space(
            dropout={"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            epochs={"type": "int", "low": 1, "high": 3},
            bs={"type": "categorical", "choices": [8, 16, 32]},
        )
    )
    assert values == {"dropout": [0.0, 0.1, 0.2, 0.3], "epochs": [1, 2, 3], "bs": [8, 16, 32]}


def test_grid_size_and_ungriddable_float() -> None:
    assert (
        grid_size(
            space(
                a={"type": "int", "low": 1, "high": 4},
                b={"type": "categorical", "choices": ["x", "y"]},
            )
        )
        == 8
    )
    with pytest.raises(ValueError, match="lr: a float needs `step`"):
        grid(space(lr={"type": "float", "low": 0.1, "high": 1}))


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"type": "float", "low": 1, "high": 0},
            "`low <= high` must hold, but got (low=1.0, high=0.0)",
        ),
        (
            {"type": "int", "low": 0, "high": 3, "log": True},
            "`low > 0` must hold when `log: true`",
        ),
        (
            {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1},
            "cannot be used together",
        ),
        ({"type": "categorical", "choices": [1, 1]}, "choices must be distinct"),
        ({"type": "float", "low": 0, "high": 1, "step": -1}, "`step > 0` must hold"),
    ],
)
def test_bad_specs_say_what_must_hold(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python(spec)
    assert message in str(info.value)


def test_suggest_uses_the_trial_and_keeps_order() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = suggest(
        trial,
        space(
            b={"type": "categorical", "choices": ["x"]},
            a={"type": "int", "low": 2, "high": 2},
        ),
    )
    assert params == {"b": "x", "a": 2}
    assert list(trial.params) == ["b", "a"]


def test_describe_lines() -> None:
    lines = describe(space(lr={"type": "float", "low": 1e-5, "high": 1e-3, "log": True}))
    assert lines == ["lr: float in [1e-05, 0.001] (log)"]


def test_a_dotted_name_sets_a_field_of_a_nested_arg_and_keeps_the_rest() -> None:
    args = {"model": "m", "adapter": {"type": "lora", "r": 8}, "dataset": {"path": "d.csv"}}
    merged = trial_args(args, {"adapter.r": 16, "adapter.alpha": 32, "learning_rate": 0.1})
    assert merged == {
        "model": "m",
        "adapter": {"type": "lora", "r": 16, "alpha": 32},
        "dataset": {"path": "d.csv"},
        "learning_rate": 0.1,
    }
    assert args["adapter"] == {"type": "lora", "r": 8}  # the study's fixed args stay as written
    # No adapter in the fixed args: the searched field makes one.
    assert trial_args({"model": "m"}, {"adapter.type": "none"}) == {
        "model": "m",
        "adapter": {"type": "none"},
    }
