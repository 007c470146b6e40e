"""Transport security for every service: TLS / mTLS on the gRPC port and on outgoing channels,
the gateway's optional API-key check, and the internal token between the services.

TLS is configured by environment variables only (:class:`SecurityConfig`), loaded by
:func:`services.common.server.run`, so every service gets it without its own settings:

- server side: ``TLS_CERT_FILE`` + ``TLS_KEY_FILE`` turn TLS on for the service's gRPC port;
  ``TLS_CLIENT_CA_FILE`` in addition makes it mutual: a client must present a certificate
  signed by that CA or the handshake fails.
- client side (the gateway's channels to retrieval and reranker): ``TLS_CA_FILE`` turns TLS
  on and is the CA the servers' certificates must chain to; ``TLS_CLIENT_CERT_FILE`` +
  ``TLS_CLIENT_KEY_FILE`` is the certificate the gateway presents for mTLS.

Nothing set means plaintext, as before (a mesh or a private network may provide TLS).
A half-configured pair (a certificate without its key, a client CA without a server
certificate) is refused at start-up with the variable named: security never silently off.

Bearer credentials (:class:`ApiKeyChecker`, :class:`ApiKeyInterceptor`): ``authorization:
Bearer <key>``, compared as SHA-256 digests with :func:`hmac.compare_digest` against every
accepted key (no early exit), so timing reveals neither a key nor which key matched. Health and
reflection stay reachable without one (probes, grpcurl ``list``). The gateway's callers (named
keys with scopes, quotas, certificate identities) are services/gateway/callers.py and guard.py.

Internal token (:class:`InternalTokenInterceptor`): API keys guard the gateway only; without
more, anyone who reaches retrieval's or the reranker's port bypasses them. With
``INTERNAL_TOKEN`` (or ``INTERNAL_TOKEN_FILE``) set, the internal services (every service but
the edge one, see :func:`services.common.server.run`) answer UNAUTHENTICATED to any call
without ``authorization: Bearer <token>`` (health and reflection excepted, checked the same
constant-time way), and the gateway sends it on its channels (:class:`BearerToken`).
``searchctl up`` generates one when the gateway requires API keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common import config as cfg, streams
from services.common.config import ConfigError, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecurityConfig:
    cert_file: str | None = setting(
        None, "TLS_CERT_FILE", "PEM certificate chain this service presents on its gRPC port; with TLS_KEY_FILE turns TLS on"
    )
    key_file: str | None = setting(None, "TLS_KEY_FILE", "PEM private key of TLS_CERT_FILE")
    client_ca_file: str | None = setting(
        None,
        "TLS_CLIENT_CA_FILE",
        "PEM CA bundle that signs client certificates; set: clients must present one (mTLS). Needs TLS_CERT_FILE",
    )
    ca_file: str | None = setting(
        None,
        "TLS_CA_FILE",
        "PEM CA bundle the downstream servers' certificates must chain to; set: outgoing channels (gateway -> retrieval, reranker) use TLS",
    )
    client_cert_file: str | None = setting(
        None, "TLS_CLIENT_CERT_FILE", "PEM certificate chain presented on outgoing channels (mTLS); with TLS_CLIENT_KEY_FILE"
    )
    client_key_file: str | None = setting(None, "TLS_CLIENT_KEY_FILE", "PEM private key of TLS_CLIENT_CERT_FILE")
    internal_token: str | None = setting(
        None,
        "INTERNAL_TOKEN",
        "shared secret of the services (at least 16 printable characters): set, retrieval and reranker answer "
        "UNAUTHENTICATED to calls without 'authorization: Bearer <token>' (health and reflection excepted) and the "
        "gateway sends it; `searchctl up` generates one when the gateway requires API keys",
    )
    internal_token_file: str | None = setting(
        None, "INTERNAL_TOKEN_FILE", "file holding INTERNAL_TOKEN (its first line that is not blank or a # comment), e.g. a mounted Secret"
    )

    @property
    def server_tls(self) -> bool:
        return bool(self.cert_file)

    @property
    def server_mtls(self) -> bool:
        return bool(self.cert_file and self.client_ca_file)

    @property
    def channel_tls(self) -> bool:
        return bool(self.ca_file or self.client_cert_file)

    def describe(self) -> dict[str, str]:
        """For the start-up log line: what is on, never a key."""
        server = "mtls" if self.server_mtls else "tls" if self.server_tls else "plaintext"
        channels = ("mtls" if self.client_cert_file else "tls") if self.channel_tls else "plaintext"
        return {"server_transport": server, "channel_transport": channels}


def _env(name: str) -> str:
    return next(f.metadata["env"] for f in dataclasses.fields(SecurityConfig) if f.name == name)


def validate(sc: SecurityConfig) -> SecurityConfig:
    """Refuse half-configured TLS and unreadable files, naming the variable."""
    pairs = (("cert_file", "key_file"), ("client_cert_file", "client_key_file"))
    for a, b in pairs:
        if bool(getattr(sc, a)) != bool(getattr(sc, b)):
            have, missing = (a, b) if getattr(sc, a) else (b, a)
            raise ConfigError(f"{_env(have)} is set but {_env(missing)} is not; set both or neither")
    if sc.client_ca_file and not sc.cert_file:
        raise ConfigError(f"{_env('client_ca_file')} (mTLS) needs {_env('cert_file')} and {_env('key_file')}")
    for f in dataclasses.fields(SecurityConfig):
        path = getattr(sc, f.name)
        if f.name.endswith("_file") and path and not os.access(path, os.R_OK):
            raise ConfigError(f"{f.metadata['env']}={path}: file does not exist or is not readable")
    resolve_internal_token(sc)  # a bad token fails at start-up too
    return sc


def load_security(environ: Mapping[str, str] | None = None) -> SecurityConfig:
    """:class:`SecurityConfig` from the environment, validated."""
    return validate(cfg.load(SecurityConfig, None, environ))


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(sc: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for a server's port, or None for plaintext."""
    if not sc.server_tls:
        return None
    client_ca = _read(sc.client_ca_file)
    return grpc.ssl_server_credentials(
        [(_read(sc.key_file), _read(sc.cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(sc: SecurityConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials for an outgoing channel, or None for plaintext."""
    if not sc.channel_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(sc.ca_file),  # None: the system's roots
        private_key=_read(sc.client_key_file),
        certificate_chain=_read(sc.client_cert_file),
    )


#: What an internal token may hold: printable ASCII without blanks (it travels as metadata).
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")


def resolve_internal_token(sc: SecurityConfig) -> str | None:
    """The internal token from ``INTERNAL_TOKEN`` or ``INTERNAL_TOKEN_FILE``; None when neither is set.

    Set but unusable (both set, an unreadable or empty file, too short, blanks) is an error
    naming the variable: a typo must not turn the check off.
    """
    if sc.internal_token and sc.internal_token_file:
        raise ConfigError("INTERNAL_TOKEN and INTERNAL_TOKEN_FILE are both set; set one")
    source, token = "INTERNAL_TOKEN", sc.internal_token
    if sc.internal_token_file:
        source = f"INTERNAL_TOKEN_FILE={sc.internal_token_file}"
        try:
            lines = parse_api_keys(Path(sc.internal_token_file).read_text().splitlines())
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
        if not lines:
            raise ConfigError(f"{source} holds no token")
        token = lines[0]
    if token is None:
        return None
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"{source}: the internal token must be at least 16 printable characters without blanks "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def markdown_table() -> str:
    """The security settings for docs/ARCHITECTURE.md (env only: shared by every service)."""
    lines = ["| env var | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(SecurityConfig):
        lines.append(f"| `{f.metadata['env']}` | `unset` | {f.metadata['help']} |")
    return "\n".join(lines)


# --- API keys -----------------------------------------------------------------------------

#: Methods reachable without a key: health (probes) and reflection (discovery).
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def parse_api_keys(lines: Iterable[str]) -> list[str]:
    """Keys from lines: surrounding blanks stripped; empty lines and ``#`` comments skipped."""
    keys = []
    for line in lines:
        key = line.strip()
        if key and not key.startswith("#"):
            keys.append(key)
    return keys


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyChecker:
    """Constant-time membership of a presented key among the configured ones.

    ``what`` and ``placeholder`` name the credential in the reasons given to callers.
    """

    def __init__(self, keys: Sequence[str], what: str = "API key", placeholder: str = "key") -> None:
        if not keys:
            raise ValueError("ApiKeyChecker needs at least one key")
        self._digests = [_digest(k) for k in keys]
        self.what, self.placeholder = what, placeholder

    def __len__(self) -> int:
        return len(self._digests)

    def valid(self, presented: str | bytes) -> bool:
        candidate = _digest(presented)
        ok = False
        for known in self._digests:  # every key compared: no early exit
            ok |= hmac.compare_digest(candidate, known)
        return ok

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """None when the metadata carries a valid key; else the reason to give the caller."""
        values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if not values:
            return f"missing {self.what}: send metadata 'authorization: Bearer <{self.placeholder}>'"
        value = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return f"malformed authorization metadata: expected 'Bearer <{self.placeholder}>'"
        if not self.valid(token.strip()):
            return f"invalid {self.what}"
        return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid bearer key with UNAUTHENTICATED, before any work is done."""

    what, placeholder = "API key", "key"

    def __init__(self, keys: Sequence[str], exempt_prefixes: Sequence[str] = UNAUTHENTICATED_PREFIXES) -> None:
        self.checker = ApiKeyChecker(keys, self.what, self.placeholder)
        self.exempt = tuple(exempt_prefixes)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self.exempt):
            return await continuation(handler_call_details)
        reason = self.checker.check(handler_call_details.invocation_metadata)
        if reason is None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        return _rejecting_handler(handler, reason)


class InternalTokenInterceptor(ApiKeyInterceptor):
    """The internal services' check: the one accepted key is the internal token."""

    what, placeholder = "internal token", "INTERNAL_TOKEN"

    def __init__(self, token: str, exempt_prefixes: Sequence[str] = UNAUTHENTICATED_PREFIXES) -> None:
        super().__init__([token], exempt_prefixes)


class _BearerEntry:
    """What the four call types' interceptors share: the metadata entry and adding it to a call."""

    def __init__(self, entry: tuple[str, str]) -> None:
        self.entry = entry

    def _with_entry(self, client_call_details):
        return client_call_details._replace(metadata=[*(client_call_details.metadata or ()), self.entry])


class BearerToken(_BearerEntry, grpc.aio.UnaryUnaryClientInterceptor):
    """Client side: adds ``authorization: Bearer <token>`` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        super().__init__(("authorization", f"Bearer {token}"))

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._with_entry(client_call_details), request)


class _BearerTokenUnaryStream(_BearerEntry, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._with_entry(client_call_details), request)


class _BearerTokenStreamUnary(_BearerEntry, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_entry(client_call_details), request_iterator)


class _BearerTokenStreamStream(_BearerEntry, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._with_entry(client_call_details), request_iterator)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """``authorization: Bearer <token>`` on every call of a channel, streaming ones too (grpc.aio
    files an interceptor under one call type only, so there is one per type)."""
    entry = ("authorization", f"Bearer {token}")
    return [BearerToken(token), _BearerTokenUnaryStream(entry), _BearerTokenStreamUnary(entry), _BearerTokenStreamStream(entry)]


def _rejecting_handler(handler, reason: str):
    async def reject(request_or_requests, context):
        # A client stream is refused once the caller has finished writing (at most
        # streams.DRAIN_SECONDS), or an asyncio caller may see INTERNAL instead (services/common/streams.py).
        if hasattr(request_or_requests, "__aiter__"):
            await streams.drain_quietly(request_or_requests)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def reject_stream(request_or_requests, context):
        await reject(request_or_requests, context)
        yield  # pragma: no cover - makes this an async generator

    # Raw bytes in (no deserializer): a malformed body of an unauthenticated call costs nothing.
    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(reject_stream)
    if handler is not None and handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler is not None and handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(reject_stream)
    return grpc.unary_unary_rpc_method_handler(reject)
