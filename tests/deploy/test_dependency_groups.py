"""Each service's dependency group (pyproject.toml) covers what the service imports (each image
installs its own group: tests/deploy/test_dockerfiles.py).

The imports are read, not run: every module of the service (all its imports, at the top or in a
function), the services/common modules and generated stubs they reach, and `searchctl serve`'s
path into them (services/cli/main.py; the three config modules its parser loads, imported at
module level only). A third-party module is covered when a distribution that provides it is
required by the group, directly or through the requirements of what the group installs.
Imports guarded by ``except ImportError`` (optional, or a fallback such as tomli) are not required.
This test imports nothing of the project.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 needs tomli to read pyproject.toml")

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]
SERVE_PATH = ["services.cli.main", "services.gateway.config", "services.retrieval.config", "services.reranker.config"]
#: group -> (packages and modules whose every import counts (services/common: the modules the
#: others reach), but not those of the second; modules reached only at import time)
GROUPS = {
    "gateway": (["services.gateway", "services.common", "services.cli.main"], [], SERVE_PATH),
    "retrieval": (["services.retrieval", "services.common", "services.cli.main"], [], SERVE_PATH),
    "reranker": (["services.reranker", "services.common", "services.cli.main"], [], SERVE_PATH),
    "cli": (["services"], ["services.cli.bench"], []),
    "bench": (["services"], [], []),
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(spec: str) -> tuple[str, list[str], str]:
    """(name, extras, marker) of a requirement string."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?([^;]*)(?:;(.*))?$", spec)
    assert m, spec
    extras = [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    return normalise(m.group(1)), extras, (m.group(4) or "").strip()


def declared(group: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The distributions a group names: the project's own and its extras', self-references followed."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert group in extras, f"pyproject.toml has no optional-dependencies group {group!r}"
    names = {requirement(r)[0] for r in PYPROJECT["project"]["dependencies"]}
    for spec in extras[group]:
        name, sub, _ = requirement(spec)
        if name == normalise(PROJECT):
            for extra in sub:
                if extra not in seen:
                    names |= declared(extra, seen | {group})
        else:
            names.add(name)
    return names


@lru_cache(maxsize=None)
def installed_requires(name: str) -> frozenset[str]:
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return frozenset()
    return frozenset(requirement(r)[0] for r in requires if "extra" not in requirement(r)[2])


def closure(names: set[str]) -> set[str]:
    todo, out = list(names), set()
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(installed_requires(name))
    return out


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    for root in (REPO, REPO / "gen"):
        path = root.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def module_name(path: Path) -> str:
    root = REPO / "gen" if path.is_relative_to(REPO / "gen") else REPO
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _guarded(handlers: list[ast.ExceptHandler]) -> bool:
    return any(h.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b", ast.unparse(h.type)) for h in handlers)


def imports(path: Path, every: bool) -> set[str]:
    """Absolute names ``path`` imports: ``every`` import, or only those run when it is imported;
    never the ones guarded by ``except ImportError`` nor under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not every:
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Try) and _guarded(node.handlers):
                visit(node.finalbody)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])
                elif isinstance(child, ast.excepthandler):
                    visit(child.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return found


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def third_party_imports(every_import_of: list[str], but: list[str], import_time: list[str]) -> dict[str, set[str]]:
    """Top-level third-party module -> the project modules that import it."""
    def counts_every(name: str) -> bool:
        return _under(name, every_import_of) and not _under(name, but)

    # services/common is shared: only the modules the group's own modules reach count.
    roots = [p for prefix in every_import_of if prefix != "services.common"
             for p in (REPO / Path(*prefix.split("."))).rglob("*.py") if not _under(module_name(p), but)]
    roots += [module_file(p) for p in every_import_of if module_file(p) and module_file(p).suffix == ".py"]
    roots += [module_file(name) for name in import_time]
    todo = [p for p in roots if p is not None]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen or "__pycache__" in path.parts:
            continue
        seen.add(path)
        me = module_name(path)
        for name in imports(path, counts_every(me)):
            top = name.split(".")[0]
            if top in ("services", "search"):
                parts = name.split(".")
                todo.extend(f for f in (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)) if f)
            elif top != "__future__" and top not in sys.stdlib_module_names:
                found.setdefault(top, set()).add(me)
    return found


@lru_cache(maxsize=None)
def providers() -> dict[str, set[str]]:
    return {module: {normalise(d) for d in dists} for module, dists in metadata.packages_distributions().items()}


@pytest.mark.parametrize("group", GROUPS)
def test_the_group_covers_what_its_modules_import(group):
    every, but, import_time = GROUPS[group]
    names = declared(group)
    available = closure(names)
    uncovered = []
    for module, importers in sorted(third_party_imports(every, but, import_time).items()):
        dists = providers().get(module, {normalise(module)})  # not installed here: its own name
        if not dists & available:
            uncovered.append(f"{module} (imported by {', '.join(sorted(importers)[:3])}; provided by {sorted(dists)})")
    assert not uncovered, f"pyproject.toml group [{group}] does not install: " + "; ".join(uncovered)


def test_the_gateway_group_installs_no_models_engine_or_evaluation():
    names = closure(declared("gateway"))
    for heavy in ("onnxruntime-gpu", "onnxruntime", "qdrant-edge-py", "qdrant-client", "pytrec-eval-terrier", "numpy"):
        assert heavy not in names, f"the gateway image would carry {heavy}"


def test_the_reranker_group_installs_no_store():
    names = closure(declared("reranker"))
    assert not {"qdrant-edge-py", "qdrant-client", "pytrec-eval-terrier"} & names, names


def test_dev_installs_every_group():
    everything = closure(declared("dev"))
    for group in PYPROJECT["project"]["optional-dependencies"]:
        missing = declared(group) - everything
        assert not missing, f"`make install` (.[dev]) misses group {group}: {sorted(missing)}"


def test_a_missing_dependency_is_named(monkeypatch):
    """The check fails, naming the module and who imports it, when a group loses a requirement."""
    import copy

    trimmed = copy.deepcopy(PYPROJECT)
    trimmed["project"]["optional-dependencies"]["gateway"] = [
        r for r in trimmed["project"]["optional-dependencies"]["gateway"] if not r.startswith("tenacity")
    ]
    monkeypatch.setitem(globals(), "PYPROJECT", trimmed)
    with pytest.raises(AssertionError, match=r"\[gateway\] does not install: tenacity \(imported by services\.gateway\.resilience"):
        test_the_group_covers_what_its_modules_import("gateway")


#: Run in a child whose imports of ``blocked`` fail as if they were not installed.
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError, as when not installed
sys.argv = ["searchctl", *sys.argv[2:]]
import importlib
importlib.import_module("services.gateway.server")
from services.cli.main import main
sys.exit(main())
"""


@pytest.mark.parametrize("argv", [["serve", "gateway", "--help"], ["--help"], ["models", "fetch", "--help"]])
def test_searchctl_runs_in_the_gateway_image_without_the_other_groups(argv):
    """What the gateway's group leaves out (the encoders, the stores, evaluation, the CLI's extras)
    is not needed to serve the gateway, nor to list and run the commands that need none of it."""
    import subprocess

    gateway = closure(declared("gateway"))
    others = set()
    for group in ("retrieval", "reranker", "cli", "bench"):
        others |= closure(declared(group)) - gateway
    blocked = sorted(m for m, dists in providers().items() if dists & others and not dists & gateway and m.isidentifier())
    assert {"numpy", "onnxruntime", "qdrant_edge", "pytrec_eval", "tqdm"} <= set(blocked)
    proc = subprocess.run([sys.executable, "-c", WITHOUT, ",".join(blocked), *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if argv == ["--help"]:
        assert "Not installed here:" in proc.stdout and "evaluate (needs" in proc.stdout, proc.stdout
        assert "models" in proc.stdout and "serve" in proc.stdout
