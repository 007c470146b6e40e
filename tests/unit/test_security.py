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
