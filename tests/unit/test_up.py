"""`searchctl up`'s stop machinery without the services: signal handlers, parallel bounded stop."""

from __future__ import annotations

import os
import signal
import sys
import time

from services.cli.main import take_sigint
from services.cli.procs import stop_processes
from services.cli.up import LOOPBACK, StopSignals, _client_key, _ready
from tests.processes import running, spawn

#: A child that prints "ready" once its SIGTERM disposition is set (ignored, or the default).
CHILD = "import signal, sys, time; {setup}; print('ready', flush=True); time.sleep(120)"


def child(tmp_path, name: str, ignore_sigterm: bool):
    setup = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else "pass"
    c = spawn(name, [sys.executable, "-c", CHILD.format(setup=setup)], tmp_path / f"{name}.log")
    c.wait_for_output("ready", timeout=30)
    return c


class SteppedClock:
    """A clock that stands still until ``moving()`` has been seen true, then steps ``step``
    seconds per reading, from the next reading on: what happens at each reading is decided by
    the order of events, not by how long they took."""

    def __init__(self, step: float, moving=lambda: True) -> None:
        self.now, self.step, self.moving, self.armed = 0.0, step, moving, False

    def __call__(self) -> float:
        if self.armed:
            self.now += self.step
        self.armed = self.armed or self.moving()
        return self.now


def test_stop_waits_in_parallel_reports_and_kills_what_outlives_the_timeout(tmp_path):
    polite, stubborn, other = (child(tmp_path, "polite", False), child(tmp_path, "stubborn", True),
                               child(tmp_path, "other-stubborn", True))
    with running(polite), running(stubborn), running(other):
        lines: list[str] = []
        # No time passes until the polite child has ended on its SIGTERM; then each reading is 0.5 s later.
        clock = SteppedClock(0.5, moving=lambda: polite.proc.poll() is not None)
        outcome = stop_processes({c.name: c.proc for c in (polite, stubborn, other)}, timeout=1.5,
                                 report=lines.append, report_every=0.5, clock=clock)
    assert outcome == {"polite": f"signal {signal.SIGTERM}", "stubborn": "killed", "other-stubborn": "killed"}
    # Two stubborn children cost one timeout, not two: both were killed at the first reading past it.
    assert clock.now == 1.5
    # A report at each report_every before the timeout, naming only the children still awaited.
    assert len(lines) == 2 and all("stubborn" in line and "polite" not in line for line in lines), lines


def test_kill_now_ends_the_wait_at_once(tmp_path):
    stubborn = child(tmp_path, "stubborn", True)
    asked = iter([False, False, True])
    polls: list[bool] = []

    def kill_now() -> bool:
        polls.append(next(asked))
        return polls[-1]

    with running(stubborn):
        outcome = stop_processes({"stubborn": stubborn.proc}, timeout=60, kill_now=kill_now, clock=SteppedClock(0.0))
    assert outcome == {"stubborn": "killed"}
    assert polls == [False, False, True]  # killed at the first poll that asked, never waiting out the timeout


def test_stop_signals_first_asks_to_stop_then_to_kill():
    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited from a non-interactive shell
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs in this (main) thread
        assert signals.requested.is_set() and not signals.kill_now.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert signals.kill_now.is_set() and signals.signals == 2
    finally:
        signals.restore()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]


def test_searchctl_takes_an_ignored_sigint_back():
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        take_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


CALLERS = """
[[caller]]
name = "reader"
scopes = ["search"]
keys = ["reader-key-0123456789"]

[[caller]]
name = "owner"
scopes = ["search", "write", "admin"]
collections = ["docs*"]
keys = ["owner-key-0123456789"]
"""


def test_up_uses_a_configured_key_for_its_own_calls(monkeypatch):
    from services.gateway.callers import EMPTY, load

    monkeypatch.delenv("SEARCHCTL_API_KEY", raising=False)
    assert _client_key(EMPTY, []) == (None, None)
    legacy = load(None, "first-key,second-key")
    key, note = _client_key(legacy, ["first-key", "second-key"])
    assert key == "first-key" and "export SEARCHCTL_API_KEY=" in note
    monkeypatch.setenv("SEARCHCTL_API_KEY", "second-key")
    assert _client_key(legacy, ["first-key", "second-key"]) == ("second-key", None)
    monkeypatch.setenv("SEARCHCTL_API_KEY", "typo")
    key, note = _client_key(legacy, ["first-key"])
    assert key == "first-key" and "not one of the gateway's keys" in note


def test_up_loads_the_demo_with_a_caller_that_has_the_scopes_for_it(monkeypatch):
    from services.cli.up import _callers, _demo_keys

    monkeypatch.delenv("SEARCHCTL_API_KEY", raising=False)
    env = {"GATEWAY_API_KEYS": CALLERS}
    book = _callers(env)
    assert _demo_keys(env, book, "docs") == ["owner-key-0123456789"]  # the reader may not write
    assert _demo_keys(env, book, "elsewhere") == []  # the owner is limited to docs*
    monkeypatch.setenv("SEARCHCTL_API_KEY", "reader-key-0123456789")
    assert _client_key(book, ["owner-key-0123456789"]) == ("owner-key-0123456789", None)  # the reader's key works for search
    key, note = _client_key(book, [])
    assert key is None and "the demo is not loaded" in note


def test_the_ready_line_says_when_the_demo_was_not_loaded():
    from argparse import Namespace

    ports = {"gateway": 50051, "retrieval": 50052, "reranker": 50053}

    def ready(no_demo_flag: bool, no_demo: bool) -> str:
        args = Namespace(host=LOOPBACK, collection="docs", no_demo=no_demo_flag)
        return _ready(args, {}, ports, False, None, no_demo)

    loaded = ready(False, False)
    assert "ready: gateway on localhost:50051" in loaded and "not loaded" not in loaded
    assert "searchctl search \"how do I run the tests?\" --collection docs" in loaded
    skipped = ready(True, True)
    assert "The demo corpus was not loaded (--no-demo): `searchctl ingest PATH --collection docs`" in skipped
    refused = ready(False, True)  # API keys on, and no caller may create, write and search the collection
    assert "not loaded (no configured caller may load it)" in refused
