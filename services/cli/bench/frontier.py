"""`searchctl bench frontier`: NDCG@10 against sustained QPS and p95 for the rerank policies
(never, auto, always at each depth) through the running services, with the raw model limits
of the same run; a PNG plot of the frontier.

Per dataset, on one stack with the collection ingested and its fusion calibrated:

* quality: every judged query once per configuration, sequentially (NDCG@10 with pytrec_eval,
  per-query deltas against ``always`` at depth 10 with their paired standard error, the share
  of queries the configuration reranked, unloaded p50/p95);
* throughput: ``--clients`` closed-loop clients for ``--seconds`` per configuration over the
  dataset's queries (judged or not) in a shuffled order, so no two requests of a step repeat:
  completed QPS, p50, p95, errors, the share reranked under load and the decisions' reasons
  (under load ``auto`` serves some near-ties from the first stage: ``auto_busy``), and NDCG@10 of
  the judged queries the load served against the same queries in the sequential pass;
* the raw limits around it: the cross-encoder (one pair per batch, one batch per core, passages
  of the corpus) and the bi-encoder (one query per call, one call per core), measured before the
  first configuration and after the last, with the load average.

The services' three caches are off (query embeddings, rerank scores, Search results), so every
configuration pays its full cost whatever ran before it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli import beir
from services.cli.bench.harness import (
    REPO,
    Stack,
    _bi_encoder,
    _cross_encoder,
    _grpc_options,
    _print_machine,
    _rerank_config,
    _retrieval_config,
    _skip,
    _write_json,
    common,
    load_corpus,
    machine_info,
    measure_limit_cpu,
    stack_opts,
)
from services.cli.evaluate import load_judged, percentile, wait_for_calibration
from services.common import config as cfg
from services.gateway.config import GatewayConfig
from services.reranker.config import RerankerConfig
from services.retrieval.config import RetrievalConfig

#: Caches off: a configuration must not be served by what an earlier one computed.
NO_CACHES = {"retrieval": {"RETRIEVAL_QUERY_CACHE_SIZE": "0"}, "reranker": {"RERANKER_SCORE_CACHE_SIZE": "0"},
             "gateway": {"GATEWAY_RESULT_CACHE_SIZE": "0"}}
#: Generous reranking time: the frontier measures quality at every depth, not timeouts.
GATEWAY_ENV = {"GATEWAY_RERANK_TIMEOUT_SECONDS": "600", "GATEWAY_DEFAULT_DEADLINE_SECONDS": "900"}
REFERENCE = "always@10"


@dataclass(frozen=True)
class Config:
    """One point of the frontier: a rerank policy and, for ``always``, its depth."""

    policy: str
    depth: int = 0

    @property
    def label(self) -> str:
        return f"always@{self.depth}" if self.policy == "always" else self.policy

    def request(self, collection: str, query: str, top_k: int = 10) -> pb.SearchRequest:
        request = pb.SearchRequest(collection=collection, query=query, top_k=top_k)
        request.rerank.policy = {"never": pb.RERANK_POLICY_NEVER, "auto": pb.RERANK_POLICY_AUTO,
                                 "always": pb.RERANK_POLICY_ALWAYS}[self.policy]
        if self.depth:
            request.rerank.candidates = self.depth
        return request


def parse_configs(policies: str, depths: str) -> list[Config]:
    """``"never,auto,always"`` x ``"5,10,20"`` -> never, auto, always@5, always@10, always@20."""
    out: list[Config] = []
    for name in (p.strip() for p in policies.split(",") if p.strip()):
        if name == "always":
            out.extend(Config("always", int(d)) for d in depths.split(",") if d.strip())
        elif name in ("never", "auto"):
            out.append(Config(name))
        else:
            raise ValueError(f"unknown policy {name!r}: use never, auto or always")
    if not out:
        raise ValueError("no configurations")
    return out


def raw_limits(corpus, queries: Sequence[str]) -> dict[str, float]:
    """Cross-encoder pairs/s and bi-encoder queries/s, one item per call, one call per core."""
    cores = os.cpu_count() or 1
    ce = _cross_encoder(_rerank_config(), 1)
    pairs = ce.tokenize_pairs([(queries[i % len(queries)], corpus.passages[i % len(corpus.passages)]) for i in range(16 * cores)])
    be = _bi_encoder(_retrieval_config(), 1)
    encoded = be.tokenize_queries(list(queries[: 64 * cores]))
    return {"cross_encoder_pairs_per_s": round(measure_limit_cpu(ce.infer, pairs, [1], cores)[1][0], 1),
            "bi_encoder_queries_per_s": round(measure_limit_cpu(be.infer, encoded, [1], cores)[1][0], 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def per_query_ndcg(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    import pytrec_eval

    judged = {q: dict(qrels[q]) for q in run}
    out = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"}).evaluate({q: dict(r) for q, r in run.items()})
    return {q: out.get(q, {}).get("ndcg_cut_10", 0.0) for q in run}


def paired_delta(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float]:
    d = [a[q] - b[q] for q in a]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else 0.0
    return mean, se


async def quality_pass(stub, collection: str, queries: Mapping[str, str], config: Config):
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    reranked = degraded = 0
    for qid, text in queries.items():
        start = time.perf_counter()
        reply = await stub.Search(config.request(collection, text), timeout=900)
        latencies.append((time.perf_counter() - start) * 1000.0)
        reranked += int(reply.reranked)
        degraded += int(reply.degraded)
        run[qid] = ranking(reply)
    return run, latencies, reranked, degraded


def ranking(reply: pb.SearchResponse) -> dict[str, float]:
    return {r.id: float(len(reply.results) - rank) for rank, r in enumerate(reply.results)}


async def throughput_pass(stub, collection: str, texts: Sequence[str], config: Config, clients: int, seconds: float,
                          start_at: int, judged: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``; queries taken in order from ``start_at``.
    ``judged`` (text -> query id): the rankings of those queries served under load go in ``run``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    reasons: dict[str, int] = {}
    reranked = 0
    run: dict[str, dict[str, float]] = {}
    next_index = start_at
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal next_index
        while time.perf_counter() < deadline:
            text = texts[next_index % len(texts)]
            next_index += 1
            start = time.perf_counter()
            try:
                reply = await stub.Search(config.request(collection, text), timeout=900)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)
            nonlocal reranked
            reranked += int(reply.reranked)
            reason = pb.RerankReason.Name(reply.rerank_decision.reason).removeprefix("RERANK_REASON_").lower()
            reasons[reason] = reasons.get(reason, 0) + 1
            if judged and text in judged and judged[text] not in run:
                run[judged[text]] = ranking(reply)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return {"qps": round(len(latencies) / elapsed, 2), "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1), "completed": len(latencies), "errors": errors,
            "queries_used": next_index - start_at, "share_reranked": round(reranked / max(1, len(latencies)), 3),
            "reasons": reasons, "run": run}


async def measure_dataset(stack: Stack, chosen: Mapping[str, str], qrels, texts: Sequence[str], configs: Sequence[Config],
                          args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    used = 0
    judged = {text: qid for qid, text in chosen.items()}
    async with grpc.aio.insecure_channel(stack.procs.address("gateway"), options=_grpc_options()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await stub.Search(configs[0].request(stack.collection, "warm up"), timeout=900)
        for config in configs:
            run, lat, reranked, degraded = await quality_pass(stub, stack.collection, chosen, config)
            load = await throughput_pass(stub, stack.collection, texts, config, args.clients, args.seconds, used, judged)
            used += load["queries_used"]
            ndcg = per_query_ndcg(run, qrels)
            loaded = per_query_ndcg(load.pop("run"), qrels) if load["run"] else {}
            if loaded:  # the same queries, served under load and sequentially
                load["judged_served"] = len(loaded)
                load["ndcg@10_judged"] = round(sum(loaded.values()) / len(loaded), 4)
                load["ndcg@10_same_queries_sequential"] = round(sum(ndcg[q] for q in loaded) / len(loaded), 4)
            point = {"config": config.label, "policy": config.policy, "depth": config.depth,
                     "ndcg@10": round(sum(ndcg.values()) / len(ndcg), 4), "per_query": ndcg,
                     "share_reranked": round(reranked / len(chosen), 3), "degraded": degraded,
                     "unloaded_p50_ms": round(percentile(lat, 50), 1), "unloaded_p95_ms": round(percentile(lat, 95), 1),
                     "load": load, "load_avg": [round(x, 2) for x in os.getloadavg()]}
            points.append(point)
            print(f"  {config.label:<10} NDCG@10 {point['ndcg@10']:.4f}  reranked {point['share_reranked']:6.1%}  "
                  f"unloaded p50 {point['unloaded_p50_ms']:7.1f} ms  | {args.clients} clients: {load['qps']:7.2f} QPS, "
                  f"p50 {load['p50_ms']:7.1f} ms, p95 {load['p95_ms']:7.1f} ms, errors {sum(load['errors'].values())}"
                  + (f"  DEGRADED {degraded}" if degraded else ""), flush=True)
            reasons = ", ".join(f"{r} {n / max(1, load['completed']):.1%}" for r, n in sorted(load["reasons"].items()))
            print(f"  {'':<10} under load: reranked {load['share_reranked']:.1%} ({reasons})"
                  + (f"; NDCG@10 of the {load['judged_served']} judged queries served {load['ndcg@10_judged']:.4f} "
                     f"(the same sequentially {load['ndcg@10_same_queries_sequential']:.4f})" if loaded else ""), flush=True)
    return points


def summarize(points: list[dict[str, Any]]) -> list[str]:
    """Each configuration against always@10 (NDCG paired delta and SE, QPS ratio) and against never."""
    by = {p["config"]: p for p in points}
    lines = []
    ref, never = by.get(REFERENCE), by.get("never")
    for p in points:
        parts = [f"{p['config']:<10}"]
        if ref is not None and p is not ref:
            d, se = paired_delta(p["per_query"], ref["per_query"])
            ratio = p["load"]["qps"] / ref["load"]["qps"] if ref["load"]["qps"] else math.nan
            parts.append(f"vs {REFERENCE}: NDCG@10 {d:+.4f} (SE {se:.4f}), QPS x{ratio:.1f}")
        if never is not None and p is not never:
            d, se = paired_delta(p["per_query"], never["per_query"])
            parts.append(f"vs never: NDCG@10 {d:+.4f} (SE {se:.4f})")
        if len(parts) > 1:  # the reference itself, with nothing to compare it to, prints nothing
            lines.append("  ".join(parts))
    return lines


def pareto(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points no configuration with at least their QPS beats on NDCG@10, fastest first."""
    out, best = [], -math.inf
    for p in sorted(points, key=lambda p: (-p["load"]["qps"], -p["ndcg@10"])):
        if p["ndcg@10"] > best:
            out.append(p)
            best = p["ndcg@10"]
    return out


def plot_frontier(series: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.5), dpi=120, squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        for p in points:
            marker = {"never": "s", "auto": "*"}.get(p["policy"], "o")
            ax.scatter([p["load"]["qps"]], [p["ndcg@10"]], marker=marker, s=90 if marker == "*" else 40, zorder=3)
            ax.annotate(f"{p['config']}\np95 {p['load']['p95_ms']:.0f} ms", (p["load"]["qps"], p["ndcg@10"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = pareto(points)
        ax.plot([p["load"]["qps"] for p in front], [p["ndcg@10"] for p in front], linestyle=":", color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("sustained Search QPS (closed loop, log scale)")
        ax.set_ylabel("NDCG@10")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Quality vs throughput of the rerank policies (auto: the default on CPU)", fontsize=11)
    fig.text(0.5, 0.005, subtitle, ha="center", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _bench_frontier(args: argparse.Namespace) -> int:
    try:
        configs = parse_configs(args.policies, args.depths)
    except ValueError as exc:
        print(f"searchctl bench frontier: {exc}", file=sys.stderr)
        return 2
    info = machine_info()
    _print_machine(info)
    # Settings given to the services through the environment (e.g. GATEWAY_AUTO_RERANK_MAX_IN_FLIGHT for an A/B).
    declared = {env for cls in (GatewayConfig, RetrievalConfig, RerankerConfig) for env in cfg.env_names(cls)}
    settings = {k: v for k, v in sorted(os.environ.items()) if k in declared}
    if settings:
        print(f"services' settings from the environment: {settings}")
    results: dict[str, Any] = {"machine": info, "clients": args.clients, "seconds": args.seconds, "env": settings,
                               "datasets": {}}
    datasets = [Path(d) for d in args.dataset.split(",")]
    if len(datasets) > 1 and args.data_dir:
        print("searchctl bench frontier: --data-dir keeps one collection; give one --dataset with it", file=sys.stderr)
        return 2
    for dataset in datasets:
        corpus = load_corpus(dataset, max_docs=args.docs)
        if corpus is None:
            return _skip("frontier", dataset)
        if args.png and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
            print("searchctl bench frontier: --png needs matplotlib (the bench dependency group: "
                  "pip install -e '.[bench]'), or pass --png '' for the JSON and the table only", file=sys.stderr)
            return 2
        try:
            queries, qrels, chosen = load_judged(dataset, args.split, args.max_queries)
        except (beir.DatasetError, OSError) as exc:
            print(f"searchctl bench frontier: {exc}", file=sys.stderr)
            return 2
        texts = list(queries.values())
        random.Random(args.seed).shuffle(texts)
        print(f"\n{dataset.name}/{args.split}: {len(chosen)} judged queries; {len(texts)} queries for the load; "
              f"configurations {[c.label for c in configs]}; caches off")
        with Stack(args, corpus, GATEWAY_ENV, env=NO_CACHES) as stack:
            with grpc.insecure_channel(stack.procs.address("gateway"), options=_grpc_options()) as channel:
                wait_for_calibration(pb_grpc.SearchServiceStub(channel), stack.collection, out=sys.stdout)
            before = raw_limits(corpus, texts)
            print(f"raw limits before: {before}")
            points = asyncio.run(measure_dataset(stack, chosen, qrels, texts, configs, args))
            after = raw_limits(corpus, texts)
            print(f"raw limits after:  {after}")
        print("\n".join(summarize(points)))
        for p in points:
            p["qps_per_raw_pair_rate"] = round(p["load"]["qps"] / max(before["cross_encoder_pairs_per_s"],
                                                                      after["cross_encoder_pairs_per_s"]), 4)
        results["datasets"][dataset.name] = {"split": args.split, "queries": len(chosen), "raw_before": before,
                                             "raw_after": after, "points": points}
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    _write_json(args.json, results)
    if args.png:
        plot_frontier({f"{n} {d['split']} ({d['queries']} queries)": d["points"] for n, d in results["datasets"].items()},
                      Path(args.png), f"{info['cpu']}, {info['cores']} cores, {args.clients} clients x {args.seconds:g} s")
        print(f"wrote {args.png}")
    return 0


def register(bsub: argparse._SubParsersAction) -> None:
    f = bsub.add_parser("frontier", help="NDCG@10 vs sustained QPS and p95 of the rerank policies; PNG plot")
    common(f)
    stack_opts(f)
    f.add_argument("--split", default="test")
    f.add_argument("--max-queries", type=int, default=0, help="first N judged queries, 0 = all (default %(default)s)")
    f.add_argument("--policies", default="never,auto,always", help="rerank policies (default %(default)s)")
    f.add_argument("--depths", default="5,10,20", help="depths of the always policy (default %(default)s)")
    f.add_argument("--clients", type=int, default=4, help="closed-loop clients of the throughput step (default %(default)s)")
    f.add_argument("--seconds", type=float, default=30.0, help="length of each throughput step (default %(default)s)")
    f.add_argument("--png", default=str(REPO / "docs" / "frontier.png"), help="plot file (default docs/frontier.png; '' = none)")
    f.set_defaults(func=_bench_frontier)
