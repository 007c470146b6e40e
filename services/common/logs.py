"""Structured JSON logs: one object per line on stderr, with the trace id of the request, and on
the gateway the name of the caller it serves."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

_RESERVED = ("asctime", "levelname", "name", "message")

#: The caller a request is served for (set by the gateway's caller interceptor, services/gateway/
#: guard.py, for the request's task): every log line written while serving it carries ``caller``.
CALLER: ContextVar[str | None] = ContextVar("caller", default=None)


class _TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (and ``service``, and ``caller`` inside a gateway request) to
    every record so a request's lines can be found.

    The ids come from the OpenTelemetry context current where the record is made: inside
    a grpc.aio handler (the server span is current in the handler's task) and in the
    threads the handlers hand work to with the context copied. Outside a request, or with
    tracing off, the record has no ids.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        caller = CALLER.get()
        if caller is not None and not hasattr(record, "caller"):
            record.caller = caller
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def json_handler(service: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing one JSON object per record to ``stream`` (stderr), with the trace ids."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_TraceContextFilter(service))
    return handler


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines; idempotent."""
    handler = json_handler(service)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        root.setLevel(logging.INFO)
        logging.getLogger(__name__).warning("unknown log level, using INFO", extra={"requested": level})
    # Third-party chatter that is not actionable for operators.
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
