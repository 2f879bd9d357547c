"""The trainer contract: one Trainer a module exports, refs old and new, the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

from hpo.cli import main
from hpo.contract import SHIPPED_TRAINERS, Trainer, registered_trainers, resolve_trainer
from tests.conftest import ROOT, STUDIES

# A trainer of the user's own, at toy speed: the accuracy is a function of the params.
MINE = """\
from pydantic import BaseModel, ConfigDict

from hpo.contract import Trainer


class MineArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = 0.001
    num_train_epochs: int = 1


def train(ctx):
    args = MineArgs.model_validate(ctx.params)
    metrics = {"eval_accuracy": 1.0 - args.learning_rate}
    ctx.report(1, metrics)
    return metrics


TRAINER = Trainer(train, args_model=MineArgs)
"""
STUDY = """\
name: {name}
budget: {{n_trials: 1}}
trainer: {{ref: {ref}, args: {{num_train_epochs: 1}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
"""


def test_a_plain_function_is_a_trainer_with_no_hooks(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("def train(ctx):\n    return {'eval_accuracy': 1.0}\n")
    trainer = resolve_trainer("plain:train", tmp_path)
    assert trainer.train(None) == {"eval_accuracy": 1.0}
    assert trainer == Trainer(trainer.train)  # every hook at its default


def test_a_modules_trainer_supplies_the_hooks_of_its_function(tmp_path: Path) -> None:
    (tmp_path / "hooked.py").write_text(MINE)
    by_function = resolve_trainer("hooked:train", tmp_path)
    assert by_function.args_model is not None
    assert by_function.args_model.__name__ == "MineArgs"
    assert resolve_trainer("hooked:TRAINER", tmp_path) is by_function
    from hpo.trainers import text_classification as tc

    assert resolve_trainer("hpo.trainers.text_classification:train", tmp_path) is tc.TRAINER


def test_resolve_trainer_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    """It once appended the study's folder and the working dir to sys.path for good."""
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "pathless.py").write_text("def train(ctx):\n    return {}\n")
    before = list(sys.path)
    resolve_trainer("pathless:train", study_dir)
    resolve_trainer("hpo.trainers.toy:train", study_dir)
    assert sys.path == before


def test_the_old_name_of_a_shipped_trainer_validates_with_a_note(tmp_path: Path, capsys) -> None:
    """``trainers.text_classification:train`` (hpo's top-level package of before) still means
    hpo's trainer; validate says how it is written now."""
    text = (STUDIES / "quickstart.yaml").read_text()
    old = text.replace(
        "ref: hpo.trainers.text_classification:train", "ref: trainers.text_classification:train"
    ).replace("path: data/reviews.csv", f"path: {STUDIES / 'data' / 'reviews.csv'}")
    assert old != text
    (tmp_path / "old.yaml").write_text(old)
    assert main(["validate", str(tmp_path / "old.yaml")]) == 0
    err = capsys.readouterr().err
    assert (
        f"hpo: note: {tmp_path / 'old.yaml'}: trainer.ref: trainers.text_classification:train "
        "is the old name of hpo's shipped trainer; write "
        "hpo.trainers.text_classification:train\n"
    ) in err
    assert main(["validate", str(STUDIES / "quickstart.yaml")]) == 0
    assert "note" not in capsys.readouterr().err


def test_a_users_trainers_package_beside_the_study_is_the_users(tmp_path: Path, capsys) -> None:
    """A ``trainers/`` folder of the user's own no longer collides with hpo's trainers: its
    modules answer ``trainers.<name>``, and an old ref to a shipped trainer it lacks is
    still hpo's."""
    project = tmp_path / "project"
    (project / "trainers").mkdir(parents=True)
    (project / "trainers" / "__init__.py").write_text("")
    (project / "trainers" / "mine.py").write_text(MINE)
    mine = project / "mine.yaml"
    mine.write_text(STUDY.format(name="mine", ref="trainers.mine:train"))
    assert main(["validate", str(mine)]) == 0
    assert "note" not in capsys.readouterr().err
    assert main(["run", str(mine)]) == 0
    study = optuna.load_study(study_name="mine", storage="sqlite:///hpo.db")
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == pytest.approx(1.0 - trial.params["learning_rate"])
    # The old name of a shipped trainer the user's package does not hold is hpo's.
    toy = project / "toy.yaml"
    toy.write_text(STUDY.format(name="toy", ref="trainers.toy:train"))
    capsys.readouterr()
    assert main(["validate", str(toy)]) == 0
    assert "write hpo.trainers.toy:train" in capsys.readouterr().err
    assert resolve_trainer("trainers.toy:train", project).train.__module__ == "hpo.trainers.toy"


@pytest.fixture(autouse=True)
def _forget_trainers_packages():
    """The ``trainers`` packages a test imports stay its own."""
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "trainers"]:
        del sys.modules[name]


def test_a_study_folder_gets_its_own_module_of_a_name_another_folder_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two studies in one process (a sweep, the tests), each with its own ``trainers/``,
    after an installed package of that name was imported."""
    import importlib

    (tmp_path / "site" / "trainers").mkdir(parents=True)
    (tmp_path / "site" / "trainers" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.import_module("trainers")
    for name in ("a", "b"):
        (tmp_path / name / "trainers").mkdir(parents=True)
        (tmp_path / name / "trainers" / "__init__.py").write_text("")
        (tmp_path / name / "trainers" / "mine.py").write_text(
            f"def train(ctx):\n    return {{'eval_accuracy': {name!r}}}\n"
        )
    assert resolve_trainer("trainers.mine:train", tmp_path / "a").train(None) == {
        "eval_accuracy": "a"
    }
    assert resolve_trainer("trainers.mine:train", tmp_path / "b").train(None) == {
        "eval_accuracy": "b"
    }


def _schema_refs(capsys) -> set[str]:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    return {
        rule["if"]["properties"]["trainer"]["properties"]["ref"]["const"]
        for rule in schema["allOf"]
    }


def test_schema_lists_the_registered_trainers(capsys) -> None:
    assert _schema_refs(capsys) == set(registered_trainers().values())
    assert set(SHIPPED_TRAINERS.values()) <= set(registered_trainers().values())


def test_the_registry_lists_what_pyproject_registers() -> None:
    """A checkout run without an install reads hpo's own trainers from SHIPPED_TRAINERS."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["hpo.trainers"] == SHIPPED_TRAINERS


def test_a_third_party_package_registers_its_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An installed distribution's ``hpo.trainers`` entry point is a registered trainer:
    ``hpo schema`` checks its args, ``hpo validate`` runs its hooks."""
    site = tmp_path / "site"
    (site / "hpo_thirdparty-1.0.dist-info").mkdir(parents=True)
    (site / "hpo_thirdparty-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hpo-thirdparty\nVersion: 1.0\n"
    )
    (site / "hpo_thirdparty-1.0.dist-info" / "entry_points.txt").write_text(
        "[hpo.trainers]\nthirdparty = thirdparty_trainer:train\n"
        # a name of hpo's own cannot be taken over
        "toy = thirdparty_trainer:train\n"
    )
    (site / "thirdparty_trainer.py").write_text(MINE)
    monkeypatch.syspath_prepend(str(site))
    registered = registered_trainers()
    assert registered["thirdparty"] == "thirdparty_trainer:train"
    assert registered["toy"] == SHIPPED_TRAINERS["toy"]
    assert "thirdparty_trainer:train" in _schema_refs(capsys)
