"""Snapshots: a collection's points with their vectors and payloads, portable across engines.

A snapshot is the header (schema, recorded models, point count, how it was taken) and the
points as the engine holds them, so restoring, moving to a Qdrant cluster or copying never
re-embeds anything. Consistency while serving: Qdrant Edge 0.9 has no call that writes a
shard snapshot, so the Edge backend takes a short write barrier (writes wait, searches go on),
flushes, copies the shard's files and reads the copy (``method = "copy"``); the server
backend reads the collection while it serves (``method = "scroll"``: consistent when no
write lands meanwhile; a cluster's own point-in-time snapshots are Qdrant's snapshot API).

On disk (``searchctl snapshot create``) a snapshot file is ``MAGIC`` followed by the
ExportSnapshotResponse messages, each prefixed by its length (4 bytes, big-endian).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from search.v1 import common_pb2
from services.common import api_names, validation
from services.common.errors import FailedPrecondition, InvalidArgument
from services.retrieval.backends.base import Backend, CollectionSchema, PointIn, SparseVector

FORMAT = "search-platform-snapshot/1"
MAGIC = b"SPSNAP1\n"
POINTS_PER_MESSAGE = 128
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def header(schema: CollectionSchema, count: int, engine: str, method: str) -> common_pb2.SnapshotHeader:
    return common_pb2.SnapshotHeader(
        format=FORMAT, collection=schema.name, dense_dimension=schema.dense_dimension, sparse=schema.sparse,
        filter_fields=[common_pb2.FilterField(key=k, type=api_names.FIELD_TYPE_ENUM[t]) for k, t in sorted(schema.filter_fields.items())],
        metadata_json=json.dumps(schema.metadata, sort_keys=True), point_count=count, engine=engine, method=method,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        late_dimension=int(getattr(schema, "late_dimension", 0) or 0),
        late_quantization=str(getattr(schema, "late_quantization", "") or "") if getattr(schema, "late_dimension", 0) else "",
    )


def schema_from(head: common_pb2.SnapshotHeader, name: str) -> CollectionSchema:
    """The schema of a collection restored from ``head`` under ``name``; INVALID_ARGUMENT for a bad header."""
    if head.format != FORMAT:
        raise InvalidArgument("header.format", f"expected {FORMAT!r}, got {head.format!r} (not a snapshot of this platform?)")
    if not 1 <= head.dense_dimension <= 65536:
        raise InvalidArgument("header.dense_dimension", f"must be 1..65536, got {head.dense_dimension}")
    try:
        metadata = json.loads(head.metadata_json or "{}")
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise InvalidArgument("header.metadata_json", f"is not a JSON object: {exc}") from exc
    validation.filter_fields(head.filter_fields)
    late = {}
    if head.late_dimension:
        if "late_dimension" not in CollectionSchema.__dataclass_fields__:
            raise FailedPrecondition("the snapshot has late-interaction vectors; this service cannot store them")
        late = {"late_dimension": head.late_dimension, "late_quantization": head.late_quantization or "int8"}
    return CollectionSchema(name=name, dense_dimension=head.dense_dimension, sparse=head.sparse,
                            filter_fields={f.key: api_names.FIELD_TYPES[f.type] for f in head.filter_fields}, metadata=metadata,
                            **late)


def to_message(point: PointIn) -> common_pb2.StoredPoint:
    message = common_pb2.StoredPoint(id=str(point.id), dense=point.dense,
                                     payload_json=json.dumps(point.payload, separators=(",", ":")).encode())
    if point.sparse is not None and point.sparse.indices:
        message.sparse.indices.extend(point.sparse.indices)
        message.sparse.values.extend(point.sparse.values)
    for row in getattr(point, "late", None) or ():
        message.late.add(values=row)
    return message


def from_message(message: common_pb2.StoredPoint, dimension: int, where: str) -> PointIn:
    if not message.id:
        raise InvalidArgument(f"{where}.id", "is required")
    if len(message.dense) != dimension:
        raise InvalidArgument(f"{where}.dense", f"has {len(message.dense)} dimensions; the header says {dimension}")
    if len(message.sparse.indices) != len(message.sparse.values):
        raise InvalidArgument(f"{where}.sparse", "indices and values differ in length")
    try:
        payload = json.loads(message.payload_json)
    except ValueError as exc:
        raise InvalidArgument(f"{where}.payload_json", f"is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or "doc_id" not in payload:
        raise InvalidArgument(f"{where}.payload_json", "must be an object with the document's doc_id")
    sparse = SparseVector(tuple(message.sparse.indices), tuple(message.sparse.values)) if message.sparse.indices else None
    late = {"late": [list(row.values) for row in message.late]} if message.late else {}
    return PointIn(id=message.id, dense=list(message.dense), sparse=sparse, payload=payload, **late)


def export_parts(backend: Backend, name: str) -> Iterator[tuple[common_pb2.SnapshotHeader | None, list[common_pb2.StoredPoint]]]:
    """The snapshot of collection ``name`` as message parts: ``(header, [])`` first, then
    ``(None, points)`` in batches of :data:`POINTS_PER_MESSAGE`."""
    schema = backend.schema(name)
    with backend.snapshot_points(name) as snap:
        yield header(schema, snap.count, backend.kind, snap.method), []
        batch: list[common_pb2.StoredPoint] = []
        for point in snap.points:
            batch.append(to_message(point))
            if len(batch) == POINTS_PER_MESSAGE:
                yield None, batch
                batch = []
        if batch:
            yield None, batch


def restore(backend: Backend, name: str, head: common_pb2.SnapshotHeader,
            batches: Iterable[Iterable[common_pb2.StoredPoint]]) -> int:
    """Create ``name`` from ``head`` and write every point of ``batches``; the point count must
    match the header. On any failure the new collection is deleted (nothing half-restored)."""
    schema = schema_from(head, name)
    backend.create_collection(schema)
    written = 0
    try:
        for batch in batches:
            points = [from_message(p, schema.dense_dimension, f"points[{written + i}]") for i, p in enumerate(batch)]
            if points:
                backend.upsert(name, points)
                written += len(points)
        if written != head.point_count:
            raise FailedPrecondition(f"the snapshot holds {written} points but its header says {head.point_count}: "
                                     "it is truncated; nothing was restored")
    except BaseException:
        backend.delete_collection(name)
        raise
    return written


# -- the file format ----------------------------------------------------------------------


def write_file(out: BinaryIO, messages: Iterable[Any]) -> int:
    """Write messages to a snapshot file; returns the number of points written."""
    out.write(MAGIC)
    points = 0
    for message in messages:
        raw = message.SerializeToString()
        out.write(len(raw).to_bytes(4, "big"))
        out.write(raw)
        points += len(message.points)
    return points


def read_file(f: BinaryIO, message_type) -> Iterator[Any]:
    """The messages of a snapshot file (``message_type``: ExportSnapshotResponse)."""
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot file of this platform (bad magic bytes)")
    while True:
        size = f.read(4)
        if not size:
            return
        length = int.from_bytes(size, "big")
        if len(size) != 4 or length > MAX_MESSAGE_BYTES:
            raise ValueError("the snapshot file is damaged (bad message length)")
        raw = f.read(length)
        if len(raw) != length:
            raise ValueError("the snapshot file is truncated")
        message = message_type()
        message.ParseFromString(raw)
        yield message
