"""`searchctl bench profile`: where the CPU goes, per process, while Search runs under load.

Starts the three services (services/cli/bench/harness.py ``Stack``, SciFact ingested or reused from
``--data-dir``) and, for each first-stage mode asked for (``--retrieval-modes dense,hybrid``),
offers search-only Searches (no reranking) open-loop at a fixed ``--rate`` for ``--seconds``
while

* each process's own counter ``process_cpu_seconds_total`` (its /metrics) is read before and
  after: **CPU milliseconds per query** in the gateway, in retrieval and in the reranker
  (which a search-only query does not reach), and in this load generator (/proc);
* ``py-spy record`` samples the gateway and retrieval (all Python threads, 100 Hz) when
  ``--profile DIR`` is given: the samples are summarised by *layer* (the innermost frame that
  belongs to a known library or to the platform's code decides; :data:`LAYERS`) and by
  innermost function, and written to DIR as collapsed stacks.

py-spy sees Python threads only: the gRPC core's own threads (HTTP/2, polling, completion
queues) and the time native code spends without a Python frame on top are not in its
samples. The ratio of sampled busy time to the process's CPU seconds (``python_visible``)
says how much of a process's CPU the layer table explains.

With ``--env KEY=VALUE`` (repeatable) the services get extra settings, e.g. to compare
``OTEL_TRACES_SAMPLER`` choices or a cache turned off, in separate runs of the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from search.v1 import search_service_pb2_grpc as pb_grpc
from services.cli.bench.harness import (
    E2EMode,
    Profiler,
    Stack,
    _grpc_options,
    _scrape,
    _search_request,
    _write_json,
    open_dataset,
    open_loop,
    process_cpu_seconds,
)

__all__ = ["LAYERS", "classify_stack", "layer_shares", "metric_value", "register", "sample_sum", "samples_of"]

#: (layer, substrings of a py-spy frame ``function (file:line)``); the first layer matching the
#: innermost frame that matches any layer wins. Order matters: specific before general.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("onnxruntime (model)", ("onnxruntime/", "run_with_io_binding")),
    ("tokenizer", ("tokenizers/", "encode_batch (", "tokenize_queries (", "tokenize_documents (")),
    ("vector engine (qdrant edge / client)", ("qdrant_edge", "qdrant_client/", "backends/edge.py", "backends/qdrant_server.py")),
    ("BM25 analyzer", ("retrieval/sparse.py", "snowballstemmer")),
    ("protobuf, Struct/JSON conversion", ("google/protobuf", "json_format", "_struct (", "well_known_types")),
    ("tracing (opentelemetry)", ("opentelemetry/", "common/tracing.py")),
    ("logging", ("logging/", "pythonjsonlogger")),
    ("metrics (prometheus_client)", ("prometheus_client/", "common/metrics.py")),
    ("retries (tenacity)", ("tenacity/", "gateway/resilience.py")),
    ("validation", ("common/validation.py", "retrieval/filters.py")),
    ("batcher", ("common/batching.py", "retrieval/batched_embedder.py")),
    ("platform code (other)", ("services/",)),
    ("numpy", ("numpy/",)),
    ("grpc (python + cython)", ("grpc/", "grpc_status", "cygrpc", "_cython")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
    ("threads, executors", ("concurrent/futures", "threading.py", "queue.py")),
)
OTHER = "other (interpreter, stdlib)"
_IDLE = ("select (", "poll (", "wait (", "acquire (", "_worker (concurrent", "sleep (", "accept (", "epoll")


def classify_stack(frames: Sequence[str]) -> str:
    """The layer of one sample: walking from the innermost frame outwards, the first frame that
    belongs to a layer decides."""
    for frame in reversed(frames):
        for layer, markers in LAYERS:
            if any(marker in frame for marker in markers):
                return layer
    return OTHER


def _samples(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in _IDLE):
            continue
        yield frames, int(n)


def layer_shares(lines: Iterable[str]) -> tuple[dict[str, int], int]:
    """Busy samples per layer (idle threads left out) and their total."""
    counts: Counter[str] = Counter()
    for frames, n in _samples(lines):
        counts[classify_stack(frames)] += n
    return dict(counts.most_common()), sum(counts.values())


def leaf_functions(lines: Iterable[str], top: int = 15) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for frames, n in _samples(lines):
        counts[frames[-1]] += n
    return counts.most_common(top)


def samples_of(exposition: str) -> list[Sample]:
    """Every sample of a /metrics text, parsed once (read several figures with :func:`sample_sum`)."""
    return [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]


def sample_sum(samples: Iterable[Sample], name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples called ``name`` (with these labels); 0 when absent."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()))


def metric_value(exposition: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples called ``name`` (with these labels) in a /metrics text; 0 when absent."""
    return sample_sum(samples_of(exposition), name, labels)


def cpu_seconds(url: str) -> float:
    return metric_value(_scrape(url), "process_cpu_seconds_total")


def _pyspy() -> str | None:
    return Profiler(None).exe


def _record(exe: str, pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen:
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))), "--rate", str(rate),
         "--format", "raw", "--threads", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _print_profile(name: str, path: Path, cpu_s: float, rate: int) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines()
    layers, total = layer_shares(lines)
    visible = total / rate / cpu_s if cpu_s > 0 else float("nan")
    print(f"  {name}: {total} busy samples at {rate} Hz = {total / rate:.1f} s of Python-visible CPU "
          f"against {cpu_s:.1f} CPU s counted ({visible:.2f}); by layer:")
    for layer, n in layers.items():
        print(f"    {n / total * 100:5.1f}%  {layer}")
    leaves = leaf_functions(lines)
    print("   innermost functions:")
    for leaf, n in leaves[:10]:
        print(f"    {n / total * 100:5.1f}%  {leaf}")
    return {"samples": total, "python_visible": visible,
            "layers": {k: v / total for k, v in layers.items()} if total else {},
            "leaves": [(k, v / total) for k, v in leaves]}


def profile_mode(stack, queries: Sequence[str], retrieval: str, rate: float, seconds: float, outdir: Path | None,
                 sample_rate: int = 100) -> dict[str, Any]:
    """One fixed-rate search-only step with CPU counters (and py-spy) on every process."""

    mode = E2EMode("search", 0, retrieval)
    p = stack.procs
    names = ("gateway", "retrieval", "reranker")
    exe = _pyspy() if outdir is not None else None
    if outdir is not None and exe is None:
        print("profiling skipped: py-spy is not installed (pip install '.[bench]')")
    recorders = {}
    if exe is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        for name in ("gateway", "retrieval"):
            out = outdir / f"{name}-{retrieval}.collapsed.txt"
            recorders[name] = (out, _record(exe, p.pid(name), seconds, out, sample_rate))
    before = {n: cpu_seconds(p.metrics_url(n)) for n in names}
    me_before = process_cpu_seconds(os.getpid())
    step = asyncio.run(open_loop(p.address("gateway"), stack.collection, queries, mode, rate, seconds, 30.0))
    after = {n: cpu_seconds(p.metrics_url(n)) for n in names}
    me = process_cpu_seconds(os.getpid()) - me_before
    s = step.summary
    served = max(step.ok, 1)
    cpu = {n: after[n] - before[n] for n in names}
    print(f"\n== search only, retrieval mode {retrieval}: offered {rate:.1f} QPS for {step.seconds:.0f} s, achieved "
          f"{step.achieved_qps:.1f} QPS, p50 {s['p50_ms']:.0f} / p95 {s['p95_ms']:.0f} ms, errors {sum(step.errors.values())}")
    print("  CPU ms per query: " + ", ".join(f"{n} {cpu[n] / served * 1000:.2f}" for n in names)
          + f", load generator {me / served * 1000:.2f}; load average {os.getloadavg()[0]:.2f}")
    result: dict[str, Any] = {
        "rate": rate, "step": step.as_dict(),
        "cpu_ms_per_query": {**{n: cpu[n] / served * 1000 for n in names}, "load_generator": me / served * 1000},
        "load_avg": os.getloadavg()[0], "profiles": {},
    }
    for name, (out, proc) in recorders.items():
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            result["profiles"][name] = _print_profile(name, out, cpu[name], sample_rate)
        else:
            print(f"  {name}: py-spy wrote nothing (ptrace restricted?)")
    return result


def distinct_queries(queries: Sequence[str], start: int, n: int) -> list[str]:
    """``n`` queries from position ``start`` of an endless sequence that never repeats a text: the
    set itself, then variants ("<query> (2)", "(3)", ...), so no cache can answer any of them."""
    out = []
    for i in range(start, start + n):
        base, k = queries[i % len(queries)], i // len(queries)
        out.append(base if k == 0 else f"{base} ({k + 1})")
    return out


def _bench_profile(args: argparse.Namespace) -> int:
    opened = open_dataset("profile", Path(args.dataset), max_docs=args.docs)
    if opened is None:
        return 0
    corpus, info = opened
    queries = list(corpus.queries)
    random.Random(args.seed).shuffle(queries)
    extra = dict(kv.split("=", 1) for kv in args.env)
    sink = None
    if args.otlp_sink:
        sink, port = _otlp_sink()
        extra.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        extra.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    results: dict[str, Any] = {"machine": info, "env": extra, "modes": {}}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # ServiceProcs copies this process's environment into every service
    try:
        with Stack(args, corpus) as stack:
            offset = 0
            for retrieval in args.retrieval_modes.split(","):
                # Warm up (first calls per channel, caches of the engine) on queries not used below.
                asyncio.run(_warm(stack, [f"warm-up {q}" for q in queries[-20:]], retrieval))
                n = int(args.rate * args.seconds)
                chunk = distinct_queries(queries, offset, max(n, 1))
                offset += n
                results["modes"][retrieval] = profile_mode(
                    stack, chunk, retrieval, args.rate, args.seconds, Path(args.profile) if args.profile else None)
                time.sleep(2)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if sink is not None:
        results["spans_received"] = sink.spans
        print(f"OTLP sink received {sink.spans} spans")
        sink.server.stop(0)
    _write_json(args.json, results)
    return 0


class _Sink:
    spans = 0
    server: Any = None


def _otlp_sink() -> tuple[_Sink, int]:
    """An OTLP/gRPC trace receiver in this process that counts spans and drops them (for the
    cost of tracing with an exporter, without a collector's own cost on the machine)."""

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    sink = _Sink()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sink.server = server
    return sink, port


async def _warm(stack, queries: Sequence[str], retrieval: str) -> None:
    async with grpc.aio.insecure_channel(stack.procs.address("gateway"), options=_grpc_options()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        for q in queries:
            await stub.Search(_search_request(stack.collection, q, E2EMode("search", 0, retrieval)), timeout=30)


def register(bsub: argparse._SubParsersAction, default_dataset: str) -> None:
    p = bsub.add_parser("profile", help="CPU per query per process and py-spy layers while search-only load runs")
    p.add_argument("--dataset", default=default_dataset, help="BEIR folder (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", help="keep the services' data here and reuse an ingested collection")
    p.add_argument("--docs", type=int, default=0, help="ingest only the first N documents (default: all)")
    p.add_argument("--retrieval-modes", default="dense,hybrid", help="first-stage modes, one step each (default %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, help="offered Search rate, QPS (default %(default)s)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each step (default %(default)s)")
    p.add_argument("--profile", metavar="DIR", help="py-spy the gateway and retrieval; collapsed stacks to DIR")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra setting for the services")
    p.add_argument("--otlp-sink", action="store_true",
                   help="receive the services' spans here (OTLP/gRPC, dropped): with --env OTEL_TRACES_SAMPLER=..., the cost of tracing")
    p.set_defaults(func=_bench_profile)
