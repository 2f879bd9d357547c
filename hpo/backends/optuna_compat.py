"""Every use of Optuna's private API in hpo, in one place.

Each function here leans on something Optuna does not promise to keep; each has a
contract test in ``tests/test_optuna_compat.py`` that fails on a release that changes
it. Everything else in hpo uses Optuna's public API only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# A trial's last heartbeat in the journal storage: {"trial_id": id, "time": epoch seconds}.
# It names its trial because Optuna's retry callback copies system attributes to the retry.
_HEARTBEAT_KEY = "hpo:heartbeat"


def heartbeat_journal_storage(
    path: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[Any, Any], None] | None = None,
) -> Any:
    """A JournalStorage on ``path`` with Optuna's heartbeat protocol (``BaseHeartbeat``).

    Optuna's optimize loop records heartbeats and fails stale trials for any storage that
    implements ``optuna.storages._heartbeat.BaseHeartbeat`` (private); the journal storage
    does not, so a killed worker's trial would stay RUNNING. Heartbeats are written as a
    trial system attribute, one journal line per interval per running trial.
    """
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalFileBackend

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        def __init__(self) -> None:
            super().__init__(JournalFileBackend(path))
            self._path = path
            self._interval = heartbeat_interval
            self._grace = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
            self._callback = stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(
                trial_id, _HEARTBEAT_KEY, {"trial_id": trial_id, "time": time.time()}
            )

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            assert self._grace is not None
            running = optuna.trial.TrialState.RUNNING
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(running,)):
                beat = trial.system_attrs.get(_HEARTBEAT_KEY) or {}
                last = beat.get("time") if beat.get("trial_id") == trial._trial_id else None
                if last is None and trial.datetime_start is not None:
                    last = trial.datetime_start.timestamp()
                if last is not None and now - last > self._grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, Any], None] | None:
            return self._callback

    return HeartbeatJournalStorage()
