"""`searchctl bench gil`: what Qdrant Edge holding Python's GIL costs the retrieval service.

qdrant-edge-py 0.9.0 keeps the GIL for the whole of every call (a query, an upsert), so the
retrieval process runs one engine call at a time, whatever the cores, and the rest of the
process (gRPC, the embedder's Python side) waits meanwhile. This measures it through the
running retrieval service, Retrieve (hybrid, the default fusion, top 100, query cache off so
every request embeds its query), on two collections made once and optimized offline
(services/cli/bench/prepared.py): A (``--points``, 100k) and B (``--small-points``):

* A at 1, 4 and 8 closed-loop clients: QPS, p50/p95, the process's CPU use (cores) and the
  share of wall time the engine's calls held the process
  (``search_retrieval_engine_held_seconds``: near 1, the GIL is held by engine calls nearly all
  the time and more clients cannot help), beside the share of time in store calls including
  their waits (``search_retrieval_qdrant_seconds``; above 1 when calls queue);
* B at one client alone, then while A has 8 clients in the same process, then while A's 8
  clients load another retrieval process (B served by a process of its own: the same CPU
  contention without the shared GIL), to tell whether one collection's queries block
  another's through the GIL or only through the CPU;
* the same with ``EDGE_QUERY_BATCHING`` on (concurrent queries of a collection combined into
  one engine call) when ``--batching`` says so.

Each step runs ``--seconds``; the load average is recorded before and after each. No figure
is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from search.v1 import common_pb2, retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc
from services.cli.bench.harness import REPO, _grpc_options, _scrape, _write_json, load_corpus, machine_info, process_cpu_seconds
from services.cli.bench.prepared import prepared
from services.cli.procs import ServiceProcs

BIG, SMALL = "bench_gil_a", "bench_gil_b"
ENGINE_SECONDS = "search_retrieval_qdrant_seconds_sum"
HELD_SECONDS = "search_retrieval_engine_held_seconds_total"


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _load(address: str, collection: str, queries: list[str], clients: int, seconds: float,
                offset: int = 0) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        await channel.channel_ready()
        deadline = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal errors
            i = offset + k
            while time.perf_counter() < deadline:
                request = pb.RetrieveRequest(collection=collection, query=queries[i % len(queries)], limit=100,
                                             mode=common_pb2.RETRIEVAL_MODE_HYBRID)
                started = time.perf_counter()
                try:
                    await stub.Retrieve(request, timeout=60)
                    latencies.append((time.perf_counter() - started) * 1000)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - started
    xs = np.asarray(latencies or [math.nan])
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": errors,
            "qps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(xs, 50)), 1),
            "p95_ms": round(float(np.percentile(xs, 95)), 1)}


def _step(procs: ServiceProcs, loads: list[tuple[ServiceProcs, str, int, int]], queries: list[str], seconds: float) -> list[dict]:
    """Run the loads at once; each row with its process's CPU (cores) and engine-call share."""
    def figures(p: ServiceProcs) -> tuple[float, float]:
        text = _scrape(p.metrics_url("retrieval"))
        return _metric_sum(text, ENGINE_SECONDS), _metric_sum(text, HELD_SECONDS)

    before = [(p, process_cpu_seconds(p.pid("retrieval")), *figures(p)) for p, *_ in loads]
    load_avg = [round(x, 2) for x in os.getloadavg()]

    async def together():
        return await asyncio.gather(*(_load(p.address("retrieval"), c, queries, n, seconds, offset)
                                      for p, c, n, offset in loads))

    started = time.perf_counter()
    rows = asyncio.run(together())
    wall = time.perf_counter() - started
    for row, (p, cpu0, engine0, held0), (_, collection, *_rest) in zip(rows, before, loads):
        engine1, held1 = figures(p)
        row["collection"] = collection
        row["process_cpu_cores"] = round((process_cpu_seconds(p.pid("retrieval")) - cpu0) / wall, 2)
        row["store_call_share"] = round((engine1 - engine0) / wall, 2)  # waits for the shard included
        row["gil_held_share"] = round((held1 - held0) / wall, 2)  # inside engine calls only
        row["load_avg_before"] = load_avg
    return rows


def _variant(args, queries: list[str], batching: bool) -> dict[str, Any]:
    env = {"RETRIEVAL_QUERY_CACHE_SIZE": "0", "EDGE_OPTIMIZE_AFTER_POINTS": "0",
           "EDGE_QUERY_BATCHING": "true" if batching else "false"}
    root = Path(args.data_dir)
    live = prepared(root, {BIG: args.points, SMALL: args.small_points}, True, args)
    other = prepared(root / "second", {SMALL: args.small_points}, True, args)
    out: dict[str, Any] = {"batching": batching}
    with ServiceProcs(live) as first, ServiceProcs(other) as second:
        first.start("retrieval", env, wait=False)
        second.start("retrieval", env, wait=False)
        first.wait("retrieval", timeout=600)
        second.wait("retrieval", timeout=600)
        for p in (first, second):  # warm up: first queries load pages and the embedder
            asyncio.run(_load(p.address("retrieval"), SMALL, queries, 2, 3.0))
        asyncio.run(_load(first.address("retrieval"), BIG, queries, 2, 3.0))
        out["clients"] = []
        for n in args.clients:
            row = _step(first, [(first, BIG, n, 0)], queries, args.seconds)[0]
            out["clients"].append(row)
            print(f"  batching={batching} A {n} clients: {row}", flush=True)
        small_alone = _step(first, [(first, SMALL, 1, 5000)], queries, args.seconds)[0]
        same = _step(first, [(first, BIG, 8, 0), (first, SMALL, 1, 5000)], queries, args.seconds)
        separate = _step(first, [(first, BIG, 8, 0), (second, SMALL, 1, 5000)], queries, args.seconds)
        out["cross"] = {"small_alone": small_alone, "same_process": {"big": same[0], "small": same[1]},
                        "separate_process": {"big": separate[0], "small": separate[1]}}
        print(f"  batching={batching} B alone {small_alone['p50_ms']}/{small_alone['p95_ms']} ms; beside A, same "
              f"process {same[1]['p50_ms']}/{same[1]['p95_ms']} ms; own process {separate[1]['p50_ms']}/"
              f"{separate[1]['p95_ms']} ms", flush=True)
    return out


def bench_gil(args: argparse.Namespace) -> int:
    args.clients = [int(x) for x in str(args.clients).split(",")]
    queries: list[str] = []
    for folder in (Path(args.dataset), Path(args.dataset).parent / "cranfield"):
        corpus = load_corpus(folder, max_docs=1)
        queries += corpus.queries if corpus else []
    if not queries:
        print(f"searchctl bench gil: skipped: no BEIR queries under {args.dataset}")
        return 0
    queries = list(dict.fromkeys(queries))
    report: dict[str, Any] = {"machine": machine_info(), "config": {
        "points": args.points, "small_points": args.small_points, "seconds": args.seconds, "clients": args.clients,
        "request": "Retrieve, hybrid (default fusion), limit 100, query cache off", "distinct_queries": len(queries)}}
    print(f"machine: {report['machine']}", flush=True)
    report["variants"] = [_variant(args, queries, batching) for batching in args.batching]
    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(format_report(report))
    _write_json(args.json, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    out = ["| query batching | collection | clients | QPS | p50 ms | p95 ms | process CPU (cores) | GIL held by engine calls "
           "| in store calls, waits included |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in report["variants"]:
        for r in v["clients"]:
            out.append(f"| {'on' if v['batching'] else 'off'} | A | {r['clients']} | {r['qps']} | {r['p50_ms']} | "
                       f"{r['p95_ms']} | {r['process_cpu_cores']} | {r['gil_held_share']} | {r['store_call_share']} |")
    out += ["", "| query batching | B (1 client) | B p50 / p95 ms | B QPS | A (8 clients) QPS meanwhile |", "|---|---|---:|---:|---:|"]
    for v in report["variants"]:
        c = v["cross"]
        rows = [("alone", c["small_alone"], None), ("beside A, same process", c["same_process"]["small"], c["same_process"]["big"]),
                ("beside A, own process", c["separate_process"]["small"], c["separate_process"]["big"])]
        for name, small, big in rows:
            out.append(f"| {'on' if v['batching'] else 'off'} | {name} | {small['p50_ms']} / {small['p95_ms']} | {small['qps']} | "
                       f"{big['qps'] if big else '—'} |")
    return "\n".join(out)


def register(bsub: argparse._SubParsersAction, default_dataset: str) -> None:
    p = bsub.add_parser("gil", help="what Qdrant Edge holding the GIL costs the retrieval service: QPS at 1/4/8 "
                        "clients, one collection's queries beside another's", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=default_dataset, help="BEIR folder: queries, real vectors (default %(default)s)")
    p.add_argument("--points", type=int, default=100_000, help="points of collection A (default %(default)s)")
    p.add_argument("--small-points", type=int, default=10_000, help="points of collection B (default %(default)s)")
    p.add_argument("--clients", default="1,4,8", help="client counts on A (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each step (default %(default)s)")
    p.add_argument("--batching", type=lambda s: [x.strip() in ("on", "true", "1") for x in s.split(",")], default=[False],
                   help="EDGE_QUERY_BATCHING values to measure, e.g. off,on (default off)")
    p.add_argument("--data-dir", default=str(REPO / ".data" / "bench-gil"), help="where the collections are made once")
    p.add_argument("--cache-dir", default=".data/bench-scale/cache", help="embedding cache (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=bench_gil)
