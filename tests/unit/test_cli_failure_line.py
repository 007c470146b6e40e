"""The one line a searchctl command prints for a failed call (services/cli/client.py rpc_failure):
the status and message, plus what to do when the cause is on the caller's side."""

from __future__ import annotations

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import rpc_failure
from services.cli.procs import free_port


def test_nothing_listening_names_the_address_and_what_to_do():
    target = f"127.0.0.1:{free_port()}"
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.SearchServiceStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=10)
    line = rpc_failure("collections", err.value, target)
    assert line.startswith("searchctl collections: UNAVAILABLE: failed to connect")
    assert line.endswith(f"(no gateway answers at {target}: start one with `searchctl up`, or name it with --target)")


def test_a_server_side_unavailable_gets_no_hint():
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="retrieval is unavailable: retry shortly")
    assert rpc_failure("search", exc, "localhost:50051") == "searchctl search: UNAVAILABLE: retrieval is unavailable: retry shortly"


def test_a_missing_key_says_which_variable_to_set(monkeypatch):
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="missing API key")
    monkeypatch.delenv("SEARCHCTL_API_KEY", raising=False)
    assert rpc_failure("search", exc, "gw:1").endswith("(set SEARCHCTL_API_KEY to a key from the gateway's callers file)")
    monkeypatch.setenv("SEARCHCTL_API_KEY", "a-wrong-key")  # sent and refused: the server's message says so
    assert rpc_failure("search", exc, "gw:1") == "searchctl search: UNAUTHENTICATED: missing API key"
