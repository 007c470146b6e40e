"""`searchctl bench e2e`: load against the gateway, next to the raw model's limit.

For search only and search + rerank (20 and 50 candidates): the gateway's own overhead
(Search p50 minus the p50s of the same Retrieve and Rerank calls made directly), then either
open-loop steps (fixed arrival rate) searching for the highest arrival rate each mode sustains
under its p95 objective (350 ms search only, 900 ms with rerank), or, with ``--clients``,
one closed-loop step per number of clients. Every step reports achieved QPS, p50/p95/p99,
errors, degraded responses, CPU per Search of every process and the caches' hit rates. The
load runs in its own process (:mod:`services.cli.bench.loadgen`); the raw query-embedding
limit is measured right before and right after every step, and a ratio to it is printed only
when the two agree (:mod:`services.cli.bench.limits`). What it measures besides the service
itself (the cross-encoder's limit, caches, the LanceDB peer) is in :mod:`services.cli.bench.peers`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from search.v1 import (
    rerank_service_pb2 as rr_pb,
    rerank_service_pb2_grpc as rr_grpc,
    retrieval_service_pb2 as rt_pb,
    retrieval_service_pb2_grpc as rt_grpc,
    search_service_pb2_grpc as pb_grpc,
)
from services.cli.bench import limits as bench_limits, peers as bench_peers
from services.cli.bench.harness import (
    RETRIEVAL_MODES,
    E2EMode,
    Stack,
    StepResult,
    _fmt_ms,
    _grpc_options,
    _print_machine,
    _retrieval_mode,
    _scrape,
    _search_request,
    _skip,
    _write_json,
    common,
    load_corpus,
    machine_info,
    next_rate,
    open_loop,
    parse_e2e_modes,
    percentile,
    stack_opts,
    sustained,
)
from services.cli.bench.loadgen import LoadGenerator


def paired_overhead_ms(search_ms: Sequence[float], retrieve_ms: Sequence[float], rerank_ms: Sequence[float]) -> float:
    """Median over queries of Search minus the same query's direct Retrieve (and Rerank): what the
    gateway adds. Paired per query, so the spread of the downstream times between queries cancels."""
    return percentile([s - r - k for s, r, k in zip(search_ms, retrieve_ms, rerank_ms, strict=True)], 50)


SEARCH_METHOD = "search.v1.SearchService/Search"


def gateway_time_sums(exposition: str) -> tuple[float, float, float]:
    """From the gateway's /metrics text: seconds spent serving Search, Search calls served, and
    seconds its Search calls spent waiting on downstream calls (all targets and methods)."""

    served = count = downstream = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "search_grpc_server_request_duration_seconds_sum" and labels.get("method") == SEARCH_METHOD:
                served += sample.value
            elif sample.name == "search_grpc_server_request_duration_seconds_count" and labels.get("method") == SEARCH_METHOD:
                count += sample.value
            elif sample.name == "search_gateway_downstream_duration_seconds_sum":
                downstream += sample.value
    return served, count, downstream


def server_side_overhead_ms(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Mean gateway time per Search that is not spent waiting on downstream calls, between two
    scrapes of :func:`gateway_time_sums` (NaN when no Search was served in between)."""
    served, count, downstream = (a - b for a, b in zip(after, before, strict=True))
    return (served - downstream) / count * 1000.0 if count > 0 else math.nan


async def measure_overhead(stack: Stack, queries: Sequence[str], mode: E2EMode, top_k: int = 10) -> dict[str, float]:
    """Sequential calls: Search through the gateway, then the same Retrieve (and Rerank) directly.

    Each query's direct calls are made once, untimed, before its Search: the query embedding
    and the rerank scores are then cached for the Search and for the timed direct calls alike,
    so the difference is the gateway's and not the model's (the direct calls made only after
    the Search found its cache entries and made the model look like gateway overhead)."""
    p = stack.procs
    e2e, retrieve, rerank = [], [], []
    async with grpc.aio.insecure_channel(p.address("gateway"), options=_grpc_options()) as gw, \
            grpc.aio.insecure_channel(p.address("retrieval"), options=_grpc_options()) as rt, \
            grpc.aio.insecure_channel(p.address("reranker"), options=_grpc_options()) as rr:
        search, retrieval, reranker = pb_grpc.SearchServiceStub(gw), rt_grpc.RetrievalServiceStub(rt), rr_grpc.RerankServiceStub(rr)

        async def direct(query: str) -> tuple[float, float]:
            start = time.perf_counter()
            found = await retrieval.Retrieve(
                rt_pb.RetrieveRequest(collection=stack.collection, query=query, limit=max(top_k, mode.candidates),
                                      mode=_retrieval_mode(mode)), timeout=60
            )
            t_retrieve = (time.perf_counter() - start) * 1000.0
            t_rerank = 0.0
            if mode.candidates and found.candidates:
                passages = [f"{c.title}\n{c.text}" if c.title else c.text for c in found.candidates[: mode.candidates]]
                start = time.perf_counter()
                await reranker.Rerank(rr_pb.RerankRequest(query=query, passages=passages), timeout=60)
                t_rerank = (time.perf_counter() - start) * 1000.0
            return t_retrieve, t_rerank

        for i, query in enumerate(queries):
            await direct(query)  # untimed: warms the caches the Search and the timed calls then share
            start = time.perf_counter()
            await search.Search(_search_request(stack.collection, query, mode, top_k), timeout=60)
            t_search = (time.perf_counter() - start) * 1000.0
            t_retrieve, t_rerank = await direct(query)
            if i == 0:
                before = gateway_time_sums(await asyncio.to_thread(_scrape, p.metrics_url("gateway")))
                continue  # first call per channel pays connection set-up
            e2e.append(t_search)
            retrieve.append(t_retrieve)
            rerank.append(t_rerank)
    out = {
        "search_p50_ms": percentile(e2e, 50), "search_p95_ms": percentile(e2e, 95),
        "retrieve_p50_ms": percentile(retrieve, 50), "rerank_p50_ms": percentile(rerank, 50) if mode.candidates else 0.0,
        "calls": len(e2e),
    }
    out["overhead_ms"] = paired_overhead_ms(e2e, retrieve, rerank)
    after = gateway_time_sums(await asyncio.to_thread(_scrape, p.metrics_url("gateway")))
    out["server_overhead_ms"] = server_side_overhead_ms(before, after)
    return out


def held_out(queries: Sequence[str], n: int) -> tuple[list[str], list[str]]:
    """(the queries the load sends, the last ``n`` kept for the raw limit), never the same text."""
    n = min(n, len(queries) // 2)
    return list(queries[: len(queries) - n]), list(queries[len(queries) - n :])


def search_result_hit_line(extra: dict[str, Any]) -> str:
    rate = extra["cache_hit_rates"].get("search_result")
    return ("    Search result cache: no lookups (off)" if rate is None
            else f"    Search result cache hit rate {rate:.1%} (distinct queries: 0% expected)")


class Steps:
    """Runs load steps in the load process, each bracketed by the raw limit (when measured)."""

    def __init__(self, stack: Stack, load: LoadGenerator, probe: bench_limits.LimitProbe | None, timeout: float) -> None:
        self.stack, self.load, self.probe, self.timeout = stack, load, probe, timeout

    def run(self, kind: str, queries: Sequence[str], mode: E2EMode, level: float, seconds: float):
        """(limit before or None, step, per-step extras, limit after or None); ``level`` is the
        arrival rate (open loop) or the number of clients (closed loop)."""
        stack = self.stack

        def step():
            with bench_peers.StepCounters(stack.procs) as counters:
                if kind == "closed":
                    result, load_cpu = self.load.closed(stack.procs.address("gateway"), stack.collection, queries, mode,
                                                        int(level), seconds, self.timeout)
                else:
                    result, load_cpu = self.load.open(stack.procs.address("gateway"), stack.collection, queries, mode,
                                                      level, seconds, self.timeout)
            extra = counters.finish(result.ok)
            extra["cpu_ms_per_query"]["load generator"] = load_cpu / max(result.ok, 1) * 1000.0
            extra["load_avg"] = round(os.getloadavg()[0], 2)
            return result, extra

        if self.probe is None:
            result, extra = step()
            return None, result, extra, None
        before, (result, extra), after = bench_limits.bracketed(self.probe.measure, step)
        return before, result, extra, after


def closed_steps(steps: Steps, mode: E2EMode, clients_list: Sequence[int], queries: Sequence[str], offset: int,
                 seconds: float, max_qps: float) -> tuple[list[dict[str, Any]], int]:
    """One closed-loop step per number of clients; (their JSON rows, the next query offset)."""
    rows = []
    for clients in clients_list:
        step_queries = bench_peers.step_queries(queries, offset, int(max_qps * seconds) + clients, 0.0, 0)
        before, step, extra, after = steps.run("closed", step_queries, mode, clients, seconds)
        offset += step.sent
        s = step.summary
        errors = sum(step.errors.values())
        print(f"  {clients:>3} clients for {step.seconds:5.1f} s: {step.achieved_qps:7.2f} QPS, p50 {_fmt_ms(s['p50_ms'])} "
              f"p95 {_fmt_ms(s['p95_ms'])} p99 {_fmt_ms(s['p99_ms'])} ms, errors {errors}" + (f" {step.errors}" if step.errors else "")
              + f", degraded {step.degraded}; load average {extra['load_avg']:.2f}", flush=True)
        print(bench_peers.describe_step(extra), flush=True)
        print(search_result_hit_line(extra), flush=True)
        row: dict[str, Any] = {"clients": clients, **step.as_dict(), **extra}
        if before is not None and after is not None and not mode.candidates:
            why = ("errors or degraded responses" if errors or step.degraded
                   else f"p95 {s['p95_ms']:.0f} ms is over the {mode.slo_ms:.0f} ms objective")
            ratios, lines = bench_limits.step_ratios(step.achieved_qps, before, after,
                                                     not errors and not step.degraded and s["p95_ms"] <= mode.slo_ms, why)
            raw_cpu = (before.one_cpu_ms + after.one_cpu_ms) / 2
            service_cpu = sum(v for k, v in extra["cpu_ms_per_query"].items() if k != "load generator")
            ratios["cpu_ratio_one"] = raw_cpu / service_cpu if service_cpu > 0 else math.nan
            lines.append(f"    by CPU: the raw model's {raw_cpu:.2f} ms per query over the services' {service_cpu:.2f} ms "
                         f"per Search = {ratios['cpu_ratio_one']:.2f}")
            row.update(ratios)
            print("\n".join(lines), flush=True)
        elif before is not None and after is not None:
            print(bench_limits.describe_limits(before, after), flush=True)
            row.update(limit_before=before.as_dict(), limit_after=after.as_dict())
        rows.append(row)
    return rows, offset


def _bench_e2e(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    corpus = load_corpus(dataset, max_docs=args.docs)
    if corpus is None:
        return _skip("e2e", dataset)
    try:
        modes = parse_e2e_modes(args.modes, args.retrieval_mode)
        clients_list = [int(c) for c in args.clients.split(",")] if args.clients else []
    except ValueError as exc:
        print(f"searchctl bench e2e: {exc}", file=sys.stderr)
        return 2
    info = machine_info()
    _print_machine(info)
    queries = list(corpus.queries)
    random.Random(args.seed).shuffle(queries)
    results: dict[str, Any] = {"machine": info, "modes": {}, "zipf": args.zipf, "clients": clients_list}

    probe = None
    if not args.no_raw_limit:
        queries, limit_queries = held_out(queries, args.limit_queries)
        probe = bench_limits.LimitProbe(limit_queries)
        first = probe.measure()
        results["raw_query_limit_start"] = {**first.as_dict(), "queries": len(limit_queries)}
        print(f"raw query embedding ({len(limit_queries)} held-out queries, {probe.workers} single-threaded calls at once), "
              f"at the start: {first.one:.1f} q/s one per call ({first.one_cpu_ms:.2f} CPU ms each), {first.batched:.1f} q/s "
              f"in batches of {bench_limits.BATCH}; measured again around every step", flush=True)
        if any(m.candidates for m in modes):
            rr = results["raw_rerank_limit"] = bench_peers.raw_rerank_limit(queries, corpus.passages)
            print(f"raw cross-encoder, this run: {rr['pairs_per_s']:.1f} pairs/s ({rr['cpu_ms_per_pair']:.1f} CPU ms each)", flush=True)
    with Stack(args, corpus) as stack, LoadGenerator() as load:
        steps_runner = Steps(stack, load, probe, args.timeout)
        offset = args.overhead_queries + 1  # one sequence over all modes: no step repeats a query (unless --zipf)
        for mode in modes:
            print(f"\n== {mode.name}, retrieval mode {mode.retrieval} (p95 objective {mode.slo_ms:.0f} ms)")
            over = asyncio.run(measure_overhead(stack, queries[: args.overhead_queries + 1], mode))
            print(f"sequential: Search p50 {over['search_p50_ms']:.1f} ms (p95 {over['search_p95_ms']:.1f}); direct Retrieve p50 "
                  f"{over['retrieve_p50_ms']:.1f} ms" + (f", Rerank p50 {over['rerank_p50_ms']:.1f} ms" if mode.candidates else "")
                  + f" -> gateway overhead (median of per-query differences) {over['overhead_ms']:.1f} ms (target <= 3 ms); "
                  f"inside the gateway (its metrics: Search time not spent on downstream calls) {over['server_overhead_ms']:.2f} ms")
            if clients_list:
                print(f"closed loop: {', '.join(map(str, clients_list))} clients in the load process, {args.duration:.0f} s each, "
                      "distinct queries")
                rows, offset = closed_steps(steps_runner, mode, clients_list, queries, offset, args.duration, args.max_qps)
                results["modes"][mode.name] = {"retrieval_mode": mode.retrieval, "slo_p95_ms": mode.slo_ms, "overhead": over,
                                               "closed_loop": rows}
                continue
            steps: list[StepResult] = []
            step_extras: list[dict[str, Any]] = []
            history: list[tuple[float, bool]] = []
            start_rate = args.search_start_rate if not mode.candidates else args.rerank_start_rate
            if over["search_p95_ms"] > mode.slo_ms:
                print(f"unloaded p95 already exceeds {mode.slo_ms:.0f} ms: no arrival rate is sustainable; "
                      f"measuring the lowest rate ({args.min_rate} QPS) only")
                start_rate = args.min_rate
            rate = start_rate
            while rate is not None and len(steps) < args.max_steps:
                seconds = min(max(args.duration, args.min_requests / rate), args.max_step_seconds)
                step_queries = bench_peers.step_queries(queries, offset, max(1, int(round(rate * seconds))), args.zipf, args.seed)
                before, step, extra, after = steps_runner.run("open", step_queries, mode, rate, seconds)
                offset += step.sent
                ok = sustained(step, mode.slo_ms)
                steps.append(step)
                history.append((rate, ok))
                s = step.summary
                print(f"  offered {rate:7.2f} QPS for {step.seconds:5.1f} s: achieved {step.achieved_qps:7.2f} QPS, p50 {_fmt_ms(s['p50_ms'])} "
                      f"p95 {_fmt_ms(s['p95_ms'])} p99 {_fmt_ms(s['p99_ms'])} ms, errors {sum(step.errors.values())}"
                      + (f" {step.errors}" if step.errors else "") + f", degraded {step.degraded} -> {'ok' if ok else 'over'}"
                      f"; load average {extra['load_avg']:.2f}", flush=True)
                print(bench_peers.describe_step(extra), flush=True)
                if before is not None and after is not None:
                    print(bench_limits.describe_limits(before, after), flush=True)
                    extra.update(limit_before=before.as_dict(), limit_after=after.as_dict())
                step_extras.append(extra)
                if over["search_p95_ms"] > mode.slo_ms:
                    break
                rate = next_rate(history, start_rate, args.growth, args.resolution, args.min_rate)
                time.sleep(args.settle)
            best = max(((s, x) for s, x, (_, ok) in zip(steps, step_extras, history) if ok), key=lambda p: p[0].rate, default=None)
            if best is None:
                print(f"-> {mode.name}: no tested rate sustained p95 <= {mode.slo_ms:.0f} ms")
            else:
                s = best[0].summary
                print(f"-> {mode.name}: highest sustained arrival rate {best[0].rate:.2f} QPS (achieved {best[0].achieved_qps:.2f}, "
                      f"p50 {s['p50_ms']:.0f} / p95 {s['p95_ms']:.0f} / p99 {s['p99_ms']:.0f} ms)")
            results["modes"][mode.name] = {
                "retrieval_mode": mode.retrieval,
                "slo_p95_ms": mode.slo_ms, "overhead": over,
                "steps": [{**s.as_dict(), **x} for s, x in zip(steps, step_extras)],
                "max_sustained_qps": best[0].rate if best else 0.0,
            }
            if best is not None and "limit_before" in best[1] and not mode.candidates:
                limit = {k: bench_limits.RawLimit(**best[1][k]) for k in ("limit_before", "limit_after")}
                ratios, lines = bench_limits.step_ratios(best[0].rate, limit["limit_before"], limit["limit_after"], True)
                results["modes"][mode.name].update({k: v for k, v in ratios.items() if k.startswith(("ratio", "refused"))})
                print("   the highest sustained rate against the raw limit around its step:\n" + "\n".join(lines[1:]))
            if best is not None and "raw_rerank_limit" in results and mode.candidates:
                allowed = results["raw_rerank_limit"]["pairs_per_s"] / mode.candidates
                results["modes"][mode.name]["ratio_to_raw_rerank"] = best[0].rate / allowed
                print(f"   = {best[0].rate / allowed:.2f} of the {allowed:.2f} QPS the raw cross-encoder allows at depth {mode.candidates}")
        if args.peer != "none":
            results["peer"] = bench_peers.lancedb_peer(corpus.docs, queries, dataset, Path(args.data_dir) if args.data_dir else None)
            results["service_ndcg@10"] = {}
            for retrieval in ("dense", "hybrid"):
                ndcg = bench_peers.service_ndcg(stack.procs.address("gateway"), stack.collection, dataset, _retrieval_mode(E2EMode("search", 0, retrieval)))
                results["service_ndcg@10"][retrieval] = ndcg
                print(f"our Search ({retrieval}, search only) NDCG@10 on the SciFact test queries: {ndcg:.4f}")
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    _write_json(args.json, results)
    return 0


def register(bsub: argparse._SubParsersAction) -> None:
    x = bsub.add_parser("e2e", help="load against the gateway (open-loop rate search, or closed-loop clients) next to "
                        "the raw query-embedding limit measured around every step")
    common(x)
    stack_opts(x)
    x.add_argument("--modes", default="search,rerank20,rerank50", help="search and/or rerankN (default %(default)s)")
    x.add_argument("--retrieval-mode", default="default", choices=RETRIEVAL_MODES,
                   help="first-stage mode of every Search (default: the server's, hybrid)")
    x.add_argument("--duration", type=float, default=20.0, help="seconds per rate step (default %(default)s)")
    x.add_argument("--min-requests", type=int, default=30, help="at least this many requests per step (default %(default)s)")
    x.add_argument("--max-step-seconds", type=float, default=90.0, help="cap on one step's duration (default %(default)s)")
    x.add_argument("--max-steps", type=int, default=8, help="rate steps per mode (default %(default)s)")
    x.add_argument("--search-start-rate", type=float, default=5.0, help="first rate for search only, QPS (default %(default)s)")
    x.add_argument("--rerank-start-rate", type=float, default=0.5, help="first rate with rerank, QPS (default %(default)s)")
    x.add_argument("--min-rate", type=float, default=0.1, help="lowest rate tried, QPS (default %(default)s)")
    x.add_argument("--growth", type=float, default=1.6, help="rate multiplier while searching upwards (default %(default)s)")
    x.add_argument("--resolution", type=float, default=1.15, help="stop bisecting at this ratio (default %(default)s)")
    x.add_argument("--settle", type=float, default=2.0, help="idle seconds between steps (default %(default)s)")
    x.add_argument("--overhead-queries", type=int, default=40, help="sequential queries for the overhead (default %(default)s)")
    x.add_argument("--timeout", type=float, default=30.0, help="client deadline of one Search, s (default %(default)s)")
    x.add_argument("--zipf", type=float, default=0.0,
                   help="draw queries with this Zipf exponent over the query set (a realistic repeat rate; "
                        "default 0: distinct queries, never repeated, so no cache can answer)")
    x.add_argument("--clients", default="",
                   help="closed loop instead of the open-loop rate search: one step of --duration seconds per number "
                        "of concurrent clients, e.g. 1,16 (default: open loop)")
    x.add_argument("--max-qps", type=float, default=1000.0,
                   help="closed loop: distinct queries prepared per second of a step (default %(default)s)")
    x.add_argument("--limit-queries", type=int, default=384,
                   help="held-out queries (never sent to the service) for the raw limit (default %(default)s)")
    x.add_argument("--no-raw-limit", action="store_true", help="skip the raw query-embedding limit around the steps")
    x.add_argument("--peer", choices=("lancedb", "none"), default="lancedb",
                   help="after the load steps: the same queries through LanceDB in-process (bench extra) and NDCG@10 (default %(default)s)")
    x.set_defaults(func=_bench_e2e)
