"""The scale curve: 1, 4, 16 and 64 workers on Postgres directly and through the storage proxy.

Each worker is a process on this machine (``hpo run --workers N``) running
:func:`sleep_trainer`: the toy trainer's one epoch, a 1-second sleep (everything else is
hpo, Optuna and the storage: claim, ask, one report, attributes, tell). Each
configuration runs ``N x --trials-per-worker`` trials in a fresh study, against the test
Postgres directly, then through ``hpo storage-proxy`` in front of the same database.
Starting 64 Python processes on a small machine takes longer than a worker's trials, so
each worker's first trial waits at a gate until all N have claimed theirs; the
measurement starts when the gate opens and leaves those first trials out.

- **throughput**: trials finished per second after the gate opened, over the middle 80 %
  of those trials (the first and last 10 % are the ramp and the tail);
- **efficiency**: throughput / (N x the one-worker throughput of the same path): 1.0 is
  ideal, the goal through the proxy at 64 workers is at least 0.8;
- **added latency per trial**: a worker's start-to-start time between consecutive trials
  (after its first) minus the trainer's 1 s (claim, ask, tell, attributes), p50 and p95;
- **database connections**: the most seen in ``pg_stat_activity`` during the run (direct:
  every connection to the database beyond those open before; proxy: the proxy's own,
  ``application_name = hpo-storage-proxy``), sampled every 0.2 s;
- **exactness**: finished = budget, no trial failed or left RUNNING.

A configuration that fails (Postgres refuses connections past ``max_connections``) is
reported as such, with the first error line. Writes a JSON of every figure and a plotly
page (``--out``, ``--plot``).

    HPO_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/test \\
        python benchmarks/scale_curve.py [--workers 1 4 16 64] [--trials-per-worker 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STUDY = """\
name: {name}
storage: {storage}
seed: 0
sampler: {{type: random}}
budget: {{n_trials: {n_trials}, max_failures: 1000}}
workers: {{heartbeat_interval: 10, grace_period: 60}}
output_dir: {output}
trainer:
  ref: benchmarks.scale_curve:sleep_trainer
  args: {{num_train_epochs: 1, seconds_per_epoch: {trainer_s}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.3}}
"""
TRAINER_S = 1.0  # the trainer; --trainer-seconds for longer trials
GATE_VARIABLE = "HPO_SCALE_GATE"
GATE_PATIENCE_S = 45.0
_waited = False


def sleep_trainer(ctx: Any) -> dict[str, float]:
    """The toy trainer (one 1-second epoch); a process's first trial first waits until the
    file named by ``$HPO_SCALE_GATE`` exists."""
    global _waited
    from hpo.trainers import toy

    gate = os.environ.get(GATE_VARIABLE)
    if gate and not _waited:
        while not os.path.exists(gate):
            time.sleep(0.02)
        _waited = True
    return toy.train(ctx)


def running_trials(url: str, name: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    query = (
        "SELECT count(*) FROM trials JOIN studies USING (study_id)"
        " WHERE studies.study_name = :name AND trials.state = 'RUNNING'"
    )
    with engine.connect() as connection:
        return int(connection.execute(sqlalchemy.text(query), {"name": name}).scalar())


def connections(url: str, proxy: bool) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        if proxy:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"
            found = connection.execute(sqlalchemy.text(query), {"a": "hpo-storage-proxy"})
        else:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            found = connection.execute(sqlalchemy.text(query))
        return int(found.scalar())


def start_proxy(
    database: str, env: dict[str, str] | None = None, *args: str
) -> tuple[subprocess.Popen, str]:
    """An ``hpo storage-proxy`` process on a free port (``env`` added to this process's,
    ``args`` added to its command line) and the URL it listens on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "storage-proxy", "--storage", database, "--port", "0"]
        + list(args),
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on " not in line:
        raise SystemExit(f"the storage proxy did not start: {line}")
    return process, line.split("listening on ")[1].split()[0]


def run_one(database: str, storage: str, workers: int, per_worker: int, proxy: bool) -> dict:
    """One configuration: run it, sample connections, read the trials back."""
    import optuna

    from hpo.storage import open_storage

    folder = Path(tempfile.mkdtemp(prefix="hpo-scale-"))
    name = f"scale-{'proxy' if proxy else 'pg'}-{workers}-{uuid.uuid4().hex[:6]}"
    n_trials = workers * per_worker
    study_file = folder / "study.yaml"
    study_file.write_text(
        STUDY.format(
            name=name,
            storage=storage,
            n_trials=n_trials,
            output=folder / "runs",
            trainer_s=TRAINER_S,
        )
    )
    baseline = 0 if proxy else connections(database, proxy=False)
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                seen.append(connections(database, proxy) - baseline)
            except Exception:  # noqa: BLE001 - a full server refuses the sampler too
                pass
            time.sleep(0.2)

    gate = folder / "gate"
    opened: list[float] = []
    at_gate: list[int] = []

    def open_gate() -> None:
        # Once every worker holds its first trial; or once their number has not grown for
        # GATE_PATIENCE_S (a database out of connections refused the rest: measured as is).
        best, since = -1, time.monotonic()
        while not done.is_set():
            try:
                running = running_trials(database, name)
            except Exception:  # noqa: BLE001 - the study may not exist yet, or no connection
                running = best
            if running > best:
                best, since = running, time.monotonic()
            if running >= workers or (best > 0 and time.monotonic() - since > GATE_PATIENCE_S):
                opened.append(time.time())
                at_gate.append(running)
                gate.touch()
                return
            time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, open_gate)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "hpo", "run", str(study_file), "--workers", str(workers)]
        + ["--log-format", "plain"],
        cwd=folder,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            GATE_VARIABLE: str(gate),
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.monotonic() - started
    done.set()
    gate.touch()  # a run that failed before the gate opened must not leave waiters
    for thread in threads:
        thread.join()
    result: dict[str, Any] = {
        "path": "proxy" if proxy else "postgres",
        "workers": workers,
        "budget": n_trials,
        "exit": run.returncode,
        "wall_s": round(wall, 1),
        "max_connections": max(seen, default=0),
        "running_at_gate": at_gate[0] if at_gate else None,
    }
    storage_obj = open_storage(database, read_only=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        study = None
    trials = study.get_trials(deepcopy=False) if study else []
    states = Counter(t.state.name for t in trials)
    result["states"] = dict(states)
    result["exact"] = states.get("COMPLETE", 0) == n_trials and len(trials) == n_trials
    if run.returncode != 0:
        errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
        result["error"] = (errors or run.stderr.splitlines() or ["?"])[-1][:300]
    result.update(steady_figures(trials, opened[0] if opened else None))
    storage_obj.engine.dispose()
    return result


def steady_figures(trials: list[Any], gate_opened: float | None = None) -> dict[str, Any]:
    """Throughput and the added latency per trial (see the module).

    Throughput: the trials completed after the gate opened (``gate_opened``, epoch
    seconds; without a gate, after the last worker's first start, as ``gpu_packing.py``
    uses it), counted over their middle 80 %: the first and last 10 % are the ramp and the
    tail, when not every worker is busy. Latency: each worker's start-to-start intervals,
    its first trial (the one that waited at the gate) left out.
    """
    import datetime as dt

    finished = [t for t in trials if t.state.name == "COMPLETE" and t.datetime_complete]
    by_worker: dict[str, list[Any]] = defaultdict(list)
    for trial in finished:
        by_worker[trial.user_attrs.get("hpo:worker", "?")].append(trial)
    if not by_worker:
        return {}
    for runs in by_worker.values():
        runs.sort(key=lambda t: t.datetime_start)
    if gate_opened is not None:
        start = dt.datetime.fromtimestamp(gate_opened)
    else:
        start = max(runs[0].datetime_start for runs in by_worker.values())
    ends = sorted(t.datetime_complete for t in finished if t.datetime_complete > start)
    figures: dict[str, Any] = {"workers_seen": len(by_worker)}
    low, high = int(0.1 * len(ends)), int(0.9 * len(ends))
    if high > low and (span := (ends[high] - ends[low]).total_seconds()) > 0:
        figures["throughput"] = round((high - low) / span, 3)
        figures["window_s"] = round(span, 1)
    skip = 1 if gate_opened is not None else 0
    added = sorted(
        (b.datetime_start - a.datetime_start).total_seconds() - TRAINER_S
        for runs in by_worker.values()
        for a, b in zip(runs[skip:], runs[skip + 1 :], strict=False)
    )
    if added:
        figures["added_p50_ms"] = round(1000 * statistics.median(added), 1)
        figures["added_p95_ms"] = round(1000 * added[int(0.95 * (len(added) - 1))], 1)
    return figures


def plot(results: list[dict], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "trials per second",
            "added latency per trial, p95 (ms)",
            "database connections",
        ),
    )
    ns = sorted({r["workers"] for r in results})
    for path_name, colour in (("postgres", "#636efa"), ("proxy", "#ef553b")):
        rows = {r["workers"]: r for r in results if r["path"] == path_name}
        xs = [n for n in ns if n in rows]
        for col, key in ((1, "throughput"), (2, "added_p95_ms"), (3, "max_connections")):
            figure.add_trace(
                go.Scatter(
                    x=xs,
                    y=[rows[n].get(key) for n in xs],
                    name=path_name,
                    legendgroup=path_name,
                    showlegend=col == 1,
                    mode="lines+markers",
                    line={"color": colour},
                ),
                row=1,
                col=col,
            )
    one = next((r for r in results if r["path"] == "proxy" and r["workers"] == 1), None)
    if one and one.get("throughput"):
        figure.add_trace(
            go.Scatter(
                x=ns,
                y=[n * one["throughput"] for n in ns],
                name="ideal (N x one worker, proxy)",
                mode="lines",
                line={"dash": "dot", "color": "grey"},
            ),
            row=1,
            col=1,
        )
    for col in (1, 2, 3):
        figure.update_xaxes(type="log", title_text="workers", tickvals=ns, row=1, col=col)
    figure.update_layout(
        width=1300, height=430, title="hpo scale curve: Postgres vs storage proxy"
    )
    figure.write_html(path, include_plotlyjs=True)  # opens offline


def screenshot(page: Path, png: Path) -> None:
    """The plot as a PNG, through headless Chromium (``apt-get install chromium``)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: no PNG", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", f"--user-data-dir={profile}"]
            + [f"--screenshot={png.resolve()}", "--window-size=1320,450", "--hide-scrollbars"]
            + [page.resolve().as_uri()],
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    global TRAINER_S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--paths", nargs="+", default=["postgres", "proxy"])
    parser.add_argument("--out", type=Path, default=Path("scale_curve.json"))
    parser.add_argument("--plot", type=Path, default=Path("scale_curve.html"))
    parser.add_argument("--png", type=Path, help="also a PNG of the plot (headless Chromium)")
    parser.add_argument("--trainer-seconds", type=float, default=1.0)
    args = parser.parse_args()
    TRAINER_S = args.trainer_seconds
    database = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not database:
        raise SystemExit("set HPO_TEST_POSTGRES_URL to a Postgres URL (see the module doc)")
    results = []
    proxy, proxy_url = start_proxy(database) if "proxy" in args.paths else (None, "")
    try:
        for workers in args.workers:
            for path_name in args.paths:
                is_proxy = path_name == "proxy"
                storage = proxy_url if is_proxy else database
                result = run_one(database, storage, workers, args.trials_per_worker, is_proxy)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
    for path_name in args.paths:
        rows = {r["workers"]: r for r in results if r["path"] == path_name}
        one = rows.get(1, {}).get("throughput")
        for r in rows.values():
            if one and r.get("throughput"):
                r["efficiency"] = round(r["throughput"] / (r["workers"] * one), 3)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.plot)
    if args.png:
        screenshot(args.plot, args.png)
    print(
        f"{'path':9} {'N':>3} {'exit':>4} {'exact':>5} {'trials/s':>8} {'eff':>5} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'conns':>5}"
    )
    for r in results:
        print(
            f"{r['path']:9} {r['workers']:>3} {r['exit']:>4} {str(r['exact']):>5} "
            f"{r.get('throughput', '-'):>8} {r.get('efficiency', '-'):>5} "
            f"{r.get('added_p50_ms', '-'):>7} {r.get('added_p95_ms', '-'):>7} "
            f"{r['max_connections']:>5}"
        )
    top = max(args.workers)
    final = next((r for r in results if r["path"] == "proxy" and r["workers"] == top), {})
    print(f"RESULT proxy_efficiency_{top}={final.get('efficiency', 'nan')}")


if __name__ == "__main__":
    main()
