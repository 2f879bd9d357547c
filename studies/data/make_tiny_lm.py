"""Pretrain ``tiny-lm``: a small decoder-only causal LM that exists offline.

Run ``python studies/data/make_tiny_lm.py`` (about 60 s of CPU on one core, no download):
it writes ``studies/models/tiny-lm`` (git-ignored, built on demand like minilm-l3), a normal
Hugging Face folder (``save_pretrained``): a Llama-architecture config and safetensors
weights (0.93 M parameters, 3.7 MB), a byte-level BPE tokenizer trained here with
``tokenizers`` (bos, eos and pad tokens, and a chat template so chat data works), a
LICENSE and a model card whose ``license:`` ``hpo validate`` reports.
``python studies/data/make_tiny_lm.py DIR`` writes it elsewhere; ``--small`` makes a
much smaller model in seconds (for the tests). The size is set by time: a trial of
sft.yaml fine-tunes it in full, and a 2 M-parameter variant (hidden size 192) costs 1.8
times as much per step, in this build and in every trial.

The pretraining text is our own: product reviews drawn from the generator of
``make_reviews.py`` with another seed (so no row of ``reviews.csv`` is the source). It is
used because we may redistribute it without question (no third-party text, so no licence
to carry over), it is on every checkout, and it rebuilds byte for byte. The model learns
the reviews' language only; it has never seen the ``Sentiment:`` task of
``instructions.jsonl``, so it answers it no better than chance before fine-tuning.

Seeded: the corpus, the tokenizer and the training order; torch's deterministic
algorithms are on. The weights rebuild identically on the same machine and thread count.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "models" / "tiny-lm"
SEED = 2026
CORPUS_SEED = 7  # make_reviews.py uses 2024 for reviews.csv
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# A minimal role-tagged template. The {% generation %} markers let TRL's
# assistant_only_loss (return_assistant_tokens_mask) find the assistant's tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] }}{{ eos_token }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# name: (vocab, hidden, intermediate, layers, heads, documents, steps)
SIZES = {
    "default": (1024, 128, 384, 4, 4, 24000, 250),
    "small": (512, 32, 64, 2, 2, 1500, 20),
}
BLOCK = 64  # tokens per training sequence (documents packed end to end)
BATCH = 32
MIT = """MIT License

Copyright (c) 2026 the hpo authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def corpus(n_documents: int) -> list[str]:
    """Reviews from make_reviews.py's generator, seeded apart from reviews.csv."""
    sys.path.insert(0, str(HERE))
    from make_reviews import review

    rng = random.Random(CORPUS_SEED)
    return [review(rng, i % 2 == 0) for i in range(n_documents)]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (as GPT-2's) trained on ``texts``, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny_lm(out: Path = DEFAULT_OUT, size: str = "default") -> Path:
    """Pretrain the model, write it to ``out`` (replacing what is there), return ``out``."""
    import torch
    from datasets import Dataset
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    vocab, hidden, intermediate, layers, heads, n_docs, steps = SIZES[size]
    # One thread: matrices this small gain little from a second one (and lose several
    # times over when the cores are shared), and the float sums, so the weights, then do
    # not depend on the machine's core count.
    torch.set_num_threads(1)
    set_seed(SEED, deterministic=True)
    texts = corpus(n_docs)
    tokenizer = train_tokenizer(texts, vocab)
    # Documents packed end to end, <|bos|> text <|eos|>, cut into blocks: every token trains.
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids += [tokenizer.bos_token_id, *encoded, tokenizer.eos_token_id]
    blocks = [ids[i : i + BLOCK] for i in range(0, len(ids) - BLOCK + 1, BLOCK)]
    data = Dataset.from_dict({"input_ids": blocks, "labels": blocks})

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="tiny-lm-"),  # nothing is saved there
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        seed=SEED,
        full_determinism=True,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    result = Trainer(
        model=model, args=args, train_dataset=data, data_collator=default_data_collator
    ).train()
    seconds = time.perf_counter() - start
    shutil.rmtree(args.output_dir, ignore_errors=True)

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "LICENSE").write_text(MIT, encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    card = ModelCard.from_template(
        ModelCardData(license="mit", library_name="transformers", pipeline_tag="text-generation"),
        template_str=(
            "---\n{{ card_data }}\n---\n\n# tiny-lm\n\n"
            "A {{ params }}-parameter Llama-architecture causal LM with a {{ vocab }}-token "
            "byte-level BPE tokenizer, pretrained from scratch by hpo's "
            "studies/data/make_tiny_lm.py ({{ steps }} steps, {{ tokens }} tokens of "
            "generated product reviews, final training loss {{ loss }}). It exists so that "
            "hpo's causal-LM trainer can be tried offline; it writes review-like text and "
            "knows no task. Pretraining text: reviews from studies/data/make_reviews.py's "
            "generator (seed {{ corpus_seed }}), our own and MIT-licensed like the model.\n"
        ),
        params=f"{n_params:,}",
        vocab=len(tokenizer),
        steps=steps,
        tokens=f"{steps * BATCH * BLOCK:,}",
        loss=f"{result.training_loss:.3f}",
        corpus_seed=CORPUS_SEED,
    )
    card.save(out / "README.md")
    print(
        f"tiny-lm: {n_params:,} parameters, {len(blocks)} blocks of {BLOCK} tokens, "
        f"{steps} steps in {seconds:.0f} s, loss {result.training_loss:.3f}",
        file=sys.stderr,
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--small", action="store_true", help="a much smaller model (tests)")
    cli = parser.parse_args()
    print(make_tiny_lm(cli.out, "small" if cli.small else "default"))
