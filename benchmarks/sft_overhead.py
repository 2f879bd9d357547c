"""A causal-LM trial through hpo against the same fine-tune with plain TRL ``SFTTrainer``.

One process runs hpo trials of ``hpo.trainers.causal_lm:train`` (LoRA r 8 on q_proj and
v_proj, prompt/completion data, completion-only loss) in one ``run_worker`` call, and
between them plain runs of the same fine-tune: ``AutoModelForCausalLM.from_pretrained``,
``SFTTrainer`` with the same ``LoraConfig`` (peft's ``CAUSAL_LM``), on hpo's TRL-prepared
splits, same batch, learning rate, epochs, seed and threads, evaluating each epoch, with
random batches (``group_by_length: false`` on the hpo side too). Trial 1 is a warm-up
(imports, data preparation: what a worker pays once); then plain and hpo runs alternate in
pairs (plain hpo, hpo plain, ...) so machine noise hits both alike.

Per-epoch wall time: a whole hpo trial (model from the cached weights, adapter, training,
per-epoch evaluation with perplexity, checkpoints, the test pass of a leading trial, the
latency probe, storage and runner bookkeeping; no generations, no error analysis) over its
epochs, against a plain run (model from disk, adapter, training, per-epoch evaluation; no
checkpoints) over its epochs. The goal is hpo / plain at most 1.03, the median of the
paired ratios.

The model: ``--model DIR`` (a local causal LM), else a random Llama of ~1.6 M parameters
with a BPE tokenizer trained here on the data, built in a temporary folder. The data:
``--data FILE`` (prompt/completion JSON lines), else 1,000 word-reversal rows made here.

    HF_HUB_OFFLINE=1 python benchmarks/sft_overhead.py [--pairs 3] [--epochs 1] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA = {
    "type": "lora",
    "r": 8,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
}
PARAMS = {"learning_rate": 1e-3, "per_device_train_batch_size": 16}
MAX_SEQ_LENGTH = 64
WORDS = "red green blue cat dog sun moon tree river stone fire wind salt rain".split()


def make_data(path: Path, n: int = 1_000) -> Path:
    """Word-reversal prompts and completions, seeded."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            words = rng.sample(WORDS, 4)
            row = {
                "prompt": f"reverse: {' '.join(words)} =>",
                "completion": " " + " ".join(reversed(words)),
            }
            f.write(json.dumps(row) + "\n")
    return path


def make_model(folder: Path, data: Path) -> Path:
    """A random 4-layer Llama (width 128) and a BPE tokenizer trained on ``data``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    lines = [" ".join(json.loads(line).values()) for line in data.open(encoding="utf-8")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_SEQ_LENGTH * 2,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def study_config(workdir: Path, n_trials: int, model: Path, data: Path, epochs: int) -> Any:
    from hpo.config import validate_study

    args = {
        "model": str(model),
        "dataset": {"path": str(data), "format": "prompt_completion"},
        "max_seq_length": MAX_SEQ_LENGTH,
        "num_train_epochs": epochs,
        "adapter": LORA,
        "group_by_length": False,  # random batches, as the plain SFTTrainer draws them
        "error_examples": 0,
    }
    raw = {
        "name": "sft-overhead",
        "storage": f"sqlite:///{workdir / 'hpo.db'}",
        "seed": 42,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "sampler": {"type": "random"},
        "budget": {"n_trials": n_trials, "max_failures": 1},
        "trainer": {"ref": "hpo.trainers.causal_lm:train", "args": args},
        "search_space": {k: {"type": "categorical", "choices": [v]} for k, v in PARAMS.items()},
        "output_dir": str(workdir / "runs"),
    }
    return validate_study(raw, path=str(ROOT / "studies" / "quickstart.yaml"))


def plain_run(workdir: Path, model_path: Path, epochs: int) -> float:
    """The same fine-tune with plain TRL on hpo's prepared splits; its wall seconds."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    import hpo.trainers.causal_lm as lm

    started = time.perf_counter()
    data = next(v for k, v in lm._CACHE.items() if k[0] == "lm-data")
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    )
    config = SFTConfig(
        output_dir=str(workdir / "plain"),
        learning_rate=PARAMS["learning_rate"],
        per_device_train_batch_size=PARAMS["per_device_train_batch_size"],
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        max_length=MAX_SEQ_LENGTH,
        seed=42,
        data_seed=42,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=data.tokenizer,
        peft_config=lora,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="hpo/plain pairs after the warm-up")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", type=Path, help="a local causal LM (default: built here)")
    parser.add_argument("--data", type=Path, help="prompt/completion JSON lines")
    args = parser.parse_args()
    # Absolute: the study the benchmark builds resolves relative paths against studies/.
    args.model = args.model.resolve() if args.model else None
    args.data = args.data.resolve() if args.data else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import datasets
    import optuna
    from transformers.utils import logging as hf_logging

    from hpo.runner import run_worker
    from hpo.workers import Worker

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    workdir = Path(tempfile.mkdtemp(prefix="sft-overhead-"))
    data = args.data or make_data(workdir / "reversal.jsonl")
    model = args.model or make_model(workdir / "model", data)
    order: list[str] = []
    for pair in range(args.pairs):
        order += ["plain", "hpo"] if pair % 2 == 0 else ["hpo", "plain"]
    hpo_walls: list[float] = []
    plain_walls: list[float] = []
    last = [time.perf_counter()]
    pending = list(order)

    def on_trial(study: Any, trial: Any) -> None:
        wall = time.perf_counter() - last[0]
        if trial.number > 0:
            hpo_walls.append(wall)
            pending.pop(0)  # this trial
        while pending and pending[0] == "plain":
            plain_walls.append(plain_run(workdir, model, args.epochs))
            pending.pop(0)
        last[0] = time.perf_counter()

    run_worker(
        study_config(workdir, args.pairs + 1, model, data, args.epochs),
        worker=Worker(device="cpu"),
        on_trial=on_trial,
    )
    ratios = [h / p for h, p in zip(hpo_walls, plain_walls, strict=True)]
    epochs = args.epochs
    print(f"hpo trials (s, after the warm-up): {[round(w, 2) for w in hpo_walls]}")
    print(f"plain SFTTrainer runs (s): {[round(w, 2) for w in plain_walls]}")
    print(
        f"per epoch: hpo {statistics.median(hpo_walls) / epochs:.2f} s, plain "
        f"{statistics.median(plain_walls) / epochs:.2f} s; paired ratios "
        f"{[round(r, 3) for r in ratios]} -> median {statistics.median(ratios):.3f} "
        "(goal <= 1.03)"
    )
    print(
        f"RESULT sft_epoch_ratio={statistics.median(ratios):.3f} epochs={epochs} "
        f"pairs={args.pairs} model={'given' if args.model else 'built'}"
    )


if __name__ == "__main__":
    main()
