"""Child process that optimizes a copy of a Qdrant Edge shard (merges segments, builds the
HNSW graphs past the indexing threshold).

qdrant-edge-py 0.9.0 holds Python's GIL for the whole of ``optimize()`` (minutes at 100k+
384-d points on 2 cores), so the serving process never calls it: ``EdgeBackend`` copies the
shard, runs this module on the copy, replays the writes made meanwhile and swaps the copy
in (``optimize_in_background`` in edge.py; the files in edge_build.py). The copy is opened
with the collection's own shard config (edge_shard.shard_config), as the service opens it.

    python -m services.retrieval.backends.edge_optimizer COPY_DIR SCHEMA_FILE TUNING_JSON

The serving process starts it with a parent-death signal (edge_build.py): it dies with its parent.

Prints one JSON line: seconds, points, segments, indexed vectors, CPU seconds and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import qdrant_edge as qe

from services.retrieval.backends.edge_shard import read_schema, shard_config
from services.retrieval.backends.edge_tuning import ShardTuning

def main(argv: list[str]) -> int:
    path, schema_file, tuning = argv[0], Path(argv[1]), ShardTuning.from_json(argv[2])
    try:
        os.nice(10)  # serving comes first
    except OSError:
        pass
    config = shard_config(read_schema(schema_file), tuning, search_threads=1)
    started = time.perf_counter()
    shard = qe.EdgeShard.load(path, config)
    shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "points": info.points_count,
                      "segments": info.segments_count, "indexed_vectors": info.indexed_vectors_count,
                      "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                      "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
