"""Property: no message, well-formed or not, makes any RPC of any service fail with INTERNAL or
UNKNOWN, or take a server down.

Messages are generated from the protobuf descriptors, so every field of every request type
is exercised (strings with odd characters and past the limits, extreme integers, NaN and
infinities, unknown enum values, nested filters past their depth, payloads with any JSON),
biased towards an existing collection so requests get past the first checks into the
store and the models. Raw bytes exercise the decoder. Example counts stay modest: the
reranker scores a few dozen pairs a second on two cores.
"""

from __future__ import annotations

import math
import uuid

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from search.v1 import (  # noqa: E402
    common_pb2,
    rerank_service_pb2,
    retrieval_service_pb2,
    search_service_pb2 as pb,
    search_service_pb2_grpc as pb_grpc,
)
from tests.resilience.conftest import figures  # noqa: E402

pytestmark = pytest.mark.integration

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
EXAMPLES = 30
#: More for the RPCs with the most fields and the deepest paths.
MORE_EXAMPLES = {"Search": 80, "Retrieve": 60, "Rerank": 60, "Upsert": 40}
RAW_EXAMPLES = 8
STATS: dict[str, dict[str, int]] = {}

ODD_STRINGS = ["", " ", "\x00", "\n\t", "../etc/passwd", "é", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a.b", "a" * 64, "x" * 2049, "DROP TABLE", "*"]


def rpc_table():
    """(service, method, request class) for every RPC of the three services, from the descriptors."""
    table = []
    for module, service in (
        (pb, "SearchService"),
        (retrieval_service_pb2, "RetrievalService"),
        (rerank_service_pb2, "RerankService"),
    ):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            request_cls = getattr(module, method.input_type.name, None) or getattr(common_pb2, method.input_type.name)
            table.append((service, method.name, request_cls, method.output_type))
            STREAMING[(service, method.name)] = (method.client_streaming, method.server_streaming)
    return table


#: (client streams, server streams) of each RPC: a streamed request is sent as a one-message stream.
STREAMING: dict[tuple[str, str], tuple[bool, bool]] = {}


RPCS = rpc_table()
TARGET = {"SearchService": "gateway", "RetrievalService": "retrieval", "RerankService": "reranker"}


@pytest.fixture(scope="module")
def collection(stack):
    name = f"fz{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(
            pb.CreateCollectionRequest(name=name, filter_fields=[common_pb2.FilterField(key="topic", type=common_pb2.FIELD_TYPE_KEYWORD)]),
            timeout=30,
        )
        docs = [
            common_pb2.Document(id=f"d{i}", title=f"title {i}", text=text)
            for i, text in enumerate(["tides and the moon", "bread and yeast", "volcanoes erupt lava", "bees dance"])
        ]
        stub.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=60)
    return name


def text(collection: str | None = None):
    options = [st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30), st.sampled_from(ODD_STRINGS)]
    if collection:
        options.insert(0, st.just(collection))
    return st.one_of(*options)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def struct_strategy():
    def build(d):
        s = struct_pb2.Struct()
        s.update(d)
        return s

    return st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(build)


INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 10, 100, 101, 200, 201, 512, 513, 1000, 1001]))
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, -1, 2**53 + 1]))


SENTENCES = ["tides and the moon", "bread rises with yeast", "lava from volcanoes", "how bees dance", "x"]
#: Plausible values by field name, drawn as often as arbitrary ones, so requests also get past
#: validation into the store, the embedder, the filters and the cross-encoder.
PLAUSIBLE = {
    "query": st.sampled_from(["why do tides happen", "bread", "volcano lava", "bees"]),
    "text": st.sampled_from(SENTENCES),
    "title": st.sampled_from(["", "A title"]),
    "passages": st.sampled_from(SENTENCES),
    "id": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    "ids": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    "key": st.sampled_from(["topic", "year", "n", "a.b.c", "payload"]),
    "keyword": st.sampled_from(["biology", "geology", ""]),
    "integer": st.integers(-3, 2030),
    "top_k": st.integers(0, 12),
    "limit": st.integers(0, 12),
    "candidates": st.integers(1, 12),
    "prefetch_limit": st.integers(1, 30),
    "rrf_k": st.integers(1, 100),
    "dense_weight": st.floats(0, 1),
    "rerank_weight": st.floats(0, 1),
}


def field_strategy(field: FieldDescriptor, collection: str, depth: int):
    arbitrary = _arbitrary(field, collection, depth)
    plausible = PLAUSIBLE.get(field.name)
    if arbitrary is None or plausible is None:
        return arbitrary
    if field.is_repeated:
        return st.one_of(st.lists(plausible, min_size=1, max_size=4), arbitrary)
    return st.one_of(plausible, arbitrary)


def _arbitrary(field: FieldDescriptor, collection: str, depth: int):
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Struct":
            single = struct_strategy()
        elif depth > 10:
            return None
        else:
            single = message_strategy(field.message_type, collection, depth + 1)
    elif field.type == FieldDescriptor.TYPE_STRING:
        single = text(collection if field.name in ("collection", "name") else None)
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        single = INT32
    elif field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        single = INT64
    elif field.type == FieldDescriptor.TYPE_FLOAT:
        single = st.floats(width=32, allow_nan=True, allow_infinity=True)
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        single = st.floats(allow_nan=True, allow_infinity=True)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        single = st.booleans()
    elif field.type == FieldDescriptor.TYPE_ENUM:
        single = st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 50))
    else:
        return None
    if field.is_repeated:
        return st.lists(single, max_size=4 if depth == 0 else 3)
    return single


def message_strategy(descriptor, collection: str, depth: int = 0, one_field: bool = False):
    """Messages of ``descriptor`` with any subset of fields set, or (``one_field``) exactly one."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    optional = {}
    for field in descriptor.fields:
        strategy = field_strategy(field, collection, depth)
        if strategy is not None:
            optional[field.name] = strategy

    def build(values):
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                if field.message_type is not None:
                    for item in value:
                        getattr(message, name).add().CopyFrom(item)
                else:
                    getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    if one_field:
        return st.one_of(*(st.fixed_dictionaries({name: strategy}) for name, strategy in optional.items())).map(build)
    return st.fixed_dictionaries({}, optional=optional).map(build)


def call(stack, service: str, method: str, body: bytes, output_type) -> tuple[grpc.StatusCode, str]:
    channel = CHANNELS[(id(stack), service)]
    path = f"/search.v1.{service}/{method}"
    client_streams, server_streams = STREAMING[(service, method)]
    try:
        if client_streams and server_streams:
            list(channel.stream_stream(path)(iter([body]), timeout=60))
        elif client_streams:
            channel.stream_unary(path)(iter([body]), timeout=60)
        elif server_streams:
            list(channel.unary_stream(path)(body, timeout=60))
        else:
            channel.unary_unary(path)(body, timeout=60)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


CHANNELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def channels(stack):
    for service, target in TARGET.items():
        CHANNELS[(id(stack), service)] = grpc.insecure_channel(stack.address(target))
    yield
    for channel in CHANNELS.values():
        channel.close()
    CHANNELS.clear()


def record(key: str, code: grpc.StatusCode) -> None:
    STATS.setdefault(key, {}).setdefault(code.name, 0)
    STATS[key][code.name] += 1


def check(code: grpc.StatusCode, details: str, what: str) -> None:
    assert code in ALLOWED, f"{what} -> {code.name}: {details}"


def base_request(method: str, request_cls, collection: str):
    """A valid request the generated fields are merged onto (so most fields stay valid and the
    request reaches the deep code), or None for "generated only"."""
    doc = common_pb2.Document(id="base", text="a base document about tides")
    fields = {
        "Search": {"collection": collection, "query": "tides", "top_k": 3},
        "Retrieve": {"collection": collection, "query": "tides", "limit": 3},
        "Upsert": {"collection": collection, "documents": [doc]},
        "Delete": {"collection": collection, "ids": ["no-such-id"]},
        "DescribeCollection": {"name": collection},
        "CreateCollection": {"name": f"fzc{uuid.uuid4().hex[:6]}"},
        "DeleteCollection": {"name": f"nope{uuid.uuid4().hex[:6]}"},
        "Rerank": {"query": "tides", "passages": ["the moon pulls the sea"]},
        "ListCollections": {},
        "ListAliases": {},
        "GetDocuments": {"collection": collection, "ids": ["d0", "nope"]},
        "CreateAlias": {"alias": f"fza{uuid.uuid4().hex[:6]}", "collection": collection},
        "SwitchAlias": {"alias": f"nope{uuid.uuid4().hex[:6]}", "collection": collection},
        "DeleteAlias": {"alias": f"nope{uuid.uuid4().hex[:6]}"},
        "Ingest": {"collection": collection, "documents": [doc], "sequence": 1},
        "Reindex": {"source": f"nope{uuid.uuid4().hex[:6]}"},
        "ExportSnapshot": {"collection": collection},
        "RestoreSnapshot": {"collection": f"fzr{uuid.uuid4().hex[:6]}"},
    }[method]
    message = request_cls(**fields)
    if method == "Search":
        message.rerank.candidates = 4
    return message


def merged(base, message):
    out = type(base)()
    out.CopyFrom(base)
    out.MergeFrom(message)
    return out


@pytest.mark.parametrize("service, method, request_cls, output_type", RPCS, ids=[f"{s}.{m}" for s, m, _, _ in RPCS])
def test_arbitrary_messages_never_fail_internally(stack, collection, service, method, request_cls, output_type):
    # Never the shared collection for DeleteCollection / CreateCollection: other names.
    # Nor for what would replace it or alias it (Reindex, aliases, restores).
    protected = ("DeleteCollection", "CreateCollection", "Reindex", "CreateAlias", "SwitchAlias", "DeleteAlias", "RestoreSnapshot")
    target = f"other{uuid.uuid4().hex[:6]}" if method in protected else collection
    base = base_request(method, request_cls, collection)
    strategy = st.one_of(
        message_strategy(request_cls.DESCRIPTOR, target),  # anything at all
        # a valid request with one field replaced (by anything): reaches the store and the models
        message_strategy(request_cls.DESCRIPTOR, target, one_field=True).map(lambda m: merged(base, m)),
    )

    @settings(max_examples=MORE_EXAMPLES.get(method, EXAMPLES), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(message=strategy)
    def prop(message):
        code, details = call(stack, service, method, message.SerializeToString(), output_type)
        record(f"{service}.{method}", code)
        check(code, details, f"{service}.{method}({message!r:.300})")

    prop()


@pytest.mark.parametrize("service, method, request_cls, output_type", RPCS, ids=[f"{s}.{m}" for s, m, _, _ in RPCS])
def test_malformed_bytes_are_invalid_argument(stack, service, method, request_cls, output_type):
    @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=st.one_of(st.binary(min_size=1, max_size=64), st.sampled_from([b"\xff", b"\x0a\x05abc", b"\x12\x03\xff\xfe\xfd", b"\x08" * 11])))
    def prop(body):
        code, details = call(stack, service, method, body, output_type)
        record(f"{service}.{method}[raw]", code)
        check(code, details, f"{service}.{method}(raw {body!r})")
        try:
            request_cls.FromString(body)
            parses = True
        except Exception:  # noqa: BLE001
            parses = False
        if not parses:
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details, (code, details)

    prop()


def test_every_server_is_still_up_and_logged_no_unhandled_error(stack):
    for name in ("gateway", "retrieval", "reranker"):
        assert stack.procs[name].poll() is None, f"{name} exited"
        with grpc.insecure_channel(stack.address(name)) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert "unhandled error" not in stack.log_text(name), f"{name} logged an unhandled error"
    total = sum(sum(codes.values()) for codes in STATS.values())
    by_code: dict[str, int] = {}
    for codes in STATS.values():
        for code, n in codes.items():
            by_code[code] = by_code.get(code, 0) + n
    for rpc, codes in sorted(STATS.items()):
        print(f"  {rpc}: {dict(sorted(codes.items()))}")
    figures("property-based fuzzing of every RPC", rpcs=len(RPCS), requests=total, by_code=by_code,
            internal_or_unknown=by_code.get("INTERNAL", 0) + by_code.get("UNKNOWN", 0), crashed_servers=0)
    assert total > 0 and math.isfinite(total)
