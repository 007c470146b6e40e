"""searchctl's client library for the gateway: channels (grpc.aio and blocking, with the API key
and TLS settings), the one retry policy, and the connection help every command shows. It holds
no command and imports none: the commands import it."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import grpc
from tenacity import retry_if_exception, stop_after_attempt, wait_exponential

from services.common import api_names
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
    return api_key, Path(ca_file).read_bytes() if ca_file else None, options


def open_channel(target: str, api_key: str | None = None, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway; ``api_key`` (default $SEARCHCTL_API_KEY) is sent as a bearer
    token, ``ca_file`` (default $SEARCHCTL_CA_FILE) turns TLS on and verifies the gateway."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    interceptors = bearer_interceptors(api_key) if api_key else None  # unary and streaming calls
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def open_blocking_channel(target: str, api_key: str | None = None,
                          ca_file: str | None = None) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """The same channel on grpc's blocking API, and the metadata its calls carry (the bearer
    token). The streamed ingest uses it (services/cli/ingest_stream.py says why)."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    metadata = (BearerToken(api_key).entry,) if api_key else ()
    if ca:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=options), metadata
    return grpc.insecure_channel(target, options=options), metadata


class _StubWithMetadata:
    def __init__(self, stub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str):
        return functools.partial(getattr(self._stub, name), metadata=self._metadata)


def with_metadata(stub, metadata: tuple[tuple[str, str], ...]):
    """A blocking ``stub`` whose every call carries ``metadata`` (:func:`open_blocking_channel`'s
    bearer token); ``stub`` itself when there is none."""
    return _StubWithMetadata(stub, metadata) if metadata else stub


def no_gateway(code: str, details: str, target: str) -> str | None:
    """What to do when a call failed because nothing answers at ``target`` (``code``: the status's name), else None."""
    if code == "UNAVAILABLE" and "failed to connect" in details:
        return f"no gateway answers at {target}: start one with `searchctl up`, or name it with --target"
    return None


def rpc_failure(command: str, exc: grpc.RpcError, target: str) -> str:
    """The one line a command prints for a failed call: the status, the server's message and,
    when the cause is on the caller's side (nothing listening, no key), what to do about it."""
    details = exc.details() or ""
    line = f"searchctl {command}: {exc.code().name}: {details}"
    hint = no_gateway(exc.code().name, details, target)
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
