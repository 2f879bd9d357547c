"""Launch templates users adapt: parsed, and run locally where that is possible."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import optuna
import pytest
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


def test_the_storage_proxy_template_serves_workers_without_the_database_password() -> None:
    deployment, service, job = _manifests(DEPLOY / "kubernetes" / "storage-proxy.yaml")
    proxy = _containers(deployment)[0]
    assert proxy["command"] == ["hpo", "storage-proxy"]
    assert proxy["args"][proxy["args"].index("--host") + 1] == "0.0.0.0"
    assert "${HPO_DB_PASSWORD}" in proxy["args"][proxy["args"].index("--storage") + 1]
    assert service["spec"]["type"] == "ClusterIP"  # never beyond the cluster: no TLS
    port = service["spec"]["ports"][0]["port"]
    worker = _containers(job)[0]
    storage = worker["args"][worker["args"].index("--storage") + 1]
    assert storage == f"grpc://{service['metadata']['name']}:{port}"
    assert "HPO_DB_PASSWORD" not in str(worker)
    # The proxy requires a token, and the workers send it: both from one Secret.
    tokens = [
        next(e for e in container["env"] if e["name"] == "HPO_PROXY_TOKEN")
        for container in (proxy, worker)
    ]
    assert tokens[0] == tokens[1] and "secretKeyRef" in tokens[0]["valueFrom"]


def test_kubernetes_s3_job_needs_no_shared_volume_and_takes_its_keys_from_a_secret() -> None:
    """The object-storage variant: checkpoints go to s3://, each pod stages in its own
    emptyDir (no ReadWriteMany claim), and the S3 keys come from a Secret."""
    job = yaml.safe_load((DEPLOY / "kubernetes" / "workers-job-s3.yaml").read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] >= 2
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:2] == ["hpo", "worker"]
    args = container["args"]
    assert args[args.index("--set") + 1].startswith("output_dir=s3://")
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    env = {e["name"]: e for e in container["env"]}
    for key in ("HPO_DB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[key]["valueFrom"], key
    cache = env["HPO_CACHE_DIR"]["value"]
    assert [m["name"] for m in container["volumeMounts"] if m["mountPath"] == cache]
    assert "s3" in re.findall(r"\.\[([\w,]+)\]", (DEPLOY / "Dockerfile").read_text())[0]


def test_slurm_array_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "hpo-array.sh")])
    assert result.returncode == 0


def test_slurm_array_tasks_share_one_study(tmp_path: Path, toy_study) -> None:
    """Two array tasks run the script as Slurm would; together they meet the budget."""
    study = toy_study(n_trials=8)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HPO_PYTHON": sys.executable,
        "HPO_STORAGE": f"sqlite:///{tmp_path / 'hpo.db'}",
        "SLURM_CPUS_PER_TASK": "1",
    }
    tasks = [
        subprocess.Popen(
            ["bash", str(DEPLOY / "slurm" / "hpo-array.sh"), str(study)],
            cwd=tmp_path,
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [task.communicate(timeout=120)[0] for task in tasks]
    print(*outputs, sep="\n")  # whole, on failure: an assertion message would be truncated
    assert [task.returncode for task in tasks] == [0, 0]
    trials = optuna.load_study(study_name="toy", storage=env["HPO_STORAGE"]).trials
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 8}


def test_templates_run_the_image_built_from_this_source() -> None:
    """No template tells users to `pip install hpo` (another project on PyPI)."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    tag = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.", dockerfile)[1]
    for name in ("workers-job.yaml", "cronjob.yaml", "storage-proxy.yaml", "workers-job-s3.yaml"):
        text = (DEPLOY / "kubernetes" / name).read_text()
        assert re.search(rf"image: {re.escape(tag)}\b", text), name
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not re.search(r"pip install hpo\b(?!-)", path.read_text()), path
    slurm = (DEPLOY / "slurm" / "hpo-array.sh").read_text()
    assert tag in slurm and "HPO_IMAGE" in slurm


def test_dockerfile_copies_everything_the_package_needs(tmp_path: Path) -> None:
    """Build the wheel from exactly what the Dockerfile copies (docker is not run here)."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    context = tmp_path / "context"
    derived = shutil.ignore_patterns("__pycache__", "models", "digits", "digits-resnet")
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                src = ROOT / source
                dest = context / source
                if src.is_dir():
                    shutil.copytree(src, dest, ignore=derived)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dest)
    install = 'pip install --extra-index-url "${TORCH_INDEX}" ".[minilm,postgres,mysql,proxy,s3]"'
    assert install in dockerfile
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("hpo_finetune-0.1.0-")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = ("hpo/__main__.py", "hpo/cli.py", "hpo/trainers/toy.py", "hpo/dashboards/page.py",
               "hpo/studies/quickstart.yaml", "hpo/studies/data/reviews.csv")  # fmt: skip
    for module in shipped:
        assert module in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hpo = hpo.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_slurm_script_runs_the_image_through_apptainer(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "ARGS_FILE": str(tmp_path / "args"),
        "HPO_IMAGE": "hpo.sif",
        "HPO_APPTAINER_ARGS": "--nv --bind /scratch",
        "HPO_STORAGE": "sqlite:///hpo.db",
    }
    script = str(DEPLOY / "slurm" / "hpo-array.sh")
    result = subprocess.run(["bash", script, "study.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "exec", "--nv", "--bind", "/scratch", "hpo.sif", "python", "-m", "hpo", "worker",
        "study.yaml", "--storage", "sqlite:///hpo.db", "--set", "output_dir=runs",
    ]  # fmt: skip


KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def _manifests(path: Path) -> list[dict]:
    """Every manifest of a template (a file may hold several, ``---`` between them)."""
    return [m for m in yaml.safe_load_all(path.read_text()) if m]


def _containers(manifest: dict) -> list[dict]:
    """The containers of a Job's, a CronJob's or a Deployment's pod."""
    spec = manifest["spec"]
    job = spec["jobTemplate"]["spec"] if "jobTemplate" in spec else spec
    return job["template"]["spec"]["containers"]


def _worker_manifest(path: Path) -> dict:
    """The manifest that runs hpo on a study (its Job or CronJob)."""
    [manifest] = [m for m in _manifests(path) if m["kind"] in ("Job", "CronJob")]
    return manifest


def test_kubernetes_templates_match_the_api_schemas() -> None:
    """Offline, against the Kubernetes JSON schemas kubernetes-validate bundles (strict: an
    unknown or misspelt field fails); a broken copy fails, so the check is real."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    assert len(KUBERNETES) == 4
    for path in KUBERNETES:
        for manifest in _manifests(path):
            kubernetes_validate.validate(manifest, version, strict=True)
        broken = _worker_manifest(path)
        container = _containers(broken)[0]
        container["volumeMount"] = container.pop("volumeMounts")
        with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
            kubernetes_validate.validate(broken, version, strict=True)


def _image_files() -> dict[str, Path]:
    """Folders of the image deploy/Dockerfile builds -> the repository folders they copy."""
    files, workdir = {}, "/"
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["WORKDIR"]:
            workdir = words[1]
        elif words[:1] == ["COPY"] and (ROOT / words[1]).is_dir():
            files[os.path.normpath(os.path.join(workdir, words[2]))] = ROOT / words[1]
    return files


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_templates_run_a_study_the_image_holds_with_its_data(
    path: Path, run_cli
) -> None:
    """The file a template runs is in the image with the data it names, not in a volume
    that lacks them (a ConfigMap of studies/ holds no studies/data/): hpo finds every file
    there as it would in the pod."""
    container = _containers(_worker_manifest(path))[0]
    command, file = container["command"][1], container["command"][2]
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    assert not [m for m in mounts if file.startswith(m.rstrip("/") + "/")], "a volume hides it"
    [(image_folder, source)] = [(k, v) for k, v in _image_files().items() if file.startswith(k)]
    in_repo = source / os.path.relpath(file, image_folder)
    checked = ["validate", str(in_repo)] if command == "worker" else ["sweep", str(in_repo)]
    result = run_cli(*checked, *(["--dry-run"] if command == "sweep" else []))
    assert result.returncode == 0, result.stderr


def test_the_other_templates_are_valid_shell_and_name_files_that_exist() -> None:
    """Slurm, cron and systemd run shell: its syntax holds, and the repository paths they
    name (run from a checkout) are there."""
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "hpo-array.sh")]).returncode == 0
    [cron] = [line for line in (DEPLOY / "cron" / "crontab").read_text().splitlines()
              if line[:1].isdigit()]  # fmt: skip
    assert subprocess.run(["bash", "-n", "-c", cron.split(maxsplit=5)[5]]).returncode == 0
    service = (DEPLOY / "systemd" / "hpo-sweep.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", service, re.M)
    shell = exec_start.replace("$$", "$")  # systemd's escape of a literal $
    assert subprocess.run(["bash", "-n", "-c", shell]).returncode == 0
    timer = (DEPLOY / "systemd" / "hpo-sweep.timer").read_text()
    assert "Unit=hpo-sweep.service" in timer
    named = set()
    for template in DEPLOY.rglob("*"):
        if template.is_file() and template.suffix != ".dockerignore":  # lists what may be
            text = template.read_text()
            named |= set(re.findall(r"(?<![\w/])((?:studies|deploy)/[\w./-]*\w)", text))
    assert named and [p for p in sorted(named) if not (ROOT / p).exists()] == []


def test_templates_against_postgres_install_the_postgres_extra() -> None:
    """The database drivers are extras: each template that stores in Postgres installs one
    (the Kubernetes ones run the image, which the Dockerfile installs with it)."""
    installing = ["slurm/hpo-array.sh", "systemd/hpo-sweep.service", "cron/crontab", "Dockerfile"]
    for name in installing:
        installs = re.findall(r"pip install\b([^\n`;&]*)", (DEPLOY / name).read_text())
        assert installs and all("postgres" in i for i in installs), (name, installs)
