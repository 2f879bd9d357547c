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
        # Passwords in the query, as psycopg2 (password, sslpassword) and PyMySQL (passwd)
        # take them; the other keys stay as written.
        (
            "postgresql+psycopg2://u@h/d?sslmode=require&password=s3cret",
            "postgresql+psycopg2://u@h/d?sslmode=require&password=***",
        ),
        ("postgresql://h/d?sslpassword=s3cret&user=u", "postgresql://h/d?sslpassword=***&user=u"),
        ("mysql+pymysql://root@h/d?passwd=s3cret", "mysql+pymysql://root@h/d?passwd=***"),
        # No host: a Unix socket in the query.
        ("postgresql:///d?host=/tmp&password=s3cret", "postgresql:///d?host=/tmp&password=***"),
        ("postgresql://u:a%40b@h/d?password=${PW}", "postgresql://u:***@h/d?password=***"),
        # ${VAR} references outside the credentials are shown as written.
        (
            "postgresql://${DB_USER}:${PW}@${DB_HOST}:${DB_PORT}/${DB}",
            "postgresql://${DB_USER}:***@${DB_HOST}:${DB_PORT}/${DB}",
        ),
        ("sqlite:///${HOME}/a@b:c.db", "sqlite:///${HOME}/a@b:c.db"),
        ("journal:///runs/x@y.log", "journal:///runs/x@y.log"),
        ("storage=mysql+pymysql://u:pw@h/d", "storage=mysql+pymysql://u:***@h/d"),
    ],
)
def test_redact(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_env_vars_expand_only_when_opening(monkeypatch) -> None:
    monkeypatch.setenv("HPO_PW", "pw")
    assert expand_url("postgresql://u:${HPO_PW}@h/d") == "postgresql://u:pw@h/d"


# Every character that means something in a URL, and the tail that leaked after an "@".
AWKWARD = "p@ss:w/rd?x=1&y#%zz+ leaked-tail"


def test_a_password_from_env_needs_no_escaping_in_any_url_part(monkeypatch) -> None:
    """The value goes into the parsed URL's field, so its characters cannot break the URL."""
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("HPO_PW", AWKWARD)
    monkeypatch.setenv("HPO_DB_HOST", "db.example")
    real = make_url(expand_url("postgresql://me:${HPO_PW}@${HPO_DB_HOST}:5432/x?sslmode=require"))
    assert (real.username, real.password) == ("me", AWKWARD)
    assert (real.host, real.port) == ("db.example", 5432)
    assert real.query == {"sslmode": "require"}
    real = make_url(expand_url("mysql+pymysql://root@h/x?password=${HPO_PW}"))
    assert real.query == {"password": AWKWARD}
    real = make_url(expand_url("postgresql:///x?host=/tmp&password=${HPO_PW}"))
    assert real.query == {"host": "/tmp", "password": AWKWARD}


def test_a_literal_at_in_the_password_splits_at_the_last_at() -> None:
    """As urllib reads a URL: a host holds no "@", so the last one ends the credentials."""
    from sqlalchemy.engine import make_url

    real = make_url(expand_url("postgresql://me:p@ss@w@rd@db:5432/x"))
    assert (real.password, real.host, real.port) == ("p@ss@w@rd", "db", 5432)


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
    # The URL as written, its password shown as *** (the README's rule for stored attributes).
    assert stored.user_attrs["hpo:config"]["storage"] == url.replace("${HPO_DB_PASSWORD}", "***")


def test_an_at_in_the_query_or_database_is_not_read_as_credentials() -> None:
    from sqlalchemy.engine import make_url

    real = make_url(expand_url("postgresql://db:5432/x?user=me@corp&sslmode=require"))
    assert (real.username, real.password, real.host, real.port) == (None, None, "db", 5432)
    assert real.query == {"user": "me@corp", "sslmode": "require"}
    assert make_url(expand_url("postgresql://u:pw@db/team@x")).database == "team@x"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://u:pw4sec/ret@h/d",  # "/" ends the host part early
        "postgresql+psycopg2://u:pw5sec?ret@h/d",
        "postgresql+psycopg2://u:pw6sec#ret@h/d",
        "postgresql:/u:pw7secret@h/d",  # not a URL at all
        "u:pw8secret@h/d",
    ],
)
def test_a_url_whose_password_breaks_it_is_refused_without_showing_it(toy_study, url) -> None:
    """A password written into the URL with "/", "?" or "#" unescaped moves the host;
    validation refuses it (exit 2) and the message shows no part of the password."""
    study = toy_study(storage=f"'{url}'")
    for command in ("validate", "status"):
        result = run_hpo(command, str(study))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "storage" in result.stderr
        assert "sec" not in result.stdout + result.stderr.replace(str(study), "")


def _leaks(text: str, secret: str) -> list[str]:
    """The secret, or any 5-character piece of it, found in ``text``."""
    pieces = {secret[i : i + 5] for i in range(max(len(secret) - 4, 1))}
    return sorted(p for p in pieces if p in text)


def test_a_password_with_url_characters_from_env_connects_to_postgres(
    postgres_url, monkeypatch
) -> None:
    """Trust auth accepts any password: the engine must reach the server, not a host
    made of the password's tail ("could not translate host name ...")."""
    import sqlalchemy

    from hpo.backends.postgres import _driver_url

    monkeypatch.setenv("HPO_DB_PASSWORD", AWKWARD)
    written = postgres_url.replace("postgres@", "postgres:${HPO_DB_PASSWORD}@", 1)
    literal = postgres_url.replace("postgres@", "postgres:p@ss@word@", 1)
    for url in (written, literal):
        engine = sqlalchemy.create_engine(_driver_url(expand_url(url)))
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        engine.dispose()


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_run_and_status_never_print_a_password_in_any_url_form(
    toy_study, postgres_url, unique_name, form: str
) -> None:
    """The run's first log line, status's "run it first" hint (with --storage, so the
    command it suggests carries the URL) and stored attributes: no password, no tail."""
    import optuna

    if form == "userinfo":
        written = postgres_url.replace("postgres@", "postgres:${HPO_DB_PASSWORD}@", 1)
    else:
        written = f"{postgres_url}?password=${{HPO_DB_PASSWORD}}"
    env = {"HPO_DB_PASSWORD": AWKWARD}
    study = toy_study(name=unique_name, storage=written, n_trials=1)
    status = run_hpo("status", str(study), env=env)
    assert status.returncode == 2, status.stderr
    literal = written.replace("${HPO_DB_PASSWORD}", "s3cret-literal")
    hint = run_hpo("status", str(study), "--storage", literal, env=env)
    assert hint.returncode == 2, hint.stderr
    assert "hpo run" in hint.stderr
    run = run_hpo("run", str(study), env=env)
    assert run.returncode == 0, run.stderr
    printed = status.stdout + status.stderr + run.stdout + run.stderr
    assert not _leaks(printed, AWKWARD), printed
    assert not _leaks(hint.stdout + hint.stderr, "s3cret-literal"), hint.stderr
    stored = optuna.load_study(study_name=unique_name, storage=postgres_url)
    assert not _leaks(str(stored.user_attrs) + str(stored.trials[0].user_attrs), AWKWARD)
    assert "***" in stored.user_attrs["hpo:config"]["storage"]


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
