"""What installs: one top-level package, hpo; the shipped trainers and reports under it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT, STUDIES

# What the wheel is built from (pyproject's package-dir and readme).
SOURCES = ("pyproject.toml", "README.md", "hpo", "trainers", "dashboards")


def test_the_wheel_installs_no_top_level_package_but_hpo(tmp_path: Path) -> None:
    """``trainers`` and ``dashboards`` once landed at the top of site-packages, where a user
    folder hid them and another distribution's ``trainers`` would overwrite them."""
    tree = tmp_path / "tree"  # a copy: building writes build/ and *.egg-info into the tree
    tree.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
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
    [wheel] = (tmp_path / "dist").glob("*.whl")
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
