"""Requirement lines for .ci/run's jobs, read from pyproject.toml so CI never drifts from it.

``newest``: every requirement hpo declares (its dependencies and those of the extras the
tests use), for ``pip install --upgrade``: the newest release under each cap.
``floors``: the oldest optuna and transformers pyproject claims, pinned (``optuna==5.0``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Extras the tests do not use (timm: an optional model family; bench: the benchmarks).
UNTESTED_EXTRAS = ("timm", "bench")
# The floors the floor job proves: what hpo's use of each library's internals depends on.
FLOORED = ("optuna", "transformers")


def newest(project: dict) -> list[str]:
    extras = [
        line
        for name, lines in project["optional-dependencies"].items()
        if name not in UNTESTED_EXTRAS
        for line in lines
        if not line.startswith("hpo-finetune")  # the test extra's own extras, listed here
    ]
    return project["dependencies"] + extras


def floors(project: dict) -> list[str]:
    pins = []
    for line in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", line)
        if match and match[1] in FLOORED:
            pins.append(f"{match[1]}=={match[2]}")
    return pins


if __name__ == "__main__":
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    print("\n".join({"newest": newest, "floors": floors}[sys.argv[1]](project)))
