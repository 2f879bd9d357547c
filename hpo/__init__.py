"""hpo: hyperparameter search for fine-tuning, from one YAML study file, on Optuna."""

from __future__ import annotations

from hpo.budget import Summary
from hpo.config import StudyConfig, load_study
from hpo.errors import ConfigError, HpoError, StorageError
from hpo.runner import run_study
from hpo.trainer import NonFiniteError, TrainerFn, TrialContext

__all__ = [
    "ConfigError",
    "HpoError",
    "NonFiniteError",
    "StorageError",
    "StudyConfig",
    "Summary",
    "TrainerFn",
    "TrialContext",
    "load_study",
    "run_study",
]
__version__ = "0.1.0"
# The name to `pip install` (and of the installed metadata); "hpo" on PyPI is another project.
DISTRIBUTION = "hpo-finetune"
