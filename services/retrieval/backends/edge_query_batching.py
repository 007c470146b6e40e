"""Concurrent queries of one collection combined into one engine call (``EDGE_QUERY_BATCHING``).

Qdrant Edge 0.9 holds Python's GIL for the whole of each call, so the retrieval process runs
one engine call at a time anyway. Combining: a caller that finds the collection's engine free
runs everything queued by then (its own queries and those of the callers that arrived while
the previous call ran) as one ``query_batch`` and hands each caller its results; a caller that
finds it busy waits to be served by the next round. No timer: a lone caller runs at once,
and a round holds only what queued while the previous one ran.

When a combined call fails, each caller's queries run again on their own, so one caller's
bad request never fails another's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Waiter:
    __slots__ = ("queries", "done", "results", "error", "lead")

    def __init__(self, queries: Sequence[Any]) -> None:
        self.queries = list(queries)
        self.done = threading.Event()
        self.results: list[Any] | None = None
        self.error: BaseException | None = None
        self.lead = False

    def outcome(self) -> list[Any]:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


class QueryCombiner:
    """``submit`` lists of queries from many threads; ``run`` executes one combined list and
    returns one result per query, in order."""

    def __init__(self, run: Callable[[list[Any]], list[Any]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False
        #: Engine calls made and queries they carried (for tests and the benchmark).
        self.calls = 0
        self.queries = 0

    @property
    def waiting(self) -> int:
        """Callers queued for the next round."""
        with self._lock:
            return len(self._queue)

    def submit(self, queries: Sequence[Any]) -> list[Any]:
        me = _Waiter(queries)
        with self._lock:
            self._queue.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.done.wait()
            if not me.lead:
                return me.outcome()
        with self._lock:
            round_, self._queue = self._queue, []
        try:
            self._serve(round_)
        finally:
            with self._lock:
                if self._queue:  # arrived during this round: the first of them leads the next
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
        return me.outcome()

    def _serve(self, round_: list[_Waiter]) -> None:
        combined = [q for w in round_ for q in w.queries]
        self.calls += 1
        self.queries += len(combined)
        try:
            results = self._run(combined)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets an outcome
            if len(round_) == 1:
                round_[0].error = exc
            else:
                for w in round_:  # one caller's bad request must not fail the others
                    try:
                        w.results = self._run(w.queries)
                    except BaseException as own:  # noqa: BLE001
                        w.error = own
        else:
            at = 0
            for w in round_:
                w.results = results[at:at + len(w.queries)]
                at += len(w.queries)
        for w in round_:
            w.lead = False
            w.done.set()
