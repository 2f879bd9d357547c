"""The image trainer: image folders and tables, splits, augmentation, freezing, a study.

Real images (bars drawn with Pillow; scikit-learn's digit scans), a tiny ResNet saved to
a local folder with its image processor, the real HF Trainer and real SQLite.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from hpo.config import load_study
from hpo.runner import run_study
from hpo.trainer import TrialContext
from hpo.trainers import image_classification as ic
from tests.conftest import run_hpo

SIZE = 16


def tiny_resnet(folder: Path, num_labels: int = 3) -> Path:
    """A 3-stage ResNet (a few thousand parameters) with a 16x16 image processor."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 8, 16],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=num_labels,
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def resnet(tmp_path_factory) -> Path:
    return tiny_resnet(tmp_path_factory.mktemp("tiny-resnet"))


@pytest.fixture(scope="session")
def bars(tmp_path_factory) -> Path:
    """40 drawn 16x16 images in two classes: horizontal and vertical bars."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("bars")
    rng = random.Random(0)
    for label in ("horizontal", "vertical"):
        (folder / label).mkdir()
        for i in range(20):
            image = Image.new("RGB", (SIZE, SIZE), (rng.randint(0, 60),) * 3)
            draw = ImageDraw.Draw(image)
            at = rng.randint(2, SIZE - 4)
            box = (0, at, SIZE, at + 2) if label == "horizontal" else (at, 0, at + 2, SIZE)
            draw.rectangle(box, fill=(255, rng.randint(150, 255), 200))
            image.save(folder / label / f"{i:02d}.png")
    return folder


def context(tmp_path: Path, **params) -> TrialContext:
    study = optuna.create_study(direction="maximize")
    return TrialContext(
        trial=study.ask(),
        params=params,
        objective="eval_accuracy",
        seed=0,
        output_dir=tmp_path / "trial",
        study_dir=tmp_path,
    )


def spec(model: Path, data: Path, **extra) -> ic.ImageClassificationArgs:
    return ic.ImageClassificationArgs.model_validate(
        {"model": str(model), "dataset": {"path": str(data)}, **extra}
    )


def test_folder_is_split_stratified_seeded_and_cached(tmp_path: Path, bars: Path) -> None:
    ctx = context(tmp_path)
    images = ic.load_images(spec(Path("m"), bars).dataset, ctx)
    assert images.label_names == ["horizontal", "vertical"]
    sizes = {k: len(v[1]) for k, v in images.splits.items()}
    assert sizes == {"train": 24, "validation": 8, "test": 8}
    assert sorted(images.splits["validation"][1]) == [0] * 4 + [1] * 4  # stratified
    assert ic.load_images(spec(Path("m"), bars).dataset, ctx) is images  # cached
    assert images.names["validation"][0].endswith(".png")


def test_table_with_relative_paths_loads_like_the_folder(tmp_path: Path, bars: Path) -> None:
    rows = [
        {"file": f"{p.parent.name}/{p.name}", "kind": p.parent.name}
        for p in sorted(bars.rglob("*.png"))
    ]
    table = bars / "index.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = context(tmp_path)
    from_table = ic.load_images(
        ic.ImageDatasetArgs(path=str(table), image_column="file", label_column="kind"), ctx
    )
    from_folder = ic.load_images(ic.ImageDatasetArgs(path=str(bars)), ctx)
    assert from_table.label_names == from_folder.label_names
    assert from_table.splits["validation"][1] == from_folder.splits["validation"][1]
    # Before anything runs, validate reads the table's columns (default: image, label).
    checked = spec(Path("m"), bars).model_copy(
        update={"dataset": ic.ImageDatasetArgs(path=str(table), label_column="kind")}
    )
    assert ic.check_files(checked, tmp_path) == (
        "dataset.image_column",
        "index.jsonl has no column 'image'; its columns: file, kind",
    )
    table.unlink()
    with pytest.raises(KeyError, match=r"no column 'image' in index.csv"):
        (bars.parent / "index.csv").write_text("file,label\nx.png,a\n")
        ic.load_images(ic.ImageDatasetArgs(path=str(bars.parent / "index.csv")), ctx)


def test_augmentation_is_seeded_and_changes_the_image(bars: Path) -> None:
    import numpy as np
    from PIL import Image

    image = Image.open(next(bars.rglob("*.png"))).convert("RGB")
    args = spec(Path("m"), bars, augment_strength=0.5, horizontal_flip=True)
    first = ic.augment(image, args, random.Random(1))
    again = ic.augment(image, args, random.Random(1))
    assert first.size == image.size
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(image))
    off = spec(Path("m"), bars)
    assert np.array_equal(np.asarray(ic.augment(image, off, random.Random(1))), np.asarray(image))


def test_model_gets_base_weights_a_new_head_and_frozen_stages(resnet: Path, bars: Path) -> None:
    import torch
    from transformers import AutoModelForImageClassification

    model = ic.build_model(spec(resnet, bars, freeze_layers=1), str(resnet), ["a", "b"], 0)
    assert model.config.id2label == {0: "a", 1: "b"}
    assert model.classifier[1].out_features == 2
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("resnet.embedder.") for n in frozen)
    assert any(n.startswith("resnet.encoder.stages.0.") for n in frozen)
    assert not any(n.startswith("resnet.encoder.stages.1.") for n in frozen)
    pretrained = AutoModelForImageClassification.from_pretrained(resnet)
    assert torch.equal(
        model.resnet.encoder.stages[2].layers[0].layer[0].convolution.weight,
        pretrained.resnet.encoder.stages[2].layers[0].layer[0].convolution.weight,
    )
    with pytest.raises(ValueError, match="has 3 stages, not 4"):
        ic.build_model(spec(resnet, bars, freeze_layers=4), str(resnet), ["a", "b"], 0)
    with pytest.raises(ValueError, match="dropout: architecture resnet has no dropout"):
        ic.build_model(spec(resnet, bars, dropout=0.1), str(resnet), ["a", "b"], 0)


def test_unknown_architecture_is_refused_by_freeze_layers() -> None:
    model = SimpleNamespace(config=SimpleNamespace(model_type="swin"))
    with pytest.raises(ValueError, match="architecture swin is not known; freeze_layers"):
        ic.freeze(model, 1)


def test_vit_blocks_freeze_and_take_dropout(tmp_path: Path, bars: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path / "vit"
    config = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=SIZE,
        patch_size=4,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    args = spec(folder, bars, freeze_layers=1, dropout=0.2)
    model = ic.build_model(args, str(folder), ["a", "b"], 0)
    assert model.config.hidden_dropout_prob == 0.2
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(".layers.0." in n for n in frozen) and not any(".layers.1." in n for n in frozen)


def tiny_timm(folder: Path, num_labels: int = 3) -> Path:
    """timm's 0.4 M-parameter ``test_resnet`` through transformers' timm wrapper, saved
    with its image processor (16x16 input). Needs timm, which needs torchvision."""
    from transformers import (
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
        TimmWrapperImageProcessor,
    )

    cfg = {"architecture": "test_resnet", "input_size": (3, SIZE, SIZE), "crop_pct": 1.0,
           "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}  # fmt: skip
    config = TimmWrapperConfig(architecture="test_resnet", num_labels=num_labels,
                               pretrained_cfg=cfg)  # fmt: skip
    TimmWrapperForImageClassification(config).save_pretrained(folder)
    TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture="test_resnet").save_pretrained(
        folder
    )
    return folder


def test_timm_model_gets_its_backbone_a_new_head_frozen_stages_and_dropout(
    tmp_path: Path, bars: Path
) -> None:
    pytest.importorskip("timm", reason="timm (and torchvision) not installed")
    import torch
    from transformers import AutoModelForImageClassification

    folder = tiny_timm(tmp_path / "timm")  # saved with 3 classes; the data has 2
    args = spec(folder, bars, freeze_layers=1, dropout=0.2, drop_path_rate=0.1)
    model = ic.build_model(args, str(folder), ["a", "b"], 0)
    assert model.timm_model.fc.out_features == 2
    assert model.timm_model.drop_rate == 0.2
    pretrained = AutoModelForImageClassification.from_pretrained(folder)
    assert torch.equal(model.timm_model.layer4[0].conv1.weight,
                       pretrained.timm_model.layer4[0].conv1.weight)  # fmt: skip
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("timm_model.conv1.") for n in frozen)
    assert any(n.startswith("timm_model.layer1.") for n in frozen)
    assert not any(n.startswith(("timm_model.layer2.", "timm_model.fc.")) for n in frozen)
    with pytest.raises(ValueError, match="has 4 stages, not 5"):
        ic.build_model(spec(folder, bars, freeze_layers=5), str(folder), ["a", "b"], 0)


def test_a_timm_study_trains_scores_and_exports(tmp_path: Path, bars: Path) -> None:
    pytest.importorskip("timm", reason="timm (and torchvision) not installed")
    folder = tiny_timm(tmp_path / "timm")
    study_file = tmp_path / "bars.yaml"
    study_file.write_text(
        STUDY.format(db=tmp_path / "hpo.db", runs=tmp_path / "runs", model=folder, data=bars)
        + "  freeze_layers: {type: categorical, choices: [1]}\n"
    )
    summary = run_study(load_study(study_file))
    assert summary.counts == {"COMPLETE": 2}
    study = optuna.load_study(study_name="bars", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    best = study.best_trial
    assert sorted(best.intermediate_values) == [1, 2]
    assert "test_accuracy" in best.user_attrs["hpo:metrics"]
    exported = run_hpo("export", str(study_file), "--to", str(tmp_path / "model"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert model.config.id2label == {0: "horizontal", 1: "vertical"}
    assert model.timm_model.fc.out_features == 2
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "model")).__name__ == (
        "TimmWrapperImageProcessor"
    )


STUDY = """\
name: bars
storage: sqlite:///{db}
seed: 0
sampler: {{type: grid}}
budget: {{n_trials: 2}}
output_dir: {runs}
trainer:
  ref: trainers.image_classification:train
  args:
    model: {model}
    dataset: {{path: {data}}}
    num_train_epochs: 2
    per_device_train_batch_size: 8
    augment_strength: 0.2
    error_examples: 4
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-2, 1.0e-6]}}
"""


def test_study_reports_each_epoch_checkpoints_scores_test_and_errors(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    study_file = tmp_path / "bars.yaml"
    study_file.write_text(
        STUDY.format(db=tmp_path / "hpo.db", runs=tmp_path / "runs", model=resnet, data=bars)
    )
    summary = run_study(load_study(study_file))
    assert summary.counts == {"COMPLETE": 2}
    study = optuna.load_study(study_name="bars", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    first, second = trials = study.trials  # study.trials builds new objects on each read
    for trial in trials:
        attrs = trial.user_attrs
        assert sorted(trial.intermediate_values) == [1, 2]
        assert {"eval_accuracy", "latency_ms"} <= set(attrs["hpo:metrics"])
        # The test split is scored for a trial that led the study when it finished.
        leads = trial is first or second.value >= first.value
        assert ("test_accuracy" in attrs["hpo:metrics"]) == leads
        assert (Path(attrs["hpo:checkpoint"]) / "model.safetensors").exists()
        analysis = attrs["hpo:error_analysis"]
        assert analysis["labels"] == ["horizontal", "vertical"]
        assert sum(map(sum, analysis["confusion_matrix"])) == 8
        for error in analysis["confident_errors"]:
            assert error["image"].startswith("data:image/png;base64,")
            assert error["label"] != error["predicted"]
    worst = min(study.trials, key=lambda t: t.value)
    assert worst.user_attrs["hpo:error_analysis"]["confident_errors"]  # lr 1e-6 learns nothing
    report = run_hpo("report", str(study_file), "-o", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    if study.best_trial.user_attrs["hpo:error_analysis"]["confident_errors"]:
        page = (tmp_path / "report" / "report.html").read_text()
        assert '<img alt="example" src="data:image/png;base64,' in page
    exported = run_hpo("export", str(study_file), "--to", str(tmp_path / "model"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert model.config.id2label == {0: "horizontal", 1: "vertical"}
    assert AutoImageProcessor.from_pretrained(tmp_path / "model").size["height"] == SIZE
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert "AutoModelForImageClassification" in card.text


def test_resume_from_checkpoint_trains_only_the_rest(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    params = {"model": str(resnet), "dataset": {"path": str(bars)}, "error_examples": 0}
    first = context(tmp_path, **params, num_train_epochs=1)
    ic.train(first)
    checkpoint = Path(first.trial.user_attrs["hpo:checkpoint"])
    resumed = context(tmp_path, **params, num_train_epochs=2)
    resumed.resume_from, resumed.output_dir = checkpoint, checkpoint.parent
    metrics = ic.train(resumed)
    assert [h["step"] for h in resumed.history] == [2]
    assert metrics["epoch"] == 2.0


def test_digits_generator_and_a_digits_trial(tmp_path: Path) -> None:
    """make_digits writes real scans and a loadable pre-trained ResNet; one trial fine-tunes."""
    from studies.data import make_digits

    assert make_digits.write_images(tmp_path / "digits", range(5, 10)) == 896
    accuracy = make_digits.pretrain(tmp_path / "resnet", range(0, 5), epochs=1, seed=0)
    assert 0.0 <= accuracy <= 1.0
    ctx = context(
        tmp_path,
        model="resnet",
        dataset={"path": "digits", "max_train_samples": 100},
        num_train_epochs=1,
        learning_rate=3e-3,
        error_examples=2,
    )
    metrics = ic.train(ctx)
    assert ctx.trial.user_attrs["hpo:error_analysis"]["labels"] == ["5", "6", "7", "8", "9"]
    assert {"eval_accuracy", "test_accuracy"} <= set(metrics)


def test_validate_refuses_a_missing_image_folder(tmp_path: Path, resnet: Path) -> None:
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        STUDY.format(db=tmp_path / "hpo.db", runs="runs", model=resnet, data="nowhere")
    )
    result = run_hpo("validate", str(study_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "dataset.path" in result.stderr and "nowhere does not exist" in result.stderr
    assert not (tmp_path / "hpo.db").exists()


def bars_with(tmp_path: Path, bars: Path, extra: dict[str, bytes | None]) -> Path:
    """A copy of ``bars`` with ``extra`` files (relative path -> bytes; None: a bars image)."""
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(bars, folder)
    for name, content in extra.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content or (bars / "vertical" / "00.png").read_bytes())
    return folder


def test_a_class_folder_too_small_for_the_splits_is_refused_before_any_trial(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """A class folder ``7`` of one image: validate and run name the folder as the user
    wrote it and the count it needs (each trial failed in its split before)."""
    folder = bars_with(tmp_path, bars, {"7/only.png": None})
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        STUDY.format(db=tmp_path / "hpo.db", runs="runs", model=resnet, data=folder)
    )
    for command in ("validate", "run"):
        result = run_hpo(command, str(study_file), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert (
            f"trainer.args.dataset.path: {folder}: too few images in a class folder: '7' has "
            "1 image; each class needs 3 or more for the stratified splits "
            "(validation_fraction 0.2, test_fraction 0.2): add images to it or remove it"
        ) in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "hpo.db").exists()


def test_an_image_that_cannot_be_read_is_named_at_validation(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """A .png of random bytes is exit 2 naming it, before any trial (each trial failed on
    it before, in decoding the whole folder)."""
    folder = bars_with(tmp_path, bars, {"vertical/broken.png": random.Random(0).randbytes(300)})
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        STUDY.format(db=tmp_path / "hpo.db", runs="runs", model=resnet, data=folder)
    )
    result = run_hpo("validate", str(study_file), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        f"trainer.args.dataset.path: {folder}: 1 image cannot be read: vertical/broken.png "
        "(cannot identify image file"
    ) in result.stderr
    assert "replace or remove it" in result.stderr and not (tmp_path / "hpo.db").exists()


def test_a_table_of_images_has_its_labels_files_and_images_checked(
    tmp_path: Path, bars: Path
) -> None:
    """A table's empty label, a path to no file and an unreadable image are named with
    their line before any trial."""
    folder = bars_with(tmp_path, bars, {"vertical/broken.png": b"not an image"})
    rows = ["image,label"] + [
        f"{p.parent.name}/{p.name},{p.parent.name}"
        for p in sorted(folder.rglob("*.png"))
        if p.name != "broken.png"
    ]
    table = folder / "index.csv"
    args = spec(Path("m"), table)

    def check(lines: list[str]) -> tuple[str, str] | None:
        table.write_text("\n".join(lines) + "\n")
        return ic.check_files(args, tmp_path)

    assert check(rows) is None
    assert check([*rows[:3], "vertical/00.png,", *rows[3:]]) == (
        "dataset.label_column",
        "index.csv: 'label' is empty or NaN on line 4; give every row a label or remove "
        "those rows (in a CSV, NA, N/A, null and None are NaN too)",
    )
    assert check([*rows, "vertical/gone.png,vertical"]) == (
        "dataset.image_column",
        "index.csv: 'image' names 1 file that does not exist: vertical/gone.png (line 42); "
        "image paths start at the table's folder",
    )
    problem = check([*rows, "vertical/broken.png,vertical"])
    assert problem is not None and problem[0] == "dataset.image_column"
    assert problem[1].startswith(
        "index.csv: 1 image cannot be read: vertical/broken.png (line 42: cannot identify"
    )


def test_an_image_that_passes_the_check_but_cannot_be_decoded_is_skipped(
    tmp_path: Path, bars: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PNG whose chunks are whole (verify passes) but whose pixels are noise: loading
    skips it with a warning naming it, and the trial goes on without it."""
    import logging
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    noise = random.Random(0).randbytes(64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", noise)
    png += chunk(b"IEND", b"")
    # A JPEG cut in its pixel data: its headers are whole, and PIL's verify checks no more.
    from PIL import Image

    noisy = Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3))
    jpeg = tmp_path / "whole.jpg"
    noisy.save(jpeg, quality=95)
    cut = jpeg.read_bytes()[: jpeg.stat().st_size // 2]
    folder = bars_with(tmp_path, bars, {"vertical/noise.png": png, "vertical/cut.jpg": cut})
    assert ic.check_files(spec(Path("m"), folder), tmp_path) is None
    with caplog.at_level(logging.WARNING, logger="hpo.trainers.image_classification"):
        images = ic.load_images(spec(Path("m"), folder).dataset, context(tmp_path))
    assert sum(len(labels) for _, labels in images.splits.values()) == 40
    assert f"skipped {folder / 'vertical' / 'noise.png'}: it cannot be decoded" in caplog.text
    assert f"skipped {folder / 'vertical' / 'cut.jpg'}: it cannot be decoded" in caplog.text


def test_loaded_images_are_files_decoded_when_their_batch_is_read(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """Loading keeps paths, not pixels: each split stores its files' paths, and a file is
    decoded (augmented, preprocessed) only when a batch reads it, so a worker's memory
    does not grow with the folder. A file removed after loading fails its own batch."""
    folder = bars_with(tmp_path, bars, {})
    images = ic.load_images(spec(resnet, folder).dataset, context(tmp_path))
    validation, labels = images.splits["validation"]
    stored = validation.data.column("image").to_pylist()
    assert [row["bytes"] for row in stored] == [None] * 8
    assert [Path(row["path"]).relative_to(folder) for row in stored] == [
        Path(name) for name in images.names["validation"]
    ]
    processor = ic.image_processor(str(resnet))
    batches = ic.image_split(validation, labels, processor)
    batch = batches.__getitems__([0, 1, 2])
    assert [tuple(b["pixel_values"].shape) for b in batch] == [(3, SIZE, SIZE)] * 3
    assert [b["labels"] for b in batch] == labels[:3]
    (folder / images.names["validation"][5]).unlink()
    assert batches[4]["labels"] == labels[4]
    with pytest.raises(FileNotFoundError):
        batches.__getitems__([4, 5])
    # The training split augments each read afresh, from its seeded generator.
    args = spec(resnet, folder, augment_strength=0.5)
    train, train_labels = images.splits["train"]
    first, again = (ic.image_split(train, train_labels, processor, args, seed=1) for _ in "ab")
    one = first.__getitems__([0, 1])
    assert all(
        (a["pixel_values"] == b["pixel_values"]).all()
        for a, b in zip(one, again.__getitems__([0, 1]), strict=True)
    )
    assert not (one[0]["pixel_values"] == first[0]["pixel_values"]).all()


def test_patience_counts_evaluations_that_do_not_beat_the_best(tmp_path: Path) -> None:
    """``early_stopping_patience`` 2: two evaluations in a row that do not beat the best
    so far (a tie does not) stop training; one that beats it starts the count again."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hpo.trainers import _hf

    reporter = _hf.reporter_class()(context(tmp_path), patience=2)
    args, control = TrainingArguments(output_dir=str(tmp_path)), TrainerControl()
    stopped = []
    for epoch, accuracy in enumerate([0.5, 0.6, 0.6, 0.7, 0.65, 0.7], 1):
        state = TrainerState(global_step=epoch, max_steps=10, epoch=float(epoch))
        reporter.on_evaluate(args, state, control, {"eval_accuracy": accuracy})
        stopped.append(control.should_training_stop)
    assert stopped == [False] * 5 + [True]


def test_early_stopping_keeps_the_last_checkpoint(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """A trial stopped early by ``early_stopping_patience`` ends with its last checkpoint,
    the model hpo scored, on disk (transformers' EarlyStoppingCallback needs
    ``metric_for_best_model``, with which the Trainer deletes all checkpoints but the
    best at the end: the reason the reporter counts patience itself)."""
    ctx = context(
        tmp_path,
        model=str(resnet),
        dataset={"path": str(bars)},
        num_train_epochs=6,
        learning_rate=1e-6,  # learns nothing: the accuracy soon stops improving
        per_device_train_batch_size=8,
        early_stopping_patience=1,
        error_examples=0,
    )
    metrics = ic.train(ctx)
    accuracies = [h["eval_accuracy"] for h in ctx.history]
    assert 2 <= len(accuracies) < 6  # stopped early, at the first evaluation not the best
    assert accuracies[-1] <= max(accuracies[:-1])
    assert all(a < b for a, b in zip(accuracies[:-2], accuracies[1:-1], strict=True))
    assert metrics["epoch"] == len(accuracies)
    last = Path(ctx.trial.user_attrs["hpo:checkpoint"])
    assert (last / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "trial").glob("checkpoint-*")) == [last.name]
    assert last.name == f"checkpoint-{3 * len(accuracies)}"  # 24 images in batches of 8


OPTIM_STUDY = """\
name: optim
storage: sqlite:///hpo.db
budget: {{n_trials: 1}}
trainer:
  ref: trainers.image_classification:train
  args:
    model: {model}
    dataset: {{path: {data}}}
    {fixed}
search_space:
  {searched}
"""


@pytest.mark.parametrize(
    ("fixed", "searched", "expected"),
    [
        (
            "optim: adamw_torh",
            "learning_rate: {type: float, low: 0.001, high: 0.01}",
            "trainer.args.optim: 'adamw_torh' is not a transformers OptimizerNames "
            "name; did you mean 'adamw_torch'?",
        ),
        (
            "num_train_epochs: 1",
            "optim: {type: categorical, choices: [sgd, adam_w]}",
            "trainer.args.optim: choice 'adam_w' in search_space.optim: 'adam_w' is not a "
            "transformers OptimizerNames name",
        ),
        (
            "num_train_epochs: 1",
            "lr_scheduler_type: {type: categorical, choices: [cosine, cosin]}",
            "choice 'cosin' in search_space.lr_scheduler_type: 'cosin' is not a transformers "
            "SchedulerType name; did you mean 'cosine'?",
        ),
        (
            "class_weights: inverse",
            "learning_rate: {type: float, low: 0.001, high: 0.01}",
            "trainer.args.class_weights: Input should be 'none' or 'balanced'",
        ),
    ],
)
def test_optimizer_scheduler_and_loss_are_validated(
    tmp_path: Path, resnet: Path, bars: Path, fixed: str, searched: str, expected: str
) -> None:
    study_file = tmp_path / "optim.yaml"
    study_file.write_text(
        OPTIM_STUDY.format(model=resnet, data=bars, fixed=fixed, searched=searched)
    )
    result = run_hpo("validate", str(study_file), cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_balanced_class_weights_weigh_rare_classes_up() -> None:
    import torch

    from hpo.trainers import _hf

    args = ic.ImageClassificationArgs.model_validate(
        {"model": "m", "dataset": {"path": "x"}, "class_weights": "balanced"}
    )
    data = _hf.Datasets(None, None, None, ["a", "b"], train_labels=[0, 0, 0, 1])
    loss = _hf.weighted_loss(args, data)
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])
    weights = torch.tensor([4 / 6, 4 / 2])  # n / (k * count)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    assert torch.allclose(loss({"logits": logits}, labels), expected)
    plain = args.model_copy(update={"class_weights": "none"})
    assert _hf.weighted_loss(plain, data) is None


def test_a_trial_with_sgd_cosine_smoothing_and_balanced_weights(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    from hpo.trainers import _hf

    params = {
        "model": str(resnet),
        "dataset": {"path": str(bars)},
        "num_train_epochs": 1,
        "optim": "sgd",
        "lr_scheduler_type": "cosine",
        "label_smoothing_factor": 0.1,
        "class_weights": "balanced",
        "error_examples": 0,
    }
    ctx = context(tmp_path, **params)
    hf_args = _hf.training_arguments(ic.ImageClassificationArgs.model_validate(params), ctx)
    assert (hf_args.optim, hf_args.lr_scheduler_type) == ("sgd", "cosine")
    assert hf_args.label_smoothing_factor == 0.1
    metrics = ic.train(ctx)
    assert "eval_accuracy" in metrics and "test_accuracy" in metrics


def test_mixed_precision_no_survives_yaml_reading_it_as_false(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """`--set trainer.args.mixed_precision=no` (and `mixed_precision: no`) means "no"."""
    args = spec(resnet, bars, mixed_precision=False)
    assert args.mixed_precision == "no"
    study_file = tmp_path / "mp.yaml"
    study_file.write_text(
        OPTIM_STUDY.format(
            model=resnet,
            data=bars,
            fixed="num_train_epochs: 1",
            searched="learning_rate: {type: float, low: 0.001, high: 0.01}",
        )
    )
    for value in ("no", "off", "bf16"):
        result = run_hpo(
            "validate", str(study_file), "--set", f"trainer.args.mixed_precision={value}"
        )
        assert result.returncode == 0, result.stderr
    result = run_hpo("validate", str(study_file), "--set", "trainer.args.mixed_precision=yes")
    assert result.returncode == 2
    assert "mixed_precision: Input should be 'auto', 'no', 'bf16' or 'fp16'" in result.stderr


def test_a_last_training_batch_of_one_image_does_not_break_batch_norm(
    tmp_path: Path, resnet: Path, bars: Path
) -> None:
    """17 training images in batches of 8 leave one alone, which BatchNorm cannot train on."""
    ctx = context(
        tmp_path,
        model=str(resnet),
        dataset={"path": str(bars), "max_train_samples": 17},
        per_device_train_batch_size=8,
        num_train_epochs=1,
        error_examples=0,
    )
    metrics = ic.train(ctx)
    assert "eval_accuracy" in metrics
