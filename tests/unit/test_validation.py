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
