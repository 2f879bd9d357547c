"""Orchestration overhead: hpo's runner against raw Optuna on the same storage.

Both arms run the same seeded TPE sampler (hpo's defaults: 10 start-up trials, constant
liar), a median pruner, the same four-parameter space and an objective that sleeps for a
fixed time and returns a deterministic function of the parameters. Raw Optuna is
``optuna.create_study(...).optimize``; hpo is ``hpo.runner.run_worker`` with a
``StudyConfig`` from ``hpo.config.validate_study`` and a trainer that sleeps.

The arms alternate in blocks (A B B A ...) so machine noise hits both alike. A trial's
wall time is the gap between two consecutive trial-finished callbacks, so it includes
everything between trials (hpo's budget checks, lock, attributes); the first trial of
each block is dropped because it also pays for opening the study. Per-trial overhead is
that wall time minus the sleep.

hpo has no in-memory storage scheme, so the ``memory`` rows patch
``hpo.storage.open_storage`` in this process to hand back one ``InMemoryStorage`` (no
hpo file is changed); they isolate hpo's own Python cost from storage round trips.

    python benchmarks/overhead.py [--trials 300] [--storages memory sqlite postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
SEED = 42
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "layers": {"type": "int", "low": 1, "high": 8},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "lion"]},
}


def score(params: dict[str, Any]) -> float:
    """A deterministic objective of the parameters (the sampler needs a landscape)."""
    lr_fit = math.exp(-((math.log10(params["learning_rate"]) + 3.0) ** 2))
    bonus = {"adamw": 0.1, "sgd": 0.0, "lion": 0.05}[params["optimizer"]]
    return lr_fit - (params["dropout"] - 0.1) ** 2 - 0.01 * abs(params["layers"] - 4) + bonus


def sleep_train(ctx: Any) -> dict[str, float]:
    """hpo's arm: a trainer that sleeps, then returns the objective."""
    time.sleep(ctx.params["sleep_s"])
    return {"eval_accuracy": score(ctx.params)}


def raw_objective(sleep_s: float) -> Callable[[Any], float]:
    """Raw Optuna's arm: suggest the same space in the same order, sleep, return."""

    def objective(trial: Any) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "layers": trial.suggest_int("layers", 1, 8),
            "optimizer": trial.suggest_categorical("optimizer", ["adamw", "sgd", "lion"]),
        }
        time.sleep(sleep_s)
        return score(params)

    return objective


# --- storages ----------------------------------------------------------------------------


@dataclass
class Backend:
    """One storage both arms use: the URL hpo validates and what raw Optuna is given."""

    name: str
    url: str
    raw_storage: Callable[[], Any]


@contextlib.contextmanager
def backend(name: str, folder: Path) -> Iterator[Backend]:
    """The storage ``name``; ``memory`` patches hpo's ``open_storage`` for this process."""
    if name == "sqlite":
        url = f"sqlite:///{folder / 'overhead.db'}"
        yield Backend(name, url, lambda: url)
    elif name == "postgres":
        yield Backend(name, POSTGRES_URL, lambda: POSTGRES_URL)
    elif name == "memory":
        import optuna

        from hpo import storage

        shared: dict[str, Any] = {}
        original = storage.open_storage

        def open_in_memory(url: str, **kwargs: Any) -> Any:
            return shared.setdefault(url, optuna.storages.InMemoryStorage())

        storage.open_storage = open_in_memory
        try:
            # The URL only names the lock file hpo's StudyLock keeps beside a SQLite file.
            lock_url = f"sqlite:///{folder / 'memory.db'}"
            yield Backend(name, lock_url, optuna.storages.InMemoryStorage)
        finally:
            storage.open_storage = original
    else:
        raise ValueError(f"unknown storage {name!r}; use memory, sqlite or postgres")


# --- the two arms ------------------------------------------------------------------------


class Stamps:
    """Trial-finished callback that keeps the gaps between consecutive trials."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.gaps: list[float] = []

    def __call__(self, study: Any, trial: Any) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now


def hpo_config(url: str, name: str, n_trials: int, sleep_s: float) -> Any:
    """hpo's study, built from a plain mapping as a study file would be."""
    from hpo.config import validate_study

    raw = {
        "name": name,
        "storage": url,
        "seed": SEED,
        "objective": {"metric": "eval_accuracy", "direction": "maximize"},
        "sampler": {"type": "tpe"},
        "pruner": {"type": "median"},
        "budget": {"n_trials": n_trials, "max_failures": 3},
        "trainer": {"ref": "benchmarks.overhead:sleep_train", "args": {"sleep_s": sleep_s}},
        "search_space": SPACE,
        "output_dir": str(Path(tempfile.gettempdir()) / "hpo-overhead-runs"),
    }
    return validate_study(raw, path=str(ROOT / "benchmarks" / "overhead.py"))


def raw_study(storage: Any, name: str) -> Any:
    """Raw Optuna's study with the sampler and pruner hpo builds for the same config."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=SEED, n_startup_trials=10, constant_liar=True)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(),
        direction="maximize",
    )


# Database transactions committed in this process (both arms share it, one at a time).
# Unlike milliseconds, the count per trial does not depend on how busy the machine is.
COMMITS = [0]


def count_commits() -> None:
    import sqlalchemy

    def on_commit(connection: Any) -> None:
        COMMITS[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", on_commit)


@dataclass
class Arms:
    """Both arms of one storage x sleep cell: their studies and per-trial wall times."""

    backend: Backend
    sleep_s: float
    raw: Any = None
    hpo_name: str = ""
    hpo_done: int = 0
    raw_gaps: list[float] = field(default_factory=list)
    hpo_gaps: list[float] = field(default_factory=list)

    raw_commits: int = 0
    hpo_commits: int = 0
    raw_trials: int = 0
    hpo_trials: int = 0

    def run_raw(self, n: int) -> None:
        if self.raw is None:
            self.raw = raw_study(self.backend.raw_storage(), f"raw-{uuid.uuid4().hex[:10]}")
        stamps = Stamps()
        before = COMMITS[0]
        self.raw.optimize(raw_objective(self.sleep_s), n_trials=n, callbacks=[stamps])
        self.raw_commits += COMMITS[0] - before
        self.raw_trials += n
        self.raw_gaps += stamps.gaps[1:]

    def run_hpo(self, n: int) -> None:
        from hpo.runner import run_worker

        self.hpo_name = self.hpo_name or f"hpo-{uuid.uuid4().hex[:10]}"
        self.hpo_done += n
        config = hpo_config(self.backend.url, self.hpo_name, self.hpo_done, self.sleep_s)
        stamps = Stamps()
        before = COMMITS[0]
        run_worker(config, on_trial=stamps)
        self.hpo_commits += COMMITS[0] - before
        self.hpo_trials += n
        self.hpo_gaps += stamps.gaps[1:]


def measure(backend: Backend, sleep_s: float, n_trials: int, block: int) -> Arms:
    """Interleave raw and hpo blocks (A B B A ...) until each arm ran ``n_trials``."""
    arms = Arms(backend, sleep_s)
    for i in range(math.ceil(n_trials / block)):
        n = min(block, n_trials - i * block)
        order = (arms.run_raw, arms.run_hpo) if i % 2 == 0 else (arms.run_hpo, arms.run_raw)
        for run in order:
            run(n)
    return arms


# --- the same parameters for the same seed -----------------------------------------------


def parameter_sequences(backend: Backend, n_trials: int) -> tuple[list[dict], list[dict]]:
    """Params of ``n_trials`` no-op trials from each arm, each in one uninterrupted run."""
    import optuna

    from hpo.runner import run_worker
    from hpo.study import open_study

    raw = raw_study(backend.raw_storage(), f"raw-seq-{uuid.uuid4().hex[:10]}")
    raw.optimize(raw_objective(0.0), n_trials=n_trials)
    config = hpo_config(backend.url, f"hpo-seq-{uuid.uuid4().hex[:10]}", n_trials, 0.0)
    run_worker(config)
    ours = open_study(config)
    done = optuna.trial.TrialState.COMPLETE
    return (
        [t.params for t in raw.get_trials(states=(done,))],
        [t.params for t in ours.get_trials(states=(done,))],
    )


# --- report ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(arms: Arms) -> dict[str, Any]:
    """Median and p95 per-trial overhead (ms) of both arms, their difference and ratio."""
    raw_over = [(g - arms.sleep_s) * 1e3 for g in arms.raw_gaps]
    hpo_over = [(g - arms.sleep_s) * 1e3 for g in arms.hpo_gaps]
    raw_median = statistics.median(arms.raw_gaps)
    hpo_median = statistics.median(arms.hpo_gaps)
    return {
        "storage": arms.backend.name,
        "sleep_ms": arms.sleep_s * 1e3,
        "raw_median": statistics.median(raw_over),
        "raw_p95": percentile(raw_over, 0.95),
        "hpo_median": statistics.median(hpo_over),
        "hpo_p95": percentile(hpo_over, 0.95),
        "added_median": statistics.median(hpo_over) - statistics.median(raw_over),
        "added_p95": percentile(hpo_over, 0.95) - percentile(raw_over, 0.95),
        "ratio": hpo_median / raw_median,
        "n": len(hpo_over),
        # hpo's include opening the study once per block (run_worker opens it each time).
        "raw_commits": arms.raw_commits / max(1, arms.raw_trials),
        "hpo_commits": arms.hpo_commits / max(1, arms.hpo_trials),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| storage | sleep ms | raw overhead ms median / p95 | hpo overhead ms median / p95 "
        "| hpo adds ms median / p95 | wall ratio hpo/raw | commits per trial raw / hpo |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['storage']} | {r['sleep_ms']:g} | {r['raw_median']:.2f} / {r['raw_p95']:.2f} "
            f"| {r['hpo_median']:.2f} / {r['hpo_p95']:.2f} "
            f"| {r['added_median']:+.2f} / {r['added_p95']:+.2f} | {r['ratio']:.3f} "
            f"| {r['raw_commits']:.2f} / {r['hpo_commits']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per arm and cell")
    parser.add_argument("--block", type=int, default=30, help="trials per interleaved block")
    parser.add_argument("--sleeps", type=float, nargs="+", default=[0.0, 0.01, 0.1])
    parser.add_argument("--storages", nargs="+", default=["memory", "sqlite", "postgres"])
    parser.add_argument("--sequence-trials", type=int, default=40)
    args = parser.parse_args()

    import optuna

    # hpo turns on Optuna's heartbeats, which warn as experimental on every study open.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    count_commits()
    rows, same_everywhere = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.storages:
            with backend(name, Path(tmp)) as store:
                raw_seq, hpo_seq = parameter_sequences(store, args.sequence_trials)
                same = raw_seq == hpo_seq
                same_everywhere &= same
                print(
                    f"{name}: same parameter sequence for seed {SEED}: {same} "
                    f"({sum(a == b for a, b in zip(raw_seq, hpo_seq, strict=False))}"
                    f"/{len(raw_seq)} trials equal); first three: {hpo_seq[:3]}"
                )
                for sleep_s in args.sleeps:
                    rows.append(row(measure(store, sleep_s, args.trials, args.block)))
                    print_table(rows[-1:])
    print()
    print_table(rows)
    worst = max(rows, key=lambda r: r["added_median"])
    # Issue 9's goal at 10 ms trials: at most +5 ms on SQLite and +10 ms on Postgres.
    goals = {"sqlite": 5.0, "postgres": 10.0, "memory": 2.0}
    met = all(r["added_median"] <= goals[r["storage"]] for r in rows)
    print(
        f"RESULT max_added_ms_median={worst['added_median']:.2f} "
        f"at={worst['storage']}/{worst['sleep_ms']:g}ms "
        f"max_ratio={max(r['ratio'] for r in rows):.3f} same_params={same_everywhere} "
        f"goal={'met' if met else 'missed'}"
    )


if __name__ == "__main__":
    main()
