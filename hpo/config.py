"""Study files: YAML in, one validation pass, frozen pydantic models out.

``load_study(path, overrides)`` reads YAML with the safe loader, applies ``--set a.b=c``
overrides to the raw mapping, and validates once. Every problem becomes a
:class:`~hpo.errors.ConfigError` that names the file, the dotted field and the fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from hpo.contract import Trainer, as_trainer, resolve_trainer, trainer_ref
from hpo.errors import ConfigError, FieldValueError
from hpo.registry import MULTI_OBJECTIVE_SAMPLERS, PrunerSpec, SamplerSpec
from hpo.source import (
    Source,
    apply_override,
    expand_env,
    mapping_source,
    name_as_written,
    read_source,
    validation_problems,
    yaml_text,
)
from hpo.space import SearchSpace
from hpo.storage import ENV_VAR, check_url, redact_url

DEFAULT_STORAGE = "sqlite:///hpo.db"
DEFAULT_KEEP_CHECKPOINTS = 3  # trials whose checkpoints stay (README: The study file)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": _DURATION.pattern},
        {"type": "null"},
    ]
}
# `name: 2026` is taken as written (see hpo.source.name_as_written): editors should agree.
_NAME_SCHEMA = {
    "anyOf": [
        # One folder name (see check_folder_name): no separator or NUL, no leading dot.
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "pattern": r"^[^./\\\x00][^/\\\x00]*$",
        },
        {"type": ["number", "boolean"]},
    ]
}
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A study name is a folder (output_dir/<name>/): a separator, or a NUL, would make it a path.
_NOT_IN_A_FOLDER_NAME = re.compile(r"[/\\\x00]+")
MAX_FOLDER_NAME_BYTES = 255  # NAME_MAX of the usual Linux and macOS file systems
# Storage URLs may hold a password: they keep ${VAR} and are expanded only when opened.
KEEP_UNEXPANDED = {("storage",), ("warm_start", "storage")}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Model):
    """Which returned metric the sampler optimizes, and in which direction."""

    metric: str = "eval_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"


class Constraint(_Model):
    """A bound a trial's returned metric must keep to be feasible (``max`` and/or ``min``)."""

    metric: str = Field(min_length=1)
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Constraint:
        if self.max is None and self.min is None:
            raise ValueError(f"give `max` or `min` for {self.metric!r}")
        return self

    def violation(self, metrics: dict[str, Any]) -> float:
        """How far ``metrics`` is outside the bound: <= 0 is feasible (Optuna's convention)."""
        value = metrics.get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return 1.0  # a trial that did not report the metric is not known to be feasible
        over = value - self.max if self.max is not None else -math.inf
        under = self.min - value if self.min is not None else -math.inf
        return float(max(over, under))


class Budget(_Model):
    """How much to run: ``n_trials`` is the study's total, not "N more"."""

    n_trials: PositiveInt
    timeout: Annotated[float | None, WithJsonSchema(_DURATION_SCHEMA)] = Field(
        None, description="seconds, or a string like 30m / 2h"
    )
    max_failures: NonNegativeInt = 3

    @field_validator("timeout", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError(f"expected a duration like 90s, 30m or 2h, but got {value!r}")
            number, unit = float(match[1]), match[2] or "s"
            return number * {"s": 1, "m": 60, "h": 3600}[unit]
        return value

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"timeout must be positive, but got {value}")
        return value


class Workers(_Model):
    """How workers share a study and how a dead one is noticed (heartbeats, seconds)."""

    heartbeat_interval: PositiveInt = 10
    grace_period: PositiveInt = 60
    max_retries: NonNegativeInt = 2


class WarmStart(_Model):
    """Seed this study with the best configurations of an earlier one."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_study: str = Field(alias="from", min_length=1)
    storage: str | None = None  # default: this study's storage
    top_k: PositiveInt = 5


class TrainerSpec(_Model):
    """The shared trainer function (``module:function``) and its fixed arguments."""

    ref: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ref")
    @classmethod
    def _ref_shape(cls, value: str) -> str:
        if not _REF.match(value):
            raise ValueError(
                f"expected 'module:function' (e.g. hpo.trainers.toy:train), but got {value!r}"
            )
        return value


class StudyConfig(_Model):
    """A validated study file; see ``studies/quickstart.yaml`` for every field."""

    name: Annotated[str, WithJsonSchema(_NAME_SCHEMA)] = Field(min_length=1, max_length=200)
    storage: str = DEFAULT_STORAGE
    seed: int | None = None
    # A list means several objectives (a multi-objective study with a Pareto front).
    objective: Objective | list[Objective] = Objective()
    constraints: list[Constraint] = Field(default_factory=list)
    sampler: SamplerSpec = Field(default_factory=lambda: {"type": "tpe"}, validate_default=True)
    pruner: PrunerSpec | None = None
    budget: Budget
    trainer: TrainerSpec
    search_space: SearchSpace = Field(min_length=1)
    workers: Workers = Workers()
    # A folder, or a URL of an object store (s3://bucket/prefix): hpo.object_store.
    output_dir: str = "runs"
    warm_start: WarmStart | None = None
    # Checkpoint retention: the best K trials' folders stay (with several objectives, the
    # Pareto front's); `all` or null keeps every trial's. K=3 so that a default study's disk
    # stays a few trials' worth (a MiniLM trial's checkpoint is about 0.27 GB).
    keep_checkpoints: PositiveInt | Literal["all"] | None = DEFAULT_KEEP_CHECKPOINTS
    # Where the file came from: relative data paths in trainer args resolve against it.
    source: Path | None = Field(None, exclude=True)
    # Fields that held ${VAR}: the stored config shows the template, never the value.
    env_templates: dict[str, str] = Field(default_factory=dict, exclude=True)
    # The --set overrides it was loaded with (not a YAML key): see run_command.
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        return check_folder_name(value)

    @field_validator("output_dir")
    @classmethod
    def _output_filesystem(cls, value: str) -> str:
        from hpo.object_store import check_output_dir

        check_output_dir(value)  # s3:// without s3fs: one line naming the extra
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        check_url(value)
        missing = [n for n in ENV_VAR.findall(value) if n not in os.environ]
        if missing:
            raise ValueError(
                f"environment variable {missing[0]} is not set; export it before running"
            )
        return value

    @model_validator(mode="after")
    def _griddable(self) -> StudyConfig:
        if self.sampler.type == "grid":
            for name, spec in self.search_space.items():
                try:
                    spec.grid_values()
                except ValueError as e:
                    raise FieldValueError(
                        f"search_space.{name}", f"the grid sampler needs discrete values: {e}"
                    ) from e
        return self

    @model_validator(mode="after")
    def _several_objectives(self) -> StudyConfig:
        if not isinstance(self.objective, list):
            return self
        metrics = [o.metric for o in self.objective]
        if not metrics:
            raise FieldValueError("objective", "give at least one {metric, direction}")
        if len(set(metrics)) != len(metrics):
            raise FieldValueError("objective", f"a metric appears twice in {metrics}")
        if len(metrics) > 1:
            if self.pruner is not None and self.pruner.type != "none":
                raise FieldValueError(
                    "pruner",
                    "Optuna cannot prune a study with several objectives (a trial's "
                    "intermediate values have one objective); remove `pruner` or keep one "
                    "objective",
                )
            if self.sampler.type not in MULTI_OBJECTIVE_SAMPLERS:
                raise FieldValueError(
                    "sampler",
                    f"{self.sampler.type} optimizes one objective; with several use "
                    f"one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
                )
            if isinstance(self.keep_checkpoints, int) and (
                "keep_checkpoints" in self.model_fields_set
            ):
                # An explicit K cannot be honoured: trials on a front have no ranking.
                raise FieldValueError(
                    "keep_checkpoints",
                    "ranks trials by one objective; remove it when `objective` is a list "
                    "(the Pareto front's checkpoints are kept) or write `all`",
                )
        return self

    @property
    def objectives(self) -> list[Objective]:
        """The objectives as a list (one for a single-objective study)."""
        return list(self.objective) if isinstance(self.objective, list) else [self.objective]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def checkpoint_limit(self) -> int | None:
        """How many trials' checkpoints stay; None keeps every trial's.

        With several objectives the limit is not a count: the Pareto front stays, whatever
        its size (see :mod:`hpo.checkpoints`); this returns its nominal K all the same.
        """
        return self.keep_checkpoints if isinstance(self.keep_checkpoints, int) else None

    def constraint_values(self, metrics: dict[str, Any]) -> list[float]:
        """One violation per constraint (<= 0: feasible), as Optuna's constraints_func wants."""
        return [c.violation(metrics) for c in self.constraints]

    def feasible(self, metrics: dict[str, Any]) -> bool:
        """True when ``metrics`` meets every constraint."""
        return all(v <= 0 for v in self.constraint_values(metrics))

    @property
    def study_dir(self) -> Path:
        """Folder of the study file (the working directory when there is none)."""
        return self.source.parent if self.source else Path.cwd()

    def run_command(self) -> str:
        """The ``hpo run`` command that runs this study as loaded, ``--set`` overrides included.

        Read-only commands suggest it when the study does not exist yet: without the
        overrides (``--set storage=...`` above all), pasting it would create the study
        somewhere else. Shell-quoted; a password in a URL is redacted.
        """
        import shlex

        parts = ["hpo", "run", str(self.source or "STUDY.yaml")]
        for override in self._overrides:
            parts += ["--set", redact_url(override)]
        return " ".join(shlex.quote(part) for part in parts)

    def stored_form(self) -> dict[str, Any]:
        """The resolved config as JSON data, safe to store in the study (no secrets)."""
        data = self.model_dump(mode="json")
        for dotted, template in self.env_templates.items():
            _put(data, dotted.split("."), template)
        data["storage"] = redact_url(self.storage)
        return data


def check_folder_name(name: str) -> str:
    """``name`` when it can be one folder inside another; else ValueError saying the fix.

    Study names become folders (``output_dir/<name>/`` for checkpoints, which ``hpo
    status`` measures and retention deletes in; ``dashboards/<name>/`` for reports), so
    this is the one gate every name passes at validation. A name that is a path (``/``,
    ``\\``, ``..``, absolute), hidden (a leading ``.``), holds a NUL or is too long for a
    folder is refused, not rewritten: the name stays the Optuna study name as written, and
    two names never share one folder.
    """
    if _NOT_IN_A_FOLDER_NAME.search(name) or name.startswith("."):
        fix = _NOT_IN_A_FOLDER_NAME.sub("-", name).lstrip(".-") or "study"
        raise ValueError(
            f"{name!r} becomes a folder under output_dir, so it may not contain '/' or "
            f"'\\', start with '.' or hold a NUL character; rename it, e.g. {fix!r}"
        )
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_FOLDER_NAME_BYTES:
        raise ValueError(
            f"is {size} bytes in UTF-8, but it becomes a folder under output_dir and a folder "
            f"name holds at most {MAX_FOLDER_NAME_BYTES}; rename it shorter"
        )
    return name


def _put(data: Any, key: list[str], value: Any) -> None:
    """Set ``value`` at a key path through mappings and lists (missing paths are skipped)."""
    for i, part in enumerate(key):
        last = i == len(key) - 1
        if isinstance(data, dict) and part in data:
            if last:
                data[part] = value
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            if last:
                data[int(part)] = value
            data = data[int(part)]
        else:
            return


def load_study(
    study: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    import_trainer: bool = True,
    trainer: Trainer | Callable[..., Any] | None = None,
    what: str = "--set",
) -> StudyConfig:
    """Read, override and validate a study file (or a study given as a mapping).

    Args:
        study: the YAML study file, or its content as a mapping (validated the same way,
            with the same messages; they name the field, as there is no file or line).
            A mapping's relative paths resolve against the working directory, a file's
            against its folder.
        overrides: ``key.path=value`` strings; values are parsed as YAML, so a whole
            mapping can be given (``sampler={type: random}``). Or a mapping of
            ``key.path`` to a Python value (``{"budget.n_trials": 3}``).
        import_trainer: also import ``trainer.ref`` and check ``trainer.args`` against it
            (what ``validate`` and ``run`` need). Off, no trainer code runs: for commands
            that only read the stored study (``status``, ``best``, ``report`` ...), since
            importing a module runs it (SECURITY.md).
        trainer: a Python trainer (a ``train(ctx)`` function or an :class:`hpo.Trainer`)
            to run instead of importing ``trainer.ref``: ``trainer.ref`` may be left out
            and becomes the function's ``module:name``; ``trainer.args`` are checked
            against its hooks.
        what: how errors name the overrides (``--set`` on the command line).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or fails validation; it
            carries every problem found (one line each, with the file's line numbers).
    """
    # Anything but a path is taken as a mapping (mapping_source says what it expected).
    if isinstance(study, str | os.PathLike):
        source = read_source(study)
    else:
        source = mapping_source(study)
    texts = override_texts(overrides, what=what)
    for override in texts:
        apply_override(source, override, what=what)
    resolved = None
    if trainer is not None:
        resolved = as_trainer(trainer)
        _use_trainer(source, resolved)
    config = validate_source(source, import_trainer=import_trainer, trainer=resolved)
    config._overrides = tuple(texts)
    return config


def override_texts(
    overrides: Sequence[str] | Mapping[str, Any] | None, *, what: str = "--set"
) -> list[str]:
    """Overrides as ``key.path=VALUE`` strings (a mapping's values written as YAML).

    Raises:
        ConfigError: a single string instead of a list (each character would be one).
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={yaml_text(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(
            f"{what} expects a list of key.path=value strings or a mapping, but got the "
            f"string {overrides!r}; write [{overrides!r}]"
        )
    return list(overrides)


def _use_trainer(source: Source, trainer: Trainer) -> None:
    """Record a Python trainer in the study as ``trainer.ref`` (its ``module:name``)."""
    section = source.data.setdefault("trainer", {})
    if isinstance(section, dict):  # anything else is a problem validation reports
        section["ref"] = trainer_ref(trainer)
        source.overridden.add(("trainer", "ref"))


def validate_source(
    source: Source, *, import_trainer: bool = True, trainer: Trainer | None = None
) -> StudyConfig:
    """Validate a read (and overridden) study file: every problem at once, with lines.

    ``import_trainer``: as in :func:`load_study`; off, ``trainer.ref`` is checked for its
    shape only, and ``trainer.args`` not at all. ``trainer``: the Python trainer that
    runs in place of ``trainer.ref``'s (its hooks check ``trainer.args``).
    """
    expand_env(source, keep=KEEP_UNEXPANDED)
    name_as_written(source, ("name",))
    problems = list(source.problems)
    config = None
    try:
        config = StudyConfig.model_validate(
            {**source.data, "source": source.path, "env_templates": source.templates}
        )
    except ValidationError as e:
        problems += validation_problems(
            e, source.data, model=StudyConfig, path=source.path, source=source
        )
        if import_trainer:
            problems += _trainer_args_problems(source, trainer)
    if (
        problems
        and {"base", "matrix", "studies"} & set(source.data)
        and "trainer" not in source.data
    ):
        raise ConfigError(
            "this is a sweep file (base, matrix, studies), not a study file; check it with "
            "`hpo sweep FILE --dry-run`",
            path=source.path,
        )
    if problems:
        raise ConfigError.join(source.in_order(_unique(problems)))
    assert config is not None  # no problems means it validated
    if not import_trainer:
        return config
    try:
        check_trainer(config, path=source.path, trainer=trainer)
    except ConfigError as e:
        raise source.locate(e) from None
    return config


def _trainer_args_problems(source: Source, given: Trainer | None = None) -> list[ConfigError]:
    """Problems in trainer.args even when other fields failed, so all are shown at once."""
    trainer = source.data.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("ref"), str):
        return []
    args = trainer.get("args") or {}
    study_dir = Path(source.path).parent if source.path else Path.cwd()
    try:
        args_model = (given or resolve_trainer(trainer["ref"], study_dir)).args_model
    except ConfigError:
        return []  # reported as trainer.ref already, or once the other fields are fixed
    if args_model is None or not isinstance(args, dict):
        return []
    try:
        args_model.model_validate(args)
    except ValidationError as e:
        return validation_problems(
            e, args, model=args_model, path=source.path, prefix=("trainer", "args"), source=source
        )
    return []


def _unique(problems: list[ConfigError]) -> list[ConfigError]:
    seen: dict[str, ConfigError] = {}
    for problem in problems:
        seen.setdefault(problem.one_line(), problem)
    return list(seen.values())


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, read with the safe loader (duplicates refused)."""
    source = read_source(path)
    if source.problems:
        raise ConfigError.join(source.problems)
    return source.data


def validate_study(raw: dict[str, Any], *, path: str) -> StudyConfig:
    """Validate a raw mapping into a :class:`StudyConfig`, or raise every problem at once."""
    try:
        return StudyConfig.model_validate({**raw, "source": path})
    except ValidationError as e:
        raise config_error(e, raw, path=path) from None


def config_error(
    error: ValidationError,
    raw: Any,
    *,
    path: str | None,
    prefix: str = "",
    model: type[BaseModel] | None = None,
    source: Source | None = None,
) -> ConfigError:
    """Every pydantic error (up to ten) as one ConfigError with dotted field paths."""
    problems = validation_problems(
        error,
        raw,
        model=model or StudyConfig,
        path=path,
        prefix=tuple(prefix.split(".")) if prefix else (),
        source=source,
    )
    return ConfigError.join(problems)


def check_trainer(
    config: StudyConfig, *, path: str | None, trainer: Trainer | None = None
) -> None:
    """Import ``trainer.ref`` (or take ``trainer``, a Python trainer given in its place) and
    check its args, so a typo fails before anything runs."""
    trainer = trainer or resolve_trainer(config.trainer.ref, config.study_dir, path=path)
    args_model = trainer.args_model
    if args_model is None:
        return
    try:
        args_model.model_validate(config.trainer.args)
    except ValidationError as e:
        raise config_error(
            e, config.trainer.args, path=path, prefix="trainer.args", model=args_model
        ) from None
    known = arg_paths(args_model)
    unknown = [name for name in config.search_space if name not in known]
    if unknown and args_model.model_config.get("extra") == "forbid":
        name = unknown[0]
        parent = name.rpartition(".")[0]
        # Suggestions and the list come from the same level: `adapter.rank` -> adapter's.
        siblings = [p for p in known if p.rpartition(".")[0] == parent] or [
            p for p in known if "." not in p
        ]
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        fix = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(sorted(siblings))}"
        raise ConfigError(
            f"{config.trainer.ref} takes no hyperparameter {name!r}; {fix}",
            path=path,
            field=f"search_space.{name}",
        )
    if trainer.check_args is not None:
        args = args_model.model_validate(config.trainer.args)
        problem = trainer.check_args(args, config.search_space)
        if problem:
            field, message = problem
            raise ConfigError(message, path=path, field=f"trainer.args.{field}")
    if trainer.check_files is not None:
        problem = trainer.check_files(
            args_model.model_validate(config.trainer.args), config.study_dir
        )
        if problem:
            field, message = problem
            raise ConfigError(message, path=path, field=f"trainer.args.{field}")
    describe_models(config, trainer, path=path)


def arg_paths(args_model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of a trainer's args model by its path: ``learning_rate``, and the fields
    of nested models too (``adapter.r``), which a search space may name."""
    paths = []
    for name, info in args_model.model_fields.items():
        paths.append(prefix + name)
        for nested in _models_in(info.annotation):
            if nested is not args_model:  # a model that holds itself: its top level only
                paths += arg_paths(nested, f"{prefix}{name}.")
    return paths


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or those in ``X | None``."""
    import types
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def model_candidates(config: StudyConfig) -> tuple[str, list[str]]:
    """The base models a study may train, and the field that names them.

    By the trainer contract the base model is the ``model`` argument: a categorical
    ``search_space.model`` makes each choice a candidate, else ``trainer.args.model`` is one.
    """
    spec = config.search_space.get("model")
    choices = getattr(spec, "choices", None)
    if choices is not None:
        return "search_space.model", [str(c) for c in choices]
    model = config.trainer.args.get("model")
    return "trainer.args.model", [str(model)] if model is not None else []


def describe_models(
    config: StudyConfig, trainer: Trainer | None = None, *, path: str | None = None
) -> list[dict[str, Any]]:
    """Each candidate's facts from the trainer's ``describe_model`` hook ([] without one).

    Raises:
        ConfigError: candidates are missing or unusable, or fail ``model_filter``; one
            problem per candidate, naming it and the reason.
    """
    if trainer is None:
        trainer = resolve_trainer(config.trainer.ref, config.study_dir, path=path)
    describe = trainer.describe_model
    if describe is None:
        return []
    args_model = trainer.args_model
    args: Any = (
        args_model.model_validate(config.trainer.args) if args_model else config.trainer.args
    )
    field, names = model_candidates(config)
    if not names:
        names = [str(args.model)] if hasattr(args, "model") else []
    facts, problems = [], []
    for name in names:
        try:
            facts.append(describe(args, config.study_dir, name))
        except ValueError as e:
            problems.append(ConfigError(f"{name}: {e}", path=path or _source(config), field=field))
    if problems:
        raise ConfigError.join(problems)
    return facts


def _source(config: StudyConfig) -> str | None:
    return str(config.source) if config.source else None


def study_schema(trainer_args: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schema of a study file, with ``trainer.args`` checked per ``trainer.ref``.

    Args:
        trainer_args: each known ``trainer.ref`` and the args model its function exposes;
            other refs keep free-form args.
    """
    schema = StudyConfig.model_json_schema()
    for internal in ("source", "env_templates"):
        schema["properties"].pop(internal, None)
    defs = schema.setdefault("$defs", {})
    rules = []
    for ref, args_model in sorted(trainer_args.items()):
        prefix = re.sub(r"\W", "_", ref) + "__"
        args = args_model.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
        defs.update({prefix + name: d for name, d in args.pop("$defs", {}).items()})
        rules.append(
            {
                "if": {"properties": {"trainer": {"properties": {"ref": {"const": ref}}}}},
                "then": {"properties": {"trainer": {"properties": {"args": args}}}},
            }
        )
    if rules:
        schema["allOf"] = rules
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
