"""The command line: the one place that knows argv, exit codes and printing.

Exit codes: 0 ok, 1 runtime failure (failure budget exhausted, storage unreachable),
2 bad input (study file, overrides, a stored study that disagrees), 130 on Ctrl-C, 143
when SIGTERM stops ``run`` or ``worker``. Errors are one line on stderr; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpo.console import LOG_FORMATS, LiveView, configure_logging, show_workers
from hpo.draft import drafting_trainer  # noqa: F401 - hpo init's choice, long imported from here
from hpo.errors import (
    ConfigError,
    FailureBudgetExceeded,
    HpoError,
    StudyStateError,
    Terminated,
)

logger = logging.getLogger("hpo")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = _merge_global_options(parser.parse_args(argv))
    args.console = configure_logging(args.debug, args.log_format)
    try:
        return int(args.handler(args) or 0)
    except HpoError as e:
        # --debug adds the traceback; the exit code stays, so a script sees the same code.
        _print_traceback(args.debug)
        for line in str(e).splitlines():  # a study file's problems come all at once
            print(f"hpo: error: {line}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        _print_traceback(args.debug)
        print("hpo: stopped by SIGTERM", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        _print_traceback(args.debug)
        print("hpo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hpo validate f | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except Exception as e:  # a bug or an unexpected library error: one line unless --debug
        _print_traceback(args.debug)
        hint = "" if args.debug else " (run with --debug for a traceback)"
        print(f"hpo: error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1


def _print_traceback(debug: bool) -> None:
    """With ``--debug``, the traceback of the exception being handled, on stderr."""
    if debug:
        import traceback

        traceback.print_exc()


def build_parser() -> argparse.ArgumentParser:
    """The command table: one subparser per command, each pointing at its handler."""
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter search for fine-tuning, on Optuna."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("study_file", metavar="FILE", help="the study YAML file")
        _add_global_options(sub, "override a field before validation (repeatable)")
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", cmd_run, "run the study until its budget is met (resumes)")
    run.add_argument("--n-trials", type=int, help="shorthand for --set budget.n_trials=N")
    run.add_argument(
        "--allow-space-change",
        action="store_true",
        help="resume even though search_space differs from the stored study",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine (each gets its share of the cores)",
    )
    run.add_argument(
        "--devices",
        metavar="IDS",
        help="GPU ids, one worker each (default: every visible GPU; 'none' for CPU only)",
    )
    worker = command(
        "worker", cmd_worker, "join a study (same storage) as one more worker until it is done"
    )
    worker.add_argument(
        "--device", metavar="ID", help="GPU id for this worker (default: the first visible GPU)"
    )
    validate = command("validate", cmd_validate, "check a study file; print its search space")
    validate.add_argument("--json", action="store_true", help="print JSON (see README)")
    status = command("status", cmd_status, "trials by state, failed and running trials")
    status.add_argument("--json", action="store_true", help="print JSON (see README)")
    best = command("best", cmd_best, "the best trial's value, params and metrics")
    best.add_argument("--json", action="store_true", help="print JSON (see README)")
    report = command("report", cmd_report, "write an HTML report, trials.csv and summary.json")
    report.add_argument(
        "-o", "--output", metavar="DIR", help="output folder (default: dashboards/<study name>/)"
    )
    report.add_argument(
        "--attach",
        action="store_true",
        help="also save the figures into the study, where optuna-dashboard shows them "
        "(the only report option that writes to the storage)",
    )
    dashboard = command("dashboard", cmd_dashboard, "browse the study live in optuna-dashboard")
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine; any other address lets "
        "whoever reaches the port read the study, and warns)",
    )
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    dashboard.add_argument(
        "--allow-writes",
        action="store_true",
        help="let the dashboard write to the storage: notes and artifact uploads (into "
        "<output_dir>/artifacts, if it exists) are legitimate for a human in the loop and "
        "need this flag; it also lets whoever reaches the port rename or delete the study. "
        "Without it the dashboard is read-only: every request that could write is refused "
        "(403)",
    )
    compare = commands.add_parser(
        "compare",
        help="compare search strategies: best value against compute",
        description="Best-so-far value against cumulative training compute, one line per "
        "study, and the compute each needed to reach random search's best.",
    )
    compare.add_argument("study_files", nargs="+", metavar="FILE", help="study YAML files")
    _add_global_options(compare, "override a field of every study file (repeatable)")
    compare.add_argument(
        "-o", "--output", metavar="DIR", help="output folder (default: dashboards/compare-...)"
    )
    compare.set_defaults(handler=cmd_compare)
    sweep = commands.add_parser(
        "sweep",
        help="run a batch of studies from a sweep file (resumable, safe from cron)",
        description="Run every study of a sweep file (base + matrix, and/or study files) to "
        "its budget. A second invocation while one runs exits with 'already running'.",
    )
    sweep.add_argument("sweep_file", metavar="SWEEP_FILE", help="the sweep YAML file")
    _add_global_options(sweep, "override a field of every study, after the matrix (repeatable)")
    sweep.add_argument(
        "--parallel",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N studies at a time, one process each (default 1)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    sweep.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    sweep.add_argument("--date", metavar="YYYY-MM-DD", help="the date of {date} placeholders")
    sweep.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison page written after the sweep",
    )
    sweep.set_defaults(handler=cmd_sweep)
    narrow = command(
        "narrow", cmd_narrow, "write a new study file narrowed around the top K trials"
    )
    narrow.add_argument("--top", type=_positive_int, default=5, metavar="K", help="default 5")
    narrow.add_argument("-o", "--output", required=True, metavar="NEW", help="file to write")
    narrow.add_argument("--name", help="the new study's name (default: <name>-narrow)")
    export = command("export", cmd_export, "write the best trial's model with a model card")
    export.add_argument("--to", required=True, metavar="DIR", help="the folder to write")
    export.add_argument("--trial", type=int, metavar="N", help="export trial N, not the best")
    export.add_argument(
        "--force", action="store_true", help="replace a previous export in DIR (only that)"
    )
    init = commands.add_parser(
        "init",
        help="write a commented study file for your own data (texts or images)",
        description="Look at DATA (a CSV, TSV, JSON lines or Parquet table of texts or of "
        "image paths, or an image folder with one sub-folder per class), detect its columns, "
        "count the classes, and write a study file sized for it that passes hpo validate as "
        "it is.",
    )
    init.add_argument(
        "data_file", metavar="DATA", help="your labelled examples: a table or an image folder"
    )
    init.add_argument(
        "-o", "--output", default="study.yaml", metavar="FILE", help="default: study.yaml"
    )
    init.add_argument("--model", metavar="NAME", help="a local model folder or a hub id")
    init.add_argument("--text-column", metavar="NAME", help="default: detected")
    init.add_argument("--image-column", metavar="NAME", help="default: detected")
    init.add_argument("--label-column", metavar="NAME", help="default: detected")
    init.add_argument(
        "--trainer",
        metavar="REF",
        help="a trainer with a draft_study hook (default: image or text classification, "
        "from the data)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing FILE")
    _add_global_options(init, "not taken: edit the written file instead", prefix="")
    init.set_defaults(handler=cmd_init)
    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of study files (editor completion and checks)",
        description="Print the JSON Schema of study files, with each shipped trainer's args. "
        "Save it and start a study file with '# yaml-language-server: $schema=PATH'.",
    )
    schema.add_argument("--sweep", action="store_true", help="the schema of sweep files")
    _add_global_options(schema, "not taken: the schema is the same for every file", prefix="")
    schema.set_defaults(handler=cmd_schema)
    parser.add_argument("--version", action="version", version=f"hpo {_version()}")
    _add_global_options(parser, "override a study field (repeatable)", prefix="global_")
    return parser


def _add_global_options(parser: argparse.ArgumentParser, help: str, prefix: str = "") -> None:
    """Options every command takes, before or after the command name.

    The top-level parser stores them under ``global_*`` (a subparser would overwrite a
    shared name with its own default); :func:`_merge_global_options` joins the two.
    """
    parser.add_argument(
        "--set",
        dest=f"{prefix}overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help=help,
    )
    parser.add_argument(
        "--storage", dest=f"{prefix}storage", metavar="URL", help="shorthand for --set storage=URL"
    )
    parser.add_argument(
        "--debug",
        dest=f"{prefix}debug",
        action="store_true",
        help="show tracebacks and debug logs",
    )
    parser.add_argument(
        "--log-format",
        dest=f"{prefix}log_format",
        choices=LOG_FORMATS,
        default=None,
        help="auto (live view on a terminal, plain lines elsewhere), plain, or json",
    )


def _merge_global_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options given before the command apply as if given after it (after wins)."""
    args.overrides = args.global_overrides + args.overrides
    args.storage = args.storage or args.global_storage
    args.debug = args.debug or args.global_debug
    args.log_format = args.log_format or args.global_log_format or "auto"
    return args


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from hpo import DISTRIBUTION, __version__

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that is not installed
        return __version__


def _load(args: argparse.Namespace, *, import_trainer: bool = True) -> Any:
    """The study file of ``args``, with its --set/--storage/--n-trials overrides.

    ``import_trainer=False`` for commands that only read the stored study: they never
    run the trainer's code (SECURITY.md).
    """
    import optuna

    from hpo.config import load_study

    # hpo logs one line per trial with the failure reason; Optuna's own lines (and the
    # traceback of every failed trial) are only for --debug.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.ERROR)

    overrides = list(args.overrides)
    if getattr(args, "storage", None):
        overrides.append(f"storage={args.storage}")
    if getattr(args, "n_trials", None) is not None:
        overrides.append(f"budget.n_trials={args.n_trials}")
    return load_study(args.study_file, overrides, import_trainer=import_trainer)


def cmd_validate(args: argparse.Namespace) -> int:
    from hpo.config import describe_models
    from hpo.contract import legacy_ref
    from hpo.space import describe, grid_size

    config = _load(args)
    current = legacy_ref(config.trainer.ref, config.study_dir)
    if current:  # it works; the old name is hpo's top-level package of before
        print(
            f"hpo: note: {args.study_file}: trainer.ref: {config.trainer.ref} is the old name "
            f"of hpo's shipped trainer; write {current}",
            file=sys.stderr,
        )
    models = describe_models(config)
    try:
        size: int | None = grid_size(config.search_space)
    except ValueError:
        size = None
    if args.json:
        _print_json(
            {
                "file": str(args.study_file),
                "study": config.name,
                "sampler": config.sampler.type,
                "pruner": config.pruner.type if config.pruner else "none",
                "n_trials": config.budget.n_trials,
                "objective": (
                    [o.model_dump() for o in config.objectives]
                    if config.multi_objective
                    else config.objectives[0].model_dump()
                ),
                "constraints": [c.model_dump(exclude_none=True) for c in config.constraints],
                "search_space": config.stored_form()["search_space"],
                "grid_size": size,
                "models": models,
            }
        )
        return 0
    print(
        f"{args.study_file}: ok — study {config.name!r}, sampler {config.sampler.type}, "
        f"pruner {config.pruner.type if config.pruner else 'none'}, "
        f"{config.budget.n_trials} trials"
    )
    print("search space:")
    for line in describe(config.search_space):
        print(f"  {line}")
    print(f"grid size: {size if size is not None else 'not griddable (continuous floats)'}")
    if models:
        print("models:")
        for line in _model_table(models):
            print(f"  {line}")
    return 0


def _model_table(models: list[dict[str, Any]]) -> list[str]:
    """One aligned row per candidate base model: what its own files say."""

    def count(n: int | None) -> str:
        for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if n is not None and n >= scale:
                return f"{n / scale:.1f}{unit}"
        return "?" if n is None else str(n)

    header = ("model", "resolves to", "arch", "params", "size MB", "max len", "license", "data")
    rows = [header]
    for m in models:
        where = m["source"] if m["source"] == "packaged" else f"{m['source']} {m['path']}"
        if not m.get("checked", True):
            where += " (not checked offline)"
        data = m.get("datasets") or []
        rows.append(
            (
                m["name"],
                where,
                m.get("architecture") or "?",
                count(m.get("n_parameters")),
                "?" if m.get("size_mb") is None else f"{m['size_mb']:g}",
                str(m.get("max_seq_length") or "?"),
                m.get("license") or "unknown",
                ", ".join(data[:3]) + (f" +{len(data) - 3} more" if len(data) > 3 else "")
                or "unknown",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.runner import run_study
    from hpo.storage import redact_url
    from hpo.workers import sigterm_as_interrupt

    config = _load(args)
    started = dt.datetime.now()  # naive local time, as Optuna stores trial starts
    logger.info(
        "study %r on %s: %s sampler, %s pruner, budget %d trials",
        config.name,
        redact_url(config.storage),
        config.sampler.type,
        config.pruner.type if config.pruner else "no",
        config.budget.n_trials,
    )
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, but got {args.workers}")
    devices = None
    if args.devices:
        devices = [] if args.devices == "none" else [d.strip() for d in args.devices.split(",")]
    show_workers(args.workers > 1)
    try:
        with sigterm_as_interrupt(), _live_view(args, config) as view:
            summary = run_study(
                config,
                workers=args.workers,
                devices=devices,
                allow_space_change=args.allow_space_change,
                on_progress=view.update,
            )
    except FailureBudgetExceeded:
        _print_failed_since(config, started)
        raise
    if summary.already_done:
        print(
            f"study {config.name!r} is already finished ({summary.finished}/"
            f"{summary.n_trials} trials); nothing to run. Raise budget.n_trials to run more."
        )
    _print_summary(summary)
    _print_failed_since(config, started)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from hpo.budget import summarize
    from hpo.runner import run_worker
    from hpo.study import open_study
    from hpo.workers import Worker, sigterm_as_interrupt, visible_devices

    config = _load(args)
    device = args.device if args.device is not None else next(iter(visible_devices()), None)
    worker = Worker(device=f"cuda:{device}" if device not in (None, "none") else "cpu")
    started = dt.datetime.now()  # naive local time, as Optuna stores trial starts
    logger.info("worker %s joins study %r", worker.name, config.name)
    try:
        with sigterm_as_interrupt(), _live_view(args, config) as view:
            ran = run_worker(config, worker=worker, on_trial=lambda s, t: view.update(s))
    except FailureBudgetExceeded:
        _print_failed_since(config, started)
        raise
    summary = summarize(open_study(config, allow_space_change=True), config, ran=ran)
    _print_summary(summary)
    _print_failed_since(config, started)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.view import open_view

    config = _load(args, import_trainer=False)
    view = open_view(config)
    summary = view.summary()
    lines = view.attention()
    disk = _checkpoint_disk(config)
    if args.json:
        _print_json(
            {
                "study": summary.study_name,
                "budget": summary.n_trials,
                "finished": summary.finished,
                "trials_by_state": summary.counts,
                "best": _best_data(config, summary),
                "attention": [line.as_dict() for line in lines],
                "checkpoints": disk,
            }
        )
        return 0
    _print_summary(summary)
    print(_describe_disk(disk))
    _print_attention(lines)
    return 0


def _checkpoint_disk(config: Any) -> dict[str, Any]:
    """What ``hpo status`` says about the study's folder: where, how big, what is kept."""
    from hpo.checkpoints import checkpoint_bytes, study_folder

    kept: int | str = config.checkpoint_limit or "all"
    if config.multi_objective and config.checkpoint_limit is not None:
        kept = "pareto_front"
    return {
        "dir": str(study_folder(config)),
        "bytes": checkpoint_bytes(config),
        "keep": kept,
    }


def _describe_disk(disk: dict[str, Any]) -> str:
    kept = {
        "all": "every trial's kept",
        "pareto_front": "the Pareto front's kept",
    }.get(disk["keep"], f"the best {disk['keep']} trials' kept")
    return f"checkpoints: {disk['bytes'] / 1e6:.1f} MB in {disk['dir']} ({kept})"


def cmd_best(args: argparse.Namespace) -> int:
    from hpo.budget import summarize
    from hpo.study import load_existing_study

    config = _load(args, import_trainer=False)
    if config.multi_objective:
        return _print_front(config, load_existing_study(config), as_json=args.json)
    summary = summarize(load_existing_study(config), config)
    data = _best_data(config, summary)
    if data is None:
        feasible = " that meets the constraints" if config.constraints else ""
        raise HpoError(f"study {config.name!r} has no completed trial{feasible} yet")
    if args.json:
        _print_json(data)
    else:
        print(f"trial {data['trial']}: {config.objective.metric}={data['value']:.4f}")
        for key, value in {**data["params"], **data["metrics"]}.items():
            print(f"  {key}: {value}")
    return 0


def _print_front(config: Any, study: Any, *, as_json: bool) -> int:
    """``hpo best`` of a study with several objectives: its (feasible) Pareto front."""
    from hpo.pareto import front_rows
    from hpo.status import shown_metrics

    # As for one objective: the metrics shown leave out runtimes, speeds and epochs.
    rows = [
        {**row, "metrics": shown_metrics(row["metrics"])}
        for row in front_rows(study.get_trials(deepcopy=False), config)
    ]
    if not rows:
        feasible = " feasible" if config.constraints else ""
        raise HpoError(f"study {config.name!r} has no completed{feasible} trial yet")
    if as_json:
        _print_json(
            {
                "study": config.name,
                "objectives": [o.model_dump() for o in config.objectives],
                "pareto_front": rows,
            }
        )
        return 0
    feasible = " (feasible trials only)" if config.constraints else ""
    print(f"Pareto front of study {config.name!r}: {len(rows)} trials{feasible}")
    for line in front_table(rows):
        print(f"  {line}")
    return 0


def front_table(rows: list[dict[str, Any]]) -> list[str]:
    """The front as aligned rows: trial, model, each objective, the other params."""
    metrics = list(rows[0]["values"]) if rows else []
    header = ["trial", "model", *metrics, "params"]
    table = [header]
    for row in rows:
        params = {k: v for k, v in row["params"].items() if k != "model"}
        model = row.get("model") or "?"
        table.append(
            [
                str(row["number"]),
                str(model),
                *(f"{row['values'][m]:.4g}" for m in metrics),
                ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items()
                ),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def _best_data(config: Any, summary: Any) -> dict[str, Any] | None:
    """The best trial as ``hpo best --json`` prints it (quality and serving-cost metrics)."""
    from hpo.status import shown_metrics

    if summary.best_number is None:
        return None
    return {
        "study": config.name,
        "trial": summary.best_number,
        "value": summary.best_value,
        "params": summary.best_params,
        "metrics": shown_metrics(summary.best_metrics),
    }


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_attention(lines: list[Any]) -> None:
    if not lines:
        return
    print("trials needing attention:")
    for line in lines:
        print(f"  {line.describe()}")


def _print_failed_since(config: Any, started: dt.datetime) -> None:
    """The run's closing lines name the trials that failed in it, with their first message."""
    from hpo.status import attention, failed_since
    from hpo.study import load_existing_study

    try:
        failed = failed_since(attention(load_existing_study(config)), started)
    except HpoError:  # nothing stored (e.g. a dry start); the summary said what it could
        return
    if failed:
        print(f"{len(failed)} trials failed in this run:")
        for line in failed:
            print(f"  {line.describe()}")


def cmd_report(args: argparse.Namespace) -> int:
    from hpo.dashboards.report import build_report

    config = _load(args, import_trainer=False)
    report = build_report(
        config, Path(args.output) if args.output else None, save_to_study=args.attach
    )
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.summary["trials_by_state"].items())
    print(f"report of study {config.name!r} ({counts}): {report.html}")
    print(f"data: {report.trials_csv}, {report.summary_json}")
    from hpo.status import TrialLine

    _print_attention([TrialLine(**line) for line in report.summary["attention"]])
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hpo.dashboards.compare import build_comparison

    configs: list[Any] = []
    for path in args.study_files:
        args.study_file = path
        config = _load(args, import_trainer=False)
        twin = next((c for c in configs if c.name == config.name), None)
        if twin is not None:
            raise ConfigError(
                f"study {config.name!r} is also named in {twin.source}; compare distinct studies",
                path=path,
                field="name",
            )
        configs.append(config)
    comparison = build_comparison(configs, Path(args.output) if args.output else None)
    if comparison.baseline is None:
        print("no study uses sampler.type: random; the page has no random-search baseline")
    for result in comparison.studies:
        reach = ""
        if comparison.baseline is not None:
            reach = (
                f", reached random's best after {result.reach.epochs:g} epochs"
                if result.reach
                else ", did not reach random's best"
            )
        print(f"{result.name} ({result.sampler}): best {result.best:.4f}{reach}")
    print(f"comparison: {comparison.html}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.dashboards.server import serve_dashboard

    config = _load(args, import_trainer=False)

    def ready(url: str) -> None:
        print(f"optuna-dashboard for study {config.name!r}: {url}  (Ctrl-C stops it)", flush=True)

    try:
        serve_dashboard(
            config, args.host, args.port, on_ready=ready, allow_writes=args.allow_writes
        )
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, but got {text!r}")
    return int(text)


def cmd_sweep(args: argparse.Namespace) -> int:
    import datetime as dt

    from hpo.sweep import (
        describe_outcome,
        load_sweep,
        plan_sweep,
        run_command,
        run_sweep,
        shown_overrides,
    )
    from hpo.workers import sigterm_as_interrupt

    try:
        today = dt.date.fromisoformat(args.date) if args.date else None
    except ValueError:
        raise ConfigError(f"expected YYYY-MM-DD, but got {args.date!r}", field="--date") from None
    _quiet_optuna(args.debug)
    overrides = list(args.overrides) + ([f"storage={args.storage}"] if args.storage else [])
    sweep = load_sweep(args.sweep_file, overrides, today=today)
    if args.dry_run and args.json:
        _print_json(
            {
                "sweep": sweep.name,
                "studies": [
                    {
                        "name": row.study.name,
                        "overrides": shown_overrides(row.study),
                        "budget": row.budget,
                        "remaining": row.remaining,
                        "exists": row.exists,
                        "command": run_command(sweep, row.study),
                    }
                    for row in plan_sweep(sweep)
                ],
            }
        )
        return 0
    if args.json:
        raise ConfigError("--json goes with --dry-run (a sweep's run prints its summary)")
    if args.dry_run:
        print(f"sweep {sweep.name!r}: {len(sweep.studies)} studies (dry run; nothing runs)")
        for row in plan_sweep(sweep):
            changes = ", ".join(f"{k}={v}" for k, v in shown_overrides(row.study).items())
            print(
                f"{row.study.name}: {row.remaining} of {row.budget} trials remaining"
                f"{'' if row.exists else ' (new study)'}; overrides: {changes or 'none'}"
            )
            print(f"  {run_command(sweep, row.study)}")
        return 0
    show_workers(args.parallel > 1)  # lines of studies running side by side carry their name
    with sigterm_as_interrupt():  # a CronJob's pod is stopped with SIGTERM: stop as Ctrl-C
        result = run_sweep(sweep, parallel=args.parallel)
    if result.already_running:
        print(
            f"sweep {sweep.name!r} is already running: {result.already_running}; "
            "this invocation runs nothing"
        )
        return 0
    if result.nothing_to_do:
        print(
            f"sweep {sweep.name!r}: all {len(sweep.studies)} studies are already finished; "
            "nothing to run"
        )
    print(f"sweep {sweep.name!r} summary:")
    for outcome in result.outcomes:
        print(f"  {describe_outcome(outcome)}")
    skip = args.no_compare or result.nothing_to_do
    page = None if skip else _write_comparison(sweep, result)
    if page is not None:
        print(f"comparison: {page}")
    return result.exit_code


def _write_comparison(sweep: Any, result: Any) -> Any:
    """The dashboards comparison page (``hpo compare``) of the sweep's studies, or None.

    Drawn here, not in hpo.sweep: the core never imports dashboards.

    Studies without a completed trial are left out; a comparison dashboards refuses
    (e.g. studies with different objectives) is logged and skipped, never a sweep failure.
    """
    try:
        from hpo.dashboards.compare import build_comparison
    except ImportError:  # dashboards not installed: the sweep itself is complete
        return None
    done = {o.name for o in result.outcomes if o.best_value is not None}
    configs = [s.config for s in sweep.studies if s.name in done]
    if not configs:
        return None
    try:
        return build_comparison(configs, None).html
    except Exception as e:  # noqa: BLE001 - the page is a bonus; the sweep's result stands
        logger.warning("sweep: no comparison page: %s", e)
        return None


def _quiet_optuna(debug: bool) -> None:
    import optuna

    # As in _load: hpo logs one line per trial; Optuna's own lines are for --debug.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)


def cmd_narrow(args: argparse.Namespace) -> int:
    from hpo.config import check_folder_name, load_study
    from hpo.narrow import narrow_study
    from hpo.space import describe
    from hpo.study import load_existing_study

    config = _load(args)
    if args.name is not None:
        try:
            check_folder_name(args.name)
        except ValueError as e:  # said now: the file's own error would blame -o
            raise ConfigError(str(e), field="--name") from None
    output = Path(args.output)
    raw = narrow_study(config, load_existing_study(config), args.top, output, args.name)
    try:
        narrowed = load_study(output)
    except ConfigError as e:
        output.unlink()
        raise ConfigError(
            f"the narrowed file did not validate ({e}); write it next to {args.study_file}, "
            "whose relative paths it keeps",
            field="-o",
        ) from e
    print(
        f"{output}: study {raw['name']!r}, warm start from {config.name!r} "
        f"(top {raw['warm_start']['top_k']} trials)"
    )
    print("search space:")
    for line in describe(narrowed.search_space):
        print(f"  {line}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hpo.export import export_best

    config = _load(args)
    facts = export_best(config, args.to, trial_number=args.trial, force=args.force)
    values = ", ".join(f"{o['metric']}={o['value']:.4f}" for o in facts["objectives"])
    print(f"exported trial {facts['trial']} of study {config.name!r} ({values}) to {args.to}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from hpo.draft import write_drafted_study

    output = Path(args.output)
    if args.overrides:  # it writes a file, it reads none: a --set would do nothing
        keys = ", ".join(dict.fromkeys(o.split("=", 1)[0] for o in args.overrides))
        raise ConfigError(
            f"hpo init takes no --set; run it without, then edit {keys} in {output} "
            "(or give --set to the commands that read it)"
        )
    options = {name: getattr(args, name) for name in INIT_OPTIONS if getattr(args, name)}
    draft = write_drafted_study(
        Path(args.data_file),
        output,
        trainer_ref=args.trainer,
        options=options,
        storage=args.storage,
        force=args.force,
    )
    for finding in draft.findings:
        print(f"  {finding}")
    print(f"wrote {output}; check it with `hpo validate {output}`, run it with `hpo run {output}`")
    return 0


# The init flags a trainer's draft_study hook may take (as keyword arguments).
INIT_OPTIONS = ("model", "text_column", "image_column", "label_column")


def cmd_schema(args: argparse.Namespace) -> int:
    if args.overrides or args.storage:
        raise ConfigError(
            "hpo schema takes no --set or --storage: the schema is the same for every file"
        )
    if args.sweep:
        from hpo.sweep import SweepFile

        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **SweepFile.model_json_schema(),
        }
    else:
        from hpo.config import study_schema
        from hpo.contract import load_registered_trainers

        trainers = load_registered_trainers()
        args_models = {ref: t.args_model for ref, t in trainers.items() if t.args_model}
        schema = study_schema(args_models)
    print(json.dumps(schema, indent=2))
    return 0


def _print_summary(summary: Any) -> None:
    from hpo.status import shown_metrics

    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.counts.items())) or "none"
    print(
        f"study {summary.study_name!r}: {summary.finished}/{summary.n_trials} trials "
        f"finished ({states})"
    )
    if summary.ran or summary.wall_time_s:
        print(f"ran {summary.ran} trials in {summary.wall_time_s:.1f} s wall time")
    if summary.pareto_front:
        print(f"Pareto front: {len(summary.pareto_front)} trials")
        for line in front_table(summary.pareto_front):
            print(f"  {line}")
        return
    if summary.best_number is None:
        feasible = " that meets the constraints" if summary.constrained else ""
        print(f"no completed trial{feasible} yet")
        return
    print(f"best: trial {summary.best_number}, value {summary.best_value:.4f}")
    print("best params: " + ", ".join(f"{k}={v}" for k, v in summary.best_params.items()))
    shown = shown_metrics(summary.best_metrics)
    if shown:
        print("best metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))


def _live_view(args: argparse.Namespace, config: Any) -> LiveView:
    """The live area of ``run`` and ``worker``, starting from what the study has stored."""
    from hpo.budget import effective_budget
    from hpo.study import load_existing_study

    view = LiveView(
        args.console, config.name, effective_budget(config), config.objectives[0].metric, config
    )
    # One worker updates the view only when a trial ends: a resumed study would show
    # 0 finished and no best until then. A StorageError goes on: a server that cannot be
    # reached fails the command here, not again after a second wait in the open.
    try:
        view.read(load_existing_study(config))
    except StudyStateError:  # a new study (nothing stored, nothing created here) starts at 0
        pass
    return view
