"""How Qdrant Edge shards are stored and indexed: the ``EDGE_*`` settings, in the form the
serving process hands to the optimizer's child process (no engine import here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

#: Where a collection's dense vectors live: ``memory`` (originals in RAM, the engine's
#: default), ``int8`` (originals in RAM plus int8 copies, which the HNSW build and searches
#: use first, the best candidates rescored with the originals) or ``disk-int8`` (the same
#: with the originals on disk, read only to rescore).
DENSE_STORAGE = ("memory", "int8", "disk-int8")


@dataclass(frozen=True)
class ShardTuning:
    """How shards are stored and their HNSW graphs built (the ``EDGE_*`` settings). The
    defaults here are the engine's own (0: the engine chooses; no int8 copies); the service's
    defaults are its settings' (services/retrieval/config.py). Applied whenever a shard is
    opened, so a change takes effect at the next optimization; docs/BENCHMARKS.md ("How the
    index is built") measures each choice."""

    #: Segments larger than this (KB of vectors) get an HNSW graph; smaller ones are searched exactly.
    indexing_threshold_kb: int = 0
    #: Threads one HNSW build uses.
    max_indexing_threads: int = 0
    #: Segments the optimizer aims for (the engine's default: one per CPU).
    segments: int = 0
    dense_storage: str = "memory"
    hnsw_m: int = 16
    ef_construct: int = 100
    #: A search that would visit fewer KB of vectors than this scans them instead of the graph.
    full_scan_threshold_kb: int = 10_000
    #: With int8 copies: candidates fetched by them per result wanted, rescored by the originals.
    oversampling: float = 1.0

    def __post_init__(self) -> None:
        if self.dense_storage not in DENSE_STORAGE:
            raise ValueError(f"dense storage must be one of {DENSE_STORAGE}, got {self.dense_storage!r}")

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShardTuning:
        return cls(**json.loads(text))
