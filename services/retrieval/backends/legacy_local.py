"""Data written by qdrant-client's local mode (the embedded store before Qdrant Edge).

Local mode kept ``<path>/meta.json`` and ``<path>/collection/<name>/storage.sqlite``. The
retrieval service no longer serves from it (a Python scan: seconds per query at 100k
documents); it detects such data at start and names the command that moves it:
``searchctl store import-local``, which copies every point with its vectors and payload
into Qdrant Edge collections (no re-embedding).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from services.retrieval.backends.base import DENSE, Backend, PointIn, SparseVector

IMPORT_COMMAND = "searchctl store import-local --path {path}"


def legacy_collections(path: str | Path) -> list[str]:
    """Collections that local mode wrote under ``path`` (empty when there are none)."""
    meta = Path(path) / "meta.json"
    if not meta.exists():
        return []
    try:
        return sorted(json.loads(meta.read_text()).get("collections", {}))
    except (ValueError, AttributeError):
        return []


def import_legacy(path: str | Path, target: Backend, batch: int = 256,
                  progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every local-mode collection under ``path`` into ``target``; ``{name: points}``.

    Collections already in ``target`` are skipped (nothing is overwritten). Run it with
    the retrieval service stopped: local mode locks its folder.
    """
    from qdrant_client import QdrantClient, models

    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    client = QdrantClient(path=str(path))
    source = QdrantServerBackend(client)  # reads the schema the old store recorded
    copied: dict[str, int] = {}
    try:
        existing = set(target.list_collections())
        for name in legacy_collections(path):
            if name in existing:
                continue
            target.create_collection(source.schema(name))
            offset, total = None, 0
            while True:
                records, offset = client.scroll(name, offset=offset, limit=batch, with_payload=True, with_vectors=True)
                points = []
                for r in records:
                    vec = r.vector or {}
                    sparse = vec.get("sparse")
                    points.append(PointIn(
                        id=r.id, dense=list(vec[DENSE]), payload=r.payload or {},  # int ids stay ints
                        sparse=SparseVector(tuple(sparse.indices), tuple(sparse.values))
                        if isinstance(sparse, models.SparseVector) else None,
                    ))
                if points:
                    target.upsert(name, points)
                    total += len(points)
                    if progress:
                        progress(name, len(points))
                if offset is None:
                    break
            copied[name] = total
    finally:
        client.close()
    return copied
