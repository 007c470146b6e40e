"""Request limits and their one check (services/common/validation.py): every field the API takes, refused with
the field named; the gateway and the retrieval service refuse the same filters."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from search.v1 import common_pb2
from services.common import validation as v
from services.common.errors import InvalidArgument


def test_top_k_zero_means_default_and_bounds_are_enforced():
    assert v.top_k(0) == v.DEFAULT_TOP_K
    assert v.top_k(v.MAX_TOP_K) == v.MAX_TOP_K
    for bad in (-1, v.MAX_TOP_K + 1):
        with pytest.raises(InvalidArgument, match="top_k"):
            v.top_k(bad)


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 64, "sp ace"])
def test_bad_collection_names(name):
    with pytest.raises(InvalidArgument):
        v.collection_name(name)


def test_good_collection_name():
    assert v.collection_name("scifact_v2-test") == "scifact_v2-test"


def test_query_limits():
    with pytest.raises(InvalidArgument, match="empty"):
        v.query_text(" \n")
    with pytest.raises(InvalidArgument, match=str(v.MAX_QUERY_CHARS)):
        v.query_text("x" * (v.MAX_QUERY_CHARS + 1))


def test_documents_reports_the_first_bad_one_by_index():
    docs = [common_pb2.Document(id="a", text="ok"), common_pb2.Document(id="b", text="")]
    with pytest.raises(InvalidArgument) as info:
        v.documents(docs)
    assert info.value.field == "documents[1].text"


def test_a_document_is_its_title_and_its_text():
    """Either alone is a document; neither (blank counts as absent) is refused, naming the field."""
    both, title_only, text_only = (common_pb2.Document(id="a", title="T", text="body"),
                                   common_pb2.Document(id="b", title="Only a title"),
                                   common_pb2.Document(id="c", text="only a body"))
    assert [d["text"] for d in v.documents([both, title_only, text_only])] == ["body", "", "only a body"]
    for empty in (common_pb2.Document(id="x"), common_pb2.Document(id="x", title=" ", text="\n\t")):
        with pytest.raises(InvalidArgument) as info:
            v.documents([both, empty])
        assert info.value.field == "documents[1].text"
        assert "'x' has neither text nor title" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        v.document(common_pb2.Document(id="x"))
    assert info.value.field == "document.text"


def test_document_text_is_what_the_models_read():
    assert v.document_text("Title", "Body") == "Title\nBody"
    assert v.document_text("Title", "") == "Title"
    assert v.document_text("", "Body") == "Body"


def test_documents_rejects_duplicates_and_oversize_payload():
    with pytest.raises(InvalidArgument, match="duplicate"):
        v.documents([common_pb2.Document(id="a", text="x"), common_pb2.Document(id="a", text="y")])
    big = struct_pb2.Struct()
    big.update({"blob": "x" * (v.MAX_PAYLOAD_BYTES + 1)})
    with pytest.raises(InvalidArgument, match="payload"):
        v.documents([common_pb2.Document(id="a", text="x", payload=big)])


def test_documents_converts_payload_to_plain_json():
    doc = common_pb2.Document(id="a", title="t", text="x")
    doc.payload.update({"year": 2020, "tags": ["a"]})
    assert v.documents([doc]) == [{"id": "a", "title": "t", "text": "x", "payload": {"year": 2020.0, "tags": ["a"]}}]


def test_ids_dedupe_and_bounds():
    assert v.ids(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(InvalidArgument):
        v.ids([])
    with pytest.raises(InvalidArgument):
        v.ids([""])




def _doc_with_payload(payload: dict | None = None, value: struct_pb2.Value | None = None) -> common_pb2.Document:
    doc = common_pb2.Document(id="a", text="t")
    if payload is not None:
        doc.payload.update(payload)
    if value is not None:
        doc.payload.fields["x"].CopyFrom(value)
    return doc


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_payload_numbers_must_be_finite(number):
    with pytest.raises(InvalidArgument, match="finite") as info:
        v.documents([_doc_with_payload({"nested": {"list": [1, number]}})])
    assert info.value.field == "documents[0].payload"


def _nested_payload(levels: int) -> dict:
    deep: dict = {}
    node = deep
    for _ in range(levels):
        node["k"] = {}
        node = node["k"]
    return deep


def test_payload_nesting_is_bounded():
    v.documents([_doc_with_payload(_nested_payload(v.MAX_PAYLOAD_DEPTH))])
    with pytest.raises(InvalidArgument, match="deeper"):
        v.documents([_doc_with_payload(_nested_payload(v.MAX_PAYLOAD_DEPTH + 1))])
    shallow = {"a": {"b": [1, 2, {"c": "d"}]}, "n": None}
    assert v.documents([_doc_with_payload(shallow)])[0]["payload"] == shallow


def test_retrieval_mode():
    assert v.retrieval_mode(common_pb2.RETRIEVAL_MODE_HYBRID) == common_pb2.RETRIEVAL_MODE_HYBRID
    with pytest.raises(InvalidArgument, match="mode"):
        v.retrieval_mode(42)


@pytest.mark.parametrize(
    "options, field",
    [
        (common_pb2.FusionOptions(method=99), "fusion.method"),
        (common_pb2.FusionOptions(dense_weight=1.5), "fusion.dense_weight"),
        (common_pb2.FusionOptions(dense_weight=float("nan")), "fusion.dense_weight"),
        (common_pb2.FusionOptions(rrf_k=0), "fusion.rrf_k"),
        (common_pb2.FusionOptions(rrf_k=v.MAX_RRF_K + 1), "fusion.rrf_k"),
        (common_pb2.FusionOptions(prefetch_limit=-1), "fusion.prefetch_limit"),
        (common_pb2.FusionOptions(prefetch_limit=v.MAX_PREFETCH_LIMIT + 1), "fusion.prefetch_limit"),
    ],
)
def test_fusion_options_limits(options, field):
    with pytest.raises(InvalidArgument) as info:
        v.fusion_options(options)
    assert info.value.field == field


def test_fusion_options_accept_the_defaults_and_the_bounds():
    v.fusion_options(common_pb2.FusionOptions())
    v.fusion_options(common_pb2.FusionOptions(method=common_pb2.FUSION_METHOD_DBSF, dense_weight=0.0, rrf_k=1, prefetch_limit=1000))


def _cond(**kw) -> common_pb2.Condition:
    return common_pb2.Condition(field=common_pb2.FieldCondition(**kw))


def _nested(depth: int) -> common_pb2.Filter:
    flt = common_pb2.Filter(must=[_cond(key="a", keyword="b")])
    for _ in range(depth - 1):
        flt = common_pb2.Filter(must=[common_pb2.Condition(filter=flt)])
    return flt


@pytest.mark.parametrize(
    "flt, needle",
    [
        (_nested(v.MAX_FILTER_DEPTH + 1), "nest at most"),
        (common_pb2.Filter(must=[_cond(key="a", keyword="b")] * (v.MAX_FILTER_CONDITIONS + 1)), "at most 64 conditions"),
        (common_pb2.Filter(must=[_cond(key="bad key", keyword="b")]), "keys are"),
        (common_pb2.Filter(must=[_cond(key="a" * 129, keyword="b")]), "keys are"),
        (common_pb2.Filter(must=[_cond(key="a", keyword="x" * (v.MAX_KEYWORD_CHARS + 1))]), "longer than"),
        (common_pb2.Filter(must=[_cond(key="a", any_integer=common_pb2.IntegerList())]), "give 1..256"),
        (common_pb2.Filter(must=[_cond(key="a", any_keyword=common_pb2.KeywordList(values=["x"] * 257))]), "give 1..256"),
        (common_pb2.Filter(must=[_cond(key="a", range=common_pb2.Range())]), "at least one bound"),
        (common_pb2.Filter(must=[_cond(key="a", range=common_pb2.Range(gt=float("inf")))]), "finite"),
        (common_pb2.Filter(must=[_cond(key="a")]), "needs a match"),
        (common_pb2.Filter(should=[common_pb2.Condition()]), "either `field` or `filter`"),
    ],
)
def test_payload_filter_limits(flt, needle):
    with pytest.raises(InvalidArgument, match=needle):
        v.payload_filter(flt)


def test_payload_filter_accepts_a_legal_filter():
    v.payload_filter(_nested(v.MAX_FILTER_DEPTH))
    v.payload_filter(common_pb2.Filter())
    v.payload_filter(common_pb2.Filter(must_not=[_cond(key="year.n-1_x", range=common_pb2.Range(gte=1, lt=2))]))


def test_gateway_and_retrieval_refuse_the_same_filters():
    from services.common.errors import InvalidArgument
    from services.retrieval import filters

    bad = [
        _nested(v.MAX_FILTER_DEPTH + 1),
        common_pb2.Filter(must=[_cond(key="a b", keyword="x")]),
        common_pb2.Filter(must=[_cond(key="k" * (v.MAX_FILTER_KEY_CHARS + 1), keyword="x")]),
        common_pb2.Filter(must=[_cond(key="a", keyword="x")] * (v.MAX_FILTER_CONDITIONS + 1)),
    ]
    for flt in bad:
        with pytest.raises(InvalidArgument):
            v.payload_filter(flt)
        with pytest.raises(InvalidArgument):
            filters.to_filter(flt)
    ok = common_pb2.Filter(must_not=[_cond(key="year.n-1_x", range=common_pb2.Range(gte=1, lt=2))])
    v.payload_filter(ok)
    assert filters.to_filter(ok).must_not[0].key == "payload.year.n-1_x"


@pytest.mark.parametrize(
    "fields, needle",
    [
        ([common_pb2.FilterField(key="a", type=common_pb2.FIELD_TYPE_KEYWORD)] * 2, "duplicate"),
        ([common_pb2.FilterField(key="", type=common_pb2.FIELD_TYPE_KEYWORD)], "keys are"),
        ([common_pb2.FilterField(key="a b", type=common_pb2.FIELD_TYPE_KEYWORD)], "keys are"),
        ([common_pb2.FilterField(key="a")], "choose KEYWORD"),
        ([common_pb2.FilterField(key="a", type=17)], "choose KEYWORD"),
        ([common_pb2.FilterField(key=f"k{i}", type=1) for i in range(v.MAX_FILTER_FIELDS + 1)], "the limit is"),
    ],
)
def test_filter_fields_limits(fields, needle):
    from services.retrieval.messages import filter_fields as retrieval_filter_fields

    with pytest.raises(InvalidArgument, match=needle):
        v.filter_fields(fields)
    with pytest.raises(InvalidArgument, match=needle):  # the retrieval service, called directly, agrees
        retrieval_filter_fields(fields)


def test_retrieval_maps_valid_filter_fields_to_type_names():
    from services.retrieval.messages import filter_fields as retrieval_filter_fields

    fields = [common_pb2.FilterField(key="year", type=common_pb2.FIELD_TYPE_INTEGER),
              common_pb2.FilterField(key="meta.lang", type=common_pb2.FIELD_TYPE_KEYWORD)]
    assert retrieval_filter_fields(fields) == {"year": "integer", "meta.lang": "keyword"}


def test_rerank_passage_is_cut_to_the_rerankers_limit():
    from services.gateway.pipeline import rerank_text

    assert len(rerank_text("T", "x" * (v.MAX_TEXT_CHARS))) == v.MAX_PASSAGE_CHARS
    assert rerank_text("T", "body") == "T\nbody" and rerank_text("", "body") == "body"
    assert rerank_text("T", "") == "T"  # a title-only document: the cross-encoder reads its title
