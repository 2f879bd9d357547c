"""hpo: hyperparameter search for fine-tuning, from one YAML study file, on Optuna."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

from hpo.api import StudyResult, best, optimize, pareto_front, study_status
from hpo.budget import Summary
from hpo.config import StudyConfig, load_study
from hpo.contract import Trainer
from hpo.errors import ConfigError, HpoError, StorageError
from hpo.runner import run_study
from hpo.trainer import NonFiniteError, TrainerFn, TrialContext

__all__ = [
    "ConfigError",
    "HpoError",
    "NonFiniteError",
    "StorageError",
    "StudyConfig",
    "StudyResult",
    "Summary",
    "Trainer",
    "TrainerFn",
    "TrialContext",
    "best",
    "load_study",
    "optimize",
    "pareto_front",
    "run_study",
    "study_status",
]
__version__ = "0.1.0"
# The name to `pip install` (and of the installed metadata); "hpo" on PyPI is another project.
DISTRIBUTION = "hpo-finetune"


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """``hpo.trainers`` and ``hpo.dashboards`` of a checkout: the folders beside ``hpo/``.

    Installed (a wheel, or ``pip install -e .``), pyproject's ``package-dir`` makes them
    hpo's subpackages; run from the repository without an install (PYTHONPATH, ``python
    -m hpo`` in the checkout) nothing would. First on ``sys.meta_path``, so hpo always
    pairs with the trainers beside it, never another install's (an editable install's
    finder answers for its own checkout).
    """

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def _map_checkout() -> None:
    """Install :class:`_CheckoutFinder` when hpo runs from a checkout (not from a wheel)."""
    here = Path(__file__).resolve().parent
    folders = {
        f"hpo.{name}": here.parent / name
        for name in ("trainers", "dashboards")
        if not (here / name).is_dir() and (here.parent / name / "__init__.py").is_file()
    }
    if folders and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder(folders))


_map_checkout()
