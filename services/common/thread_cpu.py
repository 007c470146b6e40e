"""CPU seconds by thread group: where a service's CPU goes, without a profiler.

``process_cpu_seconds_total`` says how much CPU a service uses; ``search_thread_cpu_seconds_total``
says which of its threads use it, read from ``/proc/self/task/*/stat`` at every scrape (Linux;
elsewhere the family has no samples). Threads are grouped by name, so the label stays bounded:

* Python threads by their ``threading`` name without the counter Python or an executor appends
  (``embed-inference_0`` -> ``embed-inference``, ``retrieval_3`` -> ``retrieval``,
  ``Thread-2 (_poll_wrapper)`` -> ``_poll_wrapper``); the main thread, which runs the service's
  event loop, is ``main``.
* Threads started by native libraries (gRPC core, Qdrant Edge, ONNX Runtime) by their kernel name
  without a trailing number (``edge-search-0`` -> ``edge-search``, ``event_engine``); one that kept
  the process's own name is ``native``.

The counter never goes down: a thread that exits keeps counting in its group with what it had used
at the last collection that saw it. What threads used that no collection saw (a thread that came
and went between two scrapes, or a thread's last moments) counts as ``exited``: the process's own
CPU figure less everything attributed.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

NAME = "search_thread_cpu_seconds"
HELP = ("CPU seconds (user + system) used by the service's threads, by thread group: the Python thread name "
        "without its counter (main = the event loop), or a native thread's kernel name without its number.")
_TASKS = Path("/proc/self/task")
_COUNTER = re.compile(r"[-_ ]?\d+$")
_THREAD_N = re.compile(r"^Thread-\d+(?: \((?P<target>[^)]*)\))?$")


def group_of(python_name: str | None, kernel_name: str, process_name: str) -> str:
    """The group a thread counts in (see the module docstring)."""
    if python_name is not None:
        if python_name == "MainThread":
            return "main"
        match = _THREAD_N.match(python_name)
        if match:
            return match.group("target") or "thread"
        return _COUNTER.sub("", python_name) or "thread"
    if kernel_name == process_name:
        return "native"
    return _COUNTER.sub("", kernel_name) or "native"


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_stat(path: Path) -> tuple[str, float] | None:
    """(kernel name, CPU seconds) from a proc_pid_stat(5) file; None when the thread has exited meanwhile."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat[stat.rfind(")") + 2 :].split()  # from field 3 of proc_pid_stat(5): state
    return name, (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


class ThreadCpuCollector:
    """A Prometheus collector of ``search_thread_cpu_seconds_total{thread}`` for this process."""

    _labelnames = ("thread",)

    def __init__(self, tasks: Path = _TASKS) -> None:
        self.tasks = tasks
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[str, float]] = {}  # tid -> (group, CPU seconds at the last collection)
        self._retired: dict[str, float] = {}  # CPU of threads that exited, by group
        self._exited = 0.0

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(NAME, HELP, labels=list(self._labelnames))]

    def totals(self) -> dict[str, float]:
        """CPU seconds by group, threads that exited included (see the module docstring)."""
        try:
            tids = [entry.name for entry in os.scandir(self.tasks)]
        except OSError:
            return {}
        python_names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        process_name = _process_name(self.tasks.parent)
        with self._lock:
            current: dict[int, tuple[str, float]] = {}
            for tid in tids:
                read = _read_stat(self.tasks / tid / "stat")
                if read is None:
                    continue
                kernel_name, seconds = read
                key = int(tid)
                previous = self._seen.get(key)
                if previous is not None and seconds < previous[1]:  # the id was reused by a new thread
                    self._retire(*previous)
                    previous = None
                group = previous[0] if previous is not None else group_of(python_names.get(key), kernel_name, process_name)
                current[key] = (group, seconds)
            for key, (group, seconds) in self._seen.items():
                if key not in current:
                    self._retire(group, seconds)
            self._seen = current
            totals = dict(self._retired)
            for group, seconds in current.values():
                totals[group] = totals.get(group, 0.0) + seconds
            process = _read_stat(self.tasks.parent / "stat")  # the process: every thread, exited ones too
            if process is not None:
                self._exited = max(self._exited, process[1] - sum(totals.values()))
                totals["exited"] = totals.get("exited", 0.0) + self._exited
        return totals

    def _retire(self, group: str, seconds: float) -> None:
        self._retired[group] = self._retired.get(group, 0.0) + seconds

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(NAME, HELP, labels=list(self._labelnames))
        for group, seconds in sorted(self.totals().items()):
            family.add_metric([group], seconds)
        yield family


def _process_name(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""
