"""The batcher's scheduling logic, with a deterministic scoring function standing in for the model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.common.batching import BatcherMetrics, DynamicBatcher, plan_batches
from services.common.errors import InvalidArgument, ResourceExhausted


def test_plan_batches_respects_items_and_padded_tokens():
    lengths = [10, 10, 10, 50, 50, 400]
    batches = plan_batches(lengths, max_items=4, max_tokens=150)
    assert batches == [[0, 1, 2], [3, 4], [5]]
    for batch in batches[:-1]:
        assert len(batch) * max(lengths[i] for i in batch) <= 150
    assert plan_batches([5] * 10, max_items=4, max_tokens=10_000) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


class Recorder(BatcherMetrics):
    def __init__(self):
        self.batches = []
        self.rejections = 0

    def batch_done(self, stats):
        self.batches.append(stats)

    def rejected(self):
        self.rejections += 1


def score(items):
    # Score = the item's value; items are (value, length) tuples.
    return np.array([[float(v)] for v, _ in items], dtype=np.float32)


async def submitted(batcher: DynamicBatcher, encodings, **kwargs) -> asyncio.Future:
    """``batcher.submit`` as a task, returned once the batcher holds the request: the task's first
    step runs on the loop's next turn, ahead of this coroutine's, and queues every item before it
    first awaits. What follows is ordered after the request's arrival, whatever the timing."""
    task = asyncio.ensure_future(batcher.submit(encodings, **kwargs))
    await asyncio.sleep(0)
    return task


@pytest.mark.asyncio
async def test_results_return_to_each_caller_in_its_order():
    rec = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool, max_batch_items=8, max_batch_tokens=10_000, metrics=rec)
        requests = [[(r * 100 + i, (i * 37 + r) % 60 + 1) for i in range(r + 3)] for r in range(10)]
        results = await asyncio.gather(*(batcher.submit(req) for req in requests))
        await batcher.close()
    for req, res in zip(requests, results):
        assert res.tolist() == [float(v) for v, _ in req]
    # Concurrent callers were coalesced into full batches, none above the bound.
    total = sum(len(r) for r in requests)
    assert len(rec.batches) == -(-total // 8)  # per-request batching would take 15
    assert all(b.items <= 8 for b in rec.batches)
    assert sum(b.items for b in rec.batches) == sum(len(r) for r in requests)


@pytest.mark.asyncio
async def test_length_grouping_keeps_padding_small():
    rec = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool, max_batch_items=4, max_batch_tokens=100_000, metrics=rec)
        short = [(i, 10) for i in range(4)]
        long = [(i, 500) for i in range(4)]
        mixed = [x for pair in zip(short, long) for x in pair]
        await batcher.submit(mixed)
        await batcher.close()
    assert sorted(b.padded_tokens for b in rec.batches) == [40, 2000]  # not 2 x (4 x 500)


@pytest.mark.asyncio
async def test_full_queue_sheds_at_once():
    rec = Recorder()
    release = asyncio.Event()
    with ThreadPoolExecutor(1) as pool:
        loop = asyncio.get_running_loop()

        def slow(items):
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return score(items)

        batcher = DynamicBatcher(slow, lambda e: e[1], pool, max_queue_items=10, metrics=rec)
        first = await submitted(batcher, [(1, 5)] * 8)
        with pytest.raises(ResourceExhausted, match="queue holds 10"):
            await batcher.submit([(2, 5)] * 3)
        assert rec.rejections == 1
        release.set()
        assert (await first).tolist() == [1.0] * 8
        await batcher.close()


@pytest.mark.asyncio
async def test_a_request_larger_than_the_whole_queue_is_invalid_not_shed():
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool, max_queue_items=4, request_field="docs",
                                 item_noun="texts", queue_setting="QUEUE_TEXTS")
        with pytest.raises(InvalidArgument, match=r"docs: 5 texts exceed the whole queue \(4, QUEUE_TEXTS\)"):
            await batcher.submit([(1, 5)] * 5)  # even with nothing queued: a retry could never succeed
        assert (await batcher.submit([(1, 5)] * 4)).tolist() == [1.0] * 4  # exactly the queue's size fits
        await batcher.close()


@pytest.mark.asyncio
async def test_inference_error_reaches_the_callers_and_batcher_keeps_going():
    calls = {"n": 0}

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return score(items)

    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(flaky, lambda e: e[1], pool)
        with pytest.raises(Exception, match="boom"):
            await batcher.submit([(1, 3)])
        assert (await batcher.submit([(7, 3)])).tolist() == [7.0]
        assert batcher.queued_items == 0
        await batcher.close()


# --------------------------------------------------------------------------- planning properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 600), max_size=200).map(sorted),
    max_items=st.integers(1, 64),
    max_tokens=st.integers(1, 20_000),
)
def test_plan_batches_properties(lengths, max_items, max_tokens):
    batches = plan_batches(lengths, max_items, max_tokens)
    assert [p for b in batches for p in b] == list(range(len(lengths)))  # every item once, in order
    for batch in batches:
        assert 1 <= len(batch) <= max_items
        if len(batch) > 1:
            assert len(batch) * max(lengths[p] for p in batch) <= max_tokens
    # Greedy: a batch is only closed when the next item would break a bound.
    for batch, nxt in zip(batches, batches[1:]):
        grown = batch + [nxt[0]]
        assert len(grown) > max_items or len(grown) * max(lengths[p] for p in grown) > max_tokens


# --------------------------------------------------------------------------- worker behaviour


class Gate:
    """An inference function that blocks each batch until the test lets it through."""

    def __init__(self, loop):
        self.loop = loop
        self.started: list[list] = []
        # A thread semaphore, not an asyncio one: a worker waiting at the gate must not need
        # the event loop, or a failing test would deadlock in the executor's shutdown.
        self.release = threading.Semaphore(0)
        self.running = asyncio.Event()

    def __call__(self, items):
        self.loop.call_soon_threadsafe(self.started.append, list(items))
        self.loop.call_soon_threadsafe(self.running.set)
        if not self.release.acquire(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return score(items)

    async def wait_started(self, n, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while len(self.started) < n:
            assert time.monotonic() < deadline, f"{n} batches expected to start, started: {self.started}"
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_vector_outputs_are_routed_per_row():
    def embed(items):
        return np.array([[v, v * 2, v * 3] for v, _ in items], dtype=np.float32)

    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(embed, lambda e: e[1], pool, max_batch_items=4, item_shape=(3,))
        reqs = [[(r * 10 + i, (i * 7 + r) % 9 + 1) for i in range(r + 1)] for r in range(6)]
        results = await asyncio.gather(*(batcher.submit(r) for r in reqs))
        empty = await batcher.submit([])
        await batcher.close()
    for req, res in zip(reqs, results):
        assert res.shape == (len(req), 3)
        assert res.tolist() == [[v, v * 2, v * 3] for v, _ in req]
    assert empty.shape == (0, 3)


@pytest.mark.asyncio
async def test_wrong_output_shape_fails_the_batch_not_the_worker():
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(lambda items: np.zeros(len(items) + 1), lambda e: e[1], pool)
        with pytest.raises(Exception, match="inference failed"):
            await batcher.submit([(1, 2), (2, 2)])
        assert batcher.queued_items == 0 and batcher.queued_requests == 0
        await batcher.close()


@pytest.mark.asyncio
async def test_urgent_priority_overtakes_the_rest_of_a_round():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=2)
        docs = asyncio.ensure_future(batcher.submit([(i, 10) for i in range(6)], priority=1))  # 3 batches
        await gate.wait_started(1)
        query = await submitted(batcher, [(100, 3)], priority=0)
        for _ in range(4):
            gate.release.release()
        assert (await query).tolist() == [100.0]
        assert (await docs).tolist() == [float(i) for i in range(6)]
        await batcher.close()
    # The query ran right after the batch that was running when it arrived.
    assert [v for v, _ in gate.started[1]] == [100]
    assert len(gate.started) == 4


@pytest.mark.asyncio
async def test_abandoned_requests_are_not_scored():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=4)
        first = asyncio.ensure_future(batcher.submit([(1, 5)]))
        await gate.wait_started(1)
        doomed = await submitted(batcher, [(2, 5)] * 8)
        doomed.cancel()  # the caller gives up while queued
        with pytest.raises(asyncio.CancelledError):
            await doomed
        kept = await submitted(batcher, [(3, 5)] * 2)
        for _ in range(3):
            gate.release.release()
        assert (await first).tolist() == [1.0]
        assert (await kept).tolist() == [3.0, 3.0]
        await batcher.close()
        assert batcher.queued_items == 0 and batcher.queued_requests == 0
    scored = [v for batch in gate.started for v, _ in batch]
    assert 2 not in scored and scored.count(3) == 2


@pytest.mark.asyncio
async def test_prefetch_hands_out_a_full_batch_early_but_not_a_partial_one():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=4, prefetch=1)
        a = asyncio.ensure_future(batcher.submit([(1, 5)] * 4))
        await gate.wait_started(1)
        # A partial batch arrives while one runs: it waits, so later arrivals can join it.
        b = await submitted(batcher, [(2, 5)])
        c = await submitted(batcher, [(3, 5)])
        gate.release.release()
        await gate.wait_started(2)
        # A full batch arriving while one runs is queued on the executor at once.
        d = await submitted(batcher, [(4, 5)] * 4)
        e = await submitted(batcher, [(5, 5)] * 4)
        for _ in range(3):
            gate.release.release()
        await asyncio.gather(a, b, c, d, e)
        await batcher.close()
    assert sorted(v for v, _ in gate.started[1]) == [2, 3]  # b and c coalesced
    assert len(gate.started) == 4


@pytest.mark.asyncio
async def test_queue_wait_reported_once_per_request_and_counters_drain():
    class Waits(BatcherMetrics):
        def __init__(self):
            self.waits, self.queue = [], []

        def queue_wait(self, seconds):
            self.waits.append(seconds)

        def queue_changed(self, items, requests):
            self.queue.append((items, requests))

    rec = Waits()
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool, max_batch_items=3, metrics=rec)
        await asyncio.gather(*(batcher.submit([(i, 4)] * 5) for i in range(4)))  # each split over 2+ batches
        await batcher.close()
    assert len(rec.waits) == 4 and all(w >= 0 for w in rec.waits)
    assert rec.queue[-1] == (0, 0)
    assert max(items for items, _ in rec.queue) == 20


@pytest.mark.asyncio
async def test_closed_batcher_refuses_new_work():
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool)
        assert (await batcher.submit([(5, 1)])).tolist() == [5.0]
        await batcher.close()
        with pytest.raises(Exception, match="shutting down"):
            await batcher.submit([(1, 1)])
    with pytest.raises(ValueError):
        DynamicBatcher(score, lambda e: e[1], None, workers=0)
    with pytest.raises(ValueError):
        DynamicBatcher(score, lambda e: e[1], None, prefetch=-1)


@pytest.mark.asyncio
async def test_workers_run_batches_in_parallel_and_small_rounds_are_spread():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=32, workers=2)
        one = asyncio.ensure_future(batcher.submit([(i, 10) for i in range(4)]))
        await gate.wait_started(2)  # both halves of the one request run at once
        assert sorted(len(b) for b in gate.started) == [2, 2]
        # A request arriving while both workers are busy waits for the next free one.
        two = await submitted(batcher, [(9, 10)])
        assert len(gate.started) == 2
        gate.release.release()
        await gate.wait_started(3)
        assert [v for v, _ in gate.started[2]] == [9]
        gate.release.release()
        gate.release.release()
        assert (await one).tolist() == [0.0, 1.0, 2.0, 3.0]
        assert (await two).tolist() == [9.0]
        await batcher.close()


@pytest.mark.asyncio
async def test_round_batches_are_evened_out():
    rec = Recorder()
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(score, lambda e: e[1], pool, max_batch_items=4, metrics=rec)
        await batcher.submit([(i, 5) for i in range(5)])
        await batcher.close()
    assert sorted(b.items for b in rec.batches) == [2, 3]  # not 4 + 1


class KeyedGate(Gate):
    """Each batch waits until the test opens the gate of its first item's value."""

    def __init__(self, loop):
        super().__init__(loop)
        self.gates: dict[int, threading.Event] = {}
        self.lock = threading.Lock()

    def gate(self, value: int) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(value, threading.Event())

    def __call__(self, items):
        self.loop.call_soon_threadsafe(self.started.append, list(items))
        if not self.gate(items[0][0]).wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return score(items)


@pytest.mark.asyncio
async def test_a_batch_finishing_before_an_older_one_frees_its_worker_at_once():
    loop = asyncio.get_running_loop()
    gate = KeyedGate(loop)
    with ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=1, workers=2)
        a, b = (asyncio.ensure_future(batcher.submit([(v, 10)])) for v in (0, 1))
        await gate.wait_started(2)
        older, newer = gate.started[0][0][0], gate.started[1][0][0]
        c = asyncio.ensure_future(batcher.submit([(2, 10)]))
        gate.gate(newer).set()  # the newer batch finishes while the older one still runs
        await gate.wait_started(3)  # ... and c takes the freed worker without waiting for it
        assert gate.started[2] == [(2, 10)]
        assert (await (b if newer == 1 else a)).tolist() == [float(newer)]
        gate.gate(older).set()
        gate.gate(2).set()
        assert (await c).tolist() == [2.0]
        assert sorted([(await a).tolist()[0], (await b).tolist()[0]]) == [0.0, 1.0]
        await batcher.close()


@pytest.mark.asyncio
async def test_a_lone_request_on_an_idle_batcher_starts_at_once_whatever_the_wait():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(2) as pool:
        # An hour's wait: if an idle batcher waited for company, nothing would start.
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=8, max_wait_s=3600.0, workers=2)
        lone = asyncio.ensure_future(batcher.submit([(7, 5)]))
        await gate.wait_started(1)
        assert gate.started == [[(7, 5)]]
        gate.release.release()
        assert (await lone).tolist() == [7.0]
        # Idle again: the next lone request starts at once too.
        again = asyncio.ensure_future(batcher.submit([(8, 5)]))
        await gate.wait_started(2)
        gate.release.release()
        assert (await again).tolist() == [8.0]
        await batcher.close()


@pytest.mark.asyncio
async def test_under_load_a_partial_batch_waits_for_company_instead_of_taking_the_free_worker():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=8, max_wait_s=3600.0, workers=2)
        first = asyncio.ensure_future(batcher.submit([(1, 5)]))
        await gate.wait_started(1)  # idle: started at once, one worker busy, one free
        second = asyncio.ensure_future(batcher.submit([(2, 5)]))
        third = asyncio.ensure_future(batcher.submit([(3, 5)]))
        await asyncio.sleep(0.02)
        assert len(gate.started) == 1  # within the window: they wait for company, not the free worker
        gate.release.release()  # the running batch ends: idle, so what is queued starts at once (spread over both workers)
        await gate.wait_started(3)
        assert sorted(v for batch in gate.started[1:] for v, _ in batch) == [2, 3]
        gate.release.release()
        gate.release.release()
        assert [(await f).tolist() for f in (first, second, third)] == [[1.0], [2.0], [3.0]]
        await batcher.close()


@pytest.mark.asyncio
async def test_under_load_a_partial_batch_takes_the_free_worker_when_its_wait_ends():
    loop = asyncio.get_running_loop()
    gate = Gate(loop)
    with ThreadPoolExecutor(2) as pool:
        batcher = DynamicBatcher(gate, lambda e: e[1], pool, max_batch_items=8, max_wait_s=0.001, workers=2)
        first = asyncio.ensure_future(batcher.submit([(1, 5)]))
        await gate.wait_started(1)
        second = asyncio.ensure_future(batcher.submit([(2, 5)]))
        await gate.wait_started(2)  # the first batch still runs: the second started on the free worker
        assert gate.started[1] == [(2, 5)]
        gate.release.release()
        gate.release.release()
        assert (await first).tolist() == [1.0] and (await second).tolist() == [2.0]
        await batcher.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("queued", [0, 1])
async def test_a_queued_slot_hands_a_partial_batch_to_the_busy_executor(queued):
    """With every inference thread busy, ``queued=1`` hands the next partial batch to the
    executor once it has waited max_wait_s, so a later request cannot join it; without a queued
    slot the batcher keeps both for the first free thread, which then runs them as one batch."""
    release = threading.Event()
    batches: list[list[int]] = []

    def blocking(items):
        batches.append([v for v, _ in items])
        if len(batches) == 1:
            release.wait(10)
        return score(items)

    with ThreadPoolExecutor(1) as pool:  # workers + prefetch threads: the queued batch waits in its queue
        batcher = DynamicBatcher(blocking, lambda e: e[1], pool, max_batch_items=8, max_batch_tokens=10_000,
                                 max_wait_s=0.01, workers=1, queued=queued)
        first = await submitted(batcher, [(1, 5)])  # idle: starts at once, then blocks its thread
        second = await submitted(batcher, [(2, 5)])
        await asyncio.sleep(0.1)  # past max_wait_s: with a queued slot, handed to the executor
        third = await submitted(batcher, [(3, 5)])
        await asyncio.sleep(0.1)
        assert len(batches) == 1  # the executor's only thread is still on the first batch
        release.set()
        results = await asyncio.wait_for(asyncio.gather(first, second, third), 10)
        await batcher.close()
    assert [r.tolist() for r in results] == [[1.0], [2.0], [3.0]]
    assert batches == ([[1], [2], [3]] if queued else [[1], [2, 3]])


def test_queued_must_not_be_negative():
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError):
        DynamicBatcher(score, lambda e: e[1], pool, queued=-1)
