"""The terminal, in a real pseudo-terminal (tmux): log lines above, the live area below.

Every screen captured while a study runs must keep the two apart: the study line and one
line per running trial are the last lines, and no log line shares a line with them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT, run_hpo

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

TRIAL_ROW = re.compile(
    r"^  trial \d+( w\d)?: (starting|epoch \d/3 eval_accuracy=0\.\d{4}) · \d:\d\d:\d\d$"
)


def _new_session(session: str, width: int, command: str) -> None:
    """A detached tmux session running ``command``. Parallel tests that start tmux's server
    at the same moment can see one of them fail ("server exited unexpectedly"): try again."""
    for attempt in range(3):
        started = subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", "30", command],
            capture_output=True,
            text=True,
        )
        if started.returncode == 0:
            return
        time.sleep(0.5 * (attempt + 1))
    raise AssertionError(f"tmux new-session failed: {started.stderr}")


def capture(session: str) -> list[str]:
    screen = subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout
    return screen.rstrip("\n").split("\n")


def check_screen(lines: list[str], width: int) -> bool:
    """Assert the live area is intact when present; True when it shows a trial's epoch."""
    assert all(len(line) <= width for line in lines)
    studies = [i for i, line in enumerate(lines) if "study toy: " in line]
    if not studies:
        return False
    assert len(studies) == 1, lines  # one study line, never copied into the log
    top = studies[0]
    assert lines[top].startswith("study toy: "), lines  # never shares a line with a log line
    area = [line for line in lines[top + 1 :] if line.strip()]
    assert all(TRIAL_ROW.match(line) for line in area), lines  # nothing below but trials
    above = "\n".join(lines[:top])
    assert not re.search(r"^  trial \d+( w\d)?: ", above, re.M), lines
    return any("epoch" in line for line in area)


@pytest.mark.parametrize(("width", "workers"), [(80, 2), (200, 2), (80, 1)])
def test_live_area_stays_below_the_log(toy_study, tmp_path: Path, width: int, workers: int):
    study_file = toy_study(n_trials=4)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:slow_epochs")
    )
    session = f"hpo-{uuid.uuid4().hex[:8]}"
    # 0.8 s epochs: on a loaded machine (parallel test workers) a shorter epoch can come and
    # go between two still screens, and the test would see no epoch at all.
    command = (
        f"cd {shlex.quote(str(tmp_path))} && PYTHONPATH={shlex.quote(str(ROOT))} "
        f"HPO_TEST_EPOCH_S=0.8 HF_HUB_OFFLINE=1 {shlex.quote(os.sys.executable)} -m hpo run "
        f"{study_file.name} --workers {workers}; echo HPO-EXIT=$?; sleep 60"
    )
    _new_session(session, width, command)
    try:
        seen_progress, final = False, []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines = capture(session)
            if any(line.startswith("HPO-EXIT=") for line in lines):
                final = lines
                break
            # tmux can capture a frame the terminal is half-way through redrawing (the old
            # live area scrolled up, the new one drawn below); only a screen that holds still
            # for a moment is what a user sees.
            time.sleep(0.05)
            if capture(session) == lines:
                seen_progress |= check_screen(lines, width)
            time.sleep(0.15)
        assert final, "the study did not finish"
        assert "HPO-EXIT=0" in final
        assert seen_progress, "no screen showed a running trial's epoch"
        text = "\n".join(final)
        assert "study 'toy': 4/4 trials finished" in text
        assert not any(TRIAL_ROW.match(line) for line in final)  # the live area is gone
        assert re.search(r"trial \d+ COMPLETE", text)  # the log stays
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_live_area_of_a_resumed_run_starts_from_the_stored_study(toy_study, tmp_path: Path):
    """One worker resuming a study shows its finished count and best before a trial ends."""
    study_file = toy_study(n_trials=4)
    study_file.write_text(
        study_file.read_text().replace("trainers.toy:train", "tests.fake_trainers:slow_epochs")
    )
    first = run_hpo("run", study_file.name, "--n-trials", "2", env={"HPO_TEST_EPOCH_S": "0"})
    assert first.returncode == 0, first.stderr
    best = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    expected = (
        f"study toy: 2/4 finished · best {best.best_value:.4f} (trial {best.best_trial.number})"
    )
    session = f"hpo-{uuid.uuid4().hex[:8]}"
    command = (
        f"cd {shlex.quote(str(tmp_path))} && PYTHONPATH={shlex.quote(str(ROOT))} "
        f"HPO_TEST_EPOCH_S=1.5 HF_HUB_OFFLINE=1 {shlex.quote(os.sys.executable)} -m hpo run "
        f"{study_file.name}; echo HPO-EXIT=$?; sleep 60"
    )
    _new_session(session, 200, command)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines = capture(session)
            time.sleep(0.05)
            if capture(session) != lines:  # caught mid-redraw: look again
                continue
            # The run's first trial (2) is in its epochs: nothing of this run has finished.
            if any(re.match(r"  trial 2( w\d)?: epoch", line) for line in lines):
                study_line = next(line for line in lines if line.startswith("study toy: "))
                assert study_line.startswith(expected), lines
                break
            assert not any(line.startswith("HPO-EXIT=") for line in lines), lines
        else:
            raise AssertionError("no screen showed the run's first trial in its epochs")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
