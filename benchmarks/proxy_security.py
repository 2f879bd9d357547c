"""What the storage proxy's token and TLS cost per storage call.

Three ``hpo storage-proxy`` processes in front of one SQLite file: plain, with
``HPO_PROXY_TOKEN``, and with the token over TLS (a self-signed certificate made with
``openssl``). This process opens each as a worker does (``hpo.storage.open_storage``) and
times ``--calls`` reads of one finished trial (answered from the proxy's cache: the figure
is the round trip, interceptors and encryption included, not the database). The three
take turns for ``--rounds`` rounds (the machine's speed drifts); each figure is the
median round's time per call.

    python benchmarks/proxy_security.py [--calls 2000] [--rounds 7]

Prints a table and ``RESULT`` lines: microseconds per call of each, and the token's and
TLS's cost as a ratio to the plain proxy's in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "benchmark-token-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import optuna

    from benchmarks.scale_curve import start_proxy
    from hpo.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="hpo-proxy-security-"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    database = f"sqlite:///{folder / 'behind.db'}"
    study = optuna.create_study(storage=database, study_name="bench")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    trial_id = study.trials[0]._trial_id

    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    modes = {
        "plain": ({}, ()),
        "token": ({"HPO_PROXY_TOKEN": TOKEN}, ()),
        "token+tls": ({"HPO_PROXY_TOKEN": TOKEN, "HPO_PROXY_CA": str(cert)}, tls),
    }
    proxies, storages = [], {}
    try:
        for mode, (env, extra) in modes.items():
            process, url = start_proxy(database, env, *extra)
            proxies.append(process)
            os.environ.pop("HPO_PROXY_TOKEN", None)
            os.environ.pop("HPO_PROXY_CA", None)
            os.environ.update(env)  # the client reads them as it opens its channel
            storages[mode] = open_storage(url.replace("127.0.0.1", "localhost"))
            # Connected, and the trial in the proxy's cache (reading the study's trials
            # fills it): a call is then the round trip alone.
            storages[mode].get_all_trials(study._study_id)
        per_call: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, storage in storages.items():
                started = time.perf_counter()
                for _ in range(args.calls):
                    storage.get_trial(trial_id)
                per_call[mode].append((time.perf_counter() - started) / args.calls * 1e6)
    finally:
        for process in proxies:
            process.terminate()
            process.wait(timeout=15)

    median = {mode: statistics.median(times) for mode, times in per_call.items()}
    print(f"{'proxy':<10} {'us/call (median round)':>24} {'vs plain':>9}   rounds")
    for mode, us in median.items():
        rounds = " ".join(f"{t:.0f}" for t in per_call[mode])
        print(f"{mode:<10} {us:>24.0f} {us / median['plain']:>9.2f}   {rounds}")
    print(f"RESULT proxy_call_us_plain={median['plain']:.0f}")
    print(f"RESULT proxy_call_us_token={median['token']:.0f}")
    print(f"RESULT proxy_call_us_token_tls={median['token+tls']:.0f}")
    print(f"RESULT token_cost_ratio={median['token'] / median['plain']:.2f}")
    print(f"RESULT token_tls_cost_ratio={median['token+tls'] / median['plain']:.2f}")


if __name__ == "__main__":
    main()
