"""The causal-LM draft: which of the three shapes a table holds, its lengths, a LoRA space.

A table with ``prompt`` and ``completion`` columns is instruction data, one with a
``messages`` column chats, and one whose only column holds text is plain text for domain
adaptation; ``hpo init`` drafts this trainer's study for each (:func:`recognises_text_data`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from hpo.trainers.drafts.sizing import Draft, hold_out, size, trials_finding
from hpo.trainers.drafts.table import read_rows, require_columns

# No pretrained causal LM ships with hpo: a small instruction-tuned hub model (135 M
# parameters, Apache-2.0, with a chat template) that a CPU can fine-tune with LoRA.
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EPOCHS = 3
_TABLES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def table_format(columns: list[str]) -> str | None:
    """The causal-LM shape a table's columns name, or None."""
    if {"prompt", "completion"} <= set(columns):
        return "prompt_completion"
    if "messages" in columns:
        return "messages"
    if columns == ["text"]:
        return "text"
    return None


def recognises_text_data(path: Path) -> bool:
    """A table of prompts and completions, chats, or one text column (``hpo init``)."""
    if not path.is_file() or path.suffix.lower() not in _TABLES:
        return False
    try:
        rows = read_rows(path, limit=5)
    except (ValueError, OSError):
        return False
    return bool(rows) and table_format(list(rows[0])) is not None


def draft_causal_lm(
    path: Path, *, text_column: str | None = None, model: str | None = None
) -> Draft:
    """A study tuning a causal LM with LoRA on the rows of ``path``.

    ``text_column``: plain text in that column (domain adaptation), whatever the others.

    Raises:
        ValueError: unreadable data, or a table of none of the three shapes.
    """
    rows = read_rows(path)
    columns = list(rows[0])
    form = "text" if text_column else table_format(columns)
    if form is None:
        raise ValueError(
            f"no prompt and completion, messages or text column among {', '.join(columns)}; "
            "use --text-column for plain text"
        )
    dataset: dict[str, Any] = {"path": str(path), "format": form}
    if text_column:
        require_columns(columns, {"--text-column": text_column})
        if text_column != "text":
            dataset["text_column"] = text_column
    words = sorted(_words(row, form, text_column or "text") for row in rows)
    p95 = words[min(len(words) - 1, int(0.95 * len(words)))]
    # Subword tokens run about 1.3 per word; a power of two from 64 to 2048 covers 95%.
    max_seq_length = min(2048, max(64, 2 ** math.ceil(math.log2(max(1, p95 * 1.3 + 8)))))
    sizing = size(Counter({"rows": len(rows)}), len(rows), "examples")
    findings = [
        f"{len(rows)} rows of {form.replace('_', ' and ')} (95% have <= {p95} words)",
        f"max_seq_length {max_seq_length}: covers 95% of the examples",
        "objective eval_loss over the tokens that count (completions, assistant turns)",
        trials_finding(sizing),
        *hold_out(sizing, dataset),
    ]
    args: dict[str, Any] = {
        "model": model or DEFAULT_MODEL,
        "dataset": dataset,
        "max_seq_length": max_seq_length,
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "target_modules": "auto"},
    }
    if form != "text":
        args["generate"] = {"examples": 16, "max_new_tokens": 32}
    notes = {}
    if not model:
        notes["model"] = (
            "no pretrained causal LM ships with hpo: this hub model needs internet; give a "
            "local model folder with --model"
        )
    return Draft(
        args=args,
        search_space={
            "learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
            "adapter.r": {"type": "categorical", "choices": [8, 16, 32]},
            "num_train_epochs": {"type": "int", "low": 1, "high": EPOCHS},
        },
        budget={"n_trials": sizing.n_trials, "timeout": "2h", "max_failures": 3},
        objective={"metric": "eval_loss", "direction": "minimize"},
        sampler={"type": "tpe", "multivariate": True, "n_startup_trials": 4},
        pruner={"type": "hyperband", "min_resource": 1, "max_resource": EPOCHS},
        findings=findings,
        notes=notes,
    )


def _words(row: dict[str, Any], form: str, text_column: str) -> int:
    if form == "prompt_completion":
        return len(f"{row.get('prompt') or ''} {row.get('completion') or ''}".split())
    if form == "messages":
        messages = row.get("messages") or []
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                return 0
        return sum(len(str(m.get("content") or "").split()) for m in messages)
    return len(str(row.get(text_column) or "").split())
