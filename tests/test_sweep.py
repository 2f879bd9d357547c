"""hpo sweep: expansion, validation, plan, idempotence, resume after kill, overlap lock."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.errors import ConfigError
from hpo.sweep import MAX_STUDIES, load_sweep
from tests.conftest import ROOT, run_hpo, trials_when_ready

BASE = """\
name: {name}
storage: {storage}
seed: 1
sampler: {{type: random}}
budget: {{n_trials: {n_trials}, max_failures: 3}}
trainer: {{ref: {ref}, args: {{num_train_epochs: 2, seconds_per_epoch: {spe}}}}}
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-5, 1.0e-4, 1.0e-3]}}
  dropout: {{type: categorical, choices: [0.0, 0.1, 0.2]}}
workers: {{heartbeat_interval: 1, grace_period: 2}}
"""


def write_sweep(
    folder: Path,
    sweep: str,
    *,
    name: str = "toy",
    storage: str | None = None,
    n_trials: int = 3,
    spe: float = 0.0,
    ref: str = "trainers.toy:train",
) -> Path:
    storage = storage or f"sqlite:///{folder / 'hpo.db'}"
    (folder / "base.yaml").write_text(
        BASE.format(name=name, storage=storage, n_trials=n_trials, spe=spe, ref=ref)
    )
    path = folder / "sweep.yaml"
    path.write_text(sweep)
    return path


def finished_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


# --- expansion and validation -----------------------------------------------------------


def test_matrix_expands_in_order_with_names_and_overrides(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        "base: base.yaml\nmatrix:\n  sampler.type: [random, tpe]\n"
        "  budget.n_trials: [2, 3]\nstudies: [other.yaml]\n",
    )
    (tmp_path / "other.yaml").write_text(
        (tmp_path / "base.yaml").read_text().replace("name: toy", "name: kept")
    )
    sweep = load_sweep(path)
    assert [s.name for s in sweep.studies] == ["toy-1", "toy-2", "toy-3", "toy-4", "kept"]
    assert [(s.config.sampler.type, s.config.budget.n_trials) for s in sweep.studies[:4]] == [
        ("random", 2),
        ("random", 3),
        ("tpe", 2),
        ("tpe", 3),
    ]
    assert sweep.studies[2].overrides == {"sampler.type": "tpe", "budget.n_trials": 2}
    assert sweep.studies[4].overrides == {}


def test_name_template_and_dated_warm_start(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n"
        'name_template: "nightly-{type}-{date}"\n'
        "studies: []\n",
    )
    text = (tmp_path / "base.yaml").read_text()
    (tmp_path / "base.yaml").write_text(
        text + 'warm_start: {from: "nightly-{type}-{yesterday}", top_k: 2}\n'
    )
    sweep = load_sweep(path, today=dt.date(2026, 3, 1))
    assert [s.name for s in sweep.studies] == [
        "nightly-random-2026-03-01",
        "nightly-tpe-2026-03-01",
    ]
    assert sweep.studies[1].config.warm_start.from_study == "nightly-tpe-2026-02-28"


def test_bad_combination_is_reported_by_name_and_nothing_runs(tmp_path: Path, capsys) -> None:
    text = BASE.format(
        name="toy", storage="sqlite:///hpo.db", n_trials=3, spe=0, ref="trainers.toy:train"
    )
    (tmp_path / "base.yaml").write_text(
        text.replace(
            "dropout: {type: categorical, choices: [0.0, 0.1, 0.2]}",
            "dropout: {type: float, low: 0.0, high: 0.3}",
        )
    )
    (tmp_path / "sweep.yaml").write_text(
        "base: base.yaml\nmatrix:\n  sampler.type: [random, grid]\n  budget.n_trials: [2]\n"
    )
    assert main(["sweep", "sweep.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "hpo: error: sweep.yaml: toy-2 (sampler.type=grid, budget.n_trials=2): "
        "search_space.dropout: the grid sampler needs discrete values: a float needs `step` "
        "to be part of a grid (or make it categorical)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "sweep.yaml"]


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (
            "base: base.yaml\nmatrix: {sampler.type: [tpe]}\nparallel: 2\n",
            "sweep.yaml:3: parallel: unknown field `parallel`; remove it or use one of name, "
            "base, matrix, name_template, studies",
        ),
        (
            "base: base.yaml\nmatrix: {sampler.type: []}\n",
            "sweep.yaml:2: matrix: sampler.type has no values; list at least one or remove the "
            "key",
        ),
        (
            "base: base.yaml\nmatrix: {sampler.type: tpe}\n",
            "sweep.yaml:2: matrix.sampler.type: Input should be a valid list: got 'tpe'; write a "
            "list, such as [a, b]",
        ),
        (
            "base: base.yaml\n",
            "sweep.yaml: matrix: a base study needs a matrix of overrides; add one or list the "
            "file under studies",
        ),
        (
            "matrix: {sampler.type: [tpe]}\n",
            "sweep.yaml: base: a matrix needs a `base` study file",
        ),
        ("{}\n", "sweep.yaml: give `base` with a `matrix`, or a list of `studies`"),
        (
            "base: missing.yaml\nmatrix: {sampler.type: [tpe]}\n",
            "sweep.yaml:1: base: file missing.yaml not found; check the path",
        ),
        (
            "base: base.yaml\nmatrix: {sampler.type: [tpe]}\nname_template: '{base}-{model}'\n",
            "sweep.yaml:3: name_template: unknown placeholder {model}; use one of {base}, {n}, "
            "{date}, {yesterday}, {last_week}, {sampler.type}, {type}",
        ),
        (
            "base: base.yaml\nmatrix: {sampler.type: [tpe, random]}\nname_template: x\n",
            "sweep.yaml: two studies are both named 'x' in the same storage (base.yaml and "
            "base.yaml); add {n} or a matrix key to name_template, or rename",
        ),
        (
            "base: base.yaml\nmatrix: {budget.n_trials: [0]}\n",
            "sweep.yaml: toy-1 (budget.n_trials=0): budget.n_trials: Input should be greater "
            "than 0: got 0; use a value above 0",
        ),
        (
            "studies: [base.yaml, nope.yaml]\n",
            "sweep.yaml: studies[1]: file nope.yaml not found; check the path",
        ),
        (
            "base: base.yaml\nmatrix: {seed.x: [1]}\n",
            "sweep.yaml: toy-1 (seed.x=1): matrix key seed.x: seed is not a mapping; use a field "
            "path of the base study file",
        ),
    ],
)
def test_malformed_sweep_files_get_one_line(
    tmp_path: Path, capsys, sweep: str, expected: str
) -> None:
    write_sweep(tmp_path, sweep, storage="sqlite:///hpo.db")
    assert main(["sweep", "sweep.yaml"]) == 2
    assert capsys.readouterr().err.strip() == f"hpo: error: {expected}"
    assert not (tmp_path / "hpo.db").exists()


def test_a_matrix_of_too_many_studies_is_refused_before_expanding(tmp_path: Path) -> None:
    values = list(range(1, 21))
    path = write_sweep(
        tmp_path,
        f"base: base.yaml\nstudies: [base.yaml]\nmatrix:\n  seed: {values}\n"
        f"  budget.n_trials: {values}\n  trainer.args.num_train_epochs: {values}\n",
    )
    result = run_hpo("sweep", str(path), "--dry-run", timeout=120)  # stops a hang
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"hpo: error: {path}:3: matrix: makes 8000 studies (20 x 20 x 20) and `studies` "
        f"lists 1 more, over the limit of {MAX_STUDIES} per sweep; split it into several sweeps"
    )


def test_a_list_of_too_many_studies_is_refused(tmp_path: Path) -> None:
    files = [f"s{i}.yaml" for i in range(MAX_STUDIES + 1)]
    path = write_sweep(tmp_path, f"studies: [{', '.join(files)}]\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(info.value) == (
        f"{path}:1: studies: lists {MAX_STUDIES + 1} study files, over the limit of "
        f"{MAX_STUDIES} per sweep; split it into several sweeps"
    )


# --- plan, idempotence, failures, parallel ----------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    assert main(["sweep", "sweep.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "toy-1: 3 of 3 trials remaining (new study); overrides: sampler.type=random" in out
    assert "toy-2: 3 of 3 trials remaining (new study); overrides: sampler.type=tpe" in out
    assert "hpo run base.yaml --set name=toy-2 --set sampler.type=tpe" in out
    assert not (tmp_path / "hpo.db").exists()


def test_finished_sweep_does_nothing_the_second_time(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    assert main(["sweep", "sweep.yaml", "--no-compare"]) == 0
    first = capsys.readouterr().out
    assert "toy-1  3/3 finished  best" in first and "toy-2  3/3 finished" in first
    modified = (tmp_path / "hpo.db").stat().st_mtime_ns
    assert main(["sweep", "sweep.yaml"]) == 0
    second = capsys.readouterr().out
    assert "sweep 'sweep': all 2 studies are already finished; nothing to run" in second
    assert (tmp_path / "hpo.db").stat().st_mtime_ns == modified
    assert main(["sweep", "sweep.yaml", "--dry-run"]) == 0
    assert "toy-1: 0 of 3 trials remaining" in capsys.readouterr().out


def test_a_failing_study_exits_1_and_the_rest_still_run(tmp_path: Path, capsys) -> None:
    write_sweep(
        tmp_path,
        "base: base.yaml\nmatrix: {trainer.ref: ['tests.fake_trainers:always_fail', "
        "'trainers.toy:train']}\n",
    )
    assert main(["sweep", "sweep.yaml", "--no-compare"]) == 1
    out = capsys.readouterr().out
    assert "toy-1  0/3 finished  best -  FAILED: study 'toy-1': 3 trials failed" in out
    assert "toy-2  3/3 finished  best" in out and out.rstrip().endswith("ok")


@pytest.mark.timeout(60)
def test_parallel_runs_studies_in_processes(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    assert main(["sweep", "sweep.yaml", "--parallel", "2", "--no-compare"]) == 0
    out = capsys.readouterr().out
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    for name in ("toy-1", "toy-2"):
        assert f"{name}  3/3 finished" in out
        workers = {t.user_attrs["hpo:worker"] for t in finished_trials(storage, name)}
        assert all(not w.endswith(f":{os.getpid()}") for w in workers)  # not this process


# --- crashes and overlapping invocations ------------------------------------------------


def _start_sweep(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_trials(storage: str, name: str, n: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if len(trials_when_ready(storage, name) or []) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"study {name} never reached {n} trials")


def _wait_past_grace(storage: str, name: str, grace: float) -> None:
    """Until no running trial of study ``name`` has beaten within ``grace`` seconds."""
    from hpo.backends.optuna_compat import heartbeat_ages

    study = optuna.load_study(study_name=name, storage=storage)
    deadline = time.monotonic() + 30
    while any(age <= grace for age in heartbeat_ages(study).values()):  # the database's clock
        assert time.monotonic() < deadline, f"{name}: a trial still beats after 30 s"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_killed_sweep_resumes_to_the_budget(tmp_path: Path, capsys) -> None:
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_sweep(
        tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n", n_trials=4, spe=0.1
    )
    process = _start_sweep("sweep.yaml", "--no-compare")
    _wait_for_trials(storage, "toy-1", 3, process)  # two finished, the third running
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The next cron tick comes long after the heartbeat grace period (2 s here): the lost
    # trial is then failed as worker_lost and its parameters retried.
    _wait_past_grace(storage, "toy-1", grace=2)
    assert main(["sweep", "sweep.yaml", "--no-compare"]) == 0
    out = capsys.readouterr().out
    for name in ("toy-1", "toy-2"):
        assert f"{name}  4/4 finished" in out
        study = optuna.load_study(study_name=name, storage=storage)
        states = [t.state.name for t in study.get_trials()]
        assert states.count("COMPLETE") + states.count("PRUNED") == 4  # no extra trial
        lost = study.user_attrs.get("hpo:lost", [])
        assert [t.number for t in study.get_trials() if t.state.name == "FAIL"] == lost


def _storage_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_overlapping_invocation_exits_already_running(
    tmp_path: Path, capsys, kind: str, request: pytest.FixtureRequest
) -> None:
    storage = _storage_for(kind, tmp_path, request)
    name = request.getfixturevalue("unique_name")
    write_sweep(
        tmp_path,
        f"name: {name}\nbase: base.yaml\nmatrix: {{sampler.type: [grid]}}\n",
        name=name,
        storage=storage,
        n_trials=9,
        spe=0.1,
    )
    first = _start_sweep("sweep.yaml", "--no-compare")
    _wait_for_trials(storage, f"{name}-1", 1, first)
    # Cron fires again while the first sweep runs: the second one runs nothing.
    assert main(["sweep", "sweep.yaml", "--no-compare"]) == 0
    out = capsys.readouterr().out
    assert f"sweep {name!r} is already running:" in out
    assert "this invocation runs nothing" in out
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    trials = finished_trials(storage, f"{name}-1")
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(points) == 9 and len(set(points)) == 9  # every grid point exactly once
    assert all(not t.user_attrs["hpo:worker"].endswith(f":{os.getpid()}") for t in trials)
    # Once the first sweep is over, the lock is free again.
    assert main(["sweep", "sweep.yaml", "--no-compare"]) == 0
    assert "already finished; nothing to run" in capsys.readouterr().out


def test_readme_sweep_example_works_as_written(tmp_path: Path, monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scheduled sweeps", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    folder = tmp_path / "studies"
    shutil.copytree(ROOT / "studies", folder)
    (folder / "nightly.yaml").write_text(example)
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(folder / "nightly.yaml", today=dt.date(2026, 11, 28))
    assert [(s.name, s.config.sampler.type, s.config.budget.n_trials) for s in sweep.studies] == [
        ("quickstart-1-2026-11-28", "random", 6),
        ("quickstart-2-2026-11-28", "random", 12),
        ("quickstart-3-2026-11-28", "tpe", 6),
        ("quickstart-4-2026-11-28", "tpe", 12),
        ("strategy-grid", "grid", 8),
    ]
    assert sweep.studies[2].config.sampler.n_startup_trials == 4


def test_matrix_changing_only_the_sampler_type_says_to_replace_the_mapping(tmp_path: Path) -> None:
    write_sweep(tmp_path, "base: base.yaml\nmatrix: {sampler.type: [tpe, cmaes]}\n")
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("{type: random}", "{type: tpe, group: true}"))
    with pytest.raises(ConfigError) as info:
        load_sweep(tmp_path / "sweep.yaml")
    assert str(info.value) == (
        f"{tmp_path / 'sweep.yaml'}: toy-2 (sampler.type=cmaes): sampler: type `cmaes` takes no "
        "option `group` (set for `tpe`); replace the whole mapping, e.g. "
        "--set 'sampler={type: cmaes}' or `sampler: [{type: cmaes}]` in a sweep matrix"
    )


def test_sweep_file_problems_come_at_once_with_lines(tmp_path: Path) -> None:
    write_sweep(
        tmp_path,
        "base: base.yaml\nmatrix: {sampler.type: [tpe]}\nmatrix: {seed: [1]}\nnaem: x\n",
    )
    with pytest.raises(ConfigError) as info:
        load_sweep(tmp_path / "sweep.yaml")
    path = tmp_path / "sweep.yaml"
    assert str(info.value).splitlines() == [
        f"{path}:3: matrix: duplicate key `matrix` (lines 2 and 3); keep one of them",
        f"{path}:4: naem: unknown field `naem`; did you mean `name`?",
    ]


def test_validate_on_a_sweep_file_points_to_sweep_dry_run() -> None:
    result = run_hpo("validate", str(ROOT / "studies" / "sweep.yaml"))
    assert result.returncode == 2
    assert "this is a sweep file" in result.stderr and "hpo sweep FILE --dry-run" in result.stderr


def test_a_name_template_that_leaves_output_dir_is_exit_2_before_anything_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "base.yaml").write_text(
        "name: base\nbudget: {n_trials: 1}\ntrainer: {ref: trainers.toy:train}\n"
        "search_space: {dropout: {type: float, low: 0.0, high: 0.3}}\n"
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text('base: base.yaml\nname_template: "../{base}-{n}"\nmatrix: {seed: [1, 2]}\n')
    result = run_hpo("sweep", str(sweep))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"hpo: error: {sweep}: base-1 (seed=1): name: '../base-1' becomes a folder under "
        "output_dir"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "sweep.yaml"]
    assert not (tmp_path.parent / "base-1").exists()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_dry_run_never_prints_a_password(tmp_path: Path, postgres_url, as_json: bool) -> None:
    """The plan and each printed command show the storage with its passwords as ***."""
    write_sweep(tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    storage = postgres_url.replace("postgres@", "postgres:first-s3cret@", 1)
    storage += "?sslmode=prefer&password=second-s3cret"
    result = run_hpo(
        "sweep", "sweep.yaml", "--dry-run", *(["--json"] if as_json else []), "--storage", storage
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout + result.stderr
    assert "s3cret" not in printed
    assert "postgres:***@" in printed and "password=***" in printed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sigterm_stops_a_sweep_like_ctrl_c(tmp_path: Path, parallel: str) -> None:
    # A CronJob's pod is stopped with SIGTERM to its PID 1, the sweep: it stops its studies
    # (their processes too), fails their running trials as `interrupted` (the next tick
    # resumes them) and exits 143 (before: it died at once, its trial left RUNNING).
    from tests.test_workers import _children, _kill_all, _wait_gone

    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    write_sweep(
        tmp_path, "base: base.yaml\nmatrix: {sampler.type: [random, tpe]}\n", n_trials=4, spe=0.5
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "sweep", "sweep.yaml", "--no-compare"]
        + ["--parallel", parallel],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    running: list = []
    while not running:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
        trials = trials_when_ready(storage, "toy-1") or []
        running = [t for t in trials if t.state.name == "RUNNING"]
    children = _children(process.pid)
    try:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=25)
        assert process.returncode == 143, err
        assert err.strip().splitlines()[-1] == "hpo: stopped by SIGTERM", err
        assert _wait_gone(children, timeout=10) == set()
    finally:
        _kill_all(children)
    for name in ("toy-1", "toy-2"):
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except KeyError:  # not started (one at a time)
            continue
        assert [t for t in trials if t.state.name == "RUNNING"] == [], name
        failed = {t.user_attrs.get("hpo:failure") for t in trials if t.state.name == "FAIL"}
        assert failed <= {"interrupted"}, failed
    failed_1 = [t for t in trials_of(storage, "toy-1") if t.state.name == "FAIL"]
    assert [t.user_attrs["hpo:failure"] for t in failed_1] == ["interrupted"]


def trials_of(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()
