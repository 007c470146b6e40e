"""Queries combined into one engine call: each caller gets its own results, a lone caller is
not held, and one caller's bad query fails nobody else's (order and counts, no timing)."""

from __future__ import annotations

import threading
import time

import pytest

from services.retrieval.backends.edge_query_batching import QueryCombiner


class Engine:
    """Answers each query q with q * 10; the first call can be held on a gate."""

    def __init__(self, hold_first: bool = False) -> None:
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list] = []

    def run(self, queries: list) -> list:
        self.entered.set()
        self.gate.wait()
        self.batches.append(list(queries))
        if "bad" in queries:
            raise ValueError("bad query")
        return [q * 10 for q in queries]


def wait_until(predicate) -> None:
    for _ in range(10_000):
        if predicate():
            return
        time.sleep(0.001)
    raise AssertionError("condition never held")


def test_a_lone_caller_runs_at_once():
    engine = Engine()
    combiner = QueryCombiner(engine.run)
    assert combiner.submit([1, 2]) == [10, 20]
    assert combiner.submit([3]) == [30]
    assert engine.batches == [[1, 2], [3]] and combiner.calls == 2


def test_callers_arriving_during_a_call_share_the_next_one():
    engine = Engine(hold_first=True)
    combiner = QueryCombiner(engine.run)
    results: dict[str, list] = {}

    def call(name, queries):
        results[name] = combiner.submit(queries)

    first = threading.Thread(target=call, args=("a", [1]))
    first.start()
    engine.entered.wait()  # a's call holds the engine
    others = [threading.Thread(target=call, args=(name, qs)) for name, qs in (("b", [2, 3]), ("c", [4]), ("d", [5, 6]))]
    for t in others:
        t.start()
    wait_until(lambda: combiner.waiting == 3)
    engine.gate.set()
    for t in [first, *others]:
        t.join()
    assert results == {"a": [10], "b": [20, 30], "c": [40], "d": [50, 60]}
    assert engine.batches[0] == [1] and sorted(engine.batches[1]) == [2, 3, 4, 5, 6]
    assert combiner.calls == 2 and combiner.queries == 6


def test_a_bad_query_fails_only_its_caller():
    engine = Engine(hold_first=True)
    combiner = QueryCombiner(engine.run)
    results: dict[str, object] = {}

    def call(name, queries):
        try:
            results[name] = combiner.submit(queries)
        except ValueError as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("a", [1]))
    first.start()
    engine.entered.wait()
    others = [threading.Thread(target=call, args=(name, qs)) for name, qs in (("b", [2]), ("c", ["bad"]), ("d", [5]))]
    for t in others:
        t.start()
    wait_until(lambda: combiner.waiting == 3)
    engine.gate.set()
    for t in [first, *others]:
        t.join()
    assert results["a"] == [10] and results["b"] == [20] and results["d"] == [50]
    assert isinstance(results["c"], ValueError)
    with pytest.raises(ValueError):
        combiner.submit(["bad"])
    assert combiner.submit([7]) == [70]  # and the combiner serves on


def test_the_embedded_backend_answers_the_same_with_batching(tmp_path):
    import numpy as np

    from services.retrieval.backends import base
    from services.retrieval.backends.edge import EdgeBackend

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    weights = rng.permutation(500) + 1.0  # distinct sparse scores: no ties to order
    plain = EdgeBackend(tmp_path / "plain", search_threads=1)
    batched = EdgeBackend(tmp_path / "batched", search_threads=1, query_batching=True)
    try:
        for backend in (plain, batched):
            backend.create_collection(base.CollectionSchema("c", 16, True))
            backend.upsert("c", [base.PointIn(f"00000000-0000-0000-0000-{i:012d}", v.tolist(),
                                              base.SparseVector((i % 9 + 1,), (float(w),)), {"doc_id": str(i)})
                                 for i, (v, w) in enumerate(zip(vectors, weights))])
        queries = [[base.Nearest(base.DENSE, vectors[i].tolist(), 5),
                    base.Nearest(base.SPARSE, base.SparseVector((i % 9 + 1,), (1.0,)), 5)] for i in range(40)]
        expected = [[[h.id for h in hits] for hits in plain.query("c", q)] for q in queries]
        got: dict[int, list] = {}

        def ask(k: int) -> None:
            for i in range(k, len(queries), 8):
                got[i] = [[h.id for h in hits] for hits in batched.query("c", queries[i])]

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [got[i] for i in range(len(queries))] == expected
    finally:
        plain.close()
        batched.close()
