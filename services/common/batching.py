"""Dynamic batching across concurrent requests, bounded by items AND padded tokens.

Callers :meth:`DynamicBatcher.submit` a request's items (already tokenized, each with
its token length). A single worker task on the event loop turns what is queued into
batches and runs them on an executor (ONNX Runtime releases the GIL, so the server
keeps accepting, tokenizing and queueing while a batch runs):

* **Rounds.** When the worker needs work it takes everything queued as one *round*,
  sorts it by length so padding stays small, and cuts it into batches of at most
  ``max_batch_items`` items and ``max_batch_tokens`` padded tokens
  (:func:`plan_batches`). An oversize request is split across batches; a single
  over-long item still runs alone. Requests arriving during a round form the next one,
  so nobody is overtaken indefinitely.
* **Short wait, under load only.** An idle batcher (nothing running) starts what is
  queued at once: a lone request never waits for company. While a batch runs and a
  worker is free, a partial batch waits until its oldest item has been queued
  ``max_wait_s``, so that concurrent callers can join it before it takes the free worker.
* **Parallel batches.** ``workers`` batches run at once (on a CPU: one per core, each on
  one ONNX Runtime thread, which costs less per item than one batch spread over all
  cores). A round too small to keep every worker busy is cut into evener, smaller
  batches, so one caller's request is spread over all workers.
* **Prefetch.** Up to ``prefetch`` further batches are handed to the executor behind the
  running ones, so an inference thread goes straight from one batch to the next (on a
  GPU the gap between batches is otherwise a visible share of the time). Only whole
  batches are prefetched; a partial batch waits for a free worker, because the requests
  a finishing batch frees usually come straight back and can join it.
* **Queued batches.** Up to ``queued`` further batches are handed to the executor while
  every one of its threads is busy (it must have ``workers + prefetch`` of them): they wait
  in its queue, and the next thread to finish a batch takes one at once, without a trip
  through the event loop, which on a CPU shares its core with gRPC and left the inference
  threads idle (and their next batch slower) between batches. A partial batch takes such a
  slot once its oldest item has waited ``max_wait_s`` (the retrieval embedder on a CPU
  queues one: docs/BENCHMARKS.md, issue 22).
* **Priorities.** ``submit(..., priority=0)`` is served before larger numbers: pending
  items of a more urgent priority are planned ahead of the rest of the current round at
  the next batch boundary (the embedder gives search queries priority over documents).
* **Routing.** Each batch's outputs are written into each request's result array at the
  request's own positions; a request completes when its last item has been scored.
* **Abandoned requests.** When a caller goes away (deadline, cancellation), its items
  that have not been handed to the executor yet are dropped instead of scored.

The queue is bounded in items: past ``max_queue_items`` a request is refused at once
with :class:`~services.common.errors.ResourceExhausted` rather than left to time out. A
request larger than the whole queue could never be served, however idle the service:
it is refused with :class:`~services.common.errors.InvalidArgument` (not retryable),
naming the setting to change (:func:`check_fits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

E = TypeVar("E")  # one tokenized item


@dataclass(eq=False)
class _Request:
    size: int
    priority: int
    enqueued: float
    result: np.ndarray
    remaining: int
    future: asyncio.Future
    started: bool = False
    abandoned: bool = False
    counted_out: bool = False


@dataclass(order=True)
class _Item:
    priority: int
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

    A batch's cost is ``len(batch) * max(length in batch)`` padded tokens; every batch
    respects both bounds except a single item longer than ``max_tokens``, which runs alone.
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


def check_fits(n: int, capacity: int, *, request_field: str, item_noun: str, queue_setting: str) -> None:
    """Refuse a request of ``n`` items that could never fit a queue of ``capacity``."""
    if n > capacity:
        raise InvalidArgument(
            request_field,
            f"{n} {item_noun} exceed the whole queue ({capacity}, {queue_setting}); send at most {capacity} per request",
        )


def check_room(queued: int, n: int, capacity: int, metrics: BatcherMetrics) -> None:
    """Shed (RESOURCE_EXHAUSTED, counted as rejected) a request of ``n`` items that the queue,
    holding ``queued`` of its ``capacity``, has no room for now."""
    if queued + n > capacity:
        metrics.rejected()
        raise ResourceExhausted(
            f"overloaded: {queued} items queued, this request adds {n}, the queue holds {capacity}; retry with backoff"
        )


class DynamicBatcher(Generic[E]):
    """Coalesce items from concurrent :meth:`submit` calls into bounded, length-sorted batches.

    Args:
        infer: runs one batch (a list of encodings) and returns one output row per item:
            shape ``(n, *item_shape)`` (``(n, 1)`` is accepted for ``item_shape=()``).
            Called on ``executor``.
        length_of: an item's token count (its padded cost is the longest in its batch).
        executor: where ``infer`` runs, with at least ``workers`` threads (ONNX Runtime
            releases the GIL, so batches on different threads run in parallel).
        max_batch_items / max_batch_tokens: bounds of one batch (items; items x longest).
        max_wait_s: while a batch runs, how long a partial batch waits for concurrent
            callers to join before it takes a free worker (an idle batcher never waits).
        max_queue_items: items queued (pending, planned or running) before shedding.
        item_shape / dtype: shape and type of one item's output row.
        workers: batches running at once (>= 1).
        prefetch: whole batches queued on the executor behind the running ones (>= 0).
        queued: batches, partial ones included, waiting in the executor's queue while all
            its threads are busy (>= 0; see the module docstring).
        metrics: reporting hooks.
        request_field / item_noun / queue_setting: how the error for a request larger than
            the whole queue names the request's field, its items and the queue's setting.
    """

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
        item_shape: tuple[int, ...] = (),
        dtype: Any = np.float32,
        workers: int = 1,
        prefetch: int = 0,
        queued: int = 0,
        metrics: BatcherMetrics | None = None,
        request_field: str = "items",
        item_noun: str = "items",
        queue_setting: str = "max_queue_items",
    ) -> None:
        if max_batch_items < 1 or max_batch_tokens < 1 or max_queue_items < 1 or workers < 1 or prefetch < 0 or queued < 0:
            raise ValueError("batch, queue and worker bounds must be positive (prefetch and queued >= 0)")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self._infer = infer
        self._length_of = length_of
        self._executor = executor
        self.max_batch_items = max_batch_items
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.item_shape = tuple(item_shape)
        self.dtype = dtype
        self.workers = workers
        self.prefetch = prefetch
        self.queued = queued
        self._metrics = metrics or BatcherMetrics()
        self._names = {"request_field": request_field, "item_noun": item_noun, "queue_setting": queue_setting}
        self._pending: list[_Item] = []
        self._abandoned = False  # some queued request was abandoned by its caller
        self._planned: deque[tuple[int, list[_Item]]] = deque()  # (priority, batch)
        self._inflight: deque[tuple[asyncio.Future, list[_Item]]] = deque()
        self._queued_items = 0  # pending + planned + being scored
        self._queued_requests = 0
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None  # wakes the worker when a wait ends
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def queued_requests(self) -> int:
        return self._queued_requests

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stop taking work; queued requests are finished first."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker

    def check_fits(self, n: int) -> None:
        """InvalidArgument when a request of ``n`` items could never be queued (callable before tokenizing)."""
        check_fits(n, self.max_queue_items, **self._names)

    async def submit(self, encodings: Sequence[E], *, priority: int = 0) -> np.ndarray:
        """Outputs for ``encodings``, in their order: shape ``(len(encodings), *item_shape)``."""
        if self._closed:
            raise Unavailable("the service is shutting down")
        n = len(encodings)
        if n == 0:
            return np.zeros((0, *self.item_shape), dtype=self.dtype)
        self.check_fits(n)
        check_room(self._queued_items, n, self.max_queue_items, self._metrics)
        self.start()
        loop = asyncio.get_running_loop()
        request = _Request(
            size=n,
            priority=priority,
            enqueued=time.perf_counter(),
            result=np.empty((n, *self.item_shape), dtype=self.dtype),
            remaining=n,
            future=loop.create_future(),
        )
        for index, encoding in enumerate(encodings):
            self._seq += 1
            length = int(self._length_of(encoding))
            self._pending.append(_Item(priority, length, self._seq, request, index, encoding))
        self._queued_items += n
        self._queued_requests += 1
        self._metrics.queue_changed(self._queued_items, self._queued_requests)
        self._wakeup.set()
        try:
            return await asyncio.shield(request.future)
        finally:
            if not request.future.done():
                # The caller went away (deadline, cancel): drop its items not yet running.
                request.abandoned = True
                request.future.cancel()
                self._abandoned = True
                self._wakeup.set()

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Deliver every finished batch, not only the oldest: batches of different lengths
            # finish out of order, and a finished one must free its worker slot at once.
            if any(future.done() for future, _ in self._inflight):
                running: deque[tuple[asyncio.Future, list[_Item]]] = deque()
                for future, batch in self._inflight:
                    if future.done():
                        self._deliver(batch, future)
                    else:
                        running.append((future, batch))
                self._inflight = running
            self._drop_abandoned()
            while len(self._inflight) < self.workers + self.prefetch + self.queued:
                batch = self._next_batch(partial_ok=self._partial_ok(loop))
                if batch is None:
                    break
                self._launch(loop, batch)
            if not self._inflight and not self._planned and not self._pending and self._closed:
                if self._timer is not None:
                    self._timer.cancel()
                return
            await self._wakeup.wait()
            self._wakeup.clear()

    def _partial_ok(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a partial batch may start now: on a free worker (or into a queued slot), at once
        when nothing runs (idle), else once its oldest item has waited ``max_wait_s`` (a timer
        wakes the worker then)."""
        busy = len(self._inflight)
        if busy >= self.workers and not (self.queued and busy >= self.workers + self.prefetch):
            return False  # no free worker and no queued slot, or a prefetch slot (whole batches only)
        if not self._inflight or self.max_wait_s <= 0 or self._planned or not self._pending:
            return True  # idle, or the rest of a round already cut to spread over the workers
        left = min(item.request.enqueued for item in self._pending) + self.max_wait_s - time.perf_counter()
        if left <= 0:
            return True
        if self._timer is None or self._timer.when() > loop.time() + left:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(left, self._wake_after_wait)
        return False

    def _wake_after_wait(self) -> None:
        self._timer = None
        self._wakeup.set()

    def _next_batch(self, partial_ok: bool) -> list[_Item] | None:
        """The next batch to run, or None when there is none (or it is better to wait)."""
        if self._pending:
            urgent = min(item.priority for item in self._pending)
            if self._planned and urgent < self._planned[0][0]:
                self._plan_round(only_priority=urgent, front=True)
            elif not self._planned and (partial_ok or self._enough_for_a_batch()):
                self._plan_round()
        if not self._planned:
            return None
        if not partial_ok and len(self._planned) == 1 and not self._is_whole(self._planned[0][1]):
            return None  # the round's last batch could still grow: keep it for a free worker
        return self._planned.popleft()[1]

    def _enough_for_a_batch(self) -> bool:
        if len(self._pending) >= self.max_batch_items:
            return True
        longest = max(item.length for item in self._pending)
        return len(self._pending) * longest >= self.max_batch_tokens

    def _is_whole(self, batch: list[_Item]) -> bool:
        """Whether one more item would break a bound (so waiting would not grow it)."""
        longest = max(item.length for item in batch)
        return len(batch) >= self.max_batch_items or (len(batch) + 1) * longest > self.max_batch_tokens

    def _plan_round(self, only_priority: int | None = None, front: bool = False) -> None:
        if only_priority is None:
            taken, self._pending = self._pending, []
        else:
            taken = [i for i in self._pending if i.priority == only_priority]
            self._pending = [i for i in self._pending if i.priority != only_priority]
        taken.sort()
        batches: list[tuple[int, list[_Item]]] = []
        start = 0
        while start < len(taken):  # one group per priority, most urgent first
            priority = taken[start].priority
            end = start
            while end < len(taken) and taken[end].priority == priority:
                end += 1
            group = taken[start:end]
            lengths = [i.length for i in group]
            # Even the batch sizes out, and use every worker when the round is small: a
            # round of n items becomes at least min(n, workers) batches of similar size.
            wanted = max(self.workers, -(-len(group) // self.max_batch_items))
            max_items = max(1, min(self.max_batch_items, -(-len(group) // wanted)))
            for positions in plan_batches(lengths, max_items, self.max_batch_tokens):
                batches.append((priority, [group[p] for p in positions]))
            start = end
        if front:
            self._planned.extendleft(reversed(batches))
        else:
            self._planned.extend(batches)

    def _launch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        now = time.perf_counter()
        for item in batch:
            request = item.request
            if not request.started:
                request.started = True
                self._metrics.queue_wait(now - request.enqueued)
        future = loop.run_in_executor(self._executor, self._timed_infer, [item.encoding for item in batch])
        future.add_done_callback(lambda _: self._wakeup.set())
        self._inflight.append((future, batch))

    def _timed_infer(self, encodings: list[E]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = self._infer(encodings)
        return out, time.perf_counter() - start

    def _deliver(self, batch: list[_Item], future: asyncio.Future) -> None:
        error: BaseException | None = (
            Unavailable("inference was cancelled") if future.cancelled() else future.exception()
        )
        outputs = None
        seconds = 0.0
        if error is None:
            raw, seconds = future.result()
            try:
                outputs = np.asarray(raw).reshape((len(batch), *self.item_shape))
            except ValueError as exc:
                error = exc
        if error is not None:
            log.error("batch inference failed", exc_info=error, extra={"batch_items": len(batch)})
        else:
            longest = max(item.length for item in batch)
            self._metrics.batch_done(
                BatchStats(
                    items=len(batch),
                    padded_tokens=len(batch) * longest,
                    real_tokens=sum(item.length for item in batch),
                    seconds=seconds,
                )
            )
        for pos, item in enumerate(batch):
            request = item.request
            if outputs is not None:
                request.result[item.index] = outputs[pos]
            request.remaining -= 1
            self._queued_items -= 1
            if request.future.done():
                if request.remaining == 0 or error is not None:
                    self._finish(request, None)
                continue
            if error is not None:
                self._finish(request, Unavailable(f"inference failed: {error}"))
            elif request.remaining == 0:
                self._finish(request, request.result)
        self._metrics.queue_changed(self._queued_items, self._queued_requests)

    def _finish(self, request: _Request, outcome: np.ndarray | BaseException | None) -> None:
        """Complete ``request`` once (and count it out of the queue once)."""
        if request.counted_out:
            return
        request.counted_out = True
        self._queued_requests -= 1
        if request.future.done():
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    def _drop_abandoned(self) -> None:
        """Forget queued items of callers that went away (they were never handed out)."""
        if not self._abandoned:
            return
        self._abandoned = False
        dropped: list[_Item] = [i for i in self._pending if i.request.abandoned]
        self._pending = [i for i in self._pending if not i.request.abandoned]
        kept: deque[tuple[int, list[_Item]]] = deque()
        for priority, batch in self._planned:
            live = [i for i in batch if not i.request.abandoned]
            dropped.extend(i for i in batch if i.request.abandoned)
            if live:
                kept.append((priority, live))
        self._planned = kept
        for item in dropped:
            item.request.remaining -= 1
            self._queued_items -= 1
            if item.request.remaining == 0:
                self._finish(item.request, None)
        self._metrics.queue_changed(self._queued_items, self._queued_requests)
