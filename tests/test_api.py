"""The Python API (hpo/api.py): hpo.optimize and the readers, from a file or a mapping."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import types
from pathlib import Path

import optuna
import pytest
from pydantic import BaseModel, ConfigDict, Field

import hpo
from hpo.errors import ConfigError, HpoError
from hpo.trainers import toy
from tests.conftest import ROOT

# A study with a problem in every part validation covers: a top-level typo, a bound, a
# search-space spec, and an argument the toy trainer's args model refuses.
BAD_STUDY = {
    "name": "bad",
    "samplr": {"type": "random"},
    "budget": {"n_trials": 0},
    "trainer": {"ref": "hpo.trainers.toy:train", "args": {"num_train_epochs": 0}},
    "search_space": {"learning_rate": {"type": "float", "low": 1.0, "high": 0.1}},
}


def quadratic(ctx: hpo.TrialContext) -> dict[str, float]:
    """A trainer given as a Python function: three evaluations of a bowl around x=0.3."""
    score = 0.0
    for epoch in (1, 2, 3):
        score = 1.0 - (ctx.params["x"] - 0.3) ** 2 * ctx.params.get("scale", 1.0) / epoch
        ctx.report(epoch, {"score": score})
        if ctx.should_prune():
            break
    return {"score": score, "latency_ms": 1.0 + ctx.params["x"]}


def quadratic_in_company(ctx: hpo.TrialContext) -> dict[str, float]:
    """:func:`quadratic`, once two processes have run a trial: each leaves its process id in
    ./pids and waits (up to a minute) for a second, so one fast worker cannot finish the
    budget before the other has started."""
    pids = Path("pids")
    pids.mkdir(exist_ok=True)
    (pids / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return quadratic(ctx)


class BowlArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: float = 0.0
    scale: float = Field(1.0, gt=0)


def bowl_study(**changes) -> dict:
    """A study of :func:`quadratic` as a mapping (no trainer.ref: it is given in Python)."""
    study = {
        "name": "bowl",
        "storage": "sqlite:///hpo.db",
        "seed": 3,
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"type": "random"},
        "budget": {"n_trials": 3},
        "search_space": {"x": {"type": "float", "low": -1.0, "high": 1.0}},
    }
    return {**study, **changes}


def problems(error: ConfigError) -> list[tuple[str | None, str]]:
    return [(p.field, p.message) for p in error.problems]


def test_a_file_and_a_mapping_give_the_same_errors(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BAD_STUDY, sort_keys=False))
    with pytest.raises(ConfigError) as from_file:
        hpo.optimize(path)
    with pytest.raises(ConfigError) as from_mapping:
        hpo.optimize(BAD_STUDY)
    assert problems(from_file.value) == problems(from_mapping.value)
    fields = [field for field, _ in problems(from_mapping.value)]
    assert fields == [
        "samplr",
        "budget.n_trials",
        "trainer.args.num_train_epochs",
        "search_space.learning_rate",
    ]
    assert "did you mean `sampler`?" in problems(from_mapping.value)[0][1]
    # The file's lines name the file and line; the mapping's name the field.
    assert str(from_file.value).splitlines()[0] == (
        f"{path}:2: samplr: unknown field `samplr`; did you mean `sampler`?"
    )
    assert str(from_mapping.value).splitlines()[0] == (
        "samplr: unknown field `samplr`; did you mean `sampler`?"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_bad_overrides_raise_naming_the_field_and_leave_the_mapping_alone() -> None:
    study = bowl_study()
    with pytest.raises(ConfigError) as typed:
        hpo.optimize(study, trainer=quadratic, overrides=["budget.n_trials=three"])
    assert typed.value.field == "budget.n_trials"
    assert str(typed.value) == (
        "budget.n_trials: Input should be a valid integer, unable to parse string as an "
        "integer: got 'three'; write a whole number, such as 8"
    )
    with pytest.raises(ConfigError, match=r"overrides expects key.path=value, but got 'x'"):
        hpo.optimize(study, trainer=quadratic, overrides=["x"])
    with pytest.raises(ConfigError, match=r"got the string 'budget.n_trials=2'; write \["):
        hpo.optimize(study, trainer=quadratic, overrides="budget.n_trials=2")
    with pytest.raises(ConfigError, match="expected a mapping of study fields"):
        hpo.optimize(["name: x"])  # type: ignore[arg-type]
    assert study == bowl_study()  # the caller's mapping is never changed
    assert not Path("hpo.db").exists()


def test_overrides_apply_as_strings_and_as_a_mapping(toy_study, tmp_path: Path) -> None:
    path = toy_study(n_trials=6)
    first = hpo.optimize(path, overrides=["budget.n_trials=2", "sampler={type: tpe}"])
    assert first.config.sampler.type == "tpe"
    assert (first.summary.n_trials, first.summary.ran) == (2, 2)
    # Python values, a Path among them; the budget stays the study's total.
    runs = tmp_path / "elsewhere"
    again = hpo.optimize(
        path, overrides={"budget.n_trials": 3, "sampler": {"type": "tpe"}, "output_dir": runs}
    )
    assert (again.summary.n_trials, again.summary.ran, again.summary.finished) == (3, 1, 3)
    assert again.config.output_dir == str(runs)
    done = hpo.optimize(path, overrides={"budget.n_trials": 3, "sampler": {"type": "tpe"}})
    assert done.summary.already_done and done.summary.ran == 0


def test_a_python_trainer_runs_in_place_of_trainer_ref(tmp_path: Path) -> None:
    result = hpo.optimize(bowl_study(), trainer=quadratic, progress=False)
    trials = result.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    stored = result.study.user_attrs["hpo:config"]["trainer"]
    assert stored == {"ref": f"{quadratic.__module__}:quadratic", "args": {}}
    assert all(t.user_attrs["hpo:metrics"]["latency_ms"] > 0 for t in trials)
    # A file whose ref cannot be imported: the function given is what runs.
    path = tmp_path / "bowl.yaml"
    text = json.dumps(bowl_study(name="from-file", trainer={"ref": "nowhere.at_all:train"}))
    path.write_text(text)
    with pytest.raises(ConfigError, match="cannot import module 'nowhere.at_all'"):
        hpo.optimize(path)
    ran = hpo.optimize(path, trainer=quadratic, progress=False)
    assert ran.summary.finished == 3
    assert ran.config.trainer.ref == f"{quadratic.__module__}:quadratic"


def test_a_python_trainers_hooks_check_trainer_args() -> None:
    trainer = hpo.Trainer(quadratic, args_model=BowlArgs)
    bad = bowl_study(trainer={"args": {"scale": -1}})
    with pytest.raises(ConfigError) as error:
        hpo.optimize(bad, trainer=trainer)
    assert error.value.field == "trainer.args.scale"
    typo = bowl_study(search_space={"xx": {"type": "float", "low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="did you mean `x`"):
        hpo.optimize(typo, trainer=trainer)
    with pytest.raises(ConfigError, match="expected a function train"):
        hpo.optimize(bowl_study(), trainer="tests.test_api:quadratic")  # type: ignore[arg-type]
    result = hpo.optimize(bowl_study(trainer={"args": {"scale": 2}}), trainer=trainer)
    assert result.summary.finished == 3


def test_the_study_returned_is_optunas_and_matches_the_storage(toy_study) -> None:
    path = toy_study(n_trials=4)
    result = hpo.optimize(path)
    assert isinstance(result.study, optuna.Study)
    stored = optuna.load_study(study_name="toy", storage=result.config.storage)
    assert [(t.number, t.state, t.values, t.params) for t in result.study.trials] == [
        (t.number, t.state, t.values, t.params) for t in stored.trials
    ]
    assert result.summary.best_number == result.best()["trial"]
    assert result.best() == hpo.best(path) == hpo.best(result)


def test_the_readers_return_what_the_cli_prints_as_json(run_cli, toy_study) -> None:
    path = toy_study(n_trials=3)
    hpo.optimize(path)
    best = run_cli("best", str(path), "--json")
    status = run_cli("status", str(path), "--json")
    assert json.loads(best.stdout) == hpo.best(path)
    assert json.loads(status.stdout) == hpo.study_status(path)
    assert hpo.study_status(path)["best"] == hpo.best(path)
    # Reading runs no trainer code: a ref that cannot be imported still reads.
    assert hpo.best(path, overrides={"trainer.ref": "nowhere.at_all:train"}) == hpo.best(path)


def test_several_objectives_have_a_front_not_a_best(run_cli, toy_study) -> None:
    path = toy_study(n_trials=5)
    objectives = [
        "objective=[{metric: eval_accuracy, direction: maximize}, "
        "{metric: latency_ms, direction: minimize}]",
        "sampler={type: nsga2}",
        "search_space.size={type: categorical, choices: [0.5, 1.0, 2.0]}",
    ]
    result = hpo.optimize(path, overrides=objectives)
    front = result.pareto_front()
    assert front and front == hpo.pareto_front(path, objectives)
    assert {row["number"] for row in front} == {
        t.number for t in result.study.best_trials
    }  # no constraints: Optuna's front
    cli = run_cli("best", str(path), "--json", *(f"--set={o}" for o in objectives))
    assert json.loads(cli.stdout)["pareto_front"] == front
    with pytest.raises(HpoError, match="2 objectives: no single trial is best; use pareto_front"):
        result.best()
    assert result.status()["best"] is None


def test_progress_lines_go_to_stderr_and_logging_is_restored_after(capsys) -> None:
    hpo_logger = logging.getLogger("hpo")
    before = (hpo_logger.handlers[:], hpo_logger.level, hpo_logger.propagate)
    verbosity = optuna.logging.get_verbosity()
    hpo.optimize(bowl_study(), trainer=quadratic)
    err = capsys.readouterr().err
    assert re.search(r"trial 2 COMPLETE value=0\.\d{4} after 3 epochs \[x=", err)
    assert "study bowl: 3/3 finished" in err  # off a terminal: progress as lines
    assert "\x1b[" not in err
    assert (hpo_logger.handlers, hpo_logger.level, hpo_logger.propagate) == before
    assert optuna.logging.get_verbosity() == verbosity
    hpo.optimize(bowl_study(name="quiet"), trainer=quadratic, progress=False)
    assert capsys.readouterr().err == ""  # hpo's records went to the caller's logging


@pytest.mark.fast  # refused before any worker starts
def test_workers_refuse_a_trainer_they_cannot_import(monkeypatch) -> None:
    with pytest.raises(ConfigError) as lambda_error:
        hpo.optimize(bowl_study(), trainer=lambda ctx: {"score": 1.0}, workers=2)
    assert lambda_error.value.field == "trainer"
    assert "<lambda> cannot be sent to worker processes" in str(lambda_error.value)
    # A function defined in a notebook: its module is a __main__ with no file.
    notebook = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    exec("def train(ctx):\n    return {'score': 1.0}\n", notebook.__dict__)
    with pytest.raises(ConfigError) as notebook_error:
        hpo.optimize(bowl_study(), trainer=notebook.train, workers=2)
    assert str(notebook_error.value) == (
        "trainer: train is defined in this notebook or interactive session, which worker "
        "processes cannot import; define it at the top level of a .py module and import it "
        "from there, or use workers=1"
    )
    assert not Path("hpo.db").exists()  # refused before anything was written
    assert hpo.optimize(bowl_study(), trainer=notebook.train).summary.finished == 3


def test_worker_processes_run_an_importable_python_trainer() -> None:
    result = hpo.optimize(
        bowl_study(budget={"n_trials": 4}), trainer=quadratic_in_company, workers=2
    )
    assert result.summary.finished == 4
    workers = {t.user_attrs["hpo:worker"] for t in result.study.trials}
    assert len(workers) == 2 and str(os.getpid()) not in {w.split(":")[1] for w in workers}


def test_toy_trainer_function_takes_its_modules_hooks() -> None:
    with pytest.raises(ConfigError) as error:
        hpo.optimize(bowl_study(trainer={"args": {"num_train_epochs": 0}}), trainer=toy.train)
    assert error.value.field == "trainer.args.num_train_epochs"


@pytest.mark.process  # a Jupyter kernel is another process
def test_the_example_notebook_runs_and_its_progress_reads_in_a_cell(tmp_path: Path) -> None:
    import nbclient
    import nbformat

    notebook = nbformat.read(ROOT / "examples" / "python_api.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute(env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    texts = [
        output.get("text") or output.get("data", {}).get("text/plain", "")
        for cell in code
        for output in cell.outputs
    ]
    assert all("\x1b" not in text for text in texts)  # no terminal escape codes
    assert not any(o.output_type == "error" for cell in code for o in cell.outputs)
    run = code[0].outputs
    areas = [o.data["text/plain"] for o in run if o.output_type == "display_data"]
    # One area, redrawn in place: its last state is the finished study.
    assert len(areas) == 1 and areas[0].startswith(
        "study notebook-toy: 4/4 finished · best 0.8190 (trial 0) · elapsed 0:00:"
    )
    lines = "".join(o.text for o in run if o.output_type == "stream").splitlines()
    assert [line.split(" ", 1)[1] for line in lines if "COMPLETE" in line] == [
        f"trial {n} COMPLETE value={v} after 3 epochs [{p}]"
        for n, v, p in [
            (0, "0.8190", "learning_rate=6.82e-05, dropout=0.216"),
            (1, "0.5699", "learning_rate=1e-05, dropout=0.0907"),
            (2, "0.6514", "learning_rate=1.97e-05, dropout=0.0277"),
            (3, "0.6830", "learning_rate=2.36e-05, dropout=0.104"),
        ]
    ]
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d\d:\d\d trial \d ", li) for li in lines)
    assert "'trial': 0" in code[1].outputs[0].data["text/plain"]  # result.best()
    assert "notebook-own-trainer: 6/6 finished" in code[2].outputs[0].data["text/plain"]
    assert "'finished': 4" in code[3].outputs[0].data["text/plain"]  # hpo.study_status


def test_the_readme_python_api_example_runs(tmp_path: Path, capsys) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "toy.yaml").write_text((ROOT / "studies" / "toy.yaml").read_text())
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert re.search(r"^best trial \d+: \{", out, re.M), out
