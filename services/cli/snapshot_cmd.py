"""`searchctl snapshot create|restore`: a consistent snapshot of a collection while it serves,
restorable into a new collection (services/retrieval/snapshots.py has the format)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import grpc

from search.v1 import search_service_pb2 as pb
from services.cli.client import DEFAULT_TARGET, connection_help
from services.cli.collections_cmd import call
from services.retrieval import snapshots

DEFAULT_DIR = Path(".data/snapshots")


def _create(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DEFAULT_DIR / f"{args.collection}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.snapshot"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # renamed into place only once complete
    started = time.perf_counter()

    async def go(stub):
        points = 0
        with open(partial, "wb") as f:
            f.write(snapshots.MAGIC)
            async for message in stub.ExportSnapshot(pb.ExportSnapshotRequest(collection=args.collection)):
                raw = message.SerializeToString()
                f.write(len(raw).to_bytes(4, "big") + raw)
                points += len(message.points)
                if message.HasField("header"):
                    head = message.header
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, out)
        print(f"snapshot of {head.collection!r} ({head.engine}, {head.method}): {points} points in {out} "
              f"({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")

    try:
        return call("snapshot create", args.target, go)
    finally:
        partial.unlink(missing_ok=True)


def _restore(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        f = open(path, "rb")
        messages = snapshots.read_file(f, pb.ExportSnapshotResponse)
        first = next(messages)
    except (OSError, ValueError, StopIteration) as exc:
        print(f"searchctl snapshot restore: cannot read {path}: {exc or 'empty file'}", file=sys.stderr)
        return 2
    if not first.HasField("header"):
        print(f"searchctl snapshot restore: {path} has no header: not a snapshot", file=sys.stderr)
        return 2
    started = time.perf_counter()

    damage: list[str] = []

    async def requests():
        yield pb.RestoreSnapshotRequest(collection=args.collection, header=first.header, points=first.points)
        try:
            for message in messages:
                yield pb.RestoreSnapshotRequest(points=message.points)
        except ValueError as exc:  # a damaged file: stop early; the server refuses a short snapshot whole
            damage.append(str(exc))

    async def go(stub):
        try:
            reply = await stub.RestoreSnapshot(requests())
        except grpc.aio.AioRpcError:
            if damage:
                print(f"searchctl snapshot restore: {path}: {damage[0]}; nothing was restored", file=sys.stderr)
                return 2
            raise
        print(f"restored {reply.points} points of {first.header.collection!r} (taken {first.header.created_at}) into "
              f"{args.collection!r} in {time.perf_counter() - started:.1f} s")

    try:
        return call("snapshot restore", args.target, go)
    finally:
        f.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="snapshot a collection while it serves, or restore one",
                       description="create: a consistent snapshot of a collection (or an alias's collection) while it "
                       "keeps serving, written to a file: the schema and recorded models, then every point with its "
                       "vectors and payload (embedded engine: a short write barrier, flush and copy of the shard; a "
                       "Qdrant server: read while serving). restore: into a new collection, nothing re-embedded.")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = psub.add_parser("create", help="write a snapshot file")
    c.add_argument("collection")
    c.add_argument("--out", help=f"file (default {DEFAULT_DIR}/<collection>-<UTC timestamp>.snapshot)")
    c.set_defaults(func=_create)
    r = psub.add_parser("restore", help="restore a snapshot file into a new collection")
    r.add_argument("file")
    r.add_argument("--collection", required=True, help="the new collection (must not exist)")
    r.set_defaults(func=_restore)
    for q in (c, r):
        q.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
        connection_help(q)
