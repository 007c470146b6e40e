"""Run platform services as child processes (`searchctl up`, `searchctl bench`).

:func:`wait_serving` waits for a child's gRPC health check to report SERVING, watching the
children it was given; :func:`stop_processes` stops children in parallel within a bounded
time (SIGTERM to all at once, then SIGKILL to what is left), saying what it still waits for.

:class:`ServiceProcs` (for benchmarks) starts ``python -m services.cli serve NAME`` on free
loopback ports with its Qdrant path and the downstream addresses set through the
environment, and stops every process it started on exit (and, on Linux, the kernel stops them
when this process dies: services/common/child_process.py). Each service logs to
``<workdir>/<name>.log``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import child_process

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("retrieval", "reranker", "gateway")


#: Linux's default ephemeral range is 32768-60999, the BSDs' and macOS's 49152-65535.
_EPHEMERAL_DEFAULT = (32768, 65535)
_LOWEST = 10000  # below: the well-known and common service ports
_handed_out: set[int] = set()
_random = random.Random()  # its own generator: a test seeding the global one must not make two runs pick alike


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes the local ports of outgoing connections (and of bind(0)) from."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_port(span: tuple[int, int] | None = None) -> int:
    """A loopback TCP port nothing is bound to now, for a child process to listen on later.

    Taken outside the ephemeral range (``span`` defaults to 10000 up to the range's start) and
    never handed out twice by one process. A port from bind(0), closed for a child to bind later,
    is one the kernel soon gives out again: 20,000 bind(0)s in a row here gave 10,655 distinct
    ports, and 6 in a row repeated one 0.1% of the time. Two picks made before either child binds
    can then be equal, or another process's bind(0) can take the port meanwhile, and a child fails
    with EADDRINUSE (it happened: a gateway's metrics port in tests/e2e/test_up.py). Outgoing
    connections take their local ports from that range too (on Linux the other parity).
    """
    if span is None:
        start = ephemeral_ports()[0]
        if start - _LOWEST < 1000:  # the ephemeral range covers nearly every port: the kernel's pick is as good
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]
        span = (_LOWEST, start - 1)
    low, high = span
    for _ in range(200):
        port = _random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {low}-{high}")


def wait_serving(
    address: str,
    timeout: float = 180.0,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    *,
    watch: Mapping[str, subprocess.Popen] | None = None,
    stop: threading.Event | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> bool:
    """Block until ``address`` reports SERVING (True) or ``stop`` is set (False); over TLS
    when ``credentials`` are given. The one health wait of `searchctl up`, bench and the tests.

    Raises RuntimeError when ``proc`` or one of the ``watch`` children exits (with the tail of
    ``log``), TimeoutError when ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"server at {address} exited with code {proc.returncode}\n{tail}")
            for name, child in (watch or {}).items():
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {child.returncode} during start-up (see its log lines above)")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout:.0f} s")


def stop_processes(
    procs: Mapping[str, subprocess.Popen],
    timeout: float,
    *,
    kill_now: Callable[[], bool] = lambda: False,
    report: Callable[[str], None] | None = None,
    report_every: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, str]:
    """Stop ``procs`` in parallel: SIGTERM to every live one at once, then wait for all of them
    together; whatever still runs after ``timeout`` seconds, or as soon as ``kill_now()`` is
    true, gets SIGKILL. Every ``report_every`` seconds ``report`` hears what is still awaited.
    ``clock`` tells the seconds (the tests drive it).

    Returns how each ended: ``"exit N"``, ``"signal N"``, or ``"killed"`` (by this function).
    """
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    started = clock()
    next_report = started + report_every
    killed: set[str] = set()
    while True:
        waiting = [name for name, proc in procs.items() if proc.poll() is None]
        if not waiting:
            break
        now = clock()
        if kill_now() or now - started >= timeout:
            for name in waiting:
                procs[name].kill()
                killed.add(name)
            for name in waiting:
                procs[name].wait()
            break
        if report is not None and now >= next_report:
            left = ", ".join(f"{name} (pid {procs[name].pid})" for name in waiting)
            report(f"still waiting for {left}; {timeout - (now - started):.0f} s before they are killed")
            next_report = now + report_every
        time.sleep(0.05)
    outcome = {}
    for name, proc in procs.items():
        code = proc.returncode
        outcome[name] = "killed" if name in killed else f"signal {-code}" if code < 0 else f"exit {code}"
    return outcome


class ServiceProcs:
    """Platform services as child processes; use as a context manager."""

    def __init__(self, workdir: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.base_env = dict(os.environ if env is None else env)
        self.ports = {name: free_port() for name in SERVICES}
        self.metrics_ports = {name: free_port() for name in SERVICES}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.qdrant_path = self.workdir / "qdrant"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def env(self, name: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        prefix = name.upper()
        env.update(
            {
                f"{prefix}_HOST": "127.0.0.1",
                f"{prefix}_PORT": str(self.ports[name]),
                f"{prefix}_METRICS_PORT": str(self.metrics_ports[name]),
                "QDRANT_PATH": str(self.qdrant_path),
                "RETRIEVAL_ADDR": self.address("retrieval"),
                "RERANKER_ADDR": self.address("reranker"),
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": env.get("LOG_LEVEL", "WARNING"),
            }
        )
        env.update(overrides or {})
        return env

    def start(self, name: str, overrides: Mapping[str, str] | None = None, wait: bool = True) -> subprocess.Popen:
        """Start ``name`` (stopping a running one first) with ``overrides`` on top of its env."""
        self.stop(name)
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            proc = child_process.start(  # stopped with this process, even when it is killed (Linux)
                [sys.executable, "-m", "services.cli", "serve", name],
                env=self.env(name, overrides),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.procs[name] = proc
        if wait:
            self.wait(name)
        return proc

    def wait(self, name: str, timeout: float = 180.0) -> None:
        wait_serving(self.address(name), timeout, self.procs[name], self.logs.get(name))

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait()

    def stop_all(self, timeout: float = 30.0) -> None:
        procs, self.procs = self.procs, {}
        stop_processes(procs, timeout)

    def __enter__(self) -> ServiceProcs:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
