"""The Ingest stream's protocol (services/gateway/ingest.py) without gRPC: acknowledgements
once written, and a failed stream ending cleanly: the batches in flight acknowledged, then the
error in the stream, then (once the client stops writing) the error raised for the status."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb
from services.common.errors import InvalidArgument, Unavailable
from services.gateway.ingest import IngestStream


def batch(sequence: int, n: int = 2, collection: str = "c", bad: int | None = None) -> pb.IngestRequest:
    docs = [common_pb2.Document(id=f"{sequence}-{i}", text="" if i == bad else f"text {i}") for i in range(n)]
    return pb.IngestRequest(collection=collection, documents=docs, sequence=sequence)


class Client:
    """The client's side: its batches, and whether it went on writing after the error."""

    def __init__(self, messages: list[pb.IngestRequest], stop_on_error: bool = True) -> None:
        self.messages = messages
        self.sent: list[int] = []
        self.stop = asyncio.Event() if stop_on_error else None

    async def requests(self):
        for message in self.messages:
            await asyncio.sleep(0)
            if self.stop is not None and self.stop.is_set():
                return  # half-close
            self.sent.append(message.sequence)
            yield message


class Store:
    def __init__(self, fail_on: int | None = None, delay: float = 0.0) -> None:
        self.written: list[str] = []
        self.created: list[str] = []
        self.fail_on = fail_on
        self.delay = delay

    async def ensure(self, collection: str) -> None:
        self.created.append(collection)

    async def upsert(self, collection: str, documents: list) -> int:
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and documents[0].id.startswith(f"{self.fail_on}-"):
            raise Unavailable("retrieval service unavailable during Upsert: connection refused")
        self.written.extend(d.id for d in documents)
        return len(documents)


async def play(client: Client, store: Store, window: int = 2, drain_seconds: float = 5.0):
    """(replies, the error raised at the end or None)."""
    stream = IngestStream(store.ensure, store.upsert, window, drain_seconds=drain_seconds)
    replies = []
    try:
        async for reply in stream.run(client.requests()):
            replies.append(reply)
            if reply.HasField("error") and client.stop is not None:
                client.stop.set()
    except Exception as exc:  # noqa: BLE001 - what the transport maps to the status
        return replies, exc
    return replies, None


async def test_every_batch_is_acknowledged_once_written():
    store = Store()
    replies, error = await play(Client([batch(s) for s in range(5)]), store)
    assert error is None and store.created == ["c"]
    assert sorted(r.sequence for r in replies) == [0, 1, 2, 3, 4] and not any(r.HasField("error") for r in replies)
    assert max(r.total_upserted for r in replies) == 10 == len(store.written)


@pytest.mark.parametrize("bad_sequence", [0, 3])
async def test_a_refused_batch_ends_the_stream_after_the_batches_before_it(bad_sequence):
    store = Store(delay=0.01)
    messages = [batch(s, bad=1 if s == bad_sequence else None) for s in range(8)]
    client = Client(messages)
    replies, error = await play(client, store)
    acks, last = replies[:-1], replies[-1]
    assert sorted(r.sequence for r in acks) == list(range(bad_sequence))  # every batch before it, none after
    assert last.HasField("error") and last.upserted == 0 and last.total_upserted == 2 * bad_sequence
    assert last.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and last.error.sequence == bad_sequence
    assert last.error.field == "documents[1].text" and "neither text nor title" in last.error.message
    assert isinstance(error, InvalidArgument) and error.message == last.error.message
    assert len(store.written) == 2 * bad_sequence  # nothing after it was written, though it was read


async def test_a_failed_write_is_reported_with_its_batch_and_later_batches_are_not_started():
    store = Store(fail_on=2, delay=0.01)
    replies, error = await play(Client([batch(s) for s in range(10)]), store, window=1)
    assert [r.sequence for r in replies[:-1]] == [0, 1]
    assert replies[-1].error.sequence == 2 and replies[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert isinstance(error, Unavailable) and store.written == ["0-0", "0-1", "1-0", "1-1"]


async def test_the_error_comes_after_the_batches_in_flight_are_acknowledged():
    store = Store(fail_on=1, delay=0.05)
    replies, _ = await play(Client([batch(s) for s in range(4)]), store, window=2)
    # Batches 0 and 1 were written at once; 1 failed; 0 and anything else started finished first.
    assert replies[-1].HasField("error") and replies[-1].error.sequence == 1
    assert 0 in [r.sequence for r in replies[:-1]]


async def test_a_client_that_keeps_writing_is_read_until_it_half_closes():
    store = Store()
    client = Client([batch(0, bad=0)] + [batch(s) for s in range(1, 30)], stop_on_error=False)
    replies, error = await play(client, store)
    assert client.sent == list(range(30)) and store.written == []  # all read, none written
    assert [r.HasField("error") for r in replies] == [True] and isinstance(error, InvalidArgument)


async def test_a_client_that_never_stops_writing_is_ended_after_the_drain_bound():
    async def endless():
        yield batch(0, bad=0)
        while True:
            await asyncio.sleep(0.01)
            yield batch(1)

    stream = IngestStream(Store().ensure, Store().upsert, 2, drain_seconds=0.2)
    replies = []
    with pytest.raises(InvalidArgument):
        async for reply in stream.run(endless()):
            replies.append(reply)
    assert len(replies) == 1 and replies[0].error.sequence == 0


async def test_a_second_collection_on_one_stream_is_refused():
    replies, error = await play(Client([batch(0), batch(1, collection="other")]), Store())
    assert replies[-1].error.field == "collection" and replies[-1].error.sequence == 1
    assert [r.sequence for r in replies[:-1]] == [0] and isinstance(error, InvalidArgument)


async def test_an_unexpected_error_is_reported_as_internal_in_the_stream_too():
    async def broken(collection, documents):
        raise RuntimeError("a bug")

    stream = IngestStream(Store().ensure, broken, 2, method="/search.v1.SearchService/Ingest")
    replies = []
    with pytest.raises(RuntimeError):
        async for reply in stream.run(Client([batch(0)]).requests()):
            replies.append(reply)
    assert replies[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert replies[-1].error.message.startswith("internal error in /search.v1.SearchService/Ingest")


def test_a_refusal_of_a_slice_names_the_document_by_its_index_in_the_whole_batch():
    from services.gateway.collections import _shifted

    refused = InvalidArgument("documents[3].text", "document 'x' has neither text nor title; give it at least one")
    refused.downstream_code = grpc.StatusCode.INVALID_ARGUMENT
    shifted = _shifted(refused, 64)
    assert (shifted.field, shifted.description) == ("documents[67].text", refused.description)
    assert shifted.downstream_code == grpc.StatusCode.INVALID_ARGUMENT
    assert _shifted(refused, 0) is refused and _shifted(InvalidArgument("collection", "bad"), 64).field == "collection"
