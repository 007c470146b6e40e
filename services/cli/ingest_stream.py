"""`searchctl ingest` over the streamed Ingest RPC, resumable from a checkpoint file.

Documents go to the gateway in batches on one stream; the gateway acknowledges each batch
once it is durable. The checkpoint records how many documents, from the start of the input,
are acknowledged without a gap (acknowledgements may arrive out of order, up to the gateway's
GATEWAY_INGEST_WINDOW batches apart); it is rewritten (atomically) as that number grows. Run
the same command again after an interruption (Ctrl-C, a lost connection, a restarted
service) and it resumes there; a lost connection is also resumed by the running command,
with backoff. The checkpoint lives beside the input (``<input>.<collection>.ingest-checkpoint``),
or under ``.data/ingest-checkpoints/`` when that directory cannot be written, and is removed
when the ingest completes. It is bound to the input's size and modification time, the
collection and the batch size: a changed input is refused rather than half-skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tenacity import Retrying
from tqdm import tqdm

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import batched, open_channel, retry_policy, to_document

FALLBACK_DIR = Path(".data/ingest-checkpoints")
ATTEMPTS = 5


class CheckpointMismatch(Exception):
    pass


@dataclass
class Checkpoint:
    input: str
    size: int
    mtime_ns: int
    collection: str
    batch_size: int
    documents_done: int = 0

    @staticmethod
    def path_for(source: Path, collection: str) -> Path:
        beside = source.parent / f"{source.name}.{collection}.ingest-checkpoint"
        if os.access(source.parent, os.W_OK):
            return beside
        return FALLBACK_DIR / f"{source.name}.{collection}.ingest-checkpoint"

    @classmethod
    def open(cls, path: Path, source: Path, collection: str, batch_size: int, restart: bool) -> Checkpoint:
        st = source.stat()
        fresh = cls(str(source.resolve()), st.st_size, st.st_mtime_ns, collection, batch_size)
        if restart or not path.exists():
            return fresh
        saved = cls(**json.loads(path.read_text()))
        if (saved.input, saved.size, saved.mtime_ns, saved.collection) != (fresh.input, fresh.size, fresh.mtime_ns, fresh.collection):
            raise CheckpointMismatch(f"{path} was written for another input, or {source} changed since; "
                                     "run with --restart to ingest it from the beginning")
        if saved.batch_size != batch_size:
            raise CheckpointMismatch(f"{path} was written with --batch-size {saved.batch_size}; use it again, or --restart")
        return saved

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


async def stream_ingest(documents: Iterable[dict], collection: str, target: str, batch_size: int,
                        on_ack: Callable[[int, int], None], api_key: str | None = None, first_sequence: int = 0) -> None:
    """Send ``documents`` on one Ingest stream; ``on_ack(sequence, upserted)`` per acknowledged batch.
    Sequence numbers count batches from ``first_sequence``."""
    async with open_channel(target, api_key) as channel:
        call = pb_grpc.SearchServiceStub(channel).Ingest()

        async def send() -> None:
            for n, batch in enumerate(batched(documents, batch_size)):
                # Waits while the gateway does not read (its window is full): flow control.
                await call.write(pb.IngestRequest(collection=collection, documents=[to_document(d) for d in batch],
                                                  sequence=first_sequence + n))
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        try:
            async for ack in call:
                on_ack(ack.sequence, ack.upserted)
            await sender
        finally:
            sender.cancel()


def run(source: Path, corpus_docs: Callable[[], Iterator[dict]], collection: str, target: str, batch_size: int,
        total: int | None, checkpoint_path: Path | None = None, restart: bool = False, progress: bool = True,
        api_key: str | None = None) -> tuple[int, int, float]:
    """Ingest with resume; returns (documents written now, documents skipped from the checkpoint, seconds)."""
    path = checkpoint_path or Checkpoint.path_for(source, collection)
    checkpoint = Checkpoint.open(path, source, collection, batch_size, restart)
    resumed = checkpoint.documents_done
    bar = tqdm(total=total, initial=resumed, unit="doc", desc=f"ingest {collection}", disable=not progress, smoothing=0.1)
    started = time.perf_counter()

    def stream_once() -> None:
        """One Ingest stream from the checkpoint on; a lost stream is retried (resumed) by tenacity."""
        base = checkpoint.documents_done // batch_size  # batches are counted from the start of the input
        acked: set[int] = set()
        sizes: dict[int, int] = {}

        def docs() -> Iterator[dict]:
            for n, doc in enumerate(corpus_docs()):
                if n >= checkpoint.documents_done:
                    yield doc

        def on_ack(sequence: int, upserted: int) -> None:
            acked.add(sequence)
            sizes[sequence] = upserted
            bar.update(upserted)
            advanced = False
            while checkpoint.documents_done // batch_size in acked:
                seq = checkpoint.documents_done // batch_size
                acked.discard(seq)
                checkpoint.documents_done += sizes.pop(seq)
                advanced = True
            if advanced:
                checkpoint.save(path)

        asyncio.run(stream_ingest(docs(), collection, target, batch_size, on_ack, api_key, first_sequence=base))

    def resuming(state) -> None:
        bar.write(f"stream interrupted ({state.outcome.exception().code().name}); "
                  f"resuming after document {checkpoint.documents_done}")

    try:
        Retrying(**retry_policy(ATTEMPTS, before_sleep=resuming))(stream_once)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    path.unlink(missing_ok=True)
    return checkpoint.documents_done - resumed, resumed, elapsed
