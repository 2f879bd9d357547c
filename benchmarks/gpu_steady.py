"""Steady-state training steps on one device: hpo's text trainer against plain ``Trainer``.

For ``gpu_check.sh`` (issue 14): is the GPU busy while hpo trains, and is any idle time
hpo's or the plain ``Trainer``'s? One process runs, for each workload, plain
``transformers.Trainer`` and hpo's text trainer (a trial through ``TrialContext``) on the
same tokenized data, MiniLM-L6 and precision:

- ``small``: the quickstart's work a step (batch 16, short reviews cut at 32 tokens);
- ``large``: work sized for a GPU (batch 128, texts of 6 joined reviews cut at 128 tokens);
- ``small`` again for hpo with 2 CPU threads (a lone worker takes every core by default;
  the first H200 run hinted that this oversubscribes them).

Each run trains on a large shuffled copy of the shipped reviews and is stopped after
``--window`` seconds of steady training; a short warm-up run of each side comes first.
Per run it records:

- samples/s over the steady window: from the end of step 10 to the step that passes
  ``--window`` seconds, the device synchronised at both ends;
- GPU syncs per step, counted with ``torch.cuda.set_sync_debug_mode`` over steps 5-10
  (before the window, since counting slows them), and the code lines that caused them;
- the window's wall-clock span, inside which ``gpu_check.sh`` reads the GPU utilization
  it samples with ``nvidia-smi``.

It prints one line per run and a ``RESULT`` line: hpo / plain samples/s per workload, syncs
per step on each side, the 2-thread run against the default one. ``--small`` shrinks the
data, batches and windows for the CPU dry run.

    python benchmarks/gpu_steady.py --device cuda:0 --bf16 --json steady.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SYNC_STEPS = (4, 10)  # syncs are counted over steps 5-10; the window starts after step 10


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    max_seq_length: int
    reviews_per_text: int
    rows: int  # enough that a window never runs out of training data


WORKLOADS = {
    "small": Workload("small", 16, 32, 1, 24_000),
    "large": Workload("large", 128, 128, 6, 24_000),
}
DRY_WORKLOADS = {
    "small": Workload("small", 8, 32, 1, 600),
    "large": Workload("large", 16, 64, 3, 600),
}


def write_texts(workload: Workload, folder: Path, seed: int = 0) -> Path:
    """A CSV of ``workload.rows`` texts, each some random shipped reviews joined (the
    label is the first one's: only the work a step does matters here)."""
    with open(ROOT / "studies" / "data" / "reviews.csv", newline="") as f:
        reviews = [(row["text"], row["label"]) for row in csv.DictReader(f)]
    rng = random.Random(seed)
    path = folder / f"{workload.name}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(workload.rows):
            picked = rng.sample(reviews, workload.reviews_per_text)
            writer.writerow([" ".join(text for text, _ in picked), picked[0][1]])
    return path


class StepWindow:
    """Counts syncs over SYNC_STEPS, then times a steady window of ``seconds`` and stops
    training at its end (a TrainerCallback's hook, added to every Trainer made here).

    The Trainer fetches a step's batch (and copies it to the device) before
    ``on_step_begin``, so counting runs from the end of one step to the end of another.
    """

    def __init__(self, seconds: float, cuda: bool) -> None:
        self.cuda = cuda
        self._catcher: Any = None
        self.reset(seconds)

    def reset(self, seconds: float) -> None:
        self._stop_counting()  # a run that ended inside the counted steps
        self.seconds = seconds
        self.syncs: list[Any] = []
        self.start: tuple[float, int] | None = None  # (wall time, global step)
        self.end: tuple[float, int] | None = None
        self.cut_short = False

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.time()

    def _stop_counting(self) -> None:
        if self._catcher is not None:
            import torch

            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            self._catcher = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step = state.global_step
        if self.cuda and step == SYNC_STEPS[0]:
            import torch

            self._catcher = warnings.catch_warnings(record=True)
            self.syncs = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif step == SYNC_STEPS[1]:
            self._stop_counting()  # before the window's own synchronize
            self.start = (self._now(), step)
        elif self.start and self.end is None:
            # The data may end first on a fast GPU: then the window ends a step before it
            # (the last step can be a short batch).
            last = step >= state.max_steps - 1
            if time.time() - self.start[0] >= self.seconds or last:
                self.end, self.cut_short = (self._now(), step), last
                control.should_training_stop = True

    def figures(self, batch: int) -> dict[str, Any]:
        if not (self.start and self.end):
            raise RuntimeError("the run ended before its window began: give it more rows")
        steps = self.end[1] - self.start[1]
        wall = self.end[0] - self.start[0]
        messages = [w for w in self.syncs if "synchroniz" in str(w.message)]
        where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in messages)
        count = SYNC_STEPS[1] - SYNC_STEPS[0]
        return {
            "samples_per_s": steps * batch / wall,
            "ms_per_step": 1000 * wall / steps,
            "steps": steps,
            "window": [self.start[0], self.end[0]],
            "cut_short": self.cut_short,
            "syncs_per_step": len(messages) / count if self.cuda else None,
            "sync_sources": dict(where.most_common(5)),
        }


def add_window_to_every_trainer(window: StepWindow) -> None:
    import transformers

    class Callback(transformers.TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            window.on_step_end(*args, **kwargs)

    original = transformers.Trainer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.add_callback(Callback())

    transformers.Trainer.__init__ = init


def params(workload: Workload, data: Path, precision: str) -> dict[str, Any]:
    return {
        "model": "minilm-l6",
        "dataset": {"path": str(data), "validation_fraction": 0.01, "test_fraction": 0.0},
        "max_seq_length": workload.max_seq_length,
        "per_device_train_batch_size": workload.batch,
        "learning_rate": 5e-5,
        "num_train_epochs": 1,
        "save_checkpoints": False,
        "error_examples": 0,
        "mixed_precision": precision,
    }


def trial_context(
    workload: Workload, data: Path, device: str, precision: str, threads: int, work: Path
) -> Any:
    """A trial of the text trainer as a worker runs it: seed 42, this workload's params."""
    import optuna

    from hpo.trainer import TrialContext

    return TrialContext(
        trial=optuna.create_study(direction="maximize").ask(),
        params=params(workload, data, precision),
        objective="eval_accuracy",
        seed=42,
        output_dir=work / f"hpo-{workload.name}-{threads}",
        study_dir=ROOT / "studies",
        device=device,
        threads=threads,
    )


def hpo_run(ctx: Any) -> None:
    """One hpo trial of the text trainer (stopped at the window's end)."""
    from hpo.trainers import text_classification as tc

    tc.train(ctx)


def plain_run(workload: Workload, ctx: Any, device: str, precision: str, work: Path) -> None:
    """Plain transformers on the same tokenized training split (hpo's worker cache), with
    the Trainer's defaults as a user who writes a training script gets them: random
    batches, no evaluation."""
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    import hpo.trainers.text_classification as tc

    args = tc.TextClassificationArgs.model_validate(ctx.params)
    model_path = tc.resolve_model(args.model, ctx.study_dir)
    prepared = tc.prepare_data(args, model_path, ctx)  # cached: tokenized once per workload
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(prepared.label_names)
    )
    cuda = device.startswith("cuda")
    training = TrainingArguments(
        output_dir=str(work / f"plain-{workload.name}"),
        per_device_train_batch_size=workload.batch,
        learning_rate=5e-5,
        num_train_epochs=1,
        seed=42,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_pin_memory=cuda,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=prepared.splits["train"],
        data_collator=DataCollatorWithPadding(prepared.tokenizer),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fp16", action="store_true", help="for GPUs without bf16")
    parser.add_argument("--window", type=float, default=4.0, help="steady seconds per run")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU dry run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import datasets
    import optuna
    import torch
    from transformers.utils import logging as hf_logging

    from hpo.trainer import available_cores

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    threads = args.threads or available_cores()
    cuda = args.device.startswith("cuda")
    window = StepWindow(args.window, cuda)
    add_window_to_every_trainer(window)
    work = Path(tempfile.mkdtemp(prefix="gpu-steady-"))
    workloads = DRY_WORKLOADS if args.small else WORKLOADS
    files = {name: write_texts(w, work) for name, w in workloads.items()}
    # (name, workload, side, threads): hpo first on small, plain first on large.
    # The first run in a process pays one-off costs (CUDA's lazily loaded kernels, caches
    # warming): a short warm-up of each side takes them, its figures unreported.
    runs = [
        ("warm-up_hpo", "small", "hpo", threads),
        ("warm-up_plain", "small", "plain", threads),
        ("small_hpo", "small", "hpo", threads),
        ("small_plain", "small", "plain", threads),
        ("large_plain", "large", "plain", threads),
        ("large_hpo", "large", "hpo", threads),
        ("small_hpo_threads2", "small", "hpo", 2),
    ]
    results: dict[str, Any] = {}
    for name, load, side, run_threads in runs:
        workload = workloads[load]
        ctx = trial_context(workload, files[load], args.device, precision, run_threads, work)
        window.reset(args.window / 4 if name.startswith("warm-up") else args.window)
        torch.set_num_threads(run_threads)
        if side == "hpo":
            hpo_run(ctx)
        else:
            plain_run(workload, ctx, args.device, precision, work)
        results[name] = window.figures(workload.batch) | {"threads": run_threads}
        if name.startswith("warm-up"):
            del results[name]
            continue
        r = results[name]
        syncs = "n/a" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.1f}"
        print(
            f"{name}: {r['samples_per_s']:.1f} samples/s, {r['ms_per_step']:.1f} ms/step over "
            f"{r['steps']} steps{' (data ran out)' if r['cut_short'] else ''}, threads "
            f"{run_threads}, syncs/step {syncs} {r['sync_sources']}",
            flush=True,
        )
        if args.json:  # after every run: a timeout keeps what was measured
            args.json.write_text(json.dumps({"figures": {}, "runs": results}, indent=1))
    figures = {
        "steady_small_ratio": results["small_hpo"]["samples_per_s"]
        / results["small_plain"]["samples_per_s"],
        "steady_large_ratio": results["large_hpo"]["samples_per_s"]
        / results["large_plain"]["samples_per_s"],
        "steady_threads2_ratio": results["small_hpo_threads2"]["samples_per_s"]
        / results["small_hpo"]["samples_per_s"],
    }
    if cuda:
        figures["syncs_per_step_hpo"] = results["large_hpo"]["syncs_per_step"]
        figures["syncs_per_step_plain"] = results["large_plain"]["syncs_per_step"]
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "runs": results}, indent=1))
    shown = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    print(f"RESULT {' '.join(shown)} device={args.device} precision={precision} threads={threads}")


if __name__ == "__main__":
    main()
