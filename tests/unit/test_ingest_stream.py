"""The streamed ingest's checkpoint (services/cli/ingest_stream.py) and what `searchctl ingest`
says when it stops (services/cli/ingest_cmd.py), without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.ingest_cmd import explain
from services.cli.ingest_input import Input
from services.cli.ingest_stream import Checkpoint, CheckpointMismatch, IngestFailed, Progress


def corpus(path: Path, n: int, bad: int | None = None) -> Path:
    lines = [json.dumps({"id": f"d{i}", "text": "" if i == bad else f"text {i}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def acknowledge(tmp_path: Path, source: Path, upto: int) -> Path:
    """A checkpoint over the first ``upto`` batches of 2, acknowledged out of order."""
    path = tmp_path / "cp"
    checkpoint = Checkpoint.open(path, source, "c", 2, restart=False)
    progress = Progress(checkpoint, path, source)
    batches = dict(enumerate(Input(source, 2).batches()))
    acked: dict = {}
    awaited = 0
    for sequence in [1, 0, *range(2, upto)][:upto]:
        acked[sequence] = batches[sequence]
        awaited = progress.acknowledged(acked, awaited)
    return path


def test_the_checkpoint_moves_over_batches_acknowledged_without_a_gap(tmp_path):
    source = corpus(tmp_path / "docs.jsonl", 10)
    path = tmp_path / "cp"
    checkpoint = Checkpoint.open(path, source, "c", 2, restart=False)
    progress = Progress(checkpoint, path, source)
    batches = dict(enumerate(Input(source, 2).batches()))
    acked = {1: batches[1]}
    assert progress.acknowledged(acked, 0) == 0 and not path.exists()  # batch 0 still missing
    acked[0] = batches[0]
    assert progress.acknowledged(acked, 0) == 2 and acked == {}
    saved = json.loads(path.read_text())
    assert (saved["documents_done"], saved["lines_done"], saved["offset"]) == (4, 4, batches[1].end)


def test_an_input_edited_after_the_acknowledged_part_resumes_and_before_it_is_refused(tmp_path):
    source = corpus(tmp_path / "docs.jsonl", 10, bad=7)
    path = acknowledge(tmp_path, source, 3)  # lines 1-6 acknowledged
    with source.open("a") as f:  # the bad line fixed, or lines added: the acknowledged part is unchanged
        f.write(json.dumps({"id": "d10", "text": "appended"}) + "\n")
    resumed = Checkpoint.open(path, source, "c", 2, restart=False)
    assert (resumed.documents_done, resumed.lines_done) == (6, 6) and resumed.size == source.stat().st_size
    assert [d.id for b in Input(source, 2).batches(resumed.offset, resumed.lines_done) for d in b.documents][:1] == ["d6"]
    assert Checkpoint.open(path, source, "c", 8, restart=False).batch_size == 8  # batches may differ on resume
    source.write_text(source.read_text().replace('"d1"', '"D1"'))  # a line already ingested changed
    with pytest.raises(CheckpointMismatch, match="changed in its first 6 lines"):
        Checkpoint.open(path, source, "c", 2, restart=False)
    assert Checkpoint.open(path, source, "c", 2, restart=True).documents_done == 0
    with pytest.raises(CheckpointMismatch, match="another input or collection"):
        Checkpoint.open(path, source, "other", 2, restart=False)


def test_a_checkpoint_of_an_earlier_searchctl_or_unreadable_is_refused(tmp_path):
    source = corpus(tmp_path / "docs.jsonl", 4)
    path = tmp_path / "cp"
    path.write_text(json.dumps({"input": str(source.resolve()), "size": 1, "mtime_ns": 1, "collection": "c",
                                "batch_size": 2, "documents_done": 2}))
    with pytest.raises(CheckpointMismatch, match="earlier searchctl"):
        Checkpoint.open(path, source, "c", 2, restart=False)
    path.write_text("{not json")
    with pytest.raises(CheckpointMismatch, match="--restart"):
        Checkpoint.open(path, source, "c", 2, restart=False)


def messages(failure: IngestFailed) -> str:
    return "\n".join(explain(Path("docs.jsonl"), failure))


def test_what_searchctl_ingest_says_when_it_stops(tmp_path):
    source = corpus(tmp_path / "docs.jsonl", 6, bad=3)
    [first, second, _] = Input(source, 2).batches()
    refused = IngestFailed("INVALID_ARGUMENT", "documents[1].text: document 'd3' has neither text nor title; give it "
                           "at least one", 2, line=second.at("documents[1].text"))
    said = messages(refused)
    assert said.startswith("INVALID_ARGUMENT: documents[1].text: document 'd3'")
    assert "at docs.jsonl:4 (document 'd3')" in said and "2 documents before it are acknowledged (durable)" in said
    assert "fix that document and run the same command again: it resumes after those 2" in said
    assert "--skip-bad" in said and "to resume" not in said

    bad_line = Input(corpus(tmp_path / "b.jsonl", 2), 2).batches()
    line = next(bad_line).lines[0]
    said = messages(IngestFailed("", "invalid JSON: Expecting value (column 1)", 0, line=line))
    assert said.startswith("docs.jsonl:1 (document 'd0'): invalid JSON") and "nothing after it was sent" in said
    assert "fix that line and run the same command again;" in said

    away = messages(IngestFailed("UNAVAILABLE", "retrieval service unavailable during Upsert", 64, transient=True))
    assert "64 documents are acknowledged (durable)" in away and "run the same command again: it resumes after those 64" in away
    assert "fix" not in away and "no gateway" not in away
    nobody = "\n".join(explain(Path("docs.jsonl"), IngestFailed(
        "UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused", 0,
        transient=True), "127.0.0.1:1"))
    assert "no gateway answers at 127.0.0.1:1: start one with `searchctl up`, or name it with --target; then run the " \
           "same command again" in nobody and "overloaded" not in nobody

    guard = messages(IngestFailed("FAILED_PRECONDITION", "collection 'c' was written by other models; "
                                  "run `searchctl reindex c`", 10, batch=first))
    assert "the batch of lines 1-2" in guard and "run the same command again" not in guard

