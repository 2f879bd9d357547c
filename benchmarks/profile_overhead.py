"""Where hpo's per-trial overhead goes: cProfile of both arms of ``overhead.py``, diffed.

Runs the no-op objective for ``--trials`` trials through raw Optuna and through hpo's
``run_worker`` on one storage (after a warm-up trial each), profiles both, and prints the
functions whose cumulative time per trial grew most from raw to hpo. Those lines say
which calls hpo adds and what each costs.

    python benchmarks/profile_overhead.py [--storage sqlite] [--trials 150]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.overhead import backend, hpo_config, raw_objective, raw_study  # noqa: E402


def profile(run, n_trials: int) -> tuple[dict[str, float], dict[str, float], float]:
    """Cumulative ms and calls per trial of every function ``run`` calls; wall ms per trial."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    run()
    profiler.disable()
    wall = (time.perf_counter() - started) * 1e3 / n_trials
    cumulative: dict[str, float] = {}
    calls: dict[str, float] = {}
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (file, line, name), (_primitive, ncalls, _total, cum, _callers) in stats.items():
        key = f"{_short(file)}:{line}({name})"
        cumulative[key] = cumulative.get(key, 0.0) + cum * 1e3 / n_trials
        calls[key] = calls.get(key, 0.0) + ncalls / n_trials
    return cumulative, calls, wall


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# Calls only hpo makes (or makes more often), listed by name whatever their rank.
FOCUS = (
    "hpo/runner.py",
    "hpo/budget.py",
    "hpo/study.py",
    "hpo/storage.py",
    "set_user_attr",
    "user_attrs",
    "heartbeat",
    "fail_stale_trials",
    "_rdb/storage.py:841(get_trial)",
    "study.py:252(get_trials)",
    "_log_trial",
)


def print_rows(keys, raw_times, hpo_times, raw_calls, hpo_calls) -> None:
    print(
        "| function (cumulative, nested) | raw ms/trial | hpo ms/trial | added "
        "| calls/trial raw -> hpo |"
    )
    print("|---|---:|---:|---:|---|")
    for key in keys:
        raw_ms, hpo_ms = raw_times.get(key, 0.0), hpo_times.get(key, 0.0)
        print(
            f"| `{key}` | {raw_ms:.2f} | {hpo_ms:.2f} | {hpo_ms - raw_ms:+.2f} | "
            f"{raw_calls.get(key, 0):.1f} -> {hpo_calls.get(key, 0):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite", choices=["memory", "sqlite", "postgres"])
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from hpo.runner import run_worker

    with tempfile.TemporaryDirectory() as tmp, backend(args.storage, Path(tmp)) as store:
        raw = raw_study(store.raw_storage(), f"raw-prof-{uuid.uuid4().hex[:8]}")
        raw.optimize(raw_objective(0.0), n_trials=1)
        name = f"hpo-prof-{uuid.uuid4().hex[:8]}"
        run_worker(hpo_config(store.url, name, 1, 0.0))
        raw_times, raw_calls, raw_wall = profile(
            lambda: raw.optimize(raw_objective(0.0), n_trials=args.trials, callbacks=[_noop]),
            args.trials,
        )
        config = hpo_config(store.url, name, args.trials + 1, 0.0)
        hpo_times, hpo_calls, hpo_wall = profile(lambda: run_worker(config), args.trials)
    print(f"storage={args.storage} trials={args.trials} (no-op objective, TPE, after 1 trial)")
    print(
        f"wall ms per trial: raw {raw_wall:.2f}, hpo {hpo_wall:.2f}, "
        f"hpo adds {hpo_wall - raw_wall:.2f}\n"
    )
    keys = sorted(
        set(raw_times) | set(hpo_times),
        key=lambda k: hpo_times.get(k, 0.0) - raw_times.get(k, 0.0),
        reverse=True,
    )
    print("Largest growth from raw to hpo:\n")
    print_rows(keys[: args.top], raw_times, hpo_times, raw_calls, hpo_calls)
    print("\nCalls hpo adds, by name:\n")
    focus = [k for k in keys if any(f in k for f in FOCUS) and hpo_times.get(k, 0) > 0.05]
    print_rows(focus, raw_times, hpo_times, raw_calls, hpo_calls)
    print(
        f"RESULT storage={args.storage} raw_ms={raw_wall:.2f} hpo_ms={hpo_wall:.2f} "
        f"added_ms={hpo_wall - raw_wall:.2f}"
    )


def _noop(study, trial) -> None:
    """A callback, as overhead.py uses one: Optuna then fetches each finished trial."""


if __name__ == "__main__":
    main()
