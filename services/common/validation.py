"""Request limits and validation shared by the gateway and the retrieval service.

Every limit is documented in docs/ARCHITECTURE.md ("Limits"). A batch is validated
whole before anything is written, so a rejected request writes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from google.protobuf import json_format, struct_pb2

from search.v1 import common_pb2
from services.common.errors import InvalidArgument

MAX_QUERY_CHARS = 2048
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
#: Candidates the gateway reranks (RerankOptions.candidates; unset: GATEWAY_DEFAULT_CANDIDATES).
MAX_CANDIDATES = 200
#: Candidates one Retrieve returns (RetrieveRequest.limit, 0 = the default). Larger than
#: MAX_CANDIDATES: the gateway asks for offset + top_k + 1 when that exceeds the rerank depth,
#: and internal callers (eval, reindex checks) read deeper lists.
DEFAULT_RETRIEVE_LIMIT = 50
MAX_RETRIEVE_LIMIT = 1000
MAX_BATCH_DOCUMENTS = 1000
MAX_ID_BYTES = 256
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 200_000
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_PAYLOAD_DEPTH = 16
MAX_RERANK_PASSAGES = 512
MAX_PASSAGE_CHARS = 20_000
COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")
# Filters (the retrieval service applies the same limits in services/retrieval/filters.py).
MAX_FILTER_DEPTH = 4
MAX_FILTER_CONDITIONS = 64
MAX_ANY_VALUES = 256
MAX_FILTER_KEY_CHARS = 128
MAX_KEYWORD_CHARS = 1024
FILTER_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
MAX_FILTER_FIELDS = 32
# Hybrid fusion options.
MAX_RRF_K = 1000
MAX_PREFETCH_LIMIT = 1000
RETRIEVAL_MODES = frozenset(common_pb2.RetrievalMode.values())
FUSION_METHODS = frozenset(common_pb2.FusionMethod.values())
FIELD_TYPES = frozenset(common_pb2.FieldType.values()) - {common_pb2.FIELD_TYPE_UNSPECIFIED}


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


def defaulted_int(value: int, field: str, default: int, high: int) -> int:
    """A count where 0 means ``default``; negative or over ``high`` is an error."""
    return default if value == 0 else bounded_int(value, field, 1, high)


def top_k(value: int, field: str = "top_k") -> int:
    return defaulted_int(value, field, DEFAULT_TOP_K, MAX_TOP_K)


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
        out.append(document(doc, where))
        if doc.id in seen:
            raise InvalidArgument(f"{where}.id", f"duplicate id {doc.id!r} in one batch")
        seen.add(doc.id)
    return out


def document(doc: common_pb2.Document, where: str = "document") -> dict:
    """One document, as plain dict (id, title, text, payload); ``where`` prefixes the field named.

    A document is its title and its text: it needs an id and at least one of the two (a
    bibliographic record often has a title and no body). What the models and BM25 read of it
    is :func:`document_text`; what is stored and returned is the title and the text as given.
    """
    if not doc.id:
        raise InvalidArgument(f"{where}.id", "is required")
    if len(doc.id.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(f"{where}.id", f"is longer than {MAX_ID_BYTES} bytes")
    if not (doc.text.strip() or doc.title.strip()):
        raise InvalidArgument(f"{where}.text", f"document {doc.id!r} has neither text nor title; give it at least one")
    if len(doc.text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"{where}.text", f"is {len(doc.text)} characters; the limit is {MAX_TEXT_CHARS}")
    if len(doc.title) > MAX_TITLE_CHARS:
        raise InvalidArgument(f"{where}.title", f"is longer than {MAX_TITLE_CHARS} characters")
    if doc.payload.ByteSize() > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(f"{where}.payload", f"is {doc.payload.ByteSize()} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    payload_values(doc.payload, f"{where}.payload")
    return {"id": doc.id, "title": doc.title, "text": doc.text, "payload": json_format.MessageToDict(doc.payload)}


def document_text(title: str, text: str) -> str:
    """What the bi-encoder, BM25, the late-interaction model and the cross-encoder read of a
    document (or of one passage of it): the title, then the text on the next line; either
    alone when the other is empty."""
    return f"{title}\n{text}" if title and text else title or text


def payload_values(payload: struct_pb2.Struct, field: str = "payload") -> None:
    """JSON-representable values only: finite numbers, nesting at most MAX_PAYLOAD_DEPTH."""
    stack: list[tuple[struct_pb2.Value, int]] = [(v, 1) for v in payload.fields.values()]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            raise InvalidArgument(field, f"nests deeper than {MAX_PAYLOAD_DEPTH} levels")
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            raise InvalidArgument(field, "numbers must be finite (JSON has no NaN or Infinity)")
        if kind == "struct_value":
            stack.extend((v, depth + 1) for v in value.struct_value.fields.values())
        elif kind == "list_value":
            stack.extend((v, depth + 1) for v in value.list_value.values)


def ids(values: Sequence[str], field: str = "ids") -> list[str]:
    if not values:
        raise InvalidArgument(field, "give at least one id")
    if len(values) > MAX_BATCH_DOCUMENTS:
        raise InvalidArgument(field, f"{len(values)} ids in one request; the limit is {MAX_BATCH_DOCUMENTS}")
    for i, value in enumerate(values):
        if not value or len(value.encode()) > MAX_ID_BYTES:
            raise InvalidArgument(f"{field}[{i}]", f"ids are 1..{MAX_ID_BYTES} bytes")
    return list(dict.fromkeys(values))


def rerank_passages(values: Sequence[str], field: str = "passages") -> list[str]:
    """A Rerank's passages: 1..MAX_RERANK_PASSAGES, each at most MAX_PASSAGE_CHARS."""
    if not values:
        raise InvalidArgument(field, "give at least one passage")
    if len(values) > MAX_RERANK_PASSAGES:
        raise InvalidArgument(field, f"{len(values)} passages; the limit is {MAX_RERANK_PASSAGES}")
    for i, passage in enumerate(values):
        if len(passage) > MAX_PASSAGE_CHARS:
            raise InvalidArgument(f"{field}[{i}]", f"is {len(passage)} characters; the limit is {MAX_PASSAGE_CHARS}")
    return list(values)


def retrieval_mode(value: int, field: str = "mode") -> int:
    if value not in RETRIEVAL_MODES:
        raise InvalidArgument(field, f"unknown retrieval mode {value}; use DENSE, SPARSE, HYBRID or leave it unset")
    return value


def unit_interval(value: float, field: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidArgument(field, f"must be between 0 and 1, got {value}")
    return value


def retrieve_limit(value: int, field: str = "limit") -> int:
    return defaulted_int(value, field, DEFAULT_RETRIEVE_LIMIT, MAX_RETRIEVE_LIMIT)


def fusion_options(options: common_pb2.FusionOptions, field: str = "fusion") -> common_pb2.FusionOptions:
    """Hybrid fusion options: a known method, dense_weight in 0..1, rrf_k 1..1000, prefetch_limit 1..1000."""
    if options.method not in FUSION_METHODS:
        raise InvalidArgument(f"{field}.method", f"unknown fusion method {options.method}")
    if options.HasField("dense_weight"):
        unit_interval(options.dense_weight, f"{field}.dense_weight")
    if options.HasField("rrf_k"):
        bounded_int(options.rrf_k, f"{field}.rrf_k", 1, MAX_RRF_K)
    if options.HasField("prefetch_limit"):
        bounded_int(options.prefetch_limit, f"{field}.prefetch_limit", 1, MAX_PREFETCH_LIMIT)
    if options.HasField("late_interaction_candidates"):
        bounded_int(options.late_interaction_candidates, f"{field}.late_interaction_candidates", 1, MAX_PREFETCH_LIMIT)
    return options


def filter_key(key: str, field: str) -> str:
    if not key or len(key) > MAX_FILTER_KEY_CHARS or not FILTER_KEY_PATTERN.match(key):
        raise InvalidArgument(
            field, f"keys are 1..{MAX_FILTER_KEY_CHARS} characters of letters, digits, _ and -, dotted for nesting"
        )
    return key


def payload_filter(flt: common_pb2.Filter, field: str = "filter") -> common_pb2.Filter:
    """Structure and limits of a payload filter (the retrieval service translates it)."""
    count = 0

    def check_filter(f: common_pb2.Filter, where: str, depth: int) -> None:
        if depth > MAX_FILTER_DEPTH:
            raise InvalidArgument(where, f"filters nest at most {MAX_FILTER_DEPTH} levels deep")
        for clause in ("must", "should", "must_not"):
            for i, cond in enumerate(getattr(f, clause)):
                check_condition(cond, f"{where}.{clause}[{i}]", depth)

    def check_condition(cond: common_pb2.Condition, where: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_FILTER_CONDITIONS:
            raise InvalidArgument(where, f"a filter holds at most {MAX_FILTER_CONDITIONS} conditions")
        kind = cond.WhichOneof("condition")
        if kind == "filter":
            check_filter(cond.filter, f"{where}.filter", depth + 1)
            return
        if kind != "field":
            raise InvalidArgument(where, "a condition needs either `field` or `filter`")
        fc = cond.field
        filter_key(fc.key, f"{where}.field.key")
        match = fc.WhichOneof("match")
        if match == "keyword" and len(fc.keyword) > MAX_KEYWORD_CHARS:
            raise InvalidArgument(f"{where}.field.keyword", f"is longer than {MAX_KEYWORD_CHARS} characters")
        elif match in ("any_keyword", "any_integer"):
            values = getattr(fc, match).values
            if not values or len(values) > MAX_ANY_VALUES:
                raise InvalidArgument(f"{where}.field.{match}", f"give 1..{MAX_ANY_VALUES} values")
            if match == "any_keyword" and any(len(v) > MAX_KEYWORD_CHARS for v in values):
                raise InvalidArgument(f"{where}.field.{match}", f"values are at most {MAX_KEYWORD_CHARS} characters")
        elif match == "range":
            bounds = [getattr(fc.range, b) for b in ("gt", "gte", "lt", "lte") if fc.range.HasField(b)]
            if not bounds:
                raise InvalidArgument(f"{where}.field.range", "a range needs at least one bound")
            if not all(math.isfinite(b) for b in bounds):
                raise InvalidArgument(f"{where}.field.range", "range bounds must be finite numbers")
        elif match is None:
            raise InvalidArgument(
                f"{where}.field",
                "a field condition needs a match: keyword, integer, boolean, any_keyword, any_integer or range",
            )

    check_filter(flt, field, 1)
    return flt


def filter_fields(fields: Sequence[common_pb2.FilterField], field: str = "filter_fields") -> None:
    """Payload fields declared for filtering: at most MAX_FILTER_FIELDS, valid unique keys, known types."""
    if len(fields) > MAX_FILTER_FIELDS:
        raise InvalidArgument(field, f"{len(fields)} fields; the limit is {MAX_FILTER_FIELDS}")
    seen: set[str] = set()
    for i, f in enumerate(fields):
        filter_key(f.key, f"{field}[{i}].key")
        if f.key in seen:
            raise InvalidArgument(f"{field}[{i}].key", f"duplicate key {f.key!r}")
        seen.add(f.key)
        if f.type not in FIELD_TYPES:
            raise InvalidArgument(f"{field}[{i}].type", "choose KEYWORD, INTEGER, FLOAT or BOOL")
