"""`searchctl up`'s supervisor: a service that exits is restarted with backoff; the others keep serving.

While one is down the platform degrades as in production: without the reranker, Search answers
with the retrieval ranking marked ``degraded``; without retrieval, Search answers UNAVAILABLE
before its deadline. Each exit, restart and return is said on the terminal. The backoff doubles
from ``initial_s`` up to ``max_s`` and starts again once the service has served ``stable_s``;
``max_restarts`` failed restarts in a row (a service that cannot start) stop everything.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class _State:
    failures: int = 0  # exits since the service last served `stable_s`
    next_start: float | None = None  # when to restart it (None: running)
    started: float = 0.0
    serving_since: float | None = None
    announced: bool = True


@dataclass
class Supervisor:
    procs: dict[str, subprocess.Popen]
    argv: Mapping[str, Sequence[str]]
    addresses: Mapping[str, str]
    spawn: Callable[[Sequence[str]], subprocess.Popen]
    say: Callable[[str], None]
    initial_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0
    max_restarts: int = 10
    clock: Callable[[], float] = time.monotonic
    states: dict[str, _State] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = self.clock()
        for name in self.procs:
            self.states[name] = _State(started=now, serving_since=now)

    def watch(self, stop: threading.Event, every_s: float = 0.5) -> str | None:
        """Supervise until ``stop`` is set (None) or a service cannot be brought back (the reason)."""
        while not stop.wait(every_s):
            reason = self.step()
            if reason:
                return reason
        return None

    def step(self) -> str | None:
        now = self.clock()
        for name, state in self.states.items():
            proc = self.procs[name]
            if state.next_start is None and proc.poll() is not None:
                if state.serving_since is not None and now - state.serving_since >= self.stable_s:
                    state.failures = 0
                state.failures += 1
                if state.failures > self.max_restarts:
                    return f"{name} exited {state.failures} times in a row (last exit {proc.returncode}); giving up"
                delay = min(self.max_s, self.initial_s * 2 ** (state.failures - 1))
                state.next_start, state.serving_since = now + delay, None
                self.say(f"searchctl up: {name} (pid {proc.pid}) exited with {_exit(proc.returncode)}; "
                         f"restarting it in {delay:.0f} s (restart {state.failures}); the other services keep serving")
            elif state.next_start is not None and now >= state.next_start:
                self.procs[name] = self.spawn(self.argv[name])
                state.next_start, state.started, state.announced = None, now, False
                self.say(f"searchctl up: {name} restarted (pid {self.procs[name].pid})")
            elif state.next_start is None and not state.announced and _serving(self.addresses[name]):
                state.announced, state.serving_since = True, now
                self.say(f"searchctl up: {name} is serving again (pid {proc.pid}, {now - state.started:.1f} s after its restart)")
        return None


def _exit(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else f"code {code}"


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
