"""The label checks made before any trial, held against the trainers' real splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.trainers import labels
from hpo.trainers.dataset import split_indices

FRACTIONS = [(0.2, 0.2), (0.1, 0.1), (0.3, 0.0), (0.2, 0.5), (0.15, 0.25)]


def splits(counts: dict[str, int], validation: float, test: float, seed: int) -> None:
    """Split labels of ``counts`` as both trainers do (the shared rule); raises what a
    trial would."""
    index = {name: i for i, name in enumerate(counts)}
    split_indices(
        [index[name] for name, n in counts.items() for _ in range(n)], validation, test, seed
    )


@pytest.mark.parametrize(("validation", "test"), FRACTIONS)
@pytest.mark.parametrize("n_rows", [40, 101, 1000])
def test_a_class_of_the_minimum_size_survives_the_real_split(
    validation: float, test: float, n_rows: int
) -> None:
    """Whatever the seed breaks ties with, classes of min_per_class rows (the smallest
    class, or several of them) are taken by the split both trainers make."""
    need = labels.min_per_class(n_rows, validation, test)
    for small in (1, 3):
        counts = {f"rare{i}": need for i in range(small)}
        counts["common"] = n_rows - need * small
        assert labels.check_classes(counts, validation, test) is None
        for seed in range(5):
            splits(counts, validation, test, seed)


def test_the_minimum_grows_with_the_test_split() -> None:
    assert [labels.min_per_class(1000, 0.2, t) for t in (0.0, 0.2, 0.5, 0.6)] == [2, 3, 4, 5]


def test_classes_below_the_minimum_fail_the_real_split_and_are_refused() -> None:
    """Two classes of 2 rows beside 96: the test split leaves one of them a single row
    (ties broken at random, but one always loses), so the validation split fails."""
    counts = {"a": 2, "b": 2, "c": 96}
    for seed in range(3):
        with pytest.raises(ValueError, match="least populated class"):
            splits(counts, 0.2, 0.2, seed)
    why, small = labels.check_classes(counts, 0.2, 0.2) or ("", [])
    assert small == ["a", "b"] and why.startswith("each class needs 3 or more")


def test_a_split_with_fewer_rows_than_classes_is_refused() -> None:
    """Ten classes of 3 rows: the test split would hold 6 rows, fewer than the classes."""
    counts = {str(i): 3 for i in range(10)}
    with pytest.raises(ValueError, match="greater or equal to the number of classes"):
        splits(counts, 0.2, 0.2, 0)
    why, small = labels.check_classes(counts, 0.2, 0.2) or ("", [])
    assert small == [] and "its test split would hold 6, fewer than the classes" in why


@pytest.mark.parametrize(
    ("suffix", "where"),
    [(".csv", "lines 4, 6"), (".tsv", "lines 4, 6"), (".jsonl", "lines 2, 4"),
     (".json", "1-based rows 2, 4"), (".parquet", "1-based rows 2, 4")],
)  # fmt: skip
def test_empty_labels_are_named_by_line_or_row(tmp_path: Path, suffix: str, where: str) -> None:
    """Every format the trainers read; a CSV's quoted text over two lines counts as two."""
    import pandas as pd

    frame = pd.DataFrame(
        {"text": ["a\nb", "c", "d", "e", "f", "g"], "label": ["x", None, "y", " ", "x", "y"]}
    )
    path = tmp_path / f"data{suffix}"
    write = {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".tsv": lambda: frame.to_csv(path, index=False, sep="\t"),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".json": lambda: frame.to_json(path, orient="records"),
        ".parquet": lambda: frame.to_parquet(path),
    }
    write[suffix]()
    assert labels.check_label_column(path, "label", 0.2, 0.2) == (
        "dataset.label_column",
        f"data{suffix}: 'label' is empty or NaN on {where}; give every row a label or "
        "remove those rows"
        + (
            " (in a CSV, NA, N/A, null and None are NaN too)" if suffix in (".csv", ".tsv") else ""
        ),
    )
