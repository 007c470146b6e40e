"""`searchctl bench rerank`: the reranker against raw ONNX Runtime, with and without batching.

(a) The limit: raw ONNX Runtime throughput on the same pairs in this process, length-sorted
batches, best of several batch sizes and of two layouts (one batch at a time on every core,
or one single-threaded batch per core), measured before and after the service runs (the
larger is used); (b) the reranker over gRPC with 1/8/32 closed-loop clients sending 50-pair
and 4-pair requests; (c) the same with ``RERANKER_BATCHING=none`` (no cross-request
batching). Ratios are service/limit; the 1-client p50 is compared with one raw batch of the
same size.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from search.v1 import rerank_service_pb2 as rr_pb, rerank_service_pb2_grpc as rr_grpc
from services.cli.bench.harness import (
    Corpus,
    Profiler,
    ServiceProcs,
    _cross_encoder,
    _fmt_ms,
    _grpc_options,
    _rerank_config,
    _write_json,
    common,
    latency_summary,
    measure_layout,
    open_dataset,
    ort_op_profile,
    percentile,
    process_cpu_seconds,
    raw_layouts,
    show_rates,
    sweep_layouts,
)

RERANK_ROW_KEYS = ("clients", "pairs_per_request", "pairs_per_s", "ratio", "p50_ms", "p95_ms", "p99_ms")


def rerank_row(clients: int, pairs_per_request: int, pairs_per_s: float, limit: float, latencies_ms: Sequence[float]) -> dict:
    """One row of ``bench rerank --json``'s ``service`` / ``naive`` lists."""
    row = {
        "clients": int(clients),
        "pairs_per_request": int(pairs_per_request),
        "pairs_per_s": float(pairs_per_s),
        "ratio": float(pairs_per_s / limit) if limit > 0 else math.nan,
    }
    row.update(latency_summary(latencies_ms))
    return row


def validate_rerank_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``report`` has the documented ``bench rerank --json`` shape."""
    if not isinstance(report, Mapping):
        raise ValueError("the report must be an object")
    limit = report.get("limit_pairs_per_s")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0:
        raise ValueError("limit_pairs_per_s must be a positive number")
    for key in ("service", "naive"):
        rows = report.get(key)
        if not isinstance(rows, list):
            raise ValueError(f"{key} must be a list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or set(row) != set(RERANK_ROW_KEYS):
                raise ValueError(f"{key}[{i}] must have exactly the keys {', '.join(RERANK_ROW_KEYS)}")
            for name in ("clients", "pairs_per_request"):
                if not isinstance(row[name], int) or isinstance(row[name], bool) or row[name] < 1:
                    raise ValueError(f"{key}[{i}].{name} must be a positive integer")
            for name in RERANK_ROW_KEYS[2:]:
                if not isinstance(row[name], (int, float)) or isinstance(row[name], bool):
                    raise ValueError(f"{key}[{i}].{name} must be a number")
            if not math.isclose(row["ratio"], row["pairs_per_s"] / limit, rel_tol=1e-6, abs_tol=1e-9):
                raise ValueError(f"{key}[{i}].ratio must be pairs_per_s / limit_pairs_per_s")
            if not row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]:
                raise ValueError(f"{key}[{i}]: percentiles must be ordered p50 <= p95 <= p99")


def raw_batch_ms(encoder, requests: Sequence[tuple[str, list[str]]], repeats: int) -> list[float]:
    """Inference time (ms) of one raw batch per request (its pairs, as the service would get them)."""
    times = []
    for query, passages in list(requests)[:repeats]:
        encodings = encoder.tokenize_pairs([(query, p) for p in passages])
        start = time.perf_counter()
        encoder.infer(encodings)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def sample_requests(corpus: Corpus, n: int, pairs: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(rng.choice(corpus.queries), rng.sample(corpus.passages, pairs)) for _ in range(n)]


async def closed_loop_rerank(address: str, requests: Sequence[tuple[str, list[str]]], clients: int, timeout: float):
    """``clients`` concurrent callers working through ``requests``; (latencies ms, pairs ok, seconds, errors)."""


    messages = [rr_pb.RerankRequest(query=q, passages=p) for q, p in requests]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    pairs_ok = 0
    cursor = iter(range(len(messages)))
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as channel:
        stub = rr_grpc.RerankServiceStub(channel)

        async def client() -> None:
            nonlocal pairs_ok
            for i in cursor:
                start = time.perf_counter()
                try:
                    reply = await stub.Rerank(messages[i], timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000.0)
                pairs_ok += len(reply.results)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return latencies, pairs_ok, elapsed, dict(errors)


def _bench_rerank(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    opened = open_dataset("rerank", dataset)
    if opened is None:
        return 0
    corpus, info = opened
    conf = _rerank_config()
    clients_list = [int(x) for x in args.clients.split(",")]
    pairs_list = [int(x) for x in args.pairs.split(",")]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    print(f"reranker settings: max_length {conf.max_length}, max_batch_pairs {conf.max_batch_pairs}, max_batch_tokens "
          f"{conf.max_batch_tokens or 'auto'}, max_wait_ms {conf.max_wait_ms}, inference workers {conf.inference_workers or 'auto'}, "
          f"ORT threads {conf.intra_op_threads or 'auto'}, graph {conf.graph_optimization}, spinning {conf.allow_spinning} "
          "(the service logs the resolved values)")

    from services.common.hardware import available_cpus

    cpus = available_cpus()
    layouts = raw_layouts(cpus)
    encoders = {threads: _cross_encoder(conf, threads) for _, threads in layouts}
    rng = random.Random(args.seed)
    limit_pairs = [(rng.choice(corpus.queries), p) for p in rng.sample(corpus.passages, args.limit_pairs)]
    one_batch = encoders[max(encoders)]  # one batch on every thread: the fastest raw way to run one batch
    limit_encodings = one_batch.tokenize_pairs(limit_pairs)
    lengths = sorted(len(e.ids) for e in limit_encodings)
    print(f"pairs: {dataset.name} queries x passages, {len(lengths)} for the limit; tokens per pair: mean "
          f"{sum(lengths) / len(lengths):.0f}, median {lengths[len(lengths) // 2]}, max {lengths[-1]} (max_length {one_batch.max_length})")

    before = sweep_layouts(encoders, limit_encodings, layouts, batch_sizes)
    print("limit (raw onnxruntime in this process, length-sorted batches; layout = batches at once x ORT threads; "
          "pairs/s and CPU ms per pair):")
    print("  " + show_rates(before))
    best = max(before, key=lambda k: before[k][0])
    raw_cpu_ms = min(c for _, c in before.values())
    local_sample = limit_encodings[: max(8 * best.workers * best.batch, 48)]

    if args.ort_profile:
        encoder = encoders[best.threads]
        ordered = sorted(limit_encodings, key=lambda e: len(e.ids))[: max(16, 4 * best.batch)]
        feeds = [encoder.build_inputs(ordered[i : i + best.batch]) for i in range(0, len(ordered), best.batch)]
        print(f"operator time in the model ({best}, {len(ordered)} pairs, ONNX Runtime profiler):")
        for op, share in ort_op_profile(encoder.model_dir / "model.onnx", feeds, best.threads):
            print(f"  {share * 100:5.1f}%  {op}")
    raw_ms = {p: raw_batch_ms(one_batch, sample_requests(corpus, args.raw_repeats, p, args.seed + p), args.raw_repeats)
              for p in pairs_list}
    for p, times in raw_ms.items():
        print(f"one raw batch of {p} pairs on {max(encoders)} threads: p50 {percentile(times, 50):.1f} ms ({len(times)} runs)")

    runs: dict[str, list[tuple]] = {"service": [], "naive": []}
    modes = [("service", "dynamic")] + ([] if args.no_naive else [("naive", "none")])
    profiler = Profiler(args.profile)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp, ServiceProcs(tmp) as procs:
        for key, batching in modes:
            procs.start("reranker", {"RERANKER_BATCHING": batching})
            print(f"\n{key}: reranker over gRPC (RERANKER_BATCHING={batching}), closed-loop clients")
            for p in pairs_list:
                for c in clients_list:
                    n = max(c * args.requests_per_client, math.ceil(args.min_pairs / p))
                    requests = sample_requests(corpus, n, p, args.seed + 1000 * c + p)
                    profiling = key == "service" and c == max(clients_list) and p == max(pairs_list)
                    raw_before_row = measure_layout(encoders, local_sample, best)[0]
                    if profiling:
                        profiler.start(procs.pid("reranker"), "reranker", args.profile_seconds)
                    cpu0 = process_cpu_seconds(procs.pid("reranker"))
                    lat, pairs_ok, elapsed, errors = asyncio.run(
                        closed_loop_rerank(procs.address("reranker"), requests, c, args.timeout)
                    )
                    cpu_ms = 1000.0 * (process_cpu_seconds(procs.pid("reranker")) - cpu0) / max(pairs_ok, 1)
                    local_limit = (raw_before_row + measure_layout(encoders, local_sample, best)[0]) / 2
                    rate = pairs_ok / elapsed
                    runs[key].append((c, p, lat, rate, errors, cpu_ms, local_limit))
                    s = latency_summary(lat)
                    print(f"  {c:>3} clients x {p:>3} pairs: {rate:7.1f} pairs/s  p50 {_fmt_ms(s['p50_ms'])}  "
                          f"p95 {_fmt_ms(s['p95_ms'])}  p99 {_fmt_ms(s['p99_ms'])} ms  ({len(lat)} requests"
                          + (f", errors {errors}" if errors else "") + f"); server {cpu_ms:.1f} cpu-ms/pair; "
                          f"raw {best} around it {local_limit:.1f}/s; load {os.getloadavg()[0]:.2f}", flush=True)
                    if profiling:
                        profiler.finish()
            procs.stop("reranker")

    after = sweep_layouts(encoders, limit_encodings, layouts, batch_sizes)
    print("\nlimit again after the service runs: " + show_rates(after))
    best_before, best_after = max(r for r, _ in before.values()), max(r for r, _ in after.values())
    raw_cpu_ms = min(raw_cpu_ms, min(c for _, c in after.values()))
    limit = max(best_before, best_after)
    print(f"limit used for ratios: {limit:.1f} pairs/s (best batch before {best_before:.1f}, after {best_after:.1f}; the larger)")

    report: dict[str, Any] = {"limit_pairs_per_s": limit, "service": [], "naive": []}
    for key in ("service", "naive"):
        for c, p, lat, rate, *_ in runs[key]:
            report[key].append(rerank_row(c, p, rate, limit, lat))
    _print_rerank_table(report, raw_ms, args)
    print(f"\nCPU efficiency (load-independent): raw best {raw_cpu_ms:.1f} CPU ms per pair (this process, inference only)")
    for key in ("service", "naive"):
        for c, p, _, rate, _, cpu_ms, local_limit in runs[key]:
            print(f"  {key:8}{c:>4} clients x {p:>3} pairs: server {cpu_ms:5.1f} CPU ms/pair -> {raw_cpu_ms / cpu_ms:.2f} of raw; "
                  f"throughput vs the raw best measured around the run: {rate / local_limit:.2f}")
    validate_rerank_report(report)
    if args.json:
        payload = dict(report)
        payload["meta"] = {
            "machine": info, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "limit_before": {str(k): {"pairs_per_s": r, "cpu_ms_per_pair": c} for k, (r, c) in before.items()},
            "limit_after": {str(k): {"pairs_per_s": r, "cpu_ms_per_pair": c} for k, (r, c) in after.items()},
            "raw_best_cpu_ms_per_pair": raw_cpu_ms,
            "rows": {f"{k}:{c}x{p}": {"server_cpu_ms_per_pair": cpu_ms, "raw_best_around_run": local_limit}
                     for k in runs for c, p, _, _, _, cpu_ms, local_limit in runs[k]},
            "raw_batch_p50_ms": {str(p): percentile(t, 50) for p, t in raw_ms.items()},
            "max_length": conf.max_length, "max_batch_pairs": conf.max_batch_pairs,
            "max_batch_tokens": conf.max_batch_tokens, "dataset": str(dataset),
            "errors": {f"{k}:{c}x{p}": e for k in runs for c, p, _, _, e, *_ in runs[k] if e},
        }
        _write_json(args.json, payload)
    return 0


def _print_rerank_table(report: Mapping[str, Any], raw_ms: Mapping[int, list[float]], args) -> None:
    print(f"\n{'':8}{'clients':>8}{'pairs':>7}{'pairs/s':>10}{'ratio':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for key in ("service", "naive"):
        for row in report[key]:
            print(f"{key:8}{row['clients']:>8}{row['pairs_per_request']:>7}{row['pairs_per_s']:>10.1f}{row['ratio']:>8.2f}"
                  f"{row['p50_ms']:>10.1f}{row['p95_ms']:>10.1f}{row['p99_ms']:>10.1f}")
    print("\ntargets:")
    for row in report["service"]:
        c, p = row["clients"], row["pairs_per_request"]
        if c == 32 and p == 50:
            print(f"  32 clients x 50 pairs: ratio {row['ratio']:.2f} (target >= 0.90): {'met' if row['ratio'] >= 0.9 else 'NOT met'}")
        if c == 32 and p == 4:
            print(f"  32 clients x 4 pairs:  ratio {row['ratio']:.2f} (target >= 0.80): {'met' if row['ratio'] >= 0.8 else 'NOT met'}")
        if c == 1 and p in raw_ms and raw_ms[p]:
            raw = percentile(raw_ms[p], 50)
            bound = raw * 1.1 + 5.0
            print(f"  1 client x {p} pairs: p50 {row['p50_ms']:.1f} ms vs one raw batch {raw:.1f} ms "
                  f"(target <= {bound:.1f} ms): {'met' if row['p50_ms'] <= bound else 'NOT met'}")


def register(bsub: argparse._SubParsersAction) -> None:
    r = bsub.add_parser("rerank", help="reranker throughput/latency vs raw onnxruntime, with and without cross-request batching")
    common(r)
    r.add_argument("--clients", default="1,8,32", help="concurrent closed-loop clients (default %(default)s)")
    r.add_argument("--pairs", default="50,4", help="pairs per request (default %(default)s)")
    r.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="raw batch sizes tried for the limit (default %(default)s)")
    r.add_argument("--limit-pairs", type=int, default=256, help="pairs scored per batch size for the limit (default %(default)s)")
    r.add_argument("--raw-repeats", type=int, default=7, help="raw single-batch timings per request size (default %(default)s)")
    r.add_argument("--requests-per-client", type=int, default=2, help="at least this many requests per client (default %(default)s)")
    r.add_argument("--min-pairs", type=int, default=640, help="at least this many pairs per configuration (default %(default)s)")
    r.add_argument("--no-naive", action="store_true", help="skip the RERANKER_BATCHING=none baseline")
    r.add_argument("--timeout", type=float, default=600.0, help="deadline of one Rerank call, s (default %(default)s)")
    r.add_argument("--profile", metavar="DIR", help="py-spy the reranker during the largest run; write collapsed stacks to DIR")
    r.add_argument("--profile-seconds", type=float, default=30.0)
    r.add_argument("--ort-profile", action="store_true", help="print the model's time by operator type (ONNX Runtime profiler)")
    r.set_defaults(func=_bench_rerank)
