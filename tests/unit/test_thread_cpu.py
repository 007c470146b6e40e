"""CPU seconds by thread group (services/common/thread_cpu.py), read from /proc."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.common.thread_cpu import ThreadCpuCollector, group_of


@pytest.mark.parametrize(("python_name", "kernel_name", "group"), [
    ("MainThread", "python", "main"),
    ("embed-inference_0", "python", "embed-inference"),
    ("retrieval_12", "python", "retrieval"),
    ("Thread-2 (_poll_wrapper)", "python", "_poll_wrapper"),
    ("Thread-7", "python", "thread"),
    ("fusion-calibrator", "python", "fusion-calibrator"),
    (None, "edge-search-1", "edge-search"),
    (None, "event_engine", "event_engine"),
    (None, "python", "native"),
])
def test_threads_are_grouped_by_name_without_their_counter(python_name, kernel_name, group):
    assert group_of(python_name, kernel_name, "python") == group


def _stat(name: str, ticks: int) -> str:
    # pid (comm) state ppid ... utime(14) stime(15) ...: 13 fields before utime after the name.
    return f"1 ({name}) R " + " ".join(["0"] * 10) + f" {ticks} 0 " + " ".join(["0"] * 30) + "\n"


def _proc(root: Path, process_ticks: int, threads: dict[str, tuple[str, int]]) -> Path:
    tasks = root / "task"
    if tasks.exists():
        for old in tasks.iterdir():
            (old / "stat").unlink()
            old.rmdir()
    tasks.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(_stat("python", process_ticks))
    for tid, (name, ticks) in threads.items():
        (tasks / tid).mkdir()
        (tasks / tid / "stat").write_text(_stat(name, ticks))
    return tasks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_counts_never_go_down_when_threads_exit_or_ids_are_reused(tmp_path):
    import os

    hz = os.sysconf("SC_CLK_TCK")
    tasks = _proc(tmp_path, 300, {"11": ("edge-search-0", 100), "12": ("edge-search-1", 50), "13": ("event_engine", 20)})
    collector = ThreadCpuCollector(tasks)
    first = collector.totals()
    assert first["edge-search"] == pytest.approx(150 / hz)
    assert first["event_engine"] == pytest.approx(20 / hz)
    assert first["exited"] == pytest.approx(130 / hz)  # the process's CPU no live thread accounts for

    # 12 exits; 13's id is reused by a new thread that has used less so far.
    _proc(tmp_path, 400, {"11": ("edge-search-0", 160), "13": ("event_engine", 5)})
    second = collector.totals()
    assert second["edge-search"] == pytest.approx((160 + 50) / hz)  # 12 keeps what it had used
    assert second["event_engine"] == pytest.approx((20 + 5) / hz)
    for group, seconds in first.items():
        assert second[group] >= seconds, group
    assert sum(second.values()) == pytest.approx(400 / hz)


def test_a_busy_thread_shows_in_its_group_and_exports_as_a_counter():
    if not Path("/proc/self/task").is_dir():
        pytest.skip("no /proc/self/task on this platform: the family has no samples")
    collector = ThreadCpuCollector()
    stop = threading.Event()

    def burn():
        while not stop.is_set():
            pass

    thread = threading.Thread(target=burn, name="burner_1")
    thread.start()
    # Until the burner has used 0.1 s of CPU, however busy the machine or this process's other
    # threads (a fixed 0.3 s sleep failed once in a full unit run: the burner had not had it).
    deadline = time.monotonic() + 30
    while (during := collector.totals()).get("burner", 0.0) < 0.1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    assert during.get("burner", 0.0) >= 0.1, during
    after = collector.totals()
    assert after["burner"] >= during["burner"]  # exited: still counted
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert "# TYPE search_thread_cpu_seconds_total counter" in text
    assert 'search_thread_cpu_seconds_total{thread="burner"}' in text
    assert registry.get_sample_value("search_thread_cpu_seconds_total", {"thread": "main"}) is not None


def test_without_proc_the_family_is_empty(tmp_path):
    collector = ThreadCpuCollector(tmp_path / "missing" / "task")
    assert collector.totals() == {}
    assert [family.samples for family in collector.collect()] == [[]]
