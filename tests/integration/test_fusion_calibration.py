"""Through the gateway's stubs and the three real servers: a collection measures its own dense and
sparse lists once it is big enough (services/retrieval/calibration.py), DescribeCollection shows
the measurement and the weight, hybrid Search fuses with it, and a reindex that re-embeds
measures the new collection before its alias switches."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.demo import demo_corpus
from services.cli.ingest_stream import load

SAMPLE = 256  # RETRIEVAL_FUSION_CALIBRATION_SAMPLE's default


def corpus() -> list[dict]:
    """The project's docs, each passage cut in two: more than SAMPLE documents of real prose."""
    docs = []
    for d in demo_corpus():
        words = d["text"].split()
        half = len(words) // 2
        for part, text in (("a", words[:half]), ("b", words[half:])):
            if len(text) >= 12:
                docs.append({"id": f"{d['id']}/{part}", "title": d["title"], "text": " ".join(text)})
    assert len(docs) > SAMPLE
    return docs


def described(stub, name: str) -> common_pb2.CollectionInfo:
    return stub.DescribeCollection(pb.DescribeCollectionRequest(name=name), timeout=30).collection


def wait_measured(stub, name: str, timeout_s: float = 180.0) -> common_pb2.CollectionInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        info = described(stub, name)
        if info.HasField("fusion_calibration") and 2 * info.fusion_calibration.documents > info.document_count:
            return info
        assert time.monotonic() < deadline, f"not measured: {info}"
        time.sleep(0.5)


def test_a_collection_is_measured_and_searched_with_its_weight_then_reindexed(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        name = f"cal{uuid.uuid4().hex[:10]}"
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
        assert not described(stub, name).HasField("fusion_calibration")
        docs = corpus()
        assert load(docs, name, stack.gateway).written == len(docs)  # the project's one loader: the Ingest stream

        info = wait_measured(stub, name)
        cal = info.fusion_calibration
        assert cal.sample == SAMPLE and SAMPLE <= cal.documents <= info.document_count == len(docs)
        assert 0 < cal.dense_recall <= 1 and 0 < cal.sparse_recall <= 1
        assert info.fusion_dense_weight == pytest.approx(cal.dense_weight)

        # Hybrid Search without a weight fuses with the measured one: the same ranking as asking for it.
        query = "how does the gateway degrade when the reranker fails"
        no_rerank = pb.RerankOptions(enabled=False)
        implicit = stub.Search(pb.SearchRequest(collection=name, query=query, top_k=10, rerank=no_rerank), timeout=60)
        explicit = stub.Search(pb.SearchRequest(collection=name, query=query, top_k=10, rerank=no_rerank,
                                                fusion=common_pb2.FusionOptions(dense_weight=cal.dense_weight)), timeout=60)
        assert [r.id for r in implicit.results] == [r.id for r in explicit.results]

        # A re-embedding reindex measures the new collection before the alias points to it.
        alias = f"al{uuid.uuid4().hex[:10]}"
        stub.CreateAlias(pb.CreateAliasRequest(alias=alias, collection=name), timeout=30)
        done = list(stub.Reindex(pb.ReindexRequest(source=alias, reembed=True), timeout=900))[-1]
        assert done.phase == common_pb2.REINDEX_PHASE_DONE and done.reembedded
        target = described(stub, done.target_collection)
        assert target.HasField("fusion_calibration") and target.fusion_calibration.documents == len(docs)
        assert target.fusion_calibration.measured_at > cal.measured_at
        assert described(stub, alias).name == done.target_collection
