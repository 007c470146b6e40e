"""Shared fixtures: real services started as processes on free loopback ports.

Every process a test starts goes through :mod:`tests.processes`: its own process group, its
output in a log file, killed (with its group) when it outlives its test or the session. A
failing test's report carries the tail of every live child's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from services.cli.procs import free_port, wait_serving
from tests import processes

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
SERVICES = ("retrieval", "reranker", "gateway")
#: Security settings a developer's shell may export; a test that wants one sets it itself
#: (tests call retrieval and reranker directly, which INTERNAL_TOKEN would refuse).
SECURITY_ENV = ("INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE", "GATEWAY_API_KEYS", "GATEWAY_API_KEYS_FILE", "SEARCHCTL_API_KEY")


def models_dir() -> Path:
    return Path(os.environ.get("SEARCH_MODELS_DIR", Path.home() / ".cache" / "search-platform" / "models"))


def require_models() -> None:
    for name in ("bge-small-en", "ms-marco-MiniLM-L-12-v2"):
        if not (models_dir() / name / "model.onnx").exists():
            pytest.skip(f"model {name} not in {models_dir()}; run `searchctl models fetch` (make test does)")


@dataclass
class Stack:
    """Three real service processes on loopback; tests may stop and restart them."""

    tmp: Path
    env_overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    children: dict[str, processes.Child] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SERVICES:
            self.ports.setdefault(name, free_port())
            self.metrics_ports.setdefault(name, free_port())

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def gateway(self) -> str:
        return self.address("gateway")

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV and not k.startswith("TLS_")}
        prefix = name.upper()
        env.update(
            {
                f"{prefix}_HOST": "127.0.0.1",
                f"{prefix}_PORT": str(self.ports[name]),
                f"{prefix}_METRICS_PORT": str(self.metrics_ports[name]),
                "QDRANT_PATH": str(self.tmp / "qdrant"),
                "RETRIEVAL_ADDR": self.address("retrieval"),
                "RERANKER_ADDR": self.address("reranker"),
                "ORT_INTRA_OP_THREADS": env.get("ORT_INTRA_OP_THREADS", "2"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_overrides.get(name, {}))
        return env

    def start(self, name: str, wait: bool = True) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        child = processes.spawn(name, [sys.executable, "-m", "services.cli", "serve", name], log, env=self.env(name))
        self.children[name] = child
        self.procs[name] = child.proc
        if wait:
            wait_serving(self.address(name), proc=child.proc)
        return child.proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig``, wait up to ``timeout`` for the exit code; past it, kill the process group."""
        child = self.children.get(name)
        if child is None:
            return 0
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        child.kill_group()  # reaps it; anything it left behind goes too
        return child.proc.returncode

    def start_all(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        """Start every service and wait until each is SERVING (checked over TLS with
        ``credentials``); on failure print each one's log tail, stop them all and re-raise."""
        try:
            for name in SERVICES:
                self.start(name, wait=False)
            for name in SERVICES:
                wait_serving(self.address(name), proc=self.procs[name], credentials=credentials)
        except Exception:
            for name in SERVICES:
                print(f"--- {name} log ---\n{self.log_text(name)[-3000:]}")
            self.stop_all()
            raise

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM to every service at once, then wait for them together (at most ``timeout``)."""
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in reversed(SERVICES):
            self.stop(name, timeout=max(0.0, deadline - time.monotonic()))

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""


#: The marker every test of a folder carries (registered in pyproject.toml, selected with
#: `pytest -m`). The slow kinds (integration, e2e, resilience, quality) are what `make test-fast`
#: leaves out; a module elsewhere that starts servers or external binaries marks itself with
#: the kind (tests/observability does).
FOLDER_MARKERS = {
    "unit": "unit",
    "store": "store",
    "integration": "integration",
    "e2e": "e2e",
    "resilience": "resilience",
    "deploy": "deploy",
    "observability": "observability",
    "quality": "quality",
}
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path).resolve()
        marker = FOLDER_MARKERS.get(path.relative_to(TESTS).parts[0]) if path.is_relative_to(TESTS) else None
        if marker is not None:
            item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report shows the end of every live child's log (services it started)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for child in processes.LIVE:
            report.sections.append((f"{child.name} (pid {child.pid}) log, last 3000 characters", child.tail(3000)))


def pytest_sessionfinish(session, exitstatus):
    processes.kill_all()  # nothing a test started outlives the session, whatever failed


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """One stack for the session's read-mostly tests (each test uses its own collection)."""
    require_models()
    s = Stack(tmp_path_factory.mktemp("stack"))
    s.start_all()
    yield s
    s.stop_all()


@pytest.fixture
def fresh_stack(tmp_path) -> Stack:
    """A stack of its own, for tests that stop, kill or restart services."""
    require_models()
    s = Stack(tmp_path)
    yield s
    s.stop_all()
