"""Search paging: by offset, or by page token; bounded to the first MAX_RESULT_WINDOW results.

A page is cut from the ranking of the first ``offset + top_k`` results (+1, to know whether
there is more), computed exactly like a first page: the same candidates are reranked, the
rest follow in first-stage order. So while the collection does not change, pages are
slices of one ranking.

A page token also makes paging robust when scores wobble (the models' batch-dependent
quantisation can reorder near-ties between two calls): it carries the collection the first
page searched (an alias switched meanwhile does not mix collections), a fingerprint of the
request (a token is only valid for the query and options it was issued for), and an 8-byte
digest of every result returned so far. The next page is the best ``top_k`` of the ranking
that were not returned yet: no result twice, none skipped. Its size grows with the depth
(8 bytes per result, about 5 KiB at the bound); it is opaque to callers.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from search.v1 import search_service_pb2 as pb
from services.common.errors import InvalidArgument

#: offset + top_k (or results already paged + top_k) is at most this.
MAX_RESULT_WINDOW = 500
_VERSION = 1
_DIGEST = 8


def _digest(doc_id: str) -> bytes:
    return hashlib.blake2b(doc_id.encode(), digest_size=_DIGEST).digest()


def fingerprint(request: pb.SearchRequest) -> bytes:
    """What a page token is bound to: the request without its paging fields."""
    base = pb.SearchRequest()
    base.CopyFrom(request)
    base.ClearField("offset")
    base.ClearField("page_token")
    return hashlib.sha256(base.SerializeToString(deterministic=True)).digest()[:8]


@dataclass(frozen=True)
class Page:
    """Where a page starts: ``offset`` results skipped, or the ``seen`` digests of a token."""

    offset: int = 0
    collection: str = ""  # pinned by a token: the collection the first page searched
    seen: frozenset[bytes] = frozenset()
    token: bool = False

    def depth(self, top_k: int) -> int:
        """How many ranked results this page needs."""
        return (len(self.seen) if self.token else self.offset) + top_k

    def cut(self, ranked: list, top_k: int, key=lambda r: r.id) -> list:
        if self.token:
            return [r for r in ranked if _digest(key(r)) not in self.seen][:top_k]
        return ranked[self.offset : self.offset + top_k]

    def next_token(self, request: pb.SearchRequest, collection: str, ranked: list, returned: list, more: bool,
                   top_k: int, key=lambda r: r.id) -> str:
        """The token of the following page ('' when this is the last one, or the bound is reached).
        After an offset page, everything ranked before it counts as returned."""
        seen = set(self.seen)
        before = ranked[: self.offset] if not self.token else []
        seen.update(_digest(key(r)) for r in (*before, *returned))
        if not more or not returned or len(seen) + top_k > MAX_RESULT_WINDOW:
            return ""
        return _encode(collection, fingerprint(request), seen)


def parse(request: pb.SearchRequest, top_k: int) -> Page:
    """The page ``request`` asks for; INVALID_ARGUMENT naming the field when it cannot be served."""
    if request.page_token and request.offset:
        raise InvalidArgument("page_token", "give a page_token or an offset, not both")
    if request.offset < 0:
        raise InvalidArgument("offset", f"must be >= 0, got {request.offset}")
    if not request.page_token:
        if request.offset + top_k > MAX_RESULT_WINDOW:
            raise InvalidArgument("offset", f"offset + top_k is {request.offset + top_k}; results are paged up to "
                                            f"the first {MAX_RESULT_WINDOW}")
        return Page(offset=request.offset)
    page = _decode(request.page_token)
    if page[1] != fingerprint(request):
        raise InvalidArgument("page_token", "was issued for another query or other options; send the request of the "
                                            "first page unchanged (only page_token differs)")
    collection, _, seen = page
    out = Page(collection=collection, seen=frozenset(seen), token=True)
    if out.depth(top_k) > MAX_RESULT_WINDOW:
        raise InvalidArgument("page_token", f"paging past the first {MAX_RESULT_WINDOW} results is not supported")
    return out


def _encode(collection: str, fp: bytes, seen: set[bytes]) -> str:
    name = collection.encode()
    body = struct.pack(">BB", _VERSION, len(name)) + name + fp + b"".join(sorted(seen))
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def _decode(token: str) -> tuple[str, bytes, list[bytes]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, length = struct.unpack(">BB", raw[:2])
        if version != _VERSION:
            raise ValueError(f"version {version}")
        collection = raw[2 : 2 + length].decode()
        fp, body = raw[2 + length : 10 + length], raw[10 + length :]
        if len(collection.encode()) != length or len(fp) != 8 or len(body) % _DIGEST:
            raise ValueError("truncated")
        return collection, fp, [body[i : i + _DIGEST] for i in range(0, len(body), _DIGEST)]
    except (ValueError, struct.error, UnicodeDecodeError) as exc:  # which check failed says nothing a caller can use
        raise InvalidArgument("page_token", "is not a page token this gateway issued: pass a response's next_page_token "
                                            "unchanged, or start again from the first page") from exc
