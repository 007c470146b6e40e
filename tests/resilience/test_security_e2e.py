"""API keys, TLS and mTLS on real servers, with certificates made in the test.

The stack: retrieval and reranker require client certificates (mTLS); the gateway serves TLS,
requires an API key, and calls retrieval and reranker over mTLS with its own certificate.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from search.v1 import rerank_service_pb2, rerank_service_pb2_grpc, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import REPO, Stack, require_models
from tests.resilience.certs import ScratchCA
from tests.resilience.conftest import CORPUS, FAST_RERANKER, figures, metric_value, scrape

pytestmark = pytest.mark.integration

KEYS = ("team-a-0d5e3c", "team-b-9f81aa")
ENV_KEY = "ops-key-77c2"


class Pki:
    def __init__(self, directory):
        self.ca = ScratchCA(directory / "ca")
        self.server = self.ca.issue("server")
        self.gateway_client = self.ca.issue("gateway-client", server=False, client=True)
        self.caller = self.ca.issue("caller", server=False, client=True)
        self.rogue_ca = ScratchCA(directory / "rogue", name="rogue-ca")
        self.rogue_client = self.rogue_ca.issue("rogue-client", server=False, client=True)

    def channel_credentials(self, *, ca=True, client=None, rogue_ca=False) -> grpc.ChannelCredentials:
        root = (self.rogue_ca if rogue_ca else self.ca).pem.read_bytes() if ca else None
        return grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pki):
    require_models()
    tmp = tmp_path_factory.mktemp("secure")
    keys_file = tmp / "api-keys"
    keys_file.write_text(f"# gateway API keys\n{KEYS[0]}\n\n{KEYS[1]}\n")
    mtls_server = {
        "TLS_CERT_FILE": str(pki.server.cert),
        "TLS_KEY_FILE": str(pki.server.key),
        "TLS_CLIENT_CA_FILE": str(pki.ca.pem),
    }
    gateway = {
        "TLS_CERT_FILE": str(pki.server.cert),
        "TLS_KEY_FILE": str(pki.server.key),
        "TLS_CA_FILE": str(pki.ca.pem),
        "TLS_CLIENT_CERT_FILE": str(pki.gateway_client.cert),
        "TLS_CLIENT_KEY_FILE": str(pki.gateway_client.key),
        "GATEWAY_API_KEYS_FILE": str(keys_file),
        "GATEWAY_API_KEYS": ENV_KEY,
    }
    s = Stack(tmp, env_overrides={"retrieval": mtls_server, "reranker": {**mtls_server, **FAST_RERANKER}, "gateway": gateway})
    s.start_all(credentials=pki.channel_credentials(client=pki.caller))
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def collection(stack, pki):
    name = "secure"
    with grpc.secure_channel(stack.gateway, pki.channel_credentials()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        auth = (("authorization", f"Bearer {KEYS[0]}"),)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30, metadata=auth)
        from search.v1 import common_pb2

        docs = [common_pb2.Document(id=i, text=t) for i, t in CORPUS]
        stub.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=60, metadata=auth)
    return name


def search(stack, pki, collection, metadata=None):
    with grpc.secure_channel(stack.gateway, pki.channel_credentials()) as channel:
        return pb_grpc.SearchServiceStub(channel).Search(
            pb.SearchRequest(collection=collection, query="why does the sea rise and fall", top_k=3,
                             rerank=pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS)), timeout=30,
            metadata=metadata,
        )


@pytest.mark.parametrize(
    "metadata, expected",
    [
        (None, "missing API key"),
        ((("authorization", "Bearer not-a-key"),), "invalid API key"),
        ((("authorization", f"Bearer {KEYS[0]}x"),), "invalid API key"),
        ((("authorization", KEYS[0]),), "malformed authorization"),
        ((("x-api-key", KEYS[0]),), "missing API key"),
    ],
)
def test_without_a_valid_key_the_gateway_answers_unauthenticated(stack, pki, collection, metadata, expected):
    with pytest.raises(grpc.RpcError) as info:
        search(stack, pki, collection, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert expected in info.value.details()


@pytest.mark.parametrize("key", [*KEYS, ENV_KEY])
def test_a_valid_key_searches_end_to_end_over_mtls(stack, pki, collection, key):
    reply = search(stack, pki, collection, (("authorization", f"Bearer {key}"),))
    # Reranked: the gateway reached retrieval and reranker, both of which demand a client certificate.
    assert reply.reranked and not reply.degraded
    assert reply.results[0].id == "tides"


def test_health_and_reflection_need_no_key(stack, pki):
    with grpc.secure_channel(stack.gateway, pki.channel_credentials()) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        v1 = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",  # same messages
                                   request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                   response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = v1(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="search.v1.SearchService")]),
                     timeout=5)
        served = [f for r in replies for f in r.file_descriptor_response.file_descriptor_proto]
    assert "search.v1.SearchService" in names and "grpc.reflection.v1.ServerReflection" in names
    assert served, "reflection v1 answered nothing without a key"


def test_unauthenticated_calls_are_counted(stack, pki, collection):
    with pytest.raises(grpc.RpcError):
        search(stack, pki, collection)
    count = metric_value(scrape(stack, "gateway"), "search_grpc_server_requests_total", code="UNAUTHENTICATED")
    assert count >= 1


def handshake(address: str, credentials) -> grpc.StatusCode:
    """The code of a health check over ``credentials`` (None: plaintext)."""
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_tls_handshakes(stack, pki):
    gateway, reranker, retrieval = stack.gateway, stack.address("reranker"), stack.address("retrieval")
    results = {
        "gateway: plaintext": handshake(gateway, None),
        "gateway: TLS, unknown CA": handshake(gateway, pki.channel_credentials(rogue_ca=True)),
        "gateway: TLS, right CA": handshake(gateway, pki.channel_credentials()),
        "reranker: plaintext": handshake(reranker, None),
        "reranker: TLS, no client cert": handshake(reranker, pki.channel_credentials()),
        "reranker: mTLS, cert from another CA": handshake(reranker, pki.channel_credentials(client=pki.rogue_client)),
        "reranker: mTLS, right cert": handshake(reranker, pki.channel_credentials(client=pki.caller)),
        "retrieval: TLS, no client cert": handshake(retrieval, pki.channel_credentials()),
        "retrieval: mTLS, right cert": handshake(retrieval, pki.channel_credentials(client=pki.caller)),
    }
    expected_ok = {"gateway: TLS, right CA", "reranker: mTLS, right cert", "retrieval: mTLS, right cert"}
    for case, code in results.items():
        if case in expected_ok:
            assert code == grpc.StatusCode.OK, case
        else:
            assert code == grpc.StatusCode.UNAVAILABLE, (case, code)  # the handshake fails: no call is made
    figures("TLS / mTLS handshakes", **{case.replace(" ", "_"): code.name for case, code in results.items()})


def test_mtls_rerank_with_the_right_certificate(stack, pki):
    with grpc.secure_channel(stack.address("reranker"), pki.channel_credentials(client=pki.caller)) as channel:
        reply = rerank_service_pb2_grpc.RerankServiceStub(channel).Rerank(
            rerank_service_pb2.RerankRequest(query="moon and sea", passages=["tides follow the moon", "bread"]), timeout=30
        )
    assert reply.results[0].index == 0


@pytest.mark.parametrize(
    "service, env, needle",
    [
        ("reranker", {"TLS_CERT_FILE": "/nonexistent.crt"}, "TLS_KEY_FILE is not"),
        ("retrieval", {"TLS_CLIENT_CA_FILE": "/nonexistent.pem"}, "needs TLS_CERT_FILE"),
        ("gateway", {"TLS_CA_FILE": "/nonexistent.pem"}, "TLS_CA_FILE=/nonexistent.pem"),
        ("gateway", {"GATEWAY_API_KEYS_FILE": "/nonexistent-keys"}, "GATEWAY_API_KEYS_FILE=/nonexistent-keys"),
    ],
)
def test_misconfigured_security_stops_start_up(tmp_path, service, env, needle):
    """Security never silently off: a half-configured setting ends the process with the reason."""
    full_env = {**os.environ, f"{service.upper()}_PORT": "0", f"{service.upper()}_METRICS_PORT": "0",
                "QDRANT_PATH": str(tmp_path / "q"), **env}
    run = subprocess.run([sys.executable, "-m", "services.cli", "serve", service], env=full_env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, (run.returncode, run.stderr[-1500:])
    assert needle in run.stderr


def test_searchctl_over_tls_with_a_ca_file_and_a_key(stack, pki, tmp_path):
    """Every searchctl channel honours $SEARCHCTL_CA_FILE and $SEARCHCTL_API_KEY: ingest (grpc's
    blocking API, the key added by an interceptor) and search (grpc.aio); without the CA file
    the client speaks plaintext to a TLS gateway and the one line it prints names the setting."""
    corpus = tmp_path / "tls.jsonl"
    corpus.write_text("".join(f'{{"id": "{i}", "text": "{t}"}}\n' for i, t in CORPUS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHCTL_")}
    trusted = {**env, "SEARCHCTL_CA_FILE": str(pki.ca.pem), "SEARCHCTL_API_KEY": KEYS[1]}

    def searchctl(*args: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.cli", *args, "--target", stack.gateway], env=environment,
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    created = searchctl("ingest", str(corpus), "--collection", "secure-cli", environment=trusted)
    assert created.returncode == 0, created.stderr
    found = searchctl("search", "why does the sea rise and fall", "--collection", "secure-cli", "--json",
                      environment=trusted)
    assert found.returncode == 0, found.stderr
    assert '"tides"' in found.stdout
    keyless = searchctl("search", "tides", "--collection", "secure-cli", environment={**trusted, "SEARCHCTL_API_KEY": ""})
    assert keyless.returncode != 0 and "UNAUTHENTICATED" in keyless.stderr and "SEARCHCTL_API_KEY" in keyless.stderr
    untrusted = searchctl("search", "tides", "--collection", "secure-cli", environment={**env, "SEARCHCTL_API_KEY": KEYS[1]})
    assert untrusted.returncode != 0 and "UNAVAILABLE" in untrusted.stderr, untrusted.stderr
    assert "if the gateway serves TLS, set SEARCHCTL_CA_FILE" in untrusted.stderr, untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr
