"""Saving a Hugging Face checkpoint as a loadable model folder (the ``save_model`` hook).

A ``checkpoint-<step>`` folder holds ``config.json``, the weights, and the optimizer,
scheduler and trainer state; an export keeps the model files only and adds the
tokenizer of the base model (training never changes it, so checkpoints hold none).

An adapter trial's checkpoint holds peft's adapter (``adapter_config.json``,
``adapter_model.safetensors``: adapter and head) and the adapted model's ``config.json``
(its labels); its export is that adapter, named after the base model's hub id, which
``PeftModel.from_pretrained(base, DIR)`` loads, or with ``merge`` the adapter merged into
the base weights (peft's ``merge_and_unload``): a plain model folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

# Files of a saved model, as opposed to the optimizer, scheduler and trainer state.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MODEL_PATTERNS = ("model-*.safetensors", "pytorch_model-*.bin")
# Files of a peft adapter (beside config.json, the model it adapts).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin")
# The transformers Auto class that loads the base model again, by preprocessor.
_AUTO_CLASSES = {
    "tokenizer": "AutoModelForSequenceClassification",
    "image": "AutoModelForImageClassification",
}


def save_hf_model(
    checkpoint: Path,
    target: Path,
    base_model: str,
    max_seq_length: int | None,
    preprocessor: Literal["tokenizer", "image"] = "tokenizer",
    *,
    base_id: str | None = None,
    merge: bool = False,
    auto_class: str | None = None,
) -> None:
    """Copy the checkpoint's model files to ``target`` and save the base model's tokenizer.

    An image model gets the base model's image processor instead. The tokenizer's
    ``model_max_length`` is the study's ``max_seq_length``, so
    ``tokenizer(text, truncation=True)`` tokenizes as training did. An adapter
    checkpoint's export is the adapter, whose ``base_model_name_or_path`` is ``base_id``
    (the hub id, not this machine's folder), or with ``merge`` the merged model; a full
    model's is the same with or without ``merge``. ``auto_class``: the transformers Auto
    class that loads the base for a merge (by default the preprocessor's family).

    Raises:
        ValueError: the checkpoint holds no model weights.
    """
    from transformers import AutoImageProcessor

    from hpo.trainers._hf import load_tokenizer

    if (checkpoint / ADAPTER_CONFIG).is_file():
        if merge:
            auto_class = auto_class or _AUTO_CLASSES[preprocessor]
            save_merged_model(checkpoint, target, base_model, auto_class)
        else:
            save_adapter(checkpoint, target, base_id or base_model)
    else:
        names = {n for n in MODEL_FILES if (checkpoint / n).is_file()}
        for pattern in MODEL_PATTERNS:
            names |= {p.name for p in checkpoint.glob(pattern)}
        if not any(n.endswith((".safetensors", ".bin")) for n in names):
            raise ValueError(f"checkpoint {checkpoint} holds no model weights")
        for name in sorted(names):
            shutil.copy2(checkpoint / name, target / name)
    if preprocessor == "image":
        AutoImageProcessor.from_pretrained(base_model).save_pretrained(str(target))
        return
    tokenizer = load_tokenizer(base_model)  # with the padding token training used
    if max_seq_length:
        tokenizer.model_max_length = int(max_seq_length)
    tokenizer.save_pretrained(str(target))


def save_adapter(checkpoint: Path, target: Path, base_id: str) -> None:
    """The adapter in peft's format, and the adapted model's ``config.json`` (its labels).

    peft wrote the path the trial loaded the base from (a folder on this machine, such as
    site-packages for a packaged model) as ``base_model_name_or_path``; the export names
    ``base_id`` instead, so ``AutoPeftModel...`` and the Hub find the base anywhere.
    """
    for name in (*ADAPTER_FILES, "config.json"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, target / name)
    config = json.loads((checkpoint / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def save_merged_model(checkpoint: Path, target: Path, base_model: str, auto_class: str) -> None:
    """The adapter merged into the base weights: a model folder plain ``from_pretrained``
    loads. The base is loaded with the checkpoint's config (the trial's labels), as
    training built it; the head comes from the adapter (peft's ``modules_to_save``)."""
    import transformers
    from peft import PeftModel

    config = transformers.AutoConfig.from_pretrained(str(checkpoint))
    base = getattr(transformers, auto_class).from_pretrained(
        base_model,
        config=config,
        ignore_mismatched_sizes=True,  # a head of other labels
    )
    merged = PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload()
    merged.save_pretrained(str(target))
