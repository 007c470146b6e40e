"""The walls between the parts (docs/ARCHITECTURE.md, "Import rules"), checked by reading every
module's imports (at any depth, including imports inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICE_PACKAGES = ("gateway", "retrieval", "reranker")
GRPC_ROOTS = {"grpc", "grpc_health", "grpc_status", "grpc_reflection"}

#: The transport layer: the only modules outside the CLI that may import grpc. Everything else
#: (stores, backends, models, batching, validation, errors, fusion...) is domain code and
#: raises services.common.errors; services/common/status.py maps those to status codes.
TRANSPORT = {
    "common/interceptors.py",  # the scaffold every server interceptor shares
    "common/metrics.py",  # server interceptor (access log, RPC metrics)
    "common/reflection.py",  # the server reflection service
    "common/security.py",  # TLS credentials, token and API-key interceptors
    "common/server.py",  # the one server bootstrap
    "common/status.py",  # domain error -> status code
    "common/tracing.py",  # tracing interceptors, trace context on calls
    "gateway/clients.py",
    "gateway/collections.py",
    "gateway/guard.py",  # the caller interceptor (the rules: callers.py, access.py, admission.py)
    "gateway/pipeline.py",
    "gateway/resilience.py",
    "gateway/server.py",
    "retrieval/server.py",
    "retrieval/conditional_retrieve.py",
    "reranker/server.py",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((SERVICES_DIR / package).rglob("*.py"))


@pytest.mark.parametrize("package", SERVICE_PACKAGES)
def test_a_service_imports_only_itself_and_common(package):
    others = {f"services.{p}" for p in (*SERVICE_PACKAGES, "cli") if p != package}
    wrong = [
        f"{path.relative_to(SERVICES_DIR)} imports {name}"
        for path in _modules(package)
        for name in sorted(_imports(path))
        if any(name == o or name.startswith(o + ".") for o in others)
    ]
    assert not wrong, f"a service imports another service or the CLI (move the shared piece to services/common): {wrong}"


def test_common_imports_no_service_and_no_cli():
    wrong = [
        f"{path.relative_to(SERVICES_DIR)} imports {name}"
        for path in _modules("common")
        for name in sorted(_imports(path))
        if any(name == f"services.{p}" or name.startswith(f"services.{p}.") for p in (*SERVICE_PACKAGES, "cli"))
    ]
    assert not wrong, wrong


def test_only_the_transport_layer_imports_grpc():
    wrong = [
        str(path.relative_to(SERVICES_DIR))
        for package in ("common", *SERVICE_PACKAGES)
        for path in _modules(package)
        if str(path.relative_to(SERVICES_DIR)) not in TRANSPORT
        and any(name.split(".")[0] in GRPC_ROOTS for name in _imports(path))
    ]
    assert not wrong, (
        f"domain modules import grpc: {wrong}. Raise services.common.errors instead (mapped to a status "
        "at the edge, services/common/status.py), or add a transport module to TRANSPORT"
    )


def test_the_transport_list_names_existing_modules():
    assert all((SERVICES_DIR / name).is_file() for name in TRANSPORT)


@pytest.mark.parametrize("library", ["client.py", "ingest_stream.py", "ingest_input.py", "store_lock.py"])
def test_the_cli_libraries_import_no_command(library):
    """The CLI's libraries sit below its commands (`*_cmd.py`, `up.py`, `evaluate.py`...): a command
    imports them, never the other way round, so there is no circle to break with lazy imports."""
    below = {"services.cli.client", "services.cli.ingest_stream", "services.cli.ingest_input", "services.cli.beir",
             "services.cli.store_lock"}
    wrong = sorted(n for n in _imports(SERVICES_DIR / "cli" / library) if n.startswith("services.cli") and n not in below)
    assert not wrong, f"services/cli/{library} imports {wrong}"
