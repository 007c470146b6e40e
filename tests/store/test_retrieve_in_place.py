"""Searches of the embedded engine run on the caller's thread (the retrieval service's event
loop), because the engine holds the GIL through them anyway, but only when they would not wait:
CollectionOperations.retrieve hands a search to a worker thread when a collection's lock is
held or awaited by an owner, for a Qdrant server, and when query batching waits for others."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.operations import CollectionOperations
from tests.store.conftest import make_store
from tests.store.test_contract import DOCS, FIELDS


@pytest.fixture
def loaded(store):
    store.create_collection("docs", FIELDS)
    store.upsert("docs", DOCS)
    return store


def test_only_an_open_embedded_collection_with_a_free_lock_reads_in_place(loaded):
    backend = loaded.backend
    if backend.kind != "edge":
        assert not backend.reads_in_place("docs")  # a server's calls wait on the network
        return
    assert backend.reads_in_place("docs") and loaded.retrieves_in_place("docs")
    assert not backend.reads_in_place("nope")
    held, release = threading.Event(), threading.Event()

    def own():
        with backend._get("docs").lock.owned():  # what closing or swapping in an optimized copy does
            held.set()
            release.wait(10)

    thread = threading.Thread(target=own)
    thread.start()
    try:
        assert held.wait(10)
        assert not backend.reads_in_place("docs")
    finally:
        release.set()
        thread.join(10)
    assert backend.reads_in_place("docs")


def test_query_batching_never_reads_in_place(tmp_path, encoder):
    backend = EdgeBackend(tmp_path / "edge", search_threads=1, query_batching=True)
    try:
        store = make_store(backend, encoder)
        store.create_collection("docs", FIELDS)
        assert not backend.reads_in_place("docs")  # a batch's caller waits for the others
    finally:
        backend.close()


def test_a_search_runs_on_the_loop_unless_it_would_wait_and_then_the_loop_goes_on(loaded):
    executor = ThreadPoolExecutor(2, thread_name_prefix="retrieval")
    operations = CollectionOperations(loaded, executor)
    expected = [c.id for c in loaded.retrieve("docs", "sea level", 3, mode="sparse")[0]]
    threads = []
    real = loaded.retrieve

    def retrieve(*args, **kwargs):  # the real store call, noting which thread ran it
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    loaded.retrieve = retrieve

    async def scenario():
        loop_thread = threading.get_ident()
        collection, (candidates, _) = await operations.retrieve("docs", "sea level", 3, None, "sparse")
        assert collection == "docs" and [c.id for c in candidates] == expected
        in_place = threads.pop() == loop_thread
        if loaded.backend.kind != "edge":
            return in_place, None
        # An owner holds the collection's lock: the search goes to a worker and waits there,
        # while the loop keeps running (ticks) until the owner lets go.
        held, release = threading.Event(), threading.Event()

        def own():
            with loaded.backend._get("docs").lock.owned():
                held.set()
                release.wait(10)

        owner = threading.Thread(target=own)
        owner.start()
        await asyncio.get_running_loop().run_in_executor(None, held.wait, 10)
        ticks = 0
        search = asyncio.ensure_future(operations.retrieve("docs", "sea level", 3, None, "sparse"))
        while ticks < 20:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not search.done()  # still waiting for the owner, on its worker thread
        release.set()
        collection, (candidates, _) = await asyncio.wait_for(search, 10)
        owner.join(10)
        assert [c.id for c in candidates] == expected and threads.pop() != loop_thread
        return in_place, ticks

    try:
        in_place, ticks = asyncio.run(scenario())
    finally:
        executor.shutdown()
    assert in_place == (loaded.backend.kind == "edge")
    assert ticks in (None, 20)
