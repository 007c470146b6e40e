"""One open collection of the embedded engine: its shard, the lock that lets many queries
and writes use it but only one owner close or swap it, and the journal of the writes a
background optimization must replay; and the collections' write versions."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from pathlib import Path

import qdrant_edge as qe

from services.common.locks import ReadWriteLock
from services.retrieval.backends.base import CollectionSchema
from services.retrieval.backends.edge_query_batching import QueryCombiner


class OpenCollection:
    def __init__(self, schema: CollectionSchema, shard: qe.EdgeShard, path: Path) -> None:
        self.schema = schema
        self.shard: qe.EdgeShard | None = shard
        self.path = path
        self.lock = ReadWriteLock()
        #: Held by every write, and by the optimizer while it copies the shard and while it
        #: replays the writes made meanwhile: writes wait then, searches do not.
        self.writes = threading.Lock()
        #: Writes since the optimizer copied the shard (None when no optimization runs).
        self.journal: list[qe.UpdateOperation] | None = None
        self.journal_points = 0
        #: Points written since the last optimization (what triggers the next one); at open,
        #: the points added since the last finished optimization.
        self.written_since_optimize = 0
        self.written_since_open = 0
        #: At open, the time of opening: a collection found unoptimized waits for a pause too.
        self.last_write = time.monotonic()
        #: About how many points it holds (the size rule of the search breadth): counted at open
        #: and after each optimization, moved by writes in between.
        self.points = 0
        #: Concurrent queries combined into one engine call (EDGE_QUERY_BATCHING), set at open.
        self.combiner: QueryCombiner | None = None


class LocalVersions:
    """Write versions owned by this process (services/retrieval/write_versions.py): one process owns an
    embedded collection, so a random prefix per process and a counter never repeat, and a
    restart draws a new prefix."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def current(self, name: str) -> str:
        version = self._versions.get(name)
        if version is None:
            with self._lock:
                version = self._versions.setdefault(name, self._next())
        return version

    def bump(self, name: str) -> None:
        with self._lock:
            self._versions[name] = self._next()

    def _next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


def cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: With ``search_threads=0``, all shards together start at most this many search threads
#: per CPU: each shard gets the CPUs while there are few collections, fewer as they add up.
THREAD_BUDGET_PER_CPU = 2
