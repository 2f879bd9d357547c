"""What a run tells its user: events as log records, their line and JSON forms.

Every event is a ``logging`` record of the ``hpo`` loggers whose ``event`` attribute
names it (``trial_started``, ``evaluation``, ``trial_finished``) and whose other extra
attributes carry its fields (trial number, params, step, value, ...). The same record
feeds three views: a plain line (off a terminal), a JSON object (``--log-format json``)
and the live area at the bottom of a terminal (see ``hpo.console``).

Worker processes do not format anything: they send their records to the parent through
a multiprocessing queue (:func:`forward_to_queue`), so every line of a run has one format
and the parent's one console owns the terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import threading
import warnings
from typing import Any

# Record attributes every LogRecord has; anything else was passed as an event field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def emit(logger: logging.Logger, event: str, message: str, /, *args: Any, **fields: Any) -> None:
    """Log ``message % args`` at INFO as event ``event`` with ``fields`` attached."""
    logger.info(message, *args, extra={"event": event, **fields})


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's own fields: every extra attribute of the record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def timestamp(record: logging.LogRecord) -> str:
    """ISO-8601 with date, milliseconds and the local zone's offset."""
    moment = dt.datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class LineFormatter(logging.Formatter):
    """One event per line: ``<ISO time> [w<worker>] <message>``, never padded or wrapped.

    ``show_worker`` is set when several workers share the output; a record's worker
    label then prefixes its message.
    """

    def __init__(self, show_worker: bool = False):
        super().__init__()
        self.show_worker = show_worker

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        worker = getattr(record, "worker", None)
        prefix = f"[{worker}] " if self.show_worker and worker else ""
        line = f"{timestamp(record)} {level}{prefix}{message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        # Multi-line messages (tracebacks only with --debug) stay one event: indent the rest.
        return line.replace("\n", "\n    ")


class JsonFormatter(logging.Formatter):
    """One JSON object per event: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(event_fields(record))
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def silence_experimental_warnings() -> None:
    """Optuna's ExperimentalWarnings never reach the user (hpo pins that behaviour in tests).

    Matched by message so that Optuna need not be imported here (``--help`` stays instant).
    """
    warnings.filterwarnings("ignore", message=".*is experimental.*")
    warnings.filterwarnings("ignore", message=".*experimental feature.*")


class _WorkerLabel(logging.Filter):
    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.label  # the process's label wins: a sweep's study name, or wN
        return True


def forward_to_queue(queue: Any, level: int, worker_label: str) -> None:
    """In a worker process: send every record, labelled with the worker, to the parent."""
    handler = logging.handlers.QueueHandler(queue)
    # The parent formats; only the message (and a traceback, if any) is rendered here.
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_WorkerLabel(worker_label))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    silence_experimental_warnings()
    quiet_libraries(level <= logging.DEBUG)


def quiet_libraries(debug: bool) -> None:
    """Libraries' own INFO chatter is for --debug; hpo's events say what happened."""
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers", "optuna"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def start_relay(context: Any) -> tuple[Any, threading.Thread]:
    """In the parent: a queue for child processes' records, and the thread that logs them.

    Each record goes through this process's loggers and handlers (one format, one
    console, and the live view sees every worker's events). Polling storage instead would
    show only the latest values, late, at a query per refresh.
    """
    records = context.Queue()
    thread = threading.Thread(target=_relay, args=(records,), daemon=True, name="hpo-log-relay")
    thread.start()
    return records, thread


def stop_relay(records: Any, thread: threading.Thread) -> None:
    """Log what the children sent before they exited, then stop the relay thread."""
    records.put(None)
    thread.join(timeout=10)
    if thread.is_alive():  # never reached the end: do not wait at exit to flush the None
        records.cancel_join_thread()


def _relay(records: Any) -> None:
    # The relay must outlive any one bad record: a worker whose log queue nobody reads
    # blocks writing to it and can never exit.
    while True:
        try:
            record = records.get()
        except (EOFError, OSError):  # the queue's pipe closed under us: nothing more comes
            return
        except Exception as e:  # noqa: BLE001 - a record that cannot be unpickled here
            logging.getLogger(__name__).warning("a worker's log record was lost: %r", e)
            continue
        if record is None:
            return
        try:
            logging.getLogger(record.name).handle(record)
        except Exception:  # noqa: BLE001 - a handler's own failure loses this line only
            logging.getLogger(__name__).debug("could not show a worker's record", exc_info=True)
