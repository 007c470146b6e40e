"""`searchctl ingest` over the streamed Ingest RPC, resumable from a checkpoint file.

Documents go to the gateway in batches on one stream (services/cli/ingest_input.py reads and
batches them); the gateway acknowledges each batch once it is durable. The checkpoint records
how far, from the start of the input, everything is acknowledged without a gap (acknowledgements
may arrive out of order, up to the gateway's GATEWAY_INGEST_WINDOW batches apart): the number of
documents, the line and byte offset reached, and the sha256 of the input up to there. It is
rewritten (atomically) as that point moves. Run the same command again after an interruption
(Ctrl-C, a lost connection, a restarted service) and it resumes there; a lost connection is also
resumed by the running command, with backoff. The checkpoint lives beside the input
(``<input>.<collection>.ingest-checkpoint``), or under ``.data/ingest-checkpoints/`` when that
directory cannot be written, and is removed when the ingest completes. It is bound to the
input's part already ingested: an input changed after that point (a bad line fixed) resumes;
one changed before it is refused rather than half-skipped.

:func:`load` is the same stream for documents held in memory (`searchctl up`'s demo, `searchctl
eval`, the benchmarks, the tests): they are written to a JSONL file first and streamed from it,
so every client of the project loads documents one way, with the checkpoint.

When the stream fails, the gateway first sends the error (``IngestResponse.error``) and then
ends the call once this side has stopped writing (services/gateway/ingest.py), so the status
shown is the server's. The stream runs on grpc's blocking API, which reports the server's status
even when a call ends while a write is still going (grpc.aio reports ``INTERNAL: Internal error
from Core`` then, grpc/grpc#36066): a gateway that ends the call at once is reported right too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from tenacity import Retrying
from tqdm import tqdm

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import DEFAULT_TARGET, open_blocking_channel, retry_policy, transient
from services.cli.ingest_input import Batch, Input, InputLine

FALLBACK_DIR = Path(".data/ingest-checkpoints")
ATTEMPTS = 5


class CheckpointMismatch(Exception):
    pass


@dataclass
class IngestFailed(Exception):
    """An ingest that stopped: why, where in the input, and how much of it is durable."""

    code: str  # the server's status code name; "" for a bad line found here
    message: str  # the server's status message, or what is wrong with the line
    acknowledged: int  # documents of the input acknowledged (durable) before it, without a gap
    line: InputLine | None = None  # the line at fault, when known
    batch: Batch | None = None  # the batch at fault, when no one line is known
    transient: bool = False  # the service was away or overloaded: resuming later can succeed

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


@dataclass
class Checkpoint:
    input: str
    size: int
    mtime_ns: int
    collection: str
    batch_size: int
    #: Documents acknowledged, from the start of the input without a gap.
    documents_done: int = 0
    #: The line up to which the input is done (its documents acknowledged, bad lines skipped).
    lines_done: int = 0
    #: The byte offset just past that line, and the sha256 of the input's bytes before it.
    offset: int = 0
    prefix_sha256: str = hashlib.sha256().hexdigest()

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
        try:
            saved = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CheckpointMismatch(f"{path} is not a checkpoint this searchctl reads ({exc}); "
                                     "run with --restart to ingest the input from the beginning") from exc
        if (saved.input, saved.collection) != (fresh.input, fresh.collection):
            raise CheckpointMismatch(f"{path} was written for another input or collection; "
                                     "run with --restart to ingest the input from the beginning")
        if saved.documents_done and not saved.lines_done:
            raise CheckpointMismatch(f"{path} was written by an earlier searchctl; run with --restart "
                                     "(documents already ingested are replaced, not duplicated)")
        if saved.offset > st.st_size or PrefixHash.of(source, saved.offset) != saved.prefix_sha256:
            raise CheckpointMismatch(f"{source} changed in its first {saved.lines_done} lines, which were already "
                                     f"ingested, since {path} was written; run with --restart to ingest it from the beginning")
        saved.size, saved.mtime_ns, saved.batch_size = st.st_size, st.st_mtime_ns, batch_size
        return saved

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


class PrefixHash:
    """The sha256 of a file's first bytes, extended as the acknowledged part grows."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.at = 0

    @classmethod
    def of(cls, source: Path, offset: int) -> str:
        prefix = cls(source)
        prefix.advance(offset)
        return prefix.digest.hexdigest()

    def advance(self, offset: int) -> None:
        if offset <= self.at:
            return
        with self.source.open("rb") as fh:
            fh.seek(self.at)
            while self.at < offset:
                block = fh.read(min(1 << 20, offset - self.at))
                if not block:
                    raise CheckpointMismatch(f"{self.source} is shorter than the part already acknowledged")
                self.digest.update(block)
                self.at += len(block)


class Progress:
    """Acknowledged batches -> the checkpoint: it moves over every batch acknowledged without a gap."""

    def __init__(self, checkpoint: Checkpoint, path: Path, source: Path) -> None:
        self.checkpoint = checkpoint
        self.path = path
        self.prefix = PrefixHash(source)
        self.prefix.advance(checkpoint.offset)

    def acknowledged(self, batches: dict[int, Batch], next_sequence: int) -> int:
        """Move over ``batches`` from ``next_sequence`` on while they follow each other; returns
        the next sequence still awaited."""
        advanced = False
        while next_sequence in batches:
            batch = batches.pop(next_sequence)
            self.checkpoint.documents_done += len(batch.lines)
            self.checkpoint.lines_done = batch.last_line
            self.checkpoint.offset = batch.end
            next_sequence += 1
            advanced = True
        if advanced:
            self.prefix.advance(self.checkpoint.offset)
            self.checkpoint.prefix_sha256 = self.prefix.digest.hexdigest()
            self.checkpoint.save(self.path)
        return next_sequence


@dataclass
class Outcome:
    written: int  # documents acknowledged by this run
    resumed: int  # documents acknowledged before it (the checkpoint it resumed from)
    skipped: int  # bad lines left out (--skip-bad)
    seconds: float


class _Stream:
    """One Ingest stream from the checkpoint on (a lost stream is retried: resumed, by tenacity)."""

    def __init__(self, source: Input, collection: str, progress: Progress, bar: tqdm) -> None:
        self.source = source
        self.collection = collection
        self.progress = progress
        self.bar = bar
        self.sent: dict[int, Batch] = {}
        self.error: pb.IngestError | None = None
        self.reading_failed: BaseException | None = None

    def requests(self, stop: threading.Event) -> Iterator[pb.IngestRequest]:
        """Runs on grpc's sending thread: it must not raise (grpc would cancel the call and lose
        the reason), so a failure to read the input is kept for afterwards."""
        checkpoint = self.progress.checkpoint
        try:
            for sequence, batch in enumerate(self.source.batches(checkpoint.offset, checkpoint.lines_done)):
                if stop.is_set():
                    return
                self.sent[sequence] = batch
                yield pb.IngestRequest(collection=self.collection, documents=batch.documents, sequence=sequence)
        except Exception as exc:  # noqa: BLE001 - re-raised on the main thread
            self.reading_failed = exc

    def run(self, target: str, api_key: str | None, cancel: threading.Event | None = None) -> None:
        stop = threading.Event()
        acknowledged: dict[int, Batch] = {}
        awaited = 0
        with open_blocking_channel(target, api_key) as channel:
            call = pb_grpc.SearchServiceStub(channel).Ingest(self.requests(stop))
            if cancel is not None:
                threading.Thread(target=_cancel_when, args=(cancel, stop, call), name="ingest-cancel", daemon=True).start()
            try:
                for reply in call:
                    if reply.HasField("error"):
                        self.error = reply.error
                        stop.set()  # no more batches: half-close; the call then ends with the status
                        continue
                    batch = self.sent.pop(reply.sequence)
                    self.bar.update(len(batch.lines))
                    acknowledged[reply.sequence] = batch
                    awaited = self.progress.acknowledged(acknowledged, awaited)
            finally:
                stop.set()
                call.cancel()  # a no-op once the call has ended; on Ctrl-C it stops the sending thread
        if self.reading_failed is not None:
            raise self.reading_failed

    def failed(self, exc: grpc.RpcError) -> IngestFailed:
        """``exc`` (the server's status) with the line at fault, when the server named one."""
        error, batch = self.error, None
        if error is not None and error.HasField("sequence"):
            batch = self.sent.get(error.sequence)
        elif self.sent and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            batch = self.sent[min(self.sent)]  # a gateway that does not say: the first batch not acknowledged
        field = error.field if error is not None else (exc.details() or "").split(":", 1)[0]
        line = batch.at(field) if batch is not None else None
        return IngestFailed(exc.code().name, exc.details() or "", self.progress.checkpoint.documents_done,
                            line=line, batch=None if line else batch, transient=transient(exc))


def _cancel_when(cancel: threading.Event, done: threading.Event, call) -> None:
    """Cancel ``call`` once ``cancel`` is set, unless the stream is ``done`` first."""
    while not done.wait(0.1):
        if cancel.is_set():
            call.cancel()
            return


def run(source: Path, collection: str, target: str, batch_size: int, total: int | None,
        checkpoint_path: Path | None = None, restart: bool = False, progress: bool = True,
        api_key: str | None = None, skip_bad: bool = False,
        on_skip: Callable[[InputLine], None] = lambda line: None, cancel: threading.Event | None = None) -> Outcome:
    """Ingest ``source`` (a JSONL file) with resume. Raises :class:`IngestFailed` when the
    service refuses or stays away, or when a bad line ends the input (without ``skip_bad``);
    setting ``cancel`` ends the stream (IngestFailed CANCELLED; the checkpoint stays)."""
    path = checkpoint_path or Checkpoint.path_for(source, collection)
    checkpoint = Checkpoint.open(path, source, collection, batch_size, restart)
    resumed = checkpoint.documents_done
    bar = tqdm(total=total, initial=resumed, unit="doc", desc=f"ingest {collection}", disable=not progress, smoothing=0.1)
    tracker = Progress(checkpoint, path, source)
    documents = Input(source, batch_size, skip_bad, on_skip)
    started = time.perf_counter()
    attempt: list[_Stream] = []

    def stream_once() -> None:
        attempt[:] = [_Stream(documents, collection, tracker, bar)]
        attempt[0].run(target, api_key, cancel)

    def resuming(state) -> None:
        bar.write(f"stream interrupted ({state.outcome.exception().code().name}); "
                  f"resuming after document {checkpoint.documents_done}")

    try:
        Retrying(**retry_policy(ATTEMPTS, before_sleep=resuming))(stream_once)
    except grpc.RpcError as exc:
        raise attempt[0].failed(exc) from None
    finally:
        bar.close()
    if documents.stopped_at is not None:
        raise IngestFailed("", documents.stopped_at.problem, checkpoint.documents_done, line=documents.stopped_at)
    elapsed = time.perf_counter() - started
    path.unlink(missing_ok=True)
    return Outcome(checkpoint.documents_done - resumed, resumed, documents.skipped, elapsed)


def load(documents: Iterable[dict], collection: str, target: str = DEFAULT_TARGET, *, spool: Path | None = None,
         batch_size: int = 64, total: int | None = None, progress: bool = False, api_key: str | None = None,
         skip_bad: bool = False, cancel: threading.Event | None = None) -> Outcome:
    """Ingest ``documents`` (dicts: id, title, text, payload) on the Ingest stream with :func:`run`.

    They are written, one JSON line each, to ``spool`` and streamed from it with the checkpoint
    beside it; the file is removed once every document is acknowledged. Given a lasting ``spool``
    path, a load that stopped (the service away longer than the retries, the process killed)
    resumes where the acknowledged documents end when it is called again with the same
    documents; documents that changed before that point are loaded again from the start
    (documents are replaced by id, never duplicated). Without ``spool``, a temporary file.
    Raises :class:`IngestFailed` as :func:`run` does.
    """
    if spool is None:
        with tempfile.TemporaryDirectory(prefix="searchctl-load-") as tmp:
            return load(documents, collection, target, spool=Path(tmp) / "documents.jsonl", batch_size=batch_size,
                        total=total, progress=progress, api_key=api_key, skip_bad=skip_bad, cancel=cancel)
    spool.parent.mkdir(parents=True, exist_ok=True)
    written = spool.with_name(spool.name + ".writing")
    count = 0
    with written.open("w", encoding="utf-8") as fh:
        for document in documents:
            fh.write(json.dumps(document, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    os.replace(written, spool)  # the same documents give the same bytes: a checkpoint still fits them
    options = {"total": count if total is None else total, "progress": progress, "api_key": api_key, "skip_bad": skip_bad,
               "cancel": cancel}
    try:
        outcome = run(spool, collection, target, batch_size, **options)
    except CheckpointMismatch:
        outcome = run(spool, collection, target, batch_size, restart=True, **options)
    spool.unlink(missing_ok=True)
    return outcome
