"""The bounded caches (services/common/cache.py) and the three that use it: query embeddings,
rerank scores, Search results (with the collection write versions they depend on)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from search.v1 import search_service_pb2 as pb
from services.common import metrics
from services.common.cache import IF_VERSION_HEADER, NOT_MODIFIED_HEADER, VERSION_HEADER, BoundedCache, normalise_query
from services.gateway import result_cache
from services.gateway.result_cache import SearchResultCache
from services.reranker.score_cache import CachedReranker
from services.retrieval.query_cache import CachedQueryEmbedder
from services.retrieval.write_versions import VersionedBackend


def sample(name: str, **labels) -> float:
    return metrics.prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- BoundedCache


def test_lru_bound_hits_misses_and_evictions_are_counted():
    cache = BoundedCache("test_lru", 2)
    before = {o: sample("search_cache_lookups_total", cache="test_lru", outcome=o) for o in ("hit", "miss")}
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None and cache.get("c") == 3 and len(cache) == 2
    assert (cache.hits, cache.misses, cache.evictions) == (2, 1, 1)
    assert sample("search_cache_lookups_total", cache="test_lru", outcome="hit") - before["hit"] == 2
    assert sample("search_cache_lookups_total", cache="test_lru", outcome="miss") - before["miss"] == 1
    assert sample("search_cache_evictions_total", cache="test_lru") == 1
    assert sample("search_cache_entries", cache="test_lru") == 2
    assert sample("search_cache_capacity_entries", cache="test_lru") == 2


def test_byte_bound_evicts_and_refuses_values_larger_than_the_cache():
    cache = BoundedCache("test_bytes", 100, max_bytes=10, size_of=len)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    cache.put("c", b"123")  # 13 bytes: a goes
    assert cache.get("a") is None and cache.bytes == 8
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None and cache.bytes == 8


def test_zero_entries_is_off():
    cache = BoundedCache("test_off", 0)
    cache.put("a", 1)
    assert not cache.enabled and cache.get("a") is None and len(cache) == 0


# --------------------------------------------------------------------------- query embeddings


class FakeEmbedder:
    """Stands in for the batched embedder, which the query cache wraps."""

    name, dimension, provider, max_length, model_dir, query_prefix = "fake-model", 3, "cpu", 16, None, "q: "

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed_queries(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    def embed_documents(self, texts):
        return np.zeros((len(texts), 3), dtype=np.float32)


def test_query_embeddings_are_cached_by_normalised_text():
    inner = FakeEmbedder()
    cached = CachedQueryEmbedder(inner, 10, identity="fake-model|x")
    first = cached.embed_queries(["what  is\tBM25 ?"])
    again = cached.embed_queries([" what is BM25 ? ", "other"])
    assert inner.calls == [["what is BM25 ?"], ["other"]]
    np.testing.assert_array_equal(first[0], again[0])
    assert cached.name == "fake-model" and cached.dimension == 3  # the rest is the wrapped embedder's
    with pytest.raises(ValueError):
        cached.cache.get(("fake-model|x", "what is BM25 ?"))[0] = 1.0  # stored vectors are read-only
    assert normalise_query("Cafe\u0301  au\nlait") == "Caf\u00e9 au lait"


def test_query_cache_keys_on_the_model_identity_and_can_be_off():
    inner = FakeEmbedder()
    a = CachedQueryEmbedder(inner, 10, identity="model-a")
    b = CachedQueryEmbedder(inner, 10, identity="model-b")
    b.cache = a.cache  # one store shared by two models: still separate entries
    a.embed_queries(["q"])
    b.embed_queries(["q"])
    assert inner.calls == [["q"], ["q"]]
    off = CachedQueryEmbedder(inner, 0, identity="model-a")
    off.embed_queries(["q"])
    off.embed_queries(["q"])
    assert inner.calls[-2:] == [["q"], ["q"]]


# --------------------------------------------------------------------------- rerank scores


class FakeReranker:
    class encoder:  # noqa: N801 - stands in for the CrossEncoder
        name = "fake-cross-encoder"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def score(self, query, passages):
        self.calls.append(list(passages))
        return np.array([float(len(query) + len(p)) for p in passages], dtype=np.float32)


async def test_rerank_scores_are_cached_per_query_and_content():
    inner = FakeReranker()
    cached = CachedReranker(inner, 100, identity="fake")
    first = await cached.score("q", ["alpha", "beta"])
    second = await cached.score("q ", ["beta", "gamma", "alpha"])
    assert inner.calls == [["alpha", "beta"], ["gamma"]]  # only the new passage is scored
    assert list(second) == [first[1], len("q ") + len("gamma"), first[0]]
    await cached.score("q", ["alpha edited"])  # new content, new key
    await cached.score("another query", ["alpha"])  # another query, new key
    assert inner.calls[-2:] == [["alpha edited"], ["alpha"]]
    await cached.score("q", ["alpha"], ids=["doc-1"])  # a document id is part of the key
    assert inner.calls[-1] == ["alpha"]


# --------------------------------------------------------------------------- collection versions


def test_every_write_gives_the_collection_a_new_version_that_never_repeats(tmp_path):
    from services.common.errors import NotFound
    from services.retrieval.backends.base import PointIn, CollectionSchema, Filter
    from services.retrieval.backends.edge import EdgeBackend

    edge = EdgeBackend(tmp_path / "a", search_threads=1)
    backend = VersionedBackend(edge)
    point = PointIn(id="00000000-0000-0000-0000-000000000001", dense=[1.0, 0.0, 0.0], sparse=None,
                    payload={"doc_id": "a", "passage": 0})
    try:
        seen = {backend.version("c")}
        backend.create_collection(CollectionSchema(name="c", dense_dimension=3, sparse=False))
        for write in (lambda: backend.upsert("c", [point]), lambda: backend.update_metadata("c", {"k": 1}),
                      lambda: backend.delete_ids("c", [point.id]), lambda: backend.delete_where("c", Filter()),
                      lambda: backend.delete_collection("c"),
                      lambda: backend.create_collection(CollectionSchema(name="c", dense_dimension=3, sparse=False))):
            before = backend.version("c")
            backend.list_collections()
            assert backend.version("c") == before  # reads do not change it
            write()
            assert backend.version("c") not in seen
            seen.add(backend.version("c"))
        before = backend.version("gone")
        with pytest.raises(NotFound):
            backend.upsert("gone", [point])  # a failed write may have written part of its points
        assert backend.version("gone") != before
    finally:
        backend.close()
    again = EdgeBackend(tmp_path / "a", search_threads=1)  # another process (a restart): other tokens
    try:
        assert again.write_version("c") not in seen
    finally:
        again.close()


def test_server_backend_versions_live_in_the_collection_metadata():
    from qdrant_client import QdrantClient

    from services.retrieval.backends.base import CollectionSchema
    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    client = QdrantClient(":memory:")  # qdrant-client's local mode stands in for the server
    replica_a, replica_b = VersionedBackend(QdrantServerBackend(client)), VersionedBackend(QdrantServerBackend(client))
    assert replica_a.version("c") == ""  # no such collection
    replica_a.create_collection(CollectionSchema(name="c", dense_dimension=3, sparse=True, metadata={"m": 1}))
    first = replica_b.version("c")
    replica_a.update_metadata("c", {"n": 2})  # a write through another replica
    assert replica_b.version("c") not in ("", first)
    assert replica_b.schema("c").metadata == {"m": 1, "n": 2}  # the schema is kept
    replica_a.delete_collection("c")
    assert replica_b.version("c") == ""


# --------------------------------------------------------------------------- Search results


def test_the_result_key_is_the_whole_normalised_request():
    key = SearchResultCache.key
    base = pb.SearchRequest(collection="c", query="what is bm25", top_k=5)
    assert key(base) == key(pb.SearchRequest(collection="c", query="  what is\nbm25 ", top_k=5))
    for other in (pb.SearchRequest(collection="d", query="what is bm25", top_k=5),
                  pb.SearchRequest(collection="c", query="what is BM25", top_k=5),
                  pb.SearchRequest(collection="c", query="what is bm25", top_k=6),
                  pb.SearchRequest(collection="c", query="what is bm25", top_k=5, mode=2)):
        assert key(other) != key(base)
    reranked = pb.SearchRequest(collection="c", query="what is bm25", top_k=5)
    reranked.rerank.enabled = False
    assert key(reranked) != key(base)


async def test_a_held_answer_is_served_only_when_retrieval_says_it_is_current():
    cache = SearchResultCache(10, 1 << 20)
    request = pb.SearchRequest(collection="c", query="q")
    versions = {"c": "v1"}
    computed = []

    async def pipeline(req):  # what SearchPipeline.search does with the cache's Retrieve options
        options = result_cache.retrieve_options()
        (header, held_version), = options["metadata"]
        assert header == IF_VERSION_HEADER
        options["trailers"][VERSION_HEADER] = versions["c"]
        if held_version == versions["c"]:
            options["trailers"][NOT_MODIFIED_HEADER] = "1"
        if result_cache.answered_from_cache():
            return pb.SearchResponse()
        computed.append(versions["c"])
        return pb.SearchResponse(results=[pb.SearchResult(id=f"doc@{versions['c']}")])

    assert (await cache.search(pipeline, request)).results[0].id == "doc@v1"
    assert (await cache.search(pipeline, request)).results[0].id == "doc@v1"  # served from the cache
    versions["c"] = "v2"  # a write
    assert (await cache.search(pipeline, request)).results[0].id == "doc@v2"
    assert computed == ["v1", "v2"]
    assert result_cache.retrieve_options() == {}  # nothing leaks out of a Search


async def test_degraded_answers_and_answers_without_a_version_are_not_kept():
    cache = SearchResultCache(10, 1 << 20)
    cache.put(b"k", {VERSION_HEADER: "v1"}, pb.SearchResponse(degraded=True))
    cache.put(b"k2", {}, pb.SearchResponse())
    assert cache.get(b"k") is None and cache.get(b"k2") is None
    off = SearchResultCache(0, 0)

    async def pipeline(req):
        assert result_cache.retrieve_options() == {}  # off: no version header at all
        return pb.SearchResponse()

    await off.search(pipeline, pb.SearchRequest(collection="c", query="q"))
    await asyncio.sleep(0)
