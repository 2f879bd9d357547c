"""Experiment trackers and TrainingArguments pass-through, with the real HF Trainer.

TensorBoard event files are read back with tensorboard's EventAccumulator, MLflow runs
with its client on a local store, and W&B runs (offline mode) from the run files wandb
writes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

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
  learning_rate: {{type: categorical, choices: {rates}}}
"""


def write(
    tmp_path: Path,
    model: Path,
    report_to: str = "none",
    training_args: str = "{}",
    rates: str = "[1.0e-3]",
):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        STUDY.format(
            db=tmp_path / "hpo.db",
            runs=tmp_path / "runs",
            model=model,
            data=REVIEWS,
            report_to=report_to,
            training_args=training_args,
            rates=rates,
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
        tmp_path,
        tiny_model,
        "[tensorboard, mlflow]",
        "{max_grad_norm: 0.5, adam_beta2: 0.99}",
        rates="[1.0e-3, 2.0e-3]",
    )
    config = load_study(study_file, ["budget.n_trials=2"])
    assert run_study(config).finished == 2

    # TensorBoard: one run per trial, the trial's folder, with every evaluation (the
    # Trainer's) and the final metrics and hyperparameters (hpo's) side by side.
    study_dir = tmp_path / "runs" / "tiny"
    runs = {p.parent.name for p in study_dir.rglob("events.out.tfevents.*")}
    assert runs == {"trial-0000", "trial-0001"}
    trial = EventAccumulator(str(study_dir / "trial-0000")).Reload()
    scalars = set(trial.Tags()["scalars"])
    assert "eval/accuracy" in scalars  # every evaluation, by the Trainer
    assert {"final/eval_accuracy", "final/test_accuracy"} <= scalars
    args_text = trial.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    training_args = json.loads(args_text)
    assert training_args["run_name"] == "tiny/trial-0000"
    assert training_args["max_grad_norm"] == 0.5 and training_args["adam_beta2"] == 0.99
    text = trial.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0]
    params = json.loads(text.decode())
    assert params in ({"learning_rate": 1e-3}, {"learning_rate": 2e-3})  # the grid's order

    # MLflow: a parent run per study, each trial a run nested under it.
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tiny")
    runs_by_name = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs_by_name) == {"tiny", "tiny/trial-0000", "tiny/trial-0001"}
    parent = runs_by_name.pop("tiny")
    assert parent.data.tags["hpo.study"] == "tiny" and "mlflow.parentRunId" not in parent.data.tags
    for number, run in enumerate(sorted(runs_by_name.values(), key=lambda r: r.info.run_name)):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["hpo.trial"] == str(number)
        assert run.info.status == "FINISHED"
    run = runs_by_name["tiny/trial-0000"]
    assert run.data.params["hpo.learning_rate"] == str(params["learning_rate"])
    assert run.data.params["max_grad_norm"] == "0.5"  # the Trainer's own args log
    assert {"eval_accuracy", "final_eval_accuracy", "final_test_accuracy"} <= set(run.data.metrics)


def wandb_records(run_file: Path) -> list[Any]:
    """The records of a ``.wandb`` run file, as wandb's protobuf ``Record`` messages.

    Hand-read because wandb 0.2x dropped its Python reader (``wandb.sdk.internal.
    datastore``): a 7-byte header, then LevelDB-log blocks of 32 KiB whose records each
    start with crc32, length and type (1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = run_file.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch):
    """W&B in offline mode, its run files under ``tmp_path/wandb``.

    wandb reads its settings (WANDB_DIR among them) once per process; teardown makes the
    next test's settings count.
    """
    wandb = pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "hpo-test",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    wandb.teardown()
    yield tmp_path / "wandb"
    wandb.teardown()


@pytest.mark.slow
def test_wandb_offline_groups_a_study_and_names_each_trial(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811 - the fixture imported above
    wandb_offline: Path,
) -> None:
    study_file = write(tmp_path, tiny_model, "wandb", rates="[1.0e-3, 2.0e-3]")
    config = load_study(study_file, ["budget.n_trials=2"])
    assert run_study(config).finished == 2

    run_files = sorted(wandb_offline.glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2  # a run per trial: the second did not log into the first's
    names = []
    for run_file in run_files:
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "tiny" and run.project == "hpo-test"
        names.append(run.display_name)
        summary = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for item in r.summary.update
        }
        assert {"eval/accuracy", "final/eval_accuracy", "final/test_accuracy"} <= set(summary)
        # Closed cleanly (an exit record with code 0), once, by hpo that opened it.
        exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
        assert [e.exit_code for e in exits] == [0]
    assert sorted(names) == ["tiny/trial-0000", "tiny/trial-0001"]


@pytest.mark.slow
def test_a_failed_trial_closes_its_runs_as_failed_and_the_next_gets_its_own(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811 - the fixture imported above
    monkeypatch,
    wandb_offline: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    study_file = write(tmp_path, tiny_model, "[wandb, mlflow]")
    # bitsandbytes is not installed: that optimizer fails when training starts.
    config = load_study(
        study_file,
        [
            "search_space.optim={type: categorical, choices: [adamw_torch, adamw_bnb_8bit]}",
            "budget.n_trials=2",
            "workers.max_retries=0",
        ],
    )
    assert run_study(config).counts == {"COMPLETE": 1, "FAIL": 1}
    failed = next(t.number for t in config_trials(config) if t.state.name == "FAIL")
    assert failed == 0  # the grid's order under seed 0: a trial starts after the failure

    exits = {}
    for run_file in wandb_offline.glob("offline-run-*/run-*.wandb"):
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        exits[run.display_name] = [
            r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"
        ]
    assert exits == {
        f"tiny/trial-{failed:04d}": [1],
        f"tiny/trial-{1 - failed:04d}": [0],
    }
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses == {
        "tiny": "FINISHED",
        f"tiny/trial-{failed:04d}": "FAILED",
        f"tiny/trial-{1 - failed:04d}": "FINISHED",
    }


def config_trials(config: Any) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=config.name, storage=config.storage).trials


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
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (run,) = [r for r in runs if r.info.run_name == "tiny/trial-0000"]
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


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        # Not an integration of the installed transformers: its own list in the message.
        ("neptun", "not an integration of the installed transformers"),
        # Known to transformers, not installed here: the package to install.
        ("[tensorboard, trackio]", "trackio is not installed; pip install trackio"),
        ("dvclive", "dvclive is not installed; pip install dvclive"),
    ],
)
def test_report_to_takes_what_transformers_knows(
    run_cli, tmp_path: Path, report_to: str, message: str
) -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    study_file = write(tmp_path, Path("minilm-l6"), report_to=report_to)
    result = run_cli("validate", str(study_file))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"hpo: error: {study_file}") and "trainer.args.report_to: " in line
    assert message in line
    if "not an integration" in message:
        assert all(name in line for name in INTEGRATION_TO_CALLBACK)
    assert not (tmp_path / "hpo.db").exists()


@pytest.mark.parametrize("report_to", ["all", ["tensorboard", "mlflow"], "none"])
def test_report_to_passes_all_and_installed_integrations(report_to: Any) -> None:
    from hpo.trainers._hf import check_args
    from hpo.trainers.text_classification import TextClassificationArgs

    args = TextClassificationArgs(
        model="minilm-l6", dataset={"path": "x.csv"}, report_to=report_to
    )
    assert check_args(TextClassificationArgs, args, {}) is None


def get_json(app: Any, path: str, query: str = "") -> Any:
    """GET ``path`` from a WSGI app, in process (the dashboard's own HTTP API)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"], (statuses, body[:200])
    return json.loads(body)


def test_secondary_metrics_are_flat_user_attrs_the_dashboard_shows(toy_study) -> None:
    import optuna
    from optuna_dashboard import wsgi

    config = load_study(toy_study(n_trials=2))
    run_study(config)
    study = optuna.load_study(study_name="toy", storage=config.storage)
    for trial in study.trials:
        metrics = trial.user_attrs["hpo:metrics"]  # kept, for the readers that use it
        assert {"eval_accuracy", "test_accuracy", "latency_ms"} <= set(metrics)
        for name, value in metrics.items():
            assert trial.user_attrs[f"hpo:metric:{name}"] == value
    # The dashboard lists every numeric user attribute as a sortable trials-table column.
    app = wsgi(config.storage)
    (listed,) = get_json(app, "/api/studies")["study_summaries"]
    detail = get_json(app, f"/api/studies/{listed['study_id']}", "after=0")
    columns = {a["key"] for a in detail["union_user_attrs"] if a["sortable"]}
    assert {"hpo:metric:eval_accuracy", "hpo:metric:latency_ms"} <= columns
