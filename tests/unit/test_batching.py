"""The batcher's scheduling logic, with a deterministic scoring function standing in for the model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.common.batching import BatcherMetrics, DynamicBatcher, plan_batches
from services.common.errors import ResourceExhausted


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
        first = asyncio.ensure_future(batcher.submit([(1, 5)] * 8))
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted, match="queue holds 10"):
            await batcher.submit([(2, 5)] * 3)
        assert rec.rejections == 1
        release.set()
        assert (await first).tolist() == [1.0] * 8
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
