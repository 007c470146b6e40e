"""Translate the API's payload filter into the store's engine-neutral filter.

The filter is validated first by the one walker both hops use
(services/common/validation.py ``payload_filter``: structure, depth, counts, keys, values);
the translation here assumes a valid filter. Caller keys address the caller's payload
(stored under ``payload.``), so a filter can never reach the service's own fields.
"""

from __future__ import annotations

from search.v1 import common_pb2
from services.common import validation
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
