"""A commented study file from a trainer's draft: what ``hpo init DATA`` writes.

The trainer looks at the data and proposes args, a space and a budget (its
``draft_study`` hook); this module picks the trainer, asks it, lays the proposal out as
YAML with the trainer's findings as comments, so the file explains itself, and writes it
only if it passes ``hpo validate`` unchanged.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import re
from pathlib import Path
from typing import Any

import yaml

from hpo.config import DEFAULT_STORAGE, load_study
from hpo.contract import load_registered_trainers, resolve_trainer
from hpo.errors import ConfigError


def write_drafted_study(
    data: Path,
    output: Path,
    *,
    trainer_ref: str | None = None,
    options: dict[str, str] | None = None,
    storage: str | None = None,
    force: bool = False,
) -> Any:
    """Draft a study for ``data`` with a trainer's ``draft_study`` hook; write ``output``.

    Args:
        data: the user's table or image folder.
        output: the study file to write; its folder is where the file's paths start.
        trainer_ref: the drafting trainer (default: :func:`drafting_trainer` picks one).
        options: the ``hpo init`` flags given (``model``, ``text_column``, ...).
        storage: the study's storage URL (default: ``DEFAULT_STORAGE``).
        force: replace an existing ``output``.

    Returns:
        The trainer's draft (its ``findings`` say why it looks as it does).

    Raises:
        ConfigError: ``output`` exists, ``data`` is missing or the trainer refuses it, a
            flag the trainer's draft does not take, or a file that would not validate
            (nothing is left written).
    """
    options = options or {}
    if output.exists() and not force:
        raise ConfigError(f"{output} exists; choose another -o FILE or pass --force", field="-o")
    if not data.exists():
        raise ConfigError(
            f"{data} does not exist; give a table (CSV, TSV, JSON lines, Parquet) or an image "
            "folder with one sub-folder per class"
        )
    ref = trainer_ref or drafting_trainer(data)
    draft_study = resolve_trainer(ref, Path.cwd(), path=None).draft_study
    if draft_study is None:
        raise ConfigError(f"{ref} cannot draft a study (no draft_study hook)")
    _check_options(options, draft_study, ref)
    try:
        draft = draft_study(data, **options)
    except ValueError as e:
        raise ConfigError(str(e), path=str(data)) from None
    # trainer.args paths resolve against the study file's folder.
    draft.args["dataset"]["path"] = _path_from(output, data)
    model = options.get("model")
    if model and Path(model).expanduser().exists():
        local = _path_from(output, Path(model).expanduser())
        draft.args["model"] = local if local.startswith(("/", ".")) else f"./{local}"
    text = render_study(
        draft, name=study_name(data.stem), trainer_ref=ref, data=str(data), storage=storage
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    try:
        load_study(output)  # the promise: it validates as written
    except ConfigError:
        output.unlink()
        raise
    return draft


def drafting_trainer(data: Path) -> str:
    """The ``trainer.ref`` that ``hpo init`` drafts ``data`` with (images or text).

    Of the registered trainers with a ``draft_study`` hook, the first whose
    ``recognises_data`` takes the data; else the first without that hook (text), which
    takes whatever the others do not.
    """
    trainers = load_registered_trainers()
    drafting = [(ref, t) for ref, t in trainers.items() if t.draft_study is not None]
    for ref, trainer in drafting:
        if trainer.recognises_data is not None and trainer.recognises_data(data):
            return ref
    return next(ref for ref, trainer in drafting if trainer.recognises_data is None)


def _check_options(options: dict[str, str], draft_study: Any, ref: str) -> None:
    """Refuse an init flag this trainer's draft does not take."""
    taken = inspect.signature(draft_study).parameters
    for name in options:
        if name not in taken:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to {ref} drafts; leave it out")


def _path_from(output: Path, path: Path) -> str:
    """``path`` relative to the study file's folder; absolute when that is far away."""
    relative = os.path.relpath(path.resolve(), output.resolve().parent)
    return str(path.resolve()) if relative.startswith(f"..{os.sep}..") else relative


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


# The quickstart hpo ships: pyproject's package-data puts studies/ under hpo/studies in a
# wheel, so an install without the repository (no studies/ folder) can still run it.
EXAMPLE_FILES = ("quickstart.yaml", "data/reviews.csv")


def example_folder() -> Path:
    """Where this install keeps the example study: ``hpo/studies`` installed from a wheel,
    the repository's ``studies/`` in a checkout or an editable install."""
    here = Path(__file__).resolve().parent
    for folder in (here / "studies", here.parent / "studies"):
        if all((folder / name).is_file() for name in EXAMPLE_FILES):
            return folder
    raise ConfigError(f"this install of hpo ships no example study (looked in {here})")


def write_example(folder: Path, *, force: bool = False) -> list[Path]:
    """Copy the quickstart study and its data into ``folder`` (``hpo init --example``).

    Raises:
        ConfigError: a file it would write exists (and ``force`` is off); nothing is written.
    """
    import shutil

    source = example_folder()
    targets = [folder / name for name in EXAMPLE_FILES]
    existing = [str(t) for t in targets if t.exists() or t.is_symlink()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} exists; choose another folder or pass --force", field="--example"
        )
    for name, target in zip(EXAMPLE_FILES, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    return targets
