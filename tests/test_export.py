"""Checkpoint retention (keep_checkpoints) and best-model export with a model card."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.checkpoints import prune_checkpoints
from hpo.cli import main
from hpo.config import load_study, validate_study
from hpo.runner import run_study
from tests.conftest import STUDIES

# --- checkpoint retention ---------------------------------------------------------------


def _config(tmp_path: Path, keep: int = 2):
    raw = {
        "name": "keep",
        "storage": f"sqlite:///{tmp_path / 'hpo.db'}",
        "budget": {"n_trials": 10},
        "trainer": {"ref": "trainers.toy:train"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        "output_dir": str(tmp_path / "runs"),
        "keep_checkpoints": keep,
    }
    return validate_study(raw, path="keep.yaml")


def _folder(tmp_path: Path, number: int) -> dict[str, str]:
    out = tmp_path / "runs" / "keep" / f"trial-{number:04d}"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"w")
    return {"hpo:output_dir": str(out), "hpo:checkpoint": str(out / "checkpoint-4")}


def test_only_the_best_k_running_and_resumable_checkpoints_stay(tmp_path: Path) -> None:
    config = _config(tmp_path)
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, value in enumerate([0.5, 0.9, 0.7, 0.9]):  # best two: 1 and 3
        study.add_trial(
            create_trial(
                value=value,
                params={"x": 0.1},
                distributions=dist,
                user_attrs=_folder(tmp_path, number),
            )
        )
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=_folder(tmp_path, 4)))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=_folder(tmp_path, 5)))
    running = study.ask()  # trial 6
    for key, value in _folder(tmp_path, 6).items():
        running.set_user_attr(key, value)
    lost = _folder(tmp_path, 7)  # a lost worker's trial; its retry waits to resume it
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=lost))
    study.enqueue_trial({"x": 0.3}, user_attrs={"hpo:checkpoint": lost["hpo:checkpoint"]})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"hpo:output_dir": str(outside)})
    )

    deleted = prune_checkpoints(study, config)

    left = sorted(p.name for p in (tmp_path / "runs" / "keep").iterdir())
    assert left == ["trial-0001", "trial-0003", "trial-0006", "trial-0007"]
    assert outside.exists()  # never outside <output_dir>/<study>/
    assert prune_checkpoints(study, config) == []  # nothing left to delete
    assert [Path(p).name for p in deleted] == [f"trial-000{n}" for n in (0, 2, 4, 5)]


def test_a_study_with_keep_checkpoints_ends_with_k_folders(tmp_path: Path) -> None:
    (tmp_path / "ckpt_trainer.py").write_text(
        "from hpo.trainers import toy\n\n"
        "def train(ctx):\n"
        "    folder = ctx.output_dir / 'checkpoint-1'\n"
        "    folder.mkdir(parents=True)\n"
        "    (folder / 'model.safetensors').write_bytes(b'w')\n"
        "    ctx.set_checkpoint(folder)\n"
        "    return toy.train(ctx)\n"
    )
    study_file = tmp_path / "keep.yaml"
    study_file.write_text(
        "name: keep\nseed: 2\nbudget: {n_trials: 5}\nkeep_checkpoints: 2\n"
        "trainer: {ref: ckpt_trainer:train, args: {num_train_epochs: 1}}\n"
        "search_space: {learning_rate: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}}\n"
    )
    summary = run_study(load_study(study_file))
    assert summary.finished == 5
    study = optuna.load_study(study_name="keep", storage="sqlite:///hpo.db")
    best = sorted(study.trials, key=lambda t: -t.value)[:2]
    left = sorted(p.name for p in Path("runs/keep").iterdir())
    assert left == sorted(f"trial-{t.number:04d}" for t in best)


def _toy_checkpoint_study(tmp_path: Path, extra: str = "", objective: str = "") -> Path:
    """A toy study (real SQLite) whose trials write a checkpoint per epoch."""
    study_file = tmp_path / "ckpt.yaml"
    study_file.write_text(
        f"name: ckpt\nseed: 3\nbudget: {{n_trials: 6}}\n{extra}{objective}"
        "sampler: {type: random}\n"
        "trainer: {ref: trainers.toy:train, args: {num_train_epochs: 2, save_checkpoints: true}}\n"
        "search_space: {learning_rate: {type: float, low: 1.0e-6, high: 1.0e-2, log: true},\n"
        "               size: {type: float, low: 0.5, high: 2.0}}\n"
    )
    return study_file


def test_by_default_only_the_best_three_trials_keep_checkpoints(tmp_path: Path, capsys) -> None:
    study_file = _toy_checkpoint_study(tmp_path)
    assert main(["run", str(study_file)]) == 0
    study = optuna.load_study(study_name="ckpt", storage="sqlite:///hpo.db")
    best = sorted(study.trials, key=lambda t: (-t.value, t.number))[:3]
    left = sorted(p.name for p in Path("runs/ckpt").iterdir())
    assert left == sorted(f"trial-{t.number:04d}" for t in best)
    capsys.readouterr()
    assert main(["status", str(study_file), "--json"]) == 0
    disk = json.loads(capsys.readouterr().out)["checkpoints"]
    on_disk = sum(p.stat().st_size for p in Path("runs/ckpt").rglob("*") if p.is_file())
    assert disk == {"dir": str(Path("runs") / "ckpt"), "bytes": on_disk, "keep": 3}
    assert on_disk > 0
    assert main(["status", str(study_file)]) == 0
    assert f"checkpoints: {on_disk / 1e6:.1f} MB in runs/ckpt (the best 3 trials' kept)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("keep", ["all", "null"])
def test_keep_checkpoints_all_or_null_keeps_every_trial(tmp_path: Path, keep: str) -> None:
    study_file = _toy_checkpoint_study(tmp_path, extra=f"keep_checkpoints: {keep}\n")
    assert main(["run", str(study_file)]) == 0
    assert len(list(Path("runs/ckpt").iterdir())) == 6
    assert load_study(study_file).checkpoint_limit is None


def test_several_objectives_keep_the_pareto_front_by_default(tmp_path: Path) -> None:
    objective = (
        "objective: [{metric: eval_accuracy, direction: maximize},\n"
        "            {metric: latency_ms, direction: minimize}]\n"
    )
    study_file = _toy_checkpoint_study(tmp_path, objective=objective)
    config = load_study(study_file)
    assert main(["run", str(study_file)]) == 0
    from hpo.ranking import pareto_front

    study = optuna.load_study(study_name="ckpt", storage="sqlite:///hpo.db")
    front = pareto_front(study.get_trials(), config)
    assert 0 < len(front) < 6  # else nothing was at stake
    left = sorted(p.name for p in Path("runs/ckpt").iterdir())
    assert left == sorted(f"trial-{t.number:04d}" for t in front)


def test_other_files_in_a_trial_folder_outlive_its_checkpoints(tmp_path: Path) -> None:
    config = _config(tmp_path, keep=1)
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, value in enumerate([0.9, 0.5]):
        attrs = _folder(tmp_path, number)
        (Path(attrs["hpo:output_dir"]) / "runs").mkdir()  # TensorBoard's event files
        (Path(attrs["hpo:output_dir"]) / "runs" / "events").write_bytes(b"e")
        study.add_trial(
            create_trial(value=value, params={"x": 0.1}, distributions=dist, user_attrs=attrs)
        )
    assert [Path(p).name for p in prune_checkpoints(study, config)] == ["trial-0001"]
    loser = tmp_path / "runs" / "keep" / "trial-0001"
    assert sorted(p.name for p in loser.iterdir()) == ["runs"]
    assert (tmp_path / "runs" / "keep" / "trial-0000" / "checkpoint-4").is_dir()
    assert prune_checkpoints(study, config) == []


def test_a_folder_another_worker_prunes_at_the_same_time_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every worker prunes after each of its trials: two processes can delete one folder at
    # once (seen as a worker exiting 1 with four `hpo run` processes on one study).
    config = _config(tmp_path, keep=1)
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, value in enumerate([0.9, 0.5]):
        study.add_trial(
            create_trial(
                value=value,
                params={"x": 0.1},
                distributions=dist,
                user_attrs=_folder(tmp_path, number),
            )
        )
    loser = tmp_path / "runs" / "keep" / "trial-0001"
    real_iterdir = Path.iterdir

    def other_worker_got_there_first(self: Path):
        if self == loser and self.exists():
            self.rmdir()  # its checkpoints are gone already; the other worker removes it
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", other_worker_got_there_first)
    assert prune_checkpoints(study, config) == []
    assert not loser.exists()
    assert (tmp_path / "runs" / "keep" / "trial-0000" / "checkpoint-4").is_dir()


# --- export -----------------------------------------------------------------------------

TINY = """\
name: tiny
seed: 5
budget: {{n_trials: 1}}
trainer:
  ref: trainers.text_classification:train
  args:
    model: minilm-l6
    dataset: {{path: {data}, max_train_samples: 64, validation_fraction: 0.1,
              test_fraction: 0.1}}
    num_train_epochs: 1
    error_examples: 0
    training_args: {{hub_token: "${{HPO_TEST_HUB_TOKEN}}"}}
search_space:
  max_seq_length: {{type: categorical, choices: [16]}}  # searched: export must use the trial's
  learning_rate: {{type: categorical, choices: [0.0001]}}
  per_device_train_batch_size: {{type: categorical, choices: [32]}}
"""


@pytest.mark.slow
def test_export_reloads_and_reproduces_the_validation_metric(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hpo.export import base_model_path
    from hpo.trainer import TrialContext
    from hpo.trainers.text_classification import TextClassificationArgs, prepare_data

    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(TINY.format(data=STUDIES / "data" / "reviews.csv"))
    monkeypatch.setenv("HPO_TEST_HUB_TOKEN", "hf_secret_value")
    assert main(["run", str(study_file)]) == 0
    assert main(["export", str(study_file), "--to", "model"]) == 0
    exported = "".join(p.read_text() for p in Path("model").glob("*.json"))
    exported += Path("model/README.md").read_text()
    assert "hf_secret_value" not in exported and "${HPO_TEST_HUB_TOKEN}" in exported
    assert "exported trial 0 of study 'tiny'" in capsys.readouterr().out
    assert main(["export", str(study_file), "--to", "model"]) == 2  # never overwrites
    assert "model is not empty" in capsys.readouterr().err

    model = AutoModelForSequenceClassification.from_pretrained("model").eval()
    tokenizer = AutoTokenizer.from_pretrained("model")
    facts = json.loads(Path("model/hpo_export.json").read_text())
    card = Path("model/README.md").read_text()
    assert facts["trial"] == 0 and "eval_accuracy" in card and "transformers" in card
    assert not list(Path("model").glob("optimizer*"))
    from huggingface_hub import ModelCard

    loaded = ModelCard.load("model/README.md").data
    assert loaded.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert loaded.license == "apache-2.0" and loaded.datasets == ["reviews.csv"]
    (accuracy,) = [
        r
        for r in loaded.eval_results
        if (r.dataset_split, r.metric_type) == ("validation", "accuracy")
    ]
    assert accuracy.metric_value == facts["validation_metrics"]["eval_accuracy"]
    assert loaded.to_dict()["hpo"]["study"] == "tiny"

    # The validation split exactly as the trainer drew it, tokenized by the exported tokenizer.
    config = load_study(study_file)
    ctx = TrialContext(
        trial=None,
        params={},
        objective="",
        seed=5,
        output_dir=Path("."),
        study_dir=config.study_dir,
    )
    trial = optuna.load_study(study_name="tiny", storage=config.storage).trials[0]
    args = TextClassificationArgs.model_validate({**config.trainer.args, **trial.params})
    assert tokenizer.model_max_length == 16
    data = prepare_data(args, base_model_path(config, trial), ctx)
    batch = tokenizer(data.validation_texts, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).numpy()
    accuracy = float((predicted == np.array(data.splits["validation"]["label"])).mean())
    assert accuracy == pytest.approx(facts["validation_metrics"]["eval_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_export_follows_the_args_the_study_ran_with(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study run with --set, exported without it (or after the file changed): the
    tokenizer truncates and the card says what training used, and a warning says so."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HPO_TEST_HUB_TOKEN", "hf_secret_value")
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(TINY.format(data=STUDIES / "data" / "reviews.csv"))
    ran_with = ["--set", "trainer.args.dataset.max_train_samples=32",
                "--set", "search_space.max_seq_length.choices=[12]"]  # fmt: skip
    assert main(["run", str(study_file), *ran_with]) == 0
    capsys.readouterr()
    assert main(["export", str(study_file), "--to", str(tmp_path / "model"),
                 "--set", "search_space.max_seq_length.choices=[12]"]) == 0  # fmt: skip
    facts = json.loads((tmp_path / "model" / "hpo_export.json").read_text())
    assert facts["trainer"]["args"]["dataset"]["max_train_samples"] == 32  # the file says 64
    assert AutoTokenizer.from_pretrained(tmp_path / "model").model_max_length == 12
    assert "differ from those study 'tiny' ran with (dataset)" in capsys.readouterr().err


def _facts(name: str, path: str) -> dict:
    return {
        "study": "tiny",
        "storage": "postgresql+psycopg2://me:***@db/hpo",
        "study_file": "/studies/tiny.yaml",
        "trial": 3,
        "objective": {"metric": "eval_accuracy", "direction": "maximize", "value": 0.875},
        "params": {"learning_rate": 0.0001, "per_device_train_batch_size": 32},
        "validation_metrics": {"eval_accuracy": 0.875, "eval_loss": 0.41, "eval_runtime": 1.5},
        "test_metrics": {"test_accuracy": 0.8125, "test_f1": 0.8},
        "trainer": {"ref": "trainers.text_classification:train", "args": {"model": name}},
        "base_model": {"name": name, "path": path},
        "data": {"path": "data/reviews.csv", "sha256": "ab12", "rows": 1200},
        "checkpoint": "runs/tiny/trial-0003/checkpoint-8",
        "seed": 5,
        "packages": {"hpo-finetune": "0.1.0", "transformers": "5.24.0", "torch": None},
        "exported_at": "2026-11-28T12:00:00+00:00",
    }


def test_model_card_is_a_hub_card_with_base_model_licence_results_and_provenance(
    tmp_path: Path,
) -> None:
    from huggingface_hub import ModelCard

    from hpo.export import model_card
    from hpo.trainers.text_classification import resolve_model

    packaged = resolve_model("minilm-l6", tmp_path)
    (tmp_path / "README.md").write_text(model_card(_facts("minilm-l6", packaged)))
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0"  # from the base model's own card, not the package's MIT
    assert "Licence: `apache-2.0`, the base model's" in card.text
    assert data.datasets == ["reviews.csv"]  # the fine-tuning data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.model_name == "tiny-trial-3"
    results = {(r.dataset_split, r.metric_type): r for r in data.eval_results}
    assert sorted(results) == [
        ("test", "accuracy"),
        ("test", "f1"),
        ("validation", "accuracy"),
    ]  # neither runtimes nor the loss are results
    accuracy = results[("validation", "accuracy")]
    assert accuracy.metric_value == 0.875 and accuracy.task_type == "text-classification"
    assert accuracy.dataset_name == "reviews.csv"
    assert results[("test", "accuracy")].metric_value == 0.8125
    hpo = data.to_dict()["hpo"]
    assert (hpo["study"], hpo["trial"], hpo["seed"]) == ("tiny", 3, 5)
    base = hpo["base_model"]  # the base model's pre-training sets stay with it
    assert base["id"] == data.base_model and base["license"] == "apache-2.0"
    assert "s2orc" in base["datasets"] and "ms_marco" in base["datasets"]
    assert hpo["params"] == {"learning_rate": 0.0001, "per_device_train_batch_size": 32}
    assert hpo["data"] == {"path": "data/reviews.csv", "sha256": "ab12", "rows": 1200}
    assert hpo["storage"] == "postgresql+psycopg2://me:***@db/hpo"
    assert hpo["packages"] == {"hpo-finetune": "0.1.0", "transformers": "5.24.0"}
    assert "| learning_rate | 0.0001 |" in card.text


def test_model_card_names_a_local_folder_or_a_hub_id(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from hpo.export import model_card

    folder = tmp_path / "models" / "my-bert"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\ndatasets: [imdb]\n---\n# mine\n")
    local = ModelCard(model_card(_facts("./models/my-bert", str(folder)))).data
    assert (local.base_model, local.license) == ("my-bert", "mit")
    assert local.to_dict()["hpo"]["base_model"]["datasets"] == ["imdb"]
    hub = ModelCard(model_card(_facts("org/some-bert", "org/some-bert")))
    assert (hub.data.base_model, hub.data.license) == ("org/some-bert", None)
    assert "Licence: not stated by the base model's card" in hub.text


def test_model_card_datasets_are_the_fine_tuning_data(tmp_path: Path) -> None:
    """A hub data set by its id (the Hub links it), a file by its name."""
    from huggingface_hub import ModelCard

    from hpo.export import model_card

    facts = {**_facts("org/some-bert", "org/some-bert"), "data": {"hub": "stanfordnlp/imdb"}}
    data = ModelCard(model_card(facts)).data
    assert data.datasets == ["stanfordnlp/imdb"]
    assert {(r.dataset_type, r.dataset_name) for r in data.eval_results} == {
        ("stanfordnlp/imdb", "stanfordnlp/imdb")
    }


# --- export: --force replaces only a previous export -------------------------------------

EXPORTABLE_TRAINER = """\
from pathlib import Path

from hpo.contract import Trainer
from hpo.trainers import toy


def train(ctx):
    folder = ctx.output_dir / "checkpoint-1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    ctx.set_checkpoint(folder)
    return toy.train(ctx)


def save_model(checkpoint, target, args, study_dir):
    (Path(target) / "config.json").write_text((Path(checkpoint) / "config.json").read_text())


TRAINER = Trainer(train, save_model=save_model, resolve_model=lambda name, study_dir: name)
"""


@pytest.fixture
def exportable(tmp_path: Path, capsys) -> Path:
    """A finished toy study (SQLite in the working folder) whose trials export in a blink."""
    (tmp_path / "export_trainer.py").write_text(EXPORTABLE_TRAINER)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        "name: exportable\nseed: 1\nbudget: {n_trials: 2}\n"
        "trainer: {ref: export_trainer:train, args: {num_train_epochs: 1}}\n"
        "search_space: {learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}\n"
    )
    assert main(["run", str(study_file)]) == 0
    capsys.readouterr()
    return study_file


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_force_onto_a_folder_that_is_no_export_is_exit_2_and_deletes_nothing(
    exportable: Path, tmp_path: Path, capsys
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("hpo.db", "study.yaml", "data.csv"):
        (project / name).write_text("precious")
    before = _tree(tmp_path)
    assert main(["export", str(exportable), "--to", str(project), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{project} is not an hpo export (it holds data.csv, hpo.db, study.yaml)" in err
    assert "choose an empty or new folder" in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["cwd", "dot", "above", "output_dir", "storage"])
def test_export_to_a_folder_holding_the_study_is_exit_2_even_with_force(
    where: str, exportable: Path, tmp_path: Path, capsys
) -> None:
    """The working folder, or one holding the study file, its storage or its checkpoints,
    is never replaced (it once deleted the study's own database, file and checkpoints)."""
    to = {
        "cwd": str(tmp_path),
        "dot": ".",
        "above": "..",
        "output_dir": "runs",
        "storage": str(tmp_path),
    }[where]
    if where == "storage":  # a database in a folder of its own
        (tmp_path / "db").mkdir()
        exportable.write_text(
            exportable.read_text() + f"storage: sqlite:///{tmp_path / 'db' / 'hpo.db'}\n"
        )
        assert main(["run", str(exportable)]) == 0
        to = str(tmp_path / "db")
    before = _tree(tmp_path)
    assert main(["export", str(exportable), "--to", to, "--force"]) == 2
    err = capsys.readouterr().err
    assert f"--to: {to} holds " in err and "choose a new folder" in err
    assert _tree(tmp_path) == before


def test_export_force_replaces_a_previous_export(exportable: Path, capsys) -> None:
    assert main(["export", str(exportable), "--to", "model", "--trial", "0"]) == 0
    assert json.loads(Path("model/hpo_export.json").read_text())["trial"] == 0
    assert main(["export", str(exportable), "--to", "model", "--trial", "1"]) == 2  # no --force
    assert main(["export", str(exportable), "--to", "model", "--trial", "1", "--force"]) == 0
    assert json.loads(Path("model/hpo_export.json").read_text())["trial"] == 1
    assert sorted(p.name for p in Path("model").iterdir()) == [
        "README.md",
        "config.json",
        "hpo_export.json",
    ]
    assert [p.name for p in Path.cwd().iterdir() if ".partial" in p.name] == []


def test_export_to_a_folder_it_cannot_read_is_one_line(
    exportable: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder of another user (mode 700): listing it raises PermissionError. Simulated,
    # since root (these tests' user in CI containers) reads every folder. Before: the bare
    # "PermissionError: [Errno 13] ..." of an unexpected error, exit 1.
    locked = tmp_path / "theirs"
    locked.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert main(["export", str(exportable), "--to", str(locked)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"hpo: error: --to: {locked} cannot be read (Permission denied); choose a folder "
        "you can read and write"
    ], err


def test_an_export_folder_follows_the_umask_as_any_new_folder(exportable: Path) -> None:
    """The staging folder is renamed into place: a private temporary folder (0700) would
    leave the exported model readable by its owner only."""
    import os

    old = os.umask(0o022)
    try:
        assert main(["export", str(exportable), "--to", "model"]) == 0
    finally:
        os.umask(old)
    assert Path("model").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("to", [["--to", "model"], []])
def test_push_to_hub_offline_is_one_line_and_writes_nothing(
    exportable: Path, tmp_path: Path, capsys, to: list[str]
) -> None:
    """--push-to-hub goes through huggingface_hub's upload API; tested only against the hub
    client's own offline error (HF_HUB_OFFLINE=1, as every test runs): one line, exit 1,
    no export folder and no staging folder left."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # nothing may reach the network here
    before = _tree(tmp_path)
    code = main(["export", str(exportable), *to, "--push-to-hub", "someone/tiny-model"])
    assert code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("hpo: error: cannot push to the Hub repository someone/tiny-model: ")
    assert "offline mode is enabled" in line and line.endswith("; nothing was exported")
    assert _tree(tmp_path) == before


def test_export_needs_a_folder_or_a_hub_repository(exportable: Path, capsys) -> None:
    assert main(["export", str(exportable)]) == 2
    assert "--to: give the folder to write, or --push-to-hub REPO" in capsys.readouterr().err


def test_push_to_hub_uploads_the_finished_folder_in_one_commit(
    exportable: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """What hpo hands the hub client (a stand-in here: no test reaches the Hub): the repo is
    created first, then the complete export folder goes up as one commit, then lands."""
    import huggingface_hub

    calls: list[tuple] = []

    class RecordingApi:
        def create_repo(self, repo_id: str, exist_ok: bool) -> None:
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, *, repo_id: str, folder_path: Path, commit_message: str) -> None:
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, files, commit_message))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["export", str(exportable), "--to", "model", "--push-to-hub", "me/m"]) == 0
    trial = json.loads(Path("model/hpo_export.json").read_text())["trial"]
    assert calls == [
        ("create_repo", "me/m", True),
        ("upload_folder", "me/m", ["README.md", "config.json", "hpo_export.json"],
         f"hpo export: trial {trial} of study exportable"),
    ]  # fmt: skip
    assert sorted(p.name for p in Path("model").iterdir()) == calls[1][2]
    assert "to model and https://huggingface.co/me/m" in capsys.readouterr().out


# --- export: an adapter trial (peft), as it is or merged into its base ---------------------

LORA_STUDY = """\
name: lora
storage: sqlite:///{folder}/hpo.db
seed: 5
budget: {{n_trials: 1}}
output_dir: {folder}/runs
trainer:
  ref: trainers.text_classification:train
  args:
    model: minilm-l6
    dataset: {{path: {data}, max_train_samples: 32}}
    num_train_epochs: 1
    max_seq_length: 16
    learning_rate: 0.005
    error_examples: 0
    adapter: {{type: lora, alpha: 8}}
search_space:
  adapter.r: {{type: categorical, choices: [4]}}
"""


@pytest.fixture(scope="module")
def lora_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LoRA trial on the packaged MiniLM, trained once for the tests below."""
    folder = tmp_path_factory.mktemp("lora")
    study_file = folder / "lora.yaml"
    study_file.write_text(LORA_STUDY.format(folder=folder, data=STUDIES / "data" / "reviews.csv"))
    assert run_study(load_study(study_file)).finished == 1
    return study_file


def _validation_batch(study_file: Path) -> tuple:
    """The base model's folder, the trial's validation split as the trainer drew it, and
    the trial's metrics."""
    from hpo.export import base_model_path
    from hpo.trainer import TrialContext
    from hpo.trainers.text_classification import TextClassificationArgs, prepare_data

    config = load_study(study_file)
    trial = optuna.load_study(study_name="lora", storage=config.storage).trials[0]
    ctx = TrialContext(trial=None, params={}, objective="", seed=5, output_dir=Path("."),
                       study_dir=config.study_dir)  # fmt: skip
    args = TextClassificationArgs.model_validate(
        {**config.trainer.args, "adapter": {"type": "lora", "r": 4, "alpha": 8}}
    )
    base = base_model_path(config, trial)
    data = prepare_data(args, base, ctx)
    return base, data, trial.user_attrs["hpo:metrics"]


def _logits(model, tokenizer, texts: list[str]):
    import torch

    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.slow
def test_an_adapter_export_loads_on_its_base_through_peft_and_scores_as_the_trial(
    lora_study: Path, capsys
) -> None:
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    assert main(["export", str(lora_study), "--to", "adapter"]) == 0
    files = {p.name for p in Path("adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= files
    assert "tokenizer.json" in files and "model.safetensors" not in files
    peft_config = json.loads(Path("adapter/adapter_config.json").read_text())
    # The hub id, not this machine's site-packages folder.
    assert peft_config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"

    base, data, metrics = _validation_batch(lora_study)
    accuracy = metrics["eval_accuracy"]
    tokenizer = AutoTokenizer.from_pretrained("adapter")
    config = AutoConfig.from_pretrained("adapter")
    assert config.id2label == {0: "negative", 1: "positive"}
    model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, config=config), "adapter"
    )
    logits = _logits(model, tokenizer, data.validation_texts)
    labels = np.array(data.splits["validation"]["label"])
    assert float((logits.argmax(-1).numpy() == labels).mean()) == pytest.approx(accuracy)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    assert float(loss) == pytest.approx(metrics["eval_loss"], abs=1e-5)  # the same logits
    # Loaded on the plain base (two labels, as the reviews have), it predicts the same:
    # the head comes with the adapter.
    plain = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base), "adapter"
    )
    assert torch.allclose(_logits(plain, tokenizer, data.validation_texts), logits)


@pytest.mark.slow
def test_a_merged_export_loads_with_plain_from_pretrained_and_predicts_as_the_adapter(
    lora_study: Path, capsys
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    assert main(["export", str(lora_study), "--to", "merged", "--merge"]) == 0
    assert main(["export", str(lora_study), "--to", "adapter"]) == 0
    files = {p.name for p in Path("merged").iterdir()}
    assert "model.safetensors" in files and not files & {"adapter_config.json"}
    merged = AutoModelForSequenceClassification.from_pretrained("merged")
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    assert not any("lora" in name for name, _ in merged.named_parameters())

    base, data, _ = _validation_batch(lora_study)
    tokenizer = AutoTokenizer.from_pretrained("merged")
    adapter = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(
            base, config=AutoConfig.from_pretrained("adapter")
        ),
        "adapter",
    )
    expected = _logits(adapter, tokenizer, data.validation_texts)
    got = _logits(merged, tokenizer, data.validation_texts)
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_an_adapter_card_says_peft_and_its_base_and_a_merged_card_says_merged(
    lora_study: Path, capsys
) -> None:
    from huggingface_hub import ModelCard

    assert main(["export", str(lora_study), "--to", "adapter"]) == 0
    assert main(["export", str(lora_study), "--to", "merged", "--merge"]) == 0
    adapter, merged = ModelCard.load("adapter/README.md"), ModelCard.load("merged/README.md")
    assert adapter.data.library_name == "peft"
    assert adapter.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "lora" in adapter.data.tags and "merged" not in adapter.data.tags
    assert "PeftModel.from_pretrained(base" in adapter.text
    assert "A LoRA adapter (r=4, alpha=8, dropout=0), in peft's format." in adapter.text
    assert merged.data.library_name == "transformers"
    assert merged.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"lora", "merged"} <= set(merged.data.tags)
    assert "PeftModel" not in merged.text
    facts = json.loads(Path("adapter/hpo_export.json").read_text())
    assert (facts["adapter"]["type"], facts["adapter"]["r"], facts["merged"]) == ("lora", 4, False)
    assert json.loads(Path("merged/hpo_export.json").read_text())["merged"] is True


def test_a_card_for_a_full_fine_tune_says_transformers_and_no_adapter(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    from hpo.export import model_card

    full = ModelCard(model_card({**_facts("org/some-bert", "org/some-bert"),
                                 "adapter": {"type": "none"}, "merged": False}))  # fmt: skip
    assert full.data.library_name == "transformers" and "lora" not in full.data.tags
    lora = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05}
    adapter = ModelCard(model_card({**_facts("org/some-bert", "org/some-bert"),
                                    "adapter": lora, "merged": False}))  # fmt: skip
    assert (adapter.data.library_name, adapter.data.base_model) == ("peft", "org/some-bert")
    assert 'from_pretrained("org/some-bert", config=config)' in adapter.text
