"""Study files: golden valid and invalid files, overrides, and the CLI's bad-input contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config import load_study
from hpo.errors import ConfigError
from tests.conftest import DATA, STUDIES, run_hpo

INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def expected_error(path: Path) -> str:
    """The ``# expect: `` lines at the top of a golden file: one line per problem."""
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]
    assert expected, f"{path} needs '# expect: ' lines at the top"
    text = "\n".join(expected).replace("{file}", str(path))
    return text.replace("{here}", str(path.parent))


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_files_load(path: Path) -> None:
    config = load_study(path)
    assert config.name == path.stem
    assert config.search_space


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_gives_exact_one_line_error(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert str(info.value) == expected_error(path)


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


@pytest.mark.parametrize(
    "name", ["unknown_key", "yaml_syntax", "ungriddable", "bad_storage", "env_undefined"]
)
def test_cli_bad_input_exit_2_one_line_nothing_written(run_cli, name: str, tmp_path: Path) -> None:
    path = DATA / "invalid" / f"{name}.yaml"
    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    expected = [f"hpo: error: {line}" for line in expected_error(path).splitlines()]
    assert result.stderr.strip().splitlines() == expected
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no hpo.db, no runs/


def test_cli_debug_shows_traceback(run_cli, tmp_path: Path) -> None:
    result = run_cli("validate", str(DATA / "invalid" / "unknown_key.yaml"), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_validate_prints_space_and_grid_size(run_cli) -> None:
    result = run_cli("validate", str(DATA / "valid" / "grid.yaml"))
    assert result.returncode == 0, result.stderr
    assert "dropout: float in [0.0, 0.3] step 0.1" in result.stdout
    assert "grid size: 24" in result.stdout  # 4 dropout x 3 epochs x 2 batch sizes


@pytest.mark.parametrize("name", ["several_errors", "duplicate_key", "typo_top_level"])
def test_cli_reports_every_problem_exit_2_nothing_written(
    run_cli, name: str, tmp_path: Path
) -> None:
    path = DATA / "invalid" / f"{name}.yaml"
    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 2
    expected = [f"hpo: error: {line}" for line in expected_error(path).splitlines()]
    assert result.stderr.strip().splitlines() == expected
    assert list(tmp_path.iterdir()) == []


def test_env_vars_expand_in_every_string_field_and_stay_out_of_the_stored_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HPO_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("HPO_TEST_TOKEN", "s3cr3t")
    monkeypatch.setenv("HPO_PW", "hunter2")
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: env\n"
        "storage: postgresql+psycopg2://me:${HPO_PW}@db/x\n"
        "output_dir: ${HPO_TEST_DIR}/runs\n"
        "budget: {n_trials: 1}\n"
        "trainer: {ref: trainers.toy:train, args: {token: '${HPO_TEST_TOKEN}', "
        "note: 'costs $${HOME} and $$5'}}\n"
        "search_space: {dropout: {type: categorical, choices: [0.0, 0.1]}}\n"
    )
    config = load_study(study)
    assert config.output_dir == f"{tmp_path}/runs"
    assert config.trainer.args == {"token": "s3cr3t", "note": "costs ${HOME} and $$5"}
    assert config.storage == "postgresql+psycopg2://me:${HPO_PW}@db/x"  # expanded when opened
    stored = str(config.stored_form())
    assert "s3cr3t" not in stored and "hunter2" not in stored
    assert config.stored_form()["trainer"]["args"]["token"] == "${HPO_TEST_TOKEN}"


def test_set_value_is_yaml_and_replaces_a_whole_mapping() -> None:
    config = load_study(DATA / "valid" / "full.yaml", ["sampler={type: random}"])
    assert config.sampler.type == "random"


def test_changing_only_the_type_names_the_options_the_new_type_does_not_take() -> None:
    path = DATA / "valid" / "full.yaml"
    with pytest.raises(ConfigError) as info:
        load_study(path, ["sampler.type=random", "pruner.type=median"])
    assert str(info.value).splitlines() == [
        f"{path}:5: sampler: type `random` takes no option `multivariate`, `n_startup_trials`, "
        "`constant_liar` (set for `tpe`); replace the whole mapping, e.g. "
        "--set 'sampler={type: random}' or `sampler: [{type: random}]` in a sweep matrix",
        f"{path}:6: pruner: type `median` takes no option `patience`, `wrapped` (set for "
        "`patient`); replace the whole mapping, e.g. --set 'pruner={type: median}' or "
        "`pruner: [{type: median}]` in a sweep matrix",
    ]


def test_an_overridden_field_has_no_line_of_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_study(DATA / "valid" / "minimal.yaml", ["budget.n_trials=0"])
    assert str(info.value) == (
        f"{DATA / 'valid' / 'minimal.yaml'}: budget.n_trials: Input should be greater than 0: "
        "got 0; use a value above 0"
    )


@pytest.mark.parametrize("written", ["2026", "yes", "1.5", "off"])
def test_names_are_taken_as_written(written: str, tmp_path: Path) -> None:
    text = (
        (DATA / "valid" / "minimal.yaml").read_text().replace("name: minimal", f"name: {written}")
    )
    (tmp_path / "study.yaml").write_text(text)
    assert load_study(tmp_path / "study.yaml").name == written
    assert load_study(DATA / "valid" / "minimal.yaml", [f"name={written}"]).name == written


# hpo without its checkout on sys.path: hpo.trainers is found beside hpo, never on sys.path
# (where the study's folder comes first while resolve_trainer imports).
AS_INSTALLED = """\
import sys
from pathlib import Path

import hpo.cli

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path({root!r})]
sys.exit(hpo.cli.main(["validate", {study!r}]))
"""


def test_a_local_trainers_package_does_not_replace_the_shipped_trainers(tmp_path: Path) -> None:
    """`hpo.trainers.toy:train` names hpo's shipped trainer, whatever `trainers` folder is
    beside the study file: that one is not even imported (tests/test_contract.py: it answers
    `trainers.<its module>`)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    project = tmp_path / "project"
    (project / "trainers").mkdir(parents=True)
    marker = tmp_path / "imported"
    (project / "trainers" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (project / "trainers" / "toy.py").write_text("def train(params, ctx):\n    return {}\n")
    study = project / "study.yaml"
    study.write_text((DATA / "valid" / "minimal.yaml").read_text())
    script = AS_INSTALLED.format(root=str(ROOT), study=str(study))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_schema_accepts_the_shipped_studies_and_checks_trainer_args() -> None:
    import json

    import jsonschema
    import yaml

    from tests.conftest import ROOT

    result = run_hpo("schema")
    assert result.returncode == 0, result.stderr
    validator = jsonschema.Draft202012Validator(json.loads(result.stdout))
    studies = [p for p in (ROOT / "studies").glob("*.yaml") if p.name != "sweep.yaml"]
    for path in [*studies, *VALID]:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert not errors, f"{path}: {errors[0].message}"
    typo = yaml.safe_load((DATA / "invalid" / "trainer_arg_typo.yaml").read_text())
    assert any("max_seq_lenght" in e.message for e in validator.iter_errors(typo))
    toy = yaml.safe_load((DATA / "valid" / "minimal.yaml").read_text())
    toy["trainer"]["args"] = {"num_train_epochs": "three"}
    assert not validator.is_valid(toy)  # the toy trainer's own args model applies
    sweep = run_hpo("schema", "--sweep")
    sweep_validator = jsonschema.Draft202012Validator(json.loads(sweep.stdout))
    assert sweep_validator.is_valid(yaml.safe_load((ROOT / "studies" / "sweep.yaml").read_text()))
    assert not sweep_validator.is_valid({"base": "x.yaml", "matrixx": {}})


# The studies that run as shipped; those whose header says to make their data or model
# first (python studies/data/make_*.py) are checked against the schema above only.
SHIPPED = sorted(
    p
    for p in STUDIES.glob("*.yaml")
    if p.name != "sweep.yaml" and "studies/data/make_" not in p.read_text(encoding="utf-8")
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_study_validates(run_cli, path: Path, tmp_path: Path) -> None:
    """`hpo validate` accepts each study in studies/ as shipped (its trainer's own checks
    included: data columns, model, adapter targets)."""
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"study '{load_study(path).name}'" in result.stdout


def test_readme_describes_the_strategy_studies_as_they_are() -> None:
    import re

    from tests.conftest import ROOT, STUDIES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = re.search(
        r"`studies/\{grid,random,tpe,hyperband\}\.yaml` search the\s+quickstart's space four "
        r"ways \((\d+) trials on (\d+) (?:training )?examples each",
        readme,
    )
    assert said, "the README's sentence on the four strategy studies moved"
    for name in ("grid", "random", "tpe", "hyperband"):
        config = load_study(STUDIES / f"{name}.yaml")
        assert config.budget.n_trials == int(said[1]), name
        assert config.trainer.args["dataset"]["max_train_samples"] == int(said[2]), name


@pytest.mark.parametrize(
    "written",
    ["../../escaped", "{outside}/x", "a/b", "..", ".hidden", "a\\\\b", "a\\0b", "é" * 130],
    ids=["parent", "absolute", "slash", "dotdot", "dot", "backslash", "nul", "too_long"],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_name_that_is_no_single_folder_is_exit_2_and_nothing_is_written(
    run_cli, written: str, command: str, tmp_path: Path
) -> None:
    """A study name becomes output_dir/<name>/: one that would leave output_dir (or is
    not one folder name) is refused at validation, and nothing is written anywhere."""
    outside, here = tmp_path / "outside", tmp_path / "a" / "b" / "c"
    outside.mkdir()
    here.mkdir(parents=True)
    text = (
        (DATA / "valid" / "minimal.yaml")
        .read_text()
        .replace("trainers.toy:train}", "trainers.toy:train, args: {save_checkpoints: true}}")
    )
    name = written.format(outside=outside)
    study = here / "study.yaml"
    study.write_text(text.replace("name: minimal", f'name: "{name}"'), encoding="utf-8")
    result = run_cli(command, str(study), cwd=here)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"hpo: error: {study}:1: name: ") and "rename it" in line
    assert "Traceback" not in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path(p) for p in ("a", "a/b", "a/b/c", "a/b/c/study.yaml", "outside")
    ]


@pytest.mark.parametrize("written", ["with space", "v1.5", "2026", "ünïcode-名前", "a..b"])
def test_names_that_are_one_folder_name_stay_as_written(written: str) -> None:
    config = load_study(DATA / "valid" / "minimal.yaml", [f"name={written}"])
    assert config.name == written


def test_a_name_override_that_escapes_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_study(DATA / "valid" / "minimal.yaml", ["name=../x"])
    assert info.value.field == "name" and "rename it, e.g. 'x'" in str(info.value)


def test_set_reaches_a_dotted_search_space_name() -> None:
    """``search_space.adapter.r`` is the parameter ``adapter.r`` (its name holds a dot),
    whether the file has it already or --set adds it."""
    base = DATA / "valid" / "minimal.yaml"
    added = load_study(base, ["search_space.adapter.r={type: categorical, choices: [4, 8]}"])
    assert added.search_space["adapter.r"].choices == [4, 8]
    changed = load_study(
        base,
        [
            "search_space.adapter.r={type: int, low: 4, high: 8}",
            "search_space.adapter.r.high=16",
            "search_space.learning_rate.high=0.01",
        ],
    )
    searched = changed.search_space["adapter.r"]
    assert (searched.low, searched.high) == (4, 16)
    assert changed.search_space["learning_rate"].high == 0.01
