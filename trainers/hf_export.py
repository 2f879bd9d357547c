"""Saving a Hugging Face checkpoint as a loadable model folder (the ``save_model`` hook).

A ``checkpoint-<step>`` folder holds ``config.json``, the weights, and the optimizer,
scheduler and trainer state; an export keeps the model files only and adds the
tokenizer of the base model (training never changes it, so checkpoints hold none).
"""

from __future__ import annotations

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


def save_hf_model(
    checkpoint: Path,
    target: Path,
    base_model: str,
    max_seq_length: int | None,
    preprocessor: Literal["tokenizer", "image"] = "tokenizer",
) -> None:
    """Copy the checkpoint's model files to ``target`` and save the base model's tokenizer.

    An image model gets the base model's image processor instead. The tokenizer's
    ``model_max_length`` is the study's ``max_seq_length``, so
    ``tokenizer(text, truncation=True)`` tokenizes as training did.

    Raises:
        ValueError: the checkpoint holds no model weights.
    """
    from transformers import AutoImageProcessor

    from hpo.trainers._hf import load_tokenizer

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
