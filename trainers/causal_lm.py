"""Fine-tune a causal language model (GPT-, Llama-, Qwen-like) with TRL's ``SFTTrainer``.

Three data shapes, from CSV, JSON lines or Parquet (or a hub data set): ``format: text``
(plain text, domain adaptation), ``prompt_completion`` (a prompt and its completion) and
``messages`` (chats, rendered with the tokenizer's chat template). For prompt/completion
and chat data only the completion (assistant) tokens count in the loss by default
(``completion_only_loss``); ``packing`` and ``max_seq_length`` are TRL's.

TRL prepares the data (the chat template, the completion and assistant masks, EOS,
truncation, packing) once per worker process; every trial's trainer then skips its own
preparation (``dataset_kwargs: {skip_prepare_dataset: true}``). Training goes through the
shared layer (:func:`hpo.trainers._hf.fit`): pruning on each evaluation, checkpoints and
resume, OOM and NaN handling, mixed precision, adapters (``adapter: {type: lora}``, peft's
``CAUSAL_LM``; the pretrained ``lm_head`` stays frozen) and cost metrics.

Metrics: ``eval_loss`` (mean over the tokens that count) and ``perplexity`` (its exp) at
each evaluation; with ``generate``, greedy generations on a fixed, seeded set of
validation prompts (the same for every trial) and, where completions are given,
``exact_match``. The error analysis (``hpo:error_analysis``) lists the validation
examples of highest loss with the trial's generation beside the reference.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpo.contract import Trainer
from hpo.trainer import TrialContext
from hpo.trainers import _hf
from hpo.trainers._hf import CACHE as _CACHE
from hpo.trainers._hf import HFTrainingArgs
from hpo.trainers._hf import relative_to as _relative_to
from hpo.trainers.dataset import SplitDatasetArgs, missing_table, split
from hpo.trainers.drafts import draft_causal_lm, recognises_text_data
from hpo.trainers.model_facts import BERT_LIKE, ModelFacts, describe_folder, describe_hub

logger = logging.getLogger(__name__)

_AUTO_CLASS = "AutoModelForCausalLM"
# The dataset field naming a column -> the column's name in TRL's dataset formats.
_TRL_COLUMNS = {
    "text_column": "text",
    "prompt_column": "prompt",
    "completion_column": "completion",
    "messages_column": "messages",
}
# Per-example losses for the error analysis are computed on at most this many validation
# examples (one more forward pass over them after training).
ERROR_ANALYSIS_POOL = 512
# SFTConfig fields the trainer sets itself (training_args may set any other, such as
# packing_strategy, loss_type or gradient_checkpointing).
SFT_OWNED = {
    "max_length": "set trainer.args.max_seq_length",
    "eval_packing": "validation and test are never packed (each example scored alone)",
    "dataset_kwargs": "hpo prepares the data once per worker",
    "dataset_text_field": "set trainer.args.dataset.text_column",
    "assistant_only_loss": "set trainer.args.completion_only_loss",
    "prediction_loss_only": "hpo scores validation by its loss",
}
# hpo validate reads at most this many rows of a data file for its content checks.
CHECKED_ROWS = 100_000
# What a config's architectures end with when they generate text left to right.
_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


class CausalLMDatasetArgs(SplitDatasetArgs):
    """Where the examples come from, their shape, and the columns that hold them."""

    path: str | None = Field(None, description="CSV, JSON lines or Parquet; relative to study")
    format: Literal["text", "prompt_completion", "messages"] = Field(
        "text",
        description="text: plain text (domain adaptation); prompt_completion: a prompt and "
        "its completion; messages: chats (lists of {role, content}) rendered with the "
        "tokenizer's chat template",
    )
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"

    def columns(self) -> dict[str, str]:
        """``{field: column}`` this format reads."""
        if self.format == "text":
            return {"text_column": self.text_column}
        if self.format == "prompt_completion":
            return {
                "prompt_column": self.prompt_column,
                "completion_column": self.completion_column,
            }
        return {"messages_column": self.messages_column}


class GenerateArgs(BaseModel):
    """Greedy generations on a fixed set of validation prompts, after training."""

    model_config = ConfigDict(extra="forbid")

    examples: int = Field(16, gt=0, description="validation prompts, drawn once with the seed")
    max_new_tokens: int = Field(32, gt=0)


class CausalLMArgs(HFTrainingArgs):
    """Fixed arguments (``trainer.args``) and searchable hyperparameters of :func:`train`.

    The training hyperparameters and run options common to HF trainers come from
    :class:`hpo.trainers._hf.HFTrainingArgs`.
    """

    model: str = Field(description="a local model folder or a hub id")
    dataset: CausalLMDatasetArgs
    max_seq_length: int = Field(512, gt=0, description="tokens per example (or packed row)")
    packing: bool = Field(
        False, description="pack several examples into each training row (TRL's bfd)"
    )
    completion_only_loss: bool = Field(
        True,
        description="prompt_completion and messages: only completion (assistant) tokens "
        "count in the loss; false: every token",
    )
    generate: GenerateArgs | None = None
    group_by_length: bool = Field(
        True,
        description="train on batches of examples of similar length, in random order (less "
        "padding); false: random batches, as a plain SFTTrainer draws them. Packed rows "
        "are all about max_seq_length long: packing batches them at random",
    )


# --- data -------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """TRL-prepared splits (``input_ids``, ``labels``) with their source columns, shared by
    the trials of a worker process."""

    train: Any
    validation: Any
    test: Any
    tokenizer: Any
    train_lengths: list[int]  # tokens per training row, for length-bucketed batches


def resolve_model(name: str, study_dir: Path) -> str:
    """A local folder when ``name`` is one (relative to the study file); else a hub id."""
    local = _relative_to(name, study_dir)
    return str(local) if local.exists() else name


def load_examples(spec: CausalLMDatasetArgs, ctx: TrialContext) -> Any:
    """The raw data as a ``DatasetDict``, its columns renamed to TRL's (``text``,
    ``prompt`` and ``completion``, ``messages``)."""
    import datasets

    from hpo.trainers.text_classification import load_examples as load_table

    raw = load_table(spec, ctx)  # type: ignore[arg-type]  # same path/hub fields
    wanted = spec.columns()
    names = _TRL_COLUMNS
    for field_name, column in wanted.items():
        if column not in raw["train"].column_names:
            raise KeyError(
                f"trainer.args.dataset.{field_name}: no column {column!r} in the data; "
                f"columns: {raw['train'].column_names}"
            )
    raw = raw.select_columns(list(wanted.values()))
    raw = raw.rename_columns(
        {column: names[f] for f, column in wanted.items() if column != names[f]}
    )
    if spec.format == "messages" and getattr(raw["train"].features["messages"], "dtype", None) in (
        "string",
        "large_string",
    ):
        # A CSV holds each chat as JSON text.
        raw = raw.map(lambda row: {"messages": json.loads(row["messages"])})
    return datasets.DatasetDict(raw)


def prepare_data(args: CausalLMArgs, model_path: str, ctx: TrialContext) -> PreparedData:
    """Load, split and prepare with TRL once per worker process (cached by what matters)."""
    key = (
        "lm-data",
        model_path,
        args.dataset.model_dump_json(),
        args.max_seq_length,
        args.packing,
        args.completion_only_loss,
        ctx.seed,
    )
    if key in _CACHE:
        return _CACHE[key]
    import datasets

    datasets.disable_progress_bars()
    raw = load_examples(args.dataset, ctx)
    pool = raw["train"]
    # One label for every row: the shared split rule, by rows alone.
    parts = split([0] * len(pool), args.dataset, ctx.seed, set(raw))
    splits = {name: pool.select(indices) for name, indices in parts.items()}
    splits.update({n: raw[n] for n in ("validation", "test") if n not in splits})
    tokenizer = _hf.load_tokenizer(model_path)
    prepared = {
        name: prepare_split(
            split_data, tokenizer, args, packing=args.packing and name == "train", name=name
        )
        for name, split_data in splits.items()
    }
    if not len(prepared["train"]):
        raise ValueError(
            f"trainer.args.max_seq_length: no training example keeps a token to learn within "
            f"{args.max_seq_length} tokens (its prompt fills them, or it has no completion or "
            "assistant turn); raise max_seq_length, or check dataset.format"
        )
    lengths = [len(ids) for ids in prepared["train"]["input_ids"]]
    data = PreparedData(
        prepared["train"], prepared["validation"], prepared["test"], tokenizer, lengths
    )
    _CACHE[key] = data
    return data


def prepare_split(split_data: Any, tokenizer: Any, args: CausalLMArgs, packing: bool, name: str):
    """One split as TRL's ``SFTTrainer`` prepares it: ``input_ids`` and ``labels`` (-100 where
    a token does not count), truncated to ``max_seq_length`` or packed; the source columns
    stay beside them (the Trainer drops them from its batches).

    TRL offers its preparation only as ``SFTTrainer._prepare_dataset``, run by every
    trainer it builds; it reads three attributes of the trainer, set here on a bare one,
    so the trials of a worker share one preparation (tests/test_causal_lm.py checks the
    masks it builds). Validation and test are never packed: each example is scored alone,
    so its loss is its own (the error analysis lists them by it).
    """
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if not len(split_data):
        return split_data
    chat = args.dataset.format == "messages"
    assistant_only = chat and args.completion_only_loss
    preparer = SFTTrainer.__new__(SFTTrainer)
    preparer._tokenizer = tokenizer
    preparer.completion_only_loss = args.completion_only_loss
    preparer.chat_template = (
        get_training_chat_template(tokenizer)
        if assistant_only and not has_generation_markers(tokenizer.chat_template)
        else None
    )
    config = SFTConfig(
        output_dir="unused",  # preparation writes nothing
        max_length=args.max_seq_length,
        packing=packing,
        completion_only_loss=args.completion_only_loss,
        assistant_only_loss=assistant_only,
        dataset_text_field="text",
        report_to="none",
        use_cpu=True,
    )
    return preparer._prepare_dataset(split_data, tokenizer, config, packing, None, name)


# --- model ------------------------------------------------------------------------------


def build_model(args: CausalLMArgs, model_path: str, tokenizer: Any, seed: int) -> Any:
    """A fresh model for this trial from the cached weights (the pretrained ``lm_head``
    too), with its adapter (``args.adapter``) if it trains one."""
    config, state = _hf.base_weights(_AUTO_CLASS, model_path, whole=True)
    model = _hf.model_from_base(_AUTO_CLASS, config, state, seed, whole=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # A generative model's head is its pretrained lm_head (the vocabulary's size): frozen,
    # as peft's CAUSAL_LM leaves it.
    return _hf.with_adapter(model, args.adapter, task_type="CAUSAL_LM", train_head=False)


@functools.cache
def _perplexity_trainer() -> type:
    """TRL's ``SFTTrainer`` whose evaluations also give ``perplexity`` (exp of the loss)
    and, on validation, the metrics of ``validation_metrics`` (the trained model ->
    metrics: generations), before the callbacks see them: hpo reports, prunes and stops
    early on any of them. Its checkpoints hold no tokenizer."""
    from trl import SFTTrainer

    class PerplexitySFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, validation_metrics: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.validation_metrics = validation_metrics

        def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix") or (args[4] if len(args) > 4 else "eval")
            loss = output.metrics.get(f"{prefix}_loss")
            if loss is not None:
                output.metrics[f"{prefix}_perplexity"] = perplexity(loss)
            if prefix == "eval" and self.validation_metrics is not None:
                output.metrics.update(self.validation_metrics(self.model))
            return output

        def _save(self, *args: Any, **kwargs: Any) -> None:
            # The Trainer saves its tokenizer into every checkpoint; export takes the base
            # model's, which training never changes (as the classification trainers do).
            tokenizer, self.processing_class = self.processing_class, None
            try:
                super()._save(*args, **kwargs)
            finally:
                self.processing_class = tokenizer

    return PerplexitySFTTrainer


def perplexity(loss: float) -> float:
    """exp(loss), capped where it would overflow a float."""
    return math.exp(min(float(loss), 700.0))


# --- training ---------------------------------------------------------------------------


def train(ctx: TrialContext) -> dict[str, float]:
    """Fine-tune with this trial's hyperparameters; return validation (and test) metrics."""
    args = CausalLMArgs.model_validate(ctx.params)
    return _hf.with_oom_retry(_train, args, ctx)


def _train(args: CausalLMArgs, ctx: TrialContext) -> dict[str, float]:
    import torch
    from trl import SFTConfig

    _hf.set_up(ctx)
    model_path = resolve_model(args.model, ctx.study_dir)
    ctx.set_attr(
        "model",
        _hf.cached(
            ("facts", args.model, str(ctx.study_dir)),
            lambda: model_facts(args.model, ctx.study_dir).as_dict(),
        ),
    )
    data = prepare_data(args, model_path, ctx)
    model = build_model(args, model_path, data.tokenizer, ctx.seed)

    def example_inputs(example: dict[str, Any], device: Any) -> dict[str, Any]:
        return {"input_ids": torch.tensor([example["input_ids"]], device=device)}

    splits = _hf.Datasets(
        train=data.train,
        validation=data.validation,
        test=data.test,
        label_names=[],
        example_inputs=example_inputs,
        train_lengths=data.train_lengths if args.group_by_length and not args.packing else None,
    )
    family = _hf.Family(
        trainer=_perplexity_trainer(),
        config=SFTConfig,
        config_fields={
            "max_length": args.max_seq_length,
            "packing": args.packing,
            "eval_packing": False,
            # Prepared once per worker (prepare_data): each trial's trainer skips it.
            "dataset_kwargs": {"skip_prepare_dataset": True},
            "completion_only_loss": args.completion_only_loss,
            # Scored by the loss alone: no logits gathered (predict would otherwise ask for
            # them, and TRL's fused head would run the model twice).
            "prediction_loss_only": True,
        },
        trainer_kwargs={
            "processing_class": data.tokenizer,
            "validation_metrics": (
                (lambda trained: generation_metrics(trained, args, data, ctx))
                if args.generate
                else None
            ),
        },
        classifies=False,
    )
    return _hf.fit(
        args,
        ctx,
        model,
        splits,
        error_analysis=lambda _prediction, _data, top_k: loss_analysis(model, args, data, top_k),
        family=family,
    )


# --- generations and error analysis -------------------------------------------------------


def prompt_and_reference(example: dict[str, Any], args: CausalLMArgs, tokenizer: Any):
    """What a validation example asks, as the model's token ids, and what it should answer
    (None for plain text, which has no completion: its first half prompts the rest)."""
    form = args.dataset.format
    if form == "prompt_completion":
        ids = tokenizer(text=example["prompt"])["input_ids"]
        # TRL ended each completion (and text) with the end-of-text token.
        return ids, example["prompt"], _without_eos(example["completion"], tokenizer)
    if form == "messages":
        messages = list(example["messages"])
        last = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
        context = messages[:-1] if last else messages
        ids = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        shown = context[-1]["content"] if context else ""
        return list(ids), str(shown), (str(last["content"]) if last else None)
    words = _without_eos(example["text"], tokenizer).split(" ")
    half = max(1, len(words) // 2)
    prompt = " ".join(words[:half])
    return tokenizer(text=prompt)["input_ids"], prompt, None


def _without_eos(text: Any, tokenizer: Any) -> str:
    return str(text).removesuffix(tokenizer.eos_token or "")


def generate(model: Any, prompts: list[list[int]], tokenizer: Any, max_new_tokens: int):
    """Greedy continuations of ``prompts`` (token ids), decoded without special tokens."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    texts = []
    with torch.inference_mode():
        for start in range(0, len(prompts), 8):
            batch = prompts[start : start + 8]
            width = max(len(p) for p in batch)
            pad = tokenizer.pad_token_id
            # Left padding: every prompt ends where its generation starts.
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def fixed_examples(n_validation: int, wanted: int, seed: int) -> list[int]:
    """The validation examples every trial generates for: drawn once with the study seed."""
    return sorted(random.Random(seed).sample(range(n_validation), min(wanted, n_validation)))


def generation_metrics(
    model: Any, args: CausalLMArgs, data: PreparedData, ctx: TrialContext
) -> dict[str, float]:
    """With ``generate``, at each evaluation: greedy generations on the fixed validation
    prompts, stored as ``hpo:generations`` (the last evaluation's stay), and
    ``eval_exact_match`` where completions are given."""
    if args.generate is None or not len(data.validation):
        return {}
    chosen = fixed_examples(len(data.validation), args.generate.examples, ctx.seed)
    asked = [prompt_and_reference(data.validation[i], args, data.tokenizer) for i in chosen]
    texts = generate(model, [a[0] for a in asked], data.tokenizer, args.generate.max_new_tokens)
    rows = [
        {"prompt": shown, "reference": reference, "generation": text}
        for (_, shown, reference), text in zip(asked, texts, strict=True)
    ]
    ctx.set_attr("generations", rows)
    references = [r for r in rows if r["reference"] is not None]
    if not references:
        return {}
    matches = sum(r["generation"].strip() == r["reference"].strip() for r in references)
    return {"eval_exact_match": matches / len(references)}


def example_losses(model: Any, validation: Any, tokenizer: Any) -> list[float]:
    """Each validation example's mean loss over its tokens that count."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    model.eval()
    device = next(model.parameters()).device
    losses: list[float] = []
    columns = validation.select_columns(["input_ids", "labels"])
    with torch.inference_mode():
        for start in range(0, len(columns), 8):
            batch = collate([columns[i] for i in range(start, min(start + 8, len(columns)))])
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits.float()
            labels = batch["labels"].to(device)[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            counted = (labels != -100).sum(dim=1).clamp(min=1)
            losses += (per_token.sum(dim=1) / counted).tolist()
    return losses


def loss_analysis(model: Any, args: CausalLMArgs, data: PreparedData, top_k: int):
    """``hpo:error_analysis`` of a generative trial: the validation examples of highest
    loss, each with its prompt, reference and (with ``generate``) the trial's generation."""
    validation = data.validation
    pool = validation.select(range(min(len(validation), ERROR_ANALYSIS_POOL)))
    losses = example_losses(model, pool, data.tokenizer)
    worst = sorted(range(len(losses)), key=lambda i: -losses[i])[:top_k]
    asked = [prompt_and_reference(pool[i], args, data.tokenizer) for i in worst]
    generations: list[str | None] = [None] * len(worst)
    if args.generate is not None and worst:
        generations = list(
            generate(model, [a[0] for a in asked], data.tokenizer, args.generate.max_new_tokens)
        )
    return {
        "kind": "generation",
        "examples_scored": len(losses),
        "mean_loss": round(sum(losses) / len(losses), 4) if losses else None,
        "highest_loss": [
            {
                "prompt": shown,
                "reference": reference,
                "generation": generation,
                "loss": round(losses[i], 4),
            }
            for i, (_, shown, reference), generation in zip(worst, asked, generations, strict=True)
        ],
    }


# --- validate and export ---------------------------------------------------------------


def model_facts(name: str, study_dir: Path) -> ModelFacts:
    """Where a model name resolves and what its own files say about it."""
    import os

    local = _relative_to(name, study_dir)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return describe_folder(name, local, "local")
    return describe_hub(name, offline=os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"))


def not_causal(folder: Path) -> str | None:
    """Why the model in ``folder`` cannot generate text left to right, or None."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    architectures = config.get("architectures") or []
    if any(a.endswith(_CAUSAL_HEADS) for a in architectures):
        return None
    model_type = config.get("model_type")
    if not architectures and model_type not in BERT_LIKE:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return None
    shown = ", ".join(architectures) or model_type or "unknown"
    return (
        f"{folder} is not a causal language model ({shown}); give a decoder (a folder or hub "
        "id whose architecture ends in ForCausalLM or LMHeadModel), or use "
        "trainers.text_classification:train for an encoder"
    )


def describe_model(args: CausalLMArgs, study_dir: Path, name: str) -> dict[str, Any]:
    """The trainer hook ``hpo validate`` calls: licence, size, context length, or why the
    model cannot train (not a causal LM; an adapter module it lacks)."""
    facts = model_facts(name, study_dir)
    if facts.source == "local" and (problem := not_causal(Path(facts.path))):
        raise ValueError(problem)
    problem = _hf.check_targets(_AUTO_CLASS, resolve_model(name, study_dir), args.adapter)
    if problem:
        raise ValueError(f"adapter.target_modules: {problem}")
    return facts.as_dict()


def check_args(args: CausalLMArgs, search_space: dict[str, Any]) -> tuple[str, str] | None:
    """Trackers installed; ``training_args`` fields hpo leaves free; searched choices valid;
    no class weights (a language model has no classes)."""
    if args.class_weights != "none":
        return "class_weights", "a language model has no classes; remove class_weights"
    return _hf.check_args(
        CausalLMArgs, args, search_space, config="trl:SFTConfig", owned=SFT_OWNED
    )


def check_files(args: CausalLMArgs, study_dir: Path) -> tuple[str, str] | None:
    """The data file's columns and contents, and the local model's tokenizer against them:
    checked before a study starts."""
    model = _relative_to(args.model, study_dir)
    local_model = model.exists() or args.model.startswith((".", "/", "~"))
    if local_model and not (model / "config.json").is_file():
        return "model", f"{model} is not a model folder (no config.json); give a folder or hub id"
    if local_model and (problem := not_causal(model)):
        return "model", problem
    tokenizer = None
    if local_model:
        tokenizer = _hf.load_tokenizer(str(model))
        if args.dataset.format == "messages" and not tokenizer.chat_template:
            return (
                "dataset.format",
                f"the tokenizer of {model} has no chat_template to render messages with; add "
                "one to its tokenizer_config.json (or chat_template.jinja), or give the data "
                "as format: prompt_completion",
            )
        if (problem := _check_generation_markers(args, tokenizer)) is not None:
            return problem
    if not args.dataset.path:
        return None
    path = _relative_to(args.dataset.path, study_dir)
    if problem := missing_table(path):
        return problem
    from hpo.trainers.drafts import check_columns, read_rows

    if problem := check_columns(path, args.dataset.columns()):
        return problem
    try:
        rows = read_rows(path, limit=CHECKED_ROWS)
    except ValueError as e:
        return "dataset.path", f"{path.name}: {e}"
    return _check_rows(args, rows, tokenizer)


def _check_generation_markers(args: CausalLMArgs, tokenizer: Any) -> tuple[str, str] | None:
    """Assistant-only loss needs a template TRL can mark the assistant's tokens in."""
    if args.dataset.format != "messages" or not args.completion_only_loss:
        return None
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return (
            "completion_only_loss",
            "the tokenizer's chat_template marks no assistant tokens, so the loss cannot "
            "count them alone; wrap the assistant's content in {% generation %}...{% "
            "endgeneration %} in the template, or set completion_only_loss: false",
        )
    return None


def _check_rows(args: CausalLMArgs, rows: Any, tokenizer: Any | None) -> tuple[str, str] | None:
    """Empty completions, and prompts that leave no completion token within
    ``max_seq_length`` in every row (all of it truncated away)."""
    spec = args.dataset
    if spec.format == "prompt_completion":
        empty = [
            i for i, row in enumerate(rows) if not str(row[spec.completion_column] or "").strip()
        ]
        if empty:
            return (
                "dataset.completion_column",
                f"{len(empty)} {'row has' if len(empty) == 1 else 'rows have'} an empty "
                f"{spec.completion_column!r} (the first is row {empty[0] + 1}): nothing to learn "
                "from; fill or remove them",
            )
    if tokenizer is None or spec.format == "text" or not rows:
        return None
    lengths = []
    for row in rows:
        if spec.format == "prompt_completion":
            lengths.append(len(tokenizer(text=str(row[spec.prompt_column]))["input_ids"]))
            continue
        messages = row[spec.messages_column]
        messages = json.loads(messages) if isinstance(messages, str) else list(messages)
        ids = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
        lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    if min(lengths) >= args.max_seq_length:
        field_name = "prompt_column" if spec.format == "prompt_completion" else "messages_column"
        return (
            "max_seq_length",
            f"every prompt in dataset.{field_name} is at least {args.max_seq_length} tokens "
            f"(the shortest {min(lengths)}), so truncation leaves no completion to learn; "
            f"raise max_seq_length above {min(lengths)}",
        )
    return None


def save_model(
    checkpoint: Path, target: Path, args: dict[str, Any], study_dir: Path, merge: bool = False
) -> None:
    """Export hook: a folder ``AutoModelForCausalLM.from_pretrained`` loads (weights and
    tokenizer); an adapter trial's adapter, or with ``merge`` the merged model."""
    from hpo.trainers.hf_export import save_hf_model

    name = str(args.get("model") or "")
    base = resolve_model(name, study_dir)
    wanted = args.get("max_seq_length") or CausalLMArgs.model_fields["max_seq_length"].default
    save_hf_model(checkpoint, target, base, int(wanted), merge=merge, auto_class=_AUTO_CLASS)


TRAINER = Trainer(
    train,
    args_model=CausalLMArgs,
    check_args=check_args,
    check_files=check_files,
    describe_model=describe_model,
    resolve_model=resolve_model,
    save_model=save_model,
    task="text-generation",
    recognises_data=recognises_text_data,
    draft_study=draft_causal_lm,
)
