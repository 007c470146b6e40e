"""searchctl's client library for the gateway: channels (grpc.aio and blocking, with the API key
and TLS settings), the one retry policy, and the connection help every command shows. It holds
no command and imports none: the commands import it."""

from __future__ import annotations

import argparse
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


def connection_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"A gateway that requires an API key: set {API_KEY_ENV} (sent as 'authorization: Bearer <key>'; "
        f"not a flag, so the key stays out of the process list). A TLS gateway: set {CA_FILE_ENV} to its CA bundle."
    )
