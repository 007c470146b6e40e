"""RetrievalService's operations on collections: list, documents by id, aliases, reindex,
snapshots; and the name resolution and write gate every request goes through.

Messages in, messages out: the work is in aliases.py, reindex.py, snapshots.py and the store.
:class:`CollectionOperations` is built once the store is loaded, with what it needs passed in;
the servicer (server.py) hands these RPCs to it and resolves and writes through it. Streamed
replies (reindex progress, snapshot points) are produced by a worker thread and handed to the
event loop through a small window: a slow reader slows the thread (the snapshot is read no
faster than the caller takes it).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any

from google.protobuf import json_format

from search.v1 import common_pb2, retrieval_service_pb2 as pb
from services.common import streams, validation
from services.common.errors import InvalidArgument, NotFound
from services.retrieval import reindex as reindexing, snapshots
from services.retrieval.aliases import Aliases, WriteGate
from services.retrieval.calibration import FusionCalibrator
from services.retrieval.messages import collection_info, filter_fields
from services.retrieval.store import DocumentStore

PHASES = {reindexing.COPYING: common_pb2.REINDEX_PHASE_COPYING, reindexing.CATCHING_UP: common_pb2.REINDEX_PHASE_CATCHING_UP,
          reindexing.DONE: common_pb2.REINDEX_PHASE_DONE}
_END = object()
#: How long a list of aliases read from an engine other processes share is trusted.
SHARED_ALIASES_CACHE_S = 1.0


async def run_in(executor: Executor, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on ``executor``, in this request's context: run_in_executor does not
    carry contextvars, so the store's spans and log lines would leave the request's trace."""
    call = partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


async def stream_from_thread(executor, produce: Callable[[Callable[[Any], None], threading.Event], None],
                             window: int = 4) -> AsyncIterator[Any]:
    """Items ``produce(emit, cancelled)`` emits from a worker thread, at most ``window`` ahead of
    the reader; when the reader stops (cancelled call), ``cancelled`` is set and ``emit`` raises."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    slots = threading.Semaphore(window)
    cancelled = threading.Event()

    def emit(item: Any) -> None:
        while not slots.acquire(timeout=0.5):
            if cancelled.is_set():
                raise reindexing.Cancelled("the caller went away")
        if cancelled.is_set():
            raise reindexing.Cancelled("the caller went away")
        loop.call_soon_threadsafe(queue.put_nowait, item)

    future = loop.run_in_executor(executor, partial(contextvars.copy_context().run, produce, emit, cancelled))
    future.add_done_callback(lambda _f: queue.put_nowait(_END))
    try:
        while True:
            item = await queue.get()
            if item is _END:
                future.result()
                return
            slots.release()
            yield item
    finally:
        cancelled.set()


class CollectionOperations:
    """The collection RPCs, and the name resolution and write gate of every request."""

    def __init__(self, store: DocumentStore, executor: Executor, calibrator: FusionCalibrator | None = None) -> None:
        self.store = store
        self.executor = executor
        #: Measures collections' fusion weight after writes (None: RETRIEVAL_FUSION_CALIBRATION off).
        self.calibrator = calibrator
        self.aliases = Aliases(store.backend, cache_s=SHARED_ALIASES_CACHE_S if store.backend.shared else 0.0)
        self.gate = WriteGate()

    async def _run(self, fn: Callable, *args: Any) -> Any:
        return await run_in(self.executor, fn, *args)

    # -- names and writes ----------------------------------------------------------------

    def resolve(self, name: str) -> str:
        return self.aliases.resolve(name)

    def read(self, name: str, fn: Callable, *args: Any) -> tuple[str, Any]:
        """``fn(collection, *args)`` on what ``name`` designates; once more if the alias switched
        meanwhile and the collection read was just deleted (a reindex replacing a collection)."""
        collection = self.resolve(name)
        try:
            return collection, fn(collection, *args)
        except NotFound:
            self.aliases.settled()
            again = self.resolve(name)
            if again == collection:
                raise
            return again, fn(again, *args)

    async def retrieve(self, name: str, *args: Any) -> tuple[str, Any]:
        """``store.retrieve(collection, *args)`` on what ``name`` designates, on this (the event
        loop's) thread when the store can run it here without waiting (the embedded engine holds
        the GIL through a search anyway: a worker thread only added two hand-offs, 5-9% of a
        Search's CPU in the A/Bs, docs/BENCHMARKS.md), else on a worker thread as :meth:`read`. The query's
        dense vector must be prefetched: embedding from the loop's own thread would deadlock."""
        if not self.store.backend.shared:  # resolving a shared engine's aliases may wait on the network
            collection = self.resolve(name)
            try:
                if self.store.retrieves_in_place(collection):
                    return collection, self.store.retrieve(collection, *args)
            except NotFound:
                pass  # deleted meanwhile (a reindex replacing it): the worker's path waits for the alias to settle
        return await self._run(self.read, name, self.store.retrieve, *args)

    def write(self, name: str, doc_ids: Sequence[str], fn: Callable, *args: Any) -> Any:
        """``fn(collection, *args)`` under the write gate, the documents recorded for a reindex."""
        with self.gate.writing():
            collection = self.resolve(name)
            self.gate.note(collection, doc_ids)
            return fn(collection, *args)

    # -- RPCs ----------------------------------------------------------------------------

    async def list_collections(self, request: pb.RetrievalServiceListCollectionsRequest):
        def listing():
            infos = []
            for name in self.store.list_collections():
                try:
                    infos.append(self.store.describe(name))
                except NotFound:  # deleted meanwhile
                    continue
            return infos, self.aliases.all()

        infos, aliases = await self._run(listing)
        return pb.RetrievalServiceListCollectionsResponse(
            collections=[collection_info(d) for d in infos],
            aliases=[common_pb2.Alias(alias=a, collection=c) for a, c in sorted(aliases.items())],
        )

    async def get_documents(self, request: pb.RetrievalServiceGetDocumentsRequest):
        name = validation.collection_name(request.collection)
        ids = validation.ids(request.ids)
        collection, docs = await self._run(self.read, name, self.store.get_documents, ids)
        found = {d.id for d in docs}
        reply = pb.RetrievalServiceGetDocumentsResponse(collection=collection, missing_ids=[i for i in ids if i not in found])
        for d in docs:
            message = reply.documents.add(id=d.id, title=d.title, text=d.text)
            json_format.ParseDict(d.payload, message.payload)
        return reply

    async def create_alias(self, request: pb.RetrievalServiceCreateAliasRequest):
        alias = validation.collection_name(request.alias, "alias")
        await self._run(self.aliases.create, alias, request.collection)
        return pb.RetrievalServiceCreateAliasResponse(alias=common_pb2.Alias(alias=alias, collection=request.collection))

    async def switch_alias(self, request: pb.RetrievalServiceSwitchAliasRequest):
        alias = validation.collection_name(request.alias, "alias")
        if request.expected_collection:
            validation.collection_name(request.expected_collection, "expected_collection")
        previous = await self._run(self.aliases.switch, alias, request.collection, request.expected_collection)
        return pb.RetrievalServiceSwitchAliasResponse(alias=common_pb2.Alias(alias=alias, collection=request.collection),
                                                      previous_collection=previous)

    async def delete_alias(self, request: pb.RetrievalServiceDeleteAliasRequest):
        await self._run(self.aliases.delete, validation.collection_name(request.alias, "alias"))
        return pb.RetrievalServiceDeleteAliasResponse()

    async def list_aliases(self, request: pb.RetrievalServiceListAliasesRequest):
        aliases = await self._run(self.aliases.all)
        return pb.RetrievalServiceListAliasesResponse(
            aliases=[common_pb2.Alias(alias=a, collection=c) for a, c in sorted(aliases.items())])

    async def reindex(self, request: pb.RetrievalServiceReindexRequest):
        source = validation.collection_name(request.source, "source")
        if request.target:
            validation.collection_name(request.target, "target")
        added = filter_fields(request.add_filter_fields, "add_filter_fields")
        store, aliases, gate, calibrator = self.store, self.aliases, self.gate, self.calibrator

        def produce(emit, cancelled):
            reindexing.reindex(store, aliases, gate, source, request.target, request.reembed,
                               progress=emit, cancelled=cancelled,
                               calibrate=partial(calibrator.calibrate_if_due, force=True) if calibrator else None,
                               add_filter_fields=added)

        async for p in stream_from_thread(self.executor, produce):
            yield pb.RetrievalServiceReindexResponse(
                phase=PHASES[p.phase], copied=p.copied, total=p.total, source_collection=p.source,
                target_collection=p.target, alias=p.alias, reembedded=p.reembedded)

    async def export_snapshot(self, request: pb.RetrievalServiceExportSnapshotRequest):
        name = validation.collection_name(request.collection)
        backend = self.store.backend

        def produce(emit, cancelled):
            for head, points in snapshots.export_parts(backend, self.resolve(name)):
                emit((head, points))

        async for head, points in stream_from_thread(self.executor, produce):
            if head is not None:
                yield pb.RetrievalServiceExportSnapshotResponse(header=head)
            else:
                yield pb.RetrievalServiceExportSnapshotResponse(points=points)

    async def restore_snapshot(self, request_iterator: AsyncIterator[pb.RetrievalServiceRestoreSnapshotRequest]):
        """Write a snapshot streamed as a header then batches of points into a new collection.

        A refusal (a bad header, a name taken, a bad message, a failed write) is answered only
        once the caller has finished writing: the rest of the stream is read and dropped first
        (services/common/streams.py; the gateway, an asyncio caller, would otherwise see INTERNAL
        instead of e.g. ALREADY_EXISTS and pass it on as UNAVAILABLE).
        """
        first = await anext(aiter(request_iterator), None)
        try:
            if first is None or not first.HasField("header"):
                raise InvalidArgument("header", "the first message carries the target collection and the snapshot's header")
            name = validation.collection_name(first.collection)
            await self._run(self.aliases.check_collection_name_free, name)
        except Exception:
            await streams.drain(request_iterator)
            raise
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue = asyncio.Queue(maxsize=2)  # flow control: the stream is read as fast as it is written
        stop = threading.Event()

        async def feed() -> None:
            try:
                await batches.put(list(first.points))
                async for message in request_iterator:
                    if stop.is_set():  # the restore has ended: drop the rest (see the docstring)
                        continue
                    if message.HasField("header") or (message.collection and message.collection != name):
                        raise InvalidArgument("header", "only the first message carries the header and the collection")
                    await batches.put(list(message.points))
                await batches.put(_END)
            except Exception as exc:  # noqa: BLE001 - handed to the writing thread, which fails with it
                await batches.put(exc)
                await streams.drain(request_iterator)

        def points():
            while True:
                pending = asyncio.run_coroutine_threadsafe(batches.get(), loop)
                while True:
                    try:
                        item = pending.result(timeout=0.5)
                        break
                    except TimeoutError:
                        if stop.is_set():
                            pending.cancel()
                            raise reindexing.Cancelled("the caller went away; nothing was restored") from None
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item

        feeder = asyncio.ensure_future(feed())
        try:
            written = await self._run(snapshots.restore, self.store.backend, name, first.header, points())
        except Exception:
            stop.set()
            while not batches.empty():  # unblock a put waiting on the queue nobody reads any more
                batches.get_nowait()
            await feeder  # reads the caller's stream to its end
            raise
        finally:
            stop.set()
            feeder.cancel()
        desc = await self._run(self.store.describe, name)
        return pb.RetrievalServiceRestoreSnapshotResponse(collection=collection_info(desc), points=written)

