"""The retrieval service through a background optimization of a collection: searches answered
before, during and after the build and the swap, none failed, every write made during the build
readable after the swap. The optimizer child is held (SIGSTOP) while the writes and searches run,
so "during" is an order, not a time window. And a disk below EDGE_MIN_FREE_DISK_MB: writes are
RESOURCE_EXHAUSTED naming the path and the free space, reads go on, nothing is lost."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from search.v1 import common_pb2, retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc

COLLECTION = "build"
WORDS = ("volcano lava ash eruption magma crater basalt pumice geyser caldera glacier fjord moraine "
         "tundra permafrost delta estuary lagoon reef atoll mangrove savanna steppe prairie canyon").split()


def doc(i: int) -> common_pb2.Document:
    words = [WORDS[(i * k + 3) % len(WORDS)] for k in range(1, 9)]
    return common_pb2.Document(id=f"doc-{i}", title=words[0], text=" ".join(words) + f" number {i}")


def optimizer_child(pid: int) -> int | None:
    """The retrieval process's optimizer child (edge_optimizer), if one runs."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"edge_optimizer" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return None


def gauge(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def wait_for(predicate, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_searches_and_writes_through_a_background_build_and_swap(fresh_stack):
    fresh_stack.env_overrides["retrieval"] = {
        "EDGE_OPTIMIZE_AFTER_POINTS": "200", "EDGE_OPTIMIZE_QUIET_SECONDS": "1",
        "EDGE_INDEXING_THRESHOLD_KB": "1",  # every segment gets an HNSW graph, however small
        "RETRIEVAL_QUERY_CACHE_SIZE": "0", "RETRIEVAL_STORE_STATS_SECONDS": "1",
    }
    proc = fresh_stack.start("retrieval")
    metrics = f"http://127.0.0.1:{fresh_stack.metrics_ports['retrieval']}/metrics"
    channel = grpc.insecure_channel(fresh_stack.address("retrieval"))
    stub = pb_grpc.RetrievalServiceStub(channel)
    stub.CreateCollection(pb.RetrievalServiceCreateCollectionRequest(name=COLLECTION), timeout=60)
    # One write past EDGE_OPTIMIZE_AFTER_POINTS: exactly one build follows.
    stub.Upsert(pb.RetrievalServiceUpsertRequest(collection=COLLECTION, documents=[doc(i) for i in range(300)]), timeout=300)

    # The build starts after the writes pause; hold its child so everything below happens during it.
    child = wait_for(lambda: optimizer_child(proc.pid), "the optimizer child")
    os.kill(child, signal.SIGSTOP)
    assert gauge(metrics, "search_retrieval_store_optimizing") == 1.0

    phase = ["during"]
    answered = {"during": 0, "after": 0}
    failures: list[str] = []
    stop = threading.Event()

    def searcher(k: int) -> None:
        i = k
        while not stop.is_set():
            query = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} number {i}"  # distinct queries
            current = phase[0]
            try:
                reply = stub.Retrieve(pb.RetrieveRequest(collection=COLLECTION, query=query, limit=10,
                                                         mode=common_pb2.RETRIEVAL_MODE_HYBRID), timeout=60)
                assert reply.candidates
                answered[current] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(f"{current}: {exc!r}"[:300])
            i += 4

    searchers = [threading.Thread(target=searcher, args=(k,)) for k in range(4)]
    for t in searchers:
        t.start()
    written = [doc(i) for i in range(1000, 1060)]
    for start in range(0, len(written), 20):  # acknowledged while the child holds the copy
        reply = stub.Upsert(pb.RetrievalServiceUpsertRequest(collection=COLLECTION, documents=written[start:start + 20]),
                            timeout=120)
        assert reply.upserted == 20
    stub.Delete(pb.RetrievalServiceDeleteRequest(collection=COLLECTION, ids=["doc-0", "doc-1"]), timeout=60)
    wait_for(lambda: answered["during"] >= 20, "searches during the build")

    os.kill(child, signal.SIGCONT)  # the build finishes, the writes are replayed, the copy is swapped in
    wait_for(lambda: gauge(metrics, "search_retrieval_store_optimizing") == 0.0, "the swap")
    phase[0] = "after"
    wait_for(lambda: answered["after"] >= 20, "searches after the swap")
    stop.set()
    for t in searchers:
        t.join()

    assert failures == [], failures[:5]
    assert answered["during"] >= 20 and answered["after"] >= 20
    got = stub.GetDocuments(pb.RetrievalServiceGetDocumentsRequest(collection=COLLECTION, ids=[d.id for d in written]),
                            timeout=60)
    assert list(got.missing_ids) == [] and len(got.documents) == len(written)
    gone = stub.GetDocuments(pb.RetrievalServiceGetDocumentsRequest(collection=COLLECTION, ids=["doc-0", "doc-1"]),
                             timeout=60)
    assert sorted(gone.missing_ids) == ["doc-0", "doc-1"]
    described = stub.DescribeCollection(pb.RetrievalServiceDescribeCollectionRequest(name=COLLECTION), timeout=60)
    assert described.collection.document_count == 300 + len(written) - 2
    # the swapped-in shard is the optimized one (its graphs), not the plain one
    collection_dir = fresh_stack.tmp / "qdrant" / "collections" / COLLECTION
    assert (collection_dir / "optimized.json").exists()
    shards = sorted(p.name for p in collection_dir.iterdir() if p.is_dir())
    assert shards == ["shard.1"] and "shard.1" in (collection_dir / "current").read_text()
    assert "collection optimized in the background" in fresh_stack.log_text("retrieval")
    channel.close()


def test_a_disk_below_the_reserve_refuses_writes_with_resource_exhausted(fresh_stack):
    fresh_stack.start("retrieval")
    with grpc.insecure_channel(fresh_stack.address("retrieval")) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        stub.CreateCollection(pb.RetrievalServiceCreateCollectionRequest(name=COLLECTION), timeout=60)
        stub.Upsert(pb.RetrievalServiceUpsertRequest(collection=COLLECTION, documents=[doc(i) for i in range(20)]), timeout=120)
    fresh_stack.stop("retrieval")
    # More reserve than the disk has free: as if the disk were full.
    fresh_stack.env_overrides["retrieval"] = {"EDGE_MIN_FREE_DISK_MB": str(10**9)}
    fresh_stack.start("retrieval")
    with grpc.insecure_channel(fresh_stack.address("retrieval")) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Upsert(pb.RetrievalServiceUpsertRequest(collection=COLLECTION, documents=[doc(99)]), timeout=120)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = refused.value.details()
        assert str(fresh_stack.tmp / "qdrant") in message and "MB free" in message and "EDGE_MIN_FREE_DISK_MB" in message
        reply = stub.Retrieve(pb.RetrieveRequest(collection=COLLECTION, query="volcano lava", limit=5), timeout=60)
        assert reply.candidates  # reads go on
        described = stub.DescribeCollection(pb.RetrievalServiceDescribeCollectionRequest(name=COLLECTION), timeout=60)
        assert described.collection.document_count == 20  # nothing acknowledged lost, nothing half-written
