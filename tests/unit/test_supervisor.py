"""searchctl up's supervisor: restart with doubling backoff, say so, give up on a service that keeps failing."""

from __future__ import annotations

import itertools

from services.cli import supervisor as sup
from services.cli.supervisor import Supervisor


class FakeProc:
    pids = itertools.count(100)

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode = None

    def poll(self):
        return self.returncode


def make(monkeypatch, serving=True, **kw):
    now = [0.0]
    lines: list[str] = []
    monkeypatch.setattr(sup, "_serving", lambda address: serving)
    s = Supervisor({"reranker": FakeProc(), "gateway": FakeProc()}, {"reranker": ["r"], "gateway": ["g"]},
                   {"reranker": "x:1", "gateway": "x:2"}, spawn=lambda argv: FakeProc(), say=lines.append,
                   clock=lambda: now[0], **kw)
    return s, now, lines


def test_a_dead_service_comes_back_with_doubling_backoff(monkeypatch):
    s, now, lines = make(monkeypatch, initial_s=1, max_s=4, stable_s=60)
    first = s.procs["reranker"]
    gateway = s.procs["gateway"]
    delays = []
    for _ in range(4):
        s.procs["reranker"].returncode = -9
        assert s.step() is None
        delays.append(s.states["reranker"].next_start - now[0])
        now[0] = s.states["reranker"].next_start
        s.step()  # restarted
        s.step()  # serving again
    assert delays == [1, 2, 4, 4]
    assert s.procs["reranker"] is not first and s.procs["gateway"] is gateway  # the others untouched
    assert "reranker (pid %d) exited with signal 9; restarting it in 1 s (restart 1)" % first.pid in lines[0]
    assert any("reranker restarted" in line for line in lines)
    assert any("reranker is serving again" in line for line in lines)
    # After serving long enough, the backoff starts again from the beginning.
    now[0] += 61
    s.procs["reranker"].returncode = 1
    s.step()
    assert s.states["reranker"].next_start - now[0] == 1


def test_a_service_that_keeps_failing_stops_everything(monkeypatch):
    s, now, lines = make(monkeypatch, serving=False, max_restarts=2, initial_s=1)
    reasons = []
    for _ in range(4):
        s.procs["reranker"].returncode = 3
        reason = s.step()
        if reason:
            reasons.append(reason)
            break
        now[0] = s.states["reranker"].next_start
        s.step()
    assert reasons and "reranker exited 3 times in a row" in reasons[0]
