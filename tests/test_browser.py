"""A real headless Chromium renders the HTML report, the comparison and optuna-dashboard.

The browser is driven over the Chrome DevTools protocol (a websocket): the tests collect
uncaught JavaScript exceptions, console errors and every network request, count the
rendered plotly figures, and check that a screenshot is not blank. Without a chromium
binary the tests skip, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest

from hpo.cli import main
from tests.conftest import ROOT

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


def chromium_binary() -> str:
    found = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium binary on PATH in CI; .ci/run installs it (apt chromium)")
    pytest.skip("no chromium binary on PATH; apt-get install -y chromium to run browser tests")


class Browser:
    """One headless Chromium page, driven through the DevTools protocol."""

    def __init__(self, binary: str, profile: Path):
        import websocket

        profile.mkdir(parents=True)
        self.log = (profile.parent / "chromium.log").open("w")
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"chromium did not start; see {self.log.name}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def errors(self) -> list[str]:
        """Uncaught exceptions and console/log errors since the last ``open``."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        return found

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def statuses(self) -> list[tuple[int, str]]:
        """The HTTP status and URL of every response since the last ``open``."""
        return [
            (e["params"]["response"]["status"], e["params"]["response"]["url"])
            for e in self.events
            if e.get("method") == "Network.responseReceived"
        ]

    def screenshot(self, path: Path) -> bytes:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        png = __import__("base64").b64decode(data["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    binary = chromium_binary()
    instance = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield instance
    instance.close()


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        chunk = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = previous[x], previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (
                    line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)
                ) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r) for r in rows][:: max(1, height // 400)]


def assert_not_blank(png: bytes) -> None:
    width, _, rows = png_pixels(png)
    bpp = len(rows[0]) // width
    colors = {row[i : i + 3] for row in rows for i in range(0, len(row), bpp * 4)}
    background = max(colors, key=lambda c: sum(row.count(c) for row in rows[:5]))
    assert len(colors) > 50, f"screenshot has only {len(colors)} colours: blank?"
    drawn = sum(row[i : i + 3] != background for row in rows for i in range(0, len(row), bpp * 4))
    total = sum(len(row) // (bpp * 4) for row in rows)
    assert drawn / total > 0.05, f"only {drawn / total:.1%} of the screenshot differs from blank"


def toy_file(tmp_path: Path, name: str, sampler: str, n_trials: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nstorage: sqlite:///{tmp_path / 'hpo.db'}\nseed: 5\n"
        f"sampler: {{type: {sampler}}}\npruner: {{type: median, n_startup_trials: 3}}\n"
        f"budget: {{n_trials: {n_trials}}}\n"
        "trainer: {ref: trainers.toy:train, args: {num_train_epochs: 4}}\n"
        "search_space:\n"
        "  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "  dropout: {type: float, low: 0.0, high: 0.3}\n"
        "  per_device_train_batch_size: {type: categorical, choices: [8, 16, 32]}\n"
    )
    assert main(["run", str(path)]) == 0
    return path


# Plotly figures drawn on the page (each has its own SVG layers once rendered).
PLOTS = (
    "[...document.querySelectorAll('.js-plotly-plot')]"
    ".filter(d => d.querySelector('.main-svg')).length"
)


def test_report_renders_offline_without_errors(browser: Browser, tmp_path: Path) -> None:
    study_file = toy_file(tmp_path, "toy", "tpe", 16)
    assert main(["report", str(study_file), "-o", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "report.html"
    browser.open(page.as_uri())
    # history, learning curves, importances, parallel, slice, contour, timeline
    assert browser.wait_for(f"{PLOTS} >= 7 && {PLOTS}") == 7
    # Lines and markers were drawn, not just empty axes.
    assert (
        browser.evaluate("document.querySelectorAll('.js-plotly-plot .scatterlayer path').length")
        > 20
    )
    assert browser.errors() == []
    off_host = [u for u in browser.requests() if not u.startswith(("file:", "data:", "blob:"))]
    assert off_host == [], f"the report requested {off_host}"
    assert "Best trial" in browser.evaluate("document.body.innerText")
    assert_not_blank(browser.screenshot(tmp_path / "report.png"))


def test_report_of_several_objectives_renders(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "front.yaml"
    path.write_text(
        f"name: front\nstorage: sqlite:///{tmp_path / 'hpo.db'}\nseed: 5\n"
        "objective: [{metric: eval_accuracy, direction: maximize},\n"
        "            {metric: latency_ms, direction: minimize}]\n"
        "sampler: {type: nsga2, population_size: 4}\nbudget: {n_trials: 8}\n"
        "trainer: {ref: trainers.toy:train, args: {num_train_epochs: 2}}\n"
        "search_space:\n"
        "  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "  size: {type: categorical, choices: [0.5, 1.0, 2.0]}\n"
        "  model: {type: categorical, choices: [model-a, model-b]}\n"
    )
    assert main(["run", str(path)]) == 0
    assert main(["report", str(path), "-o", str(tmp_path / "report")]) == 0
    browser.open((tmp_path / "report" / "report.html").as_uri())
    assert browser.wait_for(f"{PLOTS} >= 2 && {PLOTS}") == 2  # the front and the timeline
    assert browser.evaluate("document.querySelectorAll('.js-plotly-plot .point').length") >= 8
    text = browser.evaluate("document.body.innerText")
    assert "Pareto front" in text and "Base models" in text and "model-a" in text
    assert browser.errors() == []
    assert_not_blank(browser.screenshot(tmp_path / "front.png"))


def test_comparison_renders(browser: Browser, tmp_path: Path) -> None:
    files = [toy_file(tmp_path, "random", "random", 8), toy_file(tmp_path, "tpe", "tpe", 8)]
    assert main(["compare", *map(str, files), "-o", str(tmp_path / "cmp")]) == 0
    browser.open((tmp_path / "cmp" / "compare.html").as_uri())
    assert browser.wait_for(f"{PLOTS} >= 2 && {PLOTS}") == 2
    text = browser.evaluate("document.body.innerText")
    assert "epochs to reach" in text and "random" in text
    assert browser.errors() == []
    assert_not_blank(browser.screenshot(tmp_path / "compare.png"))


def test_optuna_dashboard_serves_the_study(browser: Browser, tmp_path: Path) -> None:
    study_file = toy_file(tmp_path, "toy", "random", 6)
    assert main(["report", str(study_file), "-o", str(tmp_path / "report"), "--attach"]) == 0
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", str(study_file), "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = server.stdout.readline()
        assert "optuna-dashboard for study 'toy': http://127.0.0.1:" in line, server.stderr.read()
        url = line.split(": ", 1)[1].split()[0]
        assert not (tmp_path / "runs" / "artifacts").exists()  # serving writes nothing
        browser.open(url)
        # The study page draws its history with plotly once the trials arrive.
        browser.wait_for(f"{PLOTS} > 0 && document.body.innerText.includes('toy')")
        assert browser.errors() == []
        assert_not_blank(browser.screenshot(tmp_path / "dashboard.png"))
        # The report's figures were saved into the study; the API lists them.
        study = json.load(
            urllib.request.urlopen(url.replace("/dashboard/studies/", "/api/studies/"))
        )
        assert "hpo-report-history" in json.dumps(study)
        # Read-only (the default) costs the pages nothing: none of their requests is
        # refused, and the trial list shows every trial.
        assert [s for s in browser.statuses() if s[0] >= 400] == []
        browser.open(url + "/trials")
        browser.wait_for("document.body.innerText.includes('Trial 5')")
        assert browser.errors() == []
        assert [s for s in browser.statuses() if s[0] >= 400] == []
        # A write the page would send (saving the study's note) is refused with a reason
        # the page can show.
        study_id = url.rsplit("/", 1)[1]
        browser.evaluate(
            f"fetch('/api/studies/{study_id}/note', {{method: 'PUT', "
            "headers: {'Content-Type': 'application/json'}, "
            "body: JSON.stringify({version: 1, body: 'rewritten'})})"
            ".then(r => r.json().then(j => { window.refused = [r.status, j.reason]; }))"
        )
        refused = browser.wait_for("window.refused")
        assert refused[0] == 403 and "--allow-writes" in refused[1]
    finally:
        server.terminate()
        server.wait(timeout=10)
