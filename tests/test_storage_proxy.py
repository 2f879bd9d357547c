"""``hpo storage-proxy`` and ``grpc://`` storages, through a real proxy process.

The guarantees every storage keeps (exact budget, grid points and enqueued trials once, a
killed worker's trial resumed) run through a proxy in ``tests/test_workers.py`` (the
``grpc`` storage). Here: what is the proxy's own, its claim lock dying with its holder and
shared with direct workers and other proxies (a study split across two proxies), a proxy
restart mid-study, the database connections it uses, reading without writing (the
CLI and the dashboard), and the one-line errors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from hpo.storage import study_lock
from tests.conftest import ROOT, StorageProxy, run_hpo
from tests.test_server import ask, serving
from tests.test_workers import hpo_runs_together, make_study, trials_of


def _holder(url: str, name: str) -> subprocess.Popen:
    """A process that takes the study lock through the proxy, says so, and sleeps."""
    code = (
        "import sys, time\n"
        "from hpo.storage import study_lock\n"
        f"lock = study_lock({url!r}, {name!r})\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_the_claim_lock_is_exclusive_and_dies_with_a_killed_holder(
    grpc_url: str, unique_name: str
) -> None:
    holder = _holder(grpc_url, unique_name)
    try:
        other = study_lock(grpc_url, unique_name)
        busy = other.try_acquire()
        assert busy is not None and "pid" in busy  # names who holds it
        holder.send_signal(signal.SIGKILL)  # no release: the stream's end must do it
        holder.wait()
        killed_at = time.monotonic()
        other.acquire()
        freed_after = time.monotonic() - killed_at
        assert other.still_held()
        other.close()
        assert freed_after < 5, freed_after
    finally:
        holder.kill()


@pytest.mark.parametrize("first", ["direct", "second proxy"])
def test_the_proxy_takes_the_databases_lock_too(
    grpc_url: str, postgres_url: str, unique_name: str, first: str
) -> None:
    # A worker through the proxy excludes, and is excluded by, a worker on the database
    # itself and a worker through another proxy of the same database.
    other = StorageProxy(postgres_url) if first == "second proxy" else None
    try:
        holder = study_lock(other.url if other else postgres_url, unique_name)
        holder.acquire()
        through = study_lock(grpc_url, unique_name)
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (through.acquire(), got.set()), daemon=True)
        waiter.start()
        assert not got.wait(2)  # waits on the holder's Postgres advisory lock
        holder.close()
        assert got.wait(10)
        assert through.still_held()
        through.close()
    finally:
        if other:
            other.stop()


def test_workers_split_across_two_proxies_meet_the_budget_exactly(
    tmp_path: Path, storage_proxy: StorageProxy, postgres_url: str, unique_name: str
) -> None:
    # More throughput than one proxy gives (README, "Beyond one database"): two proxies of
    # one database, two `hpo run` processes on each, zero-length trials so that every
    # process claims at the budget's edge.
    second = StorageProxy(postgres_url)
    try:
        files = []
        for folder, proxy in (("a", storage_proxy), ("b", second)):
            (tmp_path / folder).mkdir()
            files.append(
                make_study(
                    tmp_path / folder, proxy.url, unique_name, n_trials=12, epochs=1, epoch_s=0
                )
            )
        hpo_runs_together(files * 2, tmp_path)
        from hpo.config import load_study

        states = Counter(t.state.name for t in trials_of(load_study(files[0])))
        assert states == {"COMPLETE": 12}
    finally:
        second.stop()


def test_a_trial_queued_through_one_proxy_runs_through_another(
    storage_proxy: StorageProxy, postgres_url: str, unique_name: str
) -> None:
    # A failed trial's retry waits in the study, and a worker behind another proxy (or
    # behind this one after a restart) may take it. Optuna's proxy cache knows only the
    # trials made or read through it: it refused the retry's parameters (KeyError).
    import optuna

    from hpo.storage import open_storage

    second = StorageProxy(postgres_url)
    try:
        first_study = optuna.create_study(
            storage=open_storage(storage_proxy.url), study_name=unique_name
        )
        first_study.enqueue_trial({"x": 0.5})
        taker = optuna.load_study(
            storage=open_storage(second.url),
            study_name=unique_name,
            sampler=optuna.samplers.RandomSampler(),  # reads no trials: nothing fills the cache
        )
        trial = taker.ask()
        assert trial.suggest_float("x", 0, 1) == 0.5
        taker.tell(trial, 1.0)
        assert [(t.params, t.value) for t in first_study.get_trials()] == [({"x": 0.5}, 1.0)]
    finally:
        second.stop()


def _connections_named(postgres_url: str, name: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
        return int(connection.execute(sqlalchemy.text(query), {"name": name}).scalar())


def test_eight_workers_through_the_proxy_use_two_database_connections(
    tmp_path: Path, postgres_url: str, unique_name: str
) -> None:
    # This proxy's connections carry their own name: other tests' proxies run beside it.
    name = f"hpo-proxy-{unique_name}"
    proxy = StorageProxy(
        f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={name}"
    )
    try:
        study_file = make_study(
            tmp_path, proxy.url, unique_name, n_trials=16, epochs=1, epoch_s=0.3
        )
        run = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(study_file), "--workers", "8"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = []
        while run.poll() is None:
            seen.append(_connections_named(postgres_url, name))
            time.sleep(0.1)
        assert run.returncode == 0, run.stderr.read() if run.stderr else ""
        from hpo.config import load_study

        states = Counter(t.state.name for t in trials_of(load_study(study_file)))
        assert states == {"COMPLETE": 16}
        # One for every storage call of 8 workers, one for the claim lock while held.
        assert 1 <= max(seen) <= 2, Counter(seen)
    finally:
        proxy.stop()


def test_a_proxy_restart_mid_study_costs_no_trial(
    tmp_path: Path, storage_proxy: StorageProxy, unique_name: str
) -> None:
    study_file = make_study(
        tmp_path, storage_proxy.url, unique_name, n_trials=8, epochs=3, epoch_s=0.4
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(study_file), "--workers", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    from hpo.budget import NOT_COUNTED_FAILURES, failure_reason
    from hpo.config import load_study
    from hpo.study import open_study

    config = load_study(study_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # restart once trials are under way
        if sum(t.state.name == "COMPLETE" for t in trials_of(config)) >= 2:
            break
        time.sleep(0.2)
    storage_proxy.kill()
    time.sleep(2)
    restarted = StorageProxy(storage_proxy.database_url, storage_proxy.port)
    try:
        _, errors = run.communicate(timeout=240)
        assert run.returncode == 0, errors
        study = open_study(config)
        trials = study.get_trials()
        states = Counter(t.state.name for t in trials)
        assert states["COMPLETE"] == 8 and states["RUNNING"] == 0
        # A claim the restart met fails untrained (a lost claim, or a trial its lost commit
        # left behind), not counted, its parameters retried. No trial that had trained may
        # fail: not a worker's own report, nor its heartbeats the restart held up.
        failed = [t for t in trials if t.state.name == "FAIL"]
        why = {t.number: (failure_reason(t, study.user_attrs), t.user_attrs) for t in failed}
        assert all(
            reason in NOT_COUNTED_FAILURES and "hpo:history" not in attrs
            for reason, attrs in why.values()
        ), (why, errors)
        assert "proxy unavailable" in errors or "retry" in errors  # it did wait for it
    finally:
        restarted.stop()


def test_heartbeats_a_proxy_restart_held_up_fail_no_trial(
    postgres_url: str, unique_name: str
) -> None:
    # While the proxy is down every worker's heartbeats wait. Once it is back, the first
    # worker to check must not fail the others' trials as lost before their beats could
    # arrive; a trial whose worker really is gone is still found, a grace period later.
    import optuna
    from optuna.storages import fail_stale_trials

    from hpo.storage import open_storage

    proxy = StorageProxy(postgres_url)
    storage = open_storage(proxy.url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name=unique_name)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    proxy.kill()
    waiting = threading.Thread(target=lambda: study.get_trials())  # retries until it is back
    waiting.start()
    time.sleep(3)  # down for longer than the grace period
    restarted = StorageProxy(postgres_url, proxy.port)
    try:
        waiting.join(timeout=60)
        fail_stale_trials(study)
        assert study.get_trials()[0].state.name == "RUNNING"
        time.sleep(2.5)  # a grace period in reach, and no heartbeat came
        fail_stale_trials(study)
        assert study.get_trials()[0].state.name == "FAIL"
    finally:
        restarted.stop()


def _rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return list(connection.iterdump())


def test_reading_through_the_proxy_writes_nothing(toy_study, tmp_path: Path) -> None:
    database = tmp_path / "behind.db"
    proxy = StorageProxy(f"sqlite:///{database}")
    try:
        study_file = toy_study(n_trials=3, storage=proxy.url)
        assert run_hpo("run", str(study_file), cwd=tmp_path).returncode == 0
        before = _rows(database)
        for command in ("status", "best", "report", "compare"):
            done = run_hpo(command, str(study_file), cwd=tmp_path)
            assert done.returncode == 0, done.stderr
        assert _rows(database) == before
        # optuna-dashboard on the same grpc:// storage: it reads the study, and refuses writes.
        with serving(study_file) as server:
            status, _, text = ask(server.server_port, "GET", "/api/studies")
            assert status == 200, text
            (summary,) = json.loads(text)["study_summaries"]
            study_id = summary["study_id"]
            status, _, text = ask(server.server_port, "GET", f"/api/studies/{study_id}")
            assert status == 200 and len(json.loads(text)["trials"]) == 3
            assert ask(server.server_port, "DELETE", f"/api/studies/{study_id}")[0] == 403
        assert _rows(database) == before
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "url, words",
    [
        ("grpc://proxy-host", "grpc://proxy-host:13000"),
        ("grpc://u:secret@proxy-host:13000/db", "hpo storage-proxy --storage"),
    ],
)
def test_a_grpc_url_without_host_and_port_is_exit_2(toy_study, url: str, words: str) -> None:
    done = run_hpo("validate", str(toy_study(storage=url)))
    assert done.returncode == 2
    assert words in done.stderr and "secret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_proxy_at_the_url_is_one_line_and_exit_1(toy_study, tmp_path: Path) -> None:
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = run_hpo("run", str(toy_study(storage=f"grpc://127.0.0.1:{port}")), cwd=tmp_path)
    assert done.returncode == 1
    assert f"cannot reach the storage proxy at grpc://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_proxy_refuses_a_journal_and_a_missing_storage(tmp_path: Path) -> None:
    done = run_hpo("storage-proxy", "--storage", f"journal:///{tmp_path / 'hpo.log'}")
    assert done.returncode == 2 and "journal" in done.stderr and "optuna#6084" in done.stderr
    assert not (tmp_path / "hpo.log").exists()
    done = run_hpo("storage-proxy")
    assert done.returncode == 2 and "--storage URL" in done.stderr


TOKEN = "0123456789abcdef0123456789abcdef"


def test_a_proxy_with_a_token_serves_only_callers_that_send_it(toy_study, tmp_path: Path) -> None:
    # Whoever reaches a proxy's port could read, change and delete every study of its
    # database. With HPO_PROXY_TOKEN set, every call needs it, Optuna's and hpo's: an hpo
    # command without it (or with another) stops in one line, exit 1, having written nothing.
    import grpc
    import optuna

    from hpo.backends.grpc_proxy import SERVICE, decode, encode

    database = f"sqlite:///{tmp_path / 'behind.db'}"
    proxy = StorageProxy(database, env={"HPO_PROXY_TOKEN": TOKEN})
    try:
        study_file = toy_study(n_trials=2, storage=proxy.url)
        for token, words in (("", "requires a token"), ("x" * 32, "refused the token")):
            refused = run_hpo("run", str(study_file), env={"HPO_PROXY_TOKEN": token})
            assert refused.returncode == 1, refused.stderr
            assert f"hpo: error: the storage proxy at {proxy.url} {words}" in refused.stderr
            assert "Traceback" not in refused.stderr
        assert optuna.get_all_study_names(database) == []
        # Optuna's own client, and hpo's lock service, are refused alike.
        with pytest.raises(grpc.RpcError) as optunas:
            optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=proxy.port).get_all_studies()
        assert optunas.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            hold = channel.unary_stream(
                f"/{SERVICE}/Hold", request_serializer=encode, response_deserializer=decode
            )
            with pytest.raises(grpc.RpcError) as hpos:
                next(hold({"kind": "study", "name": "s", "block": False, "token": "t"}))
        assert hpos.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert run_hpo("run", str(study_file), env={"HPO_PROXY_TOKEN": TOKEN}).returncode == 0
        trials = optuna.load_study(study_name="toy", storage=database).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    finally:
        proxy.stop()
    # The proxy logs a refusal, naming the caller, once a minute at most (retries flood).
    assert proxy.process.stderr.read().count("without the proxy token") == 1


def test_a_guessable_proxy_token_stops_the_proxy_before_it_opens_anything(tmp_path: Path) -> None:
    done = run_hpo(
        "storage-proxy",
        "--storage",
        f"sqlite:///{tmp_path / 'behind.db'}",
        env={"HPO_PROXY_TOKEN": "secret"},
    )
    assert done.returncode == 2 and done.stderr.strip() == (
        "hpo: error: HPO_PROXY_TOKEN: 6 characters can be guessed; use at least 16, such as "
        "the output of `openssl rand -hex 32`"
    )
    assert not (tmp_path / "behind.db").exists()


def _openssl(*args: str) -> None:
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
        *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
    )
    return cert, key


def test_a_tls_proxy_serves_workers_that_trust_its_certificate(
    toy_study, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    # With a token alone, the token and the studies cross the network in clear; with
    # --tls-cert/--tls-key they do not. A worker that does not trust the certificate, or
    # speaks plain gRPC to it, stops in one line saying which.
    import optuna

    cert, key = certificate
    database = f"sqlite:///{tmp_path / 'behind.db'}"
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    proxy = StorageProxy(database, 0, *tls, env={"HPO_PROXY_TOKEN": TOKEN})
    try:
        assert proxy.url.startswith("grpcs://")
        study_file = toy_study(n_trials=4, storage=f"grpcs://localhost:{proxy.port}")
        trusting = {"HPO_PROXY_TOKEN": TOKEN, "HPO_PROXY_CA": str(cert)}
        untrusting = run_hpo("run", str(study_file), env={**trusting, "HPO_PROXY_CA": ""})
        assert untrusting.returncode == 1 and untrusting.stderr.strip().endswith(
            "the TLS handshake failed: the proxy's certificate must be signed by what "
            "HPO_PROXY_CA names (or by a root this system trusts), and a proxy started "
            "without --tls-cert takes grpc://"
        ), untrusting.stderr
        plain_url = f"grpc://localhost:{proxy.port}"
        plain = run_hpo("run", str(study_file), "--storage", plain_url, env=trusting)
        assert plain.returncode == 1 and plain.stderr.strip().endswith(
            "the proxy closed the connection: one started with --tls-cert takes grpcs://"
        ), plain.stderr
        # Two worker processes: claim locks, heartbeats and storage calls, all over TLS.
        assert run_hpo("run", str(study_file), "--workers", "2", env=trusting).returncode == 0
        trials = optuna.load_study(study_name="toy", storage=database).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    finally:
        proxy.stop()


def test_the_proxy_refuses_tls_files_it_cannot_serve_before_it_opens_anything(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    other_key = tmp_path / "other.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-out", str(other_key))
    missing = tmp_path / "missing.pem"
    cases = {
        ("--tls-cert", cert): (
            "--tls-cert needs --tls-key too: TLS takes a certificate and its key"
        ),
        ("--tls-cert", key, "--tls-key", key): f"--tls-cert: {key} holds no PEM certificate",
        ("--tls-cert", cert, "--tls-key", missing): (
            f"--tls-key: cannot read {missing}: No such file or directory"
        ),
        ("--tls-cert", cert, "--tls-key", other_key): (
            f"--tls-key: --tls-cert {cert} and --tls-key {other_key} do not load as a "
            "certificate and its unencrypted key (KEY_VALUES_MISMATCH)"
        ),
    }
    for args, message in cases.items():
        database = tmp_path / "behind.db"
        done = run_hpo("storage-proxy", "--storage", f"sqlite:///{database}", *map(str, args))
        assert done.returncode == 2 and done.stderr.strip() == f"hpo: error: {message}", args
        assert not database.exists()
