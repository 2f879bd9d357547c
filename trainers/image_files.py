"""Which files the image trainer reads: image suffixes, tables of paths, class folders.

Shared by the trainer (:mod:`trainers.image_classification`) and its ``hpo init`` draft
(:mod:`trainers.drafts.image`), so both see the same images in the same order.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def class_images(folder: Path) -> dict[str, list[Path]]:
    """Each class sub-folder's image files, sorted; nested folders count for their class.

    Hidden sub-folders (``.ipynb_checkpoints``, ``.git``) are no classes.
    """
    return {
        sub.name: [f for f in sorted(sub.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        if not sub.name.startswith(".")
    }
