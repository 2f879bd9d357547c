"""Adapters (peft LoRA) in the HF trainers: what trains, where adapters go, validation,
the cost metrics, a fresh model per trial, small checkpoints that resume, and full
fine-tuning against LoRA in one study.

The tiny BERT, ViT and ResNet built from configs keep most of these fast; the head trap
and the two-objective study fine-tune the real packaged MiniLM.
"""

# ruff: noqa: F811 - tests take the fixtures imported from the trainers' tests as parameters
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from hpo.config import load_study
from hpo.runner import run_study
from hpo.trainer import TrialContext
from hpo.trainers import _hf
from hpo.trainers import image_classification as ic
from hpo.trainers import text_classification as tc
from hpo.view import open_view
from tests.conftest import STUDIES
from tests.test_image_classification import SIZE, bars, resnet  # noqa: F401 - fixtures
from tests.test_text_classification import tiny_model  # noqa: F401 - a fixture

LORA = {"type": "lora", "r": 4}


def context(folder: Path, study_dir: Path = STUDIES, **params) -> TrialContext:
    return TrialContext(
        trial=optuna.create_study(direction="maximize").ask(),
        params=params,
        objective="eval_accuracy",
        seed=0,
        output_dir=folder / "trial",
        study_dir=study_dir,
    )


def text_params(model: Path | str, **extra) -> dict:
    """A trial's params: 64 reviews, short texts, no error analysis."""
    return {
        "model": str(model),
        "dataset": {"path": "data/reviews.csv", "max_train_samples": 64},
        "max_seq_length": 24,
        "error_examples": 0,
        **extra,
    }


def text_model(model: Path, **extra) -> Any:
    """A trial's model for the tiny BERT, built as train builds it."""
    args = tc.TextClassificationArgs.model_validate(
        {"model": str(model), "dataset": {"path": "d.csv"}, **extra}
    )
    data = SimpleNamespace(label_names=["a", "b"], tokenizer=_hf.load_tokenizer(str(model)))
    return tc.build_model(args, str(model), data, 0)


def trainable(model: Any) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# --- what trains ------------------------------------------------------------------------


def test_a_lora_model_trains_its_adapter_and_its_head_only(tiny_model: Path) -> None:
    model = text_model(tiny_model, adapter=LORA)
    names = trainable(model)
    head = {n for n in names if ".classifier.modules_to_save." in n}
    assert head, "the head must train"
    assert all("lora_" in n for n in names - head)
    assert _hf.adapter_facts(model) == {
        "type": "lora",
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "targets": ["query", "value"],  # peft's default for BERT
        "n_targets": 4,  # 2 layers
        "modules_to_save": ["classifier"],
    }
    # freeze_layers beside an adapter: the adapter trains above the frozen layers only.
    above = trainable(text_model(tiny_model, adapter=LORA, freeze_layers=1))
    assert not any(".layer.0." in n for n in above) and any(".layer.1." in n for n in above)
    # type none is full fine-tuning, as without an adapter.
    full = text_model(tiny_model, adapter={"type": "none"})
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    assert _hf.adapter_facts(full) == {"type": "none"}


def test_rslora_dora_dropout_and_named_modules_reach_peft(tiny_model: Path) -> None:
    options = {"use_rslora": True, "use_dora": True, "dropout": 0.1, "alpha": 16}
    model = text_model(tiny_model, adapter={**LORA, **options, "target_modules": ["key"]})
    config = model.peft_config["default"]
    assert (config.use_rslora, config.use_dora, config.lora_dropout) == (True, True, 0.1)
    assert _hf.adapter_facts(model)["targets"] == ["key"]
    assert any("lora_magnitude_vector" in n for n in trainable(model))  # DoRA's magnitudes


def tiny_vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, image_size=SIZE, patch_size=4)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)
    return folder


def image_args(model: Path, data: Path, **extra) -> ic.ImageClassificationArgs:
    return ic.ImageClassificationArgs.model_validate(
        {"model": str(model), "dataset": {"path": str(data)}, **extra}
    )


def test_auto_targets_fall_back_on_the_backbones_linear_layers_then_its_convolutions(
    tmp_path: Path, bars: Path, resnet: Path
) -> None:
    """peft has no default for ViT or ResNet: every linear layer of the backbone (never
    the head, which trains in full), and for a CNN whose one linear layer is its head,
    its convolutions."""
    vit = tiny_vit(tmp_path / "vit")
    model = ic.build_model(image_args(vit, bars, adapter=LORA), str(vit), ["a", "b"], 0)
    facts = _hf.adapter_facts(model)
    assert facts["n_targets"] == 12  # 6 linear layers a block (q, k, v, out, mlp x2), 2 blocks
    # Their names (q_proj, ... in transformers 5.25; query, ... in 5.0), never the head's.
    plain = ic.build_model(image_args(vit, bars), str(vit), ["a", "b"], 0)
    linear = {n for n, m in plain.named_modules() if type(m).__name__ == "Linear"}
    assert facts["targets"] == sorted({n.rsplit(".", 1)[-1] for n in linear - {"classifier"}})
    assert facts["modules_to_save"] == ["classifier"]
    cnn = ic.build_model(image_args(resnet, bars, adapter=LORA), str(resnet), ["a", "b"], 0)
    facts = _hf.adapter_facts(cnn)
    assert facts["targets"] == ["convolution"] and facts["modules_to_save"] == ["classifier"]
    assert any(".classifier.modules_to_save." in n for n in trainable(cnn))


def test_module_names_the_model_lacks_are_refused_at_validate(
    run_cli, tmp_path: Path, resnet: Path, bars: Path
) -> None:
    study = tmp_path / "lora.yaml"
    study.write_text(
        "name: lora\nbudget: {n_trials: 1}\ntrainer:\n"
        "  ref: hpo.trainers.text_classification:train\n"
        f"  args: {{dataset: {{path: {STUDIES / 'data' / 'reviews.csv'}}}}}\n"
        "search_space:\n  adapter.r: {type: categorical, choices: [4, 8]}\n"
    )
    result = run_cli(
        "validate", str(study), "--set", "trainer.args.adapter.target_modules=[query, qurey]"
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"hpo: error: {study}:5: trainer.args.model: minilm-l6: adapter.target_modules: the "
        "model has no module 'qurey'; its layers an adapter can go into: dense, key, "
        "position_embeddings, query, token_type_embeddings, value, word_embeddings\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.yaml"]  # nothing written
    head = image_args(resnet, bars, adapter={**LORA, "target_modules": ["classifier"]})
    assert ic.check_files(head, tmp_path) == (
        "adapter.target_modules",
        "'classifier' is the model's head (classifier), which trains in full beside the "
        "adapter; leave it out of adapter.target_modules",
    )


# --- cheap trials -------------------------------------------------------------------------


def test_each_trial_wraps_a_fresh_copy_of_the_cached_base(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA trial, then a full one in the same worker: the cached base weights are the
    pretrained ones throughout, and the full trial starts from them."""
    import torch
    from transformers import AutoModelForSequenceClassification

    started = []
    build = _hf.model_from_base

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(_hf, "model_from_base", recording)
    params = text_params(tiny_model, num_train_epochs=1, learning_rate=1e-2)
    tc.train(context(tmp_path / "lora", **params, adapter=LORA))
    tc.train(context(tmp_path / "full", **params))
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model).state_dict()
    _, cached = tc.base_weights(str(tiny_model), 2)
    assert cached.keys() == {k for k in pretrained if k.startswith("bert.")}
    for name, weights in cached.items():
        assert torch.equal(weights, pretrained[name]), f"the cached {name} changed"
        assert torch.equal(started[1][name], pretrained[name]), f"{name} did not start fresh"


def test_an_adapter_checkpoint_holds_adapter_and_head_and_a_retry_resumes_from_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A worker lost after epoch 1 of 2: its checkpoint holds the adapter and the head (no
    base weights), and the retry resumes from it as an uninterrupted trial would run."""
    from safetensors import safe_open

    params = text_params(tiny_model, num_train_epochs=2, learning_rate=1e-2, adapter=LORA)
    uninterrupted = tc.train(context(tmp_path / "whole", **params))
    lost = context(tmp_path / "lost", **params)

    def stop_after_epoch_1() -> bool:  # the trainer stops as it would for a lost worker
        lost.pruned = True
        return True

    lost.should_prune = stop_after_epoch_1  # type: ignore[method-assign]
    tc.train(lost)
    checkpoint = Path(lost.trial.user_attrs["hpo:checkpoint"])
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json"} <= files
    assert {"optimizer.pt", "scheduler.pt"} <= files  # what resuming needs
    assert not files & {"model.safetensors", "tokenizer.json"}
    with safe_open(checkpoint / "adapter_model.safetensors", "pt") as saved:
        weights = list(saved.keys())
    assert all("lora_" in k or ".classifier." in k for k in weights)
    assert any(".classifier." in k for k in weights)
    # The model the adapter adapts, as this trial built it: loading it again needs its labels.
    labels = json.loads((checkpoint / "config.json").read_text())["id2label"]
    assert labels == {"0": "negative", "1": "positive"}
    resumed = context(tmp_path / "lost", **params)
    resumed.resume_from, resumed.output_dir = checkpoint, checkpoint.parent
    metrics = tc.train(resumed)
    assert [h["step"] for h in resumed.history] == [2]  # epoch 1 was not trained again
    assert metrics["eval_loss"] == pytest.approx(uninterrupted["eval_loss"], abs=1e-6)


def test_an_image_adapter_trial_trains_scores_saves_and_exports_its_adapter(
    tmp_path: Path, bars: Path
) -> None:
    vit = tiny_vit(tmp_path / "vit")
    params = {"model": str(vit), "dataset": {"path": str(bars)}, "error_examples": 0}
    ctx = context(tmp_path, tmp_path, **params, num_train_epochs=1, adapter=LORA)
    metrics = ic.train(ctx)
    assert 0 <= metrics["eval_accuracy"] <= 1
    assert 0 < metrics["trainable_parameters"] < metrics["n_parameters"]
    assert ctx.trial.user_attrs["hpo:adapter"]["modules_to_save"] == ["classifier"]
    checkpoint = Path(ctx.trial.user_attrs["hpo:checkpoint"])
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    # Its export: the adapter on its base (peft), and merged, predict alike.
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageClassification

    (tmp_path / "adapter").mkdir()
    ic.save_model(checkpoint, tmp_path / "adapter", ctx.params, tmp_path)
    (tmp_path / "merged").mkdir()
    ic.save_model(checkpoint, tmp_path / "merged", ctx.params, tmp_path, merge=True)
    base = AutoModelForImageClassification.from_pretrained(
        vit, config=AutoConfig.from_pretrained(tmp_path / "adapter")
    )
    adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForImageClassification.from_pretrained(tmp_path / "merged").eval()
    pixels = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = adapter(pixel_values=pixels).logits, merged(pixel_values=pixels).logits
    assert torch.allclose(got, expected, atol=1e-5)


# --- costs, and full fine-tuning against LoRA ---------------------------------------------

COST_METRICS = ("trainable_parameters", "adapter_size_mb", "peak_memory_mb")


def study_text(name: str, model: Path | str, data: Path, head: str, args: str) -> str:
    """A study of full fine-tuning against LoRA (a grid over adapter.type)."""
    return (
        f"name: {name}\nstorage: sqlite:///{data.parent / 'hpo.db'}\nseed: 0\n{head}"
        f"sampler: {{type: grid}}\nbudget: {{n_trials: 2}}\noutput_dir: {data.parent / 'runs'}\n"
        "trainer:\n  ref: hpo.trainers.text_classification:train\n  args:\n"
        f"    model: {model}\n    num_train_epochs: 1\n    error_examples: 0\n{args}"
        "search_space:\n  adapter.type: {type: categorical, choices: [none, lora]}\n"
    )


def test_cost_metrics_are_stored_and_a_constraint_picks_the_adapter(
    tmp_path: Path, tiny_model: Path
) -> None:
    study_file = tmp_path / "costs.yaml"
    data = tmp_path / "reviews.csv"
    data.write_bytes((STUDIES / "data" / "reviews.csv").read_bytes())
    study_file.write_text(
        study_text(
            "costs",
            tiny_model,
            data,
            "constraints:\n  - {metric: adapter_size_mb, max: 1.0}\n",
            f"    dataset: {{path: {data}, max_train_samples: 64}}\n    max_seq_length: 24\n"
            "    adapter: {r: 4}\n",
        )
    )
    assert run_study(load_study(study_file)).finished == 2
    study = optuna.load_study(study_name="costs", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    by_type = {t.params["adapter.type"]: t.user_attrs for t in study.trials}
    full, lora = by_type["none"]["hpo:metrics"], by_type["lora"]["hpo:metrics"]
    for metrics in (full, lora):
        assert all(metrics[name] > 0 for name in (*COST_METRICS, "train_samples_per_second"))
    assert full["trainable_parameters"] == full["n_parameters"]
    assert full["adapter_size_mb"] == full["model_size_mb"]  # full fine-tuning ships it all
    assert lora["trainable_parameters"] < full["trainable_parameters"] / 10
    assert lora["adapter_size_mb"] < 1.0 < full["adapter_size_mb"]
    # What trained, as readers (report, export) see it.
    view = open_view(load_study(study_file, import_trainer=False))
    adapters = {t.params["adapter.type"]: view.attrs(t).adapter for t in view.trials}
    assert adapters["none"] == {"type": "none"}
    assert (adapters["lora"]["type"], adapters["lora"]["r"]) == ("lora", 4)
    # The constraint (an adapter under 1 MB) leaves the full fine-tune out of the best.
    best = view.best()
    assert best is not None and best.params["adapter.type"] == "lora"


def topics_csv(folder: Path) -> Path:
    """96 short texts in 4 topics: easy for MiniLM once its head learns them."""
    things = {
        "food": ["the soup", "the pizza", "the bread", "the salad", "the pasta", "the cake"],
        "sport": ["the match", "the goal", "the team", "the race", "the coach", "the player"],
        "music": ["the song", "the album", "the band", "the concert", "the guitar", "the singer"],
        "weather": ["the rain", "the storm", "the wind", "the snow", "the sunshine", "the fog"],
    }
    endings = ["was mentioned today", "came up again", "is on my mind", "got talked about"]
    path = folder / "topics.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for topic, subjects in things.items():
            writer.writerows([f"{s} {e}", topic] for s in subjects for e in endings)
    return path


@pytest.mark.slow
def test_an_adapter_whose_head_is_frozen_learns_far_less_than_one_whose_head_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trap: LoRA without the head in ``modules_to_save`` (a plain ``LoraConfig``,
    no task type) keeps the seeded random head frozen. The same 9 steps on MiniLM: with
    the head trained, 0.875 on 4 topics; frozen, 0.542 (chance 0.25): the adapter alone
    makes up part of the way only."""
    topics_csv(tmp_path)
    params = {
        "model": "minilm-l6",
        "dataset": {"path": "topics.csv", "validation_fraction": 0.25, "test_fraction": 0.0},
        "max_seq_length": 12,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "save_checkpoints": False,
        "error_examples": 0,
        "adapter": {"type": "lora"},
    }
    trained_head = tc.train(context(tmp_path / "a", tmp_path, **params))
    wrap = _hf.with_adapter
    monkeypatch.setattr(_hf, "head_modules", lambda model: [])  # no modules_to_save
    monkeypatch.setattr(_hf, "with_adapter", lambda model, adapter, task_type=None: wrap(
        model, adapter))  # fmt: skip
    frozen_head = tc.train(context(tmp_path / "b", tmp_path, **params))
    assert frozen_head["trainable_parameters"] < trained_head["trainable_parameters"]
    print(f"accuracy: head trains {trained_head['eval_accuracy']:.3f}, "
          f"head frozen {frozen_head['eval_accuracy']:.3f} (chance 0.25)")  # fmt: skip
    assert trained_head["eval_accuracy"] >= 0.8
    assert frozen_head["eval_accuracy"] <= trained_head["eval_accuracy"] - 0.25


@pytest.mark.slow
def test_full_fine_tuning_and_lora_compete_on_one_pareto_front(tmp_path: Path, run_cli) -> None:
    """Accuracy against trainable parameters, the real MiniLM: both trials complete with
    their costs, and LoRA (fewest trainable parameters) is on the front."""
    data = tmp_path / "reviews.csv"
    data.write_bytes((STUDIES / "data" / "reviews.csv").read_bytes())
    study_file = tmp_path / "front.yaml"
    study_file.write_text(
        study_text(
            "front",
            "minilm-l6",
            data,
            "objective:\n  - {metric: eval_accuracy, direction: maximize}\n"
            "  - {metric: trainable_parameters, direction: minimize}\n",
            f"    dataset: {{path: {data}, max_train_samples: 32, validation_fraction: 0.05, "
            "test_fraction: 0.05}\n    max_seq_length: 16\n    adapter: {r: 4, alpha: 8}\n",
        )
    )
    assert run_study(load_study(study_file)).finished == 2
    study = optuna.load_study(study_name="front", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    lora = next(t for t in study.trials if t.params["adapter.type"] == "lora")
    full = next(t for t in study.trials if t.params["adapter.type"] == "none")
    assert lora.values[1] < full.values[1] / 100  # trainable parameters
    front = {t.number for t in study.best_trials}
    assert lora.number in front
    assert (full.number in front) == (full.values[0] > lora.values[0])
    result = run_cli("best", str(study_file))
    assert result.returncode == 0, result.stderr
    assert "adapter.type=lora" in result.stdout
    # The report's front and model table say which trial trained what.
    result = run_cli("report", str(study_file), "-o", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {m["adapter"] for m in summary["models"]} == {"full", "LoRA r=4"}
    assert {r["number"]: r["adapter"] for r in summary["pareto_front"]}[lora.number] == "LoRA r=4"
