"""The terminal (or notebook): one rich Console for log lines and the live area below them.

On a terminal, log lines go through a ``RichHandler`` on the same Console as a rich
``Live`` area at the bottom (the study's progress and one line per running trial), so
rich keeps the two apart: log lines scroll above, the area redraws below, and no line
holds both. Off a terminal (cron, a log collector) there is no live area and every event
is one plain line (or one JSON object with ``--log-format json``), see ``hpo.events``.
In a Jupyter cell the cursor movements of a terminal would print as escape codes, so the
area is one cell output redrawn in place (:class:`NotebookArea`) and the events are
plain lines.

The CLI calls :func:`configure_logging` (the process is its own); :func:`python_output`
is the same for a Python call (``hpo.optimize``), on hpo's logger only and undone
afterwards. Worker processes forward their records to the parent
(``hpo.events.forward_to_queue``), so the live area sees their events too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hpo.budget import FINISHED, usage_of
from hpo.config import StudyConfig
from hpo.events import (
    JsonFormatter,
    LineFormatter,
    emit,
    quiet_libraries,
    silence_experimental_warnings,
)
from hpo.ranking import best_trial

logger = logging.getLogger("hpo")

LOG_FORMATS = ("auto", "plain", "json")


def make_console() -> Any:
    """The one Console of a CLI process (stderr: stdout stays for results and --json)."""
    from rich.console import Console

    return Console(stderr=True)


def configure_logging(debug: bool, log_format: str = "auto", console: Any = None) -> Any:
    """Install the one root handler; returns the Console when the output is rich.

    ``auto`` is rich on a terminal and plain lines elsewhere.
    """
    console = console or make_console()
    rich = log_format == "auto" and console.is_terminal
    handler: logging.Handler
    if rich:
        handler = _rich_handler(console)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else LineFormatter())
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True
    )
    logging.captureWarnings(True)  # other warnings become events in the same format
    silence_experimental_warnings()
    quiet_libraries(debug)
    return console if rich else None


def _rich_handler(console: Any) -> logging.Handler:
    """Log lines through ``console``, above its live area (a terminal's)."""
    from rich.logging import RichHandler

    handler = RichHandler(
        console=console,
        show_path=False,
        show_level=False,
        markup=False,
        log_time_format="[%X]",
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_prefix_worker)
    return handler


@contextlib.contextmanager
def python_output(show: bool) -> Iterator[Any]:
    """What a Python call that runs a study shows, for its duration only.

    Yields the Console for the live area (a terminal's or a Jupyter cell's), or None: off
    both, progress comes as plain lines. ``show`` off, hpo's records go wherever the
    caller's own logging sends them. Either way Optuna's INFO lines (which repeat hpo's
    trial lines) and its experimental warnings stay quiet, as on the command line.

    Shown, a handler on the ``hpo`` logger (not the root: a library call leaves the
    caller's logging as it was) writes the events, and they do not also propagate to the
    caller's handlers (each line once).
    """
    with warnings.catch_warnings():
        # tqdm.auto (Optuna's progress bar) warns in a notebook without ipywidgets.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import optuna

    verbosity = optuna.logging.get_verbosity()
    hpo_logger = logging.getLogger("hpo")
    saved = (hpo_logger.handlers[:], hpo_logger.level, hpo_logger.propagate)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            silence_experimental_warnings()
            if not show:
                yield None
                return
            console = make_console()
            live = console.is_jupyter or console.is_terminal
            handler: logging.Handler
            if console.is_terminal:
                handler = _rich_handler(console)
            else:  # Jupyter too: plain lines, no escape codes
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(LineFormatter())
            hpo_logger.addHandler(handler)
            hpo_logger.setLevel(min(logging.INFO, hpo_logger.getEffectiveLevel()))
            hpo_logger.propagate = False
            yield console if live else None
    finally:
        hpo_logger.handlers[:], hpo_logger.level, hpo_logger.propagate = saved
        optuna.logging.set_verbosity(verbosity)


def show_workers(enabled: bool) -> None:
    """Prefix lines with the worker label (several workers share the output)."""
    for handler in logging.getLogger().handlers + logging.getLogger("hpo").handlers:
        if isinstance(handler.formatter, LineFormatter):
            handler.formatter.show_worker = enabled
    _prefix_worker.enabled = enabled


class _WorkerPrefix(logging.Filter):
    """For the rich handler: ``[w1] message`` when several workers share the terminal."""

    enabled = False

    def filter(self, record: logging.LogRecord) -> bool:
        worker = getattr(record, "worker", None)
        if self.enabled and worker and not getattr(record, "_prefixed", False):
            record.msg = f"[{worker}] {record.getMessage()}"
            record.args = None
            record._prefixed = True
        return True


_prefix_worker = _WorkerPrefix()


@dataclass
class _Running:
    number: int
    worker: str = ""
    step: float | None = None
    epoch: float | None = None
    epochs: float | None = None
    value: float | None = None
    # When this view saw the trial start: minutes-long epochs show the trial is alive.
    started: float = field(default_factory=time.monotonic)


class LiveView(logging.Handler):
    """The live area: study progress and running trials, fed by events and the study.

    As a logging handler it formats nothing; it reads ``trial_started``, ``evaluation``
    and ``trial_finished`` events (from this process or forwarded from workers) to know
    what runs where. ``read(study)`` takes the finished count (:func:`hpo.budget.usage_of`)
    and the best trial (:func:`hpo.ranking.best_trial`) from storage before the run starts,
    ``update(study)`` again after each finished trial. Without a console (off a terminal)
    it does nothing visible; with a Jupyter console the area is a :class:`NotebookArea`.
    """

    def __init__(
        self,
        console: Any,
        study_name: str,
        budget: int,
        metric: str,
        config: StudyConfig,
    ):
        super().__init__(level=logging.INFO)
        self.config = config  # what "finished" and "best" mean: its budget and constraints
        self.console = console
        self.study_name = study_name
        self.budget = budget
        self.metric = metric
        self.started = time.monotonic()
        self.finished: int | None = None
        self.finished_at_start: int | None = None
        self.best: float | None = None
        self.best_trial: int | None = None
        self.running: dict[int, _Running] = {}
        self._live: Any = None
        self._logged: int | None = None

    def __enter__(self) -> LiveView:
        if self.console is None:
            return self
        from rich.live import Live

        # Every event is a record of an hpo logger (a worker's too, relayed to its own).
        logging.getLogger("hpo").addHandler(self)
        if self.console.is_jupyter:
            self._live = NotebookArea(lambda: "\n".join(self.lines()))
        else:
            self._live = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=4,
                transient=True,
                redirect_stdout=True,
                redirect_stderr=True,
            )
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            logging.getLogger("hpo").removeHandler(self)
            self._live = None

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        number = getattr(record, "trial", None)
        if event is None or number is None:
            return
        if event == "trial_started":
            params = getattr(record, "params", {}) or {}
            epochs = params.get("num_train_epochs")
            self.running[number] = _Running(
                number,
                worker=getattr(record, "worker", "") or "",
                epochs=epochs if isinstance(epochs, int | float) else None,
            )
        elif event == "evaluation":
            row = self.running.setdefault(number, _Running(number))
            row.worker = row.worker or getattr(record, "worker", "") or ""
            row.step = getattr(record, "step", None)
            row.epoch = getattr(record, "epoch", None)
            row.value = getattr(record, "value", None)
            row.epochs = getattr(record, "epochs", None) or row.epochs
        elif event == "trial_finished":
            self.running.pop(number, None)
            # Count it now; the next update() re-reads the truth from storage.
            if getattr(record, "state", None) in FINISHED and self.finished is not None:
                self.finished += 1

    def update(self, study: Any) -> None:
        """Refresh finished trials and the best value from the stored study."""
        self.read(study)
        if self._live is None and self.finished != self._logged:
            # Off a terminal the progress is one more event, once per finished trial.
            self._logged = self.finished
            emit(
                logger,
                "progress",
                "%s",
                self.study_line(),
                finished=self.finished,
                budget=self.budget,
                best=self.best,
            )

    def read(self, study: Any) -> None:
        """Take the finished count and best value from the stored study, logging nothing.

        Called before a run starts too: a resumed study's area shows what is stored, not
        0 finished until the first trial of this run ends.
        """
        trials = study.get_trials(deepcopy=False)
        self.finished = usage_of(trials, study.user_attrs, self.config).finished
        if self.finished_at_start is None:
            self.finished_at_start = self.finished
        # With several objectives the line shows the front's best in the first one.
        best = best_trial(trials, self.config)
        if best is not None:
            self.best, self.best_trial = best.values[0], best.number

    def study_line(self) -> str:
        elapsed = time.monotonic() - self.started
        finished = self.finished or 0
        parts = [f"study {self.study_name}: {finished}/{self.budget} finished"]
        if self.best is not None:
            parts.append(f"best {self.best:.4f} (trial {self.best_trial})")
        parts.append(f"elapsed {_clock(elapsed)}")
        done_here = finished - (self.finished_at_start or 0)
        if done_here > 0 and finished < self.budget:
            parts.append(f"ETA {_clock(elapsed / done_here * (self.budget - finished))}")
        return " · ".join(parts)

    def trial_line(self, row: _Running) -> str:
        where = f" {row.worker}" if row.worker else ""
        if row.epoch is not None and row.epochs:
            progress = f"epoch {row.epoch:g}/{row.epochs:g}"
        elif row.step is not None:
            progress = f"step {row.step}"
        else:
            progress = "starting"
        value = f" {self.metric}={row.value:.4f}" if row.value is not None else ""
        running = _clock(time.monotonic() - row.started)
        return f"  trial {row.number}{where}: {progress}{value} · {running}"

    def lines(self) -> list[str]:
        """The area's lines: the study, then one per running trial."""
        return [self.study_line()] + [
            self.trial_line(row) for _, row in sorted(self.running.items())
        ]

    def render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        # Each line is cut at the terminal's width, never wrapped: the area keeps its height.
        return Group(*(Text(line, no_wrap=True, overflow="ellipsis") for line in self.lines()))


class NotebookArea:
    """The live area in a Jupyter cell: one output, plain text, redrawn in place.

    A terminal area moves the cursor back to redraw, which a cell shows as escape codes;
    an IPython display handle replaces its own output instead (Jupyter, VS Code and
    nbconvert all render it). It redraws from a thread, as rich's ``Live`` does, and keeps
    its last state when the run ends: the cell is the run's record.
    """

    def __init__(self, text: Callable[[], str], refresh_s: float = 0.5):
        self.text = text
        self.refresh_s = refresh_s
        self._handle: Any = None
        self._shown: str | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hpo-cell-area")

    def start(self) -> None:
        from IPython.display import display

        self._shown = self.text()
        self._handle = display({"text/plain": self._shown}, raw=True, display_id=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._draw()

    def _run(self) -> None:
        while not self._stopped.wait(self.refresh_s):
            self._draw()

    def _draw(self) -> None:
        text = self.text()
        if text != self._shown and self._handle is not None:
            self._shown = text
            self._handle.update({"text/plain": text}, raw=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
