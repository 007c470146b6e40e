"""`searchctl ingest` against the real stack when the input is bad: a refused document
in a 3,000-document stream, or the first one, gives the service's status, the file and line and
the count acknowledged before it, never INTERNAL; fixed, the same command resumes; title-only
documents ingest fully; bad lines stop the input, or are skipped and counted with --skip-bad."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.e2e.test_cli import searchctl

N = 3000
BATCH = 64


def write(path: Path, docs: list) -> Path:
    path.write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))
    return path


def docs(n: int, bad: int | None = None, words: int = 0) -> list[dict]:
    out = [{"_id": f"d{i}", "title": f"Note {i}", "text": f"Note {i} is about item {i * 7} and little else." + " more" * words}
           for i in range(n)]
    if bad is not None:
        out[bad] = {"_id": f"d{bad}", "title": "", "text": "  "}  # neither title nor text
    return out


def described(stack, collection: str) -> int:
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        return stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection.document_count


def ingest(stack, path: Path, collection: str, *extra: str):
    return searchctl("ingest", str(path), "--collection", collection, "--target", stack.gateway,
                     "--batch-size", str(BATCH), *extra, timeout=600)


def assert_no_fault(result) -> None:
    assert "INTERNAL" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_refused_document_mid_stream_is_named_and_fixing_it_resumes_there(stack, tmp_path):
    bad = 1500
    path = write(tmp_path / "docs.jsonl", docs(N, bad=bad))
    collection = f"c{uuid.uuid4().hex[:10]}"
    result = ingest(stack, path, collection)
    assert result.returncode == 1
    assert_no_fault(result)
    before = bad - bad % BATCH  # the batches before the refused one: all acknowledged, none after
    err = result.stderr
    assert f"INVALID_ARGUMENT: documents[{bad % BATCH}].text: document 'd{bad}' has neither text nor title" in err, err
    assert f"at {path}:{bad + 1} (document 'd{bad}')" in err
    assert f"{before} documents before it are acknowledged (durable)" in err
    assert "fix that document and run the same command again" in err and "to resume" not in err
    assert described(stack, collection) == before

    fixed = docs(N)  # the line fixed: only lines after the acknowledged part changed, so it resumes
    write(path, fixed)
    again = ingest(stack, path, collection)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed after {before} already acknowledged" in again.stdout and f"ingested {N - before} documents" in again.stdout
    assert described(stack, collection) == N


def test_a_refused_first_document_is_named_with_nothing_acknowledged(stack, tmp_path):
    # Long texts (batches of ~130 KB) as in the report: the client is still writing when the first is refused.
    path = write(tmp_path / "docs.jsonl", docs(N, bad=0, words=400))
    collection = f"c{uuid.uuid4().hex[:10]}"
    result = ingest(stack, path, collection)
    assert result.returncode == 1
    assert_no_fault(result)
    assert "INVALID_ARGUMENT: documents[0].text: document 'd0' has neither text nor title" in result.stderr
    assert f"at {path}:1 (document 'd0')" in result.stderr
    assert "0 documents before it are acknowledged (durable)" in result.stderr
    with pytest.raises(grpc.RpcError) as missing:  # the first batch was refused: nothing made, nothing written
        described(stack, collection)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_title_only_documents_ingest_fully(stack, tmp_path):
    n = 600
    path = write(tmp_path / "titles.jsonl", [{"_id": f"t{i}", "title": f"Bibliographic record {i} on item {i * 3}", "text": ""}
                                              for i in range(n)])
    collection = f"c{uuid.uuid4().hex[:10]}"
    result = ingest(stack, path, collection)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ingested {n} documents" in result.stdout and described(stack, collection) == n
    with grpc.insecure_channel(stack.gateway) as channel:
        [stored] = pb_grpc.SearchServiceStub(channel).GetDocuments(
            pb.GetDocumentsRequest(collection=collection, ids=["t7"]), timeout=30).documents
    assert (stored.title, stored.text) == ("Bibliographic record 7 on item 21", "")


def test_bad_lines_stop_the_input_or_are_skipped_and_counted(stack, tmp_path):
    lines = docs(10)
    lines[4] = '{"_id": "d4", "title": "cut off'  # a truncated line: line 5
    lines[7] = {"_id": "d7", "title": "T", "text": ["not", "a", "string"]}  # line 8
    path = write(tmp_path / "docs.jsonl", lines)
    collection = f"c{uuid.uuid4().hex[:10]}"
    stopped = ingest(stack, path, collection, "--batch-size", "3")
    assert stopped.returncode == 1
    assert_no_fault(stopped)
    assert f"{path}:5: invalid JSON" in stopped.stderr
    assert "4 documents before it are acknowledged (durable); nothing after it was sent" in stopped.stderr
    assert "--skip-bad" in stopped.stderr and described(stack, collection) == 4

    skipped = ingest(stack, path, collection, "--batch-size", "3", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert f"skipped {path}:5: invalid JSON" in skipped.stderr
    assert f"skipped {path}:8: 'text' must be a string, got an array" in skipped.stderr
    assert "resumed after 4 already acknowledged" in skipped.stdout and "ingested 4 documents" in skipped.stdout
    assert f"skipped 2 lines of {path}" in skipped.stdout and described(stack, collection) == 8
