"""`searchctl bench frontier`: NDCG@10 on the SciFact test queries against Search p50 for
rerank depths and reranker max lengths; a PNG plot of the frontier."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from search.v1 import search_service_pb2_grpc as pb_grpc
from services.cli import beir
from services.cli.bench.harness import (
    REPO,
    E2EMode,
    Stack,
    _grpc_options,
    _print_machine,
    _search_request,
    _skip,
    _write_json,
    common,
    load_corpus,
    machine_info,
    pareto,
    plot_frontier,
    stack_opts,
)
from services.cli.evaluate import compute_metrics, percentile, select_queries



def _bench_frontier(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    corpus = load_corpus(dataset, max_docs=args.docs)
    if corpus is None:
        return _skip("frontier", dataset)
    try:
        queries = beir.load_queries(dataset)
        qrels = beir.load_qrels(dataset, args.split)
    except (beir.DatasetError, OSError) as exc:
        print(f"searchctl bench frontier: {exc}", file=sys.stderr)
        return 2
    chosen = select_queries(queries, qrels, args.max_queries)
    qrels_used = {q: qrels[q] for q in chosen}
    depths = [int(x) for x in args.depths.split(",")]
    lengths = [int(x) for x in args.max_lengths.split(",")]
    info = machine_info()
    _print_machine(info)
    print(f"{dataset.name}/{args.split}: {len(chosen)} judged queries (first {args.max_queries or 'all'} in file order); "
          f"depths {depths}; reranker max lengths {lengths}")
    points: list[dict[str, Any]] = []
    # Generous reranking time: the frontier measures quality at every depth, not timeouts.
    gateway_env = {"GATEWAY_RERANK_TIMEOUT_SECONDS": "600", "GATEWAY_DEFAULT_DEADLINE_SECONDS": "900"}
    with Stack(args, corpus, gateway_env) as stack:
        def run(mode: E2EMode) -> dict[str, Any]:
            run_, lat, degraded = asyncio.run(_sequential_search(stack, chosen, mode))
            m = compute_metrics(run_, qrels_used)
            return {"ndcg@10": m["ndcg@10"], "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
                    "degraded": degraded, "queries": len(lat)}

        base = run(E2EMode("search", 0))
        points.append({"max_length": 0, "depth": 0, **base})
        print(f"  no rerank:               NDCG@10 {base['ndcg@10']:.4f}  p50 {base['p50_ms']:7.1f} ms  p95 {base['p95_ms']:7.1f} ms")
        for length in lengths:
            stack.restart_reranker({"RERANKER_MAX_LENGTH": str(length)})
            for depth in depths:
                point = run(E2EMode(f"rerank{depth}", depth))
                points.append({"max_length": length, "depth": depth, **point})
                print(f"  max_length {length:>3}, depth {depth:>3}: NDCG@10 {point['ndcg@10']:.4f}  p50 {point['p50_ms']:7.1f} ms  "
                      f"p95 {point['p95_ms']:7.1f} ms" + (f"  DEGRADED {point['degraded']}" if point["degraded"] else ""), flush=True)
    print("\nPareto frontier (no slower point has a higher NDCG@10):")
    for p in pareto(points):
        label = "no rerank" if not p["depth"] else f"max_length {p['max_length']}, depth {p['depth']}"
        print(f"  {label:<28} NDCG@10 {p['ndcg@10']:.4f}  p50 {p['p50_ms']:.0f} ms")
    if args.png:
        plot_frontier(points, Path(args.png), f"{dataset.name} {args.split}, {len(chosen)} queries; {info['cpu']}, {info['cores']} cores")
        print(f"wrote {args.png}")
    _write_json(args.json, {"machine": info, "queries": len(chosen), "split": args.split, "points": points,
                            "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


async def _sequential_search(stack: Stack, queries: Mapping[str, str], mode: E2EMode):
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    degraded = 0
    async with grpc.aio.insecure_channel(stack.procs.address("gateway"), options=_grpc_options()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await stub.Search(_search_request(stack.collection, "warm up", mode), timeout=900)
        for qid, text in queries.items():
            start = time.perf_counter()
            reply = await stub.Search(_search_request(stack.collection, text, mode, top_k=10), timeout=900)
            latencies.append((time.perf_counter() - start) * 1000.0)
            degraded += int(reply.degraded)
            n = len(reply.results)
            run[qid] = {r.id: float(n - rank) for rank, r in enumerate(reply.results)}
    return run, latencies, degraded


def register(bsub: argparse._SubParsersAction) -> None:
    f = bsub.add_parser("frontier", help="NDCG@10 vs Search p50 for rerank depth x max length; PNG plot")
    common(f)
    stack_opts(f)
    f.add_argument("--split", default="test")
    f.add_argument("--max-queries", type=int, default=100, help="first N judged queries, 0 = all (default %(default)s)")
    f.add_argument("--depths", default="10,20,50,100", help="rerank candidates (default %(default)s)")
    f.add_argument("--max-lengths", default="128,256,512", help="RERANKER_MAX_LENGTH values (default %(default)s)")
    f.add_argument("--png", default=str(REPO / "docs" / "frontier.png"), help="plot file (default docs/frontier.png; '' = none)")
    f.set_defaults(func=_bench_frontier)
