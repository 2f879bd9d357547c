"""A short quickstart study on one device, for ``gpu_check.sh`` to sample GPU use during.

Runs ``studies/quickstart.yaml`` (TPE + Hyperband, the shipped reviews data) with a
fresh SQLite file, ``--trials`` trials and the worker on ``--device``; prints each
trial's duration and the study's wall time. ``--small`` shrinks the data and epochs so
the CPU dry run of ``gpu_check.sh`` finishes in a minute or two.

    python benchmarks/gpu_study.py --device cuda:0 --bf16 [--trials 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def record_train_windows() -> list[tuple[float, float]]:
    """Wall-clock (start, end) of each ``Trainer.train`` call, filled in as trials run.

    gpu_check.sh reads the GPU utilization inside these windows: a study's wall also holds
    imports, CUDA start-up, data preparation and checkpoints, when no GPU work is due.
    """
    import transformers

    windows: list[tuple[float, float]] = []
    original = transformers.Trainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            windows.append((started, time.time()))

    transformers.Trainer.train = train
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fp16", action="store_true", help="for GPUs without bf16")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--small", action="store_true", help="50 samples, 1 epoch (dry run)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores, as hpo run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import optuna

    from hpo.config import load_study
    from hpo.runner import run_worker
    from hpo.workers import Worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="gpu-study-"))
    overrides = [
        f"storage=sqlite:///{work / 'hpo.db'}",
        f"output_dir={work / 'runs'}",
        f"budget.n_trials={args.trials}",
        # Quoted: a bare `no` is YAML for false.
        "trainer.args.mixed_precision="
        + ("bf16" if args.bf16 else "fp16" if args.fp16 else repr("no")),
    ]
    if args.small:
        overrides += [
            "trainer.args.dataset.max_train_samples=50",
            "search_space.num_train_epochs.high=1",
        ]
    config = load_study(ROOT / "studies" / "quickstart.yaml", overrides)
    train_windows = record_train_windows()
    started = time.monotonic()
    run_worker(config, worker=Worker(device=args.device, threads=args.threads))
    wall = time.monotonic() - started
    study = optuna.load_study(study_name=config.name, storage=config.storage)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "duration_s": t.user_attrs.get("hpo:duration_s"),
            "epochs": t.user_attrs.get("hpo:epochs"),
            "device": t.user_attrs.get("hpo:device"),
            "value": t.value,
        }
        for t in study.trials
    ]
    for t in trials:
        print(json.dumps(t))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"wall_s": wall, "trials": trials, "train_windows": train_windows}, indent=1
            )
        )
    threads = f" threads={args.threads}" if args.threads else ""
    print(f"RESULT study_wall_s={wall:.1f} trials={len(trials)} device={args.device}{threads}")


if __name__ == "__main__":
    main()
