"""Collections of synthetic points made once and reused by the benchmarks that run the
services on them (``bench serve-build``, ``bench gil``).

Each collection is created through the retrieval service, so it records the service's model
as a collection written by it would, then filled through the store (``EdgeBackend.upsert``,
no embedding: vectors from services/cli/bench/scale_data.py, payload as ``DocumentStore``
writes it) with the service's default EDGE_* settings, and optionally optimized offline
(``EdgeBackend.optimize``, what ``searchctl store optimize`` does). The result is kept under ``root/pristine-<key>`` and copied (holes
kept) for every run, which may change it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import grpc

from search.v1 import retrieval_service_pb2 as rpb, retrieval_service_pb2_grpc as rpb_grpc
from services.cli.procs import ServiceProcs


def prepared(root: Path, collections: Mapping[str, int], optimize: bool, args: argparse.Namespace) -> Path:
    """A data directory (for QDRANT_PATH) holding ``collections`` (name -> points), copied
    from the pristine one made by the first call with the same arguments."""
    from services.cli.bench.scale_data import SyntheticCorpus, load_real
    from services.retrieval.backends.edge import EdgeBackend
    from services.retrieval.backends.edge_build import copy_shard

    from services.retrieval.config import RetrievalConfig

    # The storage is part of the key: a collection prepared with other EDGE_DENSE_STORAGE keeps it.
    key = ("-".join(f"{name}{n}" for name, n in sorted(collections.items())) + ("-optimized" if optimize else "")
           + f"-{RetrievalConfig().edge_dense_storage}")
    pristine = root / f"pristine-{key}"
    if not (pristine / "complete").exists():
        shutil.rmtree(pristine, ignore_errors=True)
        with ServiceProcs(pristine) as procs:
            procs.start("retrieval", {"EDGE_OPTIMIZE_AFTER_POINTS": "0"}, wait=False)
            procs.wait("retrieval", timeout=600)
            with grpc.insecure_channel(procs.address("retrieval")) as channel:
                stub = rpb_grpc.RetrievalServiceStub(channel)
                for name in collections:
                    stub.CreateCollection(rpb.RetrievalServiceCreateCollectionRequest(name=name), timeout=120)
        real = load_real(Path(args.dataset), Path(args.cache_dir), 0, 50, args.seed)
        synth = SyntheticCorpus(real, args.seed)
        backend = EdgeBackend(pristine / "qdrant", tuning=RetrievalConfig().shard_tuning())  # as the service stores them
        try:
            for offset, (name, points) in enumerate(sorted(collections.items())):
                started = time.perf_counter()
                for start in range(0, points, 1000):  # distinct points per collection
                    backend.upsert(name, synth.batch(offset * 10**8 + start, min(1000, points - start)))
                    if start and start % 100_000 == 0:
                        print(f"  {name}: {start:,} points written ({time.perf_counter() - started:.0f} s)", flush=True)
                if optimize:
                    backend.optimize(name)
        finally:
            backend.close()
        (pristine / "complete").write_text(json.dumps(dict(collections)))
    live = root / "live"
    shutil.rmtree(live, ignore_errors=True)
    copy_shard(pristine / "qdrant", live / "qdrant")
    return live
