"""Vector engines behind one seam (``base.Backend``): Qdrant Edge in-process (the default)
or a Qdrant server/cluster (``QDRANT_URL``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.retrieval.backends.base import Backend
from services.retrieval.backends.edge_tuning import ShardTuning


@dataclass(frozen=True)
class BackendSettings:
    path: str = ".data/qdrant"
    url: str | None = None
    api_key: str | None = None
    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    timeout_s: float = 10.0
    hnsw_ef: int | None = None
    hnsw_ef_points: int = 0
    search_threads: int = 0
    optimize_on_start: bool = False
    optimize_after_points: int = 20_000
    optimize_quiet_s: float = 30.0
    min_free_disk_mb: int = 256
    query_batching: bool = False
    tuning: ShardTuning = ShardTuning()


def open_backend(settings: BackendSettings) -> Backend:
    """The engine ``settings`` name: a Qdrant server when ``url`` is set, else Qdrant Edge."""
    if settings.url:
        from services.retrieval.backends.qdrant_server import QdrantServerBackend

        return QdrantServerBackend.connect(
            settings.url, settings.api_key, settings.timeout_s, shard_number=settings.shard_number,
            replication_factor=settings.replication_factor, write_consistency_factor=settings.write_consistency_factor,
            hnsw_ef=settings.hnsw_ef,
        )
    from services.retrieval.backends.edge import EdgeBackend

    return EdgeBackend(settings.path, search_threads=settings.search_threads, hnsw_ef=settings.hnsw_ef,
                       hnsw_ef_points=settings.hnsw_ef_points,
                       optimize_on_start=settings.optimize_on_start,
                       optimize_after_points=settings.optimize_after_points,
                       optimize_quiet_s=settings.optimize_quiet_s, min_free_disk_mb=settings.min_free_disk_mb,
                       tuning=settings.tuning, query_batching=settings.query_batching)
