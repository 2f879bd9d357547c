"""The command line's contract: --version, global options anywhere, --json outputs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from hpo.cli import main
from tests.conftest import ROOT, STUDIES, run_hpo


def test_version() -> None:
    result = run_hpo("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("hpo 0.")


def test_global_options_before_or_after_the_command(run_cli, toy_study, tmp_path: Path) -> None:
    study_file = str(toy_study(n_trials=5))
    before = run_cli("--set", "budget.n_trials=2", "--debug", "validate", study_file, "--json")
    after = run_cli("validate", study_file, "--json", "--set", "budget.n_trials=2", "--debug")
    assert before.returncode == after.returncode == 0, before.stderr
    assert json.loads(before.stdout)["n_trials"] == json.loads(after.stdout)["n_trials"] == 2
    # Both places at once: the command's own --set comes last and wins.
    both = run_cli(
        "--set",
        "budget.n_trials=2",
        "validate",
        study_file,
        "--json",
        "--set",
        "budget.n_trials=4",
    )
    assert json.loads(both.stdout)["n_trials"] == 4
    other = tmp_path / "other.db"
    ran = run_cli("--storage", f"sqlite:///{other}", "run", study_file, "--n-trials", "1")
    assert ran.returncode == 0, ran.stderr
    assert other.exists()


def test_debug_before_the_command_shows_the_traceback(run_cli, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\n")
    plain = run_cli("validate", "bad.yaml")
    debug = run_cli("--debug", "validate", "bad.yaml")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr


def test_debug_keeps_the_exit_code(run_cli, toy_study, tmp_path: Path) -> None:
    """--debug adds the traceback; scripts still see 2 for bad input, 1 for a runtime failure."""
    study_file = str(toy_study())
    (tmp_path / "bad.yaml").write_text(Path(study_file).read_text() + "colour: blue\n")
    crash = str(toy_study(name="crash", n_trials=3))  # max_failures: 3
    cases = {
        ("validate", "bad.yaml"): 2,  # unknown key
        ("validate", study_file, "--storage", "redis://x"): 2,  # bad storage scheme
        ("status", study_file, "--storage", f"sqlite:///{tmp_path / 'none.db'}"): 2,  # no study
        ("validate", study_file, "--set", "budget.n_trials=many"): 2,  # bad --set
        ("run", crash, "--set", "trainer.ref=tests.fake_trainers:always_fail"): 1,
    }
    for command, code in cases.items():
        plain, debug = run_cli(*command), run_cli(*command, "--debug")
        assert plain.returncode == debug.returncode == code, (command, debug.stderr)
        assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr, command
        assert debug.stderr.rstrip().splitlines()[-1].startswith("hpo: error: "), command


def test_validate_json(run_cli, toy_study) -> None:
    result = run_cli("validate", str(toy_study()), "--json")
    data = json.loads(result.stdout)
    assert data["study"] == "toy" and data["n_trials"] == 5 and data["grid_size"] is None
    assert data["search_space"]["learning_rate"]["log"] is True
    assert data["objective"] == {"metric": "eval_accuracy", "direction": "maximize"}


def test_status_and_best_json(run_cli, toy_study) -> None:
    study_file = str(toy_study(n_trials=3))
    assert run_cli("run", study_file).returncode == 0
    status = json.loads(run_cli("status", study_file, "--json").stdout)
    assert status["study"] == "toy" and status["budget"] == 3 and status["finished"] == 3
    assert status["trials_by_state"] == {"COMPLETE": 3}
    assert status["attention"] == []
    best = json.loads(run_cli("best", study_file, "--json").stdout)
    assert set(best) == {"study", "trial", "value", "params", "metrics"}
    assert status["best"] == best


# A trainer module whose import leaves a mark: any command that imports it runs its code.
MARKING_TRAINER = """\
from pathlib import Path

Path(__file__).with_name("imported").touch()

from hpo.trainers.toy import train
"""


def test_read_only_commands_never_import_the_trainer(toy_study, tmp_path: Path, capsys) -> None:
    """status, best, report, compare and dashboard read the stored study: the trainer's code
    (`trainer.ref`, a module beside the study file) never runs for them."""
    module = f"marking_{tmp_path.name.replace('-', '_')}"  # fresh: not in sys.modules yet
    (tmp_path / f"{module}.py").write_text(MARKING_TRAINER)
    study_file = toy_study(n_trials=2)
    study_file.write_text(study_file.read_text().replace("trainers.toy:train", f"{module}:train"))
    marker = tmp_path / "imported"
    ran = run_hpo("run", str(study_file))
    assert ran.returncode == 0, ran.stderr
    assert marker.exists()  # running it is running its code
    marker.unlink()
    for command in (
        ["status", str(study_file)],
        ["best", str(study_file)],
        ["report", str(study_file)],
        ["compare", str(study_file)],
    ):
        assert main(command) == 0, capsys.readouterr().err
        assert not marker.exists(), command
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", str(study_file), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = server.stdout.readline()  # printed once the study is loaded and the port bound
        assert "optuna-dashboard for study 'toy'" in line, server.stderr.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not marker.exists()
    assert main(["validate", str(study_file)]) == 0  # validate still checks the trainer
    assert marker.exists()


def test_sweep_dry_run_json(tmp_path: Path, toy_study, capsys) -> None:
    toy_study(n_trials=3)
    (tmp_path / "sweep.yaml").write_text("base: toy.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    assert main(["sweep", "sweep.yaml", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sweep"] == "sweep"
    assert [s["name"] for s in data["studies"]] == ["toy-1", "toy-2"]
    first = data["studies"][0]
    assert first["overrides"] == {"sampler.type": "random"}
    assert first["budget"] == first["remaining"] == 3 and first["exists"] is False
    assert "hpo run toy.yaml --set name=toy-1" in first["command"]
    assert not (tmp_path / "hpo.db").exists()


def test_no_study_yet_names_the_run_that_creates_it_where_asked(
    run_cli, toy_study, tmp_path: Path
) -> None:
    """The suggested `hpo run` keeps the user's --set/--storage: pasted, it creates the study
    the failed command looked for."""
    toy_study(n_trials=1)
    missing = run_cli("status", "toy.yaml", "--set", "storage=sqlite:///ro db.db")
    assert missing.returncode == 2
    assert "(the file does not exist); nothing was created" in missing.stderr
    fix = "hpo run toy.yaml --set 'storage=sqlite:///ro db.db'"
    assert missing.stderr.rstrip().endswith(f"Run the study first: {fix}")
    assert run_cli(*shlex.split(fix)[1:]).returncode == 0
    assert run_cli("status", "toy.yaml", "--set", "storage=sqlite:///ro db.db").returncode == 0
    assert not (tmp_path / "hpo.db").exists()  # nothing went to the file's own storage
    # An existing but empty file is not "a file that does not exist".
    (tmp_path / "empty.db").touch()
    empty = run_cli("best", "toy.yaml", "--storage", "sqlite:///empty.db")
    assert empty.returncode == 2 and "does not exist" not in empty.stderr
    why = "(the file exists but has no complete Optuna tables"
    assert f"{tmp_path / 'empty.db'} {why}" in empty.stderr
    assert "hpo run toy.yaml --set storage=sqlite:///empty.db" in empty.stderr
    # A storage that exists without the study: the same hint.
    other = run_cli("status", "toy.yaml", "--set", "storage=sqlite:///ro db.db", "--set", "name=b")
    assert other.returncode == 2
    assert other.stderr.rstrip().endswith(
        "run it first (hpo run toy.yaml --set 'storage=sqlite:///ro db.db' --set name=b)"
    )


def test_init_and_schema_refuse_overrides_they_would_ignore(run_cli, tmp_path: Path) -> None:
    """init writes a file and schema describes every file: a --set would silently do nothing."""
    data = str(STUDIES / "data" / "reviews.csv")
    for command in (
        ("init", data, "--set", "budget.n_trials=3"),
        ("--set", "budget.n_trials=3", "init", data),
        ("schema", "--set", "budget.n_trials=3"),
        ("schema", "--storage", "sqlite:///x.db"),
    ):
        result = run_cli(*command)
        assert result.returncode == 2, command
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stdout == "", command
        if "init" in command:  # says what to do instead
            assert result.stderr.strip() == (
                "hpo: error: hpo init takes no --set; run it without, then edit "
                "budget.n_trials in study.yaml (or give --set to the commands that read it)"
            )
    assert list(tmp_path.iterdir()) == []  # no study.yaml written
