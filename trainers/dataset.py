"""The labelled data set a shipped trainer reads: its arguments and its one split rule.

Both classification trainers take the same dataset arguments (a local path or a hub data
set, the label column, the held-out fractions, a training sample) and split a data set
without splits the same way: a stratified test split, then a stratified validation split
of the rest, both made by scikit-learn's ``train_test_split`` with the study seed, in the
sizes :func:`split_sizes` counts (the label checks in :mod:`trainers.labels` count with it
too); ``max_train_samples`` draws the training sample with the same seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SplitDatasetArgs(BaseModel):
    """Where the examples come from and how much of them validates and tests.

    A trainer subclasses it (or :class:`LabelledDatasetArgs`) with its own columns and
    what ``path`` may name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What `path` names and `hub` is, in the error for giving both or neither.
    SOURCES: ClassVar[str] = "`path` (a local file) or `hub` (a data set name)"

    path: str | None = None
    hub: str | None = Field(None, description="a hub data set name (needs internet)")
    hub_config: str | None = None
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    max_train_samples: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> SplitDatasetArgs:
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"give exactly one of {self.SOURCES}")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave data to train on")
        return self


class LabelledDatasetArgs(SplitDatasetArgs):
    """Where the labelled examples come from, their label column, and how they split."""

    label_column: str = "label"


# The tables the text trainers read: a file's suffix -> the `datasets` builder that loads it.
DATA_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


def missing_table(path: Path) -> tuple[str, str] | None:
    """``("dataset.path", why)`` when ``path`` is no file or not a table the text trainers
    read (:data:`DATA_FORMATS`)."""
    if problem := missing_path(path):
        return problem
    if path.suffix.lower() not in DATA_FORMATS:
        return (
            "dataset.path",
            f"{path.suffix} files are not supported; use {', '.join(sorted(DATA_FORMATS))}",
        )
    return None


def missing_path(path: Path, *, folder: bool = False) -> tuple[str, str] | None:
    """``("dataset.path", why)`` when ``path`` is no file (nor folder, where ``folder``)."""
    if path.is_file() or (folder and path.is_dir()):
        return None
    return (
        "dataset.path",
        f"{path} does not exist; relative paths start at the study file's folder",
    )


def split_sizes(n_rows: int, validation_fraction: float, test_fraction: float) -> dict[str, int]:
    """The rows of each split, counted as scikit-learn counts a fractional ``test_size``."""
    test = math.ceil(test_fraction * n_rows) if test_fraction > 0 else 0
    pool = n_rows - test
    validation = math.ceil(validation_fraction / (1 - test_fraction) * pool)
    return {"train": pool - validation, "validation": validation, "test": test}


def split(
    labels: Sequence[int],
    spec: SplitDatasetArgs,
    seed: int,
    splits: Collection[str] = ("train",),
) -> dict[str, list[int]]:
    """Indices into a data set's ``train`` split for each split made from it.

    ``labels`` are the ``train`` split's (one label for all: a split by rows alone, as a
    language model's text is); ``splits`` names the splits the data set has.
    A validation or test split of its own is kept (absent from the result): with both,
    only the training sample is drawn; with a test split only, validation comes from
    ``train`` (the test fraction is then 0). Every other data set is split in three.
    """
    if {"validation", "test"} <= set(splits):
        parts = {"train": list(range(len(labels)))}
    else:
        test_fraction = 0.0 if "test" in splits else spec.test_fraction
        parts = split_indices(labels, spec.validation_fraction, test_fraction, seed)
        if "test" in splits:
            del parts["test"]
    parts["train"] = sample_train(parts["train"], spec.max_train_samples, seed)
    return parts


def split_indices(
    labels: Sequence[int], validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Train / validation / test indices into ``labels``: stratified by label and seeded.

    ``test_fraction`` 0 makes no test split (its list is empty).

    Raises:
        ValueError: a class too small for a split, or a split with fewer rows than classes
            (scikit-learn's messages; :func:`trainers.labels.check_classes` finds both first).
    """
    from sklearn.model_selection import train_test_split

    sizes = split_sizes(len(labels), validation_fraction, test_fraction)
    pool, pool_labels, test = list(range(len(labels))), list(labels), []
    if sizes["test"]:
        pool, test, pool_labels, _ = train_test_split(
            pool, pool_labels, test_size=sizes["test"], random_state=seed, stratify=pool_labels
        )
    train, validation = train_test_split(
        pool, test_size=sizes["validation"], random_state=seed, stratify=pool_labels
    )
    return {"train": list(train), "validation": list(validation), "test": list(test)}


def sample_train(train: Sequence[int], max_train_samples: int | None, seed: int) -> list[int]:
    """The training examples a trial uses: ``max_train_samples`` of them, drawn with the seed."""
    if not max_train_samples:
        return list(train)
    return random.Random(seed).sample(list(train), min(max_train_samples, len(train)))
