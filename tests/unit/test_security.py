"""Security settings, API keys and credentials (handshakes are in tests/resilience/test_security_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.common import security
from services.common.config import ConfigError
from services.common.security import ApiKeyChecker, SecurityConfig, load_security, resolve_internal_token


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.resilience.certs import ScratchCA

    ca = ScratchCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("server"), ca.issue("client", server=False, client=True)


def test_nothing_set_is_plaintext():
    sc = load_security({})
    assert not sc.server_tls and not sc.channel_tls
    assert security.server_credentials(sc) is None and security.channel_credentials(sc) is None
    assert sc.describe() == {"server_transport": "plaintext", "channel_transport": "plaintext"}


def test_env_names():
    env = {f.metadata["env"] for f in security.dataclasses.fields(SecurityConfig)}
    assert env == {"TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE", "TLS_CA_FILE", "TLS_CLIENT_CERT_FILE", "TLS_CLIENT_KEY_FILE",
                   "INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE"}


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"TLS_CERT_FILE": "x"}, "TLS_CERT_FILE is set but TLS_KEY_FILE is not"),
        ({"TLS_KEY_FILE": "x"}, "TLS_KEY_FILE is set but TLS_CERT_FILE is not"),
        ({"TLS_CLIENT_CERT_FILE": "x"}, "TLS_CLIENT_KEY_FILE is not"),
        ({"TLS_CLIENT_CA_FILE": "x"}, "needs TLS_CERT_FILE"),
    ],
)
def test_half_configured_tls_is_refused(env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_security(env)


def test_unreadable_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"TLS_CA_FILE=.*missing\.pem: file does not exist"):
        load_security({"TLS_CA_FILE": str(tmp_path / "missing.pem")})


def test_credentials_from_real_files(pki):
    ca, server, client = pki
    sc = load_security(
        {
            "TLS_CERT_FILE": str(server.cert), "TLS_KEY_FILE": str(server.key), "TLS_CLIENT_CA_FILE": str(ca.pem),
            "TLS_CA_FILE": str(ca.pem), "TLS_CLIENT_CERT_FILE": str(client.cert), "TLS_CLIENT_KEY_FILE": str(client.key),
        }
    )
    assert sc.server_mtls and sc.channel_tls
    assert sc.describe() == {"server_transport": "mtls", "channel_transport": "mtls"}
    assert isinstance(security.server_credentials(sc), grpc.ServerCredentials)
    assert isinstance(security.channel_credentials(sc), grpc.ChannelCredentials)


@pytest.mark.parametrize(
    "metadata, reason",
    [
        ((), "missing API key"),
        ((("x-other", "1"),), "missing API key"),
        ((("authorization", "alpha-key"),), "malformed"),
        ((("authorization", "Basic alpha-key"),), "malformed"),
        ((("authorization", "Bearer "),), "malformed"),
        ((("authorization", "Bearer alpha-ke"),), "invalid API key"),
        ((("authorization", "Bearer alpha-key2"),), "invalid API key"),
        ((("authorization", "Bearer alpha-key"),), None),
        ((("authorization", "bearer beta-key"),), None),
        ((("Authorization", b"Bearer beta-key"),), None),
    ],
)
def test_key_checker(metadata, reason):
    got = ApiKeyChecker(["alpha-key", "beta-key"]).check(metadata)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_key_checker_needs_a_key():
    with pytest.raises(ValueError):
        ApiKeyChecker([])


def test_docs_list_every_security_setting():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    table = security.markdown_table()
    assert table in doc, "docs/ARCHITECTURE.md: paste the security table of `searchctl config-docs`"


TOKEN = "internal-3b8e61c0d2f4a975"


def test_internal_token_from_env_or_file(tmp_path):
    assert resolve_internal_token(load_security({})) is None
    assert resolve_internal_token(load_security({"INTERNAL_TOKEN": f" {TOKEN} "})) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"# mounted from a Secret\n\n{TOKEN}\n")
    assert resolve_internal_token(load_security({"INTERNAL_TOKEN_FILE": str(token_file)})) == TOKEN


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"INTERNAL_TOKEN": "short"}, "at least 16 printable characters"),
        ({"INTERNAL_TOKEN": "sixteen chars but blanks"}, "without blanks"),
        ({"INTERNAL_TOKEN": TOKEN, "INTERNAL_TOKEN_FILE": "/etc/hostname"}, "both set"),
        ({"INTERNAL_TOKEN_FILE": "/nonexistent-token"}, "INTERNAL_TOKEN_FILE=/nonexistent-token"),
    ],
)
def test_a_bad_internal_token_stops_start_up(env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_security(env)


def test_an_empty_token_file_stops_start_up(tmp_path):
    empty = tmp_path / "token"
    empty.write_text("# not yet\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_security({"INTERNAL_TOKEN_FILE": str(empty)})


def test_the_internal_token_check_names_its_credential():
    checker = ApiKeyChecker([TOKEN], "internal token", "INTERNAL_TOKEN")
    assert checker.check(()) == "missing internal token: send metadata 'authorization: Bearer <INTERNAL_TOKEN>'"
    assert checker.check((("authorization", "Bearer nope"),)) == "invalid internal token"
    assert checker.check((("authorization", f"Bearer {TOKEN}"),)) is None


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self, events: list) -> None:
        self.events = events

    async def abort(self, code, details):
        self.events.append(("abort", code))
        raise _Aborted(details)


async def _stream(events: list, n: int):
    for i in range(n):
        events.append(("read", i))
        yield b"raw"


@pytest.mark.parametrize("kind", ["stream_unary", "stream_stream"])
def test_a_refused_client_stream_is_read_to_its_end_before_the_refusal(kind):
    """An asyncio caller still writing when the status goes out sees INTERNAL instead of it
    (grpc/grpc#36066): the rejecting handler reads the caller's stream first (services/common/streams.py)."""
    import asyncio

    inner = {"stream_unary": grpc.stream_unary_rpc_method_handler,
             "stream_stream": grpc.stream_stream_rpc_method_handler}[kind](lambda *_: None)
    handler = security._rejecting_handler(inner, "missing internal token")
    events: list = []

    async def run():
        behavior = getattr(handler, kind)
        with pytest.raises(_Aborted):
            result = behavior(_stream(events, 3), _Context(events))
            if kind == "stream_stream":
                async for _ in result:
                    pass
            else:
                await result

    asyncio.run(run())
    assert events == [("read", 0), ("read", 1), ("read", 2), ("abort", grpc.StatusCode.UNAUTHENTICATED)]


def test_the_drain_before_a_refusal_is_bounded_and_survives_a_failing_stream():
    import asyncio
    import time

    from services.common import streams

    async def endless():
        while True:
            await asyncio.sleep(0.01)
            yield b"more"

    async def broken():
        yield b"one"
        raise ConnectionResetError("the caller went away")

    async def run():
        start = time.monotonic()
        await streams.drain_quietly(endless(), seconds=0.2)
        waited = time.monotonic() - start
        await streams.drain_quietly(broken())
        return waited

    assert 0.2 <= asyncio.run(run()) < 5.0
