"""The map of the tests: every folder has its marker (tests/conftest.py), every marker is
registered in pyproject.toml (run with --strict-markers) and named in docs/ARCHITECTURE.md,
`make test-fast` selects by registered markers only, and a test file's name finds it: no name
is used in three folders."""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tests.conftest import FOLDER_MARKERS

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
PYTEST = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
REGISTERED = {m.split(":")[0].strip() for m in PYTEST["markers"]}


def folders_with_tests() -> list[str]:
    return sorted(p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py")))


def test_every_test_folder_has_a_registered_marker():
    unmapped = [f for f in folders_with_tests() if f not in FOLDER_MARKERS]
    assert not unmapped, f"tests/conftest.py FOLDER_MARKERS has no marker for the folders {unmapped}: add one each"
    unregistered = sorted(set(FOLDER_MARKERS.values()) - REGISTERED)
    assert not unregistered, f"markers {unregistered} are applied but not registered in pyproject.toml [tool.pytest.ini_options] markers"
    assert "--strict-markers" in PYTEST["addopts"]
    stale = sorted(set(FOLDER_MARKERS) - set(folders_with_tests()))
    assert not stale, f"FOLDER_MARKERS names folders with no tests: {stale}"


def test_markers_used_in_test_modules_are_registered():
    builtin = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "asyncio", "timeout"}
    used = collections.defaultdict(set)
    for path in TESTS.rglob("*.py"):
        for name in re.findall(r"pytest\.mark\.(\w+)", path.read_text()):
            used[name].add(path.relative_to(REPO).as_posix())
    unknown = {name: sorted(paths) for name, paths in used.items() if name not in REGISTERED | builtin}
    assert not unknown, f"markers not registered in pyproject.toml: {unknown}"


def test_make_test_fast_leaves_out_registered_slow_kinds():
    makefile = (REPO / "Makefile").read_text()
    (expression,) = re.findall(r"^FAST_MARKERS := (.+)$", makefile, re.MULTILINE)
    named = set(re.findall(r"\bnot (\w+)", expression))
    assert named and named <= REGISTERED, (expression, REGISTERED)
    assert {"integration", "e2e", "resilience", "quality"} <= named
    assert '-m "$(FAST_MARKERS)"' in makefile


def test_each_folder_and_marker_is_in_the_architecture_map():
    row = next(line for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines() if line.startswith("| `tests/`"))
    missing = [f"`{folder}/` ({marker})" for folder, marker in FOLDER_MARKERS.items()
               if f"`{folder}/`" not in row or f"`{marker}`" not in row]
    assert not missing, f"docs/ARCHITECTURE.md's `tests/` row does not name {missing}"


def test_no_test_file_name_is_used_in_three_folders():
    folders = collections.defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        folders[path.name].append(path.parent.relative_to(REPO).as_posix())
    crowded = {name: sorted(where) for name, where in folders.items() if len(where) >= 3}
    assert not crowded, f"test files sharing a name in three or more folders (name them for the module they test): {crowded}"
