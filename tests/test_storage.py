"""Storage URLs: redaction, SQLite settings, friendly errors, unreachable servers."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from hpo import storage as storage_module
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
        # An unescaped "?" in a written password ends the host part early: the rest of
        # the password sits in the query, and nothing after the user name is shown.
        ("postgresql://user:123?abc@db.example/hpo", "postgresql://user:***"),
        ("postgresql://user:?secret@host", "postgresql://user:***"),
        ("postgresql://u:p@ss?word@host/db", "postgresql://u:***"),
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
        "postgresql+psycopg2://u:123?pw9sec@h/d",  # "123" reads as a port
        "postgresql+psycopg2://u:?pwAsecret@h",
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


@pytest.mark.fast
def test_heartbeats_are_judged_only_a_grace_period_after_the_storage_was_last_out_of_reach(
    monkeypatch,
) -> None:
    import sqlalchemy

    from hpo.backends import base, rdb

    clock = [1000.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rdb.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    rdb.retrying(lambda self: "answer")(None)
    assert base.heartbeats_can_be_judged(60)  # no outage, no wait
    lost = [sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection reset"))] * 3

    def answers_after_an_outage(self):
        if lost:
            raise lost.pop()
        return "answer"

    assert rdb.retrying(answers_after_an_outage)(None) == "answer"  # back after 3.5 s
    assert not base.heartbeats_can_be_judged(60)  # others' beats may still be on their way
    clock[0] += 59
    assert not base.heartbeats_can_be_judged(60)
    clock[0] += 1
    assert base.heartbeats_can_be_judged(60)  # a whole grace period in reach
    assert base.heartbeats_can_be_judged(None)  # no heartbeats, nothing to judge


# --- every wait on the network has a limit ----------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP port on 127.0.0.1 that accepts connections and never says a word (a hung
    database, or a port that is not a database at all)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:  # the accept timed out: look at ``stop`` again
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for connection in held:
        connection.close()
    server.close()


@pytest.mark.parametrize("scheme", ["postgresql+psycopg2", "mysql+pymysql"])
@pytest.mark.parametrize("command", ["run", "status", "worker"])
def test_a_server_that_never_answers_fails_in_one_line(
    toy_study, silent_server, scheme: str, command: str
) -> None:
    """Today ``run`` and ``worker`` wait forever, ``status`` until killed. The subprocess
    timeout is the requirement itself (under a minute), not a measurement."""
    url = f"{scheme}://u@127.0.0.1:{silent_server}/db"
    if command != "run":
        # `run` keeps the default limits (10 s to connect; PyMySQL's 30 s read timeout bounds
        # the greeting); the other commands take the URL's own, as a user may set them.
        url += "?connect_timeout=2" if scheme.startswith("postgresql") else "?read_timeout=3"
    study = toy_study(storage=url)
    extra = ["--device", "none"] if command == "worker" else []
    result = run_hpo(command, str(study), *extra, timeout=60)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [line for line in errors if line.startswith("hpo: error: ")]
    assert len(errors) == 1, result.stderr
    assert f"cannot open storage {url}" in errors[0]
    assert "retry" not in result.stderr  # one wait, not four: a timeout is no restart
    assert "Traceback" not in result.stderr


def test_postgres_connections_carry_limits_unless_the_url_sets_its_own() -> None:
    from hpo.backends.postgres import connect_args

    limits = connect_args("postgresql+psycopg2://u@h/db")
    assert limits["connect_timeout"] == 10
    assert limits["keepalives"] == 1
    assert "-c statement_timeout=" in limits["options"]
    mine = connect_args(
        "postgresql+psycopg2://u@h/db?connect_timeout=3&options=-c%20statement_timeout%3D5s"
    )
    # The URL's own values reach psycopg2 (connect_args would win over them).
    assert "connect_timeout" not in mine and "options" not in mine
    # The study lock waits as long as another worker claims: no statement limit on it.
    assert connect_args("postgresql+psycopg2://u@h/db", lock=True)["options"].endswith(
        "-c statement_timeout=0"
    )


def test_mysql_connections_carry_limits_unless_the_url_sets_its_own() -> None:
    from hpo.backends.mysql import connect_args

    limits = connect_args("mysql+pymysql://u@h/db")
    assert limits == {"connect_timeout": 10, "read_timeout": 30, "write_timeout": 30}
    assert connect_args("mysql+pymysql://u@h/db?read_timeout=90&connect_timeout=5") == {
        "write_timeout": 30
    }


def test_postgres_storage_queries_have_a_statement_timeout(postgres_url) -> None:
    import sqlalchemy

    storage = open_storage(postgres_url)
    with storage.engine.connect() as connection:
        shown = connection.execute(sqlalchemy.text("SHOW statement_timeout")).scalar()
    assert shown == "1min"
    custom = open_storage(postgres_url + "?options=-c%20statement_timeout%3D5s")
    with custom.engine.connect() as connection:
        shown = connection.execute(sqlalchemy.text("SHOW statement_timeout")).scalar()
    assert shown == "5s"


def test_a_mysql_lock_wait_outlasts_the_read_timeout(mysql_url, unique_name, caplog) -> None:
    """A worker waits for the claim lock as long as another worker claims; the read
    timeout that stops a hung server must not cut that wait (nor log a lost connection)."""
    import threading

    url = mysql_url + ("&" if "?" in mysql_url else "?") + "read_timeout=2"
    holder, waiter = study_lock(url, unique_name), study_lock(url, unique_name)
    holder.acquire()
    waiting = threading.Thread(target=waiter.acquire, daemon=True)
    waiting.start()
    waiting.join(timeout=5)  # longer than the read timeout: the wait goes on
    still_waiting = waiting.is_alive()
    holder.release()
    waiting.join(timeout=30)
    got = waiter.held
    holder.close()
    waiter.close()
    assert still_waiting
    assert got
    assert "connection lost" not in caplog.text


# --- reading works where writing can't -------------------------------------------------

_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _on_read_only_mount(folder: Path, *command: str) -> list[str]:
    """``command`` run with ``folder`` mounted read-only in a private mount namespace: a
    real read-only file system even for root (whom file permissions do not stop), gone
    when the command ends."""
    return ["unshare", "--mount", "sh", "-c", _READ_ONLY_MOUNT, "sh", str(folder), *command]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Path:
    """A folder ``db`` that :func:`_on_read_only_mount` can mount read-only, or a skip."""
    import shutil
    import subprocess

    folder = tmp_path / "db"
    folder.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        _on_read_only_mount(folder, "sh", "-c", f"! touch {folder / 'probe'} 2>/dev/null"),
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here (needs root): {probe.stderr.strip()}")
    return folder


def _hpo_on_read_only_mount(folder: Path, *args: str):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    return subprocess.run(
        _on_read_only_mount(folder, sys.executable, "-m", "hpo", *args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("command", ["status", "best", "report"])
def test_read_only_commands_read_a_study_on_a_read_only_mount(
    toy_study, read_only_folder: Path, command: str
) -> None:
    study = toy_study(storage=f"sqlite:///{read_only_folder / 'hpo.db'}", n_trials=2)
    assert run_hpo("run", str(study)).returncode == 0
    before = sorted(p.name for p in read_only_folder.iterdir())
    result = _hpo_on_read_only_mount(read_only_folder, command, str(study))
    assert result.returncode == 0, result.stderr
    assert "Optuna tables" not in result.stderr
    assert sorted(p.name for p in read_only_folder.iterdir()) == before


def test_a_read_only_mount_reads_the_last_commits_still_in_the_wal(
    toy_study, read_only_folder: Path
) -> None:
    """A study copied or mounted mid-run has its newest trials in ``hpo.db-wal``: the
    reader sees them (SQLite's read-only open), not the older main file alone."""
    study = toy_study(storage=f"sqlite:///{read_only_folder / 'hpo.db'}", n_trials=2)
    assert run_hpo("run", str(study)).returncode == 0
    db = read_only_folder / "hpo.db"
    keeper = sqlite3.connect(db)  # an open connection keeps the -wal and -shm files
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("UPDATE studies SET study_name = 'renamed'")
    keeper.commit()
    try:
        assert (read_only_folder / "hpo.db-wal").stat().st_size > 0
        renamed = study.read_text().replace("name: toy", "name: renamed")
        study.write_text(renamed)
        result = _hpo_on_read_only_mount(read_only_folder, "best", str(study))
    finally:
        keeper.close()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("how", ["read-only mount", "immutable file"])
def test_run_on_a_read_only_sqlite_file_says_so_in_one_line(
    toy_study, read_only_folder: Path, how: str
) -> None:
    """Today: 47 s of "connection lost" retries (a read-only file) or a bare EROFS on
    the lock file (a read-only folder)."""
    import shutil
    import subprocess

    db = read_only_folder / "hpo.db"
    study = toy_study(storage=f"sqlite:///{db}", n_trials=2)
    assert run_hpo("run", str(study)).returncode == 0
    extended = study.read_text().replace("n_trials: 2", "n_trials: 4")
    study.write_text(extended)
    if how == "read-only mount":
        result = _hpo_on_read_only_mount(read_only_folder, "run", str(study))
    else:
        if shutil.which("chattr") is None:
            pytest.skip("chattr (e2fsprogs) is not installed")
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("this file system has no immutable flag")
        try:
            result = run_hpo("run", str(study), timeout=60)
        finally:
            subprocess.run(["chattr", "-i", str(db)], check=True)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "WARNING" not in result.stderr  # no "connection lost" retries
    assert [line for line in lines if line.startswith("hpo: error:")] == lines[-1:]
    assert lines[-1].startswith(f"hpo: error: {db} is read-only")
    assert "copy it to a writable folder" in lines[-1]  # the fix
    assert "hpo status, best and report read it" in lines[-1]


def test_run_on_a_read_only_journal_says_so_in_one_line(toy_study, read_only_folder: Path) -> None:
    """Before: one bare line ``[Errno 30] Read-only file system: '.../hpo.log.hpo.lock'``."""
    log = read_only_folder / "hpo.log"
    study = toy_study(storage=f"journal:///{log}", n_trials=2)
    assert run_hpo("run", str(study)).returncode == 0
    study.write_text(study.read_text().replace("n_trials: 2", "n_trials: 4"))
    result = _hpo_on_read_only_mount(read_only_folder, "run", str(study))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("hpo: error:")] == lines[-1:]
    assert lines[-1].startswith(f"hpo: error: {log} is read-only"), lines[-1]
    assert "copy it to a writable folder" in lines[-1]
    assert _hpo_on_read_only_mount(read_only_folder, "status", str(study)).returncode == 0


def test_a_file_that_is_no_database_on_a_read_only_mount_is_named_as_such(
    toy_study, read_only_folder: Path
) -> None:
    (read_only_folder / "hpo.db").write_bytes(b"not a database, " * 100)
    study = toy_study(storage=f"sqlite:///{read_only_folder / 'hpo.db'}")
    result = _hpo_on_read_only_mount(read_only_folder, "status", str(study))
    assert result.returncode == 2, result.stderr
    assert "the file exists but has no complete Optuna tables" in result.stderr


def _driver_error() -> None:
    raise RuntimeError('could not translate host name "db" to address: Name or service not known')


@pytest.mark.parametrize("password", ["e", "no"])
def test_a_short_password_does_not_turn_a_drivers_message_into_stars(password: str) -> None:
    """Only the URL form of a 1-3 character password is hidden: as bare text it would
    star out every word holding those letters."""
    with pytest.raises(StorageError) as caught:
        storage_module._guarded(f"postgresql://u:{password}@db/d", _driver_error)
    assert str(caught.value) == (
        "cannot open storage postgresql://u:***@db/d: could not translate host name "
        '"db" to address: Name or service not known'
    )


def test_a_url_that_cannot_be_expanded_leaves_the_storage_error_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HPO_TEST_PORT", "not-a-port")
    with pytest.raises(StorageError, match="could not translate host name"):
        storage_module._guarded("postgresql://u:s3cret@db:${HPO_TEST_PORT}/d", _driver_error)


def test_a_storage_still_being_created_reads_as_missing_and_is_left_alone(
    toy_study, tmp_path: Path, capsys
) -> None:
    """A reader that comes while ``hpo run`` creates Optuna's tables (a cron ``hpo
    status``) must neither write Optuna's version rows itself (it raced the creator:
    ``UNIQUE constraint failed: alembic_version``) nor fail with a traceback."""
    import sqlalchemy
    from optuna.storages._rdb import models

    from hpo.cli import main

    study_file = toy_study()
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'hpo.db'}")
    models.BaseModel.metadata.create_all(engine)  # the tables; the version rows come next
    engine.dispose()
    before = _snapshot(tmp_path)
    assert main(["status", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "no study 'toy'" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("url", "driver", "fix"),
    [
        ("postgresql+psycopg2://hpo@db/hpo", "psycopg2", "hpo-finetune[postgres]"),
        ("postgresql://hpo@db/hpo", "psycopg2", "hpo-finetune[postgres]"),
        ("mysql+pymysql://hpo@db/hpo", "pymysql", "hpo-finetune[mysql]"),
    ],
)
def test_a_server_storage_without_its_driver_is_one_line_naming_the_extra(
    run_cli, toy_study, monkeypatch: pytest.MonkeyPatch, url: str, driver: str, fix: str
) -> None:
    """The database drivers are extras: a study naming a server they connect to fails
    validation (exit 2) before any connection, in one line saying what to install."""
    monkeypatch.setitem(sys.modules, driver, None)  # as if not installed
    study = toy_study()
    result = run_cli("validate", str(study), "--storage", url)
    assert result.returncode == 2
    scheme = url.partition(":")[0]
    assert result.stderr.splitlines() == [
        f"hpo: error: {study}: storage: a {scheme}:// storage needs {driver}, which is not "
        f"installed; pip install '{fix}'"
    ]
