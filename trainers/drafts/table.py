"""A user's table as ``hpo init`` and the trainers' file checks read it.

The first rows of a CSV, TSV, JSON lines, JSON or Parquet file, its columns checked
against the ones a study names, and the label column found by name or by its values.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
from pathlib import Path
from typing import Any

LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y")
MAX_ROWS = 200_000  # enough to count classes; a bigger file is sampled from its start


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


def require_columns(columns: list[str], given: dict[str, str]) -> None:
    """Refuse a column (``{flag: column}``) the table lacks, naming the flag that sets it.

    Raises:
        ValueError: the first such column, with the table's columns.
    """
    for flag, column in given.items():
        if column not in columns:
            raise ValueError(f"no column {column!r} (columns: {', '.join(columns)}); use {flag}")
