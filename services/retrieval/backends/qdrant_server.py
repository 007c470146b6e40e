"""A Qdrant server or cluster through qdrant-client (``QDRANT_URL``).

The schema lives in the collection's own metadata, so any retrieval replica reads it
from the cluster. Tests drive this module against qdrant-client's local mode, which
receives the same client calls a server would (no Qdrant server can be installed where
the tests run); it is never a serving option.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from services.common.errors import NotFound, Unavailable
from services.retrieval.backends.base import (
    DENSE, LATE, SPARSE, CollectionSchema, CollectionStats, Filter, Fused, Hit, Nearest, PointIn, PointSnapshot,
    Rescore, missing_alias, missing_collection, taken_collection,
)
from services.retrieval.backends.translation import (
    EngineTypes, engine_filter, engine_point, payload_indexes, point_in, query_request, schema_from_record,
    schema_record, scrolled,
)

# A server that cannot be reached fails the first call with UNAVAILABLE naming it; qdrant-client's
# warning then, from its background version check (the check it could not make, and advice to
# turn the check off), is noise. A warning about an incompatible server version still shows.
warnings.filterwarnings("ignore", message="Failed to obtain server version", category=UserWarning)

#: Qdrant's builders of the filter and query language (services/retrieval/backends/translation.py).
SERVER = EngineTypes(
    filter=models.Filter,
    match=lambda key, value: models.FieldCondition(key=key, match=models.MatchValue(value=value)),
    match_any=lambda key, values: models.FieldCondition(key=key, match=models.MatchAny(any=values)),
    range=lambda key, **bounds: models.FieldCondition(key=key, range=models.Range(**bounds)),
    sparse_vector=lambda indices, values: models.SparseVector(indices=indices, values=values),
    sparse_type=models.SparseVector,
    point=lambda pid, vectors, payload: models.PointStruct(id=pid, vector=vectors, payload=payload),
    nearest=lambda vector, using: {"query": vector, "using": using},
    fusion=lambda method, k: {"query": models.RrfQuery(rrf=models.Rrf(k=k)) if method == "rrf"
                              else models.FusionQuery(fusion=models.Fusion.DBSF)},
    prefetch=lambda prefetches=None, **kw: models.Prefetch(prefetch=prefetches, **kw),
    request=lambda prefetches=None, **kw: models.QueryRequest(prefetch=prefetches, **kw),
    index_types={
        "keyword": models.PayloadSchemaType.KEYWORD,
        "integer": models.PayloadSchemaType.INTEGER,
        "float": models.PayloadSchemaType.FLOAT,
        "bool": models.PayloadSchemaType.BOOL,
    },
)
_SCHEMA_KEY = "search_platform_schema"
#: Key of the write version in a collection's metadata, which every replica reads.
_VERSION_KEY = "search_platform_write_version"


class QdrantServerBackend:
    kind = "qdrant"
    #: Several retrieval replicas may serve one Qdrant server or cluster.
    shared = True

    def __init__(self, client: QdrantClient, shard_number: int = 1, replication_factor: int = 1,
                 write_consistency_factor: int = 1, hnsw_ef: int | None = None) -> None:
        self.client = client
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self.write_consistency_factor = write_consistency_factor
        self.hnsw_ef = hnsw_ef
        # Local mode (the tests' stand-in) warns that it ignores payload indexes.
        self._local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"

    @classmethod
    def connect(cls, url: str, api_key: str | None = None, timeout_s: float = 10.0, **kw) -> QdrantServerBackend:
        return cls(QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s)), **kw)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise NotFound(f"{what}: not found in Qdrant ({exc.content!r})") from exc
            raise Unavailable(f"Qdrant {what} failed with HTTP {exc.status_code}") from exc
        except (ResponseHandlingException, ConnectionError, TimeoutError, OSError) as exc:
            raise Unavailable(f"Qdrant is unreachable during {what}: {exc}") from exc
        except ValueError as exc:  # local mode: "Collection X not found"
            if "not found" in str(exc):
                raise NotFound(str(exc)) from exc
            raise

    # -- collections -------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._call("list collections", self.client.get_collections).collections)

    def reads_in_place(self, name: str) -> bool:
        return False  # every call waits on the network: a worker thread waits, not the event loop

    def create_collection(self, schema: CollectionSchema) -> None:
        if self._call("collection_exists", self.client.collection_exists, schema.name):
            raise taken_collection(schema.name)
        self._call(
            "create_collection",
            self.client.create_collection,
            schema.name,
            vectors_config=_vectors_config(schema),
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if schema.sparse else None,
            shard_number=self.shard_number,
            replication_factor=self.replication_factor,
            write_consistency_factor=self.write_consistency_factor,
            metadata={_SCHEMA_KEY: schema_record(schema)},
        )
        if not self._local:
            for key, kind in payload_indexes(schema).items():
                self._call("create_payload_index", self.client.create_payload_index, schema.name, key,
                           SERVER.index_types[kind])

    def schema(self, name: str) -> CollectionSchema:
        # One request (every Retrieve reads the schema): a missing collection is a 404.
        try:
            info = self._call("get_collection", self.client.get_collection, name)
        except NotFound as exc:
            raise missing_collection(name) from exc
        raw = (info.config.metadata or {}).get(_SCHEMA_KEY)
        if raw is None:  # created by an earlier version (flat metadata) or by hand: read what Qdrant knows
            dense = info.config.params.vectors
            params = dense.get(DENSE) if isinstance(dense, dict) else dense
            metadata = dict(info.config.metadata or {})
            raw = {"dense_dimension": params.size if params else 0, "sparse": bool(info.config.params.sparse_vectors),
                   "filter_fields": dict(metadata.pop("filter_fields", None) or {}),
                   "metadata": {k: v for k, v in metadata.items() if k != "sparse"}}
        return schema_from_record(name, raw)

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        schema = self.schema(name)
        record = schema_record(schema)
        record["metadata"] = {**schema.metadata, **updates}
        # Qdrant merges the top-level metadata keys it is sent: only the schema record changes.
        self._call("update_collection", self.client.update_collection, name, metadata={_SCHEMA_KEY: record})

    def delete_collection(self, name: str) -> None:
        self.schema(name)
        self._call("delete_collection", self.client.delete_collection, name)

    # -- points ------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointIn]) -> None:
        self._call("upsert", self.client.upsert, name, points=[engine_point(SERVER, p) for p in points], wait=True)

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        self._call("delete", self.client.delete, name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def delete_where(self, name: str, where: Filter) -> None:
        self._call("delete", self.client.delete, name, points_selector=models.FilterSelector(filter=engine_filter(SERVER, where)), wait=True)

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        records = self._call("retrieve", self.client.retrieve, name, ids=list(ids), with_payload=False)
        return [str(r.id) for r in records]

    def count(self, name: str, where: Filter | None = None) -> int:
        return self._call("count", self.client.count, name, count_filter=engine_filter(SERVER, where), exact=True).count

    def query(self, name: str, queries: Sequence[Nearest | Fused | Rescore]) -> list[list[Hit]]:
        params = models.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None
        requests = [query_request(SERVER, q, params) for q in queries]
        if len(requests) == 1:
            responses = [self._call("query_points", self.client.query_points, name, **_kwargs(requests[0]))]
        else:
            responses = self._call("query_batch_points", self.client.query_batch_points, name, requests=requests)
        return [[Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in r.points] for r in responses]

    def scroll(self, name: str, offset: str | None, limit: int, with_vectors: bool, where: Filter | None = None):
        records, next_offset = self._call("scroll", self.client.scroll, name, offset=offset, limit=limit,
                                          scroll_filter=engine_filter(SERVER, where),
                                          with_payload=True, with_vectors=with_vectors)
        return scrolled(SERVER, records, with_vectors), None if next_offset is None else str(next_offset)

    def retrieve(self, name: str, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        records = self._call("retrieve", self.client.retrieve, name, ids=list(ids), with_payload=True)
        return [(str(r.id), r.payload or {}) for r in records]

    @contextmanager
    def snapshot_points(self, name: str) -> Iterator[PointSnapshot]:
        """Scrolled while serving: consistent when no write lands meanwhile (a cluster's own
        point-in-time snapshots are Qdrant's snapshot API, docs/DEPLOY.md)."""
        count = self.count(name)

        def points() -> Iterator[PointIn]:
            offset = None
            while True:
                page, offset = self.scroll(name, offset, 256, True)
                for pid, payload, vectors in page:
                    yield point_in(pid, payload, vectors)
                if offset is None:
                    return

        yield PointSnapshot(method="scroll", count=count, points=points())

    # -- aliases: Qdrant's own, switched in one request (atomic on the server) ---------

    def list_aliases(self) -> dict[str, str]:
        reply = self._call("get_aliases", self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in reply.aliases}

    def set_alias(self, alias: str, collection: str) -> None:
        if not self._call("collection_exists", self.client.collection_exists, collection):
            raise missing_collection(collection)
        operations: list[Any] = []
        if alias in self.list_aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
        self._call("update_collection_aliases", self.client.update_collection_aliases,
                   change_aliases_operations=operations)

    def delete_alias(self, alias: str) -> None:
        if alias not in self.list_aliases():
            raise missing_alias(alias)
        self._call("update_collection_aliases", self.client.update_collection_aliases, change_aliases_operations=[
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))])

    def write_version(self, name: str) -> str:
        try:
            metadata = self.client.get_collection(name).config.metadata or {}
        except Exception:  # noqa: BLE001 - no such collection (yet): the request itself says NOT_FOUND
            return ""
        return str(metadata.get(_VERSION_KEY, "unversioned"))

    def new_write_version(self, name: str) -> None:
        # Qdrant merges the top-level metadata keys it is sent: only the version changes.
        try:
            self._call("update_collection", self.client.update_collection, name, metadata={_VERSION_KEY: uuid.uuid4().hex})
        except NotFound:
            pass  # deleted: nothing to version

    def stats(self, name: str) -> CollectionStats:
        info = self._call("get_collection", self.client.get_collection, name)
        return CollectionStats(points=int(info.points_count or 0), segments=int(info.segments_count or 0),
                               indexed_vectors=int(info.indexed_vectors_count or 0))

    def flush(self) -> None:
        """Nothing to do: a Qdrant server acknowledges ``wait=True`` writes once applied."""

    def close(self) -> None:
        self.client.close()


def _vectors_config(schema: CollectionSchema) -> dict[str, models.VectorParams]:
    config = {DENSE: models.VectorParams(size=schema.dense_dimension, distance=models.Distance.COSINE)}
    if schema.late_dimension:  # token vectors: MaxSim, no HNSW graph, originals on disk, quantised
        quantization = {
            "int8": models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=False)),
            "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=False)),
            "none": None,
        }[schema.late_quantization]
        config[LATE] = models.VectorParams(
            size=schema.late_dimension, distance=models.Distance.COSINE, on_disk=True,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            hnsw_config=models.HnswConfigDiff(m=0), quantization_config=quantization,
        )
    return config


def _kwargs(r: models.QueryRequest) -> dict[str, Any]:
    return {"query": r.query, "using": r.using, "prefetch": r.prefetch, "limit": r.limit, "query_filter": r.filter,
            "search_params": r.params, "with_payload": r.with_payload}
