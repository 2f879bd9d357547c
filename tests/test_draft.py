"""hpo init: a study file drafted from the user's data that validates as written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
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
    result = init(tmp_path, data, "--storage", "sqlite:///mine.db", "--model", "minilm-l3")
    assert result.returncode == 0, result.stderr
    study = yaml.safe_load((tmp_path / "study.yaml").read_text())
    assert study["trainer"]["args"]["model"] == "minilm-l3"
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


def test_init_on_a_semicolon_separated_csv_is_one_line_exit_2(tmp_path: Path) -> None:
    """The text trainer reads commas (.csv) and tabs (.tsv): another separator says so."""
    data = tmp_path / "data.csv"
    rows = [f"{i};Good, really {i};positive" for i in range(10)]
    rows += [f"{i};Bad, sadly {i};negative" for i in range(10, 20)]
    data.write_text("id;review_body;sentiment\n" + "\n".join(rows) + "\n")
    (tmp_path / "plain.csv").write_text(data.read_text().replace(",", ""))  # one column
    for name in ("data.csv", "plain.csv"):
        result = init(tmp_path, tmp_path / name)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            f"hpo: error: {tmp_path / name}: its columns are separated by ';', not ','; save "
            "it comma-separated (.csv) or tab-separated (.tsv)"
        )
        assert not (tmp_path / "study.yaml").exists()
    # Commas, but a text holding an unquoted one: the line says where.
    (tmp_path / "loose.csv").write_text("text,label\nfine,positive\nGood, really,positive\n")
    result = init(tmp_path, tmp_path / "loose.csv")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "loose.csv: line 3 has more fields than the header; quote the texts that hold ','"
    )


# --- image folders -----------------------------------------------------------------------


def draw_shapes(folder: Path, counts: dict[str, int]) -> Path:
    """Small drawn images, one sub-folder per class; sizes and colour modes vary."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    for label, n in counts.items():
        (folder / label).mkdir(parents=True)
        for i in range(n):
            size = (16, 16) if i % 4 else (24, 20)
            image = Image.new("RGB", size, (rng.randint(0, 60),) * 3)
            draw = ImageDraw.Draw(image)
            at = rng.randint(2, 10)
            box = {"wide": (0, at, 16, at + 3), "tall": (at, 0, at + 3, 16)}.get(label)
            if box is None:
                draw.ellipse((at - 2, at - 2, at + 5, at + 5), fill=(255, 255, 255))
            else:
                draw.rectangle(box, fill=(255, rng.randint(150, 255), 200))
            (image.convert("L") if i % 5 == 0 else image).save(folder / label / f"{i:02d}.png")
    return folder


def test_init_on_an_image_folder_writes_an_image_study_that_runs(tmp_path: Path) -> None:
    from tests.test_image_classification import tiny_resnet

    draw_shapes(tmp_path / "data" / "shapes", {"wide": 12, "tall": 12, "dot": 5})
    tiny_resnet(tmp_path / "models" / "tiny")
    result = init(tmp_path, tmp_path / "data" / "shapes", "--model", "models/tiny")
    assert result.returncode == 0, result.stderr
    assert "29 images in 3 classes (tall: 12, wide: 12, dot: 5)" in result.stdout
    text = (tmp_path / "study.yaml").read_text()
    assert "16x16" in text and "24x20" in text and "L" in text  # sizes and modes sampled
    study = yaml.safe_load(text)
    trainer = study["trainer"]
    assert trainer["ref"] == "hpo.trainers.image_classification:train"
    assert trainer["args"]["model"] == "./models/tiny"
    assert trainer["args"]["dataset"]["path"] == "data/shapes"
    assert trainer["args"]["class_weights"] == "balanced"  # dot: 5 of 12
    assert study["objective"]["metric"] == "eval_f1"
    space = study["search_space"]
    assert {"learning_rate", "num_train_epochs", "augment_strength", "optim"} <= set(space)
    assert space["freeze_layers"] == {"type": "int", "low": 0, "high": 1}  # 3 stages
    assert study["pruner"]["max_resource"] == space["num_train_epochs"]["high"]
    validate = run_hpo("validate", "study.yaml", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr
    run = run_hpo("run", "study.yaml", "--set", "budget.n_trials=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    import optuna

    stored = optuna.load_study(study_name="shapes", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    states = [t.state.name for t in stored.trials]
    assert len(states) == 2 and "COMPLETE" in states and set(states) <= {"COMPLETE", "PRUNED"}


def test_image_draft_without_a_model_names_a_hub_resnet_and_says_what_to_change(
    tmp_path: Path,
) -> None:
    from hpo.trainers import image_classification as ic

    folder = draw_shapes(tmp_path / "shapes", {"wide": 6, "tall": 6})
    draft = ic.TRAINER.draft_study(folder)
    assert draft.args["model"] == "microsoft/resnet-18"
    assert "internet" in draft.notes["model"] and "local model folder" in draft.notes["model"]
    assert draft.search_space["freeze_layers"]["high"] == 2  # ResNet-18: 4 stages
    assert "class_weights" not in draft.args and draft.objective["metric"] == "eval_accuracy"
    result = init(tmp_path, folder)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "study.yaml").read_text()
    assert "model: microsoft/resnet-18  # " in text
    assert run_hpo("validate", "study.yaml", cwd=tmp_path).returncode == 0


def test_init_recognises_image_folders_and_image_tables_else_text(tmp_path: Path) -> None:
    from hpo.cli import drafting_trainer

    images = draw_shapes(tmp_path / "shapes", {"wide": 6, "tall": 6})
    table = tmp_path / "shapes.jsonl"
    table.write_text(
        "".join(
            json.dumps({"file": f"shapes/{p.parent.name}/{p.name}", "kind": p.parent.name}) + "\n"
            for p in sorted(images.rglob("*.png"))
        )
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    image = "hpo.trainers.image_classification:train"
    text = "hpo.trainers.text_classification:train"
    assert drafting_trainer(images) == image
    assert drafting_trainer(table) == image
    assert drafting_trainer(empty) == image  # a folder: the image draft says what is wrong
    assert drafting_trainer(STUDIES / "data" / "reviews.csv") == text
    from hpo.trainers import image_classification as ic

    draft = ic.TRAINER.draft_study(table)
    dataset = draft.args["dataset"]
    assert (dataset["image_column"], dataset["label_column"]) == ("file", "kind")
    assert draft.findings[0].startswith("12 images in 2 classes")


def _flat(folder: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")


def _one_class(folder: Path) -> None:
    draw_shapes(folder, {"wide": 6})


def _not_images(folder: Path) -> None:
    for label in ("a", "b"):
        (folder / label).mkdir()
        (folder / label / "notes.txt").write_text("hello\n")


def _too_few(folder: Path) -> None:
    draw_shapes(folder, {"wide": 6, "tall": 2})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "the folder is empty; put each class's images in a sub-folder"),
        (_flat, "images but no class sub-folders; move each class's images into a sub-folder"),
        (_one_class, "images of one class only (wide); a classifier needs two or more"),
        (_not_images, "no images (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff) in its"),
        (_too_few, "sub-folder tall holds 2 images; each class needs 5 or more"),
    ],
)
def test_init_on_a_bad_image_folder_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, make, message: str
) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    make(folder)
    result = init(tmp_path, folder)
    assert result.returncode == 2
    assert result.stderr.startswith(f"hpo: error: {folder}: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "study.yaml").exists()


def test_init_refuses_flags_of_the_other_family_and_missing_data(tmp_path: Path) -> None:
    folder = draw_shapes(tmp_path / "shapes", {"wide": 6, "tall": 6})
    result = init(tmp_path, folder, "--text-column", "body")
    assert result.returncode == 2
    assert result.stderr == (
        "hpo: error: --text-column does not apply to hpo.trainers.image_classification:train "
        "drafts; leave it out\n"
    )
    result = init(tmp_path, tmp_path / "nowhere")
    assert result.returncode == 2 and "nowhere does not exist; give a table" in result.stderr
    assert not (tmp_path / "study.yaml").exists()


def test_column_check_reads_what_the_trainers_read(tmp_path: Path) -> None:
    """A byte-order mark (Excel's "CSV UTF-8") and a text longer than the csv module's
    default field limit are fine for the trainers (pandas), so the check accepts them."""
    from hpo.trainers.drafts import check_columns

    table = tmp_path / "excel.csv"
    long_text = "word " * 40_000  # 200 KB in one cell
    table.write_bytes(f'\ufefftext,label\n"{long_text}",pos\nshort,neg\n'.encode())
    assert check_columns(table, {"text_column": "text", "label_column": "label"}) is None
    assert check_columns(table, {"text_column": "txt"}) == (
        "dataset.text_column",
        "excel.csv has no column 'txt'; did you mean 'text'? its columns: text, label",
    )


@pytest.mark.parametrize(
    ("stem", "name"), [("reviews v2", "reviews-v2"), (".hidden", "hidden"), ("..", "study")]
)
def test_a_drafted_name_is_one_folder_name(stem: str, name: str) -> None:
    from hpo.config import check_folder_name
    from hpo.draft import study_name

    assert check_folder_name(study_name(stem)) == name


def test_init_example_writes_the_quickstart_and_its_data_where_asked(
    run_cli, tmp_path: Path
) -> None:
    """For an install without the repository's studies/ (tests/test_package.py runs it from
    a wheel): the quickstart study and its data, in the folder named, validating there."""
    result = run_cli("init", "--example", "first/qs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run it with `hpo run first/qs/quickstart.yaml`" in result.stdout
    for name in ("quickstart.yaml", "data/reviews.csv"):
        assert (tmp_path / "first/qs" / name).read_bytes() == (STUDIES / name).read_bytes()
    assert run_cli("validate", "first/qs/quickstart.yaml", cwd=tmp_path).returncode == 0

    (tmp_path / "first/qs/quickstart.yaml").write_text("mine")
    again = run_cli("init", "--example", "first/qs", cwd=tmp_path)
    assert again.returncode == 2
    assert "first/qs/quickstart.yaml exists; choose another folder or pass --force" in again.stderr
    assert (tmp_path / "first/qs/quickstart.yaml").read_text() == "mine"  # nothing replaced
    assert run_cli("init", "--example", "first/qs", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "first/qs/quickstart.yaml").read_bytes() != b"mine"


@pytest.mark.parametrize(
    ("extra", "refused"), [(["data.csv"], "DATA"), (["--model", "m"], "--model")]
)
def test_init_example_refuses_what_only_a_draft_takes(
    run_cli, tmp_path: Path, extra: list[str], refused: str
) -> None:
    result = run_cli("init", "--example", "qs", *extra, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.endswith(f"--example writes the quickstart as it is; drop {refused}\n")
    assert not (tmp_path / "qs").exists()
