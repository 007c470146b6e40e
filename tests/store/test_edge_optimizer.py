"""Optimizing an embedded collection while it serves: HNSW is built in a child process on a
copy, writes made meanwhile are replayed, searches never stop, nothing is lost."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.retrieval.backends import base
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.edge_build import OPTIMIZING_DIR, REPLACED_DIR, SHARD_DIR, current_shard, set_current, settle

DIM = 384
N = 7000  # past the engine's indexing threshold (about 6,500 vectors of 384 floats per segment)


def points(rng, start, n):
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [
        base.PointIn(id=f"00000000-0000-0000-0000-{i:012d}", dense=v.tolist(), sparse=base.SparseVector((i % 50 + 1,), (1.0,)),
                     payload={"doc_id": f"d{i}", "passage": 0})
        for i, v in zip(range(start, start + n), vectors)
    ]


def test_background_optimization_keeps_serving_and_loses_nothing(tmp_path):
    rng = np.random.default_rng(7)
    backend = EdgeBackend(tmp_path, search_threads=1)
    backend.create_collection(base.CollectionSchema("c", DIM, True))
    vectors, first = points(rng, 0, N)
    for i in range(0, N, 500):
        backend.upsert("c", first[i:i + 500])
    before = backend.stats("c")

    searches, failures, latencies = [0], [], []
    done = threading.Event()

    def search_forever():
        while not done.is_set():
            q = base.Nearest(base.DENSE, vectors[searches[0] % N].tolist(), 10)
            t = time.perf_counter()
            try:
                backend.query("c", [q])
                searches[0] += 1
                latencies.append(time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(exc)
            time.sleep(0.002)

    result = {}
    optimizer = threading.Thread(target=lambda: result.update(backend.optimize_in_background("c")))
    reader = threading.Thread(target=search_forever)
    reader.start()
    optimizer.start()
    time.sleep(0.5)
    # Writes while the child optimizes the copy: they must all be in the swapped-in shard.
    _, late = points(rng, N, 300)
    for i in range(0, 300, 50):
        backend.upsert("c", late[i:i + 50])
    backend.delete_ids("c", [first[0].id])
    searches_during = searches[0]
    optimizer.join(timeout=300)
    done.set()
    reader.join()

    assert not optimizer.is_alive() and result, "the optimization did not finish"
    print(f"optimized in the background: {result}; {searches[0]} searches meanwhile, "
          f"p50 {np.percentile(latencies, 50) * 1000:.1f} ms, max {max(latencies) * 1000:.0f} ms")
    assert not failures, failures[:3]
    assert searches_during > 10, "searches stopped while the child process optimized"
    assert backend.count("c") == N + 300 - 1
    assert set(backend.existing("c", [first[0].id, late[-1].id, first[1].id])) == {late[-1].id, first[1].id}
    after = backend.stats("c")
    assert after.indexed_vectors > before.indexed_vectors, (before, after)  # the HNSW graph was built
    hits = backend.query("c", [base.Nearest(base.DENSE, vectors[5].tolist(), 1)])[0]
    assert hits[0].id == first[5].id
    assert result["replayed_writes"] >= 1 and result["open_seconds"] < 60
    collection = tmp_path / "collections" / "c"
    assert current_shard(collection).name == "shard.1"
    assert sorted(p.name for p in collection.iterdir() if p.is_dir()) == ["shard.1"]  # the old shard is gone
    backend.close()

    reopened = EdgeBackend(tmp_path)
    try:
        assert reopened.count("c") == N + 300 - 1
    finally:
        reopened.close()


@pytest.mark.parametrize(
    "present,expected_source",
    [
        ({SHARD_DIR, OPTIMIZING_DIR}, SHARD_DIR),  # crashed while the child ran: keep the served shard
        ({REPLACED_DIR, OPTIMIZING_DIR}, OPTIMIZING_DIR),  # between the two renames: the copy is complete
        ({SHARD_DIR, REPLACED_DIR}, SHARD_DIR),  # after the swap, before the clean-up
        ({REPLACED_DIR}, REPLACED_DIR),  # nothing else left: the old shard
    ],
)
def test_an_interrupted_swap_of_the_older_layout_is_finished_at_start(tmp_path, present, expected_source):
    for name in present:
        (tmp_path / name).mkdir()
        (tmp_path / name / "origin").write_text(name)
    settle(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SHARD_DIR]
    assert (tmp_path / SHARD_DIR / "origin").read_text() == expected_source


@pytest.mark.parametrize(
    "current,present",
    [
        (None, {"shard", "shard.1"}),  # crashed before the first swap's commit: the copy goes
        ("shard.1", {"shard", "shard.1"}),  # after it: the old shard goes
        ("shard.1", {"shard.1", "shard.2"}),  # crashed before the second swap's commit
        ("shard.2", {"shard.1", "shard.2"}),  # after it
    ],
)
def test_the_shard_named_current_is_kept_and_the_others_go(tmp_path, current, present):
    for name in present:
        (tmp_path / name).mkdir()
        (tmp_path / name / "origin").write_text(name)
    if current:
        set_current(tmp_path, tmp_path / current)
    settle(tmp_path)
    kept = current or SHARD_DIR
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [kept]
    assert (tmp_path / kept / "origin").read_text() == kept
    assert current_shard(tmp_path).name == kept


def test_a_missing_current_shard_deletes_nothing(tmp_path):
    (tmp_path / "shard.1").mkdir()
    set_current(tmp_path, tmp_path / "shard.2")  # names a shard that is not there
    settle(tmp_path)
    assert (tmp_path / "shard.1").exists()


def test_a_late_interaction_collection_is_optimized_in_the_background(tmp_path):
    """The child loads the copy with the collection's own shard config (the late-interaction
    multivector included), so the swapped-in shard still answers MaxSim rescoring."""
    rng = np.random.default_rng(11)
    backend = EdgeBackend(tmp_path, search_threads=1)
    backend.create_collection(base.CollectionSchema("li", 8, True, late_dimension=4))
    written = []
    for i in range(300):
        tokens = rng.standard_normal((3, 4)).astype(np.float32)
        dense = rng.standard_normal(8).astype(np.float32)
        written.append(base.PointIn(id=f"00000000-0000-0000-0000-{i:012d}", dense=dense.tolist(),
                                    sparse=base.SparseVector((i % 7 + 1,), (1.0,)), payload={"doc_id": str(i)},
                                    late=tokens.tolist()))
    backend.upsert("li", written)
    query = base.Rescore((base.Nearest(base.DENSE, written[0].dense, 20),), base.LATE, written[0].late, 5)
    before = backend.query("li", [query])[0]
    try:
        result = backend.optimize_in_background("li")
        assert result["points"] == 300
        after = backend.query("li", [query])[0]
        assert [h.id for h in after] == [h.id for h in before]
        assert backend.count("li") == 300
    finally:
        backend.close()


def test_the_serving_code_never_runs_the_optimizer_in_its_own_process():
    """Only the child (edge_optimizer.py) and the offline paths call the engine's optimize():
    EdgeBackend.optimize, used by `searchctl store optimize` and benchmarks' preparation."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "services"
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if re.search(r"\.optimize\(", p.read_text()))
    assert callers == ["cli/bench/prepared.py", "cli/store_cmd.py", "retrieval/backends/edge.py",
                       "retrieval/backends/edge_optimizer.py"]
    edge = (root / "retrieval/backends/edge.py").read_text()
    assert len(re.findall(r"\.optimize\(", edge)) == 1  # EdgeBackend.optimize, the offline method
    serving = [p for p in (root / "retrieval").rglob("*.py") if p.name not in ("edge.py", "edge_optimizer.py")]
    assert not [p for p in serving if re.search(r"\.optimize\(", p.read_text())]


def test_optimize_on_start_builds_in_a_child_process(tmp_path):
    rng = np.random.default_rng(5)
    backend = EdgeBackend(tmp_path, search_threads=1)
    backend.create_collection(base.CollectionSchema("c", DIM, True))
    backend.upsert("c", points(rng, 0, 200)[1])
    backend.close()
    started = EdgeBackend(tmp_path, search_threads=1, optimize_on_start=True)
    try:
        (build,) = started.builds
        assert build["points"] == 200 and build["cpu_seconds"] >= 0 and build["peak_rss_mb"] > 0  # the child's figures
        assert started.count("c") == 200
    finally:
        started.close()


def test_the_search_breadth_follows_the_collection_size(tmp_path):
    from services.retrieval.backends.edge_shard import MAX_HNSW_EF, hnsw_ef_for

    assert hnsw_ef_for(256, 400_000, 500_000) == 256
    assert hnsw_ef_for(256, 1_000_000, 500_000) == 512
    assert hnsw_ef_for(256, 10**9, 500_000) == MAX_HNSW_EF
    assert hnsw_ef_for(256, 10**7, 0) == 256 and hnsw_ef_for(None, 10**7, 500_000) is None
    rng = np.random.default_rng(9)
    backend = EdgeBackend(tmp_path, search_threads=1, hnsw_ef=100, hnsw_ef_points=200)
    try:
        backend.create_collection(base.CollectionSchema("c", DIM, True))
        _, written = points(rng, 0, 600)
        backend.upsert("c", written)
        assert backend.search_breadth("c") == 300
        backend.delete_ids("c", [p.id for p in written[:300]])
        assert backend.search_breadth("c") == 150
        backend.delete_ids("c", [p.id for p in written[300:500]])
        assert backend.search_breadth("c") == 100  # never below QDRANT_HNSW_EF
        backend.close()
        reopened = EdgeBackend(tmp_path, search_threads=1, hnsw_ef=100, hnsw_ef_points=50)
        assert reopened.search_breadth("c") == 200  # counted again at open: 100 points
        reopened.close()
    finally:
        backend.close()


def test_a_collection_searches_in_the_calling_thread_until_it_is_optimized(tmp_path, monkeypatch):
    """EDGE_SEARCH_THREADS=0: a shard of plain segments gets no search pool (its searches are
    short; a hand-off cost more than it gave, docs/BENCHMARKS.md issue 22); once optimized, and
    after a restart, its HNSW segments are searched by a pool."""
    from services.retrieval.backends import edge

    chosen = []
    real = edge.shard_config

    def recording(schema, tuning, search_threads):
        chosen.append(search_threads)
        return real(schema, tuning, search_threads)

    monkeypatch.setattr(edge, "shard_config", recording)
    monkeypatch.setattr(edge, "cpus", lambda: 4)  # the pool's size does not depend on this machine's CPUs
    rng = np.random.default_rng(3)
    backend = EdgeBackend(tmp_path)
    backend.create_collection(base.CollectionSchema("c", DIM, True))
    vectors, batch = points(rng, 0, 300)
    backend.upsert("c", batch)
    assert backend.query("c", [base.Nearest(base.DENSE, vectors[0].tolist(), 3)])[0][0].id == batch[0].id
    assert chosen[-1] == 1
    backend.optimize_in_background("c")
    assert chosen[-1] == 4  # one shard open: min(4 CPUs, 2 per CPU x 4 // 2)
    assert backend.query("c", [base.Nearest(base.DENSE, vectors[1].tolist(), 3)])[0][0].id == batch[1].id
    backend.close()
    again = EdgeBackend(tmp_path)
    again.query("c", [base.Nearest(base.DENSE, vectors[2].tolist(), 3)])
    assert chosen[-1] == 4
    again.close()
    explicit = EdgeBackend(tmp_path, search_threads=2)
    explicit.query("c", [base.Nearest(base.DENSE, vectors[2].tolist(), 3)])
    assert chosen[-1] == 2
    explicit.close()
