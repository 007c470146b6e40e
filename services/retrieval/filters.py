"""Translate the API's payload filter into the store's engine-neutral filter, validating as it goes.

Caller keys address the caller's payload (stored under ``payload.``), so a filter can
never reach the service's own fields. Limits keep a hostile filter from costing much.
"""

from __future__ import annotations

import math

from search.v1 import common_pb2
from services.common import validation
from services.common.errors import InvalidArgument
from services.retrieval.backends import base

# The limits the gateway checks (services/common/validation.py), so both hops agree.
MAX_FILTER_DEPTH = validation.MAX_FILTER_DEPTH
MAX_CONDITIONS = validation.MAX_FILTER_CONDITIONS
MAX_ANY_VALUES = validation.MAX_ANY_VALUES


def to_filter(flt: common_pb2.Filter, field: str = "filter") -> base.Filter | None:
    """The store filter for ``flt``, or None when it has no conditions."""
    counter = [0]
    converted = _filter(flt, field, depth=1, counter=counter)
    return converted if counter[0] else None


def _filter(flt: common_pb2.Filter, field: str, depth: int, counter: list[int]) -> base.Filter:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument(field, f"filters nest at most {MAX_FILTER_DEPTH} levels deep")
    return base.Filter(
        must=tuple(_condition(c, f"{field}.must[{i}]", depth, counter) for i, c in enumerate(flt.must)),
        should=tuple(_condition(c, f"{field}.should[{i}]", depth, counter) for i, c in enumerate(flt.should)),
        must_not=tuple(_condition(c, f"{field}.must_not[{i}]", depth, counter) for i, c in enumerate(flt.must_not)),
    )


def _condition(cond: common_pb2.Condition, field: str, depth: int, counter: list[int]):
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise InvalidArgument(field, f"a filter holds at most {MAX_CONDITIONS} conditions")
    kind = cond.WhichOneof("condition")
    if kind == "filter":
        return _filter(cond.filter, f"{field}.filter", depth + 1, counter)
    if kind != "field":
        raise InvalidArgument(field, "a condition needs either `field` or `filter`")
    fc = cond.field
    key = f"payload.{validation.filter_key(fc.key, f'{field}.field.key')}"
    match = fc.WhichOneof("match")
    if match == "keyword":
        return base.Match(key, fc.keyword)
    if match == "integer":
        return base.Match(key, fc.integer)
    if match == "boolean":
        return base.Match(key, fc.boolean)
    if match in ("any_keyword", "any_integer"):
        values = list(getattr(fc, match).values)
        if not values or len(values) > MAX_ANY_VALUES:
            raise InvalidArgument(f"{field}.field.{match}", f"give 1..{MAX_ANY_VALUES} values")
        return base.MatchAny(key, tuple(values))
    if match == "range":
        bounds = {b: getattr(fc.range, b) for b in ("gt", "gte", "lt", "lte") if fc.range.HasField(b)}
        if not bounds:
            raise InvalidArgument(f"{field}.field.range", "a range needs at least one bound")
        if any(not math.isfinite(v) for v in bounds.values()):
            raise InvalidArgument(f"{field}.field.range", "range bounds must be finite numbers")
        return base.Range(key, **bounds)
    raise InvalidArgument(f"{field}.field", "a field condition needs a match: keyword, integer, boolean, any_keyword, any_integer or range")
