"""Engine errors of the embedded store -> status (services/common/status.py, ``ENGINE_ERRORS``), one
test per row. Each condition is provoked for real on Qdrant Edge where a test can: a locked shard
(opened twice), a damaged one (a file of a copy overwritten), a shard being swapped (a closed
handle, as the one a swap retires). A full disk or memory cannot be had here (no small tmpfs), so
those rows are checked with the engine's own message text and errno (and a create's first write is
made to fail as a full disk fails it). Nothing an operator can fix answers INTERNAL."""

from __future__ import annotations

import errno
import shutil

import grpc
import pytest
from google.rpc import error_details_pb2

from services.common.errors import EngineError
from services.common.status import ENGINE_ERRORS, error_details, status_code, status_message
from services.retrieval.backends.base import CollectionSchema
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.edge_build import current_shard
from tests.store.edge_scenarios import DIM, points


@pytest.fixture
def store(tmp_path):
    backend = EdgeBackend(tmp_path / "q", search_threads=1)
    backend.create_collection(CollectionSchema("c", DIM, True))
    backend.upsert("c", points(0, 20))
    yield backend
    backend.close()


def shard_of(backend: EdgeBackend):
    return current_shard(backend.root / "collections" / "c")


def answer(exc: EngineError) -> tuple[grpc.StatusCode, str]:
    assert status_code(exc) != grpc.StatusCode.INTERNAL
    return status_code(exc), status_message(exc)


def test_every_row_is_tested_here():
    assert [c.name for c in ENGINE_ERRORS] == [
        "disk full", "out of memory", "shard locked", "shard being swapped", "shard damaged"]


def test_a_locked_shard_is_failed_precondition_naming_the_path(store):
    with pytest.raises(EngineError) as caught:
        EdgeBackend(store.root, search_threads=1)  # a second opener: the engine's WAL lock refuses it
    code, message = answer(caught.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message.startswith("shard locked") and str(shard_of(store)) in message and "QDRANT_PATH" in message
    assert store.count("c") == 20  # the first opener serves on


@pytest.mark.parametrize("victim", ["wal/", "version.info", "edge_config.json"])
def test_a_damaged_shard_is_failed_precondition_naming_the_path(store, tmp_path, victim):
    store.flush()
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    damaged = [p for p in (copy / "collections").rglob("*") if p.is_file() and victim in str(p)]
    assert damaged
    for path in damaged:
        path.write_bytes(b"\0garbage" * 8)
    with pytest.raises(EngineError) as caught:
        EdgeBackend(copy, search_threads=1)
    code, message = answer(caught.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert message.startswith("shard damaged") and str(copy / "collections" / "c") in message
    assert "snapshot" in message
    assert all(path.read_bytes() == b"\0garbage" * 8 for path in damaged)  # left alone


def test_a_shard_being_swapped_is_unavailable_with_retry_advice(store):
    collection = store._get("c")
    collection.shard.close()  # the state of the handle a swap retires
    try:
        with pytest.raises(EngineError) as caught:
            store.count("c")
    finally:
        collection.shard = None  # closed already: nothing to flush at close
    code, message = answer(caught.value)
    assert code == grpc.StatusCode.UNAVAILABLE and "retry" in message and "Shard is not initialized" in message
    [retry] = error_details(caught.value)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds == 1


@pytest.mark.parametrize("cause", [
    Exception("Service runtime error: IO Error: No space left on device (os error 28)"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_full_disk_is_resource_exhausted_with_the_free_space(store, cause):
    code, message = answer(EngineError(cause, "c", shard_of(store)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("disk full") and str(shard_of(store)) in message and "MB free" in message


def test_a_disk_full_while_creating_a_collection_is_resource_exhausted_and_leaves_nothing(store, monkeypatch):
    real_mkdir = type(store.root).mkdir

    def full(path, *args, **kwargs):  # the OS's answer on a full disk, to the first thing a create writes
        if path.name.startswith(".creating-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(type(store.root), "mkdir", full)
    with pytest.raises(EngineError) as caught:
        store.create_collection(CollectionSchema("d", DIM, True))
    code, message = answer(caught.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("disk full")
    monkeypatch.undo()
    assert store.list_collections() == ["c"] and sorted(p.name for p in (store.root / "collections").iterdir()) == ["c"]
    store.create_collection(CollectionSchema("d", DIM, True))  # with room again, the same create succeeds
    assert store.list_collections() == ["c", "d"]


@pytest.mark.parametrize("cause", [
    Exception("Service runtime error: IO Error: Cannot allocate memory (os error 12)"),
    MemoryError(),
])
def test_out_of_memory_is_resource_exhausted(store, cause):
    code, message = answer(EngineError(cause, "c", shard_of(store)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("out of memory")


def test_another_engine_failure_is_unavailable_while_serving_and_failed_precondition_while_opening(store):
    cause = Exception("Service runtime error: something new")
    assert answer(EngineError(cause, "c", shard_of(store)))[0] == grpc.StatusCode.UNAVAILABLE
    code, message = answer(EngineError(cause, "c", shard_of(store), opening=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and str(shard_of(store)) in message
