"""What a trainer module exports, how ``trainer.ref`` finds it, and the trainers hpo knows.

A trainer is a function ``train(ctx) -> dict[str, float]`` (see :mod:`hpo.trainer` for the
context it gets). A module may export ``TRAINER = Trainer(train, ...)`` beside it to offer
hooks: an args model and checks for ``hpo validate``, model facts, export and ``hpo init``
drafting. A study names the function (``module:train``); hpo finds the module's
``TRAINER`` through it, and a function without one is a trainer with no hooks.

Named trainers come from one registry (:func:`registered_trainers`): hpo's own and those
installed packages register under the ``hpo.trainers`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

# (field under trainer.args, message) when a check finds a problem, else None.
Problem = tuple[str, str] | None


@dataclass(frozen=True)
class Trainer:
    """A train function and the optional hooks hpo calls around it.

    Attributes:
        train: ``train(ctx) -> dict[str, float]``, called once per trial.
        args_model: a pydantic model of ``trainer.args`` (validation, ``hpo schema``).
        check_args: ``(args, search_space) -> Problem``: arguments that cannot work together.
        check_files: ``(args, study_dir) -> Problem``: a missing or unusable local file.
        describe_model: ``(args, study_dir, name) -> dict``: a base model's facts for
            ``hpo validate`` (where it resolves, architecture, size, licence...); a
            ``ValueError`` says why that candidate cannot train.
        resolve_model: ``(name, study_dir) -> str``: the base model's folder or hub id, as
            training resolves it (``hpo export``).
        save_model: ``(checkpoint, target, args, study_dir)``: write a loadable model
            folder from a checkpoint; a ``ValueError`` says why it cannot. A trainer
            without it cannot be exported. ``hpo export --merge`` passes ``merge=True``
            (merge an adapter into its base); a hook without that keyword cannot merge.
        hub_ids: packaged model alias -> hub id, for the model card.
        task: the Hugging Face task (the card's pipeline tag and loading snippet).
        recognises_data: ``(path) -> bool``: ``hpo init`` drafts this trainer's study for
            that data; a drafting trainer without it takes what no other recognises.
        draft_study: ``(path, **options) -> Draft``: ``hpo init``'s draft of a study.
    """

    train: Callable[..., dict[str, float]]
    args_model: type[BaseModel] | None = None
    check_args: Callable[[Any, dict[str, Any]], Problem] | None = None
    check_files: Callable[[Any, Path], Problem] | None = None
    describe_model: Callable[[Any, Path, str], dict[str, Any]] | None = None
    resolve_model: Callable[[str, Path], str] | None = None
    save_model: Callable[..., None] | None = None
    hub_ids: Mapping[str, str] = field(default_factory=dict)
    task: str = "text-classification"
    recognises_data: Callable[[Path], bool] | None = None
    draft_study: Callable[..., Any] | None = None


ENTRY_POINT_GROUP = "hpo.trainers"
# hpo's own trainers, as pyproject registers them: a checkout run without an install has
# no metadata to read them from (tests/test_contract.py keeps the two equal). hpo init
# asks the drafting ones in this order.
SHIPPED_TRAINERS = {
    "causal_lm": "hpo.trainers.causal_lm:train",
    "image_classification": "hpo.trainers.image_classification:train",
    "replay": "hpo.trainers.replay:train",
    "text_classification": "hpo.trainers.text_classification:train",
    "toy": "hpo.trainers.toy:train",
}
# Before hpo.trainers, the shipped trainers were a top-level `trainers` package; study
# files that name them so keep working (legacy_ref).
LEGACY_PACKAGE = "trainers"


def registered_trainers() -> dict[str, str]:
    """Every named trainer -> its ``trainer.ref``: hpo's own first, then other packages'.

    Another distribution registers a trainer with an entry point in the ``hpo.trainers``
    group (``name = "package.module:train"``); it cannot replace one of hpo's names.
    """
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    others = {name: ref for name, ref in sorted(found.items()) if name not in SHIPPED_TRAINERS}
    return {**SHIPPED_TRAINERS, **others}


def resolve_trainer(ref: str, study_dir: Path, *, path: str | None = None) -> Trainer:
    """The trainer ``ref`` (``module:attribute``) names, imported.

    The study's folder, then the working dir, come first on ``sys.path`` while the module
    imports (as ``python study.py`` would), and leave it afterwards. ``trainers.<name>``
    is the user's own ``trainers`` package when the study's folder or the working dir
    holds that module, else hpo's shipped ``hpo.trainers.<name>`` (:func:`legacy_ref`).

    Args:
        ref: ``module:function`` (its module's ``TRAINER`` supplies the hooks), or
            ``module:NAME`` of a :class:`Trainer`.
        study_dir: folder of the study file.
        path: the study file, for errors.

    Raises:
        ConfigError: the module cannot be imported, or holds no such trainer.
    """
    module_name, _, attribute = (legacy_ref(ref, study_dir) or ref).partition(":")
    try:
        module = _import(module_name, [study_dir, Path.cwd()])
    except ImportError as e:
        raise ConfigError(
            f"cannot import module {module_name!r} ({e}); check the name or install it",
            path=path,
            field="trainer.ref",
        ) from e
    found = getattr(module, attribute, None)
    if isinstance(found, Trainer):
        return found
    if not callable(found):
        raise ConfigError(
            f"module {module_name!r} has no function {attribute!r}",
            path=path,
            field="trainer.ref",
        )
    exported = getattr(module, "TRAINER", None)
    if isinstance(exported, Trainer) and exported.train is found:
        return exported
    return Trainer(found)  # a plain function: a trainer with no hooks


def as_trainer(train: Any) -> Trainer:
    """A Python object given as the trainer (``hpo.optimize(trainer=...)``), as a Trainer.

    A :class:`Trainer` is taken as it is; a plain function takes the hooks of its module's
    ``TRAINER`` when that exports this very function (as :func:`resolve_trainer` does for
    a ``trainer.ref``), else it is a trainer with no hooks.

    Raises:
        ConfigError: ``train`` is not callable.
    """
    if isinstance(train, Trainer):
        return train
    if not callable(train):
        raise ConfigError(
            f"expected a function train(ctx) -> dict or an hpo.Trainer, but got "
            f"{type(train).__name__}",
            field="trainer",
        )
    module = sys.modules.get(getattr(train, "__module__", None) or "")
    exported = getattr(module, "TRAINER", None)
    if isinstance(exported, Trainer) and exported.train is train:
        return exported
    return Trainer(train)


def trainer_ref(trainer: Trainer) -> str:
    """The ``trainer.ref`` a study run with a Python trainer records: ``module:name``.

    It names where the function came from (``__main__:train`` for one defined in a notebook
    or script); nothing imports it while the Python object is at hand. A name that is no
    identifier (a lambda) is written with ``_`` for the rest; a ``functools.partial``
    names the function it wraps.
    """
    train: Any = trainer.train
    while isinstance(train, functools.partial):
        train = train.func
    module = getattr(train, "__module__", None) or "__main__"
    name = getattr(train, "__name__", None) or type(train).__name__
    return f"{_identifier(module, dots=True)}:{_identifier(name)}"


def _identifier(text: str, *, dots: bool = False) -> str:
    """``text`` with every character an identifier cannot hold as ``_``."""
    allowed = r"[^\w.]" if dots else r"[^\w]"
    cleaned = re.sub(allowed, "_", text)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"_{cleaned}"


def legacy_ref(ref: str, study_dir: Path) -> str | None:
    """The ref to write for a ``trainers.<name>`` ref that means hpo's shipped trainer.

    None for every other ref, and when the user's own ``trainers`` package (beside the
    study file or in the working dir) holds that module.
    """
    module_name, _, attribute = ref.partition(":")
    if module_name.partition(".")[0] != LEGACY_PACKAGE or module_name == LEGACY_PACKAGE:
        return None
    if _find_local(module_name, [study_dir, Path.cwd()]) is not None:
        return None
    current = f"hpo.{module_name}"
    try:
        shipped = importlib.util.find_spec(current)
    except ImportError:
        return None
    return f"{current}:{attribute}" if shipped is not None else None


def _import(module_name: str, folders: list[Path]) -> Any:
    """``module_name`` imported with ``folders`` first on ``sys.path`` for the import only.

    A module of the same top-level name imported from elsewhere (another study's folder in
    this process, a sweep's or the tests'; an installed package) is forgotten first when
    ``folders`` hold one: this study gets its own, as a fresh process would.
    """
    top = module_name.partition(".")[0]
    local = _find_local(top, folders) if top != "hpo" else None
    cached = sys.modules.get(top)
    if local is not None and cached is not None and _location(cached) != _location(local):
        for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
            del sys.modules[name]
    added = [str(f) for f in dict.fromkeys(folders) if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        return importlib.import_module(module_name)
    finally:
        for entry in added:  # the module may have changed sys.path itself: keep that
            if entry in sys.path:
                sys.path.remove(entry)


def _location(found: ModuleSpec | ModuleType) -> Path | list[Path]:
    """Where a module (or a found one) is: its file, or a namespace package's folders."""
    spec = found if isinstance(found, ModuleSpec) else found.__spec__
    if spec is not None and spec.origin and spec.has_location:
        return Path(spec.origin).resolve()
    folders = (spec.submodule_search_locations if spec is not None else None) or []
    return [Path(f).resolve() for f in folders]


def _find_local(module_name: str, folders: list[Path]) -> ModuleSpec | None:
    """Where ``module_name`` is in ``folders`` (found, not imported); None if not there.

    hpo's own folders are not the user's: a checkout's ``trainers/`` is ``hpo.trainers``.
    """
    importlib.invalidate_caches()  # a folder's listing may be cached from before its files
    shipped = Path(__file__).resolve().parents[1] / LEGACY_PACKAGE
    parts = module_name.split(".")
    search: list[str] | None = [str(f) for f in folders]
    spec = None
    for depth in range(1, len(parts) + 1):
        if search is None:
            return None  # a module, not a package: it has no submodules
        spec = PathFinder.find_spec(".".join(parts[:depth]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or []) or None
        if depth == 1 and any(Path(p).resolve() == shipped for p in search or []):
            return None
    return spec


def load_registered_trainers() -> dict[str, Trainer]:
    """``trainer.ref`` -> trainer, of every registered trainer (hpo's and other packages').

    One that cannot be imported (a broken install) is left out with a warning: the others
    still draft studies and make the schema.
    """
    found = {}
    for name, ref in registered_trainers().items():
        try:
            found[ref] = resolve_trainer(ref, Path.cwd())
        except ConfigError as e:
            logger.warning("trainer %s (%s) is left out: %s", name, ref, e)
    return found
