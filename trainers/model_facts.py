"""Facts about a candidate base model, read before anything trains, and the filter on them.

A practitioner chooses a base model by its licence, its size and what it was trained on;
these come from the model's own files, not from a list kept here: ``config.json``
(architecture, maximum sequence length, layers), the weight files (parameter count from
the safetensors header, or a memory-mapped .bin, without reading a tensor; size on disk)
and the model card's front matter (``license:``, ``datasets:``), parsed with
huggingface_hub's ``ModelCard``. A hub id is looked up only when the machine is online
(``HF_HUB_OFFLINE=1`` means it is not checked, and its facts are unknown).

Shared by the Hugging Face trainers; the core reaches it only through a trainer's
``describe_model`` hook.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

# Architectures whose layout (embeddings + a ModuleList of encoder layers, dropout in the
# config's *_dropout_prob fields) freeze_layers and the dropout hyperparameters know.
BERT_LIKE = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet"}
)
# Where each known image architecture keeps its stem and its stages (CNNs) or blocks
# (ViTs), as attribute paths below ``model.base_model``: what the image trainer's
# freeze_layers freezes (and what its hpo init draft may search).
LAYOUTS = {
    "resnet": ("embedder", "encoder.stages"),
    "convnext": ("embeddings", "encoder.stages"),
    "convnextv2": ("embeddings", "encoder.stages"),
    "vit": ("embeddings", "layers"),
    "deit": ("embeddings", "layers"),
}
# Weight files in the order transformers prefers them: a folder with both formats loads
# (and weighs) only the first one found.
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
# Architectures whose position ids start after the padding index (RoBERTa's layout): of
# max_position_embeddings, pad_token_id + 1 positions are never used by a token.
_POSITIONS_AFTER_PADDING = frozenset(
    {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
)
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*$")
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}


@dataclass
class ModelFacts:
    """What ``hpo validate`` shows for one candidate, and what each trial stores."""

    name: str
    source: str  # packaged | local | hub
    path: str
    architecture: str | None = None  # model_type, e.g. bert
    n_parameters: int | None = None
    size_mb: float | None = None  # weight files on disk
    max_seq_length: int | None = None
    layers: int | None = None  # transformer layers (blocks), from config.json
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    checked: bool = True  # False: a hub id not looked up (offline)

    @property
    def bert_like(self) -> bool:
        return self.architecture in BERT_LIKE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_count(value: Any) -> Any:
    """``120M`` -> 120_000_000 (k, M, B suffixes); numbers pass through."""
    if isinstance(value, str):
        match = _COUNT.match(value)
        if not match:
            raise ValueError(f"expected a count like 120M, 1.5B or 66000, but got {value!r}")
        return int(float(match[1]) * _SCALE[match[2].lower()])
    return value


class ModelFilter(BaseModel):
    """Candidates a study may train: any field left out does not filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    licenses: list[str] | None = Field(None, min_length=1, description="e.g. [apache-2.0, mit]")
    max_parameters: Annotated[
        int | None,
        WithJsonSchema(  # what a study file may write: 120M, 1.5B or a number
            {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": _COUNT.pattern}]}
        ),
    ] = Field(None, gt=0, description="e.g. 120M")
    max_size_mb: float | None = Field(None, gt=0, description="weight files on disk")
    architectures: list[str] | None = Field(None, min_length=1, description="e.g. [bert]")

    @field_validator("max_parameters", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return parse_count(value)

    def reject(self, facts: ModelFacts) -> str | None:
        """Why ``facts`` fails this filter (one phrase), or None when it passes."""
        unchecked = "" if facts.checked else " (hub id not checked offline)"
        if self.licenses is not None:
            if facts.license is None:
                return f"license unknown{unchecked}, and model_filter.licenses is set"
            if facts.license.lower() not in {x.lower() for x in self.licenses}:
                return f"license {facts.license} not in [{', '.join(self.licenses)}]"
        if self.architectures is not None:
            if (facts.architecture or "").lower() not in {x.lower() for x in self.architectures}:
                return (
                    f"architecture {facts.architecture or 'unknown'} not in "
                    f"[{', '.join(self.architectures)}]"
                )
        if self.max_parameters is not None:
            if facts.n_parameters is None:
                return f"parameter count unknown{unchecked}, and max_parameters is set"
            if facts.n_parameters > self.max_parameters:
                return (
                    f"{format_count(facts.n_parameters)} parameters > max_parameters "
                    f"{format_count(self.max_parameters)}"
                )
        if self.max_size_mb is not None:
            if facts.size_mb is None:
                return f"size unknown{unchecked}, and max_size_mb is set"
            if facts.size_mb > self.max_size_mb:
                return f"{facts.size_mb:.1f} MB on disk > max_size_mb {self.max_size_mb:g}"
        return None


def format_count(n: int | None) -> str:
    """22713728 -> 22.7M."""
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def describe_folder(name: str, folder: Path, source: str) -> ModelFacts:
    """Facts of a model folder on disk.

    Raises:
        ValueError: the folder does not exist or has no loadable ``config.json``.
    """
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist; give a model folder, minilm-l6 or a hub id")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{folder} has no config.json; it is not a model folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} cannot be read ({e}); re-save the model") from None
    weights = next(
        (found for pattern in _WEIGHT_FILES if (found := sorted(folder.glob(pattern)))), []
    )
    facts = ModelFacts(
        name=name,
        source=source,
        path=str(folder),
        architecture=config.get("model_type"),
        n_parameters=_count_parameters(weights),
        size_mb=round(sum(p.stat().st_size for p in weights) / 2**20, 1) if weights else None,
        max_seq_length=_max_length(config, folder),
        layers=_first_int(config, "num_hidden_layers", "n_layers", "n_layer", "num_layers"),
    )
    _read_card(facts, folder / "README.md")
    return facts


def describe_hub(name: str, offline: bool) -> ModelFacts:
    """Facts of a hub id from the hub's metadata (nothing is downloaded); unknown offline.

    Raises:
        ValueError: online, and the hub has no such model.
    """
    facts = ModelFacts(name=name, source="hub", path=name, checked=not offline)
    if offline:
        return facts
    from huggingface_hub import model_info
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = model_info(name, files_metadata=True)
    except HfHubHTTPError as e:
        raise ValueError(f"no model {name!r} on the hub ({e.__class__.__name__})") from None
    card = info.card_data
    facts.license = getattr(card, "license", None) if card else None
    facts.datasets = list(getattr(card, "datasets", None) or []) if card else []
    facts.architecture = (info.config or {}).get("model_type")
    if info.safetensors is not None:
        facts.n_parameters = int(info.safetensors.total)
    sizes = [s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
    facts.size_mb = round(sum(sizes) / 2**20, 1) if sizes else None
    return facts


def _count_parameters(weights: list[Path]) -> int | None:
    """Parameters from the safetensors headers, or from .bin files memory-mapped (no tensor
    data is read either way); None when a file cannot be read."""
    total = 0
    for path in weights:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
            continue
        try:  # older checkpoints: a pickled state dict (weights_only refuses any code)
            import torch

            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:
            return None
        tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
        # Tied weights (an embedding and its output layer) are one storage saved twice.
        views = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape): t for t in tensors}
        total += sum(t.numel() for t in views.values())
    return total or None  # nothing counted: not a flat state dict (a wrapped checkpoint)


def _first_int(config: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` that ``config`` sets to an integer (fields differ by family)."""
    return next((v for n in names if isinstance(v := config.get(n), int)), None)


def max_input_length(folder: Path) -> int | None:
    """The longest input a model folder takes (its config and tokenizer), read alone: what
    capping ``max_seq_length`` needs, without the weights and card ``describe_folder`` reads.
    None when the folder has no readable ``config.json``."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return _max_length(config, folder)


def _max_length(config: dict[str, Any], folder: Path) -> int | None:
    """The smaller of the usable positions and the tokenizer's ``model_max_length``."""
    positions = _first_int(config, "max_position_embeddings", "n_positions")
    if positions is not None and config.get("model_type") in _POSITIONS_AFTER_PADDING:
        positions -= (_first_int(config, "pad_token_id") or 0) + 1  # RoBERTa's 514 -> 512
    limits: list[Any] = [positions]
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            limits.append(json.loads(tokenizer_config.read_text()).get("model_max_length"))
        except (OSError, json.JSONDecodeError):
            pass
    # Tokenizers without a limit store a huge sentinel (int(1e30)); ignore it.
    known = [int(x) for x in limits if isinstance(x, int | float) and 0 < x < 1_000_000]
    return min(known) if known else None


def _read_card(facts: ModelFacts, readme: Path) -> None:
    """Licence and pre-training data sets from the model card's front matter."""
    if not readme.is_file():
        return
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data
    except Exception:  # a card without front matter or with broken YAML: facts stay unknown
        return
    facts.license = data.license if isinstance(data.license, str) else None
    datasets = data.datasets or []
    facts.datasets = [datasets] if isinstance(datasets, str) else [str(d) for d in datasets]
