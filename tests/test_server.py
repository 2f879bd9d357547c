"""``hpo dashboard`` (dashboards.server): read-only unless ``--allow-writes``, and a warning
when it listens beyond this machine.

Real servers on 127.0.0.1 (any free port), real HTTP, a real SQLite study read back with
Optuna after every request.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.cli import main
from hpo.config import load_study
from hpo.dashboards.server import make_server
from tests.conftest import ROOT


@pytest.fixture
def study_file(toy_study) -> Path:
    """A toy study of two completed trials in ``<tmp_path>/hpo.db``."""
    path = toy_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    return path


def stored_state(tmp_path: Path) -> dict[str, Any]:
    """Everything a dashboard request could change, read back with Optuna."""
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    names = optuna.get_all_study_names(storage)
    if "toy" not in names:
        return {"studies": names}
    study = optuna.load_study(study_name="toy", storage=storage)
    return {
        "studies": names,
        "user_attrs": study.user_attrs,
        "system_attrs": study._storage.get_study_system_attrs(study._study_id),
        "trials": [
            (t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs)
            for t in study.get_trials()
        ],
    }


@contextmanager
def serving(study_file: Path, host: str = "127.0.0.1", **options: Any) -> Iterator[Any]:
    """The dashboard served in a thread; yields the bound server."""
    server, _ = make_server(load_study(study_file), host, 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def ask(port: int, method: str, path: str, body: Any = None) -> tuple[int, str, str]:
    """One HTTP request; the status, the Content-Type and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read().decode()
    finally:
        connection.close()


def ids(tmp_path: Path) -> tuple[int, int]:
    """The toy study's id and its first trial's id in the storage."""
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    return study._study_id, study.trials[0]._trial_id


PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG not really").decode()
# Every write route of optuna-dashboard 0.21 that a study of hpo's can reach, and PATCH,
# which it does not route at all: each is refused before optuna-dashboard sees it.
WRITES = [
    ("DELETE", "/api/studies/{study}", None),
    ("DELETE", "/api/studies/{study}", {"remove_associated_artifacts": False}),
    ("POST", "/api/studies", {"study_name": "intruder", "directions": ["minimize"]}),
    ("POST", "/api/studies/{study}/rename", {"study_name": "renamed"}),
    ("PUT", "/api/studies/{study}/note", {"version": 1, "body": "rewritten"}),
    ("PUT", "/api/studies/{study}/{trial}/note", {"version": 1, "body": "rewritten"}),
    ("POST", "/api/trials/{trial}/user-attrs", {"user_attrs": {"owned": True}}),
    ("POST", "/api/trials/{trial}/tell", {"state": "Fail"}),
    ("POST", "/api/artifacts/{study}", {"file": PNG, "filename": "x.png"}),
    ("POST", "/incompatible-rdb-schema", None),
    ("PATCH", "/api/studies/{study}", {"study_name": "renamed"}),
    ("PUT", "/api/studies/{study}", {"study_name": "renamed"}),
]


def test_the_dashboard_refuses_every_write_by_default(study_file, tmp_path: Path) -> None:
    (tmp_path / "runs" / "artifacts").mkdir(parents=True)  # uploads would be possible
    study, trial = ids(tmp_path)
    before = stored_state(tmp_path)
    with serving(study_file) as server:
        for method, path, body in WRITES:
            url = path.format(study=study, trial=trial)
            status, kind, text = ask(server.server_port, method, url, body)
            assert status == 403, (method, url, status, text)
            # optuna-dashboard's page shows a refused request's "reason".
            assert kind == "application/json", (method, url)
            assert "--allow-writes" in json.loads(text)["reason"], (method, url)
            assert stored_state(tmp_path) == before, (method, url)
        # Reading still works: the study, its trials and the page.
        status, _, text = ask(server.server_port, "GET", f"/api/studies/{study}")
        assert status == 200 and len(json.loads(text)["trials"]) == 2
        status, _, text = ask(server.server_port, "GET", f"/dashboard/studies/{study}")
        assert status == 200 and 'id="dashboard"' in text
        assert ask(server.server_port, "HEAD", "/api/studies")[0] == 200
    assert list((tmp_path / "runs" / "artifacts").iterdir()) == []


def test_with_allow_writes_a_human_can_save_a_note(study_file, tmp_path: Path) -> None:
    study, trial = ids(tmp_path)
    with serving(study_file, allow_writes=True) as server:
        note = {"version": 1, "body": "lr above 5e-4 diverges"}
        status, _, text = ask(server.server_port, "PUT", f"/api/studies/{study}/note", note)
        assert status == 204, text
        status, _, text = ask(server.server_port, "GET", f"/api/studies/{study}")
        assert json.loads(text)["note"]["body"] == "lr above 5e-4 diverges"
    assert "lr above 5e-4 diverges" in json.dumps(stored_state(tmp_path)["system_attrs"])


def test_with_allow_writes_artifacts_upload_into_the_artifact_folder(
    study_file, tmp_path: Path
) -> None:
    (tmp_path / "runs" / "artifacts").mkdir(parents=True)
    study, _ = ids(tmp_path)
    with serving(study_file, allow_writes=True) as server:
        upload = {"file": PNG, "filename": "x.png"}
        status, _, text = ask(server.server_port, "POST", f"/api/artifacts/{study}", upload)
        assert status == 201, text
    assert len(list((tmp_path / "runs" / "artifacts").iterdir())) == 1


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),  # the standard library binds every interface
        ("192.168.1.5", False),
        ("10.0.0.7", False),
        ("fe80::1%eth0", False),
        ("dashboard.example.org", False),
    ],
)
def test_loopback_addresses_are_told_apart_from_the_rest(host: str, loopback: bool) -> None:
    from hpo.dashboards.server import is_loopback

    assert is_loopback(host) is loopback


def test_listening_beyond_loopback_warns_in_one_line(study_file, caplog) -> None:
    def warnings_for(host: str, **options: Any) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hpo.dashboards.server"):
            server, _ = make_server(load_study(study_file), host, 0, **options)
            server.server_close()  # never served: nothing answers on the open address
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert warnings_for("127.0.0.1") == []
    [warning] = warnings_for("0.0.0.0")
    assert "0.0.0.0" in warning and "anyone who can reach" in warning
    assert "read the study" in warning and "\n" not in warning
    assert "change or delete" not in warning
    [warning] = warnings_for("0.0.0.0", allow_writes=True)
    assert "read the study" in warning and "change or delete it" in warning


def test_the_allow_writes_flag_of_hpo_dashboard(study_file, tmp_path: Path) -> None:
    def start(*flags: str) -> tuple[subprocess.Popen, int]:
        server = subprocess.Popen(
            [sys.executable, "-m", "hpo", "dashboard", str(study_file), "--port", "0", *flags],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        line = server.stdout.readline()
        assert "http://127.0.0.1:" in line, server.stderr.read() if server.poll() else line
        return server, int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def stop(server: subprocess.Popen) -> str:
        server.terminate()
        return server.communicate(timeout=30)[1]

    study, _ = ids(tmp_path)
    server, port = start()
    try:
        assert ask(port, "DELETE", f"/api/studies/{study}")[0] == 403
    finally:
        err = stop(server)
    assert "WARNING" not in err, err
    assert stored_state(tmp_path)["studies"] == ["toy"]

    server, port = start("--allow-writes")
    try:
        assert ask(port, "DELETE", f"/api/studies/{study}")[0] == 204
    finally:
        err = stop(server)
    assert "WARNING" not in err, err
    assert stored_state(tmp_path)["studies"] == []


def test_dashboard_help_says_when_writes_are_wanted(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--allow-writes" in out
    assert "notes" in out and "artifact uploads" in out


@pytest.mark.parametrize("command", [["dashboard"], ["report", "--attach"]])
def test_the_dashboard_without_optuna_dashboard_is_one_line_naming_the_extra(
    run_cli, toy_study, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """optuna-dashboard is the dashboard extra: hpo dashboard and hpo report --attach say
    so in one line (exit 2) on an install without it, before reading anything."""
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    study = toy_study(n_trials=1)
    result = run_cli(command[0], str(study), *command[1:])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"hpo: error: hpo {' '.join(command)} needs optuna_dashboard, which is not installed; "
        "pip install 'hpo-finetune[dashboard]'"
    ]
