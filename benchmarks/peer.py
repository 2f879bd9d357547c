"""hpo against the HF Trainer's own search (issue 14), back to back in one process tree.

The peer is what a user would otherwise write: ``Trainer.hyperparameter_search(backend=
"optuna")`` with the same seed, space, budget and pruner, then one retrain of its best
parameters for a model and a test score (it returns parameters only). Then ``hpo run`` on
a study file with the same settings, in a child process. Both see the same splits and
tokenization (hpo's own ``prepare_data``, seeded by the study seed), the same base model
(all-MiniLM-L6-v2) and CPU threads. Each side runs in a child process of this script and
its wall is taken around that process, so both pay the same start-up (Python, torch and
transformers imports) as a user's command would.

    python benchmarks/peer.py                          # studies/data/reviews.csv
    python benchmarks/peer.py --csv topics.csv --text-column text --label-column topic
    python benchmarks/peer.py --quick                  # tiny sizes: a smoke test, no figure

It prints both walls, epochs trained, best validation and test accuracy, then
``RESULT peer_wall_ratio=<hpo wall / peer wall (search + retrain)> ... per_epoch_ratio=...``
(wall per epoch trained, hpo / peer). Goal (issue 14): ratio <= 0.85 with hpo's test
accuracy >= the peer's - 0.02.

The two sides prune differently for the same pruner settings: the Trainer reports each
evaluation to Optuna at its global step, hpo at its epoch. Hyperband ``min_resource: 1,
max_resource: 3`` puts the peer's rungs at steps 1, 3, 9, 27, 81, ... (Optuna's successive
halving has no top rung), so its first evaluation, tens of steps in, passes several
rungs at once and must make the cut of each; hpo's rungs are at epochs 1, 3, ... Compare
``epochs`` and the test scores beside the walls.
A held-out data set: ``benchmarks/make_docstring_topics.py`` writes one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MODEL = "minilm-l6"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The one description both sides are built from."""
    quick = args.quick
    return {
        "seed": args.seed,
        "n_trials": 2 if quick else args.trials,
        "epochs": (1, 2) if quick else (1, 3),
        "max_seq_length": 16 if quick else args.max_seq_length,
        "dataset": {
            "path": str(Path(args.csv).resolve()),
            "text_column": args.text_column,
            "label_column": args.label_column,
            "validation_fraction": 0.2,
            "test_fraction": 0.2,
            **({"max_train_samples": 48} if quick else {}),
        },
    }


def study_yaml(s: dict[str, Any], storage: str, output_dir: str) -> str:
    low, high = s["epochs"]
    return json.dumps(  # JSON is YAML
        {
            "name": "peer",
            "storage": storage,
            "seed": s["seed"],
            "objective": {"metric": "eval_accuracy", "direction": "maximize"},
            "sampler": {"type": "tpe"},
            "pruner": {"type": "hyperband", "min_resource": low, "max_resource": high,
                       "reduction_factor": 3},  # fmt: skip
            "budget": {"n_trials": s["n_trials"]},
            "output_dir": output_dir,
            "trainer": {
                "ref": "hpo.trainers.text_classification:train",
                "args": {"model": MODEL, "dataset": s["dataset"],
                         "max_seq_length": s["max_seq_length"]},  # fmt: skip
            },
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 5e-4, "log": True},
                "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
                "num_train_epochs": {"type": "int", "low": low, "high": high},
                "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            },
        },
        indent=1,
    )


def run_peer(s: dict[str, Any], work: Path) -> dict[str, Any]:
    """Trainer.hyperparameter_search (optuna, TPE, Hyperband) + one retrain of its best."""
    import numpy as np
    import optuna
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from hpo.trainer import TrialContext
    from hpo.trainers.text_classification import (
        TextClassificationArgs,
        prepare_data,
        resolve_model,
    )

    started = time.perf_counter()
    params = {"model": MODEL, "dataset": s["dataset"], "max_seq_length": s["max_seq_length"]}
    ctx = TrialContext(trial=None, params=params, objective="eval_accuracy",
                       seed=s["seed"], output_dir=work / "peer", study_dir=ROOT)  # fmt: skip
    model_path = resolve_model(MODEL, ROOT)
    data = prepare_data(TextClassificationArgs.model_validate(params), model_path, ctx)
    splits, labels = data.splits, data.label_names
    epochs = {"n": 0}

    class CountEpochs(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epochs["n"] += 1

    def model_init(trial: Any = None) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels)
        )

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) ==
                                   prediction.label_ids).mean())}  # fmt: skip

    def hp_space(trial: Any) -> dict[str, Any]:  # hpo's order: the same TPE draws
        low, high = s["epochs"]
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-5, 5e-4, log=True),
            "per_device_train_batch_size": trial.suggest_categorical(
                "per_device_train_batch_size", [8, 16, 32]
            ),
            "num_train_epochs": trial.suggest_int("num_train_epochs", low, high),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
        }

    low, high = s["epochs"]
    trainer = Trainer(
        model_init=model_init,
        args=TrainingArguments(
            output_dir=str(work / "peer"), eval_strategy="epoch", save_strategy="no",
            report_to="none", disable_tqdm=True, seed=s["seed"], use_cpu=True,
        ),  # fmt: skip
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorWithPadding(data.tokenizer),
        compute_metrics=accuracy,
        callbacks=[CountEpochs()],
    )
    trainer.remove_callback(PrinterCallback)
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        n_trials=s["n_trials"],
        direction="maximize",
        backend="optuna",
        # The study name matters: Optuna's Hyperband puts trial N in a bracket by a hash of
        # the study name and N, so with another name (the default is a random one) the two
        # sides would prune different trials for the same draws.
        study_name="peer",
        sampler=optuna.samplers.TPESampler(seed=s["seed"]),
        pruner=optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high,
                                              reduction_factor=3),  # fmt: skip
    )
    searched = time.perf_counter() - started
    search_epochs = epochs["n"]
    # The retrain: the peer's only way to a model and a test score.
    for key, value in best.hyperparameters.items():
        setattr(trainer.args, key, value)
    trainer.train(trial=None)
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")["test_accuracy"]
    return {
        "in_process_s": time.perf_counter() - started,
        "search_s": searched,
        "epochs": epochs["n"],
        "search_epochs": search_epochs,
        "best_val": best.objective,
        "test": test,
        "best_params": best.hyperparameters,
    }


def run_hpo(s: dict[str, Any], work: Path) -> dict[str, Any]:
    """``python -m hpo run`` on the same settings, as a child process."""
    import optuna

    storage = f"sqlite:///{work / 'hpo.db'}"
    study_file = work / "peer.yaml"
    study_file.write_text(study_yaml(s, storage, str(work / "runs")))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "hpo", "run", str(study_file)], check=True, env=env, cwd=work
    )
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name="peer", storage=storage)
    best = study.best_trial
    return {
        "wall_s": wall,
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "best_val": best.value,
        "test": best.user_attrs.get("hpo:metrics", {}).get("test_accuracy"),
        "best_params": best.params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(ROOT / "studies" / "data" / "reviews.csv"))
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 trials, 48 examples: smoke test")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--peer-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    s = settings(args)
    if args.peer_child:  # the peer's own process: its figures go back as JSON
        args.peer_child.write_text(json.dumps(run_peer(s, args.peer_child.parent)))
        return
    work = Path(tempfile.mkdtemp(prefix="peer-"))
    started = time.perf_counter()
    subprocess.run([sys.executable, *sys.argv, "--peer-child", str(work / "peer.json")],
                   check=True)  # fmt: skip
    peer = json.loads((work / "peer.json").read_text())
    peer["wall_s"] = time.perf_counter() - started
    hpo = run_hpo(s, work)
    for name, r in (("peer (search + retrain)", peer), ("hpo run", hpo)):
        print(f"{name}: wall {r['wall_s']:.1f} s, epochs {r['epochs']}, "
              f"best val {r['best_val']:.3f}, test of best {r['test']:.3f}, "
              f"best params {r['best_params']}")  # fmt: skip
    ratio = hpo["wall_s"] / peer["wall_s"]
    # Wall per epoch trained (the peer's retrain counted): the cost of an epoch on each side,
    # apart from how many epochs each side's pruning let through.
    per_epoch = (hpo["wall_s"] / hpo["epochs"]) / (peer["wall_s"] / peer["epochs"])
    if args.json:
        args.json.write_text(json.dumps({"settings": s, "peer": peer, "hpo": hpo}, indent=1))
    print(
        f"RESULT peer_wall_ratio={ratio:.3f} test_delta={hpo['test'] - peer['test']:+.3f} "
        f"per_epoch_ratio={per_epoch:.3f} "
        f"hpo_wall_s={hpo['wall_s']:.1f} peer_wall_s={peer['wall_s']:.1f} "
        f"quick={int(args.quick)}"
    )


if __name__ == "__main__":
    main()
