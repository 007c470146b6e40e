"""The rerank cascade through the gateway and the real servers (services/gateway/cascade.py):
each policy's path, reported in the response and counted on /metrics, the request's choice
over the default, precise refusals, and a dead reranker degrading whatever the policy."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.integration.test_search_flow import DOCS, collection, document, stub  # noqa: F401 - fixtures

QUERIES = ["why does the sea level go up and down every day?", "how do plants make sugar from light",
           "what makes bread dough rise", "hardware for training neural networks quickly", "science", "immune system"]
MAX_GAP, AUTO_DEPTH = 0.2, 5  # GATEWAY_AUTO_RERANK_MAX_GAP, GATEWAY_AUTO_RERANK_DEPTH defaults


def search(stub, collection, query, **rerank) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=5, rerank=pb.RerankOptions(**rerank)),
                       timeout=60)


def decisions(stack) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics", timeout=10).read().decode()
    return {(p, r): float(v) for p, r, v in
            re.findall(r'search_gateway_rerank_decisions_total\{policy="(\w+)",reason="(\w+)"\} (\S+)', text)}


def test_each_policy_takes_its_path_and_says_so(stack, stub, collection):
    before = decisions(stack)
    for query in QUERIES:
        always = search(stub, collection, query, policy=pb.RERANK_POLICY_ALWAYS)
        assert always.reranked and all(r.HasField("rerank_score") for r in always.results)
        assert (always.rerank_decision.policy, always.rerank_decision.reason, always.rerank_decision.depth) == (
            pb.RERANK_POLICY_ALWAYS, pb.RERANK_REASON_ALWAYS, len(DOCS))  # 10 asked, 6 in the collection

        for never in (search(stub, collection, query, policy=pb.RERANK_POLICY_NEVER), search(stub, collection, query, enabled=False)):
            assert not never.reranked and not any(r.HasField("rerank_score") for r in never.results)
            assert (never.rerank_decision.policy, never.rerank_decision.reason, never.rerank_decision.depth) == (
                pb.RERANK_POLICY_NEVER, pb.RERANK_REASON_NEVER, 0)

        for auto in (search(stub, collection, query), search(stub, collection, query, policy=pb.RERANK_POLICY_AUTO)):
            d = auto.rerank_decision
            assert d.policy == pb.RERANK_POLICY_AUTO  # the server default is auto
            uncertain = d.signal <= MAX_GAP + 1e-6
            assert d.reason == (pb.RERANK_REASON_AUTO_UNCERTAIN if uncertain else pb.RERANK_REASON_AUTO_CONFIDENT)
            assert auto.reranked == uncertain and d.depth == (AUTO_DEPTH if uncertain else 0)
            assert sum(r.HasField("rerank_score") for r in auto.results) == d.depth
            capped = search(stub, collection, query, policy=pb.RERANK_POLICY_AUTO, candidates=2).rerank_decision
            assert capped.depth in (0, 2)
    after = decisions(stack)
    n = len(QUERIES)
    assert after.get(("always", "always"), 0) - before.get(("always", "always"), 0) == n
    assert after.get(("never", "never"), 0) - before.get(("never", "never"), 0) == 2 * n
    auto = sum(after.get(("auto", r), 0) - before.get(("auto", r), 0) for r in ("auto_uncertain", "auto_confident"))
    assert auto == 3 * n


def test_bad_policy_and_contradictions_name_the_field(stub, collection):
    for rerank, field in ((pb.RerankOptions(policy=99), "rerank.policy"),
                          (pb.RerankOptions(enabled=False, policy=pb.RERANK_POLICY_ALWAYS), "rerank.enabled"),
                          (pb.RerankOptions(policy=pb.RERANK_POLICY_AUTO, candidates=0), "rerank.candidates"),
                          (pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS, candidates=201), "rerank.candidates")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(pb.SearchRequest(collection=collection, query="tides", rerank=rerank), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details(), err.value.details()


def test_a_dead_reranker_degrades_the_auto_path(fresh_stack):
    # Every query counts as uncertain here, so auto reranks each one; then the reranker dies.
    fresh_stack.env_overrides["gateway"] = {"GATEWAY_AUTO_RERANK_MAX_GAP": "1000", "GATEWAY_RETRY_MAX_ATTEMPTS": "1"}
    fresh_stack.start_all()
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="c"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="c", documents=[document(*d) for d in DOCS]), timeout=60)
        ok = search(stub, "c", "tides and the moon")
        assert ok.reranked and ok.rerank_decision.reason == pb.RERANK_REASON_AUTO_UNCERTAIN
        fresh_stack.stop("reranker")
        down = search(stub, "c", "volcanoes and lava")  # another query: not served from the result cache
        assert down.degraded and not down.reranked and down.results
        assert down.rerank_decision.reason == pb.RERANK_REASON_AUTO_UNCERTAIN and down.rerank_decision.depth == AUTO_DEPTH


def test_a_near_tie_is_not_queued_behind_another_on_a_stuck_reranker(fresh_stack):
    """GATEWAY_AUTO_RERANK_MAX_IN_FLIGHT (1): while one near-tie rerank is in flight (the
    reranker is stopped, so it stays there), the next near-tie is answered from the first stage
    with reason auto_busy, not queued; once the first finishes, near-ties are reranked again."""
    fresh_stack.env_overrides["gateway"] = {"GATEWAY_AUTO_RERANK_MAX_GAP": "1000", "GATEWAY_RETRY_MAX_ATTEMPTS": "1",
                                            "GATEWAY_RERANK_TIMEOUT_SECONDS": "30"}
    fresh_stack.start_all()
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="c"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="c", documents=[document(*d) for d in DOCS]), timeout=60)
        assert search(stub, "c", "tides and the moon").rerank_decision.reason == pb.RERANK_REASON_AUTO_UNCERTAIN
        reranker = fresh_stack.procs["reranker"].pid
        started = decisions(fresh_stack).get(("auto", "auto_uncertain"), 0)
        held: dict[str, pb.SearchResponse] = {}
        os.kill(reranker, signal.SIGSTOP)
        try:
            first = threading.Thread(target=lambda: held.setdefault("first", search(stub, "c", "volcanoes and lava")))
            first.start()
            deadline = time.monotonic() + 30
            while decisions(fresh_stack).get(("auto", "auto_uncertain"), 0) == started:  # the first is in flight
                assert time.monotonic() < deadline, "the first near-tie never reached the reranker"
                time.sleep(0.05)
            busy = search(stub, "c", "how do plants make sugar from light")
            assert first.is_alive(), "the first rerank finished while the reranker was stopped"
            d = busy.rerank_decision
            assert (d.policy, d.reason, d.depth) == (pb.RERANK_POLICY_AUTO, pb.RERANK_REASON_AUTO_BUSY, 0), d
            assert not busy.reranked and not busy.degraded and busy.results
            assert not any(r.HasField("rerank_score") for r in busy.results)
        finally:
            os.kill(reranker, signal.SIGCONT)
        first.join(timeout=60)
        assert held["first"].reranked and held["first"].rerank_decision.reason == pb.RERANK_REASON_AUTO_UNCERTAIN
        again = search(stub, "c", "what makes bread dough rise")  # nothing in flight now: reranked
        assert again.reranked and again.rerank_decision.reason == pb.RERANK_REASON_AUTO_UNCERTAIN
        assert decisions(fresh_stack).get(("auto", "auto_busy"), 0) == 1


def test_auto_reranks_every_query_of_a_collection_with_a_weak_list(fresh_stack):
    """Each document: 280 words of the same boilerplate, then words of its own. The bi-encoder
    reads the first 256 tokens only (all alike), BM25 reads everything: the fusion check finds
    the dense list weak, retrieval says so, and auto reranks as always does."""
    import random

    fresh_stack.env_overrides["retrieval"] = {"RETRIEVAL_FUSION_CALIBRATION_SAMPLE": "64"}
    fresh_stack.start_all()
    rng = random.Random(5)
    boilerplate = " ".join(["the committee reviewed the quarterly figures and approved the minutes of the previous session"] * 20)
    syllables = ("zor", "vel", "quim", "brak", "lund", "tesh", "ap", "ix", "on", "ul", "ed", "ry", "am", "os", "kin", "dra")
    vocabulary = [a + b + c for a in syllables for b in syllables for c in syllables]
    docs = [common_pb2.Document(id=f"d{i}", title="Minutes", text=f"{boilerplate} {' '.join(rng.choices(vocabulary, k=300))}")
            for i in range(80)]
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="weak"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="weak", documents=docs), timeout=300)
        deadline = time.monotonic() + 180
        while not (info := stub.DescribeCollection(pb.DescribeCollectionRequest(name="weak"), timeout=30).collection).HasField(
                "fusion_calibration"):
            assert time.monotonic() < deadline, "the collection was not measured"
            time.sleep(0.5)
        cal = info.fusion_calibration
        assert cal.dense_recall < cal.sparse_recall and info.fusion_dense_weight < 0.6, cal  # dense found weak
        for query in (" ".join(rng.choices(vocabulary, k=3)) for _ in range(3)):
            reply = search(stub, "weak", query)
            d = reply.rerank_decision
            assert (d.policy, d.reason, d.depth) == (pb.RERANK_POLICY_AUTO, pb.RERANK_REASON_AUTO_WEAK_LIST, 10), d
            assert reply.reranked
