"""The Ingest stream interrupted by killing the retrieval service, then resumed from its
checkpoint: none lost, none duplicated."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.ingest_stream import Checkpoint, IngestFailed, load
from tests.conftest import REPO
from tests.resilience.conftest import figures, gateway_reaches_retrieval, start_stack, wait_for

pytestmark = pytest.mark.integration

N_DOCS = 480
BATCH = 8
TOPICS = ["rivers", "volcanoes", "bread", "tides", "vaccines", "graphics", "glaciers", "bees", "stars", "forests"]


def corpus() -> list[dict]:
    return [
        {
            "id": f"doc-{i:04d}",
            "title": f"{TOPICS[i % len(TOPICS)].title()} note {i}",
            "text": f"Note {i} about {TOPICS[i % len(TOPICS)]}: a short passage number {i} with a few words.",
            "payload": {"n": i},
        }
        for i in range(N_DOCS)
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("ingest"))
    yield s
    s.stop_all()


def document_count(stack, collection: str) -> tuple[int, int]:
    with grpc.insecure_channel(stack.gateway) as channel:
        try:
            info = pb_grpc.SearchServiceStub(channel).DescribeCollection(
                pb.DescribeCollectionRequest(name=collection), timeout=10
            ).collection
        except grpc.RpcError:
            return -1, -1
    return info.document_count, info.point_count


def acknowledged(checkpoint: Path) -> int:
    """Documents the checkpoint records as acknowledged (durable) from the start, without a gap."""
    try:
        return json.loads(checkpoint.read_text())["documents_done"]
    except (OSError, ValueError, KeyError):
        return 0


async def test_ingest_killed_midway_then_resumed_holds_exactly_the_corpus(stack, tmp_path):
    docs = corpus()
    collection = f"ing{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "corpus.jsonl"
    checkpoint = Checkpoint.path_for(spool, collection)

    # Run 1, through the project's one loader (the Ingest stream), retrieval killed mid-stream.
    first = asyncio.create_task(asyncio.to_thread(load, docs, collection, stack.gateway, spool=spool, batch_size=BATCH))
    reached = await wait_for(lambda: acknowledged(checkpoint) >= N_DOCS // 4, timeout=120, interval=0.05)
    assert reached and not first.done(), "ingestion finished before it could be interrupted; raise N_DOCS"
    await asyncio.to_thread(stack.stop, "retrieval", signal.SIGKILL)
    t_kill = time.monotonic()
    with pytest.raises(IngestFailed) as info:
        await first  # the stream is resumed with backoff, then given up: it must fail, not report success
    failed_after_s = time.monotonic() - t_kill
    assert info.value.code == "UNAVAILABLE" and info.value.transient, info.value
    assert "retrieval" in info.value.message
    at_kill = acknowledged(checkpoint)
    assert info.value.acknowledged == at_kill and N_DOCS // 4 <= at_kill < N_DOCS and spool.exists()

    await asyncio.to_thread(stack.start, "retrieval")
    # Retrieval reports SERVING before the gateway's channel has left its reconnect backoff (at most
    # grpc.max_reconnect_backoff_ms): wait until the gateway reaches it again, and record how long that took.
    gateway_recovered_s = await gateway_reaches_retrieval(stack, collection)
    after_crash, _ = document_count(stack, collection)
    # Everything acknowledged before the SIGKILL is still there: the engine's write-ahead log is
    # replayed on load (batches written but not yet acknowledged may be there too).
    assert at_kill <= after_crash < N_DOCS, (at_kill, after_crash)

    # Run 2, through `searchctl ingest` on the same file: it resumes from the checkpoint.
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "ingest", str(spool), "--collection", collection, "--target", stack.gateway,
         "--batch-size", str(BATCH)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"ingested {N_DOCS - at_kill} documents" in run.stdout and f"resumed after {at_kill} already acknowledged" in run.stdout
    assert not checkpoint.exists()
    documents, points = document_count(stack, collection)
    assert documents == N_DOCS and points == N_DOCS, (documents, points)

    # Look in the store itself: exactly one point per document, at the id derived from it.
    await asyncio.to_thread(stack.stop, "retrieval")
    from services.retrieval.backends.edge import EdgeBackend
    from services.retrieval.store import point_id

    store = EdgeBackend(stack.tmp / "qdrant")  # loads without repair after the SIGKILL and the restart
    try:
        stored, offset = [], None
        while True:
            page, offset = store.scroll(collection, offset, 256, False)
            stored.extend(page)
            if offset is None:
                break
    finally:
        store.close()
    await asyncio.to_thread(stack.start, "retrieval")
    stored_ids = [payload["doc_id"] for _, payload, _ in stored]
    expected = {d["id"] for d in docs}
    lost = expected - set(stored_ids)
    duplicated = len(stored_ids) - len(set(stored_ids))
    assert not lost and not duplicated and set(stored_ids) == expected
    assert all(pid == point_id(payload["doc_id"]) for pid, payload, _ in stored)
    figures(
        "ingestion interrupted by SIGKILL of retrieval, then re-run",
        corpus=N_DOCS,
        acknowledged_at_kill=at_kill,
        first_run_failed_after_s=round(failed_after_s, 1),
        first_run_error=info.value.code,
        gateway_recovered_after_s=round(gateway_recovered_s, 1),
        after_crash=after_crash,
        after_rerun=documents,
        points=points,
        lost=len(lost),
        duplicated=duplicated,
    )
