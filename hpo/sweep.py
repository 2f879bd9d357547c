"""Sweeps: a batch of studies from one file, safe to run from cron, resumable.

A sweep file is a base study file plus a matrix of overrides, and/or a list of study
files::

    name: nightly                       # optional; default: the file's stem (the lock key)
    base: tpe.yaml                      # relative to the sweep file
    matrix:                             # dotted paths exactly as in --set
      sampler.type: [random, tpe]
      trainer.args.model: [minilm-l6, /models/other]
    name_template: "{base}-{n}-{date}"  # optional; default "{base}-{n}"
    studies: [grid.yaml, hyperband.yaml]

Every combination of the matrix (in file order, the last key varying fastest) is one
study named ``<base name>-<n>``, n = 1, 2, ...; ``name_template`` may use ``{base}``,
``{n}``, ``{date}`` / ``{yesterday}`` / ``{last_week}`` (ISO dates; ``--date`` pins
"today"), and any matrix key by its dotted path or its last part (``{type}``). The same
placeholders work in an expanded study's ``warm_start.from``, so tonight's study can seed
from last night's (``from: "{base}-{n}-{yesterday}"``). Explicit study files keep their
own names. ``--set`` applies to every study, after the matrix.

Every study is validated before any runs: one bad combination is reported by name and
nothing is written anywhere. More than ``MAX_STUDIES`` studies (the matrix's product plus
``studies``) are refused before any is expanded.

Resuming and idempotence come from the runner: a study's budget is its total, so a
finished study runs nothing and a killed one continues (its lost trial is retried once
the heartbeat grace period has passed). A sweep whose studies are all finished says so
and exits 0 without touching storage.

Overlapping invocations (cron firing while the last sweep still runs): the second one
**exits with "already running"** (exit 0) and runs nothing. The sweep holds a lock named
after the sweep for its whole run, in every storage its studies use: a file lock beside a
SQLite database or journal file (``<db>.sweep-<name>.lock``, which also records the
holder), a Postgres advisory lock (works across machines; a Kubernetes CronJob's
``concurrencyPolicy: Forbid`` is not enough when two clusters or a manual run share the
database). The lock dies with the process, so a killed sweep never blocks the next one.
Exiting rather than joining keeps a slow sweep from piling up one more set of workers
per cron tick on the same machine; to add workers on purpose, run ``hpo run`` with the
study's overrides (``--dry-run`` prints the command) against the same storage: trial
claiming is serialized per study, so no trial runs twice either way.

``--parallel N`` runs N studies at a time, each in its own process (spawned, and killed
with the sweep on Linux so no orphan keeps training after the lock is gone). SIGTERM or
Ctrl-C stops them as it stops ``hpo run``'s workers: each fails its running trial as
``interrupted`` (the next run resumes it) and exits before the sweep releases its lock.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpo.config import StudyConfig, config_error, validate_source
from hpo.errors import ConfigError, StorageError, Terminated
from hpo.events import forward_to_queue, start_relay, stop_relay
from hpo.source import Source, apply_override, name_as_written, read_source, yaml_text
from hpo.storage import redact_url
from hpo.workers import die_with_parent, sigterm_as_interrupt, stop_workers

logger = logging.getLogger(__name__)

DEFAULT_NAME_TEMPLATE = "{base}-{n}"
MAX_STUDIES = 1000  # each is validated up front (and later run): a matrix grows as a product
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_DOTTED = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_0-9][\w-]*)*$")


class SweepFile(BaseModel):
    """A validated sweep file (see the module docstring for every field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = None
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    name_template: str | None = Field(None, min_length=1)
    studies: list[str] = Field(default_factory=list)

    @field_validator("matrix")
    @classmethod
    def _matrix_keys(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not _DOTTED.match(key):
                raise ValueError(f"{key!r} is not a dotted field path like sampler.type")
            if key == "name":
                raise ValueError("`name` cannot vary in a matrix; use name_template")
            if not values:
                raise ValueError(f"{key} has no values; list at least one or remove the key")
        return value


@dataclass(frozen=True)
class PlannedStudy:
    """One study of a sweep: its validated config and where it came from."""

    config: StudyConfig
    overrides: dict[str, Any]  # matrix values, in matrix order ({} for explicit files)
    origin: str  # the base or study file

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: every study it will run, in order."""

    name: str
    source: Path
    studies: list[PlannedStudy]
    set_overrides: list[str] = field(default_factory=list)


@dataclass
class StudyOutcome:
    """How one study of a sweep ended."""

    name: str
    budget: int
    finished: int = 0
    best_value: float | None = None
    best_number: int | None = None
    ran: int = 0
    already_done: bool = False
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class SweepResult:
    """What ``run_sweep`` did: per-study outcomes, or that another run holds the lock."""

    sweep: str
    outcomes: list[StudyOutcome] = field(default_factory=list)
    already_running: str | None = None  # who holds the lock, when we did not get it
    nothing_to_do: bool = False

    @property
    def exit_code(self) -> int:
        """0 all good (or another run is on it), 1 some study failed."""
        return 1 if any(o.failed for o in self.outcomes) else 0


# --- loading and expansion --------------------------------------------------------------


def load_sweep(
    path: str | Path, overrides: list[str] | None = None, *, today: dt.date | None = None
) -> Sweep:
    """Read a sweep file and validate every study it expands to.

    Args:
        path: the sweep YAML file.
        overrides: ``key.path=value`` applied to every study after the matrix.
        today: the date behind ``{date}`` placeholders (default: today, UTC).

    Raises:
        ConfigError: the sweep file or any expanded study is invalid; names the study.
    """
    path = Path(path)
    source = read_source(path)
    name_as_written(source, ("name",))
    raw = source.data
    problems = list(source.problems)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as e:
        problems += config_error(e, raw, path=str(path), model=SweepFile, source=source).problems
    if problems:
        raise ConfigError.join(problems)
    try:
        studies = _plan(spec, path, list(overrides or []), today)
    except ConfigError as e:
        raise source.locate(e) from None
    return Sweep(spec.name or path.stem, path, studies, list(overrides or []))


def _plan(
    spec: SweepFile, path: Path, overrides: list[str], today: dt.date | None
) -> list[PlannedStudy]:
    """Every study of a validated sweep file, each validated."""
    if spec.matrix and spec.base is None:
        raise ConfigError("a matrix needs a `base` study file", path=str(path), field="base")
    if spec.base is None and not spec.studies:
        raise ConfigError("give `base` with a `matrix`, or a list of `studies`", path=str(path))
    if spec.base is not None and not spec.matrix:
        raise ConfigError(
            "a base study needs a matrix of overrides; add one or list the file under studies",
            path=str(path),
            field="matrix",
        )
    _check_count(spec, path)
    today = today or dt.datetime.now(dt.timezone.utc).date()
    studies: list[PlannedStudy] = []
    if spec.base is not None:
        studies += _expand(spec, path, overrides, today)
    for i, file in enumerate(spec.studies):
        studies.append(_explicit(path, i, file, overrides))
    _check_unique(studies, path)
    return studies


def _check_count(spec: SweepFile, path: Path) -> None:
    """Refuse more than ``MAX_STUDIES`` before expanding: ten keys of ten values are 10**10."""
    expanded = math.prod(len(values) for values in spec.matrix.values()) if spec.matrix else 0
    if expanded + len(spec.studies) <= MAX_STUDIES:
        return
    limit = f"over the limit of {MAX_STUDIES} per sweep; split it into several sweeps"
    if not spec.matrix:
        message = f"lists {len(spec.studies)} study files, {limit}"
        raise ConfigError(message, path=str(path), field="studies")
    sizes = " x ".join(str(len(values)) for values in spec.matrix.values())
    listed = f" and `studies` lists {len(spec.studies)} more" if spec.studies else ""
    message = f"makes {expanded} studies ({sizes}){listed}, {limit}"
    raise ConfigError(message, path=str(path), field="matrix")


def _expand(spec: SweepFile, path: Path, overrides: list[str], today: dt.date) -> list[Any]:
    base_path = _relative(path, spec.base or "")
    if not base_path.is_file():
        raise ConfigError(
            f"file {base_path} not found; check the path", path=str(path), field="base"
        )
    base = read_source(base_path)
    name_as_written(base, ("name",))
    base_name = str(base.data.get("name", base_path.stem))
    keys = list(spec.matrix)
    template = spec.name_template or DEFAULT_NAME_TEMPLATE
    studies = []
    for n, values in enumerate(itertools.product(*spec.matrix.values()), start=1):
        combo = dict(zip(keys, values, strict=True))
        study = copy.deepcopy(base)
        label = _label(base_name, n, combo)
        fields = _placeholders(base_name, n, combo, today)
        name = _render(template, fields, path=str(path), field_name="name_template")
        try:
            for key, value in combo.items():
                apply_override(study, f"{key}={yaml_text(value)}", what="matrix key")
        except ConfigError as e:
            raise ConfigError(
                f"{e.message}; use a field path of the base study file",
                path=str(path),
                field=label,
            ) from None
        for override in overrides:
            apply_override(study, override)
        study.data["name"] = name
        warm = study.data.get("warm_start")
        if isinstance(warm, dict) and isinstance(warm.get("from"), str):
            warm["from"] = _render(warm["from"], fields, path=str(path), field_name=label)
        studies.append(PlannedStudy(_validate(study, path, label), combo, str(base_path)))
    return studies


def _explicit(path: Path, index: int, file: str, overrides: list[str]) -> PlannedStudy:
    study_path = _relative(path, file)
    label = f"studies[{index}]"
    if not study_path.is_file():
        raise ConfigError(
            f"file {study_path} not found; check the path", path=str(path), field=label
        )
    study = read_source(study_path)
    for override in overrides:
        apply_override(study, override)
    return PlannedStudy(_validate(study, path, f"{label} ({file})"), {}, str(study_path))


def _validate(study: Source, sweep_path: Path, label: str) -> StudyConfig:
    """Validate one study; its errors are re-reported against the sweep, naming the study."""
    try:
        return validate_source(study)
    except ConfigError as e:
        raise ConfigError.join(
            [
                ConfigError(
                    p.message,
                    path=str(sweep_path),
                    field=f"{label}: {p.field}" if p.field else label,
                )
                for p in e.problems
            ]
        ) from None


def _check_unique(studies: list[PlannedStudy], path: Path) -> None:
    seen: dict[tuple[str, str], str] = {}
    for study in studies:
        key = (study.config.storage, study.name)
        if key in seen:
            raise ConfigError(
                f"two studies are both named {study.name!r} in the same storage ({seen[key]} "
                f"and {study.origin}); add {{n}} or a matrix key to name_template, or rename",
                path=str(path),
            )
        seen[key] = study.origin


def _label(base_name: str, n: int, combo: dict[str, Any]) -> str:
    """How an error names a combination: the default study name and its overrides."""
    shown = ", ".join(f"{k}={v}" for k, v in combo.items())
    return f"{base_name}-{n} ({shown})"


def _placeholders(base: str, n: int, combo: dict[str, Any], today: dt.date) -> dict[str, str]:
    fields = {
        "base": base,
        "n": str(n),
        "date": today.isoformat(),
        "yesterday": (today - dt.timedelta(days=1)).isoformat(),
        "last_week": (today - dt.timedelta(days=7)).isoformat(),
    }
    last_parts = [k.rsplit(".", 1)[-1] for k in combo]
    for key, value in combo.items():
        text = _UNSAFE.sub("-", str(value)).strip("-") or "x"
        fields[key] = text
        short = key.rsplit(".", 1)[-1]
        if last_parts.count(short) == 1:
            fields.setdefault(short, text)
    return fields


def _render(template: str, fields: dict[str, str], *, path: str, field_name: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = match[1]
        if key not in fields:
            raise ConfigError(
                f"unknown placeholder {{{key}}}; use one of "
                + ", ".join(f"{{{k}}}" for k in fields),
                path=path,
                field=field_name,
            )
        return fields[key]

    return _PLACEHOLDER.sub(substitute, template)


def _relative(sweep_path: Path, file: str) -> Path:
    candidate = Path(file).expanduser()
    return candidate if candidate.is_absolute() else sweep_path.parent / candidate


# --- plan -------------------------------------------------------------------------------


@dataclass
class PlanRow:
    """One line of ``--dry-run``: a study, its overrides and the trials it still needs."""

    study: PlannedStudy
    budget: int
    finished: int
    exists: bool

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.finished)


def plan_sweep(sweep: Sweep) -> list[PlanRow]:
    """Where each study stands, read without creating anything (a missing SQLite file
    counts as empty and is not created)."""
    from hpo.budget import effective_budget

    rows = []
    for study in sweep.studies:
        finished, exists = _finished_trials(study.config)
        rows.append(PlanRow(study, effective_budget(study.config), finished, exists))
    return rows


def _finished_trials(config: StudyConfig) -> tuple[int, bool]:
    """Finished trials as the runner counts them (:func:`hpo.budget.usage`), and whether
    the study exists; read-only."""
    from hpo.budget import usage
    from hpo.errors import StudyStateError
    from hpo.study import load_existing_study

    try:
        study = load_existing_study(config)
    except StudyStateError:  # no storage, or no such study in it: nothing ran yet
        return 0, False
    return usage(study, config).finished, True


def run_command(sweep: Sweep, study: PlannedStudy) -> str:
    """The ``hpo run`` command that runs (or joins) this study of the sweep by hand.

    For printing: a password in a storage URL shows as ``***`` (put it back, or better,
    write ``${VAR}`` in the URL).
    """
    import shlex

    parts = ["hpo", "run", study.origin]
    if study.overrides:
        parts += ["--set", f"name={study.name}"]
        for key, value in study.overrides.items():
            if key != "warm_start.from":  # a template; the rendered name follows
                parts += ["--set", redact_url(f"{key}={yaml_text(value)}")]
        warm = study.config.warm_start
        if warm is not None:
            parts += ["--set", f"warm_start.from={warm.from_study}"]
    for override in sweep.set_overrides:
        parts += ["--set", redact_url(override)]
    return " ".join(shlex.quote(p) for p in parts)


def shown_overrides(study: PlannedStudy) -> dict[str, Any]:
    """The study's matrix values for printing: a storage URL's password shows as ``***``."""
    return {k: redact_url(v) if isinstance(v, str) else v for k, v in study.overrides.items()}


# --- running ----------------------------------------------------------------------------


def run_sweep(sweep: Sweep, *, parallel: int = 1) -> SweepResult:
    """Run every unfinished study of the sweep, in order or ``parallel`` at a time.

    Holds the sweep lock throughout; when another invocation holds it, runs nothing and
    returns a result whose ``already_running`` says who. A study that fails (failure
    budget, storage, changed space) is recorded and the sweep goes on with the next.
    """
    result = SweepResult(sweep.name)
    lock = SweepLock(sweep.name, sorted({s.config.storage for s in sweep.studies}))
    holder = lock.try_acquire()
    if holder is not None:
        result.already_running = holder
        return result
    try:
        rows = plan_sweep(sweep)
        if all(row.remaining == 0 for row in rows):
            result.nothing_to_do = True
            result.outcomes = [_done(row.study.config) for row in rows]
            return result
        todo = [i for i, row in enumerate(rows) if row.remaining > 0]
        _create_schemas({rows[i].study.config.storage for i in todo})
        studies = [rows[i].study for i in todo]
        if parallel <= 1:
            outcomes = [_run_one(study.config) for study in studies]
        else:
            outcomes = _run_parallel(studies, parallel)
        ran = dict(zip(todo, outcomes, strict=True))
        result.outcomes = [ran.get(i) or _done(row.study.config) for i, row in enumerate(rows)]
    finally:
        lock.release()
    return result


def _create_schemas(urls: set[str]) -> None:
    """Open each storage once here: processes creating a fresh schema together collide."""
    from hpo.storage import open_storage

    for url in sorted(urls):
        try:
            open_storage(url)
        except StorageError as e:  # the study's own run reports it, as its failure
            logger.debug("sweep: %s", e)


def _run_one(config: StudyConfig) -> StudyOutcome:
    """Run one study to its budget in this process; errors become the outcome's error."""
    from hpo.runner import run_study

    logger.info("sweep: study %r (budget %d trials)", config.name, config.budget.n_trials)
    try:
        summary = run_study(config)
    except Exception as e:  # noqa: BLE001 - one study's failure ends only that study
        logger.error("sweep: study %r failed: %s", config.name, e)
        outcome = _outcome(config)
        outcome.error = str(e) or type(e).__name__
        return outcome
    return StudyOutcome(
        name=config.name,
        budget=summary.n_trials,
        finished=summary.finished,
        best_value=summary.best_value,
        best_number=summary.best_number,
        ran=summary.ran,
        already_done=summary.already_done,
    )


def _done(config: StudyConfig) -> StudyOutcome:
    outcome = _outcome(config)
    outcome.already_done = True
    return outcome


def _outcome(config: StudyConfig) -> StudyOutcome:
    """Where a study stands, read from storage (a blank outcome if storage is unreachable)."""
    from hpo.budget import effective_budget, usage_of
    from hpo.ranking import best_trial
    from hpo.study import load_existing_study

    outcome = StudyOutcome(config.name, effective_budget(config))
    try:
        study = load_existing_study(config)  # read-only: a summary line creates nothing
        trials = study.get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - a summary line must not hide the real error
        return outcome
    outcome.finished = usage_of(trials, study.user_attrs, config).finished
    # Several objectives have a front, not a best: the sweep's line shows none.
    best = None if config.multi_objective else best_trial(trials, config)
    if best is not None:
        outcome.best_value, outcome.best_number = best.value, best.number
    return outcome


def _run_parallel(studies: list[PlannedStudy], parallel: int) -> list[StudyOutcome]:
    """Run up to ``parallel`` studies at a time, each in a spawned process."""
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    records, relay = start_relay(context)  # one format for every study's lines
    pending = list(enumerate(studies))
    running: dict[Any, tuple[int, Any, Any, PlannedStudy]] = {}
    outcomes: dict[int, StudyOutcome] = {}
    level = logging.getLogger().getEffectiveLevel()
    stop_signal = signal.SIGTERM
    try:
        while pending or running:
            while pending and len(running) < parallel:
                index, study = pending.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child,
                    args=(study.config, sender, level, records, os.getpid()),
                    name=study.name,
                )
                process.start()
                sender.close()
                running[process.sentinel] = (index, process, receiver, study)
            for sentinel in wait(list(running)):
                index, process, receiver, study = running.pop(sentinel)
                outcomes[index] = _collect(process, receiver, study.config)
    except KeyboardInterrupt as e:
        # Passed on as it came: a pod's SIGTERM reaches this process alone (PID 1).
        stop_signal = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        raise
    finally:
        # Each study fails its running trial as `interrupted` and exits, or is killed; the
        # sweep lock is released only after that, so no study outlives it.
        stop_workers([process for _, process, _, _ in running.values()], stop_signal)
        stop_relay(records, relay)
    return [outcomes[i] for i in sorted(outcomes)]


def _collect(process: Any, receiver: Any, config: StudyConfig) -> StudyOutcome:
    process.join()
    try:
        outcome = receiver.recv() if receiver.poll() else None
    except EOFError:
        outcome = None
    receiver.close()
    if outcome is None:
        outcome = _outcome(config)
        outcome.error = f"worker process exited with code {process.exitcode}"
    return outcome


def _child(config: StudyConfig, sender: Any, level: int, records: Any, parent: int) -> None:
    """Entry point of a study's process: die with the sweep, log through the sweep, and
    stop on the sweep's SIGTERM or SIGINT as ``hpo run`` does (trial failed as
    ``interrupted``, exit 143 or 130, no traceback)."""
    die_with_parent(parent)
    forward_to_queue(records, level, worker_label=config.name)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR if level > logging.DEBUG else level)
    try:
        with sigterm_as_interrupt():
            sender.send(_run_one(config))
    except Terminated:
        sys.exit(Terminated.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sender.close()


# --- the lock against overlapping invocations -------------------------------------------


class SweepLock:
    """A non-blocking lock per sweep name, held in every storage the sweep's studies use.

    It is each storage's own lock (``hpo.storage.sweep_lock``, the mechanism of the study
    lock): an ``flock`` on ``<file>.sweep-<name>.lock`` beside a SQLite database or
    journal file, which also records the holder; a Postgres advisory lock or a MySQL
    named lock on its own connection, which work across machines.
    """

    def __init__(self, name: str, urls: list[str]):
        self.name = name
        self.urls = urls
        self._locks: list[Any] = []

    def try_acquire(self) -> str | None:
        """Take every lock; None on success, else a description of the holder."""
        from hpo.storage import sweep_lock

        for url in self.urls:
            lock = sweep_lock(url, self.name)
            holder = lock.try_acquire()
            if holder is not None:
                lock.close()
                self.release()
                return holder
            self._locks.append(lock)
        return None

    def release(self) -> None:
        """Drop every lock held (closing the file or connection drops it)."""
        for lock in self._locks:
            lock.close()
        self._locks = []


def describe_outcome(outcome: StudyOutcome) -> str:
    """One summary line: name, finished/budget, best value, and what went wrong."""
    best = "-" if outcome.best_value is None else f"{outcome.best_value:.4f}"
    trial = "" if outcome.best_number is None else f" (trial {outcome.best_number})"
    status = f"FAILED: {outcome.error}" if outcome.failed else "ok"
    return (
        f"{outcome.name}  {outcome.finished}/{outcome.budget} finished  best {best}{trial}  "
        f"{status}"
    )
