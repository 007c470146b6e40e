"""Request limits and validation shared by the gateway and the retrieval service.

Every limit is documented in docs/ARCHITECTURE.md ("Limits"). A batch is validated
whole before anything is written, so a rejected request writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from google.protobuf import json_format

from search.v1 import common_pb2
from services.common.errors import InvalidArgument

MAX_QUERY_CHARS = 2048
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
MAX_CANDIDATES = 200
MAX_BATCH_DOCUMENTS = 1000
MAX_ID_BYTES = 256
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 200_000
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_RERANK_PASSAGES = 512
MAX_PASSAGE_CHARS = 20_000
COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")


def collection_name(name: str, field: str = "collection") -> str:
    if not name:
        raise InvalidArgument(field, "is required")
    if not COLLECTION_PATTERN.match(name):
        raise InvalidArgument(field, "1..63 characters of letters, digits, '_' and '-', starting with a letter or digit")
    return name


def query_text(query: str, field: str = "query") -> str:
    if not query or not query.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(field, f"is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    return query


def bounded_int(value: int, field: str, low: int, high: int) -> int:
    if value < low or value > high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def top_k(value: int, field: str = "top_k") -> int:
    """0 means the default; negative or over the limit is an error."""
    if value == 0:
        return DEFAULT_TOP_K
    return bounded_int(value, field, 1, MAX_TOP_K)


def documents(docs: Sequence[common_pb2.Document], field: str = "documents") -> list[dict]:
    """Validate a batch; returns plain dicts (id, title, text, payload). Raises on the first bad document."""
    if not docs:
        raise InvalidArgument(field, "give at least one document")
    if len(docs) > MAX_BATCH_DOCUMENTS:
        raise InvalidArgument(field, f"{len(docs)} documents in one request; the limit is {MAX_BATCH_DOCUMENTS}, split the batch")
    seen: set[str] = set()
    out = []
    for i, doc in enumerate(docs):
        where = f"{field}[{i}]"
        if not doc.id:
            raise InvalidArgument(f"{where}.id", "is required")
        if len(doc.id.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"{where}.id", f"is longer than {MAX_ID_BYTES} bytes")
        if doc.id in seen:
            raise InvalidArgument(f"{where}.id", f"duplicate id {doc.id!r} in one batch")
        seen.add(doc.id)
        if not doc.text.strip():
            raise InvalidArgument(f"{where}.text", f"document {doc.id!r} has no text")
        if len(doc.text) > MAX_TEXT_CHARS:
            raise InvalidArgument(f"{where}.text", f"is {len(doc.text)} characters; the limit is {MAX_TEXT_CHARS}")
        if len(doc.title) > MAX_TITLE_CHARS:
            raise InvalidArgument(f"{where}.title", f"is longer than {MAX_TITLE_CHARS} characters")
        if doc.payload.ByteSize() > MAX_PAYLOAD_BYTES:
            raise InvalidArgument(f"{where}.payload", f"is {doc.payload.ByteSize()} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        out.append(
            {"id": doc.id, "title": doc.title, "text": doc.text, "payload": json_format.MessageToDict(doc.payload)}
        )
    return out


def ids(values: Sequence[str], field: str = "ids") -> list[str]:
    if not values:
        raise InvalidArgument(field, "give at least one id")
    if len(values) > MAX_BATCH_DOCUMENTS:
        raise InvalidArgument(field, f"{len(values)} ids in one request; the limit is {MAX_BATCH_DOCUMENTS}")
    for i, value in enumerate(values):
        if not value or len(value.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"{field}[{i}]", f"ids are 1..{MAX_ID_BYTES} bytes")
    return list(dict.fromkeys(values))
