"""Experiment trackers and TrainingArguments pass-through, with the real HF Trainer.

TensorBoard event files are read back with tensorboard's EventAccumulator and MLflow runs
with its client on a local file store. W&B is not installed in the test extra (its
package is heavy); ``report_to: wandb`` takes the same path and is documented.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.config import load_study
from hpo.runner import run_study
from tests.test_text_classification import REVIEWS, tiny_model  # noqa: F401 - a fixture

STUDY = """\
name: tiny
storage: sqlite:///{db}
seed: 0
sampler: {{type: grid}}
budget: {{n_trials: 1}}
output_dir: {runs}
trainer:
  ref: trainers.text_classification:train
  args:
    model: {model}
    dataset: {{path: {data}, max_train_samples: 32}}
    max_seq_length: 16
    num_train_epochs: 1
    save_checkpoints: false
    error_examples: 0
    report_to: {report_to}
    training_args: {training_args}
search_space:
  learning_rate: {{type: categorical, choices: [1.0e-3]}}
"""


def write(tmp_path: Path, model: Path, report_to: str = "none", training_args: str = "{}"):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        STUDY.format(
            db=tmp_path / "hpo.db",
            runs=tmp_path / "runs",
            model=model,
            data=REVIEWS,
            report_to=report_to,
            training_args=training_args,
        )
    )
    return path


@pytest.mark.slow
def test_tensorboard_and_mlflow_get_each_trial(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811 - the fixture imported above
    monkeypatch,
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a local store (MLflow 3 retired ./mlruns)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    study_file = write(
        tmp_path, tiny_model, "[tensorboard, mlflow]", "{max_grad_norm: 0.5, adam_beta2: 0.99}"
    )
    assert run_study(load_study(study_file)).finished == 1

    trial_dir = tmp_path / "runs" / "tiny" / "trial-0000"
    final_dir = trial_dir / "runs" / "final"
    trainer_dirs = [p for p in (trial_dir / "runs").iterdir() if p != final_dir]
    assert len(trainer_dirs) == 1
    during = EventAccumulator(str(trainer_dirs[0])).Reload()
    assert "eval/accuracy" in during.Tags()["scalars"]  # every evaluation, by the Trainer
    args_text = during.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    training_args = json.loads(args_text)
    assert training_args["run_name"] == "tiny/trial-0000"
    assert training_args["max_grad_norm"] == 0.5 and training_args["adam_beta2"] == 0.99
    final = EventAccumulator(str(final_dir)).Reload()
    assert {"final/eval_accuracy", "final/test_accuracy"} <= set(final.Tags()["scalars"])
    text = final.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0]
    assert json.loads(text.decode()) == {"learning_rate": 1e-3}

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny/trial-0000" and run.info.status == "FINISHED"
    assert run.data.params["hpo.learning_rate"] == "0.001"
    assert run.data.params["max_grad_norm"] == "0.5"  # the Trainer's own args log
    assert {"eval_accuracy", "final_eval_accuracy", "final_test_accuracy"} <= set(run.data.metrics)


@pytest.mark.slow
def test_a_pruned_trial_closes_its_mlflow_run_with_params_and_last_metrics(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811 - the fixture imported above
    monkeypatch,
) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    study_file = write(tmp_path, tiny_model, "mlflow")
    # An accuracy can never reach 1.1: the pruner stops the trial after its first epoch.
    config = load_study(
        study_file, ["pruner={type: threshold, lower: 1.1}", "trainer.args.num_train_epochs=2"]
    )
    assert run_study(config).counts == {"PRUNED": 1}
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["hpo.learning_rate"] == "0.001"
    assert "final_eval_accuracy" in run.data.metrics


@pytest.mark.parametrize(
    ("training_args", "field", "message"),
    [
        ("{no_such_field: 1}", "training_args.no_such_field", "not a field of the installed"),
        ("{fp16: true}", "training_args.fp16", "set trainer.args.mixed_precision"),
        ("{eval_strategy: steps}", "training_args.eval_strategy", "trainer.args.eval_steps"),
        ("{learning_rate: 0.1}", "training_args.learning_rate", "searched in search_space"),
        ("{weight_decay: 0.1}", "training_args.weight_decay", "from trainer.args.weight_decay"),
    ],
)
def test_training_args_are_checked_before_anything_runs(
    run_cli, tmp_path: Path, training_args: str, field: str, message: str
) -> None:
    study_file = write(tmp_path, Path("minilm-l6"), training_args=training_args)
    result = run_cli("validate", str(study_file))
    assert result.returncode == 2
    assert f"trainer.args.{field}:" in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hpo.db").exists()


def test_report_to_takes_known_trackers_only(run_cli, tmp_path: Path) -> None:
    result = run_cli("validate", str(write(tmp_path, Path("minilm-l6"), report_to="neptune")))
    assert result.returncode == 2 and "trainer.args.report_to" in result.stderr
