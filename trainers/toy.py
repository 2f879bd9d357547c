"""A synthetic fine-tuning learning curve: hundreds of trials in seconds.

The curve rises with epochs toward a ceiling set by ``learning_rate`` (best near 1e-4,
log scale), ``dropout`` (best near 0.1), ``weight_decay`` (a little helps) and
``per_device_train_batch_size`` (smaller learns faster per epoch). It reports
``eval_accuracy`` every epoch through the same context as the real trainer (and a final
``latency_ms`` that grows with the stand-in model ``size``), is
deterministic for a given seed, and ignores parameters it does not model. It exists for
tests and benchmarks: the whole orchestration path runs at no training cost.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time

from pydantic import BaseModel, ConfigDict, Field

from hpo.contract import Trainer
from hpo.trainer import TrialContext


class ToyArgs(BaseModel):
    """Arguments of the toy trainer; unknown hyperparameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    per_device_train_batch_size: int = Field(16, gt=0)
    num_train_epochs: int = Field(3, gt=0)
    noise: float = Field(0.01, ge=0)
    seconds_per_epoch: float = Field(0.0, ge=0)
    # A stand-in for the base model's size: bigger learns a little better but serves
    # slower (latency_ms), so studies with several objectives have a real trade-off.
    size: float = Field(1.0, gt=0)
    save_checkpoints: bool = False
    # A stand-in for the weights: bytes of padding in each checkpoint (weights.bin), so
    # copying, uploading and deleting checkpoints costs what a real model's would.
    checkpoint_bytes: int = Field(0, ge=0, le=2**31)


def ceiling(args: ToyArgs) -> float:
    """The accuracy the curve approaches with many epochs."""
    lr_fit = math.exp(-((math.log10(args.learning_rate) + 4.0) ** 2) / 0.8)
    dropout_fit = 1.0 - 2.0 * (args.dropout - 0.1) ** 2
    decay_fit = 1.0 + 0.05 * min(args.weight_decay, 0.1) / 0.1
    size_fit = 1.0 - 0.1 * (1.0 / args.size - 1.0)
    return 0.5 + 0.42 * lr_fit * dropout_fit * decay_fit * size_fit


def accuracy(args: ToyArgs, epoch: int, seed: int) -> float:
    """Validation accuracy after ``epoch`` epochs, with seeded noise."""
    speed = 0.6 * (16 / args.per_device_train_batch_size) ** 0.5
    speed *= min(2.0, (args.learning_rate / 1e-4) ** 0.3)
    mean = 0.5 + (ceiling(args) - 0.5) * (1.0 - math.exp(-speed * epoch))
    # The padding changes no score: left out, so every curve stays what it was before it.
    key = f"{seed}:{args.model_dump_json(exclude={'checkpoint_bytes'})}:{epoch}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    return min(1.0, max(0.0, mean + rng.gauss(0.0, args.noise)))


def train(ctx: TrialContext) -> dict[str, float]:
    """Report one evaluation per epoch; stop early when the pruner says so.

    With ``save_checkpoints`` each epoch writes ``checkpoint-<epoch>/state.json`` (the
    real trainer's layout), and a retried trial resumes after its checkpoint's epoch.
    """
    args = ToyArgs.model_validate(ctx.params)
    metrics: dict[str, float] = {}
    first = 1
    if ctx.resume_from is not None:
        first = json.loads((ctx.resume_from / "state.json").read_text())["epoch"] + 1
        ctx.set_attr("resumed_at_epoch", first)
    for epoch in range(first, args.num_train_epochs + 1):
        if args.seconds_per_epoch:
            time.sleep(args.seconds_per_epoch)
        value = accuracy(args, epoch, ctx.seed)
        metrics = {"eval_accuracy": value, "eval_loss": 1.0 - value, "epoch": float(epoch)}
        ctx.report(epoch, metrics)
        if args.save_checkpoints:
            folder = ctx.output_dir / f"checkpoint-{epoch}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "state.json").write_text(json.dumps({"epoch": epoch}))
            if args.checkpoint_bytes:
                (folder / "weights.bin").write_bytes(os.urandom(args.checkpoint_bytes))
            ctx.set_checkpoint(folder)
        # After the last epoch there is nothing left to save by pruning: the trial completes.
        if epoch < args.num_train_epochs and ctx.should_prune():
            break
    last = int(metrics.get("epoch", args.num_train_epochs))
    metrics["test_accuracy"] = accuracy(args, last, ctx.seed + 1)
    metrics["latency_ms"] = 4.0 * args.size
    return metrics


TRAINER = Trainer(train, args_model=ToyArgs)
