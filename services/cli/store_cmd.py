"""`searchctl store`: offline maintenance of the embedded engine's data directory.

Run these with the retrieval service stopped: Qdrant Edge locks each shard's write-ahead
log, so a running service makes them fail at once (and the message says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tqdm import tqdm

DEFAULT_PATH = os.environ.get("QDRANT_PATH", ".data/qdrant")


def _import_local(args: argparse.Namespace) -> int:
    from services.common.errors import ServiceError
    from services.common.status import status_message
    from services.retrieval.backends.edge import EdgeBackend
    from services.retrieval.backends.legacy_local import import_legacy, legacy_collections

    names = legacy_collections(args.path)
    if not names:
        print(f"no data of the old local-mode store under {args.path}; nothing to import")
        return 0
    try:
        target = EdgeBackend(args.target or args.path)
    except ServiceError as exc:
        print(f"searchctl store: {status_message(exc)}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    try:
        with tqdm(unit="points", desc="importing", disable=not sys.stderr.isatty()) as bar:
            copied = import_legacy(args.path, target, progress=lambda _name, n: bar.update(n))
    finally:
        target.close()
    for name in names:
        if name in copied:
            print(f"imported {name!r}: {copied[name]} points (vectors and payloads copied, nothing re-embedded)")
        else:
            print(f"skipped {name!r}: a collection of that name is already in the embedded engine")
    print(f"done in {time.perf_counter() - started:.1f} s. The old files ({args.path}/meta.json, "
          f"{args.path}/collection/) are left in place; remove them once you have checked the import.")
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from services.common.errors import ServiceError
    from services.common.status import status_message
    from services.retrieval.backends.edge import EdgeBackend

    from services.common.config import load
    from services.retrieval.config import RetrievalConfig

    try:  # the EDGE_* settings of the environment, as the service would read them
        backend = EdgeBackend(args.path, tuning=load(RetrievalConfig, environ=os.environ).shard_tuning())
    except (ServiceError, ValueError) as exc:
        print(f"searchctl store: {status_message(exc) if isinstance(exc, ServiceError) else exc}", file=sys.stderr)
        return 1
    try:
        names = args.collection or backend.list_collections()
        for name in names:
            started = time.perf_counter()
            before = backend.stats(name)
            backend.optimize(name)
            after = backend.stats(name)
            print(f"{name}: {before.segments} -> {after.segments} segments, {after.points} points, "
                  f"{after.indexed_vectors} indexed vectors, {time.perf_counter() - started:.1f} s")
    finally:
        backend.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="maintain the embedded engine's data (retrieval stopped)",
                       description="Offline maintenance of the embedded Qdrant Edge data directory. "
                       "Stop the retrieval service first: the engine locks its files.")
    ssub = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    i = ssub.add_parser("import-local", help="copy data of the old local-mode store into Qdrant Edge",
                        description="Copy every collection that qdrant-client's local mode (the embedded store "
                        "before Qdrant Edge) wrote under PATH into Qdrant Edge collections: points with their "
                        "vectors and payloads, nothing re-embedded. Existing Edge collections are never overwritten.")
    i.add_argument("--path", default=DEFAULT_PATH, help="the old data directory (default: $QDRANT_PATH or .data/qdrant)")
    i.add_argument("--target", help="the Edge data directory (default: the same directory)")
    i.set_defaults(func=_import_local)
    o = ssub.add_parser("optimize", help="merge segments and build the HNSW graphs",
                        description="Run Qdrant Edge's optimizers on the collections, in place: merge segments and "
                        "build the HNSW index of segments past the indexing threshold, with the EDGE_* settings of "
                        "the environment. The engine holds the process while it runs (CPU minutes per 100k points, "
                        "docs/BENCHMARKS.md), which is why the running service builds in a child process on a copy "
                        "instead; offline there is no copy, so it needs less disk.")
    o.add_argument("--path", default=DEFAULT_PATH, help="the data directory (default: $QDRANT_PATH or .data/qdrant)")
    o.add_argument("--collection", action="append", help="only this collection (repeatable; default: all)")
    o.set_defaults(func=_optimize)
