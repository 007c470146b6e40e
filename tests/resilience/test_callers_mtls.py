"""Callers named by their client certificate (the gateway's own mTLS): a certificate's URI SAN
(a SPIFFE id) maps to a caller and its scopes in the callers file, on real servers, with
certificates made in the test."""

from __future__ import annotations

import uuid

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import Stack, require_models
from tests.resilience.certs import ScratchCA
from tests.resilience.conftest import CORPUS, FAST_RERANKER

pytestmark = pytest.mark.integration

READER_ID = "spiffe://cluster.local/ns/web/sa/frontend"
OPS_ID = "spiffe://cluster.local/ns/ops/sa/operator"
KEY = f"stranger-key-{uuid.uuid4().hex}"
CALLERS = f"""
[[caller]]
name = "frontend"
scopes = ["search"]
identities = ["{READER_ID}"]

[[caller]]
name = "operator"
scopes = ["search", "write", "admin"]
identities = ["{OPS_ID}"]

[[caller]]
name = "keyed"
scopes = ["search", "write"]
keys = ["{KEY}"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = ScratchCA(tmp_path_factory.mktemp("mtls-callers"))
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "frontend": ca.issue("frontend", server=False, client=True, uris=(READER_ID,)),
        "operator": ca.issue("operator", server=False, client=True, uris=("https://not-a-caller.example", OPS_ID)),
        "stranger": ca.issue("stranger", server=False, client=True, uris=("spiffe://cluster.local/ns/x/sa/stranger",)),
        "plain": ca.issue("plain", server=False, client=True),
    }


def credentials(pki, who: str) -> grpc.ChannelCredentials:
    pair = pki[who]
    return grpc.ssl_channel_credentials(pki["ca"].pem.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pki):
    require_models()
    tmp = tmp_path_factory.mktemp("mtls-stack")
    keys = tmp / "callers.toml"
    keys.write_text(CALLERS)
    tls = {"TLS_CERT_FILE": str(pki["server"].cert), "TLS_KEY_FILE": str(pki["server"].key)}
    gateway = {**tls, "TLS_CLIENT_CA_FILE": str(pki["ca"].pem), "TLS_CA_FILE": str(pki["ca"].pem),
               "GATEWAY_API_KEYS_FILE": str(keys)}
    s = Stack(tmp, env_overrides={"retrieval": tls, "reranker": {**tls, **FAST_RERANKER}, "gateway": gateway})
    s.start_all(credentials=credentials(pki, "plain"))
    yield s
    s.stop_all()


def stub_for(stack, pki, who: str):
    channel = grpc.secure_channel(stack.gateway, credentials(pki, who))
    return channel, pb_grpc.SearchServiceStub(channel)


def code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def test_a_certificate_identity_is_a_caller_with_its_scopes(stack, pki):
    name = f"m{uuid.uuid4().hex[:8]}"
    docs = [common_pb2.Document(id=i, text=t) for i, t in CORPUS]
    channel, ops = stub_for(stack, pki, "operator")  # its second URI SAN names it
    with channel:
        ops.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
        ops.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=60)
    channel, reader = stub_for(stack, pki, "frontend")
    with channel:
        assert reader.Search(pb.SearchRequest(collection=name, query="why does the sea rise", top_k=1), timeout=30).results
        status, details = code(lambda: reader.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=30))
        assert status == grpc.StatusCode.PERMISSION_DENIED and "caller 'frontend'" in details and "'write'" in details
        status, _ = code(lambda: reader.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=30))
        assert status == grpc.StatusCode.PERMISSION_DENIED
    for who in ("stranger", "plain"):  # an identity no caller has, and a certificate without one
        channel, stub = stub_for(stack, pki, who)
        with channel:
            status, details = code(lambda: stub.Search(pb.SearchRequest(collection=name, query="q"), timeout=30))
            assert status == grpc.StatusCode.UNAUTHENTICATED and "not a configured caller" in details, (who, details)
            # A key, when sent, names the caller whatever the certificate.
            assert code(lambda: stub.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=60,
                                            metadata=(("authorization", f"Bearer {KEY}"),)))[0] == grpc.StatusCode.OK
