"""The label checks ``hpo validate`` and ``hpo run`` make before any trial.

A data set without splits is split by both shipped trainers with one rule
(:func:`trainers.dataset.split_indices`): a stratified test split, then a stratified
validation split of the rest, each scikit-learn's ``train_test_split`` in the sizes
:func:`trainers.dataset.split_sizes` counts. Each split refuses a class of fewer than 2
rows and a split with fewer rows than classes, and an empty or NaN label is a class of
its own. Found by a trial, each of these failed every trial until the failure budget ran
out; here they are found by reading the label column (one column of the whole table).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.trainers.dataset import split_sizes

SHOWN = 5  # rows or classes named in a message; the rest are counted


@dataclass
class Column:
    """One column of a table, every row, and how a user counts its rows."""

    values: list[Any]
    unit: str  # "line" (CSV, TSV, JSON lines: the file's lines) or "1-based row" (the rest)
    numbers: Callable[[list[int]], list[int]]  # row indices -> the numbers a user sees


def read_column(path: Path, column: str) -> Column:
    """Every value of ``column`` in a CSV, TSV, JSON lines, JSON (a list) or Parquet table.

    Values read as the trainers read them: a CSV's empty, ``NA`` or ``NaN`` cell is None
    (pandas' defaults, which ``datasets`` keeps), other cells are the text as written.

    Raises:
        ValueError: the file cannot be read (not UTF-8, a broken row, ...).
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        import pandas as pd

        delimiter = "\t" if suffix == ".tsv" else ","
        # dtype=str: labels as the user wrote them (a column with an empty cell would read
        # 1 as 1.0); pandas still turns its NA spellings into NaN.
        cells = pd.read_csv(path, sep=delimiter, usecols=[column], dtype=str)[column]
        values = cells.astype(object).where(cells.notna(), None).tolist()
        return Column(values, "line", lambda rows: _csv_lines(path, delimiter, rows))
    if suffix == ".jsonl":
        values, lines = [], []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    row = json.loads(line)
                    values.append(row.get(column) if isinstance(row, dict) else None)
                    lines.append(number)
        return Column(values, "line", lambda rows: [lines[i] for i in rows])
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with datasets

        values = pq.read_table(path, columns=[column]).column(0).to_pylist()
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        values = [row.get(column) for row in data if isinstance(row, dict)]
    return Column(values, "1-based row", lambda rows: [i + 1 for i in rows])


def _csv_lines(path: Path, delimiter: str, rows: list[int]) -> list[int]:
    """The file line on which each data row (0-based, the header not counted) starts.

    A quoted text may span lines, so the csv module walks the file up to the last row
    wanted; blank lines are no rows, as pandas reads them.
    """
    wanted, starts = set(rows), {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        next(reader, None)
        start, index = reader.line_num + 1, 0
        for record in reader:
            if record:
                if index in wanted:
                    starts[index] = start
                index += 1
                if index > max(wanted):
                    break
            start = reader.line_num + 1
    return [starts.get(i, i + 2) for i in rows]


def is_empty(value: Any) -> bool:
    """None, NaN, or a text of only spaces: no label."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def min_per_class(n_rows: int, validation_fraction: float, test_fraction: float) -> int:
    """The fewest rows a class needs so that both stratified splits take it, whatever the
    seed.

    Each split needs 2 rows of every class. The test split leaves a class
    ``floor(rows * kept / n_rows)`` or one more (ties between classes are broken at
    random), so the validation split is sure of 2 only from ``2 * n_rows / kept`` rows.
    """
    if test_fraction == 0:
        return 2
    kept = n_rows - split_sizes(n_rows, validation_fraction, test_fraction)["test"]
    return max(2, -(-2 * n_rows // max(kept, 1)))


def check_classes(
    counts: dict[str, int], validation_fraction: float, test_fraction: float, noun: str = "rows"
) -> tuple[str, list[str]] | None:
    """Why these class sizes cannot be split, and the classes to blame (user's names).

    Returns ``(why, classes)``: with no classes to blame, ``why`` completes a sentence
    about the data ("holds one class ..."), else it says what each class needs; None when
    the splits will take every class. ``noun`` is what the data holds (rows, images).
    """
    if not counts:
        return f"holds no {noun}", []
    if len(counts) < 2:
        return f"holds one class ({', '.join(map(repr, counts))}); a classifier needs two", []
    n_rows = sum(counts.values())
    sizes = split_sizes(n_rows, validation_fraction, test_fraction)
    for split in ("test", "validation", "train"):  # the order the splits are made in
        size = sizes[split]
        if (split != "test" or test_fraction > 0) and size < len(counts):
            fix = {"train": "lower the fractions", "validation": "raise validation_fraction",
                   "test": "raise test_fraction"}[split]  # fmt: skip
            return (
                f"has {n_rows} {noun} in {len(counts)} classes: its {split} split would hold "
                f"{size}, fewer than the classes (a stratified split takes one of each); "
                f"add {noun} or {fix}",
                [],
            )
    need = min_per_class(n_rows, validation_fraction, test_fraction)
    small = sorted((c for c, n in counts.items() if n < need), key=lambda c: (counts[c], c))
    if not small:
        return None
    return (
        f"each class needs {need} or more for the stratified splits (validation_fraction "
        f"{validation_fraction}, test_fraction {test_fraction}): add {noun} to "
        f"{'it' if len(small) == 1 else 'them'} or remove {'it' if len(small) == 1 else 'them'}",
        small,
    )


def check_label_column(
    path: Path, column: str, validation_fraction: float, test_fraction: float
) -> tuple[str, str] | None:
    """A trainer's ``check_files`` step: ``("dataset.label_column", why)`` when the label
    column has empty labels or classes the splits cannot take; None when it is fine."""
    try:
        labels = read_column(path, column)
    except (ValueError, OSError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
        return "dataset.path", f"{path.name}: {e}"
    field = "dataset.label_column"
    try:
        tally = Counter(labels.values)  # counted in C: a million rows in a fraction of a second
    except TypeError:  # a list or a mapping is no label
        return field, f"{path.name}: {column!r} holds lists or objects; give one label a row"
    empty = {value for value in tally if is_empty(value)}
    if empty:
        rows = (i for i, value in enumerate(labels.values) if value in empty)
        # The trainers read a CSV with pandas, which takes these texts for a missing value.
        is_csv = path.suffix.lower() in (".csv", ".tsv")
        csv_na = " (in a CSV, NA, N/A, null and None are NaN too)" if is_csv else ""
        where = count(list(itertools.islice(rows, SHOWN)), sum(tally[v] for v in empty), labels)
        return field, (
            f"{path.name}: {column!r} is empty or NaN on {where}; give every row a label or "
            f"remove those rows{csv_na}"
        )
    counts: Counter[str] = Counter()
    for value, n in tally.items():
        counts[str(value)] += n
    problem = check_classes(dict(counts), validation_fraction, test_fraction)
    if problem is None:
        return None
    why, small = problem
    if not small:
        return field, f"{path.name}: {column!r} {why}"
    named = "; ".join(
        f"{c!r} has {plural(counts[c], 'row')} ({count(rows, counts[c], labels)})"
        for c, rows in _rows_of(labels, small[:SHOWN]).items()
    )
    more = f"; {len(small) - SHOWN} more classes too" if len(small) > SHOWN else ""
    return field, f"{path.name}: too few rows of a class in {column!r}: {named}{more}; {why}"


def _rows_of(labels: Column, classes: list[str]) -> dict[str, list[int]]:
    """The first rows of each class (in ``classes``' order); one pass over the column."""
    rows: dict[str, list[int]] = {c: [] for c in classes}
    # A class is the text of a value (1 and "1" are one class): look the values up as read.
    values = {value: rows[str(value)] for value in set(labels.values) if str(value) in rows}
    for i, value in enumerate(labels.values):
        if (found := values.get(value)) is not None and len(found) < SHOWN:
            found.append(i)
    return rows


def count(first: list[int], total: int, column: Column) -> str:
    """``line 7`` or ``lines 3, 8, 12 and 4 more``: the first rows as a user counts them."""
    shown = column.numbers(first[:SHOWN])
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    unit = column.unit + ("s" if total > 1 else "")
    return f"{unit} {', '.join(map(str, shown))}{more}"


def plural(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
