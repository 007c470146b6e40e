"""Bad input gets a precise status with an actionable message; the server stays up; nothing is written."""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

from search.v1 import common_pb2, rerank_service_pb2, rerank_service_pb2_grpc, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.common import validation


@pytest.fixture(scope="module")
def empty_collection(stack):
    name = f"bad{uuid.uuid4().hex[:10]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        pb_grpc.SearchServiceStub(channel).CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    return name


@pytest.fixture
def stub(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        yield pb_grpc.SearchServiceStub(channel)


def expect(code, fn, *args, contains=""):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert contains in info.value.details()
    return info.value


def test_empty_query(stub, empty_collection):
    err = expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection=empty_collection, query="  "), contains="query")
    status = rpc_status.from_call(err)
    violation = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "query"


@pytest.mark.parametrize("top_k", [-1, validation.MAX_TOP_K + 1])
def test_top_k_out_of_range(stub, empty_collection, top_k):
    expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection=empty_collection, query="x", top_k=top_k),
           contains=f"between 1 and {validation.MAX_TOP_K}")


def test_unknown_collection(stub):
    expect(grpc.StatusCode.NOT_FOUND, stub.Search, pb.SearchRequest(collection="no-such-collection", query="x"), contains="no-such-collection")
    expect(grpc.StatusCode.NOT_FOUND, stub.DescribeCollection, pb.DescribeCollectionRequest(name="no-such-collection"))
    doc = common_pb2.Document(id="a", text="b")
    expect(grpc.StatusCode.NOT_FOUND, stub.Upsert, pb.UpsertRequest(collection="no-such-collection", documents=[doc]))


def test_duplicate_collection(stub, empty_collection):
    expect(grpc.StatusCode.ALREADY_EXISTS, stub.CreateCollection, pb.CreateCollectionRequest(name=empty_collection))


def test_bad_collection_name(stub):
    expect(grpc.StatusCode.INVALID_ARGUMENT, stub.CreateCollection, pb.CreateCollectionRequest(name="../etc"), contains="name")


def test_oversize_batch_writes_nothing(stub, empty_collection):
    docs = [common_pb2.Document(id=str(i), text="t") for i in range(validation.MAX_BATCH_DOCUMENTS + 1)]
    expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection=empty_collection, documents=docs), contains="split the batch")
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=empty_collection), timeout=30).collection
    assert info.document_count == 0


def test_document_with_neither_title_nor_text_rejects_whole_batch(stub, empty_collection):
    docs = [common_pb2.Document(id="good", text="fine text"), common_pb2.Document(id="titled", title="a title alone"),
            common_pb2.Document(id="empty", title="  ")]
    err = expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection=empty_collection, documents=docs), contains="documents[2].text")
    assert "'empty' has neither text nor title" in err.details()
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=empty_collection), timeout=30).collection
    assert info.document_count == 0, "a rejected batch must write nothing"


@pytest.mark.parametrize("size, bad", [(3, 1), (70, 66)])  # one batch to retrieval; several (GATEWAY_UPSERT_BATCH_SIZE 64)
def test_a_payload_value_of_another_type_than_declared_writes_nothing(stub, size, bad):
    name = f"typed{uuid.uuid4().hex[:10]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, filter_fields=[
        common_pb2.FilterField(key="year", type=common_pb2.FIELD_TYPE_INTEGER)]), timeout=30)
    docs = [common_pb2.Document(id=str(i), text=f"document {i}") for i in range(size)]
    for i, doc in enumerate(docs):
        doc.payload.update({"year": "2023" if i == bad else 2000 + i})
    err = expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection=name, documents=docs),
                 contains=f"documents[{bad}].payload.year: collection {name!r} declares 'year' an integer field")
    assert "the string '2023' is not an integer" in err.details()
    info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=name), timeout=30).collection
    assert info.document_count == 0, "a rejected request writes nothing"
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=30)


def test_a_filter_condition_that_cannot_match_the_declared_type_is_refused(stub):
    name = f"typed{uuid.uuid4().hex[:10]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, filter_fields=[
        common_pb2.FilterField(key="year", type=common_pb2.FIELD_TYPE_INTEGER)]), timeout=30)
    flt = common_pb2.Filter(must=[common_pb2.Condition(field=common_pb2.FieldCondition(key="year", keyword="2020"))])
    expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection=name, query="x", filter=flt),
           contains=f"filter: collection {name!r} declares 'year' an integer field (filter_fields): a `keyword` condition "
                    "on it never matches; use `integer` or `any_integer` or `range`")
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=30)


def test_bad_filter(stub, empty_collection):
    flt = common_pb2.Filter(must=[common_pb2.Condition(field=common_pb2.FieldCondition(key="year", range=common_pb2.Range()))])
    expect(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection=empty_collection, query="x", filter=flt), contains="range")


def test_reranker_rejects_bad_requests(stack):
    with grpc.insecure_channel(stack.address("reranker")) as channel:
        rstub = rerank_service_pb2_grpc.RerankServiceStub(channel)
        expect(grpc.StatusCode.INVALID_ARGUMENT, rstub.Rerank, rerank_service_pb2.RerankRequest(query="q"), contains="passages")
        expect(grpc.StatusCode.INVALID_ARGUMENT, rstub.Rerank, rerank_service_pb2.RerankRequest(query="", passages=["p"]), contains="query")
        reply = rstub.Rerank(rerank_service_pb2.RerankRequest(query="q", passages=["a", "b", "c"], top_k=2), timeout=30)
        assert len(reply.results) == 2 and {r.index for r in reply.results} <= {0, 1, 2}
        expect(grpc.StatusCode.INVALID_ARGUMENT, rstub.Rerank,
               rerank_service_pb2.RerankRequest(query="q", passages=["a", "b"], ids=["d1"]), contains="ids")
        expect(grpc.StatusCode.INVALID_ARGUMENT, rstub.Rerank,
               rerank_service_pb2.RerankRequest(query="q", passages=["a"], ids=["x" * 257]), contains="ids[0]")
        with_ids = rstub.Rerank(rerank_service_pb2.RerankRequest(query="q", passages=["a", "b", "c"], ids=["d1", "d2", "d3"]),
                                timeout=30)
        assert sorted(r.index for r in with_ids.results) == [0, 1, 2]


def test_servers_stay_up_after_bad_input(stack):
    for name in ("gateway", "retrieval", "reranker"):
        assert stack.procs[name].poll() is None, f"{name} exited"
        with grpc.insecure_channel(stack.address(name)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
