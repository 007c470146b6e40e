"""Search paging (services/gateway/paging.py): offsets, page tokens and the errors a caller gets."""

from __future__ import annotations

import base64

import pytest

from search.v1 import search_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.gateway import paging
from services.gateway.paging import MAX_RESULT_WINDOW


class Hit:
    def __init__(self, doc_id: str) -> None:
        self.id = doc_id


RANKED = [Hit(f"doc-{i}") for i in range(30)]


def request(**fields) -> pb.SearchRequest:
    return pb.SearchRequest(collection="docs", query="deadlines", top_k=4, **fields)


def pages(ranking: list[Hit], top_k: int = 4, limit: int = 20) -> list[list[str]]:
    """Page through ``ranking`` with tokens as a caller would: each page's token asks for the next."""
    out, token = [], ""
    while len(out) < limit:
        req = request(page_token=token)
        page = paging.parse(req, top_k)
        returned = page.cut(ranking, top_k)
        more = len(ranking) > page.depth(top_k)
        out.append([r.id for r in returned])
        token = page.next_token(req, "docs", ranking, returned, more, top_k)
        if not token:
            break
    return out


def test_token_pages_cover_the_ranking_once_in_order():
    got = pages(RANKED)
    assert [i for page in got for i in page] == [r.id for r in RANKED]
    assert len(got) == 8 and got[-1] == ["doc-28", "doc-29"]


def test_a_reordered_ranking_neither_repeats_nor_skips():
    first = paging.parse(request(), 4)
    returned = first.cut(RANKED, 4)
    token = first.next_token(request(), "docs", RANKED, returned, True, 4)
    wobbled = [RANKED[4], RANKED[1], RANKED[0], *RANKED[5:], RANKED[2], RANKED[3]]  # near-ties swapped between calls
    second = paging.parse(request(page_token=token), 4)
    assert [r.id for r in second.cut(wobbled, 4)] == ["doc-4", "doc-5", "doc-6", "doc-7"]
    assert second.collection == "docs" and second.depth(4) == 8


def test_an_offset_page_and_its_token():
    page = paging.parse(request(offset=8), 4)
    returned = page.cut(RANKED, 4)
    assert [r.id for r in returned] == ["doc-8", "doc-9", "doc-10", "doc-11"]
    token = page.next_token(request(offset=8), "docs", RANKED, returned, True, 4)
    after = paging.parse(request(page_token=token), 4)
    assert [r.id for r in after.cut(RANKED, 4)] == ["doc-12", "doc-13", "doc-14", "doc-15"]  # what came before counts as seen


def test_no_token_after_the_last_page():
    page = paging.parse(request(offset=28), 4)
    assert page.next_token(request(offset=28), "docs", RANKED, page.cut(RANKED, 4), False, 4) == ""


def test_the_window_bounds_offsets_and_tokens():
    with pytest.raises(InvalidArgument) as exc:
        paging.parse(request(offset=MAX_RESULT_WINDOW - 3), 4)
    assert exc.value.field == "offset" and str(MAX_RESULT_WINDOW) in exc.value.description
    deep = [Hit(f"d{i}") for i in range(MAX_RESULT_WINDOW + 10)]
    page = paging.parse(request(offset=MAX_RESULT_WINDOW - 4), 4)
    assert page.next_token(request(offset=MAX_RESULT_WINDOW - 4), "docs", deep, page.cut(deep, 4), True, 4) == ""


@pytest.mark.parametrize("fields, field", [
    ({"offset": -1}, "offset"),
    ({"offset": 4, "page_token": "AQ"}, "page_token"),
])
def test_bad_paging_fields_name_the_field(fields, field):
    with pytest.raises(InvalidArgument) as exc:
        paging.parse(request(**fields), 4)
    assert exc.value.field == field


def test_a_token_is_bound_to_its_request():
    first = paging.parse(request(), 4)
    token = first.next_token(request(), "docs", RANKED, first.cut(RANKED, 4), True, 4)
    with pytest.raises(InvalidArgument) as exc:
        paging.parse(pb.SearchRequest(collection="docs", query="other text", top_k=4, page_token=token), 4)
    assert exc.value.field == "page_token" and "first page unchanged" in exc.value.description
    with pytest.raises(InvalidArgument):  # the page size is one of the options
        paging.parse(pb.SearchRequest(collection="docs", query="deadlines", top_k=5, page_token=token), 5)
    assert paging.parse(request(page_token=token), 4).depth(4) == 8


def _token() -> str:
    first = paging.parse(request(), 4)
    return first.next_token(request(), "docs", RANKED, first.cut(RANKED, 4), True, 4)


@pytest.mark.parametrize("token", [
    "garbage",  # decodes, to a version this gateway never wrote
    "garbage!",  # not base64
    "AQ",  # one byte: no header
    _token()[:-3],  # cut short
    base64.urlsafe_b64encode(b"\x02" + base64.urlsafe_b64decode(_token() + "==")[1:]).decode().rstrip("="),  # another version
])
def test_a_token_this_gateway_did_not_issue_is_refused_with_what_to_do(token):
    with pytest.raises(InvalidArgument) as exc:
        paging.parse(request(page_token=token), 4)
    assert exc.value.field == "page_token"
    assert exc.value.description == ("is not a page token this gateway issued: pass a response's next_page_token "
                                     "unchanged, or start again from the first page")
