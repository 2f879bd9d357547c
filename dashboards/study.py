"""Reading a stored study for a report: never creates one, never rewrites its config.

A report only reads: it opens the study by name through hpo's read-only study view
(``hpo.view``), the one part of hpo that dashboards read a study through.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from hpo.errors import HpoError
from hpo.view import StudyView, open_view


def load_stored_study(config: Any) -> StudyView:
    """The stored study named in ``config``, read-only (see hpo.view.open_view)."""
    return open_view(config)


def strategy(view: StudyView) -> dict[str, Any]:
    """Objective, sampler and pruner the study ran with (its stored config, else the file)."""
    config = view.config
    stored = view.stored_config or config.stored_form()
    return {
        "objective": stored.get("objective") or config.objective.model_dump(),
        "sampler": stored.get("sampler") or {"type": "unknown"},
        "pruner": stored.get("pruner") or {"type": "none"},
    }


def require_trials(config: Any, counts: dict[str, int]) -> None:
    """Stop a report of a study that has no trials at all (one whose trials all failed
    still gets its report: the failures are what it shows).

    Raises:
        HpoError: the study has no trials (exit 1); nothing is written.
    """
    if counts:
        return
    raise HpoError(
        f"study {config.name!r} has no trials yet; nothing to report. "
        f"Run it first: {config.run_command()}"
    )


def require_completed(study: Any, config: Any, counts: dict[str, int]) -> None:
    """Stop a comparison of a study without a completed trial: it has no value to compare.

    Raises:
        HpoError: the study has no completed trial (exit 1); nothing is written.
    """
    if counts.get("COMPLETE"):
        return
    states = ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no trials"
    raise HpoError(
        f"study {config.name!r} has no completed trial yet ({states}); nothing to compare. "
        f"Run it first: {config.run_command()}"
    )


def sample_study(
    study: Any, completed: Sequence[Any], limit: int, best_number: int | None, seed: int = 0
) -> tuple[Any, int]:
    """The study itself, or an in-memory copy holding ``limit`` of its completed trials.

    Optuna's plot and importance builders draw every completed trial; past a few
    thousand the page gets heavy and the lines unreadable, so large studies are drawn
    from a seeded random sample that always keeps the best trial (the copy numbers its
    trials afresh).

    Returns:
        The study to draw and how many completed trials it holds.
    """
    import optuna

    if len(completed) <= limit:
        return study, len(completed)
    best = [t for t in completed if t.number == best_number]
    others = [t for t in completed if t.number != best_number]
    chosen = random.Random(seed).sample(others, limit - len(best)) + best
    copy = optuna.create_study(direction=study.direction, sampler=optuna.samplers.RandomSampler())
    copy.add_trials(sorted(chosen, key=lambda t: t.number))
    return copy, len(chosen)
