"""Launch templates users adapt: parsed, and run locally where that is possible."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def test_kubernetes_worker_job_runs_hpo_worker_with_secret_password() -> None:
    job = yaml.safe_load((DEPLOY / "kubernetes" / "workers-job.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] >= 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["hpo", "worker"]
    storage = container["args"][container["args"].index("--storage") + 1]
    assert "${HPO_DB_PASSWORD}" in storage and storage.startswith("postgresql")
    password = next(e for e in container["env"] if e["name"] == "HPO_DB_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]


def test_slurm_array_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "hpo-array.sh")])
    assert result.returncode == 0


def test_slurm_array_tasks_share_one_study(tmp_path: Path, toy_study) -> None:
    """Two array tasks run the script as Slurm would; together they meet the budget."""
    study = toy_study(n_trials=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_PYTHON": sys.executable,
           "HPO_STORAGE": f"sqlite:///{tmp_path / 'hpo.db'}", "SLURM_CPUS_PER_TASK": "1"}
    tasks = [subprocess.Popen(["bash", str(DEPLOY / "slurm" / "hpo-array.sh"), str(study)],
                              cwd=tmp_path, env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [task.communicate(timeout=120)[0] for task in tasks]
    print(*outputs, sep="\n")  # whole, on failure: an assertion message would be truncated
    assert [task.returncode for task in tasks] == [0, 0]
    trials = optuna.load_study(study_name="toy", storage=env["HPO_STORAGE"]).trials
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 8}
