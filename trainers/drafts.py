"""Study drafts for ``hpo init``: what a shipped trainer proposes for a user's own data.

A trainer offers ``train.draft_study(data, **options)``: it looks at the data (reads it,
trains nothing) and returns a :class:`Draft`: its ``trainer.args``, a search space, a
budget and an objective sized for that data, and the findings that explain them. hpo
renders the draft as a commented study file (``hpo.draft``). The options are the
``hpo init`` flags the user gave (``model``, ``text_column``, ``image_column``,
``label_column``); a hook takes only those that apply to its data. A trainer may also
offer ``train.recognises_data(data) -> bool`` so ``hpo init`` picks it for data of its
kind (an image folder, say) without ``--trainer``.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "comment", "message", "document")
LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y")
MAX_ROWS = 200_000  # enough to count classes; a bigger file is sampled from its start
SEARCH_SAMPLE = 4_000  # training examples per trial while searching a large data set


@dataclass
class Draft:
    """A trainer's proposal for a study on one data set."""

    args: dict[str, Any]
    search_space: dict[str, dict[str, Any]]
    budget: dict[str, Any]
    objective: dict[str, str]
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None
    findings: list[str] = field(default_factory=list)  # why these choices, as comments
    notes: dict[str, str] = field(default_factory=dict)  # args key -> a comment beside it


def read_rows(path: Path, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a CSV, TSV, JSON lines, JSON (a list) or Parquet file.

    Raises:
        ValueError: the file is missing, of another format, or holds no rows.
    """
    if path.is_dir():
        raise ValueError("a folder, not a table; give a CSV, JSON lines or Parquet file")
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give a CSV, JSON lines or Parquet file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = _read_delimited(path, "\t" if suffix == ".tsv" else ",", limit)
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            lines = itertools.islice(f, limit)
            rows = [json.loads(line) for line in lines if line.strip()]
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data[:limit] if isinstance(data, list) else []
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with datasets

        first = next(pq.ParquetFile(path).iter_batches(batch_size=limit), None)
        rows = first.to_pylist() if first is not None else []
    else:
        raise ValueError(
            f"{path.suffix} files are not supported; use .csv, .tsv, .jsonl or .parquet"
        )
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        raise ValueError(f"{path} holds no rows of named columns")
    return rows


def check_columns(path: Path, columns: dict[str, str]) -> tuple[str, str] | None:
    """The first of ``columns`` (``{field: column}``) the table at ``path`` lacks.

    Read from the table's first rows before anything runs. Returns ``(field, why)`` for
    that column, or for a table that cannot be read; None when all are there.
    """
    try:
        found = list(read_rows(path, limit=20)[0])
    except (ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        return "dataset.path", f"{path.name}: {e}"
    for field_name, column in columns.items():
        if column not in found:
            close = difflib.get_close_matches(column, found, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return (
                f"dataset.{field_name}",
                f"{path.name} has no column {column!r}; {hint}its columns: {', '.join(found)}",
            )
    return None


def _read_delimited(path: Path, delimiter: str, limit: int) -> list[dict[str, Any]]:
    """The rows of a CSV (commas) or TSV (tabs): the two separators the text trainer reads.

    Raises:
        ValueError: the file is separated by something else (a semicolon, say), or a row
            has more fields than the header (a text holding an unquoted separator).
    """
    rows, long_line = [], None
    # The csv module's 128 KiB field limit is not pandas' (which the trainers read with):
    # a long text is no reason to refuse a file.
    csv.field_size_limit(2**31 - 1)
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's
    # name, as pandas reads it.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in itertools.islice(reader, limit):
            if None in row and long_line is None:  # DictReader keeps the extra fields there
                long_line = reader.line_num
            rows.append(row)
        header = reader.fieldnames or []
    if len(header) > 1 and long_line is None:
        return rows
    found = _sniff_separator(path)
    if found is not None and found != delimiter:
        raise ValueError(
            f"its columns are separated by {found!r}, not {delimiter!r}; save it "
            "comma-separated (.csv) or tab-separated (.tsv)"
        )
    if long_line is not None:
        raise ValueError(
            f"line {long_line} has more fields than the header; quote the texts that "
            f"hold {delimiter!r}"
        )
    return rows  # one column: the column checks say what is missing


def _sniff_separator(path: Path) -> str | None:
    """The separator ``csv.Sniffer`` finds in the first lines of ``path``, or None."""
    with path.open(encoding="utf-8", newline="") as f:
        head = "".join(itertools.islice(f, 20))
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        return None


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
    for given, flag in ((text, "--text-column"), (label, "--label-column")):
        if given not in columns:
            raise ValueError(f"no column {given!r} (columns: {', '.join(columns)}); use {flag}")
    if text == label:
        raise ValueError(f"text and label are both {text!r}; name them with --text-column")
    counts = Counter(str(row.get(label)) for row in rows if row.get(label) not in (None, ""))
    if len(counts) < 2:
        raise ValueError(f"column {label!r} holds {len(counts)} class; a classifier needs two")
    draft = _sized_draft(path, rows, text, label, counts)
    if model:
        draft.args["model"] = model
    return draft


def _sized_draft(
    path: Path, rows: list[dict[str, Any]], text: str, label: str, counts: Counter[str]
) -> Draft:
    n = len(rows)
    held_out = 0.1 if n >= 5_000 else 0.2
    n_train = int(n * (1 - 2 * held_out))
    words = sorted(len(str(row.get(text) or "").split()) for row in rows)
    p95 = words[min(len(words) - 1, int(0.95 * len(words)))]
    # Subword tokens run about 1.3 per word; a power of two from 32 to 512 covers 95%.
    max_seq_length = min(512, max(32, 2 ** math.ceil(math.log2(max(1, p95 * 1.3 + 2)))))
    balance = min(counts.values()) / max(counts.values())
    metric = "eval_accuracy" if balance >= 0.5 else "eval_f1"
    n_trials = 8 if n_train <= 1_000 else 16 if n_train <= SEARCH_SAMPLE else 24
    dataset: dict[str, Any] = {
        "path": str(path),
        "text_column": text,
        "label_column": label,
        "validation_fraction": held_out,
        "test_fraction": held_out,
    }
    findings = [
        f"{n} rows; text in `{text}` (95% have <= {p95} words), label in `{label}`: "
        f"{len(counts)} classes ({', '.join(f'{k}: {v}' for k, v in counts.most_common(6))}"
        f"{', ...' if len(counts) > 6 else ''})",
        f"objective {metric}: "
        + (
            "the classes are balanced"
            if metric == "eval_accuracy"
            else f"the classes are imbalanced (smallest/largest = {balance:.2f}); macro F1 "
            "weighs every class"
        ),
        f"max_seq_length {max_seq_length}: covers 95% of the texts",
        f"{n_trials} trials for {n_train} training examples, Hyperband stops weak ones early",
    ]
    if n_train > SEARCH_SAMPLE:
        dataset["max_train_samples"] = SEARCH_SAMPLE
        findings.append(
            f"each trial trains on {SEARCH_SAMPLE} of the {n_train} training examples: "
            "remove max_train_samples to fine-tune the winner on all of them"
        )
    rare = [k for k, v in counts.items() if v < 10]
    if rare:
        findings.append(
            f"classes with under 10 examples ({', '.join(rare[:5])}) make noisy "
            "validation scores; merge or label more"
        )
    batch_sizes = [8, 16] if n_train < 500 else [8, 16, 32]
    return Draft(
        args={"model": "minilm-l6", "dataset": dataset, "max_seq_length": max_seq_length},
        search_space={
            "learning_rate": {"type": "float", "low": 1.0e-5, "high": 5.0e-4, "log": True},
            "per_device_train_batch_size": {"type": "categorical", "choices": batch_sizes},
            "num_train_epochs": {"type": "int", "low": 1, "high": 3},
            "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        budget={"n_trials": n_trials, "timeout": "2h", "max_failures": 3},
        objective={"metric": metric, "direction": "maximize"},
        sampler={"type": "tpe", "multivariate": True, "n_startup_trials": max(4, n_trials // 4)},
        pruner={"type": "hyperband", "min_resource": 1, "max_resource": 3, "reduction_factor": 3},
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


def detect_label_column(rows: list[dict[str, Any]], columns: list[str], exclude: str) -> str:
    """The label column: a usual name, else the column with the fewest distinct values."""
    named = [c for c in columns if c.lower() in LABEL_NAMES and c != exclude]
    if named:
        return named[0]
    distinct = {c: len({str(r.get(c)) for r in rows}) for c in columns if c != exclude}
    fitting = [c for c, k in distinct.items() if 2 <= k <= min(100, len(rows) // 2)]
    if not fitting:
        raise ValueError(f"no label column among {', '.join(columns)}; use --label-column")
    return min(fitting, key=lambda c: distinct[c])  # the fewest distinct values
