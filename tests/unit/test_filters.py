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


DECLARED = {"year": "integer", "score": "float", "topic": "keyword", "open": "bool"}


@pytest.mark.parametrize("condition", [
    field(key="year", integer=2020), field(key="year", any_integer=c.IntegerList(values=[2019, 2020])),
    field(key="year", range=c.Range(gte=2019)), field(key="score", range=c.Range(lt=0.5)),
    field(key="topic", keyword="geology"), field(key="topic", any_keyword=c.KeywordList(values=["a", "b"])),
    field(key="open", boolean=False), field(key="undeclared", keyword="anything"),
])
def test_conditions_that_fit_the_declared_type_pass(condition):
    from services.retrieval.filters import check_declared

    check_declared("c", DECLARED, to_filter(c.Filter(must=[condition])))


@pytest.mark.parametrize("condition, used, use", [
    (field(key="year", keyword="2020"), "keyword", "`integer` or `any_integer` or `range`"),
    (field(key="score", integer=2), "integer", "`range`"),
    (field(key="topic", integer=1), "integer", "`keyword` or `any_keyword`"),
    (field(key="topic", range=c.Range(gte=0)), "range", "`keyword` or `any_keyword`"),
    (field(key="open", keyword="true"), "keyword", "`boolean`"),
    (field(key="year", any_keyword=c.KeywordList(values=["2020"])), "any_keyword", "`integer` or `any_integer` or `range`"),
])
def test_a_condition_that_could_never_match_the_declared_type_is_refused(condition, used, use):
    from services.retrieval.filters import check_declared

    nested = c.Filter(must_not=[c.Condition(filter=c.Filter(should=[condition]))])  # wherever it sits
    with pytest.raises(InvalidArgument) as err:
        check_declared("papers", DECLARED, to_filter(nested))
    key = condition.field.key
    kind = DECLARED[key]
    assert err.value.field == "filter"
    assert err.value.description == (f"collection 'papers' declares {key!r} {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                                     f"field (filter_fields): a `{used}` condition on it never matches; use {use}")
