"""Storage URLs: redaction, SQLite settings, friendly errors, unreachable servers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hpo.errors import ConfigError, StorageError
from hpo.storage import check_url, expand_url, open_storage, redact_url, study_lock
from tests.conftest import run_hpo


@pytest.mark.parametrize(
    "url, redacted",
    [
        ("postgresql+psycopg2://hpo:s3cret@db:5432/x", "postgresql+psycopg2://hpo:***@db:5432/x"),
        ("postgresql://u:p@ss@w@rd@host/db", "postgresql://u:***@host/db"),
        ("sqlite:///hpo.db", "sqlite:///hpo.db"),
        (
            "error talking to postgresql://u:pw@h/d: refused",
            "error talking to postgresql://u:***@h/d: refused",
        ),
    ],
)
def test_redact(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_env_vars_expand_only_when_opening(monkeypatch) -> None:
    monkeypatch.setenv("HPO_PW", "pw")
    assert expand_url("postgresql://u:${HPO_PW}@h/d") == "postgresql://u:pw@h/d"


def test_friendly_url_errors() -> None:
    with pytest.raises(ValueError, match="for a SQLite file write sqlite:///my.db"):
        check_url("my.db")
    with pytest.raises(ConfigError, match="unsupported storage scheme 'redis'"):
        open_storage("redis://localhost")


def test_sqlite_uses_wal_and_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    with sqlite3.connect(tmp_path / "a.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(StorageError, match="folder .*nope does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'nope' / 'a.db'}")


def test_unreachable_postgres_exits_1_with_redacted_url(toy_study, monkeypatch) -> None:
    monkeypatch.setenv("HPO_DB_PASSWORD", "topsecret")
    study = toy_study(storage="postgresql+psycopg2://me:${HPO_DB_PASSWORD}@127.0.0.1:1/x")
    result = run_hpo("run", str(study), env={"HPO_DB_PASSWORD": "topsecret"})
    assert result.returncode == 1
    assert "cannot open storage postgresql+psycopg2://me:***@127.0.0.1:1/x" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_password_never_reaches_logs_or_stored_attrs(
    toy_study, postgres_url, unique_name, monkeypatch
) -> None:
    """Trust auth accepts any password, so a real run can carry a secret in its URL."""
    import optuna

    monkeypatch.setenv("HPO_DB_PASSWORD", "hunter2-secret")
    url = postgres_url.replace("postgres@", "postgres:${HPO_DB_PASSWORD}@", 1)
    study = toy_study(name=unique_name, storage=url, n_trials=2)
    result = run_hpo("run", str(study), "--debug", env={"HPO_DB_PASSWORD": "hunter2-secret"})
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    stored = optuna.load_study(study_name=unique_name, storage=postgres_url)
    everything = str(stored.user_attrs) + str([t.user_attrs for t in stored.trials])
    assert "hunter2-secret" not in everything
    assert (
        "postgres:***@" in stored.user_attrs["hpo:config"]["storage"]
        or "${HPO_DB_PASSWORD}" not in stored.user_attrs["hpo:config"]["storage"]
    )


def test_a_postgres_url_without_a_driver_runs_through_psycopg2(
    toy_study, postgres_url, unique_name
) -> None:
    """``postgresql://`` is psycopg 3 to SQLAlchemy 2.1; hpo ships psycopg2 and uses it."""
    import optuna

    url = postgres_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    assert url.startswith("postgresql://")
    study = toy_study(name=unique_name, storage=url, n_trials=2)
    for command in ("run", "status", "best"):
        result = run_hpo(command, str(study))
        assert result.returncode == 0, f"hpo {command}: {result.stderr}"
    stored = optuna.load_study(study_name=unique_name, storage=postgres_url)
    assert len(stored.trials) == 2
    assert stored.user_attrs["hpo:config"]["storage"] == url  # as the user wrote it


def test_a_mysql_url_without_a_driver_is_refused_at_validation(toy_study) -> None:
    """``mysql://`` is mysqlclient to SQLAlchemy, which hpo does not ship: refused up front
    (exit 2, naming the scheme to write), never accepted and then failing to open."""
    study = toy_study(storage="mysql://root@127.0.0.1:3306/test")
    for command in ("validate", "status"):
        result = run_hpo(command, str(study))
        assert result.returncode == 2, result.stderr
        assert "unsupported storage scheme 'mysql'" in result.stderr
        assert "mysql+pymysql" in result.stderr


def test_study_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'x.db'}"
    lock = study_lock(url, "s")
    lock.acquire()
    probe = (
        "import fcntl,sys; f=open(sys.argv[1],'a+');"
        "\ntry:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')"
        "\nexcept BlockingIOError: print('held')"
    )
    held = subprocess.run(
        [sys.executable, "-c", probe, f"{tmp_path / 'x.db'}.lock"], capture_output=True, text=True
    ).stdout.strip()
    lock.release()
    free = subprocess.run(
        [sys.executable, "-c", probe, f"{tmp_path / 'x.db'}.lock"], capture_output=True, text=True
    ).stdout.strip()
    lock.close()
    assert (held, free) == ("held", "free")


# --- read-only commands never write ------------------------------------------------------

READ_ONLY_COMMANDS = [
    ["status"],
    ["best"],
    ["report"],
    ["compare"],
    ["export", "--to", "exported"],
    ["dashboard", "--port", "0"],
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: c[0])
def test_read_only_command_on_a_missing_sqlite_file_creates_nothing(
    toy_study, tmp_path: Path, capsys, command: list[str]
) -> None:
    from hpo.cli import main

    study_file = toy_study()  # storage: sqlite:///<tmp_path>/hpo.db, not created yet
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([command[0], str(study_file), *command[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str((tmp_path / "hpo.db").resolve()) in err
    assert f"hpo run {study_file}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _snapshot(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Every row of the SQLite file, and every file beside it."""
    with sqlite3.connect(tmp_path / "hpo.db") as connection:
        rows = list(connection.iterdump())
    return rows, sorted(p.name for p in tmp_path.iterdir() if p.name != "dashboards")


def test_read_only_commands_leave_the_storage_as_it_was(toy_study, tmp_path: Path, capsys) -> None:
    from hpo.cli import main

    study_file = toy_study(n_trials=3)
    assert main(["run", str(study_file)]) == 0
    before = _snapshot(tmp_path)
    for command in (["status"], ["best"], ["report"], ["compare"]):
        assert main([command[0], str(study_file), *command[1:]]) == 0, capsys.readouterr()
    assert _snapshot(tmp_path) == before
    # --attach is the one way a report writes to the storage (figures for optuna-dashboard).
    assert main(["report", str(study_file), "--attach"]) == 0
    assert _snapshot(tmp_path)[0] != before[0]


def test_in_memory_sqlite_is_refused_at_validation(toy_study) -> None:
    from hpo.cli import main

    for url in ("sqlite:///:memory:", "sqlite://"):
        assert main(["validate", str(toy_study(storage=url))]) == 2


def test_retries_are_never_nested(monkeypatch) -> None:
    """One operation is attempted at most retries + 1 times, however deep the calls go."""
    import sqlalchemy

    from hpo.backends import rdb

    monkeypatch.setattr(rdb.time, "sleep", lambda s: None)
    attempts = []

    def inner(self):
        attempts.append(1)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection reset"))

    outer = rdb.retrying(lambda self: rdb.retrying(inner, 2)(self), 2)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        outer(None)
    assert len(attempts) == 3  # nested retries multiplied: 3 x 3 = 9
