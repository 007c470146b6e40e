"""The seam between the document store and a vector engine: neutral types and the protocol.

Everything above this seam (embedding, passages, ids, fusion, filters, validation) is
shared by every engine; a backend only translates these types to its engine's calls. A
third engine is one new module implementing :class:`Backend`.

Backends raise the domain errors of ``services.common.errors`` (``NotFound``,
``AlreadyExists``, ``Unavailable``, ``FailedPrecondition``); nothing here knows gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from services.common.errors import AlreadyExists, NotFound

#: Named vectors of every collection.
DENSE = "dense"
SPARSE = "sparse"
#: Named vector of a collection with late interaction: each document's token vectors, a
#: multivector compared by MaxSim, never indexed (it only rescores), quantised.
LATE = "late"

#: Payload keys the store owns; a caller's payload lives under ``payload``.
DOC_ID = "doc_id"
PASSAGE = "passage"
CALLER_PAYLOAD = "payload"

#: Payload field types a collection can index for filtering.
FIELD_TYPES = ("keyword", "integer", "float", "bool")


def missing_collection(name: str) -> NotFound:
    """The NOT_FOUND every backend raises for a collection it does not have, whatever the call."""
    return NotFound(f"collection {name!r} does not exist (ListCollections names those that do; CreateCollection makes one)")


def taken_collection(name: str) -> AlreadyExists:
    """The ALREADY_EXISTS every backend raises for a new collection (created, restored, migrated
    into) whose name is taken."""
    return AlreadyExists(f"collection {name!r} already exists: name another (DeleteCollection removes that one)")


def missing_alias(alias: str) -> NotFound:
    """The NOT_FOUND for an alias that does not exist, whatever the call."""
    return NotFound(f"alias {alias!r} does not exist (ListAliases names those that do; CreateAlias makes one)")


# -- filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """``key`` equals ``value``."""

    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    """``key`` equals one of ``values``."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """``key`` within the given bounds (each optional)."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Filter:
    """All of ``must``, at least one of ``should`` (when given), none of ``must_not``."""

    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


Condition = Union[Match, MatchAny, Range, Filter]


# -- points and queries --------------------------------------------------------------------


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class PointIn:
    """One point to write: a document's passage with its vectors and payload."""

    id: str | int  # the store writes uuid strings; an imported point keeps its id
    dense: Sequence[float]
    sparse: SparseVector | None
    payload: dict[str, Any]
    #: Token vectors for late interaction (collections that have it), one row per token.
    late: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class Nearest:
    """The ``limit`` points nearest ``vector`` in the named vector ``using``."""

    using: str
    vector: Sequence[float] | SparseVector
    limit: int
    filter: Filter | None = None
    #: False: hits carry an empty payload (ids and scores only; the store fetches payloads later).
    with_payload: bool = True


@dataclass(frozen=True)
class Fused:
    """Several :class:`Nearest` lists fused in the engine by ``method`` (``rrf`` or ``dbsf``)."""

    prefetch: tuple[Nearest, ...]
    method: str
    limit: int
    rrf_k: int = 60


@dataclass(frozen=True)
class Rescore:
    """The candidates of ``prefetch`` (their union, unfused) scored again by ``vector``
    against the named vector ``using`` (late interaction: MaxSim), best ``limit`` kept."""

    prefetch: tuple[Nearest | Fused, ...]
    using: str
    vector: Sequence[Sequence[float]]
    limit: int
    with_payload: bool = True


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection is: its vectors, its filterable fields and what the store records."""

    name: str
    dense_dimension: int
    sparse: bool
    filter_fields: dict[str, str] = field(default_factory=dict)
    #: Recorded at creation and returned as is: the model that wrote the dense vectors,
    #: how long documents are handled, and so on.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Dimensions of the late-interaction token vectors (0: the collection has none) and how
    #: they are quantised (``int8``, ``binary`` or ``none``).
    late_dimension: int = 0
    late_quantization: str = "int8"


@dataclass(frozen=True)
class PointSnapshot:
    """What :meth:`Backend.snapshot_points` yields: how the view was taken (``copy``: write
    barrier, flush and copy of the shard; ``scroll``: read while serving), the number of
    points, and the points themselves (read lazily, in pages)."""

    method: str
    count: int
    points: Iterator[PointIn]


@dataclass(frozen=True)
class CollectionStats:
    """The engine's own figures for one collection."""

    points: int
    segments: int = 0
    indexed_vectors: int = 0


class Backend(Protocol):
    """A vector engine holding named collections."""

    #: Short name for logs and metrics: ``edge`` or ``qdrant``.
    kind: str
    #: Whether other processes (retrieval replicas of a Qdrant server) change these collections
    #: and aliases too: then aliases are re-read (cached briefly, never kept) and write versions
    #: live in the engine; otherwise this process owns them.
    shared: bool

    def list_collections(self) -> list[str]: ...

    def reads_in_place(self, name: str) -> bool:
        """Whether a read of ``name`` may run on the calling thread now (the retrieval service's
        event loop): it holds Python's GIL throughout and waits for nothing. False for an engine
        across the network, whose calls wait on I/O."""

    def create_collection(self, schema: CollectionSchema) -> None:
        """Create it; ``AlreadyExists`` if the name is taken."""

    def schema(self, name: str) -> CollectionSchema:
        """The collection's schema; ``NotFound`` if there is none."""

    def delete_collection(self, name: str) -> None: ...

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into the collection's schema metadata, durably; every reader of
        :meth:`schema` (any replica) sees the new values afterwards."""

    def upsert(self, name: str, points: Sequence[PointIn]) -> None:
        """Write ``points`` (replacing any with the same id); durable when it returns."""

    def delete_ids(self, name: str, ids: Sequence[str]) -> None: ...

    def delete_where(self, name: str, where: Filter) -> None: ...

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        """The subset of ``ids`` that are stored."""

    def count(self, name: str, where: Filter | None = None) -> int: ...

    def query(self, name: str, queries: Sequence[Nearest | Fused | Rescore]) -> list[list[Hit]]:
        """Run the queries (as one batch where the engine can); best first, with payload."""

    def scroll(
        self, name: str, offset: str | None, limit: int, with_vectors: bool, where: Filter | None = None
    ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any] | None]], str | None]:
        """A page of ``(id, payload, vectors)`` (only points matching ``where`` when given) and
        the offset of the next page (None at the end)."""

    def retrieve(self, name: str, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(id, payload)`` of the stored points among ``ids`` (missing ones left out)."""

    def snapshot_points(self, name: str) -> AbstractContextManager[PointSnapshot]:
        """A consistent, point-in-time view of every point with its vectors and payload, taken
        while the collection serves (held for as long as the context is open)."""

    # Aliases: a second name for a collection. The names are checked above this seam
    # (services/retrieval/aliases.py); a backend stores them and switches them atomically.

    def list_aliases(self) -> dict[str, str]:
        """Every alias and the collection it points to."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Create ``alias`` or point it at ``collection``, as one atomic change."""

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias``; ``NotFound`` if there is none."""

    # Write versions: an opaque token per collection that changes after every write, so a
    # cached answer is never served after a write that could change it (services/retrieval/
    # versions.py gives the collection a new one after each write; a token never repeats).

    def write_version(self, name: str) -> str:
        """The collection's current write version ("" when it cannot be read: no such collection)."""

    def new_write_version(self, name: str) -> None:
        """Give the collection a new write version (nothing when it does not exist)."""

    def stats(self, name: str) -> CollectionStats: ...

    def flush(self) -> None:
        """Persist what is buffered (a graceful shutdown calls it)."""

    def close(self) -> None: ...
