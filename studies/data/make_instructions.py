"""Make ``instructions.jsonl``: prompt/completion pairs for the causal-LM study (sft.yaml).

Run ``python studies/data/make_instructions.py`` to rebuild the file byte for byte from
``reviews.csv`` (no randomness: one line per review, in the CSV's order).

Each line is ``{"prompt": "Review: <text>\\nForm:", "completion": " contrast"}``: how the
review is built, one of four words. ``contrast``: "..., but ..."; ``concession``:
"although ..., ..."; ``list``: "... and ..."; ``single``: one clause. The base model
``tiny-lm`` (make_tiny_lm.py) was pretrained on reviews alone and has never seen ``Form:``;
greedy decoding continues the review instead, so its exact match is zero. A short
fine-tune at a fitting learning rate answers (nearly) every line; too low a rate learns
the answer's shape but not the choice, too high a rate unlearns it: the learning rate
matters, which is what the study searches.

Why not the sentiment label itself: plain TRL (benchmarks/sft_plain.py) showed that
tiny-lm, in a fine-tune of seconds, learns to answer " positive" or " negative" but not
which (exact match 0.51, the majority class); and listing the aspects ("battery, sound")
asks for copying, which it does not learn in that time either (0.01). The form is
marked by a word of the review (but, although, and), which it can learn to find.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMS = ("contrast", "concession", "list", "single")


def form(text: str) -> str:
    """How make_reviews.py built ``text``: its connective decides (no clause holds one)."""
    low = text.lower()
    if ", but " in low:
        return "contrast"
    if "although " in low:
        return "concession"
    if " and " in low:
        return "list"
    return "single"


def make(source: Path = HERE / "reviews.csv") -> list[dict[str, str]]:
    """One prompt/completion pair per row of ``source``."""
    with source.open(newline="", encoding="utf-8") as f:
        return [
            {"prompt": f"Review: {row['text']}\nForm:", "completion": f" {form(row['text'])}"}
            for row in csv.DictReader(f)
        ]


def write(out: Path = HERE / "instructions.jsonl") -> Path:
    """Write the pairs as JSON lines to ``out`` and return it."""
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for pair in make():
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return out


if __name__ == "__main__":
    print(f"wrote {write()}")
