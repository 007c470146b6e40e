"""One Search is one trace: the edges between the three real services, seen by an OTLP receiver.

The three servers run as processes (``searchctl serve``) with the standard environment
(``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` = a gRPC OTLP TraceService
this module runs on a loopback port). The test asserts parent/child links across process
boundaries, not just that spans exist:

    caller (traceparent) -> gateway SERVER Search -> gateway CLIENT Retrieve -> retrieval SERVER Retrieve
                                                                               -> embed.query, qdrant.*
                                                 -> gateway CLIENT Rerank    -> reranker SERVER Rerank
                                                                               -> tokenize, batch.score
                                                                                  -> batch.queue_wait, batch.inference

plus the trace id in trailing metadata, in error details, and in the JSON log lines.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import Stack, require_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT
SEARCH = "/search.v1.SearchService/Search"
RETRIEVE = "/search.v1.RetrievalService/Retrieve"
RERANK = "/search.v1.RerankService/Rerank"

DOCS = [
    ("tides", "Ocean tides", "Tides are the regular rise and fall of sea level caused by the gravitational pull of the Moon."),
    ("sourdough", "Baking sourdough", "Sourdough bread rises thanks to a fermented starter of wild yeast and lactic acid bacteria."),
    ("volcano", "Volcanoes", "A volcano is a rupture in the crust of a planet that lets hot lava, ash and gases escape."),
    ("gpu", "Graphics processors", "A GPU runs thousands of threads in parallel, fast for matrix multiplication in deep learning."),
]
QUERY = "why does the sea level go up and down every day"


# --------------------------------------------------------------------------- OTLP receiver


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


@dataclass
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    end: int
    status: int
    attributes: dict = field(default_factory=dict)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC TraceService that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            status=s.status.code,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in list(self.spans) if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, wanted: list[tuple[str, str]], timeout: float = 20.0) -> list[Span]:
        """The trace's spans once every (service, span name) in ``wanted`` has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            have = {(s.service, s.name) for s in spans}
            if all(w in have for w in wanted) or time.monotonic() > deadline:
                missing = [w for w in wanted if w not in have]
                assert not missing, f"spans never arrived for trace {trace_id}: {missing}; got {sorted(have)}"
                time.sleep(0.3)  # stragglers of the same batch export
                return self.trace(trace_id)
            time.sleep(0.1)


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    yield receiver
    server.stop(None)


@pytest.fixture(scope="module")
def traced_stack(receiver, tmp_path_factory):
    require_models()
    stack = Stack(tmp_path_factory.mktemp("traced-stack"))
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_SERVICE_NAME": "",
        "OTEL_RESOURCE_ATTRIBUTES": "",
        "LOG_LEVEL": "DEBUG",  # the per-RPC access log line (logger search.rpc)
    }
    for name in ("gateway", "retrieval", "reranker"):
        stack.env_overrides[name] = dict(otel)
    try:
        stack.start_all()
    except Exception:
        for name in ("gateway", "retrieval", "reranker"):
            print(f"--- {name} log ---\n{stack.log_text(name)[-3000:]}")
        stack.stop_all()
        raise
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def stub(traced_stack):
    with grpc.insecure_channel(traced_stack.gateway) as channel:
        yield pb_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def collection(stub):
    name = f"t{uuid.uuid4().hex[:12]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    stub.Upsert(
        pb.UpsertRequest(
            collection=name, documents=[common_pb2.Document(id=i, title=t, text=x) for i, t, x in DOCS]
        ),
        timeout=60,
    )
    return name


def one(spans: list[Span], service: str, name: str, kind: int | None = None) -> Span:
    found = [s for s in spans if s.service == service and s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"expected one {service} {name} span, got {len(found)}: {[(s.service, s.name) for s in spans]}"
    return found[0]


def children(spans: list[Span], parent: Span, name: str | None = None) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and (name is None or s.name == name)]


def trailing(call) -> dict:
    return {key: value for key, value in (call.trailing_metadata() or ())}


def log_lines(stack: Stack, service: str) -> list[dict]:
    lines = []
    for line in stack.log_text(service).splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


# --------------------------------------------------------------------------- the tests


def test_a_search_is_one_trace_across_the_three_services(stub, collection, receiver, traced_stack):
    client_trace, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request = pb.SearchRequest(collection=collection, query=QUERY, top_k=3)
    request.rerank.policy = pb.RERANK_POLICY_ALWAYS
    response, call = stub.Search.with_call(
        request, timeout=60, metadata=(("traceparent", f"00-{client_trace}-{client_span}-01"),)
    )
    assert response.reranked and not response.degraded and response.results[0].id == "tides"
    # The caller learns the trace id (its own, continued).
    assert trailing(call)["x-trace-id"] == client_trace

    spans = receiver.wait_for(
        client_trace,
        [("gateway", SEARCH), ("gateway", RETRIEVE), ("gateway", RERANK), ("retrieval", RETRIEVE),
         ("retrieval", "embed.query"), ("reranker", RERANK), ("reranker", "batch.inference")],
    )
    assert {s.trace_id for s in spans} == {client_trace}

    # The client-supplied traceparent is continued: same trace, parent = the caller's span.
    gw_server = one(spans, "gateway", SEARCH, SERVER)
    assert gw_server.parent_id == client_span
    assert gw_server.attributes["search.collection"] == collection
    assert gw_server.attributes["search.top_k"] == 3 and gw_server.attributes["search.candidates"] == len(DOCS)

    # gateway SERVER -> gateway CLIENT -> retrieval SERVER
    gw_to_retrieval = one(spans, "gateway", RETRIEVE, CLIENT)
    retrieval = one(spans, "retrieval", RETRIEVE, SERVER)
    assert gw_to_retrieval.parent_id == gw_server.span_id
    assert retrieval.parent_id == gw_to_retrieval.span_id

    # gateway SERVER -> gateway CLIENT -> reranker SERVER
    gw_to_reranker = one(spans, "gateway", RERANK, CLIENT)
    reranker = one(spans, "reranker", RERANK, SERVER)
    assert gw_to_reranker.parent_id == gw_server.span_id
    assert reranker.parent_id == gw_to_reranker.span_id
    assert gw_to_retrieval.end <= gw_to_reranker.start  # retrieve, then rerank

    # Inner spans of the retrieval service hang under its server span (they run on a worker
    # thread: the context must have been carried there).
    (embed,) = children(spans, retrieval, "embed.query")
    assert embed.attributes["embedding.model"] == "bge-small-en"
    # The default hybrid fusion is weighted: both lists in one engine batch, fused in the service.
    (query,) = children(spans, retrieval, "qdrant.query_hybrid")
    assert query.attributes["qdrant.queries"] == "dense:100,sparse:100"
    assert query.attributes["db.collection.name"] == collection and query.attributes["qdrant.backend"] == "edge"
    assert embed.end <= query.start
    (fused,) = children(spans, retrieval, "fusion")
    assert fused.attributes["fusion.candidates"] == len(DOCS)
    assert retrieval.attributes["retrieval.collection"] == collection

    # Reranker: tokenize and batch.score under the server span; queue wait and inference under
    # batch.score, timed inside it, with the batch's debugger attributes.
    (tokenize,) = children(spans, reranker, "tokenize")
    assert tokenize.attributes["rerank.pairs"] == len(DOCS) and tokenize.attributes["rerank.tokens"] > len(DOCS)
    (score,) = children(spans, reranker, "batch.score")
    (wait,) = children(spans, score, "batch.queue_wait")
    inference = children(spans, score, "batch.inference")
    assert inference, "no batch.inference span under batch.score"
    assert sum(s.attributes["batch.request_items"] for s in inference) == len(DOCS)
    for s in inference:
        assert s.attributes["onnx.provider"] == "CPUExecutionProvider"
        assert s.attributes["batch.size"] >= s.attributes["batch.request_items"]
        assert s.attributes["batch.tokens"] >= s.attributes["batch.size"]
        assert score.start <= wait.start <= wait.end <= s.start <= s.end <= score.end
    assert tokenize.end <= score.start and score.end <= reranker.end

    # The gateway's own inner span.
    (combine,) = children(spans, gw_server, "combine")
    assert combine.attributes["combine.candidates"] == len(DOCS)

    # Never document text (nor the query) in any attribute.
    texts = [QUERY] + [t for _, _, t in DOCS] + [title for _, title, _ in DOCS]
    for s in spans:
        for value in s.attributes.values():
            assert not any(isinstance(value, str) and text in value for text in texts), (s.name, value)

    # The JSON log lines of this request carry the trace id, in the gateway and downstream.
    # (Give the log writes a moment; the spans above were exported after them.)
    for service, method in (("gateway", SEARCH), ("retrieval", RETRIEVE), ("reranker", RERANK)):
        lines = [line for line in log_lines(traced_stack, service) if line.get("trace_id") == client_trace]
        access = [line for line in lines if line.get("logger") == "search.rpc" and line.get("method") == method[1:]]
        assert len(access) == 1, (service, lines)
        assert access[0]["code"] == "OK" and access[0]["service"] == service
        # the span id in the line is the service's server span: the line can be put in the trace
        server_span = {"gateway": gw_server, "retrieval": retrieval, "reranker": reranker}[service]
        assert access[0]["span_id"] == server_span.span_id


def test_without_traceparent_the_gateway_starts_the_trace_and_returns_its_id(stub, collection, receiver):
    request = pb.SearchRequest(collection=collection, query="bread yeast", top_k=2)
    request.rerank.policy = pb.RERANK_POLICY_ALWAYS
    _, call = stub.Search.with_call(request, timeout=60)
    trace_id = trailing(call)["x-trace-id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    spans = receiver.wait_for(trace_id, [("gateway", SEARCH), ("retrieval", RETRIEVE), ("reranker", RERANK)])
    gw_server = one(spans, "gateway", SEARCH, SERVER)
    assert gw_server.parent_id == ""  # a root span
    retrieval = one(spans, "retrieval", RETRIEVE, SERVER)
    assert retrieval.parent_id == one(spans, "gateway", RETRIEVE, CLIENT).span_id


def test_server_side_fusion_is_one_qdrant_query_naming_its_prefetches(stub, collection, receiver):
    request = pb.SearchRequest(collection=collection, query="volcano lava", top_k=2)
    request.fusion.method = common_pb2.FUSION_METHOD_RRF
    request.rerank.enabled = False
    _, call = stub.Search.with_call(request, timeout=60)
    trace_id = trailing(call)["x-trace-id"]
    spans = receiver.wait_for(trace_id, [("retrieval", RETRIEVE), ("retrieval", "qdrant.query_fused")])
    retrieval = one(spans, "retrieval", RETRIEVE, SERVER)
    (query,) = children(spans, retrieval, "qdrant.query_fused")
    # The engine runs both prefetches and the RRF itself: one call, its prefetches as an attribute.
    # top_k 2 + 1: the gateway asks one more than the page to know whether there is a next one.
    assert query.attributes["qdrant.queries"] == "rrf(dense:100+sparse:100):3"
    assert query.attributes["db.collection.name"] == collection
    assert not children(spans, retrieval, "fusion")
    assert not [s for s in spans if s.service == "reranker"]  # reranking was off


def test_a_failed_call_returns_its_trace_id_in_metadata_and_error_details(stub, receiver):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Search(pb.SearchRequest(collection="no_such_collection_here", query="anything"), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    trace_id = trailing(error)["x-trace-id"]
    status = rpc_status.from_call(error)
    infos = []
    for detail in status.details:
        info = error_details_pb2.RequestInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert [i.request_id for i in infos] == [trace_id]
    # The failure is in the trace, with its status code on the spans of both hops.
    spans = receiver.wait_for(trace_id, [("gateway", SEARCH), ("retrieval", RETRIEVE)])
    gw_server = one(spans, "gateway", SEARCH, SERVER)
    retrieval = one(spans, "retrieval", RETRIEVE, SERVER)
    assert gw_server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert retrieval.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert retrieval.parent_id == one(spans, "gateway", RETRIEVE, CLIENT).span_id
