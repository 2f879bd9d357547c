"""Shared fixtures: offline Hugging Face, a fresh working folder, real storages."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

# A hub lookup hangs ~50 s on a machine without internet; everything must come from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own empty folder (hpo.db and runs/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo the root handler an in-process ``cli.main`` installs.

    Its handler writes to the test's captured stderr, which pytest closes after the test;
    a later test that logs would then print "Logging error ... I/O operation on closed file".
    """
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_hpo(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """``python -m hpo ARGS`` as a user runs it; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd or Path.cwd(),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def write_study(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TOY_STUDY = """\
name: {name}
storage: {storage}
seed: 1
sampler: {{type: {sampler}}}
budget: {{n_trials: {n_trials}, max_failures: 3}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 3}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.3}}
"""


@pytest.fixture
def toy_study(tmp_path: Path):
    """Write a toy study file; keyword arguments fill the template above."""

    def make(
        name: str = "toy",
        storage: str | None = None,
        sampler: str = "random",
        n_trials: int = 5,
        text: str | None = None,
    ) -> Path:
        storage = storage or f"sqlite:///{tmp_path / 'hpo.db'}"
        body = text or TOY_STUDY.format(
            name=name, storage=storage, sampler=sampler, n_trials=n_trials
        )
        return write_study(tmp_path / f"{name}.yaml", body)

    return make


def _postgres_url() -> str | None:
    return os.environ.get("HPO_TEST_POSTGRES_URL")


def _server_url(variable: str, what: str) -> str:
    """The URL in ``variable`` of a test database server, checked to answer.

    Skips with a reason when the variable is unset or the server is down, except under
    CI=true, where a missing server is a failure.
    """
    url = os.environ.get(variable)
    in_ci = os.environ.get("CI") == "true"
    if not url:
        if in_ci:
            pytest.fail(f"{variable} is not set in CI")
        pytest.skip(f"set {variable} to run the {what} tests")
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as e:  # the driver's error says why
        if in_ci:
            pytest.fail(f"{what} at {variable} is unreachable: {e}")
        pytest.skip(f"{what} unreachable: {e}")
    return url


@pytest.fixture
def postgres_url() -> str:
    """A URL of the test Postgres (HPO_TEST_POSTGRES_URL); a fresh study name keeps tests
    apart."""
    return _server_url("HPO_TEST_POSTGRES_URL", "Postgres")


@pytest.fixture
def mysql_url() -> str:
    """A URL of the test MySQL or MariaDB (HPO_TEST_MYSQL_URL, ``mysql+pymysql://``)."""
    return _server_url("HPO_TEST_MYSQL_URL", "MySQL")


STORAGE_SCHEMES = ("sqlite", "postgres", "mysql", "journal")


@pytest.fixture(params=STORAGE_SCHEMES)
def storage_url(request, tmp_path: Path) -> str:
    """One URL per storage scheme hpo accepts: every guarantee is tested on each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    if request.param == "journal":
        return f"journal:///{tmp_path / 'hpo.log'}"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def count_states(study) -> Counter[str]:
    """A study's trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), read
    through Optuna's own API."""
    return Counter(t.state.name for t in study.trials)
