"""Off a terminal: one event per line with an ISO timestamp, or one JSON object per event."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import run_hpo

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \S")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_plain_lines_have_date_zone_and_no_padding(toy_study) -> None:
    study_file = toy_study(n_trials=3)
    result = run_hpo("run", str(study_file))
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    assert lines
    for line in lines:
        assert ISO_LINE.match(line), line
        assert line == line.rstrip(), f"padded: {line!r}"
    assert not any("ExperimentalWarning" in line for line in lines)


def test_every_evaluation_and_trial_start_and_end_is_an_event(toy_study) -> None:
    """The toy study reports 3 epochs per trial: 3 evaluation lines per trial."""
    result = run_hpo("run", str(toy_study(n_trials=2)))
    assert result.returncode == 0, result.stderr
    text = result.stderr
    for trial in (0, 1):
        started = re.search(rf"trial {trial} started \[learning_rate=\S+, dropout=\S+\]", text)
        assert started, text
        for epoch in (1, 2, 3):
            assert re.search(
                rf"trial {trial} epoch {epoch}/3: eval_accuracy=0\.\d{{4}} "
                r"loss=0\.\d{4} \(\d+\.\d s\)",
                text,
            ), text
        assert re.search(
            rf"trial {trial} COMPLETE value=\S+ after 3 epochs \[learning_rate=", text
        )


def test_json_log_format_is_one_object_per_event(toy_study) -> None:
    result = run_hpo("run", str(toy_study(n_trials=2)), "--log-format", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in _lines(result.stderr)]  # every line parses
    assert all(re.match(r"\d{4}-\d\d-\d\dT.+[+-]\d\d:\d\d$", e["time"]) for e in events)
    evaluations = [e for e in events if e.get("event") == "evaluation"]
    assert len(evaluations) == 6
    first = evaluations[0]
    assert first["trial"] == 0 and first["step"] == 1 and first["epoch"] == 1.0
    assert 0 <= first["value"] <= 1 and first["loss"] == 1 - first["value"]
    assert first["elapsed_s"] >= 0
    started = [e for e in events if e.get("event") == "trial_started"]
    finished = [e for e in events if e.get("event") == "trial_finished"]
    assert [e["trial"] for e in started] == [e["trial"] for e in finished] == [0, 1]
    assert set(started[0]["params"]) == {"learning_rate", "dropout"}
    assert finished[0]["params"] == started[0]["params"]
    assert finished[0]["state"] == "COMPLETE" and finished[0]["value"] == evaluations[2]["value"]


def test_json_before_the_command(toy_study, tmp_path: Path) -> None:
    result = run_hpo("--log-format", "json", "run", str(toy_study(n_trials=1)))
    assert result.returncode == 0, result.stderr
    assert all(json.loads(line) for line in _lines(result.stderr))


def test_workers_lines_have_one_format_and_the_worker_id(toy_study) -> None:
    result = run_hpo("run", str(toy_study(n_trials=4)), "--workers", "2")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    for line in lines:
        assert ISO_LINE.match(line), line  # the children's lines too: formatted by the parent
        assert line == line.rstrip()
    assert "Warning" not in result.stderr  # Optuna's ExperimentalWarnings, from any process
    trial_lines = [line for line in lines if re.search(r"\] trial \d+ ", line)]
    assert len(trial_lines) == 4 * (1 + 3 + 1)  # started, 3 evaluations, finished
    assert {re.search(r" \[(w\d)\] trial", line)[1] for line in trial_lines} <= {"w0", "w1"}
    for line in lines:
        if re.search(r"trial \d+ (started|epoch|COMPLETE)", line):
            assert re.search(r"\+\d\d:\d\d \[w[01]\] trial", line), line


def test_workers_json_events_carry_the_worker(toy_study) -> None:
    result = run_hpo("run", str(toy_study(n_trials=2)), "--workers", "2", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in _lines(result.stderr)]
    evaluations = [e for e in events if e.get("event") == "evaluation"]
    assert len(evaluations) == 6 and all(e["worker"] in ("w0", "w1") for e in evaluations)


def test_parallel_sweep_lines_have_one_format_and_the_study(toy_study, tmp_path: Path) -> None:
    toy_study(n_trials=2)
    (tmp_path / "sweep.yaml").write_text("base: toy.yaml\nmatrix: {sampler.type: [random, tpe]}\n")
    result = run_hpo("sweep", "sweep.yaml", "--parallel", "2", "--no-compare")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    for line in lines:
        assert ISO_LINE.match(line), line
    assert "Warning" not in result.stderr
    for study in ("toy-1", "toy-2"):
        assert any(f" [{study}] trial 1 COMPLETE" in line for line in lines), lines
