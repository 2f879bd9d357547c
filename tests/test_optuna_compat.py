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


def fail_when_stale(study: optuna.Study, number: int, timeout: float = 30):
    """Run Optuna's stale-trial check until trial ``number`` leaves RUNNING; its state."""
    deadline = time.monotonic() + timeout
    while study.trials[number].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() < deadline, f"trial {number} still RUNNING after {timeout} s"
        time.sleep(0.1)
        optuna.storages.fail_stale_trials(study)
    return study.trials[number].state


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
    assert fail_when_stale(study, stuck.number) == optuna.trial.TrialState.FAIL


def test_heartbeat_ages_on_an_rdb_storage(tmp_path: Path) -> None:
    from hpo.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    assert 0.0 <= compat.heartbeat_ages(study)[trial.number] < 5.0


def test_the_stale_trial_check_queries_once_per_heartbeat_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's optimize checks for stale trials before every trial; hpo's RDB storage
    asks the database at most once per heartbeat interval and still fails a lost trial."""
    from optuna.storages import RDBStorage

    from hpo.storage import open_storage

    queries = []
    real = RDBStorage._get_stale_trial_ids
    monkeypatch.setattr(
        RDBStorage,
        "_get_stale_trial_ids",
        lambda self, study_id: queries.append(study_id) or real(self, study_id),
    )
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    stuck = study.ask()  # a worker that asked, beat once, then died
    storage.record_heartbeat(stuck._trial_id)
    study.optimize(lambda t: 1.0, n_trials=3)  # three trials, one stale-trial query
    assert len(queries) == 1
    assert study.trials[stuck.number].state == optuna.trial.TrialState.RUNNING
    # Past the 1 s grace (SQLite's clock has whole seconds), a later check queries again.
    assert fail_when_stale(study, stuck.number) == optuna.trial.TrialState.FAIL
    assert len(queries) >= 2


def _commits() -> list[int]:
    import sqlalchemy

    counter = [0]

    def on_commit(connection) -> None:
        counter[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", on_commit)
    return counter


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def rdb_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_write_rdb_trial_leaves_what_optunas_own_writes_leave(rdb_url: str) -> None:
    """hpo's one-transaction trial write repeats Optuna's heartbeat and state change, and
    upserts every attribute in one statement: the rows must come out as Optuna's own
    methods leave them, on each database hpo accepts."""
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(rdb_url, heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    theirs, ours = study.ask(), study.ask()
    storage.set_trial_user_attr(theirs._trial_id, "hpo:a", [1])
    storage.set_trial_user_attr(theirs._trial_id, "hpo:b", "x")
    storage.record_heartbeat(theirs._trial_id)
    storage.set_trial_state_values(theirs._trial_id, TrialState.COMPLETE, [0.5])
    assert compat.write_rdb_trial(storage, ours._trial_id, {"hpo:a": [0]}, heartbeat=True)
    # An update of both the heartbeat and one attribute, and a new attribute beside it.
    assert compat.write_rdb_trial(
        storage, ours._trial_id, {"hpo:a": [1], "hpo:b": "x"}, heartbeat=True
    )
    assert compat.write_rdb_trial(
        storage, ours._trial_id, {}, state=TrialState.COMPLETE, values=[0.5]
    )
    a, b = storage.get_trial(theirs._trial_id), storage.get_trial(ours._trial_id)
    assert (b.state, b.values, b.user_attrs) == (a.state, a.values, a.user_attrs)
    assert b.datetime_complete is not None and b.datetime_start is not None
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        compat.write_rdb_trial(storage, ours._trial_id, {}, state=TrialState.FAIL)
    running = study.ask()
    assert not storage.set_trial_state_values(running._trial_id, TrialState.RUNNING)
    assert not compat.write_rdb_trial(storage, running._trial_id, {}, state=TrialState.RUNNING)
    study.enqueue_trial({})
    waiting_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, 3)
    assert compat.write_rdb_trial(storage, waiting_id, {}, state=TrialState.RUNNING)
    assert storage.get_trial(waiting_id).datetime_start is not None


def test_deferred_attributes_cost_no_transaction_of_their_own(tmp_path: Path) -> None:
    """Deferred attributes go in the tell's transaction (or the next heartbeat's): the
    trial's end costs one commit, as in raw Optuna, and nothing is lost."""
    from hpo.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'd.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    commits = _commits()
    trial = study.ask()
    compat.set_trial_user_attrs(trial, {"hpo:start": "w0"}, defer=True)
    assert storage.get_trial(trial._trial_id).user_attrs == {}  # not written yet
    storage.record_heartbeat(trial._trial_id)  # the heartbeat carries them
    assert storage.get_trial(trial._trial_id).user_attrs == {"hpo:start": "w0"}
    compat.set_trial_user_attrs(trial, {"hpo:end": 1.5}, defer=True)
    before = commits[0]
    storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    assert commits[0] - before == 1
    assert study.trials[0].user_attrs == {"hpo:start": "w0", "hpo:end": 1.5}
    assert study.trials[0].value == 1.0
    # A heartbeat after another worker failed the trial still beats, dropping what it carried.
    late = study.ask()
    storage.set_trial_state_values(late._trial_id, optuna.trial.TrialState.FAIL)
    compat.set_trial_user_attrs(late, {"hpo:late": 1}, defer=True)
    storage.record_heartbeat(late._trial_id)
    assert storage.get_trial(late._trial_id).user_attrs == {}


def _check_budget_counts(storage) -> None:
    from optuna.trial import TrialState

    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: 1.0, n_trials=2)
    failed = study.ask()
    failed.set_user_attr("hpo:failure", "oom")
    study.tell(failed, state=TrialState.FAIL)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # running
    study.set_user_attr("hpo:lost", [3])
    counts, failed, lost = compat.budget_counts(study, "hpo:failure", "hpo:lost")
    assert counts == {"COMPLETE": 2, "FAIL": 2, "RUNNING": 1}
    assert sorted(failed) == [(2, "oom"), (3, None)]
    assert lost == [3]


def test_budget_counts_match_the_trials(storage) -> None:
    _check_budget_counts(storage)


def test_budget_counts_on_database_servers(rdb_url: str) -> None:
    from hpo.storage import open_storage

    _check_budget_counts(open_storage(rdb_url))
    # No failed trial: one query, and the lost list is not read.
    study = optuna.create_study(storage=open_storage(rdb_url))
    study.optimize(lambda t: 1.0, n_trials=1)
    assert compat.budget_counts(study, "hpo:failure", "hpo:lost") == ({"COMPLETE": 1}, [], [])


@pytest.mark.fast
def test_the_proxy_cache_takes_parameters_of_trials_it_never_saw(tmp_path: Path) -> None:
    from hpo.storage import open_storage

    database = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    study = optuna.create_study(storage=database)
    unseen = study.ask()  # made on the database, not through the cache
    cache = compat.proxy_cache(database)
    x = optuna.distributions.FloatDistribution(0, 1)
    cache.set_trial_param(unseen._trial_id, "x", 0.25, x)
    seen = cache.create_new_trial(compat.study_id_of(study))
    cache.set_trial_param(seen, "x", 0.75, x)  # the cached path, its distribution remembered
    with pytest.raises(ValueError, match="different distribution"):  # checked, unseen
        cache.set_trial_param(unseen._trial_id, "x", 3, optuna.distributions.IntDistribution(0, 5))
    assert [t.params for t in study.get_trials()] == [{"x": 0.25}, {"x": 0.75}]
