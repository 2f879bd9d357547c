"""The image-classification draft: an image folder or a table of image paths.

Classes and their images are counted, the sizes and colour modes of a sample of images
read from their headers (nothing is decoded or trained), and a local model folder's
architecture read for the stages freeze_layers may search.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

from hpo.trainers._hf import relative_to
from hpo.trainers.drafts.sizing import (
    Draft,
    hold_out,
    most_common,
    objective_finding,
    propose,
    rare_findings,
    size,
    trials_finding,
)
from hpo.trainers.drafts.table import detect_label_column, read_rows, require_columns
from hpo.trainers.image_files import IMAGE_SUFFIXES, TABLE_FORMATS, class_images
from hpo.trainers.model_facts import LAYOUTS

# No pretrained image model ships with hpo; a small ImageNet ResNet from the hub (4 stages,
# 11M parameters) is the default, and --model names a local folder instead.
DEFAULT_MODEL = "microsoft/resnet-18"
DEFAULT_MODEL_FACTS = {"model_type": "resnet", "stages": 4}
MIN_PER_CLASS = 5  # the stratified training, validation and test splits each need one
HEADER_SAMPLE = 200  # images whose size and mode the draft reads (headers only)
EPOCHS = 5  # the most a drafted trial trains; Hyperband's largest resource


def recognises_images(path: Path) -> bool:
    """Whether ``hpo init`` drafts an image study: a folder, or a table of image paths."""
    if path.is_dir():
        return True  # only images come as a folder; its draft says what is wrong with it
    if path.suffix.lower() not in TABLE_FORMATS or not path.is_file():
        return False
    try:
        return _image_column(read_rows(path)) is not None
    except (ValueError, OSError):
        return False  # not a table this trainer reads: let the text draft say why


def draft_image_classification(
    path: Path,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    model: str | None = None,
) -> Draft:
    """An image-classification study for an image folder or a table of image paths.

    Args:
        path: a folder with one sub-folder per class, or a CSV/JSON lines/Parquet file.
        image_column: the table's column of image paths (default: detected).
        label_column: the table's label column (default: detected).
        model: a local model folder or a hub id (default: :data:`DEFAULT_MODEL`).

    Raises:
        ValueError: no images, one class, a class with too few images, an unreadable
            image, or a table column or file that does not exist.
    """
    if path.is_dir():
        if image_column or label_column:
            raise ValueError(
                "--image-column and --label-column name a table's columns; an image "
                "folder's classes are its sub-folders"
            )
        by_class = _folder_classes(path)
        dataset: dict[str, Any] = {"path": str(path)}
        source, where = "one sub-folder per class", "sub-folder"
    else:
        by_class, image, label = _table_classes(path, image_column, label_column)
        dataset = {"path": str(path), "image_column": image, "label_column": label}
        source, where = f"image paths in `{image}`, labels in `{label}`", f"class in `{label}`"
    _check_classes(by_class, where)
    return _sized_image_draft(dataset, by_class, source, model)


def _image_column(rows: list[dict[str, Any]]) -> str | None:
    """The first column whose values are mostly image file names."""
    sample = rows[:100]
    for column in rows[0]:
        names = [str(row.get(column) or "").lower() for row in sample]
        if sum(name.endswith(IMAGE_SUFFIXES) for name in names) >= 0.8 * len(names):
            return column
    return None


def _folder_classes(folder: Path) -> dict[str, list[Path]]:
    if not any(folder.iterdir()):
        raise ValueError(
            "the folder is empty; put each class's images in a sub-folder named after the "
            f"class ({folder}/CLASS/IMAGE.png)"
        )
    by_class = {label: files for label, files in class_images(folder).items() if files}
    if by_class:
        return by_class
    loose = next((f for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES), None)
    if loose is not None:
        raise ValueError(
            "images but no class sub-folders; move each class's images into a sub-folder "
            f"named after the class ({folder}/CLASS/{loose.name})"
        )
    raise ValueError(
        f"no images ({', '.join(IMAGE_SUFFIXES)}) in its sub-folders; give a folder with one "
        f"sub-folder of images per class ({folder}/CLASS/IMAGE.png)"
    )


def _table_classes(
    table: Path, image_column: str | None, label_column: str | None
) -> tuple[dict[str, list[Path]], str, str]:
    if table.suffix.lower() not in TABLE_FORMATS:
        raise ValueError(
            f"the image trainer reads {', '.join(TABLE_FORMATS)} tables, not {table.suffix}"
        )
    rows = read_rows(table)
    columns = list(rows[0])
    image = image_column or _image_column(rows)
    if image is None:
        raise ValueError(
            f"no column of image paths among {', '.join(columns)}; use --image-column"
        )
    label = label_column or detect_label_column(rows, columns, exclude=image)
    require_columns(columns, {"--image-column": image, "--label-column": label})
    by_class: dict[str, list[Path]] = {}
    for row in rows:
        file = relative_to(str(row[image]), table.parent)
        if not file.is_file():
            raise ValueError(
                f"{image} {row[image]!r} does not exist; image paths start at the table's folder"
            )
        by_class.setdefault(str(row[label]), []).append(file)
    return by_class, image, label


def _check_classes(by_class: dict[str, list[Path]], where: str) -> None:
    if len(by_class) < 2:
        raise ValueError(
            f"images of one class only ({', '.join(by_class)}); a classifier needs two or "
            f"more: add a {where} of images for each class"
        )
    label, files = min(by_class.items(), key=lambda item: len(item[1]))
    if len(files) < MIN_PER_CLASS:
        raise ValueError(
            f"{where} {label} holds {len(files)} images; each class needs {MIN_PER_CLASS} or "
            f"more (to train, validate and test on): add images or remove the {where}"
        )


def _sampled_headers(by_class: dict[str, list[Path]]) -> tuple[Counter[str], Counter[str]]:
    """Sizes and colour modes of up to :data:`HEADER_SAMPLE` images, spread over classes."""
    from PIL import Image, UnidentifiedImageError

    files = [f for group in itertools.zip_longest(*by_class.values()) for f in group if f]
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for file in files[:: max(1, len(files) // HEADER_SAMPLE)][:HEADER_SAMPLE]:
        try:
            with Image.open(file) as image:  # reads the header, decodes nothing
                sizes[f"{image.width}x{image.height}"] += 1
                modes[image.mode] += 1
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{file} is not a readable image ({e}); replace or remove it") from e
    return sizes, modes


def _model_facts(model: str) -> dict[str, Any]:
    """A local model folder's architecture, stage count and input size, where it says them."""
    if model == DEFAULT_MODEL:
        return dict(DEFAULT_MODEL_FACTS)
    folder = Path(model).expanduser()
    facts: dict[str, Any] = {}
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return facts  # a hub id, or a folder hpo validate will look at
    facts["model_type"] = config.get("model_type")
    stages = config.get("depths") or [None] * int(config.get("num_hidden_layers") or 0)
    facts["stages"] = len(stages)
    size = processor.get("size") or {}
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        facts["input"] = f"{size['width']}x{size['height']}"
    elif isinstance(size, dict) and "shortest_edge" in size:
        facts["input"] = f"a shortest edge of {size['shortest_edge']}"
    return facts


def _sized_image_draft(
    dataset: dict[str, Any], by_class: dict[str, list[Path]], source: str, model: str | None
) -> Draft:
    counts = Counter({label: len(files) for label, files in by_class.items()})
    sizing = size(counts, sum(counts.values()), "images")
    sizes, modes = _sampled_headers(by_class)
    facts = _model_facts(model or DEFAULT_MODEL)
    sample = hold_out(sizing, dataset)
    args: dict[str, Any] = {"model": model or DEFAULT_MODEL, "dataset": dataset}
    notes = {}
    if model is None:
        notes["model"] = (
            "no pretrained image model ships with hpo: this hub model needs internet; "
            "offline, put a local model folder here (one saved with save_pretrained)"
        )
    if sizing.metric == "eval_f1":
        args["class_weights"] = "balanced"
    findings = [
        f"{sizing.n} images in {len(counts)} classes ({most_common(counts)}); {source}",
        f"sampled {sum(sizes.values())} images: sizes {most_common(sizes)}; modes "
        f"{most_common(modes)}"
        + ("" if set(modes) == {"RGB"} else " (all become RGB)")
        + (
            f"; the model's image processor resizes them to {facts['input']}"
            if "input" in facts
            else ""
        ),
        objective_finding(
            sizing, ", and class_weights: balanced weighs rare classes up in the loss"
        ),
        trials_finding(sizing),
        "horizontal_flip is off: set it true if a mirrored image keeps its class (photos do; "
        "digits and text do not)",
        *sample,
        *rare_findings(sizing, "add images"),
    ]
    space: dict[str, dict[str, Any]] = {
        "learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
        "optim": {"type": "categorical", "choices": ["adamw_torch", "sgd"]},
        "per_device_train_batch_size": {
            "type": "categorical",
            "choices": [8, 16] if sizing.n_train < 500 else [16, 32],
        },
        "num_train_epochs": {"type": "int", "low": 2, "high": EPOCHS},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "label_smoothing_factor": {"type": "float", "low": 0.0, "high": 0.2},
        "augment_strength": {"type": "float", "low": 0.0, "high": 0.5},
    }
    if facts.get("model_type") in LAYOUTS and facts.get("stages"):
        space["freeze_layers"] = {"type": "int", "low": 0, "high": max(1, facts["stages"] // 2)}
        findings.append(
            f"freeze_layers up to {space['freeze_layers']['high']} of the model's "
            f"{facts['stages']} {facts['model_type']} stages: small data sets often gain"
        )
    else:
        findings.append(
            "freeze_layers is not searched: hpo knows the stages of "
            f"{', '.join(sorted(LAYOUTS))} models only (or the model folder is not local)"
        )
    return propose(
        sizing, args=args, search_space=space, max_epochs=EPOCHS, findings=findings, notes=notes
    )
