"""Qdrant Edge: Qdrant's engine in-process, one shard per collection (the embedded default).

Layout under the data directory::

    <path>/collections/<name>/collection.json   the schema (vectors, filter fields, metadata)
    <path>/collections/<name>/shard/            the Edge shard: segments + write-ahead log

Writes go through the shard's write-ahead log before ``update`` returns, so an
acknowledged upsert survives the process being killed; ``flush`` (on close) persists the
segments. A shard that cannot be opened (corrupt, another process holds its WAL, an
incompatible version) stops the service at start with the path named; nothing is ever
re-created over existing files.

Two facts of qdrant-edge-py 0.9.0 shape this module (measured, docs/BENCHMARKS.md):

* Its calls hold Python's GIL while they run. Queries take about a millisecond, so that is
  cheap; but ``optimize()`` (merging segments and building the HNSW graph) holds it for
  its whole run, about 90 s per 100k 384-d points on this CPU, which would freeze every
  other thread of the service (gRPC, health checks, embedding). So the serving process
  never calls it. Searches are exact over plain segments until a collection has taken
  ``optimize_after_points`` writes (``EDGE_OPTIMIZE_AFTER_POINTS``); then
  :meth:`EdgeBackend.optimize_in_background` copies the shard, optimizes the copy in a
  child process (``edge_optimizer.py``), replays the writes made meanwhile and swaps the
  copy in. Past the engine's indexing threshold (about 6,500 384-d vectors per segment)
  the copy's segments carry an HNSW graph; smaller collections stay exact.
  ``searchctl store optimize`` does the same offline.
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
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from services.common import metrics
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from services.retrieval.backends.base import (
    DENSE,
    LATE,
    SPARSE,
    CollectionSchema,
    CollectionStats,
    Filter,
    Fused,
    Hit,
    Match,
    MatchAny,
    Nearest,
    PointIn,
    PointSnapshot,
    Range,
    Rescore,
    SparseVector,
)

log = logging.getLogger(__name__)

SCHEMA_FILE = "collection.json"
ALIASES_FILE = "aliases.json"
SHARD_DIR = "shard"
#: The optimizer's copy while a child process optimizes it; the replaced shard during a swap.
OPTIMIZING_DIR = "shard.optimizing"
REPLACED_DIR = "shard.replaced"
#: Bumped when the on-disk layout written here changes incompatibly.
LAYOUT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")

_INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


class _ReadWriteLock:
    """Many users of the open shard (queries, upserts: the shard serialises internally) or
    one owner (closing, swapping, deleting it). A waiting owner goes before new users."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Collection:
    def __init__(self, schema: CollectionSchema, shard: qe.EdgeShard, path: Path) -> None:
        self.schema = schema
        self.shard: qe.EdgeShard | None = shard
        self.path = path
        self.lock = _ReadWriteLock()
        #: Held by every write, and by the optimizer while it copies the shard and while it
        #: replays the writes made meanwhile: writes wait then, searches do not.
        self.writes = threading.Lock()
        #: Writes since the optimizer copied the shard (None when no optimization runs).
        self.journal: list[qe.UpdateOperation] | None = None
        self.journal_points = 0
        #: Points written since the last optimization (what triggers the next one).
        self.written_since_optimize = 0
        self.last_write = 0.0


def _write_schema(path: Path, schema: CollectionSchema) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps({
            "layout_version": LAYOUT_VERSION, "name": schema.name, "dense_dimension": schema.dense_dimension,
            "sparse": schema.sparse, "filter_fields": schema.filter_fields, "metadata": schema.metadata,
            "late_dimension": schema.late_dimension, "late_quantization": schema.late_quantization,
        }, indent=2, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: With ``search_threads=0``, all shards together start at most this many search threads
#: per CPU: each shard gets the CPUs while there are few collections, fewer as they add up.
THREAD_BUDGET_PER_CPU = 2


class EdgeBackend:
    """Collections as Qdrant Edge shards under ``path``."""

    kind = "edge"

    def __init__(self, path: str | os.PathLike, search_threads: int = 0, hnsw_ef: int | None = None,
                 optimize_on_start: bool = False, optimize_after_points: int = 0,
                 optimize_check_s: float = 10.0, max_journal_points: int = 500_000) -> None:
        self.root = Path(path)
        self.collections_dir = self.root / "collections"
        self.search_threads = search_threads
        self.hnsw_ef = hnsw_ef
        self.optimize_after_points = optimize_after_points
        self.max_journal_points = max_journal_points
        self._collections: dict[str, _Collection] = {}
        self._registry = threading.Lock()  # guards the dict, not the shards
        self._closing = threading.Event()
        self._child: subprocess.Popen | None = None
        self.collections_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / ".snapshots", ignore_errors=True)  # copies a crash left behind
        self._aliases_lock = threading.Lock()
        self._aliases = self._load_aliases()
        for entry in sorted(self.collections_dir.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                self._open(entry.name, optimize=optimize_on_start)
        self._optimizer: threading.Thread | None = None
        if optimize_after_points > 0:
            self._optimizer = threading.Thread(target=self._optimize_when_due, args=(optimize_check_s,),
                                               name="edge-optimizer", daemon=True)
            self._optimizer.start()

    # -- shards ------------------------------------------------------------------------

    def _threads(self, shards: int) -> int:
        """Search threads for one more shard when ``shards`` are open already."""
        if self.search_threads > 0:
            return self.search_threads
        cpus = _cpus()
        return max(1, min(cpus, THREAD_BUDGET_PER_CPU * cpus // (shards + 1)))

    def _config(self, schema: CollectionSchema) -> qe.EdgeConfig:
        # On load, the engine checks these against the shard's segments.
        vectors = {DENSE: qe.EdgeVectorParams(size=schema.dense_dimension, distance=qe.Distance.Cosine)}
        if schema.late_dimension:
            vectors[LATE] = _late_params(schema)
        return qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if schema.sparse else None,
            max_search_threads=self._threads(len(self._collections)),
        )

    def _open(self, name: str, optimize: bool = False) -> None:
        directory = self.collections_dir / name
        schema_path = directory / SCHEMA_FILE
        shard_path = directory / SHARD_DIR
        _finish_interrupted_swap(directory)
        if not schema_path.exists() or not shard_path.exists():
            raise FailedPrecondition(
                f"{directory} is not a complete collection (expected {SCHEMA_FILE} and {SHARD_DIR}/); "
                "move it out of the data directory or restore it from a snapshot"
            )
        try:
            raw = json.loads(schema_path.read_text())
            if raw.get("layout_version") != LAYOUT_VERSION:
                raise ValueError(f"layout version {raw.get('layout_version')!r}, this service reads {LAYOUT_VERSION}")
            schema = CollectionSchema(
                name=raw["name"], dense_dimension=int(raw["dense_dimension"]), sparse=bool(raw["sparse"]),
                filter_fields=dict(raw.get("filter_fields", {})), metadata=dict(raw.get("metadata", {})),
                late_dimension=int(raw.get("late_dimension", 0)), late_quantization=str(raw.get("late_quantization", "int8")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"cannot read collection schema {schema_path}: {exc}") from exc
        try:
            shard = qe.EdgeShard.load(str(shard_path), self._config(schema))
        except Exception as exc:  # the binding raises plain Exception
            raise FailedPrecondition(
                f"cannot open the Qdrant Edge shard at {shard_path}: {exc} "
                "(is another retrieval process using this data directory?); nothing was changed"
            ) from exc
        if optimize:
            started = time.perf_counter()
            metrics.RETRIEVAL_STORE_OPTIMIZING.set(1)
            try:
                shard.optimize()
            finally:
                metrics.RETRIEVAL_STORE_OPTIMIZING.set(0)
            log.info("collection optimized", extra={"collection": name, "seconds": round(time.perf_counter() - started, 1)})
        self._collections[name] = _Collection(schema, shard, directory)

    def _get(self, name: str) -> _Collection:
        with self._registry:
            collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist; create it with CreateCollection")
        return collection

    def _read(self, name: str, fn):
        collection = self._get(name)
        collection.lock.acquire_read()
        try:
            if collection.shard is None:  # deleted while we waited
                raise NotFound(f"collection {name!r} does not exist; create it with CreateCollection")
            try:
                return fn(collection.shard)
            except (NotFound, AlreadyExists, FailedPrecondition):
                raise
            except Exception as exc:
                raise Unavailable(f"Qdrant Edge failed on collection {name!r}: {exc}") from exc
        finally:
            collection.lock.release_read()

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
                raise AlreadyExists(f"collection {schema.name!r} already exists")
            # Build it beside the others under a temporary name, then rename: a crash
            # half-way leaves no half-made collection that would stop the next start.
            staging = self.collections_dir / f".creating-{schema.name}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            try:
                shard = qe.EdgeShard.create(str(staging / SHARD_DIR), self._config(schema))
                indexes = {"doc_id": "keyword", "passage": "integer"}
                indexes.update({f"payload.{key}": kind for key, kind in schema.filter_fields.items()})
                for key, kind in indexes.items():
                    shard.update(qe.UpdateOperation.create_field_index(key, _INDEX_TYPES[kind]))
                shard.flush()
                shard.close()
                _write_schema(staging / SCHEMA_FILE, schema)
                os.replace(staging, directory)
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
                _write_schema(staging, schema)
                os.replace(staging, collection.path / SCHEMA_FILE)  # atomic: the old schema or the new one
            finally:
                staging.unlink(missing_ok=True)
            collection.schema = schema

    def delete_collection(self, name: str) -> None:
        collection = self._get(name)
        collection.lock.acquire_write()
        try:
            if collection.shard is None:
                raise NotFound(f"collection {name!r} does not exist")
            collection.shard.close()
            collection.shard = None
            with self._registry:
                self._collections.pop(name, None)
            # Rename first (atomic), then remove: a crash never leaves a half-deleted shard
            # under the collection's name.
            trash = self.collections_dir / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(collection.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            collection.lock.release_write()

    # -- points ------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointIn]) -> None:
        edge_points = []
        for p in points:
            vectors: dict[str, Any] = {DENSE: list(p.dense)}
            if p.sparse is not None and p.sparse.indices:
                vectors[SPARSE] = qe.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values))
            if p.late is not None:
                vectors[LATE] = p.late if isinstance(p.late, list) else [list(row) for row in p.late]
            edge_points.append(qe.Point(p.id, vectors, p.payload))
        self._write(name, qe.UpdateOperation.upsert_points(edge_points), len(edge_points))

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        self._write(name, qe.UpdateOperation.delete_points(list(ids)), len(ids))

    def delete_where(self, name: str, where: Filter) -> None:
        self._write(name, qe.UpdateOperation.delete_points_by_filter(_filter(where)), 1)

    def _write(self, name: str, operation: qe.UpdateOperation, points: int) -> None:
        collection = self._get(name)

        def apply(shard: qe.EdgeShard) -> None:
            with collection.writes:
                shard.update(operation)  # in the WAL when it returns
                collection.written_since_optimize += points
                collection.last_write = time.monotonic()
                if collection.journal is not None:
                    collection.journal.append(operation)
                    collection.journal_points += points

        self._read(name, apply)

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        records = self._read(name, lambda shard: shard.retrieve(list(ids), with_payload=False, with_vector=False))
        return [str(r.id) for r in records]

    def count(self, name: str, where: Filter | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=_filter(where) if where else None)
        return self._read(name, lambda shard: shard.count(request))

    def query(self, name: str, queries: Sequence[Nearest | Fused]) -> list[list[Hit]]:
        params = qe.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None
        requests = [_request(q, params) for q in queries]
        if len(requests) == 1:
            results = [self._read(name, lambda shard: shard.query(requests[0]))]
        else:
            results = self._read(name, lambda shard: shard.query_batch(qe.QueryBatchRequest(requests)))
        return [[Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in points] for points in results]

    def scroll(self, name: str, offset: str | None, limit: int, with_vectors: bool, where: Filter | None = None):
        return self._read(name, lambda shard: _scroll(shard, offset, limit, with_vectors, where))

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
                shard.flush()
                metrics.RETRIEVAL_STORE_FLUSHES.inc()
                shutil.copytree(collection.path / SHARD_DIR, copy_dir / SHARD_DIR)

        try:
            self._read(name, copy)
            snapshot = qe.EdgeShard.load(str(copy_dir / SHARD_DIR), self._config(collection.schema))
        except BaseException:
            shutil.rmtree(copy_dir, ignore_errors=True)
            raise
        try:
            count = snapshot.count(qe.CountRequest(exact=True))

            def points() -> Iterator[PointIn]:
                offset = None
                while True:
                    page, offset = _scroll(snapshot, offset, 256, True, None)
                    for pid, payload, vectors in page:
                        yield _point_in(pid, payload, vectors)
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
        with self._aliases_lock:
            return dict(self._aliases)

    def set_alias(self, alias: str, collection: str) -> None:
        with self._aliases_lock:
            self._get(collection)
            self._save_aliases({**self._aliases, alias: collection})

    def delete_alias(self, alias: str) -> None:
        with self._aliases_lock:
            if alias not in self._aliases:
                raise NotFound(f"alias {alias!r} does not exist")
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

    def stats(self, name: str) -> CollectionStats:
        info = self._read(name, lambda shard: shard.info())
        return CollectionStats(points=info.points_count, segments=info.segments_count,
                               indexed_vectors=info.indexed_vectors_count)

    def optimize(self, name: str) -> bool:
        """Merge segments and build the HNSW graph in this process (holds the GIL for the whole
        run: offline or at start only; a serving process uses :meth:`optimize_in_background`)."""
        done = self._read(name, lambda shard: shard.optimize())
        self._get(name).written_since_optimize = 0
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
                    except Exception:
                        if self._closing.is_set():
                            return
                        log.exception("background optimization failed; the collection keeps serving as it was",
                                      extra={"collection": name})
                        collection.written_since_optimize = 0  # retry after as many writes again

    #: Writes must have paused this long before an optimization starts ...
    OPTIMIZE_QUIET_S = 30.0

    def _due(self, collection: _Collection) -> bool:
        """Enough writes since the last optimization, and either a pause in the writes or,
        during a long ingest, as many new points as the collection had (so a growing
        collection is optimized a logarithmic number of times, not once per threshold)."""
        written = collection.written_since_optimize
        if written < self.optimize_after_points:
            return False
        if time.monotonic() - collection.last_write >= self.OPTIMIZE_QUIET_S:
            return True
        try:
            total = self._read(collection.schema.name, lambda shard: shard.info().points_count)
        except (NotFound, Unavailable):
            return False
        return written >= total - written

    def optimize_in_background(self, name: str) -> dict[str, Any]:
        """Optimize collection ``name`` without holding this process: copy its shard, optimize
        the copy in a child process, replay the writes made meanwhile, swap it in.

        Searches go on throughout except during the swap itself (closing one shard and
        loading the other, about a second at 100k points); writes wait while the shard is
        copied and while the last writes are replayed. A crash at any step leaves either
        the old shard or the complete new one (``_finish_interrupted_swap``).
        """
        collection = self._get(name)
        schema = collection.schema
        staging = collection.path / OPTIMIZING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        started = time.perf_counter()
        metrics.RETRIEVAL_STORE_OPTIMIZING.set(1)
        try:
            # 1. A consistent copy: writes wait, searches go on.
            def copy(shard: qe.EdgeShard) -> int:
                with collection.writes:
                    shard.flush()
                    metrics.RETRIEVAL_STORE_FLUSHES.inc()
                    shutil.copytree(collection.path / SHARD_DIR, staging)
                    collection.journal, collection.journal_points = [], 0
                    return collection.written_since_optimize

            written = self._read(name, copy)
            copied_s = time.perf_counter() - started
            # 2. The child optimizes the copy; this process keeps serving.
            self._child = subprocess.Popen(
                [sys.executable, "-m", "services.retrieval.backends.edge_optimizer", str(staging),
                 str(schema.dense_dimension), "1" if schema.sparse else "0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            out, err = self._child.communicate()
            code, self._child = self._child.returncode, None
            if code != 0:
                raise RuntimeError(f"the optimizer process exited with {code}: {err.strip()[-500:]}")
            # 3. Replay the writes made meanwhile, most of them while writes still flow.
            new = qe.EdgeShard.load(str(staging), self._config(schema))
            try:
                replayed = 0
                while True:
                    journal = collection.journal
                    if journal is None or collection.journal_points > self.max_journal_points:
                        raise RuntimeError(f"more than {self.max_journal_points} points written during the "
                                           "optimization; it will be retried when writes slow down")
                    pending = len(journal)
                    for op in journal[replayed:pending]:
                        new.update(op)
                    replayed = pending
                    if len(journal) - replayed < 64:
                        break
                collection.writes.acquire()
                try:
                    for op in collection.journal[replayed:]:
                        new.update(op)
                    collection.journal = None
                    new.flush()
                    new.close()
                    new = None
                    # 4. The swap: searches wait for this part only.
                    collection.lock.acquire_write()
                    swap_started = time.perf_counter()
                    try:
                        if collection.shard is None:
                            raise NotFound(f"collection {name!r} was deleted during its optimization")
                        collection.shard.close()
                        collection.shard = None
                        os.replace(collection.path / SHARD_DIR, collection.path / REPLACED_DIR)
                        os.replace(staging, collection.path / SHARD_DIR)
                        collection.shard = qe.EdgeShard.load(str(collection.path / SHARD_DIR), self._config(schema))
                        swap_s = time.perf_counter() - swap_started
                    except BaseException:
                        # The new shard did not load: put the old one back. It has every write
                        # too (the replayed ones were applied to it first; later ones waited).
                        if collection.shard is None and (collection.path / REPLACED_DIR).exists():
                            shutil.rmtree(collection.path / SHARD_DIR, ignore_errors=True)
                            os.replace(collection.path / REPLACED_DIR, collection.path / SHARD_DIR)
                            collection.shard = qe.EdgeShard.load(str(collection.path / SHARD_DIR), self._config(schema))
                        raise
                    finally:
                        collection.lock.release_write()
                    collection.written_since_optimize = max(0, collection.written_since_optimize - written)
                finally:
                    collection.writes.release()
            finally:
                if new is not None:
                    new.close()
            shutil.rmtree(collection.path / REPLACED_DIR, ignore_errors=True)
            figures = {"collection": name, "seconds": round(time.perf_counter() - started, 2),
                       "copy_seconds": round(copied_s, 2), "swap_seconds": round(swap_s, 3),
                       "replayed_writes": replayed, **json.loads(out.strip().splitlines()[-1])}
            log.info("collection optimized in the background", extra=figures)
            return figures
        except BaseException:
            collection.journal = None
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            metrics.RETRIEVAL_STORE_OPTIMIZING.set(0)

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
        if child is not None and child.poll() is None:
            child.kill()  # its copy is thrown away; the shard being served is untouched
        if self._optimizer is not None:
            self._optimizer.join(timeout=30)
        with self._registry:
            collections = list(self._collections.values())
            self._collections.clear()
        for collection in collections:
            collection.lock.acquire_write()
            try:
                if collection.shard is not None:
                    collection.shard.flush()
                    metrics.RETRIEVAL_STORE_FLUSHES.inc()
                    collection.shard.close()
                    collection.shard = None
            finally:
                collection.lock.release_write()


def _finish_interrupted_swap(directory: Path) -> None:
    """Complete or undo a swap of optimized shards that a crash interrupted.

    The new shard is renamed into place only after every write was replayed into it and
    flushed, so when the serving shard is missing the optimized copy is complete.
    """
    shard, staging, replaced = directory / SHARD_DIR, directory / OPTIMIZING_DIR, directory / REPLACED_DIR
    if not shard.exists():
        if staging.exists() and replaced.exists():
            os.replace(staging, shard)
        elif replaced.exists():
            os.replace(replaced, shard)
    if shard.exists():
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)


# -- translation to Edge types -------------------------------------------------------------


def _scroll(shard: qe.EdgeShard, offset, limit: int, with_vectors: bool, where: Filter | None):
    request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=with_vectors,
                               filter=_filter(where) if where else None)
    records, next_offset = shard.scroll(request)
    page = []
    for r in records:
        vectors = None
        if with_vectors:
            vectors = {}
            for key, value in (r.vector or {}).items():
                if isinstance(value, qe.SparseVector):
                    vectors[key] = SparseVector(tuple(value.indices), tuple(value.values))
                else:
                    vectors[key] = list(value)
        page.append((str(r.id), r.payload or {}, vectors))
    return page, None if next_offset is None else str(next_offset)


def _point_in(pid: str, payload: dict[str, Any], vectors: dict[str, Any] | None) -> PointIn:
    """A scrolled point as the engine-neutral point snapshots carry."""
    vectors = dict(vectors or {})
    dense, sparse, late = vectors.pop(DENSE, None), vectors.pop(SPARSE, None), vectors.pop("late", None)
    if vectors or dense is None:
        raise FailedPrecondition(f"point {pid} has vectors {sorted(vectors) or 'without dense'} that snapshots do not carry")
    return PointIn(id=pid, dense=dense, sparse=sparse, payload=payload, **({"late": late} if late is not None else {}))


def _vector(vector):
    if isinstance(vector, SparseVector):
        return qe.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return list(vector)


def _nearest(q: Nearest) -> qe.Query:
    return qe.Query.Nearest(_vector(q.vector), using=q.using)


def _late_params(schema: CollectionSchema) -> qe.EdgeVectorParams:
    """Token vectors: MaxSim, no HNSW graph (they only rescore), originals on disk, quantised."""
    quantization = {
        "int8": lambda: qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Cached),
        "binary": lambda: qe.BinaryQuantizationConfig(memory=qe.Memory.Cached),
        "none": lambda: None,
    }[schema.late_quantization]()
    return qe.EdgeVectorParams(
        size=schema.late_dimension, distance=qe.Distance.Cosine,
        multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=quantization, memory=qe.Memory.Cold,
    )


def _request(q: Nearest | Fused | Rescore, params: qe.SearchParams | None) -> qe.QueryRequest:
    if isinstance(q, Rescore):
        return qe.QueryRequest(limit=q.limit, prefetches=[_prefetch(p, params) for p in q.prefetch],
                               query=qe.Query.Nearest(_rows(q.vector), using=q.using), with_payload=q.with_payload)
    if isinstance(q, Nearest):
        return qe.QueryRequest(limit=q.limit, query=_nearest(q), filter=_filter(q.filter) if q.filter else None,
                               params=params, with_payload=q.with_payload)
    fusion = qe.Fusion.Rrf(k=q.rrf_k) if q.method == "rrf" else qe.Fusion.Dbsf()
    prefetch = [
        qe.Prefetch(limit=p.limit, query=_nearest(p), filter=_filter(p.filter) if p.filter else None, params=params)
        for p in q.prefetch
    ]
    return qe.QueryRequest(limit=q.limit, prefetches=prefetch, query=fusion, with_payload=True)


def _prefetch(q: Nearest | Fused, params: qe.SearchParams | None) -> qe.Prefetch:
    if isinstance(q, Nearest):
        return qe.Prefetch(limit=q.limit, query=_nearest(q), filter=_filter(q.filter) if q.filter else None, params=params)
    fusion = qe.Fusion.Rrf(k=q.rrf_k) if q.method == "rrf" else qe.Fusion.Dbsf()
    return qe.Prefetch(limit=q.limit, query=fusion, prefetches=[_prefetch(p, params) for p in q.prefetch])


def _rows(vector) -> list[list[float]]:
    return vector if isinstance(vector, list) else [list(map(float, row)) for row in vector]


def _filter(flt: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_condition(c) for c in flt.must] or None,
        should=[_condition(c) for c in flt.should] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


def _condition(c):
    if isinstance(c, Filter):
        return _filter(c)
    if isinstance(c, Match):
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(value=c.value))
    if isinstance(c, MatchAny):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(any=list(c.values)))
    if isinstance(c, Range):
        return qe.FieldCondition(key=c.key, range=qe.RangeFloat(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))
    raise TypeError(f"unknown filter condition {c!r}")
