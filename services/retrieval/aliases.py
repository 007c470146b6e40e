"""Aliases: second names for collections, switched atomically; and the write gate a reindex uses.

Collections and aliases share one namespace: an alias cannot take a collection's name nor a
collection an alias's, and an alias points to a collection, never to another alias. Every
request that names a collection (Retrieve, Upsert, Delete, GetDocuments, snapshots) resolves
the name once, at its start, so it works on one collection from start to end: a switch
never gives a request a mix of two collections. A collection an alias points to cannot be
deleted (FAILED_PRECONDITION names the alias).

The backend stores the aliases (Qdrant Edge: one JSON file replaced atomically; a Qdrant
server: its own aliases, switched in one request). With a server, other retrieval replicas
may switch an alias too, so its list is cached for at most ``cache_s``.

:class:`WriteGate`: writes (Upsert, Delete) hold it shared, from resolving their collection's
name to the end of the engine write; a reindex holds it exclusively while it copies the
documents written during its bulk copy and switches the alias, so no write lands in the old
collection after it was caught up, and none is lost. It also records, per collection being
reindexed, the ids of the documents written since the reindex started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager

from services.common import validation
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.common.locks import ReadWriteLock
from services.retrieval.backends.base import Backend, missing_alias


class Aliases:
    def __init__(self, backend: Backend, cache_s: float = 0.0, clock=time.monotonic) -> None:
        self.backend = backend
        self.cache_s = cache_s
        self._clock = clock
        self._cached: tuple[float, dict[str, str]] | None = None
        self._changes = threading.Lock()

    def all(self) -> dict[str, str]:
        """Every alias and its collection."""
        if self.cache_s <= 0:
            return self.backend.list_aliases()
        now = self._clock()
        if self._cached is None or now - self._cached[0] > self.cache_s:
            self._cached = (now, self.backend.list_aliases())
        return dict(self._cached[1])

    def _refresh(self) -> dict[str, str]:
        self._cached = None
        return self.all()

    def resolve(self, name: str) -> str:
        """The collection ``name`` designates: the alias's target, or ``name`` itself."""
        return self.all().get(name, name)

    def of(self, collection: str) -> list[str]:
        """The aliases that point to ``collection``."""
        return sorted(a for a, c in self.all().items() if c == collection)

    def _collection(self, name: str, field: str) -> str:
        validation.collection_name(name, field)
        if name in self._refresh():
            raise InvalidArgument(field, f"{name!r} is an alias; an alias points to a collection, not to another alias")
        self.backend.schema(name)  # NotFound names it
        return name

    def create(self, alias: str, collection: str) -> None:
        validation.collection_name(alias, "alias")
        with self._changes:
            if alias in self.backend.list_collections():
                raise AlreadyExists(f"{alias!r} is a collection; an alias needs a name no collection has")
            if alias in self._refresh():
                raise AlreadyExists(f"alias {alias!r} already exists (points to {self.all()[alias]!r}); "
                                    "use SwitchAlias to point it elsewhere")
            self.backend.set_alias(alias, self._collection(collection, "collection"))
            self._refresh()

    def switch(self, alias: str, collection: str, expected: str = "") -> str:
        """Point ``alias`` at ``collection`` in one atomic change; returns the previous collection."""
        validation.collection_name(alias, "alias")
        with self._changes:
            current = self._refresh().get(alias)
            if current is None:
                raise missing_alias(alias)
            if expected and expected != current:
                raise FailedPrecondition(f"alias {alias!r} points to {current!r}, not {expected!r} as expected; "
                                         "someone switched it meanwhile")
            self.backend.set_alias(alias, self._collection(collection, "collection"))
            self._refresh()
            return current

    def replace_collection(self, name: str, collection: str, delete) -> None:
        """Delete collection ``name`` (``delete(name)``) and make ``name`` an alias of ``collection``."""
        with self._changes:
            delete(name)
            self.backend.set_alias(name, collection)
            self._refresh()

    def settled(self) -> None:
        """Return once no alias change of this process is in progress (a reindex replacing a
        collection deletes it, then names its alias: a request caught between waits here)."""
        with self._changes:
            self._cached = None

    def delete(self, alias: str) -> None:
        validation.collection_name(alias, "alias")
        with self._changes:
            self.backend.delete_alias(alias)
            self._refresh()

    def check_collection_name_free(self, name: str) -> None:
        """A new collection cannot take an alias's name."""
        target = self._refresh().get(name)
        if target is not None:
            raise AlreadyExists(f"{name!r} is an alias (of {target!r}); a collection needs a name no alias has")

    def check_deletable(self, collection: str) -> None:
        aliases = self._refresh()
        if collection in aliases:
            raise FailedPrecondition(f"{collection!r} is an alias (of {aliases[collection]!r}), not a collection; "
                                     "DeleteAlias removes an alias")
        names = sorted(a for a, c in aliases.items() if c == collection)
        if names:
            raise FailedPrecondition(
                f"collection {collection!r} is the target of alias(es) {', '.join(map(repr, names))}; "
                "switch or delete them first (SwitchAlias / DeleteAlias)"
            )


class WriteGate:
    """Shared by writes, exclusive for a reindex's catch-up; a waiting reindex goes before new writes."""

    def __init__(self) -> None:
        self._lock = ReadWriteLock()
        self._tracking = threading.Lock()
        self._tracked: dict[str, set[str]] = {}

    def writing(self) -> AbstractContextManager[None]:
        """Held by a write from resolving its collection's name to the end of the engine write."""
        return self._lock.shared()

    def paused(self) -> AbstractContextManager[None]:
        """No write runs inside this block; those in progress finish first."""
        return self._lock.owned()

    def note(self, collection: str, doc_ids: Iterable[str]) -> None:
        """Record ``doc_ids`` as written to ``collection`` (kept only while it is being reindexed)."""
        with self._tracking:
            tracked = self._tracked.get(collection)
            if tracked is not None:
                tracked.update(doc_ids)

    def track(self, collection: str) -> None:
        """Start recording the documents written to ``collection``; writes in progress finish first,
        so every write that is not recorded is in the collection before the caller reads it."""
        with self.paused(), self._tracking:
            if collection in self._tracked:
                raise FailedPrecondition(f"collection {collection!r} is already being reindexed")
            self._tracked[collection] = set()

    def take(self, collection: str) -> list[str]:
        """The documents written since :meth:`track` or the last ``take``, and start afresh."""
        with self._tracking:
            ids = self._tracked.get(collection, set())
            self._tracked[collection] = set()
            return sorted(ids)

    def untrack(self, collection: str) -> None:
        with self._tracking:
            self._tracked.pop(collection, None)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
