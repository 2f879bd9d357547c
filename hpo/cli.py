"""The command line: the one place that knows argv, exit codes and printing.

Exit codes: 0 ok, 1 runtime failure (failure budget exhausted, storage unreachable),
2 bad input (study file, overrides, a stored study that disagrees), 130 on Ctrl-C.
Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hpo.errors import HpoError

logger = logging.getLogger("hpo")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    try:
        return int(args.handler(args) or 0)
    except HpoError as e:
        if args.debug:
            raise
        print(f"hpo: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unexpected library error: one line unless --debug
        if args.debug:
            raise
        print(
            f"hpo: error: {type(e).__name__}: {e} (run with --debug for a traceback)",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The command table: one subparser per command, each pointing at its handler."""
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter search for fine-tuning, on Optuna."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("study_file", metavar="FILE", help="the study YAML file")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a field before validation (repeatable)",
        )
        sub.add_argument("--storage", metavar="URL", help="shorthand for --set storage=URL")
        sub.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", cmd_run, "run the study until its budget is met (resumes)")
    run.add_argument("--n-trials", type=int, help="shorthand for --set budget.n_trials=N")
    run.add_argument(
        "--allow-space-change",
        action="store_true",
        help="resume even though search_space differs from the stored study",
    )
    command("validate", cmd_validate, "check a study file; print its search space")
    command("status", cmd_status, "trials by state and the best so far")
    best = command("best", cmd_best, "the best trial's value, params and metrics")
    best.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _configure_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(
        show_path=False, show_level=False, markup=False, console=_console(), log_time_format="[%X]"
    )
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    import warnings

    # Optuna marks heartbeats, retries and several samplers experimental; hpo pins the
    # behaviour it relies on in its own tests, so the warnings only add noise for users.
    warnings.filterwarnings("ignore", message=".*is experimental.*")
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers", "optuna"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _load(args: argparse.Namespace) -> Any:
    from hpo.config import load_study

    overrides = list(args.overrides)
    if getattr(args, "storage", None):
        overrides.append(f"storage={args.storage}")
    if getattr(args, "n_trials", None) is not None:
        overrides.append(f"budget.n_trials={args.n_trials}")
    return load_study(args.study_file, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from hpo.space import describe, grid_size

    config = _load(args)
    print(
        f"{args.study_file}: ok — study {config.name!r}, sampler {config.sampler.type}, "
        f"pruner {config.pruner.type if config.pruner else 'none'}, "
        f"{config.budget.n_trials} trials"
    )
    print("search space:")
    for line in describe(config.search_space):
        print(f"  {line}")
    try:
        print(f"grid size: {grid_size(config.search_space)}")
    except ValueError:
        print("grid size: not griddable (continuous floats)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hpo.runner import run_study
    from hpo.storage import redact_url

    config = _load(args)
    logger.info(
        "study %r on %s: %s sampler, %s pruner, budget %d trials",
        config.name,
        redact_url(config.storage),
        config.sampler.type,
        config.pruner.type if config.pruner else "no",
        config.budget.n_trials,
    )
    with _Progress(config.budget.n_trials) as progress:
        summary = run_study(
            config, allow_space_change=args.allow_space_change, on_trial=progress.on_trial
        )
    if summary.already_done:
        print(
            f"study {config.name!r} is already finished ({summary.finished}/"
            f"{summary.n_trials} trials); nothing to run. Raise budget.n_trials to run more."
        )
    _print_summary(summary)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.runner import open_study, summarize

    config = _load(args)
    summary = summarize(_existing_study(config, open_study), config)
    _print_summary(summary)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from hpo.runner import open_study, summarize

    config = _load(args)
    summary = summarize(_existing_study(config, open_study), config)
    if summary.best_number is None:
        raise HpoError(f"study {config.name!r} has no completed trial yet")
    data = {
        "study": config.name,
        "trial": summary.best_number,
        "value": summary.best_value,
        "params": summary.best_params,
        "metrics": summary.best_metrics,
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"trial {data['trial']}: {config.objective.metric}={data['value']:.4f}")
        for key, value in {**data["params"], **data["metrics"]}.items():
            print(f"  {key}: {value}")
    return 0


def _existing_study(config: Any, open_study: Callable[..., Any]) -> Any:
    """Open the stored study without creating one (status and best only read)."""
    import optuna

    from hpo.errors import StudyStateError
    from hpo.storage import open_storage, redact_url

    names = optuna.get_all_study_names(open_storage(config.storage))
    if config.name not in names:
        raise StudyStateError(
            f"no study {config.name!r} in {redact_url(config.storage)}; "
            f"run it first (hpo run {config.source})"
        )
    return open_study(config, allow_space_change=True)


def _print_summary(summary: Any) -> None:
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.counts.items())) or "none"
    print(
        f"study {summary.study_name!r}: {summary.finished}/{summary.n_trials} trials "
        f"finished ({states})"
    )
    if summary.ran or summary.wall_time_s:
        print(f"ran {summary.ran} trials in {summary.wall_time_s:.1f} s wall time")
    if summary.best_number is None:
        print("no completed trial yet")
        return
    print(f"best: trial {summary.best_number}, value {summary.best_value:.4f}")
    print("best params: " + ", ".join(f"{k}={v}" for k, v in summary.best_params.items()))
    if summary.best_metrics:
        shown = {k: v for k, v in summary.best_metrics.items() if "runtime" not in k}
        print("best metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))


class _Progress:
    """A rich progress bar of finished trials (only on a terminal; logs say the rest)."""

    def __init__(self, total: int):
        self.total = total
        self.started = time.monotonic()
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        console = _console()
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def on_trial(self, study: Any, trial: Any) -> None:
        finished = sum(
            t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False)
        )
        best = ""
        try:
            best = f"best {study.best_value:.4f}"
        except ValueError:
            pass
        if self._bar is not None:
            self._bar.update(self._task, completed=finished, description=best)
        else:
            logger.info(
                "progress: %d/%d trials finished, %s, %.0f s",
                finished,
                self.total,
                best or "no best yet",
                time.monotonic() - self.started,
            )

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
