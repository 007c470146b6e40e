"""`searchctl reindex`'s last line says what became of the old collection: kept when the
source was an alias (named, with the command that deletes it), replaced when the source was a
collection no alias named (it is now an alias of that name)."""

from search.v1 import common_pb2, search_service_pb2 as pb
from services.cli.collections_cmd import done_line


def done(source: str, target: str, alias: str) -> pb.ReindexResponse:
    return pb.ReindexResponse(phase=common_pb2.REINDEX_PHASE_DONE, copied=60, total=60, source_collection=source,
                              target_collection=target, alias=alias)


def test_an_alias_source_keeps_the_old_collection_and_says_how_to_delete_it():
    line = done_line(done("docs-v1", "docs-v2", "live"))
    assert line.startswith("done: 60 points in 'docs-v2'; alias 'live' -> 'docs-v2'")
    assert "the old collection 'docs-v1' is kept" in line and "`searchctl collections delete docs-v1`" in line
    assert "replaced" not in line


def test_a_bare_collection_source_is_replaced_by_an_alias_of_its_name():
    line = done_line(done("docs", "docs-20261206", "docs"))
    assert "alias 'docs' -> 'docs-20261206'" in line
    assert "the collection 'docs' was replaced by this alias of its name" in line
    assert "kept" not in line and "collections delete" not in line


def test_several_aliases_of_the_source_are_all_named():
    line = done_line(done("docs-v1", "docs-v2", "live,staging"))
    assert "aliases 'live', 'staging' -> 'docs-v2'" in line and "'docs-v1' is kept" in line
