"""The Ingest stream: batches in, acknowledgements out, and a clean end when it fails.

Each message is one batch. A reader takes the next batch only when fewer than ``window`` are
being written, so when the store is slow the stream is not read, gRPC's flow-control window
fills and the client's writes wait: memory stays bounded by the window. A batch is
acknowledged (its ``sequence`` echoed) once retrieval has written it, which is when it is
durable (in the write-ahead log). Acknowledgements come in completion order; a client
resuming from a checkpoint keeps the highest sequence below which every batch was
acknowledged.

When the stream fails (a batch refused, a write failed, the collection could not be made):

1. no batch is started after the failure; the batches being written finish and are
   acknowledged (or fail too), so what the client counts as acknowledged is exactly what is
   durable;
2. a last message carries the error (``IngestResponse.error``: status code, message, field,
   the batch's sequence), so the client knows to stop writing and to half-close;
3. the rest of the stream is read and dropped until the client half-closes (at most
   streams.DRAIN_SECONDS), and only then does the call end, with that status.

Ending the call while the client is still writing would race with its writes, and grpc.aio
clients report a write that fails that way as ``INTERNAL: Internal error from Core`` instead
of the server's status (grpc/grpc#36066): every refused large stream looked like a server bug.

Knows no gRPC: the transport (services/gateway/collections.py) supplies the two writes and
services/common/status.py maps the error to its status, as it does for every other call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from search.v1 import search_service_pb2 as pb
from services.common import streams, validation
from services.common.errors import InvalidArgument
from services.common.status import public_status

log = logging.getLogger(__name__)

_EOF = object()
_FAILED = object()


@dataclass
class Failure:
    error: BaseException
    sequence: int | None


class IngestStream:
    """One Ingest call: ``run(requests)`` yields the acknowledgements, then, on failure, the
    error message, and raises the error once the client has stopped writing."""

    def __init__(self, ensure_collection: Callable[[str], Awaitable[None]],
                 upsert: Callable[[str, list], Awaitable[int]], window: int, method: str = "Ingest",
                 drain_seconds: float = streams.DRAIN_SECONDS) -> None:
        self.ensure_collection = ensure_collection
        self.upsert = upsert
        self.window = max(1, window)
        self.method = method
        self.drain_seconds = drain_seconds
        self.collection = ""
        self.total = 0
        self.failure: Failure | None = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._writing: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(self.window)

    def _fail(self, error: BaseException, sequence: int | None) -> None:
        if self.failure is None:  # the first failure is the stream's; later ones follow from it
            self.failure = Failure(error, sequence)
            self._events.put_nowait(_FAILED)

    async def _write(self, sequence: int, documents: list) -> None:
        try:
            written = await self.upsert(self.collection, documents)
            self.total += written
            self._events.put_nowait(pb.IngestResponse(sequence=sequence, upserted=written, total_upserted=self.total))
        except Exception as exc:  # noqa: BLE001 - ends the stream with this error
            self._fail(exc, sequence)
        finally:
            self._slots.release()

    async def _read(self, requests: AsyncIterator[pb.IngestRequest]) -> None:
        """Start a write per valid batch; after a failure, drop what comes until the end."""
        try:
            async for message in requests:
                if self.failure is not None:
                    continue  # draining: the client has not seen the error yet
                await self._slots.acquire()  # flow control: no room, no read
                try:
                    await self._accept(message)
                except Exception as exc:  # noqa: BLE001 - ends the stream with this error
                    self._slots.release()
                    self._fail(exc, message.sequence)
                    continue
                if self.failure is not None:  # failed while this batch was being checked
                    self._slots.release()
                    continue
                task = asyncio.ensure_future(self._write(message.sequence, list(message.documents)))
                self._writing.add(task)
                task.add_done_callback(self._writing.discard)
        except Exception as exc:  # noqa: BLE001 - a malformed message, or the stream broke
            self._fail(exc, None)
        if self._writing:  # every batch started is acknowledged before the end
            await asyncio.gather(*self._writing, return_exceptions=True)
        self._events.put_nowait(_EOF)

    async def _accept(self, message: pb.IngestRequest) -> None:
        if not self.collection:
            collection = validation.collection_name(message.collection)
        elif message.collection and message.collection != self.collection:
            raise InvalidArgument("collection", f"this stream writes {self.collection!r}; one stream, one collection")
        validation.documents(message.documents)
        if not self.collection:
            await self.ensure_collection(collection)
            self.collection = collection

    async def run(self, requests: AsyncIterator[pb.IngestRequest]) -> AsyncIterator[pb.IngestResponse]:
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (item := await self._events.get()) is not _FAILED:
                if item is _EOF:
                    return
                yield item
            # Failed: the batches in flight end first (acknowledged or failed), then the error.
            await asyncio.gather(*list(self._writing), return_exceptions=True)
            while not self._events.empty():
                item = self._events.get_nowait()
                if isinstance(item, pb.IngestResponse):
                    yield item
            yield self._error_message()
            try:  # the call ends once the client has stopped writing
                await asyncio.wait_for(asyncio.shield(reader), self.drain_seconds)
            except TimeoutError:
                log.info("ingest client still writing after the stream failed; ending the call",
                         extra={"collection": self.collection, "drain_seconds": self.drain_seconds})
            raise self.failure.error
        finally:
            reader.cancel()
            for task in list(self._writing):
                task.cancel()

    def _error_message(self) -> pb.IngestResponse:
        code, message = public_status(self.failure.error, self.method)
        error = pb.IngestError(code=code.value[0], message=message,
                               field=getattr(self.failure.error, "field", "") or "")
        if self.failure.sequence is not None:
            error.sequence = self.failure.sequence
        return pb.IngestResponse(total_upserted=self.total, error=error)
