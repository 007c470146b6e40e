"""Trace ids with `make up`'s defaults (no exporter configured): every error a caller receives and
every log line of a request carry the request's trace id, the same in every service it reaches."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc

OTEL_OFF = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
            "LOG_LEVEL": "DEBUG"}


def _lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_a_not_found_carries_the_trace_id_and_both_services_log_it(fresh_stack):
    fresh_stack.env_overrides = {"gateway": dict(OTEL_OFF), "retrieval": dict(OTEL_OFF)}
    fresh_stack.start("retrieval")
    fresh_stack.start("gateway")
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(pb.SearchRequest(collection="no_such_collection", query="anything"), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    trace_id = dict(error.trailing_metadata())["x-trace-id"]
    assert len(trace_id) == 32
    # The access log (DEBUG) of each service has the request's line with that id.
    # The line is written after the response is sent: give it a moment to reach the log file.
    for name, method in (("gateway", "search.v1.SearchService/Search"), ("retrieval", "search.v1.RetrievalService/Retrieve")):
        deadline = time.monotonic() + 10
        while True:
            lines = [l for l in _lines(fresh_stack.log_text(name)) if l.get("message") == "rpc finished" and l.get("method") == method]
            found = any(l.get("trace_id") == trace_id and l.get("code") == "NOT_FOUND" for l in lines)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found, (name, lines[-3:])
