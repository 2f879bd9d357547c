"""The runner on real SQLite files: total budget, resume, space changes, failures, pruning."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.errors import FailureBudgetExceeded, StudyStateError
from hpo.runner import run_study
from hpo.study import open_study
from tests.conftest import ROOT, count_states, run_hpo


def load(path: Path, *overrides: str):
    return load_study(path, list(overrides))


def stored(path: Path, name: str = "toy"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


def test_budget_is_the_study_total_not_n_more(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=5)
    first = run_study(load(study_file))
    assert first.finished == 5 and first.ran == 5
    again = run_study(load(study_file))
    assert again.already_done and again.ran == 0
    assert len(stored(tmp_path / "hpo.db").trials) == 5
    more = run_study(load(study_file, "budget.n_trials=8"))
    assert more.ran == 3 and more.finished == 8


def test_cli_rerun_of_finished_study_says_so(run_cli, toy_study) -> None:
    study_file = toy_study(n_trials=3)
    assert run_cli("run", str(study_file)).returncode == 0
    result = run_cli("run", str(study_file))
    assert result.returncode == 0
    assert "already finished (3/3 trials); nothing to run" in result.stdout


def test_summary_lists_best_and_states(run_cli, toy_study) -> None:
    result = run_cli("run", str(toy_study(n_trials=4)))
    assert result.returncode == 0, result.stderr
    assert "study 'toy': 4/4 trials finished (4 complete)" in result.stdout
    assert "best: trial" in result.stdout and "best params: learning_rate=" in result.stdout
    assert "wall time" in result.stdout


def test_interrupted_run_resumes_to_the_total(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=6, text=None)
    text = study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:slow_epochs")
    study_file.write_text(text)
    env = {"HPO_TEST_EPOCH_S": "0.3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(study_file)],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until two trials finished, then Ctrl-C
        time.sleep(0.2)
        try:
            done = count_states(stored(tmp_path / "hpo.db"))
        except Exception:
            continue
        if done["COMPLETE"] >= 2:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    states = count_states(stored(tmp_path / "hpo.db"))
    assert states["RUNNING"] == 0  # the interrupted trial is failed, not left running
    assert 2 <= states["COMPLETE"] < 6
    result = run_hpo("run", str(study_file), env=env)
    assert result.returncode == 0, result.stderr
    states = count_states(stored(tmp_path / "hpo.db"))
    assert states["COMPLETE"] == 6 and states["RUNNING"] == 0


def test_changed_search_space_is_refused_unless_allowed(run_cli, toy_study) -> None:
    study_file = toy_study(n_trials=2)
    run_study(load(study_file))
    changed = "search_space.dropout={type: float, low: 0.0, high: 0.5}"
    with pytest.raises(StudyStateError, match=r"search_space: differs .* \(changed: dropout\)"):
        run_study(load(study_file, changed, "budget.n_trials=3"))
    result = run_cli("run", str(study_file), "--set", changed, "--n-trials", "3")
    assert result.returncode == 2 and "--allow-space-change" in result.stderr
    result = run_cli(
        "run", str(study_file), "--set", changed, "--n-trials", "3", "--allow-space-change"
    )
    assert result.returncode == 0, result.stderr
    assert "3/3 trials finished" in result.stdout


def test_failed_trials_are_recorded_and_the_study_continues(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=6)
    text = study_file.read_text().replace(
        "trainers.toy:train", "tests.fake_trainers:fail_when_dropout_high"
    )
    study_file.write_text(text.replace("max_failures: 3", "max_failures: 20"))
    summary = run_study(load(study_file))
    assert summary.finished == 6
    failed = [t for t in stored(tmp_path / "hpo.db").trials if t.state.name == "FAIL"]
    assert failed, "with seed 1 some trials draw dropout > 0.15"
    for trial in failed:
        assert trial.params["dropout"] > 0.15
        assert trial.user_attrs["hpo:failure"] == "exception"
        assert "simulated crash" in trial.user_attrs["hpo:failure_message"]


@pytest.mark.parametrize(
    "trainer, reason",
    [
        ("always_fail", "exception"),
        ("nan_loss", "nan"),
        ("nan_value", "nan"),
        ("oom", "oom"),
        ("no_objective", "exception"),
        # Optuna's StorageInternalError, but the database refused the data: not a lost
        # connection, so the trial's own failure (retrying it would loop forever).
        ("storage_rejects_data", "exception"),
    ],
)
def test_failure_budget_stops_with_exit_1(
    run_cli, toy_study, tmp_path: Path, trainer: str, reason: str
) -> None:
    study_file = toy_study(n_trials=10)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", f"tests.fake_trainers:{trainer}")
    )
    with pytest.raises(FailureBudgetExceeded, match=r"3 trials failed \(budget.max_failures=3\)"):
        run_study(load(study_file))
    trials = stored(tmp_path / "hpo.db").trials
    assert len(trials) == 3
    assert {t.user_attrs["hpo:failure"] for t in trials} == {reason}
    result = run_cli("run", str(study_file), "--set", "budget.max_failures=1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("hpo: error: study 'toy': 1 trials failed")
    assert "Traceback" not in result.stderr


def test_a_constraint_on_a_metric_never_returned_fails_the_trial_naming_it(
    run_cli, toy_study, tmp_path: Path
) -> None:
    """A typo (latency for latency_ms) would leave every trial silently infeasible."""
    study_file = toy_study(n_trials=5)
    study_file.write_text(
        study_file.read_text().replace(
            "budget:", "constraints: [{metric: latency, max: 1000}]\nbudget:"
        )
    )
    result = run_cli("run", str(study_file))
    assert result.returncode == 1
    trials = stored(tmp_path / "hpo.db").trials
    assert len(trials) == 3 and {t.state.name for t in trials} == {"FAIL"}
    message = trials[0].user_attrs["hpo:failure_message"]
    assert "without constraints.metric 'latency'" in message
    assert "'latency_ms'" in message  # what the trainer did return
    assert "without constraints.metric 'latency'" in result.stdout + result.stderr
    # Spelled right, the same constraint holds for every toy trial.
    fixed = toy_study(name="fixed", n_trials=2)
    fixed.write_text(
        fixed.read_text().replace(
            "budget:", "constraints: [{metric: latency_ms, max: 1000}]\nbudget:"
        )
    )
    assert run_cli("run", str(fixed)).returncode == 0
    best = run_cli("best", str(fixed))
    assert best.returncode == 0, best.stderr


def test_hyperband_prunes_and_records_epochs(toy_study, tmp_path: Path) -> None:
    study_file = toy_study(n_trials=30, sampler="random")
    study_file.write_text(
        study_file.read_text()
        .replace("budget:", "pruner: {type: hyperband, min_resource: 1, max_resource: 9}\nbudget:")
        .replace("num_train_epochs: 3", "num_train_epochs: 9")
    )
    run_study(load(study_file))
    trials = stored(tmp_path / "hpo.db").trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and complete
    assert all(t.user_attrs["hpo:epochs"] < 9 for t in pruned)
    assert all(t.user_attrs["hpo:epochs"] == 9 for t in complete)
    assert all(len(t.intermediate_values) == t.user_attrs["hpo:epochs"] for t in trials)
    assert all("test_accuracy" in t.user_attrs["hpo:metrics"] for t in complete)


def test_same_seed_same_trials(toy_study, tmp_path: Path) -> None:
    first = toy_study(name="a", n_trials=6, sampler="tpe")
    second = toy_study(name="b", n_trials=6, sampler="tpe")
    second.write_text(second.read_text().replace("name: b", "name: b"))
    run_study(load(first))
    run_study(load(second))
    db = tmp_path / "hpo.db"
    a, b = stored(db, "a").trials, stored(db, "b").trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]


def test_storage_is_plain_optuna(toy_study, tmp_path: Path) -> None:
    run_study(load(toy_study(n_trials=3)))
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "trials",
            "--storage",
            f"sqlite:///{tmp_path}/hpo.db",
            "--study-name",
            "toy",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"number"') == 3
    study = stored(tmp_path / "hpo.db")
    assert study.user_attrs["hpo:config"]["name"] == "toy"


def test_status_and_best(run_cli, toy_study) -> None:
    study_file = toy_study(n_trials=3)
    assert run_cli("status", str(study_file)).returncode == 2  # nothing stored yet
    run_study(load(study_file))
    status = run_cli("status", str(study_file))
    assert "3/3 trials finished (3 complete)" in status.stdout
    best = run_cli("best", str(study_file), "--json")
    import json

    data = json.loads(best.stdout)
    assert set(data) == {"study", "trial", "value", "params", "metrics"}
    assert data["metrics"]["eval_accuracy"] == data["value"]


def test_open_study_refuses_space_change_directly(toy_study) -> None:
    study_file = toy_study(n_trials=1)
    run_study(load(study_file))
    config = load(study_file, "search_space.extra={type: int, low: 1, high: 2}")
    with pytest.raises(StudyStateError):
        open_study(config)
    open_study(config, allow_space_change=True)


def test_resumed_study_draws_new_points(toy_study, tmp_path: Path) -> None:
    """A resumed sampler must not start its seeded sequence over."""
    study_file = toy_study(n_trials=3, sampler="random")
    run_study(load(study_file))
    run_study(load(study_file, "budget.n_trials=6"))
    params = [tuple(t.params.values()) for t in stored(tmp_path / "hpo.db").trials]
    assert len(set(params)) == 6


def test_status_does_not_rewrite_the_stored_config(run_cli, toy_study) -> None:
    """Reading a study with an edited file must not hide the edit from the next run."""
    study_file = toy_study(n_trials=2)
    run_study(load(study_file))
    changed = "search_space.dropout={type: float, low: 0.0, high: 0.5}"
    assert run_cli("status", str(study_file), "--set", changed).returncode == 0
    result = run_cli("run", str(study_file), "--set", changed, "--n-trials", "3")
    assert result.returncode == 2 and "--allow-space-change" in result.stderr


def test_a_lost_commit_of_a_new_trial_leaves_no_orphan(toy_study, monkeypatch) -> None:
    """The connection drops after the new trial's INSERT commits, before the answer.

    The trial exists but nobody runs it: RUNNING with no heartbeat, counted as claimed and
    skipped by Optuna's stale-trial check. Before the claim loop recovered it, the worker
    crashed here (Optuna 5 creates trials through a method the old retry wrapper missed),
    and a blind retry would have left the same orphan beside a second trial.
    """
    import sqlalchemy

    from hpo.backends.rdb import retrying_storage_class

    # Optuna's cached storage creates trials through RDBStorage._create_new_trial.
    real = optuna.storages.RDBStorage._create_new_trial
    created = []

    def create_then_lose_the_answer(self, study_id, template_trial=None):
        created.append(real(self, study_id, template_trial))
        if len(created) == 2:
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO trials", {}, Exception("server closed the connection unexpectedly")
            )
        return created[-1]

    monkeypatch.setattr(
        optuna.storages.RDBStorage, "_create_new_trial", create_then_lose_the_answer
    )
    retrying_storage_class.cache_clear()  # rebuilt over the faulty method
    try:
        study_file = toy_study(n_trials=3)
        # The timeout ends the naive path's endless wait for the orphan.
        config = load_study(study_file, overrides=["budget.timeout=60"])
        run_study(config)
    finally:
        retrying_storage_class.cache_clear()
    study = open_study(config)
    assert count_states(study) == {"COMPLETE": 3, "FAIL": 1}
    orphan = next(t for t in study.get_trials() if t.state.name == "FAIL")
    assert orphan.number in study.user_attrs["hpo:lost"]


def test_recovering_a_lost_commit_leaves_a_sampled_trial_to_its_worker(tmp_path: Path) -> None:
    """After a lost ``create_new_trial`` the worker fails the trial nobody runs, which was
    never sampled. Another worker's trial with its parameters and no heartbeat yet (its
    first beat held up by the same outage) is that worker's: it stays running."""
    from hpo.runner import _recover_orphans
    from hpo.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    study.ask().suggest_float("x", 0, 1)  # claimed and sampled; its beat not yet stored
    storage.create_new_trial(study._study_id)  # the lost commit's
    _recover_orphans(study)  # waits until both are older than the orphan age
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "FAIL"]
    assert study.user_attrs["hpo:lost"] == [1]


def test_a_retry_writes_only_inside_its_study_folder(toy_study, tmp_path: Path) -> None:
    """A retry resumes from the lost trial's checkpoint, a path read from storage: one
    outside ``<output_dir>/<name>/`` is neither resumed from nor written into."""
    study_file = toy_study(n_trials=1)
    study_file.write_text(
        study_file.read_text().replace(
            "args: {num_train_epochs: 3}", "args: {num_train_epochs: 3, save_checkpoints: true}"
        )
    )
    config = load_study(study_file)
    study = open_study(config)
    outside = tmp_path / "elsewhere" / "trial-0000"
    (outside / "checkpoint-1").mkdir(parents=True)
    (outside / "checkpoint-1" / "state.json").write_text('{"epoch": 1}')
    lost = study.ask()
    lost.suggest_float("dropout", 0.0, 0.3)
    lost.set_user_attr("hpo:checkpoint", str(outside / "checkpoint-1"))
    lost.set_user_attr("hpo:output_dir", str(outside))
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])

    run_study(config)

    retry = optuna.load_study(study_name="toy", storage=config.storage).trials[1]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["hpo:resumed_from"] == 0
    assert "hpo:resumed_at_epoch" not in retry.user_attrs  # trained from the start
    assert Path(retry.user_attrs["hpo:output_dir"]) == Path("runs") / "toy" / "trial-0001"
    assert sorted(p.name for p in outside.iterdir()) == ["checkpoint-1"]


@pytest.mark.parametrize("stored", ["study", "trial", "other"])
def test_a_retry_resumes_only_from_a_checkpoint_folder_of_a_trial(
    toy_study, tmp_path: Path, stored: str
) -> None:
    """Inside the study folder, only ``trial-NNNN/<checkpoint>`` is resumed from: a stored
    path naming the study folder itself or a trial folder would make the retry write into
    ``<output_dir>`` or the study folder's root."""
    study_file = toy_study(n_trials=1)
    study_file.write_text(
        study_file.read_text().replace(
            "args: {num_train_epochs: 3}", "args: {num_train_epochs: 3, save_checkpoints: true}"
        )
    )
    config = load_study(study_file)
    study = open_study(config)
    folder = Path("runs") / "toy"
    checkpoint = {
        "study": folder,
        "trial": folder / "trial-0000",
        "other": folder / "trial-0000" / "checkpoint-1" / "nested",
    }[stored]
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text('{"epoch": 1}')
    lost = study.ask()
    lost.suggest_float("dropout", 0.0, 0.3)
    lost.set_user_attr("hpo:checkpoint", str(checkpoint))
    lost.set_user_attr("hpo:output_dir", str(folder / "trial-0000"))
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])

    run_study(config)

    retry = optuna.load_study(study_name="toy", storage=config.storage).trials[1]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["hpo:resumed_from"] == 0
    assert "hpo:resumed_at_epoch" not in retry.user_attrs  # trained from the start
    assert Path(retry.user_attrs["hpo:output_dir"]) == folder / "trial-0001"
    assert sorted(p.name for p in Path("runs").iterdir()) == ["toy"]


def test_storage_errors_are_not_the_trainers_failures(toy_study, tmp_path: Path) -> None:
    # A report whose storage retries ran out fails the trial as "storage": not counted
    # against budget.max_failures (1 here), and its point is retried from its checkpoint.
    study_file = toy_study(n_trials=4)
    text = study_file.read_text().replace(
        "{ref: trainers.toy:train, args: {num_train_epochs: 3}}",
        "{ref: tests.fake_trainers:storage_error_once, "
        "args: {num_train_epochs: 3, save_checkpoints: true}}",
    )
    study_file.write_text(text.replace("max_failures: 3", "max_failures: 1"))
    summary = run_study(load(study_file, f"output_dir={tmp_path / 'runs'}"))
    assert summary.finished == 4
    trials = stored(tmp_path / "hpo.db").trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and {t.user_attrs["hpo:failure"] for t in failed} == {"storage"}
    retries = {t.user_attrs.get("hpo:resumed_from"): t for t in trials}
    for trial in failed:
        retry = retries[trial.number]
        assert retry.params == trial.params and retry.state.name == "COMPLETE"
        assert retry.user_attrs["hpo:resumed_at_epoch"] == 2


STOLEN_TRAINER = """\
import optuna


def train(ctx):
    if ctx.trial.number == 0:
        # Meanwhile another worker failed this trial as stale: storage retries held up its
        # heartbeat longer than grace_period (seen with Postgres connections killed).
        storage = ctx.trial.study._storage
        storage.set_trial_state_values(ctx.trial._trial_id, optuna.trial.TrialState.FAIL)
    return {"eval_accuracy": 0.5}
"""


def test_a_trial_another_worker_failed_meanwhile_ends_only_that_trial(
    toy_study, tmp_path: Path
) -> None:
    # Before: Optuna's "Cannot tell a FAIL trial" ValueError ended the worker (exit 1).
    (tmp_path / "stolen_trainer.py").write_text(STOLEN_TRAINER)
    study_file = toy_study(n_trials=2)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "stolen_trainer:train")
    )
    summary = run_study(load(study_file))
    assert summary.finished == 2
    states = [t.state.name for t in stored(tmp_path / "hpo.db").trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_searched_field_replaces_only_its_own_env_template() -> None:
    """A trial's ``${VAR}`` templates (what a checkpoint saves in place of secrets): a
    searched name replaces the arg at its path, nested (``adapter.r``) or whole."""
    from hpo.runner import _param_templates

    templates = {
        "trainer.args.adapter.r": "${R}",
        "trainer.args.adapter.type": "${T}",
        "trainer.args.training_args.hub_token": "${TOKEN}",
    }
    assert _param_templates(templates, {"adapter.r": 4}) == {
        "adapter.type": "${T}",
        "training_args.hub_token": "${TOKEN}",
    }
    assert _param_templates(templates, {"adapter": {}, "training_args.hub_token": "x"}) == {}
