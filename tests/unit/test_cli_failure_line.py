"""The one line a searchctl command prints for a failed call (services/cli/client.py rpc_failure):
the status and message, plus what to do when the cause is on the caller's side."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import rpc_failure
from services.cli.procs import free_port
from tests.conftest import REPO


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


@pytest.fixture(scope="module")
def tls_and_plain(tmp_path_factory):
    """A TLS server and a plaintext one on loopback (no service behind: the handshake is what counts)."""
    from concurrent import futures

    from tests.resilience.certs import ScratchCA

    directory = tmp_path_factory.mktemp("pki")
    ca, rogue = ScratchCA(directory / "ca"), ScratchCA(directory / "rogue", name="rogue-ca")
    issued = ca.issue("server")
    servers, ports = [], []
    for secure in (True, False):
        server, port = grpc.server(futures.ThreadPoolExecutor(1)), free_port()
        if secure:
            credentials = grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.cert.read_bytes())])
            server.add_secure_port(f"127.0.0.1:{port}", credentials)
        else:
            server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
        ports.append(port)
    yield ca, rogue, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    for server in servers:
        server.stop(None)


def failure(channel: grpc.Channel, target: str) -> str:
    with channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.SearchServiceStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=10)
    return rpc_failure("collections", err.value, target)


def test_tls_on_one_side_only_or_an_untrusted_certificate_says_which_setting(tls_and_plain):
    ca, rogue, tls, plain = tls_and_plain
    line = failure(grpc.insecure_channel(tls), tls)  # plaintext to a TLS gateway: it closes the connection
    assert line.endswith(f"({tls} closed the connection: if the gateway serves TLS, set SEARCHCTL_CA_FILE to the CA "
                         "file that signed its certificate)"), line
    line = failure(grpc.secure_channel(plain, grpc.ssl_channel_credentials(ca.pem.read_bytes())), plain)
    assert line.endswith(f"({plain} does not answer TLS: unset SEARCHCTL_CA_FILE for a gateway without TLS)"), line
    line = failure(grpc.secure_channel(tls, grpc.ssl_channel_credentials(rogue.pem.read_bytes())), tls)
    assert line.endswith(f"(the certificate of {tls} is not signed by the CA in SEARCHCTL_CA_FILE: name the CA file "
                         "that signed it)"), line
    assert "no gateway answers" not in line


def test_an_unreadable_ca_file_is_one_line_naming_the_setting(tmp_path):
    env = {**os.environ, "SEARCHCTL_CA_FILE": str(tmp_path / "missing-ca.pem")}
    run = subprocess.run([sys.executable, "-m", "services.cli", "search", "x", "--collection", "c", "--target",
                          f"127.0.0.1:{free_port()}"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"searchctl: SEARCHCTL_CA_FILE={tmp_path / 'missing-ca.pem'}: cannot read it (No such "
                                  "file or directory): name the CA file that signed the gateway's certificate, or unset "
                                  "it for a gateway without TLS"), run.stderr
