"""A held-out text task for ``peer.py``: which library a docstring's first sentence is from.

``peer.py`` is tuned on nothing, but its shipped data (``studies/data/reviews.csv``) is
the one set the trainer's defaults were ever tried on. This writes a second, unlike one
from text already on the machine, with no download: the first sentence of public
functions' and classes' docstrings in the first 8 libraries of ``LIBRARIES`` that import
and have enough of them, labelled by library. Real English
written by many authors, short like the issue's topic texts, 8 classes, balanced,
deduplicated and seeded.

    python benchmarks/make_docstring_topics.py /tmp/topics.csv [--per-class 180]
    python benchmarks/peer.py --csv /tmp/topics.csv --text-column text --label-column topic
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import pkgutil
import random
import re
import warnings
from pathlib import Path

# Installed with hpo's own dependencies (scipy, pyarrow, jinja2 come with them); quiet to
# import. The set depends on the installed versions, so record them beside a figure.
LIBRARIES = ("numpy", "scipy", "pandas", "sklearn", "sqlalchemy", "pyarrow", "pydantic",
             "jinja2", "huggingface_hub", "accelerate", "datasets")  # fmt: skip
WORDS = (6, 40)  # a sentence shorter than this says nothing; longer is rare and slow


def first_sentence(doc: str) -> str | None:
    paragraph = re.split(r"\n\s*\n", inspect.cleandoc(doc).strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if not WORDS[0] <= len(sentence.split()) <= WORDS[1] or ">>>" in sentence:
        return None
    return sentence


def sentences(library: str) -> set[str]:
    """Docstring first sentences of the library's public functions and classes."""
    found: set[str] = set()
    package = importlib.import_module(library)
    modules = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), f"{library}."):
        if any(part.startswith("_") or part in {"tests", "testing"}
               for part in info.name.split(".")[1:]):  # fmt: skip
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # optional extras not installed: skip that module
            continue
    for module in modules:
        for name, member in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(member) or inspect.isclass(member)):
                continue
            if not getattr(member, "__module__", "").startswith(library):
                continue  # re-exported from elsewhere: not this library's text
            doc = member.__doc__
            if isinstance(doc, str) and (sentence := first_sentence(doc)):
                found.add(sentence)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=180)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    by_library: dict[str, list[str]] = {}
    warnings.simplefilter("ignore")
    for library in LIBRARIES:
        if len(by_library) == args.classes:
            break
        try:
            found = sorted(sentences(library))
        except ImportError:
            continue
        if len(found) >= args.per_class:
            by_library[library] = found
    if len(by_library) < args.classes:
        raise SystemExit(f"only {len(by_library)} libraries with {args.per_class} sentences")
    seen: set[str] = set()
    rows = []
    for library, found in by_library.items():
        fresh = [s for s in found if s not in seen]  # a sentence two libraries share: dropped
        for sentence in rng.sample(fresh, min(args.per_class, len(fresh))):
            seen.add(sentence)
            rows.append({"text": sentence, "topic": library})
    rng.shuffle(rows)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "topic"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {lib: sum(r["topic"] == lib for r in rows) for lib in by_library}
    print(f"wrote {len(rows)} texts to {args.out}: {counts}")


if __name__ == "__main__":
    main()
