from __future__ import annotations

import pytest

from search.v1 import common_pb2 as c
from services.common.errors import InvalidArgument
from services.retrieval.backends import base
from services.common.validation import MAX_FILTER_DEPTH
from services.retrieval.filters import to_filter


def field(**kw):
    return c.Condition(field=c.FieldCondition(**kw))


def test_empty_filter_is_none():
    assert to_filter(c.Filter()) is None


def test_conditions_address_the_callers_payload():
    flt = c.Filter(
        must=[field(key="topic", keyword="bio"), field(key="year", range=c.Range(gte=2019, lt=2022))],
        should=[field(key="lang", any_keyword=c.KeywordList(values=["en", "de"]))],
        must_not=[field(key="draft", boolean=True), field(key="rank", integer=3)],
    )
    q = to_filter(flt)
    assert q.must[0] == base.Match("payload.topic", "bio")
    assert q.must[1] == base.Range("payload.year", gte=2019, lt=2022)
    assert q.should[0] == base.MatchAny("payload.lang", ("en", "de"))
    assert q.must_not[0] == base.Match("payload.draft", True)
    assert q.must_not[1] == base.Match("payload.rank", 3)


def test_nested_filters_and_depth_limit():
    inner = c.Filter(must=[field(key="a", keyword="x")])
    q = to_filter(c.Filter(should=[c.Condition(filter=inner)]))
    assert isinstance(q.should[0], base.Filter)
    deep = inner
    for _ in range(MAX_FILTER_DEPTH):
        deep = c.Filter(must=[c.Condition(filter=deep)])
    with pytest.raises(InvalidArgument, match="nest"):
        to_filter(deep)


@pytest.mark.parametrize(
    "cond,needle",
    [
        (c.Condition(), "either"),
        (field(key="", keyword="x"), "key"),
        (field(key="a b", keyword="x"), "key"),
        (field(key="a"), "match"),
        (field(key="a", range=c.Range()), "bound"),
        (field(key="a", range=c.Range(gt=float("nan"))), "finite"),
        (field(key="a", any_keyword=c.KeywordList()), "values"),
    ],
)
def test_invalid_conditions_name_the_field(cond, needle):
    with pytest.raises(InvalidArgument, match=needle) as info:
        to_filter(c.Filter(must=[cond]))
    assert info.value.field.startswith("filter.must[0]")
