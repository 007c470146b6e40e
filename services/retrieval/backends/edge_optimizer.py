"""Child process that optimizes a copy of a Qdrant Edge shard (merges segments, builds the
HNSW graphs past the indexing threshold).

qdrant-edge-py 0.9.0 holds Python's GIL for the whole of ``optimize()`` (about 90 s per 100k
384-d points on 2 cores), so the serving process never calls it: ``EdgeBackend`` copies the
shard, runs this module on the copy, replays the writes made meanwhile and swaps the copy
in (services/retrieval/backends/edge.py, ``optimize_in_background``).

    python -m services.retrieval.backends.edge_optimizer SHARD_DIR DENSE_DIM SPARSE(0|1)
"""

from __future__ import annotations

import json
import os
import sys
import time

import qdrant_edge as qe


def main(argv: list[str]) -> int:
    path, dimension, sparse = argv[0], int(argv[1]), argv[2] == "1"
    try:
        os.nice(10)  # serving comes first
    except OSError:
        pass
    config = qe.EdgeConfig(
        vectors={"dense": qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={"sparse": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if sparse else None,
        max_search_threads=1,
    )
    started = time.perf_counter()
    shard = qe.EdgeShard.load(path, config)
    shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "points": info.points_count,
                      "segments": info.segments_count, "indexed_vectors": info.indexed_vectors_count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
