"""The README's promises name the tests that keep them: every named test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

# `tests/test_x.py::test_name` names a file and a test; a bare `::test_name` that follows
# names another test of the same file. A parametrized id (`[parent]`) is not part of the name.
_REFERENCE = re.compile(r"(tests/test_\w+\.py)?::(test_\w+)")


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, test function) for every test reference in ``text``, in order."""
    found, current = [], None
    for match in _REFERENCE.finditer(text):
        current = match.group(1) or current
        assert current, f"::{match.group(2)} names no file before it"
        found.append((current, match.group(2)))
    return found


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_readme_and_security_md_name_exists() -> None:
    missing = []
    for document in ("README.md", "SECURITY.md"):
        for file, name in named_tests((ROOT / document).read_text(encoding="utf-8")):
            path = ROOT / file
            if not path.is_file() or name not in _functions(path):
                missing.append(f"{document}: {file}::{name}")
    assert missing == []


def test_a_bare_reference_takes_the_file_named_before_it() -> None:
    text = "(`tests/test_a.py::test_one`, `::test_two[x]`, `tests/test_b.py::test_three`)"
    assert named_tests(text) == [
        ("tests/test_a.py", "test_one"),
        ("tests/test_a.py", "test_two"),
        ("tests/test_b.py", "test_three"),
    ]
