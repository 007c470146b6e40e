"""Upsert -> Search -> Delete through the generated stubs against the three real servers."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from google.protobuf import json_format

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc

DOCS = [
    ("photosynthesis", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts.", {"topic": "biology", "year": 2019}),
    ("volcano", "Volcanoes", "A volcano is a rupture in the crust of a planet that lets hot lava, ash and gases escape from a magma chamber.", {"topic": "geology", "year": 2021}),
    ("sourdough", "Baking sourdough", "Sourdough bread rises thanks to a fermented starter of wild yeast and lactic acid bacteria mixed with flour and water.", {"topic": "cooking", "year": 2020}),
    ("tides", "Ocean tides", "Tides are the regular rise and fall of sea level caused by the gravitational pull of the Moon and the Sun.", {"topic": "geology", "year": 2018}),
    ("vaccines", "How vaccines work", "Vaccines train the immune system to recognise a pathogen by exposing it to a harmless antigen, so antibodies are ready.", {"topic": "biology", "year": 2022}),
    ("gpu", "Graphics processors", "A GPU runs thousands of threads in parallel, which makes it fast for matrix multiplication in deep learning.", {"topic": "computing", "year": 2023}),
]


def document(doc_id, title, text, payload) -> common_pb2.Document:
    d = common_pb2.Document(id=doc_id, title=title, text=text)
    json_format.ParseDict(payload, d.payload)
    return d


@pytest.fixture
def collection(stack):
    name = f"t{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(
            pb.CreateCollectionRequest(
                name=name,
                filter_fields=[
                    common_pb2.FilterField(key="topic", type=common_pb2.FIELD_TYPE_KEYWORD),
                    common_pb2.FilterField(key="year", type=common_pb2.FIELD_TYPE_INTEGER),
                ],
            ),
            timeout=30,
        )
        stub.Upsert(pb.UpsertRequest(collection=name, documents=[document(*d) for d in DOCS]), timeout=60)
    return name


@pytest.fixture
def stub(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        yield pb_grpc.SearchServiceStub(channel)


def search(stub, collection, query, **kw) -> pb.SearchResponse:
    """A Search that always reranks (the tests of the reranking path; the policies: test_rerank_policy.py)."""
    kw.setdefault("rerank", pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS))
    return stub.Search(pb.SearchRequest(collection=collection, query=query, **kw), timeout=60)


def test_relevant_document_ranks_first_after_reranking(stub, collection):
    cases = {
        "why does the sea level go up and down every day?": "tides",
        "how do plants make sugar from light": "photosynthesis",
        "what makes bread dough rise without commercial yeast": "sourdough",
        "hardware for training neural networks quickly": "gpu",
    }
    for query, expected in cases.items():
        response = search(stub, collection, query, top_k=3)
        assert response.reranked and not response.degraded
        assert response.results[0].id == expected, (query, [r.id for r in response.results])
        top = response.results[0]
        assert top.HasField("rerank_score") and top.title and top.text
        assert json_format.MessageToDict(top.payload)["topic"]


def test_results_are_ranked_and_carry_both_scores(stub, collection):
    response = search(stub, collection, "immune system antibodies", top_k=4)
    assert len(response.results) == 4
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert all(r.HasField("rerank_score") for r in response.results)
    assert len({r.id for r in response.results}) == 4


def test_search_without_rerank_returns_retrieval_ranking(stub, collection):
    request = pb.SearchRequest(collection=collection, query="volcanic eruptions and magma", top_k=2)
    request.rerank.enabled = False
    response = stub.Search(request, timeout=30)
    assert not response.reranked
    assert response.results[0].id == "volcano"
    assert not response.results[0].HasField("rerank_score")
    assert response.results[0].score == pytest.approx(response.results[0].retrieval_score)


@pytest.mark.parametrize("mode", [common_pb2.RETRIEVAL_MODE_DENSE, common_pb2.RETRIEVAL_MODE_SPARSE, common_pb2.RETRIEVAL_MODE_HYBRID])
def test_every_mode_finds_the_obvious_document(stub, collection, mode):
    request = pb.SearchRequest(collection=collection, query="sourdough starter wild yeast", top_k=3, mode=mode)
    request.rerank.enabled = False
    response = stub.Search(request, timeout=30)
    assert response.mode == mode
    assert response.results[0].id == "sourdough"


def test_payload_filter_restricts_results(stub, collection):
    flt = common_pb2.Filter(
        must=[common_pb2.Condition(field=common_pb2.FieldCondition(key="topic", keyword="geology"))],
        must_not=[common_pb2.Condition(field=common_pb2.FieldCondition(key="year", range=common_pb2.Range(lt=2019)))],
    )
    response = search(stub, collection, "sea level and the moon", top_k=5, filter=flt)
    assert [r.id for r in response.results] == ["volcano"]


def test_upsert_is_idempotent_and_replaces(stub, collection):
    before = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
    assert before.document_count == len(DOCS)
    assert before.dense_dimension == 384 and before.sparse_enabled
    updated = document("tides", "Ocean tides", "Tides depend on the Moon. Updated text about spring and neap tides.", {"topic": "geology", "year": 2024})
    reply = stub.Upsert(pb.UpsertRequest(collection=collection, documents=[updated]), timeout=30)
    assert reply.upserted == 1
    after = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
    assert after.document_count == len(DOCS)
    top = search(stub, collection, "spring and neap tides", top_k=1).results[0]
    assert top.id == "tides" and "neap" in top.text


def test_delete_removes_documents_and_ignores_unknown_ids(stub, collection):
    reply = stub.Delete(pb.DeleteRequest(collection=collection, ids=["gpu", "no-such-id"]), timeout=30)
    assert reply.deleted == 1
    response = search(stub, collection, "GPU parallel threads deep learning", top_k=6)
    assert "gpu" not in [r.id for r in response.results]
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
    assert info.document_count == len(DOCS) - 1


def test_retrieval_persists_across_restart(fresh_stack):
    fresh_stack.start_all()
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="persist"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="persist", documents=[document(*d) for d in DOCS[:3]]), timeout=60)
    fresh_stack.stop("retrieval")
    fresh_stack.start("retrieval")
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        deadline = time.monotonic() + 10  # the gateway reconnects within its backoff (<= 5 s)
        while True:
            try:
                info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="persist"), timeout=30).collection
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert info.document_count == 3
        assert search(stub, "persist", "volcano lava", top_k=1).results[0].id == "volcano"


def test_split_mode_indexes_the_end_of_long_documents(fresh_stack):
    fresh_stack.env_overrides["retrieval"] = {"RETRIEVAL_LONG_DOCUMENTS": "split", "EMBEDDER_MAX_LENGTH": "64",
                                          "RETRIEVAL_PASSAGE_OVERLAP_TOKENS": "8"}
    fresh_stack.start_all()
    filler = " ".join(f"Section {i} discusses routine administrative matters of the committee." for i in range(40))
    long_doc = document("report", "Annual report", filler + " Finally, the zebra population in the park doubled.", {"topic": "x"})
    short = document("note", "Note", "A short note about office supplies and staplers.", {"topic": "x"})
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="split"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="split", documents=[long_doc, short]), timeout=120)
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="split"), timeout=30).collection
        assert info.document_count == 2 and info.point_count > 5
        hits = search(stub, "split", "zebra population doubled", top_k=2, mode=common_pb2.RETRIEVAL_MODE_DENSE)
        assert [r.id for r in hits.results] == ["report", "note"]  # one result per document
        assert "zebra" in hits.results[0].text  # the matching passage is returned
        # Re-upsert shorter: stale passages go, the count stays right.
        stub.Upsert(pb.UpsertRequest(collection="split", documents=[document("report", "Annual report", "Short now.", {})]), timeout=60)
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="split"), timeout=30).collection
        assert (info.document_count, info.point_count) == (2, 2)
        assert stub.Delete(pb.DeleteRequest(collection="split", ids=["report"]), timeout=30).deleted == 1
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name="split"), timeout=30).collection
        assert (info.document_count, info.point_count) == (1, 1)


def test_results_beyond_the_rerank_depth_follow_in_first_stage_order(stub, collection):
    request = pb.SearchRequest(collection=collection, query="science", top_k=5)
    request.rerank.candidates = 2
    request.rerank.policy = pb.RERANK_POLICY_ALWAYS
    response = stub.Search(request, timeout=60)
    assert len(response.results) == 5
    assert [r.HasField("rerank_score") for r in response.results] == [True, True, False, False, False]
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    tail = [r.retrieval_score for r in response.results[2:]]
    assert tail == sorted(tail, reverse=True)


def test_store_figures_reach_metrics(stack, stub, collection):
    """The engine's own counts for the collection, and store time by query mode, on /metrics."""
    import urllib.request

    search(stub, collection, "lava", mode=common_pb2.RETRIEVAL_MODE_HYBRID)
    url = f"http://127.0.0.1:{stack.metrics_ports['retrieval']}/metrics"
    deadline = time.monotonic() + 30  # refreshed every RETRIEVAL_STORE_STATS_SECONDS (10 s)
    text = ""
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        if f'search_retrieval_store_points{{collection="{collection}"}} {float(len(DOCS))}' in text:
            break
        time.sleep(0.5)
    assert f'search_retrieval_store_points{{collection="{collection}"}} {float(len(DOCS))}' in text
    assert f'search_retrieval_store_segments{{collection="{collection}"}}' in text
    assert 'search_retrieval_qdrant_seconds_count{operation="query_hybrid"}' in text


def test_a_collection_with_late_interaction_through_the_gateway(stub):
    """CreateCollection(late_interaction) through the gateway: the retrieval service loads the
    ColBERT model on first use, reports it, and hybrid Search fuses the MaxSim stage."""
    name = f"li{uuid.uuid4().hex[:10]}"
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=name, late_interaction=True), timeout=120)
    assert created.collection.late_interaction_model == "answerai-colbert-small-v1"
    assert created.collection.late_interaction_dimension == 384
    stub.Upsert(pb.UpsertRequest(collection=name, documents=[document(*d) for d in DOCS]), timeout=120)
    request = pb.SearchRequest(collection=name, query="why does the sea level go up and down every day?", top_k=3)
    request.rerank.enabled = False
    with_stage = stub.Search(request, timeout=60)
    request.fusion.late_interaction = False
    without = stub.Search(request, timeout=60)
    assert with_stage.results[0].id == "tides" and without.results[0].id == "tides"
    assert [r.score for r in with_stage.results] != [r.score for r in without.results]
    plain = stub.CreateCollection(pb.CreateCollectionRequest(name=f"{name}p"), timeout=30)
    assert plain.collection.late_interaction_model == "" and plain.collection.late_interaction_dimension == 0


def test_a_title_only_document_through_every_hop(stub, stack):
    """A document with a title and no text is accepted by the gateway and by retrieval, indexed
    and reranked by its title, and returned as stored (its text empty)."""
    from search.v1 import retrieval_service_pb2, retrieval_service_pb2_grpc

    name = f"t{uuid.uuid4().hex[:12]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    title = "Ocean tides: why the sea level rises and falls twice a day with the pull of the Moon"
    docs = [document(*d) for d in DOCS if d[0] != "tides"] + [common_pb2.Document(id="tide-record", title=title)]
    assert stub.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=60).upserted == len(docs)
    with grpc.insecure_channel(stack.address("retrieval")) as channel:
        retrieval = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        reply = retrieval.Upsert(retrieval_service_pb2.RetrievalServiceUpsertRequest(
            collection=name, documents=[common_pb2.Document(id="glacier-record", title="Glaciers carve valleys")]), timeout=60)
        assert reply.upserted == 1
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(name=name), timeout=30).collection.document_count == len(docs) + 1
    [stored] = stub.GetDocuments(pb.GetDocumentsRequest(collection=name, ids=["tide-record"]), timeout=30).documents
    assert (stored.title, stored.text) == (title, "")
    for mode in (common_pb2.RETRIEVAL_MODE_DENSE, common_pb2.RETRIEVAL_MODE_SPARSE, common_pb2.RETRIEVAL_MODE_HYBRID):
        reply = search(stub, name, "what makes the sea level go up and down", top_k=3, mode=mode)
        assert reply.reranked and not reply.degraded
        first = reply.results[0]
        assert (first.id, first.title, first.text) == ("tide-record", title, ""), mode
        assert first.HasField("rerank_score")
