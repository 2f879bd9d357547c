"""Make the digits study's data and base model: ``python studies/data/make_digits.py``.

scikit-learn's bundled hand-written digits (1,797 real 8x8 scans, no download) become
an image folder ``studies/data/digits/<digit>/NNNN.png`` with digits 5-9 (what the
study fine-tunes on), and a small ResNet (an HF ``ResNetConfig`` model, ~80k
parameters) is pre-trained here on digits 0-4 and saved with ``save_pretrained`` plus
its image processor to ``studies/data/digits-resnet/``: a real transfer-learning run
with no pretrained CNN available offline. Seeded; takes about half a minute on 2 cores.
Neither output is committed (see .gitignore).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 32  # the processor enlarges the 8x8 scans; the ResNet stem downsamples 4x


def write_images(folder: Path, digits: range) -> int:
    """PNG files, one sub-folder per digit; returns how many were written."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    count = 0
    for i, (pixels, label) in enumerate(zip(data.images, data.target, strict=True)):
        if label not in digits:
            continue
        sub = folder / str(label)
        sub.mkdir(parents=True, exist_ok=True)
        # The scans are 0..16 ink; white ink on black, as stored.
        image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        image.save(sub / f"{i:04d}.png")
        count += 1
    return count


def pretrain(target: Path, digits: range, epochs: int, seed: int) -> float:
    """Train a small ResNet on ``digits`` and save it with its image processor.

    Returns the accuracy on a held-out quarter of those digits.
    """
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    data = load_digits()
    keep = np.isin(data.target, list(digits))
    images = [
        Image.fromarray((p * (255 / 16)).astype(np.uint8), mode="L").convert("RGB")
        for p in data.images[keep]
    ]
    labels = data.target[keep] - digits.start
    processor = ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,  # bilinear
    )
    pixels = torch.as_tensor(processor(images, return_tensors="np")["pixel_values"])
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, torch.as_tensor(labels), test_size=0.25, random_state=seed, stratify=labels
    )
    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=len(digits),
        id2label={i: str(d) for i, d in enumerate(digits)},
        label2id={str(d): i for i, d in enumerate(digits)},
    )
    model = ResNetForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            loss = model(pixel_values=train_x[batch], labels=train_y[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(pixel_values=test_x).logits.argmax(-1) == test_y).float().mean())
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where digits/ and the model go")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    n = write_images(options.out / "digits", range(5, 10))
    print(f"wrote {n} images of digits 5-9 to {options.out / 'digits'}")
    accuracy = pretrain(options.out / "digits-resnet", range(0, 5), options.epochs, options.seed)
    print(f"pre-trained digits-resnet on digits 0-4: held-out accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
