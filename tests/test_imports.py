"""Imports run one way: the core never imports the layers above it, and nothing cycles.

Counted from the source (every ``import``, including those inside functions), so a late
import cannot hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

CORE = ROOT / "hpo"
# cli.py is the one hpo module that may draw dashboards and reach a trainer by name.
ABOVE_THE_CORE = ("hpo.dashboards", "hpo.trainers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or _module_name(path)).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from hpo import storage` imports the module hpo.storage
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def test_the_core_imports_neither_dashboards_nor_trainers() -> None:
    upward = {
        name: sorted(i for i in imports_of(path) if i.startswith(ABOVE_THE_CORE))
        for name, path in core_modules().items()
        if name != "hpo.cli"
    }
    assert {name: found for name, found in upward.items() if found} == {}


def test_hpo_modules_import_each_other_without_cycles() -> None:
    modules = core_modules()
    graph = {
        name: {i for i in imports_of(path) if i in modules and i != name and i != "hpo"}
        for name, path in modules.items()
    }
    # A package's __init__ re-exports its modules; importing "hpo.backends" is not a cycle
    # with its own submodules.
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert sorted(set(cycles)) == []


# Optuna's private names hpo has used; only hpo/backends/optuna_compat.py may touch them.
_OPTUNA_PRIVATE = re.compile(
    r"\._(storage|study_id|trial_id|cached_frozen_trial|contains|backend)\b"
    r"|optuna(\.\w+)*\._\w+|\"failed_trial\""
)


def test_optuna_internals_only_in_the_compat_module() -> None:
    compat = ROOT / "hpo" / "backends" / "optuna_compat.py"
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("hpo", "dashboards", "trainers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != compat
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _OPTUNA_PRIVATE.search(line.split("#")[0])
    ]
    assert found == []


# Trackers a user opts into (trainer.args.report_to) and timm (a timm model in the image
# trainer, the `timm` extra); each is imported only when chosen. IPython only in a Jupyter
# kernel (the live area of hpo/console.py), which brings it.
OPTIONAL = {"mlflow", "wandb", "timm", "IPython"}


def test_every_library_the_code_imports_is_a_declared_dependency() -> None:
    import sys
    from importlib.metadata import packages_distributions

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The extras a feature names in its one-line error (minilm, postgres, mysql, dashboard)
    # count: the code imports them only when that feature is used.
    features = [
        line
        for extra, lines in project["optional-dependencies"].items()
        if extra not in ("test", "bench")
        for line in lines
    ]
    declared = {
        re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in project["dependencies"] + features
    }
    distributions = packages_distributions()
    missing = {}
    for folder in ("hpo", "trainers", "dashboards"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in imports_of(path):
                top = name.split(".")[0]
                if not top or top in sys.stdlib_module_names or top in OPTIONAL:
                    continue
                if top in ABOVE_THE_CORE + ("hpo",):
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not in [project] dependencies or extras: {missing}"


# What a reader outside the core may import of hpo: the read-only study view, and the
# errors and config models its callers hold. Everything else (storage, budget, ranking,
# status, pareto, study, backends) is the view's to use.
READER_API = ("hpo.view", "hpo.errors", "hpo.config")
# The package's own names, as a top-level package and under hpo's namespace.
DASHBOARDS = ("dashboards", "hpo.dashboards")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_dashboards_read_hpo_only_through_the_view() -> None:
    folder = next(p for p in (ROOT / "dashboards", CORE / "dashboards") if p.is_dir())
    reached = {
        str(path.relative_to(ROOT)): sorted(
            name
            for name in imports_of(path)
            if name.split(".")[0] in ("hpo", *ABOVE_THE_CORE)
            and name != "hpo"  # the base of `from hpo.view import ...`, checked by name
            and not _within(name, DASHBOARDS + READER_API)
        )
        for path in sorted(folder.rglob("*.py"))
    }
    assert {path: names for path, names in reached.items() if names} == {}
    # ...and of the view, only what it makes public.
    import hpo.view

    private = sorted(
        name
        for path in folder.rglob("*.py")
        for name in imports_of(path)
        if name.startswith("hpo.view.") and name.removeprefix("hpo.view.") not in hpo.view.__all__
    )
    assert private == []


# Every `hpo:` attribute name is spelled in hpo/storage.py and imported from there. The
# one exception is Optuna's heartbeat protocol for journal files: a system attribute that
# only the compat module writes and reads, below hpo.storage in the import order.
_ATTRIBUTE_NAME = re.compile(r"hpo:[a-z_]+")
_NAMES_HOME = ROOT / "hpo" / "storage.py"
_HEARTBEAT = (ROOT / "hpo" / "backends" / "optuna_compat.py", "hpo:heartbeat")


def test_every_hpo_attribute_name_is_spelled_in_one_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for folder in ("hpo", "dashboards", "trainers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != _NAMES_HOME
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _ATTRIBUTE_NAME.fullmatch(node.value)
        and (path, node.value) != _HEARTBEAT
    ]
    assert found == []
