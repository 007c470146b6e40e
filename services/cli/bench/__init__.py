"""`searchctl bench rerank|embed|e2e|profile|frontier|scale|serve-build|gil|fairness`: what the services cost on top of the models.

Every benchmark starts its own servers on free loopback ports (services/cli/procs.py),
uses realistic text from a BEIR dataset (SciFact by default:
``../shared/datasets/scifact``; skipped with a message when absent), prints figures and
ratios measured in the same run, and can write them as JSON. None of them asserts a time.

* :mod:`~services.cli.bench.harness`: what the benchmarks share: machine line, datasets,
  JSON output, the process stack (services with SciFact ingested), open-loop load and rate
  search, percentiles, raw-model limits, the py-spy profiler, the frontier plot.
* :mod:`~services.cli.bench.rerank`: the reranker against raw ONNX Runtime, with and
  without cross-request batching.
* :mod:`~services.cli.bench.embed`: ``searchctl ingest`` documents/s against raw batched
  embedding.
* :mod:`~services.cli.bench.e2e`: open-loop load against the gateway; the highest arrival
  rate under the p95 objective (with :mod:`~services.cli.bench.peers`: raw limits, caches,
  the LanceDB peer).
* :mod:`~services.cli.bench.profile`: CPU per query per process and py-spy layers.
* :mod:`~services.cli.bench.frontier`: NDCG@10 against sustained QPS and p95 for the rerank
  policies (never, auto, always at each depth); a PNG plot of the frontier.
* :mod:`~services.cli.bench.scale`: the store alone at 10k-1M points.
* :mod:`~services.cli.bench.fairness`: a caller at 10x its quota and one flooding the in-flight
  cap beside a steady caller: its success rate and p95 against unloaded.
* :mod:`~services.cli.bench.serve_build`: Search through a background build and swap.
* :mod:`~services.cli.bench.gil`: what Qdrant Edge holding the GIL costs the retrieval service.

Machine-dependent: read the figures together with the machine line each bench prints
(CPU model, cores, load average).

Each benchmark module registers its own subcommand; :func:`register` adds ``bench`` and
them, in this order. Callers import what they need from the module that defines it.
"""

from __future__ import annotations

import argparse

from services.cli.bench import e2e, embed, fairness, frontier, gil, profile, rerank, scale, serve_build
from services.cli.bench.harness import DEFAULT_DATASET


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmarks: reranker and embedder against the raw model, end-to-end load, quality/latency frontier",
        description="Benchmarks that start their own servers on free loopback ports and print figures and ratios "
        "measured in the same run (docs/BENCHMARKS.md).",
    )
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    rerank.register(bsub)
    embed.register(bsub)
    e2e.register(bsub)
    profile.register(bsub, str(DEFAULT_DATASET))  # where the CPU goes per process
    frontier.register(bsub)
    scale.register(bsub, str(DEFAULT_DATASET))  # the store alone at 10k-1M points
    fairness.register(bsub)  # callers: quotas and fair shares under overload
    serve_build.register(bsub, str(DEFAULT_DATASET))  # Search through a background build and swap
    gil.register(bsub, str(DEFAULT_DATASET))  # what the engine's GIL costs the retrieval service
