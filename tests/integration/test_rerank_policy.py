"""The rerank cascade through the gateway and the real servers (services/gateway/cascade.py):
each policy's path, reported in the response and counted on /metrics, the request's choice
over the default, precise refusals, and a dead reranker degrading whatever the policy."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.integration.test_search_flow import DOCS, collection, document, stub  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

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
