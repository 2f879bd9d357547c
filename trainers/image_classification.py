"""Fine-tune a pretrained image classifier (CNN or ViT) with the HF ``Trainer``.

``train(ctx)`` loads the images (a folder with one sub-folder per class, a CSV / JSON
lines / Parquet file of image paths and labels, or a hub data set), splits them with the
study seed when they have no splits, preprocesses with the model's own image processor
(resize, normalization), augments the training split only, builds
``AutoModelForImageClassification`` (timm models too, through transformers' timm wrapper)
with this trial's dropout / drop-path and frozen stages, and hands the rest (reporting,
pruning, checkpoints, test split, error analysis with thumbnails) to :mod:`trainers._hf`.

Decoded images, preprocessed evaluation tensors and the base weights stay in the worker
process (:data:`trainers._hf.CACHE`). Augmentation uses PIL only (torchvision is not
needed).

For ``hpo init``, ``train.recognises_data`` claims image folders and tables of image
paths, and ``train.draft_study`` proposes a study for them (classes, sizes, modes and
balance read from the files; nothing is trained).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from hpo.trainer import TrialContext
from trainers import _hf
from trainers._hf import HFTrainingArgs, relative_to
from trainers.dataset import LabelledDatasetArgs, split
from trainers.drafts import (
    SEARCH_SAMPLE,
    Draft,
    check_columns,
    detect_label_column,
    read_rows,
)
from trainers.labels import SHOWN, check_classes, check_label_column, plural, read_column

logger = logging.getLogger(__name__)

_AUTO_CLASS = "AutoModelForImageClassification"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Where each known architecture keeps its stem and its stages (CNNs) or blocks (ViTs),
# as attribute paths below ``model.base_model``: what freeze_layers freezes.
LAYOUTS = {
    "resnet": ("embedder", "encoder.stages"),
    "convnext": ("embeddings", "encoder.stages"),
    "convnextv2": ("embeddings", "encoder.stages"),
    "vit": ("embeddings", "layers"),
    "deit": ("embeddings", "layers"),
}
THUMBNAIL_PX = 48


class ImageDatasetArgs(LabelledDatasetArgs):
    """Where the images come from: a folder, a table of paths and labels, or a hub set."""

    SOURCES: ClassVar[str] = "`path` (an image folder or a table) or `hub` (a data set)"

    path: str | None = Field(
        None, description="a folder with one sub-folder per class, or a CSV/JSONL/Parquet file"
    )
    image_column: str = Field("image", description="image paths, relative to the table file")


class ImageClassificationArgs(HFTrainingArgs):
    """Fixed arguments (``trainer.args``) and searchable hyperparameters of :func:`train`."""

    model: str = Field(..., description="a local model folder or a hub id")
    dataset: ImageDatasetArgs
    # Hyperparameters of this family (any may appear in search_space).
    dropout: float | None = Field(None, ge=0, lt=1, description="where the config has one")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="stochastic depth")
    freeze_layers: int = Field(0, ge=0, description="the stem + the first N stages or blocks")
    # Augmentation of the training split; augment_strength (0..1) scales crop, rotation
    # and colour jitter together, each of which may also be set on its own.
    augment_strength: float = Field(0.0, ge=0, le=1)
    horizontal_flip: bool = False
    crop_scale_min: float | None = Field(None, gt=0, le=1, description="random resized crop")
    rotation_degrees: float | None = Field(None, ge=0, le=180)
    color_jitter: float | None = Field(None, ge=0, le=1)


# --- data -------------------------------------------------------------------------------


@dataclass
class Images:
    """Decoded images and labels per split, and the label names (shared by trials)."""

    splits: dict[str, tuple[list[Any], list[int]]]
    names: dict[str, list[str]]  # per split: where each image came from
    label_names: list[str]


def load_images(spec: ImageDatasetArgs, ctx: TrialContext) -> Images:
    """Decode, label and split the images once per worker process."""
    key = ("images", spec.model_dump_json(), str(ctx.study_dir), ctx.seed)
    return _hf.cached(key, lambda: _load_images(spec, ctx.study_dir, ctx.seed))


def _load_images(spec: ImageDatasetArgs, study_dir: Path, seed: int) -> Images:
    if spec.hub:
        return _hub_images(spec, seed)  # needs internet: not exercised by the tests
    path = relative_to(spec.path or "", study_dir)
    files, labels = _folder_files(path) if path.is_dir() else _table_files(path, spec)
    decoded = _decode_all(files)
    files, labels = [files[i] for i in decoded], [labels[i] for i in decoded]
    images = list(decoded.values())
    label_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(label_names)}
    names = [str(f.relative_to(path) if path.is_dir() else f.name) for f in files]
    parts = split([index[label] for label in labels], spec, seed)
    splits = {k: ([images[i] for i in v], [index[labels[i]] for i in v]) for k, v in parts.items()}
    return Images(splits, {k: [names[i] for i in v] for k, v in parts.items()}, label_names)


def class_images(folder: Path) -> dict[str, list[Path]]:
    """Each class sub-folder's image files, sorted; nested folders count for their class.

    Hidden sub-folders (``.ipynb_checkpoints``, ``.git``) are no classes.
    """
    return {
        sub.name: [f for f in sorted(sub.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        if not sub.name.startswith(".")
    }


def _folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    files, labels = [], []
    for label, images in class_images(folder).items():
        files += images
        labels += [label] * len(images)
    if len(set(labels)) < 2:
        raise ValueError(
            f"trainer.args.dataset.path: {folder} needs one sub-folder of images per class "
            f"(found {len(set(labels))} class(es) with images)"
        )
    return files, labels


def _table_files(table: Path, spec: ImageDatasetArgs) -> tuple[list[Path], list[str]]:
    import datasets

    datasets.disable_progress_bars()
    kind = TABLE_FORMATS.get(table.suffix.lower())
    if kind is None or not table.is_file():
        raise ValueError(
            f"trainer.args.dataset.path: {table} is neither an image folder nor a "
            f"{'/'.join(TABLE_FORMATS)} file"
        )
    rows = datasets.load_dataset(kind, data_files={"train": str(table)})["train"]
    for column in (spec.image_column, spec.label_column):
        if column not in rows.column_names:
            raise KeyError(
                f"trainer.args.dataset: no column {column!r} in {table.name}; columns: "
                f"{rows.column_names}"
            )
    files = [relative_to(str(p), table.parent) for p in rows[spec.image_column]]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(
            f"trainer.args.dataset.path: {table.name} names {missing}, which does not exist "
            "(image paths are relative to the table file)"
        )
    return files, [str(label) for label in rows[spec.label_column]]


def _hub_images(spec: ImageDatasetArgs, seed: int) -> Images:
    import datasets

    raw = datasets.load_dataset(spec.hub, spec.hub_config)
    feature = raw["train"].features[spec.label_column]
    label_names = list(
        getattr(feature, "names", None) or sorted(set(raw["train"][spec.label_column]))
    )

    def column(split: Any) -> tuple[list[Any], list[int]]:
        labels = split[spec.label_column]
        labels = [x if isinstance(x, int) else label_names.index(x) for x in labels]
        return [im.convert("RGB") for im in split[spec.image_column]], labels

    pool = column(raw["train"])
    parts = split(pool[1], spec, seed, set(raw))
    splits = {k: ([pool[0][i] for i in v], [pool[1][i] for i in v]) for k, v in parts.items()}
    splits.update({k: column(raw[k]) for k in ("validation", "test") if k not in parts})
    names = {k: [f"{k}[{i}]" for i in range(len(v[1]))] for k, v in splits.items()}
    return Images(splits, names, [str(n) for n in label_names])


def _decode(file: Path) -> Any:
    from PIL import Image

    with Image.open(file) as image:
        return image.convert("RGB")


def _decode_all(files: list[Path]) -> dict[int, Any]:
    """Each file's index -> its decoded image; one that cannot be decoded is skipped with a
    warning naming it.

    validate reads every image's header (:func:`unreadable_images`), but the pixels of a
    file with sound headers can still be broken (a truncated JPEG, a corrupt PNG stream):
    one such file must not fail every trial.
    """
    decoded = {}
    for i, file in enumerate(files):
        try:
            decoded[i] = _decode(file)
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for broken data
            logger.warning("skipped %s: it cannot be decoded (%s); replace or remove it", file, e)
    return decoded


def unreadable_images(files: list[Path]) -> list[tuple[int, str]]:
    """``(index, why)`` for each file PIL cannot identify or whose structure is broken.

    ``Image.verify`` reads the headers (and checks a PNG's chunk checksums) without
    decoding pixels: 27 microseconds an image on the shipped digits (1797 PNGs in 0.05 s).
    """
    from PIL import Image

    bad = []
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.verify()
        except Exception as e:  # PIL raises many kinds for a broken file; each is a finding
            bad.append((i, str(e) or type(e).__name__))
    return bad


def image_processor(model_path: str) -> Any:
    """The model's own image processor (resize, rescale, normalize), loaded once."""

    def load() -> Any:
        from transformers import AutoImageProcessor
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "torchvision missing, using PIL": expected here
        try:
            return AutoImageProcessor.from_pretrained(model_path)
        finally:
            hf_logging.set_verbosity(level)

    return _hf.cached(("processor", model_path), load)


def pixel_values(processor: Any, images: list[Any]) -> Any:
    """A float tensor batch (N, C, H, W) of ``images``, as the model expects them."""
    return processor(images, return_tensors="pt")["pixel_values"]


def augment(image: Any, args: ImageClassificationArgs, rng: random.Random) -> Any:
    """A randomly flipped, cropped, rotated and colour-jittered copy (training only)."""
    from PIL import Image, ImageEnhance

    strength = args.augment_strength
    scale = args.crop_scale_min if args.crop_scale_min is not None else 1 - 0.5 * strength
    degrees = args.rotation_degrees if args.rotation_degrees is not None else 30 * strength
    jitter = args.color_jitter if args.color_jitter is not None else 0.4 * strength
    if args.horizontal_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scale < 1:
        width, height = image.size
        area = rng.uniform(scale, 1.0)
        w, h = max(1, round(width * area**0.5)), max(1, round(height * area**0.5))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = image.resize((width, height), box=(left, top, left + w, top + h))
    if degrees > 0:
        image = image.rotate(rng.uniform(-degrees, degrees), resample=Image.Resampling.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        if jitter > 0:
            image = enhance(image).enhance(rng.uniform(1 - jitter, 1 + jitter))
    return image


def _training_split(images: list[Any], labels: list[int], processor: Any, args: Any, seed: int):
    import torch

    augmenting = (
        args.augment_strength > 0
        or args.horizontal_flip
        or any(v for v in (args.crop_scale_min, args.rotation_degrees, args.color_jitter))
    )
    if not augmenting:  # nothing random: preprocess once, like the evaluation splits
        return _tensor_split(pixel_values(processor, images), labels)

    class Augmented(torch.utils.data.Dataset):
        """Each read is a fresh augmentation of the image, then the model's preprocessing."""

        def __init__(self) -> None:
            self.rng = random.Random(seed)

        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> dict[str, Any]:
            image = augment(images[i], args, self.rng)
            return {"pixel_values": pixel_values(processor, [image])[0], "labels": labels[i]}

    return Augmented()


def _tensor_split(pixels: Any, labels: list[int]) -> list[dict[str, Any]]:
    return [{"pixel_values": p, "labels": label} for p, label in zip(pixels, labels, strict=True)]


# --- model ------------------------------------------------------------------------------


def base_weights(model_path: str) -> tuple[Any, dict[str, Any]]:
    """The pretrained config and backbone weights (no head), read once per process."""
    return _hf.base_weights(_AUTO_CLASS, model_path)


def build_model(
    args: ImageClassificationArgs, model_path: str, label_names: list[str], seed: int
) -> Any:
    """A fresh model: this trial's dropout, backbone weights from memory, a seeded head."""
    import copy

    config, state = base_weights(model_path)
    config = copy.deepcopy(config)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    if hasattr(config, "label_names"):  # timm's wrapper saves these in place of id2label
        config.label_names = list(label_names)
    _set_regularization(config, args)
    model = _hf.model_from_base(_AUTO_CLASS, config, state, seed)
    freeze(model, args.freeze_layers)
    return model


def _set_regularization(config: Any, args: ImageClassificationArgs) -> None:
    """Dropout and drop-path into the config fields this architecture has; refuse others."""
    if config.model_type == "timm_wrapper":
        # timm takes both as create_model arguments (drop_rate: dropout before the head,
        # drop_path_rate: stochastic depth); the wrapper passes model_args through.
        extra = {"drop_rate": args.dropout, "drop_path_rate": args.drop_path_rate}
        extra = {k: v for k, v in extra.items() if v is not None}
        if extra:
            config.model_args = {**(config.model_args or {}), **extra}
        return
    fields = {
        "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate"),
        "drop_path_rate": ("drop_path_rate",),
    }
    for arg, names in fields.items():
        value = getattr(args, arg)
        if value is None:
            continue
        present = [n for n in names if hasattr(config, n)]
        if not present:
            raise ValueError(
                f"{arg}: architecture {config.model_type} has no {arg} setting "
                f"({', '.join(names)}); remove {arg} for this model"
            )
        for name in present:
            setattr(config, name, value)


def freeze(model: Any, n_stages: int) -> None:
    """Freeze the stem and the first ``n_stages`` stages (CNNs) or blocks (ViTs)."""
    if n_stages <= 0:
        return
    import operator

    model_type = model.config.model_type
    if model_type == "timm_wrapper":
        stem, stages = _timm_stages(model)
    elif model_type in LAYOUTS:
        stem_path, stages_path = LAYOUTS[model_type]
        base = model.base_model
        stem = operator.attrgetter(stem_path)(base)
        stages = operator.attrgetter(stages_path)(base)
    else:
        raise ValueError(
            f"freeze_layers: architecture {model_type} is not known; freeze_layers supports "
            f"{', '.join(sorted([*LAYOUTS, 'timm_wrapper']))} (set freeze_layers: 0 for this "
            "model)"
        )
    if n_stages > len(stages):
        raise ValueError(f"freeze_layers: the model has {len(stages)} stages, not {n_stages}")
    for module in [stem, *stages[:n_stages]]:
        for parameter in module.parameters():
            parameter.requires_grad = False


def _timm_stages(model: Any) -> tuple[Any, list[Any]]:
    """The stem and the stages (or blocks) of a timm model, as timm itself groups them.

    timm's coarse ``group_matcher`` (made for layer-wise learning rates) puts the stem in
    group 0 and one stage or block per later group; the group that holds the classifier
    (with the final norm, where there is one) is not a stage and is never frozen.
    """
    import torch
    from timm.models import group_modules

    inner = model.timm_model
    head = inner.get_classifier()
    groups = group_modules(inner, inner.group_matcher(coarse=True))
    modules = [[inner.get_submodule(name) for name in groups[key]] for key in sorted(groups)]
    stem, *stages = (torch.nn.ModuleList(m) for m in modules if head not in m)
    return stem, stages


# --- training ---------------------------------------------------------------------------


def train(ctx: TrialContext) -> dict[str, float]:
    """Fine-tune with this trial's hyperparameters; return validation and test metrics."""
    args = ImageClassificationArgs.model_validate(ctx.params)
    return _hf.with_oom_retry(_train, args, ctx)


def _train(args: ImageClassificationArgs, ctx: TrialContext) -> dict[str, float]:
    _hf.set_up(ctx)
    model_path = resolve_model(args.model, ctx.study_dir)
    images = load_images(args.dataset, ctx)
    processor = image_processor(model_path)
    evaluation = _hf.cached(
        ("pixels", model_path, args.dataset.model_dump_json(), str(ctx.study_dir), ctx.seed),
        lambda: {
            name: _tensor_split(pixel_values(processor, images.splits[name][0]), labels)
            if labels
            else []
            for name in ("validation", "test")
            for labels in [images.splits[name][1]]
        },
    )
    model = build_model(args, model_path, images.label_names, ctx.seed)
    train_images, train_labels = _without_a_lone_last_image(
        *images.splits["train"], model, args.per_device_train_batch_size
    )
    validation_images, _ = images.splits["validation"]
    data = _hf.Datasets(
        train=_training_split(train_images, train_labels, processor, args, ctx.seed),
        validation=evaluation["validation"],
        test=evaluation["test"],
        label_names=images.label_names,
        example_inputs=lambda example, device: {
            "pixel_values": example["pixel_values"][None].to(device)
        },
        train_labels=train_labels,
        show_example=lambda i: {
            "text": images.names["validation"][i],
            "image": thumbnail(validation_images[i]),
        },
    )
    return _hf.fit(args, ctx, model, data)


def _without_a_lone_last_image(
    images: list[Any], labels: list[int], model: Any, batch_size: int
) -> tuple[list[Any], list[int]]:
    """The training split less its last image when that image would make a batch alone.

    BatchNorm (ResNet and most CNNs) cannot train on a batch of one: a training split
    of 17 in batches of 8 would fail every epoch.
    """
    import torch

    if len(labels) % batch_size != 1 or len(labels) == 1:
        return images, labels
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return images, labels
    logger.info(
        "training on %d of %d images: BatchNorm cannot train a batch of one",
        len(labels) - 1,
        len(labels),
    )
    return images[:-1], labels[:-1]


def thumbnail(image: Any) -> str:
    """A small PNG of ``image`` as a data URI (for the report's error table)."""
    import base64
    import io

    from PIL import Image

    small = image.copy()
    if max(small.size) < THUMBNAIL_PX:  # tiny scans: enlarge with visible pixels
        factor = THUMBNAIL_PX // max(small.size)
        small = small.resize((small.width * factor, small.height * factor), Image.NEAREST)
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- hpo init: a study drafted from the user's images ------------------------------------

# No pretrained image model ships with hpo; a small ImageNet ResNet from the hub (4 stages,
# 11M parameters) is the default, and --model names a local folder instead.
DEFAULT_MODEL = "microsoft/resnet-18"
DEFAULT_MODEL_FACTS = {"model_type": "resnet", "stages": 4}
MIN_PER_CLASS = 5  # the stratified training, validation and test splits each need one
HEADER_SAMPLE = 200  # images whose size and mode the draft reads (headers only)
EPOCHS = 5  # the most a drafted trial trains; Hyperband's largest resource


def recognises_data(path: Path) -> bool:
    """Whether ``hpo init`` drafts an image study: a folder, or a table of image paths."""
    if path.is_dir():
        return True  # only images come as a folder; its draft says what is wrong with it
    if path.suffix.lower() not in TABLE_FORMATS or not path.is_file():
        return False
    try:
        return _image_column(read_rows(path)) is not None
    except (ValueError, OSError):
        return False  # not a table this trainer reads: let the text draft say why


def draft_study(
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
    for given, flag in ((image, "--image-column"), (label, "--label-column")):
        if given not in columns:
            raise ValueError(f"no column {given!r} (columns: {', '.join(columns)}); use {flag}")
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
    n = sum(counts.values())
    held_out = 0.1 if n >= 5_000 else 0.2
    n_train = int(n * (1 - 2 * held_out))
    balance = min(counts.values()) / max(counts.values())
    metric = "eval_accuracy" if balance >= 0.5 else "eval_f1"
    n_trials = 8 if n_train <= 1_000 else 16 if n_train <= SEARCH_SAMPLE else 24
    sizes, modes = _sampled_headers(by_class)
    facts = _model_facts(model or DEFAULT_MODEL)
    dataset.update(validation_fraction=held_out, test_fraction=held_out)
    args: dict[str, Any] = {"model": model or DEFAULT_MODEL, "dataset": dataset}
    notes = {}
    if model is None:
        notes["model"] = (
            "no pretrained image model ships with hpo: this hub model needs internet; "
            "offline, put a local model folder here (one saved with save_pretrained)"
        )
    findings = [
        f"{n} images in {len(counts)} classes ({_most_common(counts)}); {source}",
        f"sampled {sum(sizes.values())} images: sizes {_most_common(sizes)}; modes "
        f"{_most_common(modes)}"
        + ("" if set(modes) == {"RGB"} else " (all become RGB)")
        + (
            f"; the model's image processor resizes them to {facts['input']}"
            if "input" in facts
            else ""
        ),
        f"objective {metric}: "
        + (
            "the classes are balanced"
            if metric == "eval_accuracy"
            else f"the classes are imbalanced (smallest/largest = {balance:.2f}); macro F1 "
            "weighs every class, and class_weights: balanced weighs rare classes up in the loss"
        ),
        f"{n_trials} trials for {n_train} training images, Hyperband stops weak ones early",
        "horizontal_flip is off: set it true if a mirrored image keeps its class (photos do; "
        "digits and text do not)",
    ]
    if metric == "eval_f1":
        args["class_weights"] = "balanced"
    if n_train > SEARCH_SAMPLE:
        dataset["max_train_samples"] = SEARCH_SAMPLE
        findings.append(
            f"each trial trains on {SEARCH_SAMPLE} of the {n_train} training images: "
            "remove max_train_samples to fine-tune the winner on all of them"
        )
    rare = [label for label, count in counts.items() if count < 10]
    if rare:
        findings.append(
            f"classes with under 10 images ({', '.join(rare[:5])}) make noisy validation "
            "scores; add images"
        )
    space: dict[str, dict[str, Any]] = {
        "learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
        "optim": {"type": "categorical", "choices": ["adamw_torch", "sgd"]},
        "per_device_train_batch_size": {
            "type": "categorical",
            "choices": [8, 16] if n_train < 500 else [16, 32],
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
    return Draft(
        args=args,
        search_space=space,
        budget={"n_trials": n_trials, "timeout": "2h", "max_failures": 3},
        objective={"metric": metric, "direction": "maximize"},
        sampler={"type": "tpe", "multivariate": True, "n_startup_trials": max(4, n_trials // 4)},
        pruner={
            "type": "hyperband",
            "min_resource": 1,
            "max_resource": EPOCHS,
            "reduction_factor": 3,
        },
        findings=findings,
        notes=notes,
    )


def _most_common(counts: Counter[str], shown: int = 6) -> str:
    text = ", ".join(f"{key}: {n}" for key, n in counts.most_common(shown))
    return text + (", ..." if len(counts) > shown else "")


# --- hooks the core calls (hpo/trainer.py) ----------------------------------------------


def resolve_model(name: str, study_dir: Path) -> str:
    """A local folder when one exists (relative to the study); otherwise the hub id."""
    local = relative_to(name, study_dir)
    return str(local) if local.exists() else name


def check_args(
    args: ImageClassificationArgs, search_space: dict[str, Any]
) -> tuple[str, str] | None:
    """Trackers installed; ``training_args`` fields hpo leaves free; searched choices valid."""
    return _hf.check_args(ImageClassificationArgs, args, search_space)


def check_files(args: ImageClassificationArgs, study_dir: Path) -> tuple[str, str] | None:
    """The local files the args name, checked before a study starts (hub names are not).

    Each class must be large enough for the stratified splits (:mod:`trainers.labels`)
    and every image readable (its headers; see :func:`unreadable_images`); a table's
    labels and image paths are read too.
    """
    if args.dataset.path:
        path = relative_to(args.dataset.path, study_dir)
        if not path.exists():
            return (
                "dataset.path",
                f"{path} does not exist; relative paths start at the study file's folder",
            )
        if path.is_file() and path.suffix.lower() not in TABLE_FORMATS:
            return (
                "dataset.path",
                f"{path.suffix} files are not supported; give an image folder (one sub-folder "
                f"per class) or a {', '.join(sorted(TABLE_FORMATS))} file",
            )
        check = _check_folder if path.is_dir() else _check_table
        if problem := check(path, args.dataset):
            return problem
    if args.model.startswith((".", "/", "~")):
        path = relative_to(args.model, study_dir)
        if not (path / "config.json").is_file():
            return ("model", f"{path} is not a model folder (no config.json)")
    return None


def _check_folder(folder: Path, spec: ImageDatasetArgs) -> tuple[str, str] | None:
    """An image folder's classes (its sub-folders) and images, before any trial."""
    by_class = {label: files for label, files in class_images(folder).items() if files}
    counts = {label: len(files) for label, files in by_class.items()}
    problem = check_classes(counts, spec.validation_fraction, spec.test_fraction, "images")
    if problem is not None:
        why, small = problem
        if not small:
            return "dataset.path", f"{folder}: {why} (one sub-folder of images per class)"
        named = "; ".join(f"{c!r} has {plural(counts[c], 'image')}" for c in small[:SHOWN])
        more = f"; {len(small) - SHOWN} more folders too" if len(small) > SHOWN else ""
        return "dataset.path", f"{folder}: too few images in a class folder: {named}{more}; {why}"
    files = [file for group in by_class.values() for file in group]
    bad = unreadable_images(files)
    if bad:
        shown = "; ".join(f"{files[i].relative_to(folder)} ({why})" for i, why in bad[:SHOWN])
        return "dataset.path", f"{folder}: {_cannot_be_read(bad, shown)}"
    return None


def _check_table(table: Path, spec: ImageDatasetArgs) -> tuple[str, str] | None:
    """A table's columns, labels, image paths and images, before any trial."""
    columns = {"image_column": spec.image_column, "label_column": spec.label_column}
    problem = check_columns(table, columns) or check_label_column(
        table, spec.label_column, spec.validation_fraction, spec.test_fraction
    )
    if problem:
        return problem
    paths = read_column(table, spec.image_column)
    files = [relative_to(str(p), table.parent) for p in paths.values]
    field = "dataset.image_column"
    missing = [i for i, file in enumerate(files) if not file.is_file()]
    if missing:
        first = missing[:SHOWN]
        shown = "; ".join(
            f"{paths.values[i]} ({paths.unit} {n})"
            for i, n in zip(first, paths.numbers(first), strict=True)
        )
        more = f"; {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        return field, (
            f"{table.name}: {spec.image_column!r} names {plural(len(missing), 'file')} that "
            f"{'does' if len(missing) == 1 else 'do'} not exist: {shown}{more}; image paths "
            "start at the table's folder"
        )
    bad = unreadable_images(files)
    if bad:
        lines = paths.numbers([i for i, _ in bad[:SHOWN]])
        shown = "; ".join(
            f"{paths.values[i]} ({paths.unit} {n}: {why})"
            for (i, why), n in zip(bad[:SHOWN], lines, strict=True)
        )
        return field, f"{table.name}: {_cannot_be_read(bad, shown)}"
    return None


def _cannot_be_read(bad: list[tuple[int, str]], shown: str) -> str:
    more = f"; {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    them = "it" if len(bad) == 1 else "them"
    return f"{plural(len(bad), 'image')} cannot be read: {shown}{more}; replace or remove {them}"


def save_model(checkpoint: Path, target: Path, args: dict[str, Any], study_dir: Path) -> None:
    """Export hook: a loadable model folder (weights and image processor)."""
    from trainers.hf_export import save_hf_model

    base = resolve_model(str(args.get("model") or ""), study_dir)
    save_hf_model(checkpoint, target, base, None, preprocessor="image")


train.args_model = ImageClassificationArgs  # type: ignore[attr-defined]
train.recognises_data = recognises_data  # type: ignore[attr-defined]  # hpo init
train.draft_study = draft_study  # type: ignore[attr-defined]  # hpo init
train.check_files = check_files  # type: ignore[attr-defined]
train.check_args = check_args  # type: ignore[attr-defined]
train.resolve_model = resolve_model  # type: ignore[attr-defined]
train.save_model = save_model  # type: ignore[attr-defined]
train.hub_ids = {}  # type: ignore[attr-defined]
train.task = "image-classification"  # type: ignore[attr-defined]
