"""Peak memory of the image trainer's data: loading a folder and reading every batch once.

Writes ``--images`` small drawn PNGs (``--px`` square, ten classes of bars; once, into
``--folder``) and a tiny ResNet whose image processor resizes to ``--size``, then, in a
fresh process, runs ``trainers.image_classification.train`` for one trial with
``trainers._hf.fit`` replaced by ``--epochs`` passes over the training and validation
splits and one over the test split, in batches of 64 (what a trial's epochs and
evaluations read; no model runs). The figure is the process's peak resident memory
(``VmHWM``), and its growth over the peak after the imports; the code measured is the
checkout ``--code`` names (default: this one), so an older commit's tree (``git archive
COMMIT | tar -x -C DIR``) measures its loading the same way.

    python benchmarks/image_memory.py [--images 20000] [--px 64] [--size 64]
        [--epochs 1] [--folder /tmp/hpo-images-20000-64] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, px: int) -> None:
    """``count`` PNGs in ten class folders: a bright bar at a class's angle on noise."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    for i in range(count):
        label = i % 10
        image = Image.new("RGB", (px, px), (rng.randint(0, 60),) * 3)
        draw = ImageDraw.Draw(image)
        at = rng.randint(px // 8, px - px // 8)
        shift = (label - 5) * px // 10
        draw.line((at - shift, 0, at + shift, px), fill=(255, 220, 200), width=max(1, px // 16))
        sub = folder / f"class{label}"
        sub.mkdir(parents=True, exist_ok=True)
        image.save(sub / f"{i:06d}.png")


def make_model(folder: Path, size: int) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(folder: Path, model: Path, code: Path, epochs: int) -> dict[str, float]:
    """Load and read every batch once with the trainer of ``code``; memory and seconds."""
    sys.path.insert(0, str(code))
    import optuna
    import torch
    from transformers import default_data_collator

    from hpo.trainer import TrialContext
    from hpo.trainers import _hf
    from hpo.trainers import image_classification as ic

    assert Path(ic.__file__).is_relative_to(code), ic.__file__
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    after_imports = peak_mb()
    batches = 0

    def one_pass(args, ctx, model, data):  # in place of _hf.fit: read what an epoch reads
        nonlocal batches
        for split in [data.train, data.validation] * epochs + [data.test]:
            loader = torch.utils.data.DataLoader(
                split, batch_size=64, collate_fn=default_data_collator
            )
            for batch in loader:
                assert batch["pixel_values"].ndim == 4
                batches += 1
        return {}

    _hf.fit = one_pass
    study = optuna.create_study(direction="maximize")
    ctx = TrialContext(
        trial=study.ask(),
        params={"model": str(model), "dataset": {"path": str(folder)}, "error_examples": 0},
        objective="eval_accuracy",
        seed=0,
        output_dir=folder.parent / "image-memory-trial",
        study_dir=folder.parent,
    )
    start = time.perf_counter()
    ic.train(ctx)
    seconds = time.perf_counter() - start
    peak = peak_mb()
    return {
        "peak_rss_mb": round(peak, 1),
        "after_imports_mb": round(after_imports, 1),
        "growth_mb": round(peak - after_imports, 1),
        "seconds": round(seconds, 1),
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--px", type=int, default=64, help="the images' side, in pixels")
    parser.add_argument("--size", type=int, default=64, help="the processor's side")
    parser.add_argument("--epochs", type=int, default=1, help="passes over train + validation")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=ROOT, help="the hpo checkout measured")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.folder or Path(f"/tmp/hpo-images-{args.images}-{args.px}")
    model = folder.parent / f"{folder.name}-resnet-{args.size}"
    if args.child:
        print(json.dumps(measure(folder, model, args.code.resolve(), args.epochs)))
        return
    if not folder.exists():
        make_images(folder, args.images, args.px)
    if not model.exists():
        make_model(model, args.size)
    # A fresh process: its peak holds nothing of the drawing above.
    child = [sys.executable, __file__, "--child", "--folder", str(folder)]
    child += ["--size", str(args.size), "--code", str(args.code), "--epochs", str(args.epochs)]
    result = subprocess.run(child, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"{args.images} images of {args.px}x{args.px} px, processor {args.size}, "
        f"{args.epochs} epoch(s), {args.code}"
    )
    print(json.dumps(figures))
    print(f"RESULT image_memory_peak_rss_mb={figures['peak_rss_mb']}")


if __name__ == "__main__":
    main()
