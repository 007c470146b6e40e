"""`searchctl migrate --to QDRANT_URL`: move a collection into a Qdrant server or cluster.

The collection is read through the gateway as a snapshot (consistent while it serves:
services/retrieval/snapshots.py), created on the target with the same schema (vectors,
filter fields, recorded models: the retrieval service reads them back from the collection's
metadata) and the shard/replication settings given, and its points are written with their
vectors and payloads: nothing is re-embedded. Then it is verified (point count; a sample of
points found again by their own dense and sparse vectors, with the same payload), an alias
the source was named by is created on the target too, and the settings that switch the
retrieval service over are printed.

``--to`` is a URL (``http(s)://host:6333``, the API key in ``$QDRANT_API_KEY``); ``local:PATH``
writes qdrant-client's local mode instead (what the tests use: no server can be installed
where they run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import grpc
from tqdm import tqdm

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import DEFAULT_TARGET, connection_help, open_channel
from services.retrieval import snapshots
from services.retrieval.backends.base import DENSE, SPARSE, Nearest, PointIn

SAMPLE = 20


def _target_backend(to: str, args: argparse.Namespace):
    from qdrant_client import QdrantClient

    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    kw = dict(shard_number=args.shards, replication_factor=args.replication_factor,
              write_consistency_factor=args.write_consistency_factor)
    if to.startswith("local:"):
        return QdrantServerBackend(QdrantClient(path=to.removeprefix("local:")), **kw)
    if not to.startswith(("http://", "https://")):
        raise ValueError(f"--to must be a URL (http(s)://host:6333) or local:PATH, got {to!r}")
    return QdrantServerBackend.connect(to, os.environ.get("QDRANT_API_KEY") or None, args.timeout, **kw)


def migrate(args: argparse.Namespace) -> int:
    try:
        target = _target_backend(args.to, args)
    except ValueError as exc:
        print(f"searchctl migrate: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    sample: list[PointIn] = []
    state: dict = {}

    async def copy() -> None:
        async with open_channel(args.target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            bar = None
            async for message in stub.ExportSnapshot(pb.ExportSnapshotRequest(collection=args.collection)):
                if message.HasField("header"):
                    head = state["header"] = message.header
                    name = state["name"] = args.name or head.collection
                    schema = snapshots.schema_from(head, name)
                    if name in target.list_collections():
                        raise FileExistsError(f"collection {name!r} already exists on {args.to}; nothing was written "
                                              "(delete it there, or choose --name)")
                    target.create_collection(schema)
                    state["schema"] = schema
                    bar = tqdm(total=head.point_count, unit="point", desc=f"migrate {name}", disable=not sys.stderr.isatty())
                    continue
                points = [snapshots.from_message(p, state["schema"].dense_dimension, "points") for p in message.points]
                target.upsert(state["name"], points)
                state["written"] = state.get("written", 0) + len(points)
                stride = max(1, state["header"].point_count // SAMPLE)
                sample.extend(p for n, p in enumerate(points, state["written"] - len(points)) if n % stride == 0)
                bar.update(len(points))
            if bar is not None:
                bar.close()

    from services.common.errors import ServiceError

    try:
        asyncio.run(copy())
    except (grpc.aio.AioRpcError, ServiceError, FileExistsError) as exc:
        if isinstance(exc, grpc.aio.AioRpcError):
            message = f"reading {args.collection!r}: {exc.code().name}: {exc.details()}"
        else:
            message = f"writing to {args.to}: {getattr(exc, 'message', exc)}"
        if "schema" in state:  # nothing half-copied stays behind
            target.delete_collection(state["name"])
            message += f" (the partial {state['name']!r} on the target was deleted)"
        print(f"searchctl migrate: {message}", file=sys.stderr)
        return 1
    head, name = state["header"], state["name"]
    problems = verify(target, name, head.point_count, sample[:SAMPLE])
    if problems:
        print(f"searchctl migrate: {name!r} on {args.to} does not match the source:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.collection != head.collection and args.collection not in target.list_aliases():
        target.set_alias(args.collection, name)  # the source was an alias: the same alias on the target
    aliases = f"; alias {args.collection!r} -> {name!r}" if args.collection != head.collection else ""
    print(f"migrated {head.point_count} points of {head.collection!r} into {name!r} on {args.to} in "
          f"{time.perf_counter() - started:.1f} s (snapshot by {head.method}; vectors copied, nothing re-embedded){aliases}.\n"
          f"Verified: point count, and {min(len(sample), SAMPLE)} sampled points found by their own vectors with their payloads.\n"
          f"To serve it from there, start retrieval with:\n"
          f"  QDRANT_URL={args.to if not args.to.startswith('local:') else '<the server URL>'}"
          f"{'  QDRANT_API_KEY=<its key>' if os.environ.get('QDRANT_API_KEY') else ''}\n"
          f"  (QDRANT_PATH is then ignored; new collections get QDRANT_SHARD_NUMBER / QDRANT_REPLICATION_FACTOR /\n"
          f"  QDRANT_WRITE_CONSISTENCY_FACTOR; docs/DEPLOY.md, \"Moving to a Qdrant cluster\")")
    target.close()
    return 0


def verify(target, name: str, expected: int, sample: list[PointIn]) -> list[str]:
    """What differs between the written collection and the source's snapshot."""
    problems = []
    count = target.count(name)
    if count != expected:
        problems.append(f"{count} points, the source has {expected}")
    stored = dict(target.retrieve(name, [str(p.id) for p in sample]))
    for p in sample:
        if stored.get(str(p.id)) != p.payload:
            problems.append(f"point {p.id}: payload differs or missing")
            continue
        queries = [Nearest(DENSE, list(p.dense), 10)]
        if p.sparse is not None:
            queries.append(Nearest(SPARSE, p.sparse, 10))
        for q, hits in zip(queries, target.query(name, queries)):
            if str(p.id) not in [h.id for h in hits]:
                problems.append(f"point {p.id}: not found by its own {q.using} vector")
    return problems


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="move a collection into a Qdrant server or cluster (no re-embedding)",
                       description="Copy a collection (or an alias's collection) from the running platform into a "
                       "Qdrant server or cluster: same schema and recorded models, points with their vectors and "
                       "payloads (read as a consistent snapshot while the platform serves), then verify the count and "
                       "a sample of searches, and print the settings that switch retrieval over. The API key of the "
                       "target comes from $QDRANT_API_KEY.")
    p.add_argument("--collection", required=True, help="the collection or alias to move")
    p.add_argument("--to", required=True, help="the Qdrant URL (http(s)://host:6333), or local:PATH: qdrant-client's local mode, the stand-in for a server the tests use (nothing serves from it)")
    p.add_argument("--name", help="name on the target (default: the source collection's)")
    p.add_argument("--shards", type=int, default=1, help="shards of the new collection (default %(default)s)")
    p.add_argument("--replication-factor", type=int, default=1, help="replicas of each shard (default %(default)s)")
    p.add_argument("--write-consistency-factor", type=int, default=1,
                   help="replicas that must confirm a write (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="timeout of one call to the target (default %(default)s)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address of the platform (default %(default)s)")
    connection_help(p)
    p.set_defaults(func=migrate)
