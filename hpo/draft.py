"""A commented study file from a trainer's draft: what ``hpo init DATA`` writes.

The trainer looks at the data and proposes args, a space and a budget (its
``draft_study`` hook); this module only lays the proposal out as YAML, with the trainer's
findings as comments, so the file explains itself and passes ``hpo validate`` unchanged.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import yaml

from hpo.config import DEFAULT_STORAGE


def study_name(stem: str) -> str:
    """A study name from a file name: letters, digits, ``-``, ``_`` and ``.`` only.

    No leading ``.``: the name is a folder under output_dir (``config.check_folder_name``).
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).lstrip(".-").rstrip("-") or "study"


def render_study(
    draft: Any, *, name: str, trainer_ref: str, data: str, storage: str | None = None
) -> str:
    """The study file's text for ``draft`` (a ``hpo.trainers.drafts.Draft``)."""
    storage = storage or DEFAULT_STORAGE
    notes = getattr(draft, "notes", {})  # an older trainer's draft may have none
    lines = [
        f"# Drafted by `hpo init {data}` on {dt.date.today().isoformat()} from what the data "
        "holds:",
        *(f"#   - {finding}" for finding in draft.findings),
        "# Check it with `hpo validate THIS_FILE`; run it with `hpo run THIS_FILE`.",
        f"name: {_flow(name)}",
        f"storage: {_flow(storage)}"
        + (
            "  # one machine; many: postgresql+psycopg2://USER:${HPO_DB_PASSWORD}@HOST/DB"
            if storage.startswith("sqlite")
            else ""
        ),
        "seed: 42                           # seeds the sampler, the data split and training",
        f"objective: {_flow(draft.objective)}",
        f"sampler: {_flow(draft.sampler)}",
    ]
    if draft.pruner:
        lines.append(f"pruner: {_flow(draft.pruner)}  # stops trials that lag after an epoch")
    lines += [
        f"budget: {_flow(draft.budget)}  # n_trials is the total; a rerun resumes",
        "trainer:",
        f"  ref: {trainer_ref}",
        "  args:                             # relative paths start at this file's folder",
        *(_arg_line(key, value, notes.get(key)) for key, value in draft.args.items()),
        "search_space:                       # bounds are inclusive",
        *(f"  {key}: {_flow(spec)}" for key, spec in draft.search_space.items()),
        "output_dir: runs                    # checkpoints: runs/<name>/trial-NNNN/",
    ]
    return "\n".join(lines) + "\n"


def _arg_line(key: str, value: Any, note: str | None) -> str:
    line = f"    {key}: {_flow(value)}"
    return f"{line}  # {note}" if note else line


def _flow(value: Any) -> str:
    """``value`` as one line of YAML that reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()
