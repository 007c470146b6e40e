"""The operating commands as a user runs them against the real stack: a streamed ingest killed
midway and resumed from its checkpoint, collections and aliases, reindex, snapshot create and
restore, and migrate into qdrant-client's local mode (a Qdrant server's stand-in)."""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from pathlib import Path

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import REPO
from tests.e2e.test_cli import searchctl
from tests.processes import running, spawn


def corpus(path: Path, n: int) -> Path:
    topics = ["rivers", "volcanoes", "bread", "GPUs", "tides", "vaccines", "chess", "glaciers"]
    with open(path, "w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            f.write(json.dumps({"id": f"d{i}", "title": f"{t} {i}", "text": f"Document {i} is about {t} and also mentions item {i * 7}.",
                                "payload": {"n": i}}) + "\n")
    return path


def ids_present(stack, collection: str, ids: list[str]) -> set[str]:
    with grpc.insecure_channel(stack.gateway) as channel:
        reply = pb_grpc.SearchServiceStub(channel).GetDocuments(pb.GetDocumentsRequest(collection=collection, ids=ids), timeout=60)
    return {d.id for d in reply.documents}


def test_streamed_ingest_resumes_from_its_checkpoint_after_being_killed(stack, tmp_path: Path):
    n = 1200
    path = corpus(tmp_path / "docs.jsonl", n)
    collection = f"c{uuid.uuid4().hex[:10]}"
    checkpoint = tmp_path / f"docs.jsonl.{collection}.ingest-checkpoint"
    argv = [sys.executable, "-m", "services.cli", "ingest", str(path), "--collection", collection,
            "--target", stack.gateway, "--batch-size", "32"]
    child = spawn("ingest", argv, tmp_path / "ingest.log", cwd=REPO)
    with running(child):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (checkpoint.exists() and json.loads(checkpoint.read_text())["documents_done"] >= 96):
            assert child.proc.poll() is None, child.output()
            time.sleep(0.05)
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait()
    done = json.loads(checkpoint.read_text())["documents_done"]
    assert 96 <= done < n and done % 32 == 0
    # Everything the checkpoint counts is durable.
    assert ids_present(stack, collection, [f"d{i}" for i in range(done)]) == {f"d{i}" for i in range(done)}

    result = searchctl(*argv[3:])
    assert result.returncode == 0, result.stderr
    assert f"resumed after {done} already acknowledged" in result.stdout and "docs/s" in result.stdout, result.stdout
    assert f"ingested {n - done} documents" in result.stdout
    assert not checkpoint.exists()
    with grpc.insecure_channel(stack.gateway) as channel:
        described = pb_grpc.SearchServiceStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30)
    assert described.collection.document_count == n

    # A checkpoint of another input is refused, not half-applied.
    checkpoint.write_text(json.dumps({"input": "/elsewhere", "size": 1, "mtime_ns": 1, "collection": collection,
                                      "batch_size": 32, "documents_done": 64}))
    refused = searchctl(*argv[3:])
    assert refused.returncode == 2 and "--restart" in refused.stderr and "Traceback" not in refused.stderr


def test_collections_alias_reindex_snapshot_and_migrate_commands(stack, tmp_path: Path):
    path = corpus(tmp_path / "docs.jsonl", 60)
    collection = f"c{uuid.uuid4().hex[:10]}"
    alias = f"a{uuid.uuid4().hex[:10]}"
    target = ("--target", stack.gateway)
    assert searchctl("ingest", str(path), "--collection", collection, *target).returncode == 0
    created = searchctl("alias", "create", alias, collection, *target)
    assert created.returncode == 0 and f"{alias} -> {collection}" in created.stdout
    listing = searchctl("collections", "list", *target).stdout
    assert collection in listing and alias in listing

    def top(name: str) -> list[str]:  # the one document mentioning item 161, found by every copy
        out = searchctl("search", "which document mentions item 161", "--collection", name, "--top-k", "1", "--json", *target)
        assert out.returncode == 0, out.stderr
        return [r["id"] for r in json.loads(out.stdout)["results"]]

    reference = top(alias)
    assert reference == ["d23"]
    reindexed = searchctl("reindex", alias, "--to", f"{collection}-v2", *target)
    assert reindexed.returncode == 0, reindexed.stderr
    assert f"alias '{alias}' -> '{collection}-v2'" in reindexed.stdout and "copying the vectors" in reindexed.stdout
    assert f"the old collection '{collection}' is kept" in reindexed.stdout, reindexed.stdout
    assert top(alias) == reference
    assert f"{alias} -> {collection}-v2" in searchctl("alias", "list", *target).stdout

    snapshot = tmp_path / "snap.snapshot"
    made = searchctl("snapshot", "create", alias, "--out", str(snapshot), *target)
    assert made.returncode == 0 and "60 points" in made.stdout, made.stderr
    restored = searchctl("snapshot", "restore", str(snapshot), "--collection", f"{collection}-r", *target)
    assert restored.returncode == 0 and "restored 60 points" in restored.stdout, restored.stderr
    assert top(f"{collection}-r") == reference
    again = searchctl("snapshot", "restore", str(snapshot), "--collection", f"{collection}-r", *target)
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr and "Traceback" not in again.stderr
    damaged = tmp_path / "damaged.snapshot"
    damaged.write_bytes(snapshot.read_bytes()[:-100])
    broken = searchctl("snapshot", "restore", str(damaged), "--collection", f"{collection}-d", *target)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr
    assert f"{collection}-d" not in searchctl("collections", "list", *target).stdout

    local = tmp_path / "cluster"
    moved = searchctl("migrate", "--collection", alias, "--to", f"local:{local}", "--shards", "2", *target)
    assert moved.returncode == 0, moved.stderr
    assert "migrated 60 points" in moved.stdout and "Verified" in moved.stdout and "QDRANT_URL=" in moved.stdout
    # The target holds the same points, schema and alias; the retrieval code reads it back as is.
    from qdrant_client import QdrantClient

    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    backend = QdrantServerBackend(QdrantClient(path=str(local)))
    try:
        assert backend.count(f"{collection}-v2") == 60 and backend.list_aliases() == {alias: f"{collection}-v2"}
        schema = backend.schema(f"{collection}-v2")
        assert schema.metadata["models"]["dense"]["name"] == "bge-small-en" and schema.sparse
    finally:
        backend.close()
    twice = searchctl("migrate", "--collection", alias, "--to", f"local:{local}", *target)
    assert twice.returncode == 1 and "already exists" in twice.stderr

    # Deleting a collection an alias points to is refused with the alias named.
    refused = searchctl("collections", "delete", f"{collection}-v2", *target)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr and alias in refused.stderr
