"""docs/ARCHITECTURE.md's map of the tree (its Layout table) against the tree: every path and
module a row names exists, and every package under services/ has a row naming each of its
modules. A failure says which row to add or which name to add or remove."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ARCHITECTURE.md"
#: A file name a row may cite, checked in the row's folder.
FILE_NAME = re.compile(r"^[\w.-]+\.(?:py|proto)$|^Dockerfile(?:\.\w+)?$")


def layout_rows() -> dict[str, tuple[list[str], str]]:
    """Each row's first path -> (every path of its first cell, the row's text)."""
    text = DOC.read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[list[str], str]] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 2:
            continue
        paths = re.findall(r"`([^`]+)`", cells[0])
        rows[paths[0]] = (paths, line)
    assert rows, f"{DOC}: no Layout table found under '## Layout'"
    return rows


def packages() -> list[Path]:
    """Every folder under services/ that holds Python modules."""
    return sorted({p.parent for p in (REPO / "services").rglob("*.py") if "__pycache__" not in p.parts} - {REPO / "services"})


def modules(package: Path) -> list[str]:
    return sorted(p.name for p in package.glob("*.py") if not (p.name.startswith("__") and p.name != "__init__.py"))


def _rel(path: Path) -> str:
    return f"{path.relative_to(REPO).as_posix()}/"


def test_every_path_a_row_names_exists():
    missing = []
    for key, (paths, line) in layout_rows().items():
        for path in paths:
            if not (REPO / path).exists():
                missing.append(f"row `{key}`: `{path}` does not exist")
        for name in re.findall(r"`([^`]+)`", line.split(" | ", 1)[1]):
            if "/" in name and not name.endswith("/"):
                where = REPO / name  # a path from the repository's root
            elif name.endswith("/") or FILE_NAME.match(name):
                where = REPO / key / name  # a file or folder of the row's folder
            else:
                continue  # a setting, a command, a symbol
            if not where.exists():
                missing.append(f"row `{key}` names `{name}`, but {where.relative_to(REPO)} does not exist: rename or drop it")
    assert not missing, "docs/ARCHITECTURE.md Layout:\n" + "\n".join(missing)


def test_every_package_under_services_has_a_row_naming_each_module():
    rows = layout_rows()
    problems = []
    for package in packages():
        key = _rel(package)
        names = [n for n in modules(package) if n != "__init__.py"]
        if key not in rows:
            problems.append(f"no row for `{key}`: add a row whose first cell is `{key}`, naming "
                            + ", ".join(f"`{n}`" for n in names) + " with what each does")
            continue
        row = rows[key][1]
        for name in names:
            if f"`{name}`" not in row:
                problems.append(f"row `{key}` does not name `{name}` ({key}{name} exists): add it with what it does")
    assert not problems, "docs/ARCHITECTURE.md Layout:\n" + "\n".join(problems)


def test_every_test_folder_is_in_the_tests_row():
    (_, row) = layout_rows()["tests/"]
    folders = sorted(p.name for p in (REPO / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py")))
    missing = [f"row `tests/` does not name `{f}/`: add it with what its tests do" for f in folders if f"`{f}/`" not in row]
    assert not missing, "docs/ARCHITECTURE.md Layout:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_module(tmp_path, monkeypatch):
    """The map test fails, naming the row, when a module is added without its row entry."""
    import tests.unit.test_architecture_map as this

    fake = tmp_path / "services" / "gateway"
    fake.mkdir(parents=True)
    (fake / "pipeline.py").write_text("")
    (fake / "brand_new.py").write_text("")
    monkeypatch.setattr(this, "REPO", tmp_path)
    try:
        this.test_every_package_under_services_has_a_row_naming_each_module()
    except AssertionError as exc:
        assert "row `services/gateway/` does not name `brand_new.py`" in str(exc)
    else:  # pragma: no cover - the check is broken
        raise AssertionError("a module missing from its row went unnoticed")
