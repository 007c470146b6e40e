"""services.gateway.access: the scope of every method, and a limited caller's collections checked
on what a request names (aliases by the collection they point to) and on what answered."""

from __future__ import annotations

import pytest

from search.v1 import common_pb2, search_service_pb2 as pb
from services.common.errors import PermissionDenied
from services.gateway import access
from services.gateway.callers import ADMIN, SCOPES, SEARCH, WRITE, Caller

ALIASES = {"docs": "docs-v2", "secret-alias": "secret", "logs": "logs-2024"}
LIMITED = Caller("limited", frozenset(SCOPES), ("docs-*", "logs-2024"))
ALL = Caller("all", frozenset(SCOPES))


def test_every_searchservice_method_has_a_scope():
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["SearchService"].methods}
    assert set(access.METHOD_SCOPES) == methods
    assert {access.scope_of(m) for m in ("Search", "GetDocuments", "DescribeCollection", "ListCollections", "ListAliases")} == {SEARCH}
    assert {access.scope_of(m) for m in ("Upsert", "Delete", "Ingest")} == {WRITE}
    assert {access.scope_of(m) for m in ("CreateCollection", "DeleteCollection", "CreateAlias", "SwitchAlias", "DeleteAlias",
                                         "Reindex", "ExportSnapshot", "RestoreSnapshot")} == {ADMIN}
    assert access.scope_of("SomeNewMethod") == ADMIN  # closed until classed


def test_permission_denied_names_the_scope_needed():
    reader = Caller("reader", frozenset({SEARCH}))
    assert access.require_scope(reader, "Search") == SEARCH
    with pytest.raises(PermissionDenied, match=r"caller 'reader' may not call DeleteCollection: it needs scope 'admin' \(the caller has: search\)"):
        access.require_scope(reader, "DeleteCollection")


def check(caller, method, request):
    access.check_uses(caller, method, request, ALIASES)


@pytest.mark.parametrize(
    "method, request_, allowed",
    [
        ("Search", pb.SearchRequest(collection="docs-v1", query="q"), True),
        ("Search", pb.SearchRequest(collection="other", query="q"), False),
        ("Search", pb.SearchRequest(collection="docs", query="q"), True),  # alias -> docs-v2: reached
        ("Search", pb.SearchRequest(collection="secret-alias", query="q"), False),  # alias -> secret: not
        ("Search", pb.SearchRequest(collection="logs", query="q"), True),
        ("Upsert", pb.UpsertRequest(collection="secret-alias"), False),
        ("DescribeCollection", pb.DescribeCollectionRequest(name="docs-x"), True),
        ("CreateCollection", pb.CreateCollectionRequest(name="docs-new"), True),
        ("CreateCollection", pb.CreateCollectionRequest(name="new"), False),
        ("DeleteCollection", pb.DeleteCollectionRequest(name="docs-v2"), True),
        ("DeleteCollection", pb.DeleteCollectionRequest(name="docs"), False),  # the alias's own name: not in the list
        ("CreateAlias", pb.CreateAliasRequest(alias="docs-live", collection="docs-v2"), True),
        ("CreateAlias", pb.CreateAliasRequest(alias="prod", collection="docs-v2"), False),  # the name is outside
        ("CreateAlias", pb.CreateAliasRequest(alias="docs-live", collection="secret"), False),
        ("SwitchAlias", pb.SwitchAliasRequest(alias="secret-alias", collection="docs-v2"), False),
        ("DeleteAlias", pb.DeleteAliasRequest(alias="docs-old"), True),
        ("Reindex", pb.ReindexRequest(source="docs-v2", target="docs-v3"), False),  # switches alias "docs"
        ("Reindex", pb.ReindexRequest(source="logs-2024", target="logs-2024"), False),  # alias "logs" is outside
        ("Reindex", pb.ReindexRequest(source="docs-a", target="docs-b"), True),
        ("Reindex", pb.ReindexRequest(source="docs-a"), False),  # an unnamed target is not checkable
        ("ExportSnapshot", pb.ExportSnapshotRequest(collection="secret"), False),
        ("RestoreSnapshot", pb.RestoreSnapshotRequest(collection="docs-restored"), True),
        ("Ingest", pb.IngestRequest(collection="other"), False),
    ],
)
def test_a_limited_caller_reaches_its_collections_only(method, request_, allowed):
    if allowed:
        check(LIMITED, method, request_)
    else:
        with pytest.raises(PermissionDenied, match="caller 'limited' may not"):
            check(LIMITED, method, request_)
    check(ALL, method, request_)  # an unlimited caller passes everything


def test_the_message_does_not_name_an_aliases_hidden_collection():
    with pytest.raises(PermissionDenied) as info:
        check(LIMITED, "Search", pb.SearchRequest(collection="secret-alias", query="q"))
    assert "alias of a collection outside its collections (docs-*, logs-2024)" in info.value.message
    assert "'secret'" not in info.value.message


def test_answers_are_checked_and_lists_filtered():
    served_elsewhere = pb.SearchResponse(collection="secret")
    with pytest.raises(PermissionDenied):
        access.check_answer(LIMITED, "Search", served_elsewhere)
    assert access.check_answer(ALL, "Search", served_elsewhere) is served_elsewhere
    info = lambda name: common_pb2.CollectionInfo(name=name)  # noqa: E731
    with pytest.raises(PermissionDenied):
        access.check_answer(LIMITED, "DescribeCollection", pb.DescribeCollectionResponse(collection=info("secret")))
    listed = pb.ListCollectionsResponse(
        collections=[info("docs-v2"), info("secret"), info("logs-2024")],
        aliases=[common_pb2.Alias(alias=a, collection=c) for a, c in ALIASES.items()])
    seen = access.check_answer(LIMITED, "ListCollections", listed)
    assert [c.name for c in seen.collections] == ["docs-v2", "logs-2024"]
    assert [a.alias for a in seen.aliases] == ["docs", "logs"]
    assert len(listed.collections) == 3  # the original is untouched
    aliases = access.check_answer(LIMITED, "ListAliases", pb.ListAliasesResponse(aliases=listed.aliases))
    assert [a.alias for a in aliases.aliases] == ["docs", "logs"]


def test_an_ingest_that_would_create_its_collection_needs_admin():
    writer = Caller("writer", frozenset({WRITE}))
    token = access.CURRENT.set(writer)
    try:
        with pytest.raises(PermissionDenied, match="needs scope 'admin'"):
            access.require_admin_to_create("new")
    finally:
        access.CURRENT.reset(token)
    access.require_admin_to_create("new")  # the default (authentication off) may


async def test_the_alias_directory_caches_briefly_and_reads_afresh_when_asked():
    now = [0.0]
    tables = [{"a": "x"}, {"a": "y"}, {"a": "z"}]

    async def fetch():
        return tables.pop(0)

    directory = access.AliasDirectory(fetch, ttl_s=1.0, clock=lambda: now[0])
    assert await directory.get() == {"a": "x"}
    now[0] = 0.5
    assert await directory.get() == {"a": "x"}
    assert await directory.get(fresh=True) == {"a": "y"}
    directory.invalidate()
    assert await directory.get() == {"a": "z"} and directory.fetches == 3
