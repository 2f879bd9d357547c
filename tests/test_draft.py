"""hpo init: a study file drafted from the user's data that validates as written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tests.conftest import STUDIES, run_hpo


def init(tmp_path: Path, data: Path, *extra: str):
    return run_hpo("init", str(data), "-o", "study.yaml", *extra, cwd=tmp_path)


def test_init_on_the_shipped_reviews_validates_unchanged(tmp_path: Path) -> None:
    result = init(tmp_path, STUDIES / "data" / "reviews.csv")
    assert result.returncode == 0, result.stderr
    assert "2 classes (positive: 600, negative: 600)" in result.stdout
    text = (tmp_path / "study.yaml").read_text()
    assert text.startswith("# Drafted by `hpo init")  # commented
    study = yaml.safe_load(text)
    dataset = study["trainer"]["args"]["dataset"]
    assert (dataset["text_column"], dataset["label_column"]) == ("text", "label")
    assert study["objective"]["metric"] == "eval_accuracy" and study["budget"]["n_trials"] == 8
    assert study["storage"] == "sqlite:///hpo.db"
    validate = run_hpo("validate", "study.yaml", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr
    assert "ok — study 'reviews'" in validate.stdout


def test_init_detects_other_column_names_and_imbalance(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = ["id,review,sentiment"] + [
        f'{i},"{" ".join(rng.choice(["good", "bad", "fine", "slow"]) for _ in range(12))}",'
        f"{'pos' if i % 10 else 'neg'}"
        for i in range(300)
    ]
    data = tmp_path / "data" / "mine.csv"
    data.parent.mkdir()
    data.write_text("\n".join(rows) + "\n")
    result = init(tmp_path, data, "--storage", "sqlite:///mine.db")
    assert result.returncode == 0, result.stderr
    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    dataset = study["trainer"]["args"]["dataset"]
    assert (dataset["path"], dataset["text_column"], dataset["label_column"]) == (
        "data/mine.csv",
        "review",
        "sentiment",
    )
    assert study["objective"]["metric"] == "eval_f1"  # 270 pos / 30 neg
    assert study["storage"] == "sqlite:///mine.db"
    assert study["search_space"]["per_device_train_batch_size"]["choices"] == [8, 16]
    assert run_hpo("validate", "study.yaml", cwd=tmp_path).returncode == 0


def test_init_on_a_large_jsonl_searches_on_a_sample(tmp_path: Path) -> None:
    data = tmp_path / "intents.jsonl"
    intents = ["book", "cancel", "weather", "music", "alarm"]
    data.write_text(
        "".join(
            json.dumps(
                {"utterance": f"please do thing number {i} for me now", "intent": intents[i % 5]}
            )
            + "\n"
            for i in range(8000)
        )
    )
    result = init(tmp_path, data)
    assert result.returncode == 0, result.stderr
    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    dataset = study["trainer"]["args"]["dataset"]
    assert (dataset["text_column"], dataset["label_column"]) == ("utterance", "intent")
    assert dataset["max_train_samples"] == 4000 and dataset["validation_fraction"] == 0.1
    assert study["budget"]["n_trials"] == 24
    assert run_hpo("validate", "study.yaml", cwd=tmp_path).returncode == 0


def test_init_bad_input_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    data = STUDIES / "data" / "reviews.csv"
    result = init(tmp_path, data, "--text-column", "body")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"hpo: error: {data}: no column 'body' (columns: text, label); use --text-column"
    )
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "study.yaml").write_text("mine\n")
    result = init(tmp_path, data)
    assert result.returncode == 2 and "study.yaml exists" in result.stderr
    assert (tmp_path / "study.yaml").read_text() == "mine\n"
