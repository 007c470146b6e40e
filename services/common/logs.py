"""Structured JSON logs: one object per line on stderr, with the trace id of the request."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_RESERVED = ("asctime", "levelname", "name", "message")


class _TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` (and ``service``) to every record so a request's lines can be found."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        from services.common import tracing  # local import: tracing imports logging helpers

        record.service = self.service
        trace_id = tracing.current_trace_id()
        if trace_id:
            record.trace_id = trace_id
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_TraceContextFilter(service))
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
