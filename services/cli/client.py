"""searchctl's client library for the gateway: channels (grpc.aio and blocking, with the API key
and TLS settings), the one retry policy, and the connection help every command shows. It holds
no command and imports none: the commands import it."""

from __future__ import annotations

import argparse
import os
from collections import namedtuple
from pathlib import Path

import grpc
from tenacity import retry_if_exception, stop_after_attempt, wait_exponential

from services.common import api_names
from services.common.config import ConfigError
from services.common.security import BearerToken, bearer_interceptors

DEFAULT_TARGET = "localhost:50051"
MODES = api_names.CLI_RETRIEVAL_MODES
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def transient(exc: BaseException) -> bool:
    """A failure worth retrying: the service was unreachable, overloaded or too slow."""
    return isinstance(exc, grpc.RpcError) and exc.code() in RETRYABLE


def retry_policy(attempts: int = 5, before_sleep=None) -> dict:
    """searchctl's one retry policy (tenacity keyword arguments): transient failures only,
    ``attempts`` tries, waits doubling from 0.5 s to at most 8 s, the last error re-raised."""
    return {
        "stop": stop_after_attempt(attempts),
        "wait": wait_exponential(multiplier=0.5, max=8.0),
        "retry": retry_if_exception(transient),
        "reraise": True,
        "before_sleep": before_sleep,
    }


API_KEY_ENV = "SEARCHCTL_API_KEY"
CA_FILE_ENV = "SEARCHCTL_CA_FILE"


def _channel_settings(api_key: str | None, ca_file: str | None) -> tuple[str | None, bytes | None, list]:
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    ca_file = ca_file if ca_file is not None else os.environ.get(CA_FILE_ENV) or None
    options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    try:
        ca = Path(ca_file).read_bytes() if ca_file else None
    except OSError as exc:
        raise ConfigError(f"{CA_FILE_ENV}={ca_file}: cannot read it ({exc.strerror or exc}): name the CA file that "
                          "signed the gateway's certificate, or unset it for a gateway without TLS") from exc
    return api_key, ca, options


def open_channel(target: str, api_key: str | None = None, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway; ``api_key`` (default $SEARCHCTL_API_KEY) is sent as a bearer
    token, ``ca_file`` (default $SEARCHCTL_CA_FILE) turns TLS on and verifies the gateway."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    interceptors = bearer_interceptors(api_key) if api_key else None  # unary and streaming calls
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def open_blocking_channel(target: str, api_key: str | None = None, ca_file: str | None = None) -> grpc.Channel:
    """The same channel on grpc's blocking API: its every call carries the bearer token, as
    :func:`open_channel`'s do (the streamed ingest uses it: services/cli/ingest_stream.py says why)."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    if ca:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _WithMetadata((BearerToken(api_key).entry,))) if api_key else channel


class _CallDetails(namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                               "compression")), grpc.ClientCallDetails):
    pass


class _WithMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``metadata`` to every call of a blocking channel, whatever its type."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, (*(d.metadata or ()), *self.metadata), d.credentials,
                            d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def unreachable(code: str, details: str, target: str) -> str | None:
    """What to do when a call failed because no gateway could be reached at ``target`` (nothing
    listening, or TLS on one side only, or a certificate not trusted), else None. ``code``: the
    status's name; ``details``: its message, where grpc names the transport's failure."""
    if code != "UNAVAILABLE" or "failed to connect" not in details:
        return None
    if "Socket closed" in details:  # a plaintext hello to a TLS server
        return (f"{target} closed the connection: if the gateway serves TLS, set {CA_FILE_ENV} to the CA file that "
                "signed its certificate")
    if "WRONG_VERSION_NUMBER" in details:  # a TLS hello to a plaintext server
        return f"{target} does not answer TLS: unset {CA_FILE_ENV} for a gateway without TLS"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return f"the certificate of {target} is not signed by the CA in {CA_FILE_ENV}: name the CA file that signed it"
    if "handshake" in details.lower() or "Peer name" in details:
        return f"the TLS handshake with {target} failed: check {CA_FILE_ENV} and that the certificate names that host"
    return f"no gateway answers at {target}: start one with `searchctl up`, or name it with --target"


def rpc_failure(command: str, exc: grpc.RpcError, target: str) -> str:
    """The one line a command prints for a failed call: the status, the server's message and,
    when the cause is on the caller's side (nothing listening, TLS settings, no key), what to do about it."""
    details = exc.details() or ""
    line = f"searchctl {command}: {exc.code().name}: {details}"
    hint = unreachable(exc.code().name, details, target)
    if hint:
        line += f" ({hint})"
    elif exc.code() == grpc.StatusCode.UNAUTHENTICATED and not os.environ.get(API_KEY_ENV):
        line += f" (set {API_KEY_ENV} to a key from the gateway's callers file)"
    return line


def connection_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"A gateway that requires an API key: set {API_KEY_ENV} (sent as 'authorization: Bearer <key>'; "
        f"not a flag, so the key stays out of the process list). A TLS gateway: set {CA_FILE_ENV} to its CA bundle."
    )
