"""Hostile or broken YAML files: every reader fails fast, bounded, with one line and exit 2.

Study files (``hpo validate``), sweep files and the study files a sweep names all go
through :func:`hpo.source.read_source`, so each case is tried through both commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpo.errors import ConfigError
from hpo.source import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, read_source
from hpo.sweep import MAX_STUDIES
from tests.conftest import DATA, ROOT, run_hpo

# A YAML document 1 kB long that expands to 10**9 values: each level lists ten aliases
# of the level above ("billion laughs").
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{level}: &{level} [{', '.join([f'*{above}'] * 10)}]\n"
    for above, level in zip("abcdefgh", "bcdefghi", strict=True)
)

# Peak memory a refused file may cost; reading and refusing the bomb takes ~60 MB.
MEMORY_BOUND_KB = 1024 * 1024


def run_measured(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m hpo ARGS`` and its peak resident memory in kB.

    A wrapper process runs hpo, so RUSAGE_CHILDREN holds hpo's peak alone, not that of
    whatever else this test session started.
    """
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=100)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([r.returncode, r.stdout, r.stderr, peak]))\n"
    )
    result = run_wrapper(wrapper, [sys.executable, "-m", "hpo", *args], cwd=cwd)
    code, stdout, stderr, peak = json.loads(result.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), peak


def run_wrapper(code: str, argv: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    # Generous timeouts stop a hang (today's code runs a bomb for minutes), killing hpo
    # itself (the wrapper's timeout) and not only the wrapper; they are not timing tests.
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``hpo: error:`` line of a refused file (exit 2, nothing else on stderr)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpo: error: ")
    return lines[0].removeprefix("hpo: error: ")


def sweep_over(tmp_path: Path, study: str) -> Path:
    """A sweep file whose one study is ``study`` (a file name in ``tmp_path``)."""
    path = tmp_path / "sweep.yaml"
    path.write_text(f"studies: [{study}]\n", encoding="utf-8")
    return path


def ways_to_read(tmp_path: Path, path: Path) -> list[tuple[list[str], str]]:
    """The commands that read ``path`` as a study or sweep file, with the file they name."""
    return [
        (["validate", str(path)], str(path)),
        (["sweep", str(path), "--dry-run"], str(path)),
        (["sweep", str(sweep_over(tmp_path, path.name)), "--dry-run"], str(path)),
    ]


# --- bounded: alias bombs, deep nesting, huge files -------------------------------------


def test_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB, encoding="utf-8")
    for args, named in ways_to_read(tmp_path, bomb):
        result, peak_kb = run_measured(*args, cwd=tmp_path)
        # The alias that crosses the limit: the eighth *d on line 5 (lines 1-4 hold ~12k).
        assert one_error_line(result) == (
            f"{named}:5: alias *d expands the file beyond {MAX_NODES} YAML values; "
            "study files are small: remove the nested aliases"
        )
        assert peak_kb < MEMORY_BOUND_KB, f"{args}: peak {peak_kb} kB"


def test_aliases_that_stay_small_still_work(run_cli, tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: shared\nsampler: {type: random}\nbudget: {n_trials: 2}\n"
        "trainer: {ref: trainers.toy:train, args: &args {num_train_epochs: 1}}\n"
        "search_space:\n  x: &range {type: float, low: 0.0, high: 1.0}\n  y: *range\n",
        encoding="utf-8",
    )
    result = run_cli("validate", str(study), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nsearch_space: &space\n  x: [*space]\n", encoding="utf-8")
    for args, named in ways_to_read(tmp_path, path):
        result = run_hpo(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}:3: alias *space refers to a value that contains it; "
            "study files are small: remove the recursive alias"
        )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    for args, named in ways_to_read(tmp_path, path):
        result = run_hpo(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}:2: values nested deeper than {MAX_DEPTH} levels (column "
            f"{3 + MAX_DEPTH}); study files are small: flatten it"
        )


def test_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w", encoding="utf-8") as file:
        file.write("name: huge\n")
        file.write(("# padding\n" * 1000) * (MAX_FILE_BYTES // 10_000 + 1))
    size_mb = path.stat().st_size / 2**20
    for args, named in ways_to_read(tmp_path, path):
        result = run_hpo(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}: the file is over {MAX_FILE_BYTES // 2**20} MB ({size_mb:.1f} MB); "
            "study and sweep files are small: check that this is the right file"
        )


# --- broken: encodings, control characters, not a file -----------------------------------


def test_file_that_is_not_utf8_names_the_line_and_byte(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: ok\n# café\nseed: 1\n".encode("latin-1"))
    for args, named in ways_to_read(tmp_path, path):
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}:2: not UTF-8 text: byte 0xe9 at column 6 (file offset 14); save it as UTF-8"
        )


def test_control_character_names_the_line(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: ok\nseed: 1\x00\n")
    for args, named in ways_to_read(tmp_path, path):
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}:2: invalid YAML: control character #x0000 (column 8); remove it"
        )


def test_folder_given_as_the_file(run_cli, tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "a.yaml").write_text("name: a\n", encoding="utf-8")
    for args, named in ways_to_read(tmp_path, folder)[:2]:
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == (
            f"{named}: is a folder, not a file; name the YAML file in it"
        )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.yaml", "", "expected a mapping of study fields at the top level"),
        ("comments.yaml", "# nothing\n", "expected a mapping of study fields at the top level"),
        ("list.yaml", "- a\n- b\n", "expected a mapping of study fields at the top level"),
        ("text.yaml", "just text\n", "expected a mapping of study fields at the top level"),
        ("missing.yaml", None, "file not found; check the path"),
    ],
)
def test_other_broken_files_get_one_line(
    run_cli, name: str, text: str | None, message: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    for args, named in ways_to_read(tmp_path, path)[:2]:
        result = run_cli(*args, cwd=tmp_path, timeout=120)
        assert one_error_line(result) == f"{named}: {message}"


def test_nothing_is_written_for_a_refused_file(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    result = run_cli("run", str(path), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml"]


def test_too_many_values_without_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text("name: long\nx: [" + "1, " * MAX_NODES + "]\n", encoding="utf-8")
    result = run_hpo("validate", str(path), cwd=tmp_path, timeout=120)
    assert one_error_line(result) == (
        f"{path}:2: the file holds more than {MAX_NODES} YAML values; study files are small: "
        "check that this is the right file"
    )


def test_alias_bomb_in_a_set_value_is_refused(tmp_path: Path) -> None:
    study = DATA / "valid" / "grid.yaml"
    levels = ["&a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&{level} [{', '.join([f'*{above}'] * 10)}]"
        for above, level in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    bomb = "[" + ", ".join(levels) + "]"
    result, peak_kb = run_measured(
        "validate", str(study), "--set", f"trainer.args.x={bomb}", cwd=tmp_path
    )
    assert one_error_line(result) == (
        f"{study}: --set trainer.args.x: alias *d expands the value beyond {MAX_NODES} "
        "YAML values; study files are small: remove the nested aliases"
    )
    assert peak_kb < MEMORY_BOUND_KB, f"peak {peak_kb} kB"


def test_readme_states_the_limits_in_force() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"study or sweep file over {MAX_FILE_BYTES // 2**20} MB" in readme
    assert f"values nested beyond {MAX_DEPTH} levels" in readme
    assert f"value beyond {MAX_NODES:,} values" in readme
    assert f"A sweep of more than {MAX_STUDIES} studies" in readme


def test_utf8_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "minimal.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "valid" / "minimal.yaml").read_bytes())
    assert read_source(path).data["name"] == "minimal"


def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.yaml"
    path.write_text("name: locked\n", encoding="utf-8")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)  # root reads any file, whatever its mode
    with pytest.raises(ConfigError) as info:
        read_source(path)
    assert str(info.value) == f"{path}: cannot read the file: Permission denied"
