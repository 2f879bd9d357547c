"""Trial packing on one GPU: study throughput at 1, 2, 4 and 8 trials per GPU (issue 28).

For each K, runs the quickstart study (packaged MiniLM-L6, the shipped reviews) in a fresh
SQLite file with ``hpo run --workers K --devices 0`` (K worker processes on one GPU, each
held to 1/K of its memory) and ``2 x K`` trials whose work is the same for every K
(``--set`` pins the epochs and the batch, and turns pruning off; the learning rate and
the rest are still sampled). Measured per K from the trials' own timestamps: trials per
minute in the steady window (the last worker's first start to the first worker's last
finish: process and CUDA start-up excluded), each trial's duration, and the GPU's memory
in use and utilization sampled every 0.5 s with ``nvidia-smi`` (peak and mean).
``speedup_K`` = throughput at K / throughput at 1; the last line is
``RESULT packing_speedup_8=...``.

On a machine without a GPU (``--dry-run``, or none visible) it runs the same steps on the
CPU with ``--devices none`` and 40 samples, as proof that the script works, not a figure.

    python benchmarks/gpu_packing.py [--per-gpu 1 2 4 8] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scale_curve import steady_figures  # noqa: E402 - after the path


def sample_gpu(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """(memory used MiB, utilization %) every 0.5 s while ``stop`` is not set."""
    while not stop.is_set():
        try:
            line = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=memory.used,utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            used, util = (float(v) for v in line.split(","))
            samples.append((used, util))
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        stop.wait(0.5)


def run_packed(per_gpu: int, dry: bool) -> dict:
    import optuna

    folder = Path(tempfile.mkdtemp(prefix="hpo-packing-"))
    shutil.copytree(
        ROOT / "studies" / "data", folder / "data", ignore=shutil.ignore_patterns("*.py")
    )
    shutil.copy(ROOT / "studies" / "quickstart.yaml", folder / "quickstart.yaml")
    storage = f"sqlite:///{folder / 'hpo.db'}"
    n_trials = 2 * per_gpu
    overrides = [
        f"storage={storage}",
        f"budget.n_trials={n_trials}",
        "name=packing",
        "pruner={type: none}",
        "search_space.num_train_epochs={type: categorical, choices: [2]}",
        "search_space.per_device_train_batch_size={type: categorical, choices: [32]}",
    ]
    if dry:
        overrides += ["trainer.args.dataset.max_train_samples=40"]
    command = [sys.executable, "-m", "hpo", "run", str(folder / "quickstart.yaml")]
    command += [
        "--workers",
        str(per_gpu),
        "--devices",
        "none" if dry else "0",
        "--log-format",
        "plain",
    ]
    for override in overrides:
        command += ["--set", override]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(samples, stop), daemon=True)
    if not dry:
        sampler.start()
    started = time.monotonic()
    run = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    wall = time.monotonic() - started
    stop.set()
    study = optuna.load_study(study_name="packing", storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    figures = steady_figures(trials)
    result = {
        "per_gpu": per_gpu,
        "exit": run.returncode,
        "finished": f"{len(done)}/{n_trials}",
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "wall_s": round(wall, 1),
        "trials_per_min": round(60 * figures["throughput"], 2)
        if "throughput" in figures
        else None,
        "trial_s_mean": round(
            sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
            / max(1, len(done)),
            1,
        ),
        "gpu_mem_peak_mib": max((m for m, _ in samples), default=None),
        "gpu_util_mean": round(sum(u for _, u in samples) / len(samples), 1) if samples else None,
    }
    if run.returncode != 0:
        result["error"] = run.stderr.strip().splitlines()[-1:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("gpu_packing.json"))
    args = parser.parse_args()
    dry = args.dry_run or shutil.which("nvidia-smi") is None
    results = []
    for k in args.per_gpu:
        result = run_packed(k, dry)
        results.append(result)
        print(json.dumps(result), flush=True)
    base = results[0].get("trials_per_min")
    for r in results:
        if base and r.get("trials_per_min"):
            r["speedup"] = round(r["trials_per_min"] / base, 2)
    args.json.write_text(json.dumps(results, indent=2))
    mode = "dry-run-cpu" if dry else "gpu"
    last = results[-1]
    print(f"RESULT packing_speedup_{last['per_gpu']}={last.get('speedup')} mode={mode}")


if __name__ == "__main__":
    main()
