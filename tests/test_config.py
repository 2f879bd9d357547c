"""Study files: golden valid and invalid files, overrides, and the CLI's bad-input contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import load_study
from hpo.errors import ConfigError
from tests.conftest import DATA, run_hpo

INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def expected_error(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path} needs an '# expect: ' first line"
    return first.removeprefix("# expect: ").replace("{here}", str(path.parent))


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_files_load(path: Path) -> None:
    config = load_study(path)
    assert config.name == path.stem
    assert config.search_space


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_gives_exact_one_line_error(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert str(info.value) == f"{path}: {expected_error(path)}"
    assert "\n" not in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: file not found; check the path"):
        load_study("nope.yaml")


def test_set_overrides_apply_before_validation() -> None:
    config = load_study(
        DATA / "valid" / "minimal.yaml",
        [
            "budget.n_trials=7",
            "sampler.type=random",
            "trainer.args.noise=0.5",
            "search_space.dropout={type: float, low: 0.0, high: 0.2}",
        ],
    )
    assert config.budget.n_trials == 7
    assert config.sampler.type == "random"
    assert config.trainer.args == {"noise": 0.5}
    assert config.search_space["dropout"].high == 0.2


def test_bad_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"budget.n_trials: Input should be greater than 0"):
        load_study(DATA / "valid" / "minimal.yaml", ["budget.n_trials=0"])
    with pytest.raises(ConfigError, match=r"--set expects key.path=value"):
        load_study(DATA / "valid" / "minimal.yaml", ["budget.n_trials"])


def test_defaults_and_durations() -> None:
    config = load_study(DATA / "valid" / "full.yaml")
    assert config.budget.timeout == 3600
    assert config.pruner.type == "patient" and config.pruner.wrapped.type == "median"
    minimal = load_study(DATA / "valid" / "minimal.yaml")
    assert minimal.storage == "sqlite:///hpo.db"
    assert minimal.sampler.type == "tpe" and minimal.pruner is None


def test_stored_form_redacts_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_PW", "hunter2")
    config = load_study(
        DATA / "valid" / "minimal.yaml", ["storage=postgresql+psycopg2://me:literalpw@db/x"]
    )
    assert "literalpw" not in str(config.stored_form())
    config = load_study(
        DATA / "valid" / "minimal.yaml", ["storage=postgresql+psycopg2://me:${HPO_PW}@db/x"]
    )
    assert "hunter2" not in str(config.stored_form())


@pytest.mark.parametrize("name", ["unknown_key", "yaml_syntax", "ungriddable", "bad_storage"])
def test_cli_bad_input_exit_2_one_line_nothing_written(name: str, tmp_path: Path) -> None:
    path = DATA / "invalid" / f"{name}.yaml"
    result = run_hpo("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpo: error: {path}: {expected_error(path)}"
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no hpo.db, no runs/


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    result = run_hpo("validate", str(DATA / "invalid" / "unknown_key.yaml"), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_validate_prints_space_and_grid_size() -> None:
    result = run_hpo("validate", str(DATA / "valid" / "grid.yaml"))
    assert result.returncode == 0, result.stderr
    assert "dropout: float in [0.0, 0.3] step 0.1" in result.stdout
    assert "grid size: 24" in result.stdout  # 4 dropout x 3 epochs x 2 batch sizes
