"""Shared fixtures: real services started as processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
SERVICES = ("retrieval", "reranker", "gateway")


def models_dir() -> Path:
    return Path(os.environ.get("SEARCH_MODELS_DIR", Path.home() / ".cache" / "search-platform" / "models"))


def require_models() -> None:
    for name in ("bge-small-en", "ms-marco-MiniLM-L-12-v2"):
        if not (models_dir() / name / "model.onnx").exists():
            pytest.skip(f"model {name} not in {models_dir()}; run `searchctl models fetch` (make test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server at {address} exited with {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout} s")


@dataclass
class Stack:
    """Three real service processes on loopback; tests may stop and restart them."""

    tmp: Path
    env_overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
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
        env = dict(os.environ)
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", name],
            env=self.env(name),
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.procs[name] = proc
        if wait:
            wait_serving(self.address(name), proc=proc)
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name, wait=False)
        for name in SERVICES:
            wait_serving(self.address(name), proc=self.procs[name])

    def stop_all(self) -> None:
        for name in reversed(SERVICES):
            self.stop(name)

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """One stack for the session's read-mostly tests (each test uses its own collection)."""
    require_models()
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.start_all()
    except Exception:
        for name in SERVICES:
            print(f"--- {name} log ---\n{s.log_text(name)[-3000:]}")
        s.stop_all()
        raise
    yield s
    s.stop_all()


@pytest.fixture
def fresh_stack(tmp_path) -> Stack:
    """A stack of its own, for tests that stop, kill or restart services."""
    require_models()
    s = Stack(tmp_path)
    yield s
    s.stop_all()
