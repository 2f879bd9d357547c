"""What a draft proposes, and the sizing rules every task's draft shares.

From the class counts alone: how much of the data validates and tests, which metric is
the objective (accuracy for balanced classes, macro F1 otherwise), how many trials the
budget holds, whether each trial trains on a sample, and the findings that say so. Each
task adds its own search space and the findings only its data has (text lengths, image
sizes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SEARCH_SAMPLE = 4_000  # training examples per trial while searching a large data set
RARE = 10  # a class with fewer examples makes a noisy validation score


@dataclass
class Draft:
    """A trainer's proposal for a study on one data set."""

    args: dict[str, Any]
    search_space: dict[str, dict[str, Any]]
    budget: dict[str, Any]
    objective: dict[str, str]
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None
    findings: list[str] = field(default_factory=list)  # why these choices, as comments
    notes: dict[str, str] = field(default_factory=dict)  # args key -> a comment beside it


@dataclass(frozen=True)
class Sizing:
    """The shared rules' reading of one data set's class counts."""

    counts: Counter[str]
    n: int  # examples: rows of a table, images of a folder
    noun: str  # what an example is, in findings: "examples", "images"
    held_out: float  # validation_fraction and test_fraction each
    n_train: int
    balance: float  # smallest class / largest class
    metric: str
    n_trials: int


def size(counts: Counter[str], n: int, noun: str) -> Sizing:
    """Held-out share, objective and trials for ``n`` examples with these class counts."""
    held_out = 0.1 if n >= 5_000 else 0.2
    n_train = int(n * (1 - 2 * held_out))
    balance = min(counts.values()) / max(counts.values())
    metric = "eval_accuracy" if balance >= 0.5 else "eval_f1"
    n_trials = 8 if n_train <= 1_000 else 16 if n_train <= SEARCH_SAMPLE else 24
    return Sizing(counts, n, noun, held_out, n_train, balance, metric, n_trials)


def objective_finding(sizing: Sizing, imbalance_fix: str = "") -> str:
    """Why the objective is accuracy or macro F1; ``imbalance_fix`` adds what else helps."""
    if sizing.metric == "eval_accuracy":
        return f"objective {sizing.metric}: the classes are balanced"
    return (
        f"objective {sizing.metric}: the classes are imbalanced (smallest/largest = "
        f"{sizing.balance:.2f}); macro F1 weighs every class{imbalance_fix}"
    )


def trials_finding(sizing: Sizing) -> str:
    """How many trials, for how many training examples."""
    return (
        f"{sizing.n_trials} trials for {sizing.n_train} training {sizing.noun}, Hyperband "
        "stops weak ones early"
    )


def hold_out(sizing: Sizing, dataset: dict[str, Any]) -> list[str]:
    """Set ``dataset``'s held-out fractions and training sample; the finding a sample has."""
    dataset.update(validation_fraction=sizing.held_out, test_fraction=sizing.held_out)
    if sizing.n_train <= SEARCH_SAMPLE:
        return []
    dataset["max_train_samples"] = SEARCH_SAMPLE
    return [
        f"each trial trains on {SEARCH_SAMPLE} of the {sizing.n_train} training "
        f"{sizing.noun}: remove max_train_samples to fine-tune the winner on all of them"
    ]


def rare_findings(sizing: Sizing, fix: str) -> list[str]:
    """A finding naming the classes too small to validate well, and ``fix`` for them."""
    rare = [label for label, count in sizing.counts.items() if count < RARE]
    if not rare:
        return []
    return [
        f"classes with under {RARE} {sizing.noun} ({', '.join(rare[:5])}) make noisy "
        f"validation scores; {fix}"
    ]


def propose(
    sizing: Sizing,
    *,
    args: dict[str, Any],
    search_space: dict[str, dict[str, Any]],
    max_epochs: int,
    findings: list[str],
    notes: dict[str, str] | None = None,
) -> Draft:
    """The draft: the task's args and space, with the shared budget, sampler and pruner."""
    return Draft(
        args=args,
        search_space=search_space,
        budget={"n_trials": sizing.n_trials, "timeout": "2h", "max_failures": 3},
        objective={"metric": sizing.metric, "direction": "maximize"},
        sampler={
            "type": "tpe",
            "multivariate": True,
            "n_startup_trials": max(4, sizing.n_trials // 4),
        },
        pruner={
            "type": "hyperband",
            "min_resource": 1,
            "max_resource": max_epochs,
            "reduction_factor": 3,
        },
        findings=findings,
        notes=notes or {},
    )


def most_common(counts: Counter[str], shown: int = 6) -> str:
    """``positive: 600, negative: 600``: the largest counts, and ``...`` for the rest."""
    text = ", ".join(f"{key}: {n}" for key, n in counts.most_common(shown))
    return text + (", ..." if len(counts) > shown else "")
