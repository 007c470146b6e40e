"""Dynamic batching across concurrent requests, bounded by items AND padded tokens.

Callers :meth:`DynamicBatcher.submit` a request's items (already tokenized, each with
its token length). One worker drains everything queued when it becomes free, sorts
it by length so padding stays small, cuts it into batches of at most ``max_batch_items``
items and ``max_batch_tokens`` padded tokens (an oversize request is split across
batches; a single over-long item still runs alone), runs each batch off the event loop
(ONNX Runtime releases the GIL, so the server keeps accepting and queueing meanwhile),
and routes every score back to its request in the request's own order.

The queue is bounded in items: past ``max_queue_items`` a request is refused at once
with :class:`~services.common.errors.ResourceExhausted` rather than left to time out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from services.common.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

E = TypeVar("E")  # one tokenized item


@dataclass
class _Request:
    size: int
    enqueued: float
    scores: np.ndarray
    remaining: int
    future: asyncio.Future


@dataclass(order=True)
class _Item(Generic[E]):
    length: int
    seq: int
    request: _Request = field(compare=False)
    index: int = field(compare=False)
    encoding: Any = field(compare=False)


@dataclass(frozen=True)
class BatchStats:
    items: int
    padded_tokens: int
    real_tokens: int
    seconds: float


class BatcherMetrics:
    """Hooks the batcher reports to; the default does nothing."""

    def queue_changed(self, items: int, requests: int) -> None: ...

    def rejected(self) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch_done(self, stats: BatchStats) -> None: ...


def plan_batches(lengths: Sequence[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Cut positions of ``lengths`` (sorted ascending by the caller) into batches.

    A batch's cost is ``len(batch) * max(length in batch)`` padded tokens.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for pos, length in enumerate(lengths):
        new_longest = max(longest, length)
        if current and (len(current) + 1 > max_items or (len(current) + 1) * new_longest > max_tokens):
            batches.append(current)
            current, new_longest = [], length
        current.append(pos)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


class DynamicBatcher(Generic[E]):
    def __init__(
        self,
        infer: Callable[[list[E]], np.ndarray],
        length_of: Callable[[E], int],
        executor: Executor,
        *,
        max_batch_items: int = 32,
        max_batch_tokens: int = 8192,
        max_wait_s: float = 0.002,
        max_queue_items: int = 2048,
        metrics: BatcherMetrics | None = None,
    ) -> None:
        if max_batch_items < 1 or max_batch_tokens < 1 or max_queue_items < 1:
            raise ValueError("batch and queue bounds must be positive")
        self._infer = infer
        self._length_of = length_of
        self._executor = executor
        self.max_batch_items = max_batch_items
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self._metrics = metrics or BatcherMetrics()
        self._pending: list[_Item] = []
        self._queued_items = 0  # pending + being scored
        self._queued_requests = 0
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stop taking work; queued requests are finished first."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker

    async def submit(self, encodings: Sequence[E]) -> np.ndarray:
        """Scores for ``encodings``, in their order."""
        if self._closed:
            raise Unavailable("the service is shutting down")
        n = len(encodings)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        if self._queued_items + n > self.max_queue_items:
            self._metrics.rejected()
            raise ResourceExhausted(
                f"overloaded: {self._queued_items} items queued, this request adds {n}, the queue holds "
                f"{self.max_queue_items}; retry with backoff"
            )
        self.start()
        loop = asyncio.get_running_loop()
        request = _Request(size=n, enqueued=time.perf_counter(), scores=np.empty(n, dtype=np.float32), remaining=n,
                           future=loop.create_future())
        for index, encoding in enumerate(encodings):
            self._seq += 1
            self._pending.append(_Item(self._length_of(encoding), self._seq, request, index, encoding))
        self._queued_items += n
        self._queued_requests += 1
        self._metrics.queue_changed(self._queued_items, self._queued_requests)
        self._wakeup.set()
        try:
            return await asyncio.shield(request.future)
        finally:
            if not request.future.done():
                # The caller went away (deadline, cancel); its items still run, results dropped.
                request.future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closed:
                    return
                continue
            if self.max_wait_s > 0 and len(self._pending) < self.max_batch_items:
                await asyncio.sleep(self.max_wait_s)  # let concurrent requests join the round
            round_items = sorted(self._pending)
            self._pending = []
            now = time.perf_counter()
            for request in {id(i.request): i.request for i in round_items}.values():
                self._metrics.queue_wait(now - request.enqueued)
            for positions in plan_batches([i.length for i in round_items], self.max_batch_items, self.max_batch_tokens):
                await self._score([round_items[p] for p in positions])
            if self._pending:
                self._wakeup.set()

    async def _score(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            scores = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._infer, [item.encoding for item in batch]
            )
            error = None
        except Exception as exc:  # noqa: BLE001 - delivered to every caller in the batch
            log.exception("batch inference failed", extra={"batch_items": len(batch)})
            scores, error = None, exc
        self._metrics.batch_done(
            BatchStats(
                items=len(batch),
                padded_tokens=len(batch) * max(item.length for item in batch),
                real_tokens=sum(item.length for item in batch),
                seconds=time.perf_counter() - start,
            )
        )
        for pos, item in enumerate(batch):
            request = item.request
            if error is None:
                request.scores[item.index] = float(np.ravel(scores[pos])[0]) if np.ndim(scores[pos]) else float(scores[pos])
            request.remaining -= 1
            self._queued_items -= 1
            if request.future.done():
                continue
            if error is not None:
                request.future.set_exception(Unavailable(f"inference failed: {error}"))
                self._queued_requests -= 1
            elif request.remaining == 0:
                request.future.set_result(request.scores)
                self._queued_requests -= 1
        self._metrics.queue_changed(self._queued_items, self._queued_requests)
