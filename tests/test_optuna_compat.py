"""Contract tests for hpo.backends.optuna_compat: each use of Optuna's private API.

Each test fails on an Optuna release that renames or changes what hpo relies on, so an
upgrade breaks here, by name, not somewhere in a worker.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from hpo.backends import optuna_compat as compat


@pytest.fixture(params=["sqlite", "journal", "memory"])
def storage(request, tmp_path: Path):
    from hpo.storage import open_storage

    if request.param == "sqlite":
        return open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=1)
    if request.param == "journal":
        return open_storage(f"journal:///{tmp_path / 'c.log'}", heartbeat_interval=1)
    return optuna.storages.InMemoryStorage()


def test_storage_and_study_id(storage) -> None:
    study = optuna.create_study(storage=storage)
    assert compat.storage_of(study).get_study_id_from_name(study.study_name) == (
        compat.study_id_of(study)
    )


def test_set_trial_user_attrs_writes_all_keys_and_the_trials_view(storage) -> None:
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    compat.set_trial_user_attrs(trial, {"hpo:a": 1, "hpo:b": {"x": [1.5]}})
    compat.set_trial_user_attrs(trial, {"hpo:a": 2})  # an upsert, as a retry would be
    assert trial.user_attrs == {"hpo:a": 2, "hpo:b": {"x": [1.5]}}
    stored = compat.storage_of(study).get_trial(trial._trial_id).user_attrs
    assert stored == {"hpo:a": 2, "hpo:b": {"x": [1.5]}}


def test_frozen_trial_and_retry_origin(storage) -> None:
    study = optuna.create_study(storage=storage)
    lost = study.ask()
    lost.report(0.5, 1)
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=1, inherit_intermediate_values=True
    )
    callback(study, study.trials[0])
    retry = study.ask()
    assert compat.retry_origin(retry) == lost.number
    assert compat.frozen_trial(retry).intermediate_values == {1: 0.5}
    assert compat.retry_origin(study.ask()) is None


def test_contains() -> None:
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0, step=0.5)
    assert compat.contains(distribution, 0.5)
    assert not compat.contains(distribution, 0.25)
    assert not compat.contains(optuna.distributions.CategoricalDistribution(["a"]), "b")


def test_heartbeat_ages_and_stale_trials(tmp_path: Path) -> None:
    """The journal heartbeat speaks Optuna's heartbeat protocol: optimize records it, the
    stale-trial check fails a trial whose worker stopped."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    from hpo.storage import open_storage

    url = f"journal:///{tmp_path / 'h.log'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    assert is_heartbeat_enabled(storage)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: compat.heartbeat_ages(study)[t.number], n_trials=1)
    assert study.trials[0].value is not None and study.trials[0].value < 1.0
    stuck = study.ask()  # a worker that asked, then died: no heartbeat after this
    storage.record_heartbeat(stuck._trial_id)
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[stuck.number].state == optuna.trial.TrialState.FAIL


def test_heartbeat_ages_on_an_rdb_storage(tmp_path: Path) -> None:
    from hpo.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    assert 0.0 <= compat.heartbeat_ages(study)[trial.number] < 5.0
