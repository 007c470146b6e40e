"""What `searchctl ingest` reads (services/cli/ingest_input.py over services/cli/beir.py): every
line a document or a bad line with its reason and number, batches bounded by count, bytes and
repeated ids, bad lines ending the input or skipped; and, fuzzed, no file makes it raise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import ingest_input
from services.cli.ingest_input import MAX_BATCH_BYTES, Input, read_input

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


def write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def doc(i: int, **fields) -> str:
    return json.dumps({"id": f"d{i}", "title": f"Title {i}", "text": f"Text {i}", **fields})


BAD_LINES = [
    ('{"id": "x", "text": "cut off', "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('{"text": "no id"}', "missing 'id' / '_id'"),
    ('{"id": 1.5, "text": "t"}', "'id' must be a string or an integer, got a number"),
    ('{"id": true, "text": "t"}', "'id' must be a string or an integer, got a boolean"),
    ('{"id": "x", "text": ["a", "list"]}', "'text' must be a string, got an array"),
    ('{"id": "x", "title": 7, "text": "t"}', "'title' must be a string, got a number"),
    ('{"id": "x", "text": "t", "payload": [1]}', "'payload' must be a JSON object, got an array"),
    (b'{"id": "x", "text": "caf\xe9"}', "not valid UTF-8 (byte 0xe9"),
    ('{"id": "x", "text": "lone \\ud800 surrogate"}', "unpaired surrogate"),
    ('{"id": "x", "text": "t", "payload": {"n": 1' + "0" * 400 + "}}", "'payload' cannot be stored"),
    ('{"id": "x", "text": "t", "payload": {"deep": ' + "[" * 200 + "]" * 200 + "}}", "'payload' cannot be stored"),
    ("[" * 100000 + "]" * 100000, "invalid JSON: nested too deeply"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_a_bad_line_is_reported_with_its_number_and_reason(tmp_path, line, reason):
    path = write(tmp_path / "docs.jsonl", [doc(1), "", line, doc(3)])
    entries = list(read_input(path))
    assert [e.number for e in entries] == [1, 3, 4]  # blank lines are no documents, but they are lines
    assert entries[0].document.id == "d1" and entries[2].document.id == "d3"
    assert entries[1].document is None and reason in entries[1].problem


def test_documents_keep_what_the_file_says(tmp_path):
    path = write(tmp_path / "docs.jsonl", [
        "\ufeff" + json.dumps({"_id": 42, "title": "Only a title"}),
        json.dumps({"id": "b", "text": "Only a text", "metadata": {"year": 2001}}) + "\r",
        json.dumps({"id": "c", "title": None, "text": "pair \ud83d\ude00 ok", "payload": {}}),
    ])
    a, b, c = read_input(path)
    assert (a.document.id, a.document.title, a.document.text) == ("42", "Only a title", "")
    assert b.document.payload["year"] == 2001 and c.document.text == "pair \U0001F600 ok"
    assert c.end == path.stat().st_size and a.end < b.end < c.end


def test_an_oversized_document_or_line_is_a_bad_line(tmp_path):
    big = "x" * (MAX_BATCH_BYTES + 10)
    path = write(tmp_path / "docs.jsonl", [json.dumps({"id": "big", "text": big}), doc(2)])
    first, second = read_input(path)
    assert first.document is None and "a batch carries at most 4 MiB" in first.problem and second.document.id == "d2"
    huge = write(tmp_path / "huge.jsonl", [doc(1), "x" * (17 << 20), doc(3)])
    entries = list(read_input(huge))
    assert [e.number for e in entries] == [1, 2, 3] and "longer than 16 MiB" in entries[1].problem
    assert entries[2].document.id == "d3"


def test_reading_resumes_after_a_line(tmp_path):
    path = write(tmp_path / "docs.jsonl", [doc(i) for i in range(5)])
    entries = list(read_input(path))
    resumed = list(read_input(path, entries[1].end, entries[1].number))
    assert resumed == entries[2:]


def test_without_skip_bad_the_input_ends_at_the_first_bad_line(tmp_path):
    path = write(tmp_path / "docs.jsonl", [doc(i) for i in range(5)] + ["{oops"] + [doc(i) for i in range(6, 9)])
    source = Input(path, batch_size=2)
    batches = list(source.batches())
    assert [[line.number for line in b.lines] for b in batches] == [[1, 2], [3, 4], [5]]
    assert source.stopped_at.number == 6 and "invalid JSON" in source.stopped_at.problem and source.skipped == 0


def test_with_skip_bad_bad_lines_and_refused_documents_are_left_out_and_counted(tmp_path):
    path = write(tmp_path / "docs.jsonl", [doc(1), "{oops", json.dumps({"id": "empty", "title": " ", "text": ""}),
                                           json.dumps({"id": "titled", "title": "A title alone"}), doc(5)])
    seen = []
    source = Input(path, batch_size=10, skip_bad=True, on_skip=seen.append)
    [batch] = list(source.batches())
    assert [d.id for d in batch.documents] == ["d1", "titled", "d5"] and source.stopped_at is None
    assert source.skipped == 2 and [(s.number, s.problem[:20]) for s in seen] == [
        (2, "invalid JSON: Expect"), (3, "document.text: docum")]
    assert "neither text nor title" in seen[1].problem
    list(source.batches())  # read again (a resumed stream): each bad line counts once
    assert source.skipped == 2


def test_batches_are_bounded_by_count_bytes_and_repeated_ids(tmp_path):
    text = "y" * (MAX_BATCH_BYTES // 3)
    lines = [doc(1), doc(2), doc(1), doc(3)] + [json.dumps({"id": f"b{i}", "text": text}) for i in range(4)]
    batches = list(Input(write(tmp_path / "docs.jsonl", lines), batch_size=3).batches())
    assert [[d.id for d in b.documents] for b in batches] == [["d1", "d2"], ["d1", "d3", "b0"], ["b1", "b2"], ["b3"]]
    assert all(sum(d.ByteSize() for d in b.documents) <= MAX_BATCH_BYTES for b in batches)
    assert batches[1].describe() == "lines 3-5" and batches[1].at("documents[1].text").number == 4
    assert batches[1].at("collection") is None and batches[1].at("documents[9].id") is None


# ----------------------------------------------------------------------------- fuzzing

good = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8)}, optional={
    "title": st.text(max_size=20), "text": st.text(max_size=40),
    "payload": st.dictionaries(st.text(max_size=5), st.integers() | st.floats() | st.text(max_size=5), max_size=3)}).map(
    lambda d: json.dumps(d).encode())
mangled = good.flatmap(lambda line: st.integers(0, max(0, len(line) - 1)).map(lambda n: line[:n]))  # truncated
json_any = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                        max_leaves=10)
wrong_types = st.dictionaries(st.sampled_from(["id", "_id", "title", "text", "payload", "metadata"]), json_any,
                              min_size=1, max_size=4).map(lambda d: json.dumps(d).encode())
lines = st.lists(good | mangled | wrong_types | st.binary(max_size=40) | st.just(b"") | st.just(b'{"id": "\\udfff"}'),
                 max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines, batch_size=st.integers(1, 4))
def test_no_file_makes_the_reader_raise(tmp_path, lines, batch_size):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    entries = list(read_input(path))
    numbers = [e.number for e in entries]
    assert numbers == sorted(set(numbers)) and all(e.end <= path.stat().st_size for e in entries)
    for entry in entries:
        assert (entry.document is None) != (not entry.problem)
        if entry.document is not None:
            assert entry.document.id and entry.document.SerializeToString()  # sendable as it is
    source = Input(path, batch_size, skip_bad=True)
    sent = [line for batch in source.batches() for line in batch.lines]
    assert len(sent) + source.skipped == len(entries)
    assert all(ingest_input.refusal(line.document) == "" for line in sent)
