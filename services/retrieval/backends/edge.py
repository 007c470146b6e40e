"""Qdrant Edge: Qdrant's engine in-process, one shard per collection (the embedded default).

Layout under the data directory::

    <path>/collections/<name>/collection.json   the schema (vectors, filter fields, metadata)
    <path>/collections/<name>/shard/            the Edge shard: segments + write-ahead log

Writes go through the shard's write-ahead log before ``update`` returns, so an
acknowledged upsert survives the process being killed; ``flush`` (on close) persists the
segments. A shard that cannot be opened (corrupt, another process holds its WAL, an
incompatible version) stops the service at start with the path named; nothing is ever
re-created over existing files. Shard configs, queries and filters are translated in
edge_shard.py (one conversion each, shared with the optimizer's child process).

Three facts of qdrant-edge-py 0.9.0 shape this module (measured, docs/BENCHMARKS.md):

* Its calls hold Python's GIL while they run. Queries take about a millisecond, so that is
  cheap; but ``optimize()`` (merging segments and building the HNSW graph) holds it for
  its whole run, minutes per 100k 384-d points on 2 cores, which would freeze every other
  thread of the service (gRPC, health checks, embedding). So the serving process never
  calls it: once a collection has taken ``optimize_after_points`` writes
  (``EDGE_OPTIMIZE_AFTER_POINTS``), :meth:`EdgeBackend.optimize_in_background` copies the
  shard, optimizes the copy in a child process (``edge_optimizer.py``), replays the writes
  made meanwhile and swaps the copy in (files and child: ``edge_build.py``). Until then
  searches are exact over plain segments.
* It writes through memory maps: on a full disk the kernel kills the process (SIGBUS)
  instead of returning an error. So writes are refused with RESOURCE_EXHAUSTED while less
  than ``min_free_disk_mb`` (``EDGE_MIN_FREE_DISK_MB``) is free, naming the path and the
  free space, and a build starts only when its copy leaves that much free.
* ``EdgeShard.load`` takes the shard's WAL lock: a second process opening the same data
  directory fails, which is what we want.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from services.common import metrics
from services.common.config import ConfigError
from services.common.errors import (
    EngineError, FailedPrecondition, NotFound, ResourceExhausted, ServiceError, Unavailable,
)
from services.retrieval.backends.base import (
    CollectionSchema, CollectionStats, Filter, Fused, Hit, Nearest, PointIn, PointSnapshot, Rescore, missing_alias,
    missing_collection, taken_collection,
)
from services.retrieval.backends.edge_collection import THREAD_BUDGET_PER_CPU, LocalVersions, OpenCollection, cpus
from services.retrieval.backends.edge_query_batching import QueryCombiner
from services.retrieval.backends.edge_build import (
    SHARD_DIR, OptimizerChild, allocated_bytes, check_room_for_build, copy_shard, current_shard, free_bytes, mb,
    next_shard, read_optimized_points, set_current, settle, warm, write_optimized_points,
)
from services.retrieval.backends.edge_shard import (
    INDEX_TYPES, SCHEMA_FILE, edge_filter, edge_point, hnsw_ef_for, query_request, read_schema, schema_record,
    scroll, search_params, shard_config,
)
from services.retrieval.backends.edge_tuning import ShardTuning
from services.retrieval.backends.translation import payload_indexes, point_in

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


class EdgeBackend:
    """Collections as Qdrant Edge shards under ``path``."""

    kind = "edge"
    #: One process owns the data directory (the shards' WAL locks refuse a second).
    shared = False

    def __init__(self, path: str | os.PathLike, search_threads: int = 0, hnsw_ef: int | None = None, hnsw_ef_points: int = 0,
                 optimize_on_start: bool = False, optimize_after_points: int = 0, optimize_quiet_s: float = 30.0,
                 max_journal_points: int = 500_000, tuning: ShardTuning | None = None,
                 min_free_disk_mb: int = 0, query_batching: bool = False) -> None:
        self.root = Path(path)
        self.collections_dir = self.root / "collections"
        self.search_threads = search_threads
        self.hnsw_ef = hnsw_ef
        #: Collections larger than this search proportionally wider than hnsw_ef (0: never).
        self.hnsw_ef_points = hnsw_ef_points
        #: Search exactly, HNSW graphs ignored (what the benchmarks measure recall against).
        self.exact = False
        #: Figures of the background optimizations finished so far (the last 20).
        self.builds: list[dict[str, Any]] = []
        self.tuning = tuning or ShardTuning()
        #: Concurrent queries of a collection run as one engine call (edge_query_batching.py).
        self.query_batching = query_batching
        self.min_free = min_free_disk_mb * 1_000_000
        self.optimize_after_points = optimize_after_points
        #: Writes must have paused this long before an optimization starts (see :meth:`_due`).
        self.optimize_quiet_s = optimize_quiet_s
        self.max_journal_points = max_journal_points
        self._collections: dict[str, OpenCollection] = {}
        self._registry = threading.Lock()  # guards the dict, not the shards
        self._closing = threading.Event()
        self._building = threading.Lock()  # one background build at a time
        self._child: OptimizerChild | None = None
        try:
            self.collections_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the operator's folder: name the setting, no traceback
            raise ConfigError(f"QDRANT_PATH {self.root}: cannot create {self.collections_dir} "
                              f"({exc.strerror or exc}): name a folder this service may write") from exc
        shutil.rmtree(self.root / ".snapshots", ignore_errors=True)  # copies a crash left behind
        self._aliases_lock = threading.Lock()
        self._aliases = self._load_aliases()
        self._versions = LocalVersions()
        for entry in sorted(self.collections_dir.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                self._open(entry.name)
        if optimize_on_start:  # before the service reports SERVING; still in a child process
            for name in self.list_collections():
                self.optimize_in_background(name)
        self._optimizer: threading.Thread | None = None
        if optimize_after_points > 0:
            check_s = min(10.0, max(0.1, optimize_quiet_s / 3))
            self._optimizer = threading.Thread(target=self._optimize_when_due, args=(check_s,),
                                               name="edge-optimizer", daemon=True)
            self._optimizer.start()

    # -- shards ------------------------------------------------------------------------

    def _threads(self, shards: int, optimized: bool = True) -> int:
        """Search threads for one more shard when ``shards`` are open already.

        Unless ``search_threads`` says otherwise, a shard not optimized yet (plain segments: a
        collection below ``optimize_after_points``) searches in the calling thread: its searches
        are short, and handing each to a pool thread cost more than it gave (docs/BENCHMARKS.md,
        issue 22: 8% more Searches per second at 3,600 points). An optimized shard's HNSW
        segments are searched in parallel by a pool (at 100k points one thread was 13% slower).
        """
        if self.search_threads > 0:
            return self.search_threads
        if not optimized:
            return 1
        available = cpus()
        return max(1, min(available, THREAD_BUDGET_PER_CPU * available // (shards + 1)))

    def _config(self, schema: CollectionSchema, optimized: bool = True) -> qe.EdgeConfig:
        return shard_config(schema, self.tuning, self._threads(len(self._collections), optimized))

    def _open(self, name: str) -> None:
        directory = self.collections_dir / name
        schema_path = directory / SCHEMA_FILE
        try:
            settle(directory)
            shard_path = current_shard(directory)
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot tell which shard of {directory} to serve: {exc}; nothing was changed") from exc
        if not schema_path.exists() or not shard_path.exists():
            raise FailedPrecondition(
                f"{directory} is not a complete collection (expected {SCHEMA_FILE} and {shard_path.name}/); "
                "move it out of the data directory or restore it from a snapshot"
            )
        schema = read_schema(schema_path)
        optimized_points = read_optimized_points(directory)
        try:
            warm(shard_path)
            shard = qe.EdgeShard.load(str(shard_path), self._config(schema, optimized=optimized_points > 0))
        except Exception as exc:  # the binding raises plain Exception: locked, damaged... (status.py ENGINE_ERRORS)
            raise EngineError(exc, name, shard_path, opening=True) from exc
        collection = OpenCollection(schema, shard, directory)
        collection.combiner = QueryCombiner(partial(self._query_now, name))
        collection.points = shard.info().points_count
        collection.written_since_optimize = max(0, collection.points - optimized_points)
        self._collections[name] = collection

    def _get(self, name: str) -> OpenCollection:
        # A read of the registry takes no lock (one dict lookup is atomic under the GIL):
        # `_registry` serialises changes, and creating a collection holds it for the
        # engine's whole create (hundreds of ms), which no search of another collection waits for.
        collection = self._collections.get(name)
        if collection is None:
            raise missing_collection(name)
        return collection

    def reads_in_place(self, name: str) -> bool:
        """Whether a read of ``name`` may run on the calling thread now, the event loop's
        included: the engine holds the GIL through its calls, so a worker thread would add two
        hand-offs and no parallelism; no query batching waits there for other callers; and the
        collection is open with no owner holding or awaiting its lock (closing, swapping in
        its optimized copy), so the read does not wait."""
        collection = self._collections.get(name)
        return (not self.query_batching and collection is not None and collection.shard is not None
                and collection.lock.free())

    def _read(self, name: str, fn, engine_call: bool = True):
        """``fn(shard)`` while the shard is held open; ``engine_call``: ``fn`` is one engine
        call, whose time is counted as time the engine held the process."""
        collection = self._get(name)
        with collection.lock.shared():
            if collection.shard is None:  # deleted while we waited
                raise missing_collection(name)
            started = time.perf_counter()
            try:
                return fn(collection.shard)
            except ServiceError:
                raise
            except Exception as exc:
                raise EngineError(exc, name, collection.path) from exc  # status: status.py ENGINE_ERRORS
            finally:
                if engine_call:
                    metrics.RETRIEVAL_ENGINE_HELD_SECONDS.inc(time.perf_counter() - started)

    def _check_disk(self, path: Path) -> None:
        """Refuse a write while less than ``min_free`` is free (the engine would die of SIGBUS)."""
        if not self.min_free:
            return
        free = free_bytes(path)
        if free < self.min_free:
            raise ResourceExhausted(
                f"disk nearly full under {path}: {mb(free)} free, writes stop below {mb(self.min_free)} "
                "(EDGE_MIN_FREE_DISK_MB); free space (or move large collections to a Qdrant cluster with "
                "searchctl migrate) and retry; everything acknowledged is stored and searchable")

    # -- collections -------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        with self._registry:
            return sorted(self._collections)

    def create_collection(self, schema: CollectionSchema) -> None:
        if not _NAME.match(schema.name):
            raise ValueError(f"unsafe collection name {schema.name!r}")
        with self._registry:
            directory = self.collections_dir / schema.name
            if schema.name in self._collections or directory.exists():
                raise taken_collection(schema.name)
            self._check_disk(self.collections_dir)
            # Build it beside the others under a temporary name, then rename: a crash
            # half-way leaves no half-made collection that would stop the next start.
            staging = self.collections_dir / f".creating-{schema.name}-{uuid.uuid4().hex[:8]}"
            try:
                staging.mkdir(parents=True)
                shard = qe.EdgeShard.create(str(staging / SHARD_DIR), self._config(schema))
                for key, kind in payload_indexes(schema).items():
                    shard.update(qe.UpdateOperation.create_field_index(key, INDEX_TYPES[kind]()))
                shard.flush()
                shard.close()
                (staging / SCHEMA_FILE).write_text(schema_record(schema))
                os.replace(staging, directory)
            except Exception as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise EngineError(exc, schema.name, staging) from exc  # e.g. the disk filled up
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._open(schema.name)

    def schema(self, name: str) -> CollectionSchema:
        return self._get(name).schema

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        collection = self._get(name)
        with collection.writes:
            schema = dataclasses.replace(collection.schema, metadata={**collection.schema.metadata, **updates})
            staging = collection.path / f".{SCHEMA_FILE}.{uuid.uuid4().hex[:8]}"
            try:
                with open(staging, "w") as fh:
                    fh.write(schema_record(schema))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(staging, collection.path / SCHEMA_FILE)  # atomic: the old schema or the new one
            finally:
                staging.unlink(missing_ok=True)
            collection.schema = schema

    def delete_collection(self, name: str) -> None:
        collection = self._get(name)
        with collection.lock.owned():
            if collection.shard is None:
                raise missing_collection(name)
            collection.shard.close()
            collection.shard = None
            with self._registry:
                self._collections.pop(name, None)
            # Rename first (atomic), then remove: a crash never leaves a half-deleted shard
            # under the collection's name.
            trash = self.collections_dir / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(collection.path, trash)
        shutil.rmtree(trash, ignore_errors=True)  # outside the lock: nobody reads the trash

    # -- points ------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointIn]) -> None:
        edge_points = [edge_point(p) for p in points]
        self._write(name, qe.UpdateOperation.upsert_points(edge_points), len(edge_points), len(edge_points))

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        self._write(name, qe.UpdateOperation.delete_points(list(ids)), len(ids), -len(ids))

    def delete_where(self, name: str, where: Filter) -> None:
        self._write(name, qe.UpdateOperation.delete_points_by_filter(edge_filter(where)), 1, 0)

    def _write(self, name: str, operation: qe.UpdateOperation, points: int, growth: int) -> None:
        collection = self._get(name)

        def apply(shard: qe.EdgeShard) -> None:
            with collection.writes:
                self._check_disk(collection.path)
                started = time.perf_counter()
                shard.update(operation)  # in the WAL when it returns
                metrics.RETRIEVAL_ENGINE_HELD_SECONDS.inc(time.perf_counter() - started)
                collection.written_since_optimize += points
                collection.written_since_open += points
                collection.points = max(0, collection.points + growth)
                collection.last_write = time.monotonic()
                if collection.journal is not None:
                    collection.journal.append(operation)
                    collection.journal_points += points

        self._read(name, apply, engine_call=False)

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        records = self._read(name, lambda shard: shard.retrieve(list(ids), with_payload=False, with_vector=False))
        return [str(r.id) for r in records]

    def count(self, name: str, where: Filter | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=edge_filter(where) if where else None)
        return self._read(name, lambda shard: shard.count(request))

    def search_breadth(self, name: str) -> int | None:
        """The hnsw_ef queries of collection ``name`` use: wider as it grows past hnsw_ef_points."""
        return hnsw_ef_for(self.hnsw_ef, self._get(name).points, self.hnsw_ef_points)

    def query(self, name: str, queries: Sequence[Nearest | Fused | Rescore]) -> list[list[Hit]]:
        params = search_params(self.search_breadth(name), self.tuning, self.exact)
        requests = [query_request(q, params) for q in queries]
        if self.query_batching:
            results = self._get(name).combiner.submit(requests)
        else:
            results = self._query_now(name, requests)
        return [[Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in points] for points in results]

    def _query_now(self, name: str, requests: list[qe.QueryRequest]) -> list[list[qe.ScoredPoint]]:
        if len(requests) == 1:
            return [self._read(name, lambda shard: shard.query(requests[0]))]
        return self._read(name, lambda shard: shard.query_batch(qe.QueryBatchRequest(requests)))

    def scroll(self, name: str, offset: str | None, limit: int, with_vectors: bool, where: Filter | None = None):
        return self._read(name, lambda shard: scroll(shard, offset, limit, with_vectors, where))

    def retrieve(self, name: str, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        records = self._read(name, lambda shard: shard.retrieve(list(ids), with_payload=True, with_vector=False))
        return [(str(r.id), r.payload or {}) for r in records]

    @contextmanager
    def snapshot_points(self, name: str) -> Iterator[PointSnapshot]:
        """Qdrant Edge 0.9 reads shard snapshots but has no call that writes one, so: a write
        barrier (writes wait, searches go on), a flush and a copy of the shard's files, then
        the copy is opened on its own and read in pages while the collection serves on."""
        collection = self._get(name)
        copy_dir = self.root / ".snapshots" / f"{name}-{uuid.uuid4().hex[:8]}"

        def copy(shard: qe.EdgeShard) -> None:
            with collection.writes:
                needed, free = allocated_bytes(current_shard(collection.path)), free_bytes(collection.path)
                if free - needed < self.min_free:
                    raise ResourceExhausted(
                        f"not enough disk to snapshot {collection.path}: {mb(free)} free, the copy needs about "
                        f"{mb(needed)} and {mb(self.min_free)} stay reserved for writes (EDGE_MIN_FREE_DISK_MB)")
                shard.flush()
                metrics.RETRIEVAL_STORE_FLUSHES.inc()
                copy_shard(current_shard(collection.path), copy_dir / SHARD_DIR)

        try:
            self._read(name, copy, engine_call=False)
            snapshot = qe.EdgeShard.load(str(copy_dir / SHARD_DIR), self._config(collection.schema, optimized=False))
        except BaseException:
            shutil.rmtree(copy_dir, ignore_errors=True)
            raise
        try:
            count = snapshot.count(qe.CountRequest(exact=True))

            def points() -> Iterator[PointIn]:
                offset = None
                while True:
                    page, offset = scroll(snapshot, offset, 256, True, None)
                    for pid, payload, vectors in page:
                        yield point_in(pid, payload, vectors)
                    if offset is None:
                        return

            yield PointSnapshot(method="copy", count=count, points=points())
        finally:
            snapshot.close()
            shutil.rmtree(copy_dir, ignore_errors=True)

    # -- aliases -----------------------------------------------------------------------
    # One JSON file beside the collections, replaced atomically (write, fsync, rename):
    # switching an alias is one rename, and a crash leaves the old file or the new one.

    def list_aliases(self) -> dict[str, str]:
        # No lock: _save_aliases replaces the dict whole after its file is in place (never
        # changes it), and a search resolving a name must not wait for that file's fsync.
        return dict(self._aliases)

    def set_alias(self, alias: str, collection: str) -> None:
        with self._aliases_lock:
            self._get(collection)
            self._save_aliases({**self._aliases, alias: collection})

    def delete_alias(self, alias: str) -> None:
        with self._aliases_lock:
            if alias not in self._aliases:
                raise missing_alias(alias)
            self._save_aliases({k: v for k, v in self._aliases.items() if k != alias})

    def _load_aliases(self) -> dict[str, str]:
        path = self.root / ALIASES_FILE
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {str(k): str(v) for k, v in raw["aliases"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FailedPrecondition(f"cannot read the aliases file {path}: {exc}; fix or remove it") from exc

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        path = self.root / ALIASES_FILE
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w") as out:
            json.dump({"aliases": aliases}, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._aliases = aliases

    def write_version(self, name: str) -> str:
        return self._versions.current(name)

    def new_write_version(self, name: str) -> None:
        self._versions.bump(name)

    def stats(self, name: str) -> CollectionStats:
        info = self._read(name, lambda shard: shard.info())
        return CollectionStats(points=info.points_count, segments=info.segments_count,
                               indexed_vectors=info.indexed_vectors_count)

    def optimize(self, name: str) -> bool:
        """Merge segments and build the HNSW graph in this process (holds the GIL for the whole
        run: ``searchctl store optimize``, offline; a serving process uses :meth:`optimize_in_background`)."""
        done = self._read(name, lambda shard: shard.optimize())
        collection = self._get(name)
        collection.written_since_optimize = 0
        write_optimized_points(collection.path, self.stats(name).points)
        return done

    # -- optimizing while serving ------------------------------------------------------

    def _optimize_when_due(self, check_s: float) -> None:
        while not self._closing.wait(check_s):
            for name in self.list_collections():
                try:
                    collection = self._get(name)
                except NotFound:
                    continue
                if self._due(collection):
                    try:
                        self.optimize_in_background(name)
                    except Exception as exc:
                        if self._closing.is_set():
                            return
                        if isinstance(exc, ResourceExhausted):
                            log.warning("background optimization not done: %s", exc.message, extra={"collection": name})
                        else:
                            log.exception("background optimization failed; the collection keeps serving as it was",
                                          extra={"collection": name})
                        collection.written_since_optimize = 0  # retry after as many writes again

    def _due(self, collection: OpenCollection) -> bool:
        """Enough writes since the last optimization, and either a pause in the writes or,
        during a long ingest, as many new points as the collection had (so a growing
        collection is optimized a logarithmic number of times, not once per threshold)."""
        written = collection.written_since_optimize
        if written < self.optimize_after_points:
            return False
        if time.monotonic() - collection.last_write >= self.optimize_quiet_s:
            return True
        if not collection.written_since_open:
            return False
        try:
            total = self._read(collection.schema.name, lambda shard: shard.info().points_count)
        except (NotFound, EngineError):
            return False
        return written >= total - written

    @property
    def optimizer_pid(self) -> int | None:
        """The process id of the running optimizer child (None while no build runs)."""
        child = self._child
        return child.pid if child is not None else None

    def optimize_in_background(self, name: str) -> dict[str, Any]:
        """Optimize collection ``name`` without holding this process: copy its shard, optimize
        the copy in a child process, open it here and replay the writes made meanwhile, then
        serve it (files: edge_build.py).

        Searches go on throughout; the process stalls once, while it opens the optimized
        shard (the engine holds the GIL for that), and searches wait only for the handles to
        be exchanged. Writes wait while the shard is copied and while the last few writes are
        replayed. A crash at any step leaves the old shard served or the complete new one
        (``settle`` at the next start). ResourceExhausted when the disk has no room for the
        copy or ran short during the build (the copy is then removed).
        """
        with self._building:
            return self._optimize_in_background(name)

    def _optimize_in_background(self, name: str) -> dict[str, Any]:
        collection = self._get(name)
        staging = next_shard(collection.path)
        shutil.rmtree(staging, ignore_errors=True)
        started = time.perf_counter()
        metrics.RETRIEVAL_STORE_OPTIMIZING.set(1)
        new: qe.EdgeShard | None = None
        try:
            # 1. A consistent copy: writes wait, searches go on.
            def copy(shard: qe.EdgeShard) -> int:
                with collection.writes:
                    check_room_for_build(collection.path, self.min_free)
                    shard.flush()
                    metrics.RETRIEVAL_STORE_FLUSHES.inc()
                    copy_shard(current_shard(collection.path), staging)
                    collection.journal, collection.journal_points = [], 0
                    return collection.written_since_optimize

            written = self._read(name, copy, engine_call=False)
            copied_s = time.perf_counter() - started
            # 2. The child optimizes the copy; this process keeps serving.
            self._child = OptimizerChild(staging, collection.path, self.tuning, self.min_free)
            try:
                built = self._child.wait()
            finally:
                self._child = None
            if self._closing.is_set():
                raise Unavailable("the service is closing; the optimization was abandoned")
            # 3. Open the optimized shard here (the one stall) and replay the writes made
            #    meanwhile, most of them while writes still flow.
            warm_s = warm(staging)  # the files in the page cache first: the opening below stalls the process
            opening = time.perf_counter()
            new = qe.EdgeShard.load(str(staging), self._config(collection.schema))
            open_s = time.perf_counter() - opening
            replayed = self._replay(collection, new, 0, until_below=64)
            with collection.writes:
                replayed = self._replay(collection, new, replayed, until_below=1)
                collection.journal = None
                new.flush()
                if collection.shard is None:
                    raise NotFound(f"collection {name!r} was deleted during its optimization")
                set_current(collection.path, staging)  # the commit point
                # 4. Serve the new shard: searches wait only for the exchange.
                with collection.lock.owned():
                    if collection.shard is None:
                        raise NotFound(f"collection {name!r} was deleted during its optimization")
                    old, collection.shard, new = collection.shard, new, None
                    collection.points = collection.shard.info().points_count
                collection.written_since_optimize = max(0, collection.written_since_optimize - written)
            old_dir = [p for p in collection.path.iterdir() if p.is_dir() and p.name.startswith("shard") and p != staging]
            if old is not None:
                old.close()
            for stale in old_dir:
                shutil.rmtree(stale, ignore_errors=True)
            write_optimized_points(collection.path, built["points"])
            figures = {"collection": name, "seconds": round(time.perf_counter() - started, 2),
                       "copy_seconds": round(copied_s, 2), "warm_seconds": round(warm_s, 2), "open_seconds": round(open_s, 3),
                       "replayed_writes": replayed, **built}
            log.info("collection optimized in the background", extra=figures)
            self.builds = [*self.builds[-19:], figures]
            return figures
        except BaseException:
            collection.journal = None
            if new is not None:
                new.close()
            if current_shard(collection.path) != staging:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            metrics.RETRIEVAL_STORE_OPTIMIZING.set(0)

    def _replay(self, collection: OpenCollection, new: qe.EdgeShard, done: int, until_below: int) -> int:
        """Apply the journal from entry ``done`` to ``new`` until fewer than ``until_below`` are
        left; how many entries are applied."""
        while True:
            journal = collection.journal
            if journal is None or collection.journal_points > self.max_journal_points:
                raise RuntimeError(f"more than {self.max_journal_points} points written during the "
                                   "optimization; it will be retried when writes slow down")
            pending = len(journal)
            for op in journal[done:pending]:
                new.update(op)
            done = pending
            if len(journal) - done < until_below:
                return done

    def flush(self) -> None:
        for name in self.list_collections():
            try:
                self._read(name, lambda shard: shard.flush())
                metrics.RETRIEVAL_STORE_FLUSHES.inc()
            except NotFound:
                pass

    def close(self) -> None:
        self._closing.set()
        child = self._child
        if child is not None:
            child.kill()  # its copy is thrown away; the shard being served is untouched
        if self._optimizer is not None:
            self._optimizer.join(timeout=30)
        with self._registry:
            collections = list(self._collections.values())
            self._collections.clear()
        for collection in collections:
            with collection.lock.owned():
                if collection.shard is not None:
                    collection.shard.flush()
                    metrics.RETRIEVAL_STORE_FLUSHES.inc()
                    collection.shard.close()
                    collection.shard = None
