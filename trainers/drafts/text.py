"""The text-classification draft: the text and label columns, text lengths, a space."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from hpo.trainers.drafts.sizing import (
    Draft,
    Sizing,
    hold_out,
    most_common,
    objective_finding,
    propose,
    rare_findings,
    size,
    trials_finding,
)
from hpo.trainers.drafts.table import detect_label_column, read_rows, require_columns

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "comment", "message", "document")
EPOCHS = 3  # the most a drafted trial trains; Hyperband's largest resource


def draft_text_classification(
    path: Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    model: str | None = None,
) -> Draft:
    """A text-classification study for the rows of ``path`` (``model``: default minilm-l6).

    Raises:
        ValueError: unreadable data, a column that does not exist, or fewer than two classes.
    """
    rows = read_rows(path)
    columns = list(rows[0])
    text = text_column or _text_column(rows, columns, exclude=label_column)
    label = label_column or detect_label_column(rows, columns, exclude=text)
    require_columns(columns, {"--text-column": text, "--label-column": label})
    if text == label:
        raise ValueError(f"text and label are both {text!r}; name them with --text-column")
    counts = Counter(str(row.get(label)) for row in rows if row.get(label) not in (None, ""))
    if len(counts) < 2:
        raise ValueError(f"column {label!r} holds {len(counts)} class; a classifier needs two")
    draft = _sized_draft(path, rows, text, label, size(counts, len(rows), "examples"))
    if model:
        draft.args["model"] = model
    return draft


def _sized_draft(
    path: Path, rows: list[dict[str, Any]], text: str, label: str, sizing: Sizing
) -> Draft:
    words = sorted(len(str(row.get(text) or "").split()) for row in rows)
    p95 = words[min(len(words) - 1, int(0.95 * len(words)))]
    # Subword tokens run about 1.3 per word; a power of two from 32 to 512 covers 95%.
    max_seq_length = min(512, max(32, 2 ** math.ceil(math.log2(max(1, p95 * 1.3 + 2)))))
    dataset: dict[str, Any] = {"path": str(path), "text_column": text, "label_column": label}
    sample = hold_out(sizing, dataset)
    findings = [
        f"{sizing.n} rows; text in `{text}` (95% have <= {p95} words), label in `{label}`: "
        f"{len(sizing.counts)} classes ({most_common(sizing.counts)})",
        objective_finding(sizing),
        f"max_seq_length {max_seq_length}: covers 95% of the texts",
        trials_finding(sizing),
        *sample,
        *rare_findings(sizing, "merge or label more"),
    ]
    batch_sizes = [8, 16] if sizing.n_train < 500 else [8, 16, 32]
    return propose(
        sizing,
        args={"model": "minilm-l6", "dataset": dataset, "max_seq_length": max_seq_length},
        search_space={
            "learning_rate": {"type": "float", "low": 1.0e-5, "high": 5.0e-4, "log": True},
            "per_device_train_batch_size": {"type": "categorical", "choices": batch_sizes},
            "num_train_epochs": {"type": "int", "low": 1, "high": EPOCHS},
            "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        max_epochs=EPOCHS,
        findings=findings,
    )


def _text_column(rows: list[dict[str, Any]], columns: list[str], exclude: str | None) -> str:
    named = [c for c in columns if c.lower() in TEXT_NAMES and c != exclude]
    if named:
        return named[0]
    candidates = [c for c in columns if c != exclude and isinstance(rows[0].get(c), str)]
    if not candidates:
        raise ValueError(f"no text column among {', '.join(columns)}; use --text-column")
    # The column with the longest texts on average.
    return max(candidates, key=lambda c: sum(len(str(r.get(c) or "")) for r in rows))
