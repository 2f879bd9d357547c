"""What every Hugging Face ``Trainer``-based trainer shares, whatever its data and model.

A trainer family (text, images, ...) keeps only its data and model code: it validates
its arguments with a subclass of :class:`HFTrainingArgs`, builds its datasets and model,
and hands them to :func:`fit`, which assembles ``TrainingArguments``, reports every
evaluation to hpo through :func:`reporter_class` (pruning and early stopping stop
training through ``control``), records checkpoints and resumes from one, scores
validation and test, and stores the error analysis. :func:`with_oom_retry` halves the
batch once on out-of-memory; :data:`CACHE` keeps what does not change between trials
(decoded data, base weights) in the worker process.

Adapters: ``trainer.args.adapter`` (:class:`AdapterArgs`) trains a peft LoRA adapter in
place of every weight (:func:`with_adapter`); the task head always trains in full. Each
trial wraps a fresh model built from the cached base weights, so the cache never holds an
adapter. :func:`cost_metrics` adds what a trial costs to train and ship
(``trainable_parameters``, ``adapter_size_mb``, ``peak_memory_mb``,
``train_samples_per_second``) beside what it costs to serve.

A family that does not classify (the causal-LM trainer) passes a :class:`Family` to
:func:`fit`: its Trainer and arguments classes (TRL's ``SFTTrainer``, ``SFTConfig``),
validation scored by its loss alone.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpo.space import trial_args
from hpo.trainer import NonFiniteError, TrialContext, available_cores
from hpo.trainers import trackers

logger = logging.getLogger(__name__)

# Per worker process: decoded data, base weights, model facts; keyed by what they depend on.
CACHE: dict[tuple, Any] = {}


class AdapterArgs(BaseModel):
    """What trains: every weight (``type: none``), or a LoRA adapter through peft.

    Any field may be fixed in ``trainer.args.adapter`` or searched by its dotted name
    (``adapter.type``, ``adapter.r``, ...), so full fine-tuning and adapters of several
    ranks compete in one study. The defaults of r, alpha and dropout are peft's
    (``LoraConfig``).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "lora"] = Field(
        "none", description="none: full fine-tuning; lora: a LoRA adapter (peft)"
    )
    r: int = Field(8, gt=0, description="the adapter's rank")
    alpha: float = Field(8, gt=0, description="scale: updates are multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        "auto",
        description="auto: peft's default for the architecture, else all-linear; "
        "all-linear: every linear layer of the backbone (a CNN without any: its "
        "convolutions); or module names, as peft matches them (query, attention.self.query)",
    )
    use_rslora: bool = Field(False, description="rank-stabilized scale: alpha / sqrt(r)")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")

    @field_validator("target_modules")
    @classmethod
    def _named_once(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("name at least one module, or use auto")
            if len(set(value)) != len(value):
                raise ValueError(f"a module is named twice in {value}")
        return value


class HFTrainingArgs(BaseModel):
    """The hyperparameters and run options every HF trainer takes (any may be searched)."""

    model_config = ConfigDict(extra="forbid")

    adapter: AdapterArgs = Field(
        default_factory=AdapterArgs, description="full fine-tuning, or a LoRA adapter"
    )

    learning_rate: float = Field(5e-5, gt=0)
    per_device_train_batch_size: int = Field(16, gt=0)
    per_device_eval_batch_size: int = Field(64, gt=0)
    num_train_epochs: int = Field(3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: str = Field("linear", description="an HF SchedulerType name")
    gradient_accumulation_steps: int = Field(1, gt=0)
    optim: str = Field("adamw_torch_fused", description="an HF Trainer optimizer (OptimizerNames)")
    label_smoothing_factor: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: a loss weighted by inverse class frequency"
    )
    # Evaluation, stopping and saving.
    eval_steps: int | None = Field(None, gt=0, description="evaluate every N steps, not epochs")
    early_stopping_patience: int | None = Field(None, gt=0)
    save_checkpoints: bool = True
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    oom_retry: bool = False
    error_examples: int = Field(20, ge=0)
    score_test: Literal["leaders", "all"] = Field(
        "leaders",
        description="leaders: score the test split only for a trial that leads the study "
        "when it finishes (the best trial always does); all: every completed trial",
    )
    # Experiment trackers and any other TrainingArguments field (see trainers/trackers.py).
    report_to: str | list[str] = Field(
        "none",
        description="none, all, or integrations of the installed transformers (tensorboard, "
        "mlflow, wandb, trackio, comet_ml, ...): one or a list",
    )
    training_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_read_as_false(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML 1.1 reads `no` and `off` as false

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return _one_of(value, "optim", "OptimizerNames")

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        return _one_of(value, "lr_scheduler_type", "SchedulerType")


# The defaults (those of TrainingArguments) need no check, so validating a study imports
# transformers only when needed.
_DEFAULTS = {"OptimizerNames": "adamw_torch_fused", "SchedulerType": "linear"}


def _one_of(value: str, field_name: str, enum: str) -> str:
    """``value`` if it names a member of transformers' ``enum``; else why not, and the names."""
    if value == _DEFAULTS[enum]:
        return value
    names = _enum_values(enum)
    if value not in names:
        import difflib

        close = difflib.get_close_matches(value, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"
        raise ValueError(f"{value!r} is not a transformers {enum} name; {hint}")
    return value


@functools.cache
def _enum_values(enum: str) -> list[str]:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    members = {"OptimizerNames": OptimizerNames, "SchedulerType": SchedulerType}[enum]
    return [m.value for m in members]


def check_search_space(
    args_model: type[BaseModel], args: BaseModel, search_space: dict[str, Any]
) -> tuple[str, str] | None:
    """Each categorical choice of a searched argument validated as a fixed value would be.

    A misspelt optimizer among ``search_space.optim``'s choices is refused before the study
    runs, not found by the trial that draws it.
    """
    from pydantic import ValidationError

    base = args.model_dump()
    for name, spec in search_space.items():
        for choice in getattr(spec, "choices", None) or []:
            try:
                args_model.model_validate(trial_args(base, {name: choice}))
            except ValidationError as e:
                message = e.errors()[0]["msg"].removeprefix("Value error, ")
                return name, f"choice {choice!r} in search_space.{name}: {message}"
    return None


@dataclass
class Datasets:
    """What :func:`fit` trains and scores: the splits and how to batch them."""

    train: Any
    validation: Any
    test: Any
    label_names: list[str]
    collator: Any = None
    # One validation example -> the model's keyword inputs as a batch of one (latency).
    example_inputs: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    # Validation index -> how an error-analysis entry shows that example ({"text": ...}).
    show_example: Callable[[int], dict[str, Any]] = field(default=lambda i: {})
    train_labels: list[int] | None = None  # for class_weights: balanced
    # Token lengths of the training examples: batches of similar length (see
    # LengthBucketSampler); None for random batches (images, or group_by_length off).
    train_lengths: list[int] | None = None


def set_up(ctx: TrialContext) -> None:
    """Threads for this worker, and quiet HF progress bars (hpo logs each trial itself)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(ctx.threads or available_cores())


def cached(key: tuple, make: Callable[[], Any]) -> Any:
    """``CACHE[key]``, made on first use in this worker process."""
    if key not in CACHE:
        CACHE[key] = make()
    return CACHE[key]


def base_weights(
    auto_class: str, model_path: str, *, whole: bool = False, **load: Any
) -> tuple[Any, dict[str, Any]]:
    """The pretrained config and backbone weights of ``model_path``, read once per process.

    The backbone is every tensor under the model's ``base_model_prefix``; the task head is
    left out (each trial starts its own, seeded), also where it sits inside that prefix
    (timm models through transformers' timm wrapper: ``timm_model.fc``). ``auto_class``
    names the transformers Auto class of the family (``AutoModelForSequenceClassification``,
    ...). ``whole``: every weight, the head too (a causal LM's ``lm_head`` is pretrained).
    """

    def read() -> tuple[Any, dict[str, Any]]:
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        # The load report only says the new head is untrained: expected.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, loading = getattr(transformers, auto_class).from_pretrained(
                model_path,
                # fp32 whatever the checkpoint stores: transformers 5 keeps a checkpoint's
                # fp16 or bf16, which would train in half precision (mixed precision is
                # trainer.args.mixed_precision's to choose).
                dtype=torch.float32,
                # A head trained for another number of labels is dropped below anyway;
                # a mismatch inside the backbone is refused below.
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                **load,
            )
        finally:
            hf_logging.set_verbosity(level)
        in_backbone = (lambda key: True) if whole else backbone_keys(model)
        # Each entry: (key, shape in the checkpoint, shape the config asks for).
        keys = (
            entry[0] if isinstance(entry, tuple) else entry for entry in loading["mismatched_keys"]
        )
        misfits = sorted(key for key in keys if in_backbone(key))
        if misfits:  # left alone, they would train from random weights
            raise ValueError(
                f"{model_path}: the weights do not fit its config.json ({misfits[0]}"
                f"{f' and {len(misfits) - 1} more' if len(misfits) > 1 else ''} have "
                "other shapes); re-save the model with save_pretrained"
            )
        state = {k: v for k, v in model.state_dict().items() if in_backbone(k)}
        return model.config, state

    return cached(("model", model_path, auto_class, whole, tuple(sorted(load.items()))), read)


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer, with a padding token.

    Decoder models (GPT-2, Llama, ...) ship without one, so batches of several texts
    could not be padded; their end-of-text token pads instead, as in transformers' own
    classification examples (the model's ``pad_token_id`` must then name it too).

    Raises:
        ValueError: the tokenizer has neither a padding nor an end-of-text token.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {model_path} has no padding and no end-of-text token to pad "
                "with; add a pad_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_from_base(
    auto_class: str, config: Any, state: dict[str, Any], seed: int, *, whole: bool = False
) -> Any:
    """A fresh model of ``config`` with the cached backbone weights and a head seeded by
    ``seed``; it refuses weights that leave part of the backbone (``whole``: of the model)
    untrained."""
    import torch
    import transformers

    torch.manual_seed(seed)
    # fp32 like the base weights (from_config would follow the config's stored dtype).
    model = getattr(transformers, auto_class).from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    in_backbone = (lambda key: True) if whole else backbone_keys(model)
    untrained = [k for k in missing if in_backbone(k)]
    if unexpected or untrained:
        raise RuntimeError(f"base weights do not fit the model: missing {untrained[:3]}")
    return model


def backbone_keys(model: Any) -> Callable[[str], bool]:
    """Whether a state-dict key of ``model`` is a backbone weight (not the task head).

    The backbone is what lies under ``base_model_prefix``. transformers' own models keep
    the head beside it; a timm model (``TimmWrapperForImageClassification``) keeps it
    inside ``timm_model``, where timm's ``get_classifier`` names it (``fc``, ``head``,
    ``head.fc``, ``classifier``).
    """
    prefix = model.base_model_prefix + "."
    heads = tuple(f"{name}." for name in _heads_inside(model))
    return lambda key: key.startswith(prefix) and not key.startswith(heads)


def _heads_inside(model: Any) -> list[str]:
    """The head modules inside the backbone, by name (timm: ``timm_model.fc``)."""
    prefix = model.base_model_prefix
    inner = getattr(model, prefix, None)
    if not hasattr(inner, "get_classifier"):
        return []
    head = inner.get_classifier()
    return [f"{prefix}.{n}" for n, module in inner.named_modules() if module is head]


def head_modules(model: Any) -> list[str]:
    """The task head by module name: what the base weights do not hold (each trial seeds it).

    The modules beside the backbone that have weights (``classifier``; DistilBERT's
    ``pre_classifier`` too), and a timm model's classifier inside it (see
    :func:`backbone_keys`).
    """
    outside = [
        name
        for name, module in model.named_children()
        if name != model.base_model_prefix and any(True for _ in module.parameters())
    ]
    return outside + _heads_inside(model)


# --- adapters (peft) ----------------------------------------------------------------------


def with_adapter(
    model: Any, adapter: AdapterArgs, task_type: str | None = None, *, train_head: bool = True
) -> Any:
    """``model`` for full fine-tuning; else ``model`` wrapped in a new LoRA adapter (peft).

    peft freezes the base weights and trains the adapter. The task head
    (:func:`head_modules`, seeded by this trial) trains in full through peft's
    ``modules_to_save`` and is saved with the adapter: left frozen, the random head holds
    back whatever the adapter learns (tests/test_adapter.py measures it). ``task_type``:
    peft's (``SEQ_CLS`` for text classification, whose models peft knows; None for
    others, which peft wraps as they are). ``train_head`` False: the head stays frozen
    and adapter-free (a causal LM's pretrained ``lm_head``, the vocabulary's size).
    """
    if adapter.type == "none":
        return model
    from peft import LoraConfig, get_peft_model

    head = head_modules(model)
    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter_targets(model, adapter.target_modules, head),
        use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora,
        modules_to_save=head if train_head else None,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def adapter_targets(model: Any, wanted: str | list[str], head: list[str]) -> list[str] | str:
    """The modules an adapter goes into, as peft matches them.

    Named modules are taken as they are (checked at validate: :func:`check_targets`).
    ``auto`` is peft's own default for the architecture
    (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``: query and value for BERT-likes,
    q_proj and v_proj for Llama-likes, ...); an architecture peft has none for (ViT, ResNet,
    timm models) falls back on ``all-linear``: every linear layer of the backbone, by full
    name, never the head (peft's own ``all-linear`` knows the head of text models only), or
    for a CNN whose only linear layer is its head, its convolutions (peft's LoRA takes
    ``Conv2d``; grouped convolutions are left out, peft cannot merge them).
    """
    if isinstance(wanted, list):
        return wanted
    if wanted == "auto":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
        if default:
            return default
    import torch
    from transformers.pytorch_utils import Conv1D

    layers = [(n, m) for n, m in model.named_modules() if not _within(n, head)]
    linear = [n for n, m in layers if isinstance(m, torch.nn.Linear | Conv1D)]
    if linear:
        return linear
    convolutions = [n for n, m in layers if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    if convolutions:
        return convolutions
    raise ValueError(
        f"adapter.target_modules: {type(model).__name__} has no linear or convolution layer "
        "outside its head for an adapter; name the modules, or use adapter.type: none"
    )


def unwrapped(model: Any) -> Any:
    """The transformers model inside a peft adapter (its layers hold the adapter's), or
    ``model`` itself."""
    return model.get_base_model() if is_adapter_model(model) else model


def is_adapter_model(model: Any) -> bool:
    """Whether ``model`` is a peft adapter model (peft never imported: it cannot be)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def adapter_facts(model: Any) -> dict[str, Any]:
    """What a trial trained, stored as ``hpo:adapter``: ``{"type": "none"}`` for full
    fine-tuning, else the adapter's settings as peft resolved them.

    ``targets``: the names of the modules the adapter went into (their last part, once
    each; ``n_targets`` counts them all); ``modules_to_save``: the head, trained in full.
    """
    if not is_adapter_model(model):
        return {"type": "none"}
    config = model.peft_config[model.active_adapter]
    inner = model.get_base_model()
    targeted = [n for n, m in inner.named_modules() if hasattr(m, "lora_A")]
    # peft's SEQ_CLS adds its usual head names to ours: those the model has.
    saved = [n for n, m in inner.named_modules() if hasattr(m, "modules_to_save")]
    return {
        "type": "lora",
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        "use_dora": bool(config.use_dora),
        "targets": sorted({n.rsplit(".", 1)[-1] for n in targeted}),
        "n_targets": len(targeted),
        "modules_to_save": saved,
    }


def check_targets(auto_class: str, model_path: str, adapter: AdapterArgs) -> str | None:
    """Why ``adapter.target_modules`` cannot work on the model at ``model_path``: a named
    module it lacks, or its head (which trains in full); None when they can, or when the
    model's config cannot be read here (a hub id, offline).

    The model's layout comes from its ``config.json`` alone, built on the meta device (no
    weights read), once per process. Names match as in peft: the whole module name, or
    its last parts (``query`` or ``attention.self.query``).
    """
    wanted = adapter.target_modules
    if not isinstance(wanted, list) or not (Path(model_path) / "config.json").is_file():
        return None
    names, head, layers = cached(
        ("layout", model_path, auto_class), lambda: _model_layout(auto_class, model_path)
    )

    def matches(target: str, name: str) -> bool:
        return name == target or name.endswith("." + target)

    for target in wanted:
        found = [n for n in names if matches(target, n)]
        if found and all(_within(n, head) for n in found):
            return (
                f"{target!r} is the model's head ({', '.join(head)}), which trains in full "
                "beside the adapter; leave it out of adapter.target_modules"
            )
        if not found:
            shown = ", ".join(layers[:_SHOWN_LAYERS])
            more = (
                f" and {len(layers) - _SHOWN_LAYERS} more" if len(layers) > _SHOWN_LAYERS else ""
            )
            return (
                f"the model has no module {target!r}; its layers an adapter can go into: "
                f"{shown}{more}"
            )
    return None


_SHOWN_LAYERS = 20


def _model_layout(auto_class: str, model_path: str) -> tuple[list[str], list[str], list[str]]:
    """Every module name of the model, its head, and the names (last parts, once each) of
    the layers an adapter can go into, read from its config without its weights."""
    import torch
    import transformers
    from transformers.pytorch_utils import Conv1D

    config = transformers.AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = getattr(transformers, auto_class).from_config(config)
    adaptable = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding, Conv1D)
    modules, head = list(model.named_modules()), head_modules(model)
    layers = {
        n.rsplit(".", 1)[-1]
        for n, m in modules
        if isinstance(m, adaptable) and not _within(n, head)
    }
    return [n for n, _ in modules], head, sorted(layers)


def _within(name: str, modules: list[str]) -> bool:
    """Whether module ``name`` is one of ``modules`` or lies inside one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def check_args(
    args_model: type[HFTrainingArgs],
    args: HFTrainingArgs,
    search_space: dict[str, Any],
    **arguments_class: Any,
) -> tuple[str, str] | None:
    """A trainer's ``check_args`` hook: trackers installed, ``training_args`` fields hpo
    leaves free, searched choices valid; ``(field, message)`` for the first problem.
    ``arguments_class``: ``config`` and ``owned`` of :func:`trackers.check_tracking`, for a
    trainer whose arguments are a subclass of ``TrainingArguments``."""
    return trackers.check_tracking(
        args.report_to,
        args.training_args,
        args_model.model_fields,
        search_space,
        **arguments_class,
    ) or check_search_space(args_model, args, search_space)


def with_oom_retry(
    train_once: Callable[[Any, TrialContext], dict[str, float]],
    args: HFTrainingArgs,
    ctx: TrialContext,
) -> dict[str, float]:
    """Train; on out-of-memory (with ``oom_retry``) retry once at half the batch.

    The effective batch stays the same: gradient accumulation doubles.
    """
    try:
        return train_once(args, ctx)
    except Exception as e:
        if not (args.oom_retry and _is_oom(e)) or args.per_device_train_batch_size < 2:
            raise
        smaller = args.model_copy(
            update={
                "per_device_train_batch_size": args.per_device_train_batch_size // 2,
                "gradient_accumulation_steps": args.gradient_accumulation_steps * 2,
            }
        )
        logger.warning(
            "trial %d: out of memory; retrying with batch %d x %d accumulation",
            ctx.number,
            smaller.per_device_train_batch_size,
            smaller.gradient_accumulation_steps,
        )
        ctx.set_attr(
            "oom_retry",
            {
                "per_device_train_batch_size": smaller.per_device_train_batch_size,
                "gradient_accumulation_steps": smaller.gradient_accumulation_steps,
            },
        )
        _free_cuda()
        return train_once(smaller, ctx)


def fit(
    args: HFTrainingArgs,
    ctx: TrialContext,
    model: Any,
    data: Datasets,
    error_analysis: Callable[[Any, Datasets, int], dict[str, Any]] | None = None,
    *,
    family: Family | None = None,
) -> dict[str, float]:
    """Train ``model`` with the HF ``Trainer``, report to hpo, score validation and test.

    Returns the final metrics (``eval_*``, ``test_*``, ``epoch`` and the cost metrics);
    a pruned trial returns its last evaluation. ``model`` may be a peft adapter model
    (:func:`with_adapter`); what it trained is stored as ``hpo:adapter``. ``family``: what
    a trainer family that does not classify changes (its Trainer and arguments classes).
    """
    from transformers import PrinterCallback

    family = family or Family()
    ctx.set_attr("adapter", adapter_facts(model))
    memory = PeakMemory(ctx.device)
    reporter = reporter_class()(ctx, args.early_stopping_patience)
    last_eval: dict[str, Any] = {}

    def metrics_keeping_predictions(prediction: Any) -> dict[str, float]:
        last_eval["prediction"] = prediction
        return compute_metrics(prediction)

    trainer = trainer_class(data.train_lengths, family.trainer)(
        model=model,
        args=training_arguments(args, ctx, family.config, **family.config_fields),
        train_dataset=data.train,
        eval_dataset=data.validation,
        # Its __call__, not the collator: the Trainer saves a collator's tokenizer into
        # every checkpoint (Trainer._save), 0.7 MB for MiniLM's, several times an adapter;
        # export takes the base model's, which training never changes.
        data_collator=data.collator.__call__ if data.collator is not None else None,
        # None: the Trainer gathers no logits, and scores the loss alone.
        compute_metrics=metrics_keeping_predictions if family.classifies else None,
        callbacks=[reporter],
        # class_weights: a loss of the classifier's logits (TRL's trainer refuses one).
        **({"compute_loss_func": weighted_loss(args, data)} if family.classifies else {}),
        **family.trainer_kwargs,
    )
    # hpo logs one line per trial; the Trainer's own per-log dict prints would drown it.
    trainer.remove_callback(PrinterCallback)
    runs = trackers.start_runs(args.report_to, ctx)
    trackers.attach(trainer, runs)
    try:
        returned, final = _train_and_score(
            trainer, args, ctx, data, reporter, last_eval, memory, error_analysis, family
        )
    except BaseException:
        trackers.end_runs_after_failure(runs)
        raise
    # A pruned trial is a finished run too: its trackers get its params and last metrics.
    trackers.log_final(runs, dict(ctx.trial.params), final)
    return returned


def _train_and_score(
    trainer: Any,
    args: HFTrainingArgs,
    ctx: TrialContext,
    data: Datasets,
    reporter: Any,
    last_eval: dict[str, Any],
    memory: PeakMemory,
    error_analysis: Callable[[Any, Datasets, int], dict[str, Any]] | None,
    family: Family,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train, then score; (what :func:`fit` returns, the final metrics as numbers)."""
    resume = str(ctx.resume_from) if ctx.resume_from else None
    trained = trainer.train(resume_from_checkpoint=resume)
    if reporter.non_finite:
        raise NonFiniteError(
            f"{reporter.non_finite} at step {trainer.state.global_step}; lower learning_rate"
        )
    if ctx.pruned:
        last = dict(ctx.history[-1]) if ctx.history else {}
        return last, {k: float(v) for k, v in last.items() if isinstance(v, int | float)}
    if reporter.last_step == trainer.state.global_step and (
        "prediction" in last_eval or not family.classifies
    ):
        # The last evaluation already scored the final model: reuse it, do not predict again.
        validation, metrics = last_eval.get("prediction"), dict(reporter.last_metrics)
    else:  # training went on after the last evaluation (an eval_steps schedule)
        validation = trainer.predict(data.validation, metric_key_prefix="eval")
        metrics = dict(validation.metrics)
    # The test score is for the model a user ships: the best trial's. One that does not
    # lead when it finishes never becomes the best, so its test pass is skipped.
    if len(data.test) and (args.score_test == "all" or ctx.leads_study(metrics)):
        metrics.update(trainer.predict(data.test, metric_key_prefix="test").metrics)
    metrics["epoch"] = float(trainer.state.epoch or 0)
    metrics["peak_memory_mb"] = memory.peak_mb()
    if "train_samples_per_second" in trained.metrics:
        metrics["train_samples_per_second"] = float(trained.metrics["train_samples_per_second"])
    metrics.update(cost_metrics(trainer.model, data, metrics))
    if args.error_examples:
        analysis = (error_analysis or confusion_analysis)(validation, data, args.error_examples)
        ctx.set_attr("error_analysis", analysis)
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    return final, final


def weighted_loss(args: HFTrainingArgs, data: Datasets) -> Callable[..., Any] | None:
    """With ``class_weights: balanced``, cross-entropy weighted by inverse class frequency.

    Weights are ``n / (k * count_c)`` over the training split (scikit-learn's "balanced");
    label smoothing applies inside the same loss. None: the model's own loss.
    """
    if args.class_weights == "none":
        return None
    import numpy as np
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    labels = data.train_labels
    if not labels:
        raise ValueError("class_weights: balanced needs the training labels; none were given")
    present = sorted(set(labels))
    weights = torch.ones(len(data.label_names))
    weights[present] = torch.tensor(
        compute_class_weight("balanced", classes=np.array(present), y=labels),
        dtype=torch.float32,
    )
    # Copied to the model's device once: a copy each step would sync with the GPU.
    on_device: dict[Any, Any] = {}

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if logits.device not in on_device:
            on_device[logits.device] = weights.to(logits.device)
        # `is not None`: the truth of a count on the GPU would sync with it every step.
        count = num_items_in_batch is not None
        total = torch.nn.functional.cross_entropy(
            logits.float(),
            labels,
            weight=on_device[logits.device],
            label_smoothing=args.label_smoothing_factor,
            reduction="sum" if count else "mean",
        )
        return total / num_items_in_batch if count else total

    return loss


@dataclass
class Family:
    """What a trainer family that does not classify changes in :func:`fit`.

    ``trainer``: the Trainer class (TRL's ``SFTTrainer``); ``config``: its arguments'
    class (``SFTConfig``) and ``config_fields`` the fields of it that are not
    ``TrainingArguments``'; ``trainer_kwargs``: more keyword arguments of the trainer
    (``processing_class``); ``classifies`` False: no logits are gathered and no class
    weights apply, validation is scored by its loss alone.
    """

    trainer: type | None = None
    config: type | None = None
    config_fields: dict[str, Any] = field(default_factory=dict)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    classifies: bool = True


def training_arguments(
    args: HFTrainingArgs, ctx: TrialContext, config: type | None = None, **fields: Any
) -> Any:
    """HF ``TrainingArguments`` for this trial: evaluation and saving on the same schedule.

    ``config``: a subclass of ``TrainingArguments`` to make instead (TRL's ``SFTConfig``),
    with ``fields`` of its own.
    """
    import torch

    schedule = "steps" if args.eval_steps else "epoch"
    cuda = ctx.device.startswith("cuda") and torch.cuda.is_available()
    precision = args.mixed_precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    training_args = gpu_copies(args.training_args, cuda)  # checked before the study ran
    hf_args = saved_as_written(config)(
        output_dir=str(ctx.output_dir),
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        num_train_epochs=args.num_train_epochs,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type=args.lr_scheduler_type,
        optim=args.optim,
        label_smoothing_factor=args.label_smoothing_factor,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        eval_strategy=schedule,
        eval_steps=args.eval_steps,
        save_strategy=schedule if args.save_checkpoints else "no",
        save_steps=args.eval_steps,
        save_total_limit=1,
        logging_strategy=schedule,
        logging_steps=args.eval_steps,
        seed=ctx.seed,
        data_seed=ctx.seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=trackers.trackers(args.report_to) or "none",
        run_name=trackers.run_name(ctx),
        disable_tqdm=True,
        # The Trainer's filter logs the running mean in place of a NaN or inf step loss, so
        # a diverged trial would complete with a broken model's scores; unfiltered, the
        # reporter sees the NaN at the next log and fails the trial (hpo:failure nan). The
        # filter also syncs with the GPU every step (a bool of a CUDA tensor). Under fp16
        # it stays: the loss scaler skips a step that overflowed, and that one inf would
        # fail a healthy trial (the scaler syncs every step anyway); a diverged fp16 run
        # shows in its validation loss instead (the reporter checks it too).
        logging_nan_inf_filter=precision == "fp16",
        dataloader_pin_memory=cuda,
        # The batches' label key, named: the Trainer reads it from the model's forward
        # signature, which a peft model wrapped as it is (images) does not show.
        **{"label_names": ["labels"], **fields, **training_args},
    )
    hf_args.written = as_written(training_args, ctx.templates)
    return hf_args


def as_written(training_args: dict[str, Any], templates: dict[str, str]) -> dict[str, Any]:
    """The ``training_args`` fields that held ``${VAR}``, with the templates in place of the
    values (``templates``: the trial's, keyed by path in its params)."""
    import copy

    written: dict[str, Any] = {}
    for path, template in templates.items():
        head, *keys = path.split(".")
        if head != "training_args" or not keys or keys[0] not in training_args:
            continue
        name = keys[0]
        if len(keys) == 1:
            written[name] = template
            continue
        value = written.setdefault(name, copy.deepcopy(training_args[name]))
        for key in keys[1:-1]:
            value = value[int(key)] if isinstance(value, list) else value[key]
        value[int(keys[-1]) if isinstance(value, list) else keys[-1]] = template
    return written


@functools.cache
def saved_as_written(config: type | None = None) -> type:
    """``TrainingArguments`` that pickle with their ``${VAR}`` fields as written.

    The Trainer saves its arguments into every checkpoint (``torch.save(self.args)`` into
    ``training_args.bin``, in ``Trainer._save`` and, pushing to the Hub,
    ``_push_from_checkpoint``), so a secret from ``${VAR}`` (a ``hub_token``) would land
    on disk in plain text. Pickling is the one door both take: the pickle is a plain
    ``TrainingArguments`` (loadable without hpo) whose fields in ``written`` hold their
    templates. Copies keep the values: training and pushing use them in memory.
    ``config``: the ``TrainingArguments`` subclass to extend (and pickle as).
    """
    import copy
    import copyreg

    from transformers import TrainingArguments

    base = config or TrainingArguments

    class SavedAsWritten(base):  # type: ignore[valid-type,misc]
        written: dict[str, Any] = {}  # noqa: RUF012 - set per instance by training_arguments

        def __reduce_ex__(self, protocol: Any) -> Any:
            state = {k: v for k, v in self.__dict__.items() if k != "written"}
            state.update(self.written)
            # How protocols 0 and 1 pickle any object, as a plain TrainingArguments (the
            # NEWOBJ of protocol 2 must name the object's own class).
            return copyreg._reconstructor, (base, object, None), state

        def __copy__(self) -> Any:
            clone = object.__new__(type(self))
            clone.__dict__.update(self.__dict__)
            return clone

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            clone = object.__new__(type(self))
            memo[id(self)] = clone
            clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
            return clone

    return SavedAsWritten


def gpu_copies(training_args: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """``training_args`` with batches copied to the GPU without blocking, unless the user's
    ``accelerator_config`` says otherwise.

    The batches are pinned (``dataloader_pin_memory``), and a blocking copy from pinned
    memory waits for the GPU to finish all the work queued before it: one sync per step,
    so the CPU cannot queue the next step while the GPU runs this one. accelerate's
    ``non_blocking`` is the Trainer's switch for it; PyTorch keeps a pinned buffer until
    its copy is done.
    """
    user = training_args.get("accelerator_config", {})
    if not cuda or not isinstance(user, dict):  # a JSON file's path is the user's whole say
        return training_args
    return {**training_args, "accelerator_config": {"non_blocking": True, **user}}


class LengthBucketSampler:
    """Batches of similar length in random order: groups of 50 batches drawn from a shuffled
    order, each sorted by length and cut into batches, then all batches shuffled.

    Each batch pads to its longest text, so random batches of short texts are much padding
    (a third of the tokens on the shipped reviews, over half on the held-out docstring
    topics). HF's ``LengthGroupedSampler`` cuts that too, but keeps each group's batches
    longest first, and that fixed order cost the reviews accuracy in 3 of 3 seeds (mean
    -0.031); shuffling the batches kept it (+0.020 on the reviews, -0.005 on the topics)
    with the same 23-43 % less training time (benchmarks/RESULTS.md section 5).
    The order depends only on (seed, epoch), as with accelerate's seedable sampler that
    a plain Trainer uses: the Trainer calls ``set_epoch``, and a resume in the middle of
    an epoch skips exactly the batches the lost run had trained on.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, seed: int, batches_per_group: int = 50
    ):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.group_size = batch_size * batches_per_group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.group_size):
            group = sorted(order[start : start + self.group_size], key=self.lengths.__getitem__)
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        # The DataLoader cuts this stream every batch_size indices: a short batch (the
        # last of the last group) goes last so that every batch stays one bucket.
        shuffled.sort(key=lambda batch: len(batch) < self.batch_size)
        return iter([i for batch in shuffled for i in batch])


def trainer_class(train_lengths: list[int] | None, base: type | None = None) -> Any:
    """``base`` (``transformers.Trainer`` by default), or a subclass of it whose training
    batches come from LengthBucketSampler."""
    from transformers import Trainer

    base = base or Trainer
    if train_lengths is None:
        return base

    class LengthBucketedTrainer(base):  # type: ignore[valid-type,misc]
        # The Trainer's hook for its training sampler (HF subclasses it for the same end).
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            # _train_batch_size: the DataLoader's (auto_find_batch_size may lower it);
            # data_seed: training_arguments always sets it.
            return LengthBucketSampler(train_lengths, self._train_batch_size, self.args.data_seed)

    return LengthBucketedTrainer


def compute_metrics(prediction: Any) -> dict[str, float]:
    """Accuracy and macro-F1 from logits."""
    import numpy as np
    from sklearn.metrics import f1_score

    predicted = np.argmax(prediction.predictions, axis=-1)
    labels = prediction.label_ids
    return {
        "accuracy": float((predicted == labels).mean()),
        "f1": float(f1_score(labels, predicted, average="macro")),
    }


def confusion_analysis(prediction: Any, data: Datasets, top_k: int) -> dict[str, Any]:
    """Validation confusion matrix and the most confidently wrong examples.

    Each wrong example shows as ``data.show_example(index)`` (its text, its thumbnail)
    plus its true label, the predicted one and the confidence; stored as
    ``hpo:error_analysis``, which ``hpo report`` draws.
    """
    import numpy as np

    logits = prediction.predictions
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    predicted = probabilities.argmax(axis=-1)
    labels = prediction.label_ids
    n = len(data.label_names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:top_k]
    return {
        "labels": data.label_names,
        "confusion_matrix": matrix.tolist(),  # rows: true label, columns: predicted
        "confident_errors": [
            {
                **data.show_example(int(i)),
                "label": data.label_names[labels[i]],
                "predicted": data.label_names[predicted[i]],
                "confidence": round(float(probabilities[i, predicted[i]]), 4),
            }
            for i in wrong
        ],
    }


LATENCY_EXAMPLES = 16  # enough for a stable median, cheap next to training
_WARMUP = 2


def cost_metrics(model: Any, data: Datasets, metrics: dict[str, Any]) -> dict[str, float]:
    """What training, shipping and serving this model cost, beside its accuracy.

    ``n_parameters`` and ``model_size_mb`` (fp32 parameters and buffers, what a saved copy
    weighs; an adapter model's count its adapter, not peft's frozen copy of the head);
    ``trainable_parameters``: those training updated; ``adapter_size_mb``: the weights a
    trial adds to its base model, as saved: an adapter and its head (peft's
    ``get_peft_model_state_dict``), or for full fine-tuning the whole model;
    ``latency_ms``: the median time of one validation example at batch size 1 on the
    trial's device, after warm-up (see :func:`latency_ms`); ``throughput``: validation
    examples per second at the eval batch size, from the final evaluation.
    """
    weights = [p for name, p in model.named_parameters() if f".{_PEFT_HEAD_ORIGINAL}." not in name]
    n_parameters = sum(p.numel() for p in weights)
    size = _mb([*weights, *model.buffers()])
    adapter = is_adapter_model(model)
    result = {
        "n_parameters": float(n_parameters),
        "model_size_mb": size,
        "trainable_parameters": float(sum(p.numel() for p in weights if p.requires_grad)),
        # To 0.1 KB: a small adapter weighs a few KB.
        "adapter_size_mb": _mb(adapter_weights(model), digits=4) if adapter else size,
    }
    latency = latency_ms(model, data)
    if latency is not None:
        result["latency_ms"] = latency
    if "eval_samples_per_second" in metrics:
        result["throughput"] = float(metrics["eval_samples_per_second"])
    return result


# peft keeps the head as trained and, frozen beside it, the head it started from.
_PEFT_HEAD_ORIGINAL = "original_module"


def adapter_weights(model: Any) -> Any:
    """The tensors an adapter model saves: the adapter's and the head's."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model).values()


def _mb(tensors: Any, digits: int = 2) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, digits)


class PeakMemory:
    """The most memory training took, from its start (``peak_memory_mb``).

    On a GPU, the most CUDA memory tensors held (``torch.cuda.max_memory_allocated``).
    On a CPU, the process's resident-set high-water mark: Linux's ``VmHWM``, reset at the
    start (``/proc/self/clear_refs``) so an earlier trial's peak in the same worker is not
    counted; it includes what the process held before (Python, the libraries, the cached
    data and base weights). Elsewhere ``getrusage``'s ``ru_maxrss``, which cannot be reset:
    the worker's peak so far.
    """

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.device = device
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS only
        except OSError:
            pass  # not Linux (or not allowed): the process's peak so far

    def peak_mb(self) -> float:
        """Megabytes (2**20 bytes) at the peak since this object was made."""
        import torch

        if self.cuda:
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        try:
            status = Path("/proc/self/status").read_text()
            kib = next(int(line.split()[1]) for line in status.splitlines() if "VmHWM" in line)
        except (OSError, StopIteration, ValueError, IndexError):
            import resource
            import sys

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kib = peak // 1024 if sys.platform == "darwin" else peak  # macOS: bytes
        return round(kib / 1024, 1)


def latency_ms(model: Any, data: Datasets) -> float | None:
    """Median milliseconds of one validation example at batch size 1, after warm-up.

    Measured once per worker for each architecture (class and parameter shapes), device
    and validation split, then reused: a forward pass costs what its shapes cost, not what
    a trial's weights learnt, and trials that differ only in hyperparameters share all
    three. None when the trainer gives no ``example_inputs``.
    """
    import statistics
    import time

    import torch

    validation = data.validation
    count = min(LATENCY_EXAMPLES + _WARMUP, len(validation)) if data.example_inputs else 0
    if count <= _WARMUP:
        return None
    device = next(model.parameters()).device

    def measure() -> tuple[Any, float]:
        # Spread over the split (a trainer may store it in length order), not its first rows.
        examples = [validation[i * len(validation) // count] for i in range(count)]
        model.eval()
        times = []
        with torch.inference_mode():
            for i, example in enumerate(examples):
                inputs = data.example_inputs(example, device)  # type: ignore[misc]
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= _WARMUP:
                    times.append((time.perf_counter() - start) * 1000)
        # The split is kept beside its figure, so its id in the key cannot be reused.
        return validation, round(statistics.median(times), 3)

    shapes = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters())
    key = ("latency", type(model).__qualname__, shapes, str(device), id(validation))
    return float(cached(key, measure)[1])


@functools.cache
def reporter_class() -> type:
    """The callback class, made on first use so importing this module stays light."""
    from transformers import TrainerCallback

    class HpoReporter(TrainerCallback):
        """Reports each evaluation to hpo; stops training (never raises) to prune or stop early.

        Patience (``early_stopping_patience``) is counted here, as transformers'
        ``EarlyStoppingCallback`` counts it: an evaluation that does not beat the best so
        far on the objective is stale (a tie is stale); ``patience`` stale ones in a row
        stop training. The callback itself does not serve, as of transformers 5.25: it no
        longer needs ``load_best_model_at_end`` (only a warning), but it asserts
        ``metric_for_best_model`` in ``on_train_begin`` and compares with
        ``state.best_metric``, which only the Trainer's ``_determine_best_metric`` sets,
        from that argument. With ``metric_for_best_model`` set the Trainer also records
        ``state.best_model_checkpoint``: ``rotate_checkpoints`` then keeps two
        checkpoints (the best and the last) in place of ``save_total_limit=1``, and
        ``Trainer._finalize_training`` deletes every checkpoint but the best, so the
        last one, the trained model hpo scores, keeps (``hpo:checkpoint``) and exports,
        would be gone after any early stop (its last evaluations are stale by
        definition). It would also raise a KeyError for an objective missing from the
        evaluation's metrics. tests/test_image_classification.py pins the rule and the
        checkpoint (test_early_stopping_keeps_the_last_checkpoint).
        """

        def __init__(self, ctx: TrialContext, patience: int | None):
            self.ctx = ctx
            self.patience = patience
            self.best: float | None = None
            self.stale = 0
            self.non_finite: str | None = None  # "training loss became nan", ...
            self.last_step = -1
            self.last_metrics: dict[str, float] = {}

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw):
            self._check_finite("training", (logs or {}).get("loss"), control)

        def _check_finite(self, split: str, loss: float | None, control: Any) -> bool:
            if loss is None or math.isfinite(loss):
                return True
            self.non_finite = self.non_finite or f"{split} loss became {loss}"
            control.should_training_stop = True
            return False

        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any
        ) -> None:
            metrics = metrics or {}
            # A model whose outputs are no longer finite: the trial fails, nothing to report.
            if not self._check_finite("validation", metrics.get("eval_loss"), control):
                return
            self.last_step, self.last_metrics = state.global_step, dict(metrics)
            by_steps = args.eval_strategy == "steps"
            step = state.global_step if by_steps else int(round(state.epoch or 0))
            self.ctx.report(step, metrics, epoch=float(state.epoch or 0))
            # After the last step there is nothing left to save by pruning: let it complete.
            if state.global_step < state.max_steps and self.ctx.should_prune():
                control.should_training_stop = True
            value = metrics.get(self.ctx.objective)
            if self.patience and value is not None:
                sign = 1.0 if self.ctx.direction == "maximize" else -1.0
                if self.best is None or sign * (value - self.best) > 0:
                    self.best, self.stale = value, 0
                else:
                    self.stale += 1
                    control.should_training_stop |= self.stale >= self.patience

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # The checkpoint after the last step is never resumed from (a retry of this
            # trial finds nothing left to train): its weights suffice for export and
            # retention. Saving the optimizer state too would write twice their size for
            # nothing. Only the last step: a retry after a prune or an early stop that
            # was not recorded yet trains on, and needs the optimizer and scheduler.
            if state.global_step >= state.max_steps:
                args.save_only_model = True  # read by Trainer._save_checkpoint, just after

        def on_save(
            self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
        ) -> None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            save_base_config(model, checkpoint)
            self.ctx.set_checkpoint(checkpoint)

    return HpoReporter


def save_base_config(model: Any, checkpoint: Path) -> None:
    """Beside an adapter checkpoint's weights, the ``config.json`` of the model it adapts.

    peft saves the adapter and head only (``adapter_config.json``,
    ``adapter_model.safetensors``); the base model's config as this trial built it (its
    labels, dropout) is what loading it again needs besides the base weights. A full
    model's checkpoint holds its config already.
    """
    if is_adapter_model(model) and checkpoint.is_dir():
        model.get_base_model().config.save_pretrained(str(checkpoint))


def _is_oom(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def relative_to(value: str, study_dir: Path) -> Path:
    """``value`` as a path; relative paths start at the study file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else study_dir / path
