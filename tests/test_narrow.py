"""hpo narrow: a new study file around the top K trials of a finished one (toy trainer,
real SQLite)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import yaml

from hpo.config import load_study
from hpo.narrow import top_trials
from hpo.study import load_existing_study
from tests.conftest import run_hpo

BROAD = """\
name: broad
storage: sqlite:///{db}
seed: 3
sampler: {{type: random}}
budget: {{n_trials: 16}}
trainer: {{ref: trainers.toy:train, args: {{num_train_epochs: 2}}}}
search_space:
  learning_rate: {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}
  dropout: {{type: float, low: 0.0, high: 0.3}}
  per_device_train_batch_size: {{type: categorical, choices: [8, 16, 32, 64]}}
  num_train_epochs: {{type: int, low: 1, high: 4}}
"""


def broad(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "broad.yaml"
    path.write_text(BROAD.format(db=tmp_path / "hpo.db") + extra)
    assert run_hpo("run", str(path)).returncode == 0
    return path


def test_narrow_shrinks_each_range_around_the_top_trials(tmp_path: Path) -> None:
    source = broad(tmp_path)
    result = run_hpo("narrow", str(source), "--top", "4", "-o", str(tmp_path / "narrow.yaml"))
    assert result.returncode == 0, result.stderr
    config = load_study(source)
    top = top_trials(load_existing_study(config), config, 4)
    values = [t.values[0] for t in top]
    assert values == sorted(values, reverse=True) and len(top) == 4
    new = yaml.safe_load((tmp_path / "narrow.yaml").read_text())
    assert new["name"] == "broad-narrow"
    assert new["warm_start"]["from"] == "broad" and new["warm_start"]["top_k"] == 4
    space, old = new["search_space"], config.search_space
    for name in ("learning_rate", "dropout", "num_train_epochs"):
        used = [t.params[name] for t in top]
        assert old[name].low <= space[name]["low"] <= min(used)
        assert max(used) <= space[name]["high"] <= old[name].high
    lr = [t.params["learning_rate"] for t in top]
    span = math.log(max(lr)) - math.log(min(lr))
    # Log-aware: the margin is a tenth of the span in log space (unless clipped at a bound).
    low = max(1e-6, math.exp(math.log(min(lr)) - 0.1 * span))
    assert math.isclose(space["learning_rate"]["low"], low, rel_tol=1e-3)
    assert space["learning_rate"]["log"] is True
    batch = {t.params["per_device_train_batch_size"] for t in top}
    assert set(space["per_device_train_batch_size"]["choices"]) == batch
    assert isinstance(space["num_train_epochs"]["low"], int)

    # It validates, and its run starts from the source's top points (warm start).
    narrow = tmp_path / "narrow.yaml"
    assert run_hpo("validate", str(narrow)).returncode == 0
    assert run_hpo("run", str(narrow), "--n-trials", "5").returncode == 0
    study = optuna.load_study(study_name="broad-narrow", storage=config.storage)
    assert [t.params for t in study.trials[:4]] == [t.params for t in top]


def test_narrow_with_several_objectives_keeps_the_front_models(tmp_path: Path) -> None:
    text = BROAD.format(db=tmp_path / "hpo.db").replace(
        "sampler: {type: random}",
        "objective:\n  - {metric: eval_accuracy, direction: maximize}\n"
        "  - {metric: latency_ms, direction: minimize}\nsampler: {type: random}",
    )
    text += "  size: {type: categorical, choices: [0.5, 1.0, 2.0, 4.0]}\n"
    source = tmp_path / "broad.yaml"
    source.write_text(text)
    assert run_hpo("run", str(source)).returncode == 0
    config = load_study(source)
    top = top_trials(load_existing_study(config), config, 3)
    result = run_hpo("narrow", str(source), "--top", "3", "-o", str(tmp_path / "n.yaml"))
    assert result.returncode == 0, result.stderr
    new = yaml.safe_load((tmp_path / "n.yaml").read_text())
    assert set(new["search_space"]["size"]["choices"]) == {t.params["size"] for t in top}
    assert len(new["objective"]) == 2
    assert run_hpo("validate", str(tmp_path / "n.yaml")).returncode == 0


def test_narrow_refuses_an_existing_output_and_an_unrun_study(tmp_path: Path) -> None:
    path = tmp_path / "broad.yaml"
    path.write_text(BROAD.format(db=tmp_path / "hpo.db"))
    result = run_hpo("narrow", str(path), "-o", str(tmp_path / "n.yaml"))
    assert result.returncode == 2 and "no study 'broad'" in result.stderr
    assert not (tmp_path / "n.yaml").exists()
    (tmp_path / "taken.yaml").write_text("x: 1\n")
    assert run_hpo("run", str(path), "--n-trials", "2").returncode == 0
    result = run_hpo("narrow", str(path), "-o", str(tmp_path / "taken.yaml"))
    assert result.returncode == 2 and "taken.yaml exists" in result.stderr


def test_a_new_name_that_leaves_output_dir_is_exit_2_naming_the_option(tmp_path: Path) -> None:
    source = broad(tmp_path)
    out = tmp_path / "narrow.yaml"
    result = run_hpo("narrow", str(source), "-o", str(out), "--name", "../up")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hpo: error: --name: '../up' becomes a folder under output_dir, so it may not contain "
        "'/' or '\\', start with '.' or hold a NUL character; rename it, e.g. 'up'"
    )
    assert not out.exists()
