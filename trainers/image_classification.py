"""Fine-tune a pretrained image classifier (CNN or ViT) with the HF ``Trainer``.

``train(ctx)`` loads the images (a folder with one sub-folder per class, a CSV / JSON
lines / Parquet file of image paths and labels, or a hub data set), splits them with the
study seed when they have no splits, preprocesses with the model's own image processor
(resize, normalization), augments the training split only, builds
``AutoModelForImageClassification`` (timm models too, through transformers' timm wrapper)
with this trial's dropout / drop-path and frozen stages, and hands the rest (reporting,
pruning, checkpoints, test split, error analysis with thumbnails) to :mod:`trainers._hf`.

The image files are read per batch, never held decoded: each split is a ``datasets``
data set of file paths whose ``Image`` feature decodes a file when a batch reads it, and
the batch is augmented and preprocessed then (:func:`image_split`), so a worker's memory
does not grow with the data set. The splits, the image processor and the base weights
stay in the worker process (:data:`trainers._hf.CACHE`). Augmentation uses PIL only
(torchvision is not needed).

For ``hpo init``, ``train.recognises_data`` claims image folders and tables of image
paths, and ``train.draft_study`` proposes a study for them (:mod:`trainers.drafts.image`:
classes, sizes, modes and balance read from the files; nothing is trained).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from hpo.contract import Trainer
from hpo.trainer import TrialContext
from hpo.trainers import _hf
from hpo.trainers._hf import HFTrainingArgs, relative_to
from hpo.trainers.dataset import LabelledDatasetArgs, missing_path, split
from hpo.trainers.drafts import check_columns, draft_image_classification, recognises_images
from hpo.trainers.image_files import TABLE_FORMATS, class_images
from hpo.trainers.labels import SHOWN, check_classes, check_label_column, plural, read_column
from hpo.trainers.model_facts import LAYOUTS

logger = logging.getLogger(__name__)

_AUTO_CLASS = "AutoModelForImageClassification"
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
    """Images and labels per split, and the label names (shared by trials).

    Each split's images are a ``datasets.Dataset`` whose ``image`` column holds file paths
    (or, from the hub, encoded bytes) and decodes a row to an RGB PIL image when it is read.
    """

    splits: dict[str, tuple[Any, list[int]]]
    names: dict[str, list[str]]  # per split: where each image came from
    label_names: list[str]


def load_images(spec: ImageDatasetArgs, ctx: TrialContext) -> Images:
    """List, check, label and split the images once per worker process (no pixels kept)."""
    key = ("images", spec.model_dump_json(), str(ctx.study_dir), ctx.seed)
    return _hf.cached(key, lambda: _load_images(spec, ctx.study_dir, ctx.seed))


def _load_images(spec: ImageDatasetArgs, study_dir: Path, seed: int) -> Images:
    if spec.hub:
        return _hub_images(spec, seed)  # needs internet: not exercised by the tests
    path = relative_to(spec.path or "", study_dir)
    files, labels = _folder_files(path) if path.is_dir() else _table_files(path, spec)
    kept = _decodable(files)
    files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    label_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(label_names)}
    names = [str(f.relative_to(path) if path.is_dir() else f.name) for f in files]
    parts = split([index[label] for label in labels], spec, seed)
    splits = {
        k: (image_files([files[i] for i in v]), [index[labels[i]] for i in v])
        for k, v in parts.items()
    }
    return Images(splits, {k: [names[i] for i in v] for k, v in parts.items()}, label_names)


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

    def column(split: Any) -> tuple[Any, list[int]]:
        labels = split[spec.label_column]
        labels = [x if isinstance(x, int) else label_names.index(x) for x in labels]
        images = split.select_columns([spec.image_column])
        if spec.image_column != "image":
            images = images.rename_column(spec.image_column, "image")
        return images.cast_column("image", datasets.Image(mode="RGB")), labels

    pool = column(raw["train"])
    parts = split(pool[1], spec, seed, set(raw))
    splits = {k: (pool[0].select(v), [pool[1][i] for i in v]) for k, v in parts.items()}
    splits.update({k: column(raw[k]) for k in ("validation", "test") if k not in parts})
    names = {k: [f"{k}[{i}]" for i in range(len(v[1]))] for k, v in splits.items()}
    return Images(splits, names, [str(n) for n in label_names])


def image_files(files: list[Path]) -> Any:
    """A ``datasets.Dataset`` of ``files``: its ``image`` column stores their paths, and
    ``datasets.Image`` decodes a file (an RGB PIL image) when a row is read."""
    import datasets

    features = datasets.Features({"image": datasets.Image(mode="RGB")})
    return datasets.Dataset.from_dict({"image": [str(f) for f in files]}, features=features)


def _decodable(files: list[Path]) -> list[int]:
    """The indices of the files whose pixels decode; each other file is skipped with a
    warning naming it.

    validate reads every image's header (:func:`unreadable_images`), but the pixels of a
    file with sound headers can still be broken (a truncated JPEG, a corrupt PNG stream):
    one such file must not fail every trial, so each file is decoded here once, one at a
    time, and its pixels dropped (batches decode it again; memory stays flat). A JPEG
    decodes at 1/8 scale (``Image.draft``), which still reads its whole stream.
    """
    from PIL import Image

    kept = []
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.draft(None, (1, 1))
                image.load()
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for broken data
            logger.warning("skipped %s: it cannot be decoded (%s); replace or remove it", file, e)
        else:
            kept.append(i)
    return kept


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


def image_split(
    images: Any, labels: list[int], processor: Any, args: Any = None, seed: int = 0
) -> Any:
    """A torch data set of ``images`` (a data set from :func:`image_files`) and ``labels``.

    Reading a batch (the DataLoader calls ``__getitems__``) decodes its files, augments
    them when ``args`` (the training split's) ask for it, and preprocesses them with the
    model's ``processor``: no pixels outlive the batch. Each augmentation is fresh, drawn
    from a generator seeded with ``seed``. A torch data set, not ``images.with_transform``
    handed to the Trainer: its ``remove_unused_columns`` (on by default) would drop the
    ``image`` column, which the model's forward does not name, before any transform ran.
    """
    import torch

    augmenting = args is not None and (
        args.augment_strength > 0
        or args.horizontal_flip
        or any(v for v in (args.crop_scale_min, args.rotation_degrees, args.color_jitter))
    )

    class Split(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.rng = random.Random(seed)

        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return self.__getitems__([i])[0]

        def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
            decoded = images[list(indices)]["image"]
            if augmenting:
                decoded = [augment(image, args, self.rng) for image in decoded]
            pixels = pixel_values(processor, decoded)
            return [
                {"pixel_values": p, "labels": labels[i]}
                for p, i in zip(pixels, indices, strict=True)
            ]

    return Split()


# --- model ------------------------------------------------------------------------------


def base_weights(model_path: str) -> tuple[Any, dict[str, Any]]:
    """The pretrained config and backbone weights (no head), read once per process."""
    return _hf.base_weights(_AUTO_CLASS, model_path)


def build_model(
    args: ImageClassificationArgs, model_path: str, label_names: list[str], seed: int
) -> Any:
    """A fresh model: this trial's dropout, backbone weights from memory, a seeded head,
    and its adapter (``args.adapter``) if it trains one."""
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
    model = _hf.with_adapter(model, args.adapter)
    # With an adapter, its layers in the frozen stages freeze too: it trains above them.
    freeze(_hf.unwrapped(model), args.freeze_layers)
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
    # One object per worker: the latency cache knows a split by its id.
    evaluation = _hf.cached(
        ("splits", model_path, args.dataset.model_dump_json(), str(ctx.study_dir), ctx.seed),
        lambda: {
            name: image_split(*images.splits[name], processor) for name in ("validation", "test")
        },
    )
    model = build_model(args, model_path, images.label_names, ctx.seed)
    train_images, train_labels = _without_a_lone_last_image(
        *images.splits["train"], model, args.per_device_train_batch_size
    )
    validation_images, _ = images.splits["validation"]
    data = _hf.Datasets(
        train=image_split(train_images, train_labels, processor, args, ctx.seed),
        validation=evaluation["validation"],
        test=evaluation["test"],
        label_names=images.label_names,
        example_inputs=lambda example, device: {
            "pixel_values": example["pixel_values"][None].to(device)
        },
        train_labels=train_labels,
        show_example=lambda i: {
            "text": images.names["validation"][i],
            "image": thumbnail(validation_images[i]["image"]),
        },
    )
    return _hf.fit(args, ctx, model, data)


def _without_a_lone_last_image(
    images: Any, labels: list[int], model: Any, batch_size: int
) -> tuple[Any, list[int]]:
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
    return images.select(range(len(labels) - 1)), labels[:-1]


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
    labels and image paths are read too. Modules ``adapter.target_modules`` names must be
    in a local model (:func:`trainers._hf.check_targets`).
    """
    if args.dataset.path:
        path = relative_to(args.dataset.path, study_dir)
        if problem := missing_path(path, folder=True):
            return problem
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
    problem = _hf.check_targets(_AUTO_CLASS, resolve_model(args.model, study_dir), args.adapter)
    if problem:
        return "adapter.target_modules", problem
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


def save_model(
    checkpoint: Path, target: Path, args: dict[str, Any], study_dir: Path, merge: bool = False
) -> None:
    """Export hook: a loadable model folder (weights and image processor); an adapter
    trial's adapter, or with ``merge`` the merged model."""
    from hpo.trainers.hf_export import save_hf_model

    base = resolve_model(str(args.get("model") or ""), study_dir)
    save_hf_model(checkpoint, target, base, None, "image", merge=merge)


# What hpo calls around train (hpo/contract.py): validate, export and hpo init.
TRAINER = Trainer(
    train,
    args_model=ImageClassificationArgs,
    check_args=check_args,
    check_files=check_files,
    resolve_model=resolve_model,
    save_model=save_model,
    task="image-classification",
    recognises_data=recognises_images,
    draft_study=draft_image_classification,
)
