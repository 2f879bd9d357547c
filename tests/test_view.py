"""The read-only study view: what readers see of a stored study, and that reading it
creates and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hpo import storage as st
from hpo.cli import main
from hpo.config import load_study
from hpo.errors import StudyStateError
from hpo.study import open_study
from hpo.view import TrialAttrs, open_view
from tests.conftest import TOY_STUDY
from tests.test_ranking import CONSTRAINED, CONSTRAINED_BEST, constrained_study


def _snapshot(study: optuna.Study) -> str:
    """Everything a study holds, as text: a read that wrote anything changes it."""
    storage = study._storage
    return json.dumps(
        {
            "user": study.user_attrs,
            "system": storage.get_study_system_attrs(study._study_id),
            "trials": [
                [t.number, t.state.name, t.values, t.params, t.user_attrs, t.system_attrs]
                for t in storage.get_all_trials(study._study_id)
            ],
        },
        sort_keys=True,
        default=str,
    )


def test_a_view_ranks_as_hpo_best_and_decodes_what_the_run_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = constrained_study(tmp_path, keep=6)
    assert main(["run", str(path)]) == 0
    config = load_study(path)

    view = open_view(config)

    assert [t.number for t in view.trials] == list(range(len(CONSTRAINED)))
    # Trials 1 and 5 score higher but break the latency constraint.
    assert view.best().number == CONSTRAINED_BEST
    assert [t.number for t in view.feasible()] == [0, 2, 3, 4]
    assert view.usage().finished == len(CONSTRAINED)
    assert view.summary().best_number == CONSTRAINED_BEST
    capsys.readouterr()
    assert main(["best", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"] == view.best().number

    attrs = view.attrs(view.best())
    assert attrs.metrics == {k: float(v) for k, v in CONSTRAINED[CONSTRAINED_BEST].items()}
    assert attrs.checkpoint is not None and Path(attrs.checkpoint, "config.json").is_file()
    assert attrs.worker is not None and attrs.worker.count(":") == 1  # host:pid
    assert isinstance(attrs.duration_s, float) and attrs.failure is None
    assert view.stored_config == config.stored_form()
    # The storage and id optuna-dashboard is served with.
    assert view.storage.get_study_id_from_name(config.name) == view.study_id
    assert view.storage_url == config.storage  # a file URL holds no secret to hide


def test_a_view_decodes_failure_reasons_and_trainer_attributes(toy_study) -> None:
    config = load_study(toy_study(n_trials=5))
    study = open_study(config)
    oom, lost, plain, interrupted = (study.ask() for _ in range(4))
    oom.set_user_attr(st.ATTR_FAILURE, "oom")
    oom.set_user_attr(st.ATTR_FAILURE_MESSAGE, "OutOfMemoryError: CUDA out of memory")
    interrupted.set_user_attr(st.ATTR_FAILURE, "interrupted")
    for trial in (oom, lost, plain, interrupted):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.set_user_attr(st.STUDY_ATTR_LOST, [lost.number])
    done = study.ask()
    done.set_user_attr(st.ATTR_PREFIX + "model", {"name": "tiny", "n_parameters": 10})
    done.set_user_attr(st.ATTR_WARM_START, {"study": "old", "trial": 3})
    study.tell(done, 0.5)

    view = open_view(config)

    assert [view.attrs(t).failure for t in view.trials] == [
        "oom",
        "worker_lost",
        "exception",  # a failure hpo did not classify
        "interrupted",
        None,
    ]
    assert view.attrs(view.trials[0]).failure_message == "OutOfMemoryError: CUDA out of memory"
    assert view.attrs(view.trials[4]) == TrialAttrs(
        model={"name": "tiny", "n_parameters": 10}, warm_start={"study": "old", "trial": 3}
    )
    assert [line.reason for line in view.attention()] == [
        "oom",
        "worker_lost",
        "exception",
        "interrupted",
    ]


def test_reading_a_view_writes_nothing(toy_study) -> None:
    config = load_study(toy_study(n_trials=2))
    assert main(["run", str(config.source)]) == 0
    before = _snapshot(open_view(config).study)

    view = open_view(config)
    for trial in view.trials:
        view.attrs(trial)
    view.best(), view.feasible(), view.pareto_front(), view.usage(), view.summary()
    view.attention(), view.stored_config, view.storage, view.study_id

    assert _snapshot(view.study) == before


def test_a_views_summary_attention_and_front_are_of_its_one_snapshot(
    toy_study, tmp_path: Path
) -> None:
    """``hpo status`` shows counts, front and failures from one read: trials added after
    the view read the study are in none of them."""
    text = TOY_STUDY.format(
        name="toy", storage=f"sqlite:///{tmp_path / 'hpo.db'}", sampler="random", n_trials=5
    ) + (
        "objective:\n"
        "  - {metric: eval_loss, direction: minimize}\n"
        "  - {metric: latency_ms, direction: minimize}\n"
    )
    config = load_study(toy_study(text=text))
    study = open_study(config)
    study.tell(study.ask(), [0.5, 2.0])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    view = open_view(config)
    assert [t.number for t in view.trials] == [0, 1]

    study.tell(study.ask(), [0.1, 1.0])  # would take the front from trial 0
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # running

    summary = view.summary()
    assert summary.counts == {"COMPLETE": 1, "FAIL": 1} and summary.finished == 1
    assert [row["number"] for row in summary.pareto_front] == [0]
    assert [row["number"] for row in view.front_rows()] == [0]
    assert [(line.number, line.state) for line in view.attention()] == [(1, "FAIL")]


def test_a_view_of_a_missing_study_creates_nothing(toy_study, tmp_path: Path) -> None:
    config = load_study(toy_study())
    with pytest.raises(StudyStateError, match="no study 'toy'"):
        open_view(config)
    assert not (tmp_path / "hpo.db").exists()

    other = load_study(toy_study(name="other"))
    assert main(["run", str(other.source), "--set", "budget.n_trials=1"]) == 0
    with pytest.raises(StudyStateError, match="no study 'toy'"):
        open_view(config)
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'hpo.db'}") == ["other"]
