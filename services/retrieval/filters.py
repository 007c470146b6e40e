"""Translate the API's payload filter into the store's engine-neutral filter.

The filter is validated first by the one walker both hops use
(services/common/validation.py ``payload_filter``: structure, depth, counts, keys, values);
the translation here assumes a valid filter. Caller keys address the caller's payload
(stored under ``payload.``), so a filter can never reach the service's own fields.
"""

from __future__ import annotations

from search.v1 import common_pb2
from services.common import validation
from services.common.errors import InvalidArgument
from services.common.payload_types import with_article
from services.retrieval.backends import base


def to_filter(flt: common_pb2.Filter, field: str = "filter") -> base.Filter | None:
    """The store filter for ``flt``, or None when it has no conditions."""
    validation.payload_filter(flt, field)
    if not (flt.must or flt.should or flt.must_not):
        return None
    return _filter(flt)


def _filter(flt: common_pb2.Filter) -> base.Filter:
    return base.Filter(
        must=tuple(_condition(c) for c in flt.must),
        should=tuple(_condition(c) for c in flt.should),
        must_not=tuple(_condition(c) for c in flt.must_not),
    )


def _condition(cond: common_pb2.Condition):
    if cond.WhichOneof("condition") == "filter":
        return _filter(cond.filter)
    fc = cond.field
    key = f"payload.{fc.key}"
    match = fc.WhichOneof("match")
    if match in ("keyword", "integer", "boolean"):
        return base.Match(key, getattr(fc, match))
    if match in ("any_keyword", "any_integer"):
        return base.MatchAny(key, tuple(getattr(fc, match).values))
    bounds = {b: getattr(fc.range, b) for b in ("gt", "gte", "lt", "lte") if fc.range.HasField(b)}
    return base.Range(key, **bounds)


#: The conditions that can match a value of each declared type (services/common/payload_types.py
#: keeps other types out of a declared key on every write).
_FITS = {
    "keyword": ("keyword", "any_keyword"),
    "integer": ("integer", "any_integer", "range"),
    "float": ("range",),
    "bool": ("boolean",),
}


def check_declared(collection: str, declared: dict[str, str], flt: base.Filter) -> None:
    """InvalidArgument when a condition on a key ``collection`` declares for filtering could
    never match a value of the declared type (a keyword match on an integer field, say)."""
    for cond in (*flt.must, *flt.should, *flt.must_not):
        if isinstance(cond, base.Filter):
            check_declared(collection, declared, cond)
            continue
        key = cond.key.removeprefix("payload.")
        kind = declared.get(key)
        if kind not in _FITS:  # not declared
            continue
        used = _condition_name(cond)
        if used not in _FITS[kind]:
            raise InvalidArgument(
                "filter", f"collection {collection!r} declares {key!r} {with_article(kind)} field (filter_fields): "
                          f"a `{used}` condition on it never matches; use {' or '.join(f'`{c}`' for c in _FITS[kind])}")


def _condition_name(cond) -> str:
    if isinstance(cond, base.Range):
        return "range"
    if isinstance(cond, base.MatchAny):
        return "any_keyword" if cond.values and isinstance(cond.values[0], str) else "any_integer"
    if isinstance(cond.value, bool):
        return "boolean"
    return "keyword" if isinstance(cond.value, str) else "integer"
