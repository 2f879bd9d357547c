"""Trial start-up and trainer throughput of the quickstart's text-classification trainer.

A fresh worker process runs hpo trials of ``hpo.trainers.text_classification:train`` (the
quickstart's settings, kept small: 200 training samples, sequence length 32, 1 epoch)
and plain transformers ``Trainer`` runs on the same model, data, batch and seed,
interleaved (hpo trial 1, then plain/hpo pairs in alternating order).

Each hpo trial's wall time is split into process start, imports, data load + tokenize,
model load, train, eval (validation), test (the test pass, run only by a trial that leads
the study when it finishes), latency (the latency probe, once per worker and
architecture), checkpoint, storage calls, runner (everything between trials
outside the trainer: sampler, budget checks, ask/tell) and other trainer set-up. Times
are exclusive: a storage call made from inside evaluation counts as storage, not eval.
Set-up is everything but train, eval and test; the goal is later trials' set-up at most 10 %
of trial 1's. Throughput is training samples per second of ``Trainer.train`` less its
evaluations and checkpoints; the goal is hpo / plain at least 0.97.

    HF_HUB_OFFLINE=1 nice -n 19 python benchmarks/trial_cost.py [--behind] [--epochs 3]
        [--device cuda --bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = (
    "process_start",
    "imports",
    "data",
    "model",
    "train",
    "eval",
    "test",
    "latency",
    "checkpoint",
    "storage",
    "runner",
    "other",
)
WORK = ("train", "eval", "test")
PARAMS = {"learning_rate": 1e-4, "per_device_train_batch_size": 16}
ARGS = {
    "model": "minilm-l6",
    "dataset": {
        "path": "data/reviews.csv",
        "validation_fraction": 0.2,
        "test_fraction": 0.2,
        "max_train_samples": 200,
    },
    "max_seq_length": 32,
    "num_train_epochs": 1,
    "weight_decay": 0.0,
}


class Clock:
    """Exclusive time per label: a wrapped call's time is taken out of its caller's label.

    Wall time is what the breakdown reports; CPU time (the whole process, all threads)
    is kept beside it because on a shared machine it is steadier than wall time.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            clock._stack.append(label)
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                clock._stack.pop()
                clock.totals[label] += elapsed
                clock.cpu[label] += cpu
                if clock._stack:
                    clock.totals[clock._stack[-1]] -= elapsed
                    clock.cpu[clock._stack[-1]] -= cpu

        setattr(owner, attr, timed)

    def take(self) -> dict[str, float]:
        totals, self.totals, self.cpu = dict(self.totals), defaultdict(float), defaultdict(float)
        return totals


# --- the worker process ------------------------------------------------------------------


def instrument(clock: Clock) -> None:
    """Wrap the trainer's steps, the HF Trainer's phases and Optuna's per-trial calls."""
    import optuna
    import transformers

    import hpo.trainers._hf as hf
    import hpo.trainers.text_classification as tc

    clock.wrap(tc, "train", "other")  # the trainer itself: what no other label claims
    clock.wrap(tc, "prepare_data", "data")
    clock.wrap(tc, "build_model", "model")
    clock.wrap(transformers.Trainer, "train", "train")
    clock.wrap(transformers.Trainer, "evaluate", "eval")
    # hpo's trainer reuses the last evaluation for validation: predict is the test pass.
    clock.wrap(transformers.Trainer, "predict", "test")
    if hasattr(hf, "latency_ms"):  # absent in trainers older than the cached probe
        clock.wrap(hf, "latency_ms", "latency")
    clock.wrap(transformers.Trainer, "_save_checkpoint", "checkpoint")
    for method in ("set_user_attr", "report", "should_prune"):
        clock.wrap(optuna.trial.Trial, method, "storage")


def timed_imports() -> float:
    """What trial 1 imports lazily, imported up front so it can be timed on its own."""
    started = time.perf_counter()
    import datasets  # noqa: F401
    import optuna  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Trainer, TrainingArguments  # noqa: F401

    import hpo.runner  # noqa: F401
    import hpo.trainers.text_classification  # noqa: F401

    return time.perf_counter() - started


def study_config(workdir: Path, n_trials: int, device_args: dict[str, Any]) -> Any:
    from hpo.config import validate_study

    raw = {
        "name": "trial-cost",
        "storage": f"sqlite:///{workdir / 'hpo.db'}",
        "seed": 42,
        "sampler": {"type": "random"},
        "budget": {"n_trials": n_trials, "max_failures": 1},
        "trainer": {"ref": "hpo.trainers.text_classification:train", "args": ARGS | device_args},
        "search_space": {k: {"type": "categorical", "choices": [v]} for k, v in PARAMS.items()},
        "output_dir": str(workdir / "runs"),
    }
    return validate_study(raw, path=str(ROOT / "studies" / "quickstart.yaml"))


TRAIN_SPEED: list[tuple[float, float]] = []  # (samples per wall second, per CPU second)


def measure_speed(clock: Clock) -> None:
    """Record training samples/s of every ``Trainer.train`` (its evals and saves left out)."""
    import transformers

    original = transformers.Trainer.train
    nested_labels = ("eval", "test", "checkpoint", "storage")

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        before, cpu_before = dict(clock.totals), dict(clock.cpu)
        started, cpu_started = time.perf_counter(), time.process_time()
        output = original(self, *args, **kwargs)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        elapsed -= sum(clock.totals.get(k, 0) - before.get(k, 0) for k in nested_labels)
        cpu -= sum(clock.cpu.get(k, 0) - cpu_before.get(k, 0) for k in nested_labels)
        samples = len(self.train_dataset) * self.args.num_train_epochs
        TRAIN_SPEED.append((samples / elapsed, samples / cpu))
        return output

    transformers.Trainer.train = train


def plain_run(workdir: Path, device: str, bf16: bool) -> tuple[float, float, float, float]:
    """Plain transformers: the same model, tokenized data, batch, seed and epochs.

    Returns training samples per wall and per CPU second, the run's wall seconds (model
    load, train and the epoch's validation pass: what a plain user's run costs) and the
    training seconds in it.
    The validation split is shuffled: hpo stores it in length order, a user's is random.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    import hpo.trainers.text_classification as tc

    started = time.perf_counter()
    data = next(v for k, v in tc._CACHE.items() if k[0] == "data")  # hpo's tokenized splits
    model_path = next(k[1] for k in tc._CACHE if k[0] == "data")
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(data.label_names)
    )
    cuda = device.startswith("cuda")
    args = TrainingArguments(
        output_dir=str(workdir / "plain"),
        learning_rate=PARAMS["learning_rate"],
        per_device_train_batch_size=PARAMS["per_device_train_batch_size"],
        num_train_epochs=ARGS["num_train_epochs"],
        seed=42,
        data_seed=42,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=bf16,
        dataloader_pin_memory=cuda,
    )
    torch.manual_seed(42)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits["validation"].shuffle(seed=42),
        data_collator=DataCollatorWithPadding(data.tokenizer),
    )
    trainer.remove_callback(PrinterCallback)  # as hpo's trainer does: no per-log prints
    trainer.train()
    speed, cpu_speed = TRAIN_SPEED.pop()
    samples = len(trainer.train_dataset) * args.num_train_epochs
    return speed, cpu_speed, time.perf_counter() - started, samples / speed


def plains_after_each_trial(later: int) -> list[int]:
    """How many plain runs follow each hpo trial: trial 1, then pairs in ABBA order."""
    sequence = ["hpo"]
    for pair in range(later):
        sequence += ["plain", "hpo"] if pair % 2 == 0 else ["hpo", "plain"]
    counts: list[int] = []
    for step in sequence:
        if step == "hpo":
            counts.append(0)
        else:
            counts[-1] += 1
    return counts


def worker(
    spawned_at: float, out: Path, later: int, device: str, bf16: bool, behind: bool
) -> None:
    """The measured process: one hpo worker runs every trial; plain runs go between them.

    The plain runs happen in the trial-finished callback, so all hpo trials share one
    ``run_worker`` call as in a real worker; the clock restarts after each plain run.
    Every trial has the same parameters and seed, so each ties the best and leads the
    study (its test split scored). With ``behind``, a finished trial at accuracy 1.0 is
    added after trial 1: later trials then finish behind the best, as most trials of a
    real study do, and skip the test pass.
    """
    process_start = time.time() - spawned_at
    imports = timed_imports()
    import datasets
    import optuna
    from transformers.utils import logging as hf_logging

    from hpo.runner import run_worker
    from hpo.workers import Worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    clock = Clock()
    instrument(clock)
    measure_speed(clock)
    workdir = Path(tempfile.mkdtemp(prefix="trial-cost-"))
    device_args = {"mixed_precision": "bf16" if bf16 else "no"}
    config = study_config(workdir, later + 1 + int(behind), device_args)
    plains_after = plains_after_each_trial(later)
    trials: list[dict[str, Any]] = []
    plain: list[tuple[float, float, float, float]] = []
    last = [time.perf_counter()]

    def on_trial(study: Any, trial: Any) -> None:
        wall = time.perf_counter() - last[0]
        parts = clock.take()
        parts["runner"] = wall - sum(parts.values())
        speed, cpu_speed = TRAIN_SPEED.pop()
        trials.append({"wall": wall, "parts": parts, "samples_per_s": speed,
                       "samples_per_cpu_s": cpu_speed, "state": trial.state.name})  # fmt: skip
        if behind and len(trials) == 1:
            study.add_trial(
                optuna.trial.create_trial(
                    value=1.0, params=trial.params, distributions=trial.distributions
                )
            )
        for _ in range(plains_after[len(trials) - 1]):
            plain.append(plain_run(workdir, device, bf16))
        clock.take()
        last[0] = time.perf_counter()

    clock.take()
    last[0] = time.perf_counter()
    run_worker(config, worker=Worker(device=device), on_trial=on_trial)
    trials[0]["parts"] |= {"process_start": process_start, "imports": imports}
    plain_wall, plain_cpu = [p[0] for p in plain], [p[1] for p in plain]
    result = {"trials": trials, "plain_samples_per_s": plain_wall}
    result |= {"plain_samples_per_cpu_s": plain_cpu, "plain_wall_s": [p[2] for p in plain]}
    result |= {"plain_train_s": [p[3] for p in plain]}
    out.write_text(json.dumps(result))


# --- the parent: spawn, then report ------------------------------------------------------


def setup(parts: dict[str, float], *, checkpoint: bool = True) -> float:
    skip = WORK if checkpoint else (*WORK, "checkpoint")
    return sum(v for k, v in parts.items() if k not in skip)


def report(data: dict[str, Any]) -> dict[str, float]:
    trials = data["trials"]
    print("| part (s) | trial 1 | " + " | ".join(f"trial {i + 1}" for i in range(1, len(trials))))
    print("|---|" + "---:|" * len(trials))
    for part in PARTS:
        cells = " | ".join(f"{t['parts'].get(part, 0.0):.3f}" for t in trials)
        print(f"| {part} | {cells} |")
    print("| **wall** | " + " | ".join(f"**{t['wall']:.3f}**" for t in trials) + " |")
    first, later = trials[0], trials[1:]
    later_setup = statistics.median(setup(t["parts"]) for t in later)
    later_setup_no_ckpt = statistics.median(setup(t["parts"], checkpoint=False) for t in later)
    # Later trial i and plain run i ran back to back (ABBA order): compare them in pairs.
    wall_ratios = [
        t["samples_per_s"] / p for t, p in zip(later, data["plain_samples_per_s"], strict=True)
    ]
    cpu_ratios = [
        t["samples_per_cpu_s"] / p
        for t, p in zip(later, data["plain_samples_per_cpu_s"], strict=True)
    ]
    # A whole later trial (its epoch, evaluations, test pass, checkpoint and bookkeeping)
    # against the plain run beside it (model load, the epoch and its validation pass).
    plain_walls, plain_trains = data["plain_wall_s"], data["plain_train_s"]
    trial_ratios = [t["wall"] / p for t, p in zip(later, plain_walls, strict=True)]
    # The same at equal training speed: training is one code path in both (the throughput
    # ratio above), and its run-to-run noise here is larger than hpo's extra seconds.
    same_speed_ratios = [
        (train + t["wall"] - t["parts"]["train"]) / wall
        for t, wall, train in zip(later, plain_walls, plain_trains, strict=True)
    ]
    figures = {
        "setup_trial1_s": setup(first["parts"]),
        "setup_later_s": later_setup,
        "setup_ratio": later_setup / setup(first["parts"]),
        "setup_ratio_without_checkpoint": later_setup_no_ckpt
        / setup(first["parts"], checkpoint=False),
        "hpo_samples_per_s": statistics.median(t["samples_per_s"] for t in later),
        "plain_samples_per_s": statistics.median(data["plain_samples_per_s"]),
        "throughput_ratio": statistics.median(wall_ratios),
        "throughput_ratio_cpu": statistics.median(cpu_ratios),
        "trial_cost_ratio": statistics.median(trial_ratios),
        "trial_cost_ratio_same_speed": statistics.median(same_speed_ratios),
        "hpo_extra_s": statistics.median(t["wall"] - t["parts"]["train"] for t in later),
        "plain_extra_s": statistics.median(
            w - t for w, t in zip(plain_walls, plain_trains, strict=True)
        ),
    }
    print()
    print(
        f"set-up (all but train and eval): trial 1 {figures['setup_trial1_s']:.2f} s, later "
        f"trials {later_setup:.2f} s (median) -> {figures['setup_ratio']:.1%} of trial 1 "
        f"(goal <= 10%); without checkpoints {figures['setup_ratio_without_checkpoint']:.1%}"
    )
    print(
        f"train samples/s (medians): hpo {figures['hpo_samples_per_s']:.1f}, plain Trainer "
        f"{figures['plain_samples_per_s']:.1f}; paired hpo/plain {_rounded(wall_ratios)} -> "
        f"median {figures['throughput_ratio']:.3f} (goal >= 0.97); per CPU second "
        f"{_rounded(cpu_ratios)} -> {figures['throughput_ratio_cpu']:.3f}"
    )
    print(
        f"per-epoch cost (whole trial / plain Trainer train+eval): paired "
        f"{_rounded(trial_ratios)} -> median {figures['trial_cost_ratio']:.3f} (goal <= 1.03); "
        f"plain runs {_rounded(data['plain_wall_s'])} s; at equal training speed "
        f"{_rounded(same_speed_ratios)} -> {figures['trial_cost_ratio_same_speed']:.3f} "
        f"(besides training: hpo {figures['hpo_extra_s']:.2f} s, plain "
        f"{figures['plain_extra_s']:.2f} s)"
    )
    return figures


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--later", type=int, default=3, help="later hpo trials (and plain runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--samples", type=int, default=200, help="training samples")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.2, help="validation and test share each"
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs per trial (per-trial costs spread over them)"
    )
    parser.add_argument(
        "--behind",
        action="store_true",
        help="later trials finish behind a better one and skip the test pass (the common case)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        ARGS["dataset"] |= {
            "max_train_samples": args.samples,
            "validation_fraction": args.eval_fraction,
            "test_fraction": args.eval_fraction,
        }
        ARGS["num_train_epochs"] = args.epochs
        worker(args.worker, args.out, args.later, args.device, args.bf16, args.behind)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trial_cost.json"
        command = [sys.executable, __file__, "--out", str(out), "--later", str(args.later),
                   "--samples", str(args.samples), "--eval-fraction", str(args.eval_fraction),
                   "--epochs", str(args.epochs),
                   "--device", args.device,
                   *(["--bf16"] if args.bf16 else []),
                   *(["--behind"] if args.behind else [])]  # fmt: skip
        # A timeout's SIGTERM must take the measured worker process down too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        spawned = time.time()
        child = subprocess.Popen([*command, "--worker", repr(spawned)], env=env, cwd=ROOT)
        try:
            if child.wait() != 0:
                sys.exit(f"trial_cost worker failed with exit code {child.returncode}")
        finally:
            child.kill()
        data = json.loads(out.read_text())
    figures = report(data)
    if args.json:
        args.json.write_text(json.dumps(figures | {"raw": data}, indent=1))
    print(
        f"RESULT setup_ratio={figures['setup_ratio']:.3f} "
        f"setup_ratio_without_checkpoint={figures['setup_ratio_without_checkpoint']:.3f} "
        f"throughput_ratio={figures['throughput_ratio']:.3f} "
        f"throughput_ratio_cpu={figures['throughput_ratio_cpu']:.3f} "
        f"trial_cost_ratio={figures['trial_cost_ratio']:.3f} "
        f"trial_cost_ratio_same_speed={figures['trial_cost_ratio_same_speed']:.3f} "
        f"behind={int(args.behind)} epochs={args.epochs} device={args.device}"
    )


if __name__ == "__main__":
    main()
