"""A LoRA trial through hpo against the same LoRA fine-tune with plain peft + Trainer.

One process runs hpo trials of ``hpo.trainers.text_classification:train`` with a LoRA
adapter (packaged MiniLM-L6, ``studies/data/reviews.csv``, r 8, alpha 16, dropout 0.05 on
query and value, the head trained in full) in one ``run_worker`` call, and between them
plain runs of the same fine-tune: ``peft.get_peft_model`` on
``AutoModelForSequenceClassification.from_pretrained`` with the same ``LoraConfig``,
``transformers.Trainer`` on hpo's tokenized splits, same batch, learning rate, epochs,
seed and threads, evaluating each epoch. Trial 1 is a warm-up (imports, data load and
tokenization: what a worker pays once); then plain and hpo runs alternate in pairs
(plain hpo, hpo plain, ...) so machine noise hits both alike.

Per-epoch wall time: a whole hpo trial (model from the cached base weights, adapter,
training, per-epoch evaluation, checkpoints, the test pass of a leading trial, storage
and runner bookkeeping) over its epochs, against a plain run (model from disk, adapter,
training, per-epoch evaluation; no checkpoints) over its epochs. The goal is hpo / plain
at most 1.03, the median of the paired ratios.

Disk: a final full fine-tune trial (``adapter.type: none``, same settings) in its own
study; each trial's folder is measured when it finishes (what its checkpoints take).

    HF_HUB_OFFLINE=1 python benchmarks/lora_overhead.py [--pairs 3] [--samples 200] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["query", "value"]}
PARAMS = {"learning_rate": 1e-3, "per_device_train_batch_size": 16}


def trainer_args(samples: int, epochs: int, adapter: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "minilm-l6",
        "dataset": {
            "path": "data/reviews.csv",
            "validation_fraction": 0.2,
            "test_fraction": 0.2,
            "max_train_samples": samples,
        },  # fmt: skip
        "max_seq_length": 32,
        "num_train_epochs": epochs,
        "adapter": adapter,
    }


def study_config(name: str, workdir: Path, n_trials: int, args: dict[str, Any]) -> Any:
    from hpo.config import validate_study

    raw = {
        "name": name,
        "storage": f"sqlite:///{workdir / 'hpo.db'}",
        "seed": 42,
        "sampler": {"type": "random"},
        "budget": {"n_trials": n_trials, "max_failures": 1},
        "trainer": {"ref": "hpo.trainers.text_classification:train", "args": args},
        "search_space": {k: {"type": "categorical", "choices": [v]} for k, v in PARAMS.items()},
        "output_dir": str(workdir / "runs"),
        "keep_checkpoints": "all",
    }
    return validate_study(raw, path=str(ROOT / "studies" / "quickstart.yaml"))


def trial_mb(workdir: Path, study: Any, trial: Any) -> float:
    """What a finished trial's folder (its checkpoints) takes on disk, MiB."""
    folder = workdir / "runs" / study.study_name / f"trial-{trial.number:04d}"
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def plain_run(workdir: Path, epochs: int) -> float:
    """The same LoRA fine-tune with plain peft + Trainer; its wall seconds."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
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
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(data.label_names)
    )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # peft then trains the classifier in full too
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    )
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(workdir / "plain"),
        learning_rate=PARAMS["learning_rate"],
        per_device_train_batch_size=PARAMS["per_device_train_batch_size"],
        num_train_epochs=epochs,
        seed=42,
        data_seed=42,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits["validation"].shuffle(seed=42),
        data_collator=DataCollatorWithPadding(data.tokenizer),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="hpo/plain pairs after the warm-up")
    parser.add_argument("--samples", type=int, default=200, help="training samples")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import optuna
    from transformers.utils import logging as hf_logging

    from hpo.runner import run_worker
    from hpo.workers import Worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    workdir = Path(tempfile.mkdtemp(prefix="lora-overhead-"))
    # After trial 1 (warm-up): P H, H P, P H, ... -> plain runs after trials 1, 3, 4, 5, 6...
    order: list[str] = []
    for pair in range(args.pairs):
        order += ["plain", "hpo"] if pair % 2 == 0 else ["hpo", "plain"]
    hpo_walls: list[float] = []
    plain_walls: list[float] = []
    lora_mb: list[float] = []
    last = [time.perf_counter()]
    pending = list(order)

    def on_trial(study: Any, trial: Any) -> None:
        wall = time.perf_counter() - last[0]
        lora_mb.append(trial_mb(workdir, study, trial))
        if trial.number > 0:
            hpo_walls.append(wall)
            pending.pop(0)  # this trial
        while pending and pending[0] == "plain":
            plain_walls.append(plain_run(workdir, args.epochs))
            pending.pop(0)
        last[0] = time.perf_counter()

    lora_args = trainer_args(args.samples, args.epochs, LORA)
    run_worker(
        study_config("lora-overhead", workdir, args.pairs + 1, lora_args),
        worker=Worker(device="cpu"),
        on_trial=on_trial,
    )
    full_mb: list[float] = []
    full_args = trainer_args(args.samples, args.epochs, {"type": "none"})
    run_worker(
        study_config("full-overhead", workdir, 1, full_args),
        worker=Worker(device="cpu"),
        on_trial=lambda study, trial: full_mb.append(trial_mb(workdir, study, trial)),
    )
    epochs = args.epochs
    ratios = [h / p for h, p in zip(hpo_walls, plain_walls, strict=True)]
    print(f"hpo LoRA trials (s, after the warm-up): {[round(w, 2) for w in hpo_walls]}")
    print(f"plain peft + Trainer runs (s): {[round(w, 2) for w in plain_walls]}")
    print(
        f"per epoch: hpo {statistics.median(hpo_walls) / epochs:.2f} s, plain "
        f"{statistics.median(plain_walls) / epochs:.2f} s; paired ratios "
        f"{[round(r, 3) for r in ratios]} -> median {statistics.median(ratios):.3f} "
        "(goal <= 1.03)"
    )
    print(
        f"a trial's checkpoints: LoRA {statistics.median(lora_mb):.2f} MiB, full fine-tune "
        f"{full_mb[0]:.1f} MiB ({full_mb[0] / statistics.median(lora_mb):.0f}x)"
    )
    print(
        f"RESULT lora_epoch_ratio={statistics.median(ratios):.3f} "
        f"lora_checkpoint_mb={statistics.median(lora_mb):.2f} "
        f"full_checkpoint_mb={full_mb[0]:.1f} samples={args.samples} epochs={epochs} "
        f"pairs={args.pairs}"
    )


if __name__ == "__main__":
    main()
