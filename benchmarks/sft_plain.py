"""Does fine-tuning help tiny-lm on instructions.jsonl? Plain TRL, no hpo.

The base model is ``studies/models/tiny-lm`` (built first by ``studies/data/make_tiny_lm.py``
when the folder is missing), the task ``studies/data/instructions.jsonl`` (prompt
``"Review: ...\\nSentiment:"``, completion ``" positive"`` or ``" negative"``). The first
``--train`` lines train and the last ``--eval`` lines evaluate. For each learning rate,
TRL's ``SFTTrainer`` fine-tunes a fresh copy of the base model (full fine-tuning,
prompt-completion data, so the loss counts completion tokens only; seeded), and the script
prints ``eval_loss`` and ``exact_match``: greedy generation on the evaluation prompts,
stripped, equal to the stripped reference completion. The base model's exact match and
eval_loss come first. This is what ``studies/sft.yaml`` searches through hpo's trainer;
it shows the task is one where tuning visibly helps and where the learning rate matters.

    HF_HUB_OFFLINE=1 python benchmarks/sft_plain.py [--lrs 1e-4 1e-3] [--epochs 2]

The last line: ``RESULT base_exact_match=... tuned_exact_match=... (the best of the learning
rates) eval_loss_spread=... (worst/best - 1 over the learning rates)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "studies" / "models" / "tiny-lm"
DATA = ROOT / "studies" / "data" / "instructions.jsonl"


def exact_match(model, tokenizer, rows: list[dict[str, str]], max_new_tokens: int) -> float:
    """Share of ``rows`` whose greedy continuation, stripped, equals the completion."""
    import torch

    tokenizer.padding_side = "left"  # generation continues each prompt from its last token
    hits = 0
    model.eval()
    for start in range(0, len(rows), 32):
        batch = rows[start : start + 32]
        inputs = tokenizer([r["prompt"] for r in batch], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        hits += sum(
            t.strip() == r["completion"].strip() for t, r in zip(texts, batch, strict=True)
        )
    return hits / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=640, help="first N lines train")
    parser.add_argument("--eval", type=int, default=200, help="last N lines evaluate")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").exists():
        sys.path.insert(0, str(ROOT / "studies" / "data"))
        from make_tiny_lm import make_tiny_lm

        make_tiny_lm(args.model)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()]
    train, held = rows[: args.train], rows[-args.eval :]
    train_set, eval_set = Dataset.from_list(train), Dataset.from_list(held)
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def trainer_for(model, lr: float, out: str) -> SFTTrainer:
        config = SFTConfig(
            output_dir=out,
            learning_rate=lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=64,
            max_length=128,
            completion_only_loss=True,  # the default for prompt-completion data; stated
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            report_to=[],
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        return SFTTrainer(
            model=model,
            args=config,
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=lora,
        )

    lora = None
    if args.lora:
        from peft import LoraConfig

        lora = LoraConfig(
            r=args.lora,
            lora_alpha=2 * args.lora,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    base = AutoModelForCausalLM.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as out:
        base_loss = trainer_for(base, 1e-4, out).evaluate()["eval_loss"]
    base = AutoModelForCausalLM.from_pretrained(args.model)  # without the adapter
    base_em = exact_match(base, tokenizer, held, args.max_new_tokens)
    print(f"base: eval_loss {base_loss:.4f} exact_match {base_em:.3f}", flush=True)

    results = []
    for lr in args.lrs:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            trainer = trainer_for(model, lr, out)
            trainer.train()
            loss = trainer.evaluate()["eval_loss"]
        seconds = time.perf_counter() - start
        em = exact_match(trainer.model, tokenizer, held, args.max_new_tokens)
        results.append((lr, loss, em))
        print(
            f"lr {lr:g}: eval_loss {loss:.4f} exact_match {em:.3f} "
            f"({args.epochs:g} epochs, {f'LoRA r {args.lora}' if lora else 'full'}, "
            f"{seconds:.0f} s)",
            flush=True,
        )
    losses = [loss for _, loss, _ in results]
    print(
        f"RESULT base_exact_match={base_em:.3f} "
        f"tuned_exact_match={max(r[2] for r in results):.3f} "
        f"base_eval_loss={base_loss:.4f} best_eval_loss={min(losses):.4f} "
        f"eval_loss_spread={max(losses) / min(losses) - 1:.3f}"
    )


if __name__ == "__main__":
    main()
