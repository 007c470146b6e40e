"""`searchctl bench rerank|embed|e2e|frontier`: what the services cost on top of the models.

Every benchmark starts its own servers on free loopback ports (services/cli/procs.py),
uses realistic text from a BEIR dataset (SciFact by default:
``../shared/datasets/scifact``; skipped with a message when absent), prints figures and
ratios measured in the same run, and can write them as JSON. None of them asserts a time.

* ``rerank``: (a) the limit: raw ONNX Runtime throughput on the same pairs in this
  process, length-sorted batches, best of several batch sizes and of two layouts (one
  batch at a time on every core, or one single-threaded batch per core), measured before
  and after the service runs (the larger is used); (b) the reranker over gRPC with 1/8/32
  closed-loop clients sending 50-pair and 4-pair requests; (c) the same with
  ``RERANKER_BATCHING=none`` (no cross-request batching). Ratios are service/limit; the
  1-client p50 is compared with one raw batch of the same size.
* ``embed``: documents/s of ``searchctl ingest`` (gateway -> retrieval: embedding,
  BM25, Qdrant) against raw batched embedding of the same texts in this process.
* ``e2e``: an open-loop load generator (fixed arrival rate) against the gateway for
  search only and search + rerank (20 and 50 candidates): achieved QPS, p50/p95/p99,
  errors, degraded responses; the gateway's own overhead (Search p50 minus the p50s of
  the same Retrieve and Rerank calls made directly); and the highest arrival rate each
  mode sustains under its p95 objective (350 ms search only, 900 ms with rerank).
* ``frontier``: NDCG@10 on the SciFact test queries against Search p50 for rerank depths
  and reranker max lengths; a PNG plot of the frontier.

Machine-dependent: read the figures together with the machine line each bench prints
(CPU model, cores, load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from services.cli.evaluate import percentile

__all__ = [
    "RERANK_ROW_KEYS",
    "Corpus",
    "StepResult",
    "latency_summary",
    "load_corpus",
    "machine_info",
    "rerank_row",
    "register",
    "sustained",
    "validate_rerank_report",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "scifact"
RERANK_ROW_KEYS = ("clients", "pairs_per_request", "pairs_per_s", "ratio", "p50_ms", "p95_ms", "p99_ms")
SLO_MS = {"search": 350.0, "rerank": 900.0}
BENCH_COLLECTION = "bench_scifact"


# --------------------------------------------------------------------------- pure helpers (unit-tested)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (linear interpolation, as ``searchctl eval``) of latencies in ms; NaN when empty."""
    return {f"p{q}_ms": percentile(list(latencies_ms), q) for q in (50, 95, 99)}


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


@dataclass
class StepResult:
    """One open-loop step: requests offered at ``rate`` per second for ``seconds``."""

    rate: float
    seconds: float
    sent: int
    ok: int
    errors: dict[str, int]
    degraded: int
    achieved_qps: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def summary(self) -> dict[str, float]:
        return latency_summary(self.latencies_ms)

    def as_dict(self) -> dict:
        return {
            "rate": self.rate, "seconds": self.seconds, "sent": self.sent, "ok": self.ok,
            "errors": dict(self.errors), "degraded": self.degraded, "achieved_qps": self.achieved_qps,
            **self.summary,
        }


def sustained(step: StepResult, slo_ms: float, min_achieved: float = 0.95) -> bool:
    """Whether a step kept up: every request answered OK and not degraded, p95 under the
    objective, and the achieved rate at least ``min_achieved`` of the offered one."""
    if step.sent == 0 or step.errors or step.degraded or step.ok < step.sent:
        return False
    return step.summary["p95_ms"] <= slo_ms and step.achieved_qps >= min_achieved * step.rate


def next_rate(history: Sequence[tuple[float, bool]], start: float, growth: float, resolution: float, floor: float) -> float | None:
    """The next arrival rate to try, or None when the search is done.

    Grow geometrically from ``start`` until a rate fails, then bisect between the highest
    passing and the lowest failing rate until they are within ``resolution`` (a ratio);
    when the first rate fails, shrink until one passes or ``floor`` is reached.
    """
    if not history:
        return start
    passed = [r for r, ok in history if ok]
    failed = [r for r, ok in history if not ok]
    best = max(passed) if passed else None
    worst = min((r for r in failed if best is None or r > best), default=None)
    if best is None:
        lowest = min(failed)
        return None if lowest <= floor * (1 + 1e-9) else max(floor, lowest / growth)
    if worst is None:
        return best * growth
    if worst / best <= resolution:
        return None
    return math.sqrt(best * worst)


# --------------------------------------------------------------------------- data and machine


@dataclass
class Corpus:
    queries: list[str]
    passages: list[str]  # "title\ntext", as the gateway sends them to the reranker
    docs: list[dict]


def load_corpus(dataset: Path, max_docs: int = 0) -> Corpus | None:
    """Queries and passages of a BEIR dataset, or None when it is absent."""
    corpus, queries = dataset / "corpus.jsonl", dataset / "queries.jsonl"
    if not corpus.is_file() or not queries.is_file():
        return None
    docs = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                if (d.get("text") or "").strip():
                    docs.append({"id": str(d.get("_id", d.get("id"))), "title": d.get("title") or "", "text": d["text"]})
                if max_docs and len(docs) >= max_docs:
                    break
    with open(queries, encoding="utf-8") as f:
        qs = [json.loads(line)["text"] for line in f if line.strip()]
    passages = [f"{d['title']}\n{d['text']}" if d["title"] else d["text"] for d in docs]
    return Corpus(qs, passages, docs)


def _skip(command: str, dataset: Path) -> int:
    print(
        f"searchctl bench {command}: skipped: no BEIR dataset at {dataset} (corpus.jsonl + queries.jsonl); "
        "pass --dataset DIR (SciFact: ../shared/datasets/scifact)",
        file=sys.stderr,
    )
    return 0


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:  # pragma: no cover
        ort_version = "absent"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "onnxruntime": ort_version,
        "python": sys.version.split()[0],
    }


def _print_machine(info: Mapping[str, Any]) -> None:
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_avg']}, "
          f"onnxruntime {info['onnxruntime']}, python {info['python']}")


def _fmt_ms(x: float) -> str:
    return f"{x:8.1f}" if not math.isnan(x) else "     n/a"


def _write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def _grpc_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


# --------------------------------------------------------------------------- profiling (py-spy)


class Profiler:
    """``py-spy record`` of one server process for a while, summarised by function.

    Off unless ``--profile DIR`` is given; skipped with a message when py-spy is absent.
    """

    def __init__(self, outdir: str | None) -> None:
        self.outdir = Path(outdir) if outdir else None
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None
        exe = Path(sys.executable).with_name("py-spy")
        self.exe = str(exe) if exe.exists() else (subprocess.run(["which", "py-spy"], capture_output=True, text=True).stdout.strip() or None)
        if self.outdir is not None and self.exe is None:
            print("profiling skipped: py-spy is not installed (pip install '.[bench]')", file=sys.stderr)

    def start(self, pid: int, name: str, seconds: float) -> None:
        if self.outdir is None or self.exe is None:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.out = self.outdir / f"{name}.collapsed.txt"
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))), "--rate", "50",
             "--format", "raw", "--threads", "--nonblocking", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def finish(self, top: int = 12) -> list[tuple[str, float]]:
        if self.proc is None or self.out is None:
            return []
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if not self.out.exists():
            print(f"profiling: py-spy wrote nothing to {self.out} (ptrace may be restricted)", file=sys.stderr)
            return []
        summary = summarize_collapsed(self.out.read_text(errors="replace").splitlines(), top)
        print(f"profile ({self.out}): share of samples by innermost Python function, all threads")
        for name, share in summary:
            print(f"  {share * 100:5.1f}%  {name}")
        return summary


def summarize_collapsed(lines: Iterable[str], top: int = 12) -> list[tuple[str, float]]:
    """Share of samples by leaf frame in py-spy's collapsed-stack (``raw``) output.

    Idle threads (waiting in ``select``/``epoll``/``wait``/``acquire``) are left out, so the
    shares describe where CPU time goes.
    """
    counts: Counter[str] = Counter()
    idle_markers = ("select (", "poll (", "wait (", "acquire (", "_worker (concurrent", "sleep (", "accept (")
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if any(marker in leaf for marker in idle_markers):
            continue
        counts[leaf] += int(n)
    total = sum(counts.values())
    return [(name, c / total) for name, c in counts.most_common(top)] if total else []


def summarize_ort_profile(events: Iterable[Mapping[str, Any]], top: int = 12) -> list[tuple[str, float]]:
    """Share of kernel time by operator type in an ONNX Runtime profile (``enable_profiling``)."""
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += int(event.get("dur", 0))
    total = sum(totals.values())
    return [(op, t / total) for op, t in totals.most_common(top)] if total else []


def ort_op_profile(model_path: Path, feeds: Sequence[Mapping[str, Any]], threads: int) -> list[tuple[str, float]]:
    """Run ``feeds`` through a profiling CPU session of ``model_path``; operator-type shares."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        for feed in feeds:
            session.run(None, dict(feed))
        events = json.loads(Path(session.end_profiling()).read_text())
    return summarize_ort_profile(events)


# --------------------------------------------------------------------------- bench rerank


def _rerank_config():
    from services.common import config as cfg
    from services.reranker.config import RerankerConfig

    return cfg.load(RerankerConfig, None)


def _cross_encoder(conf, threads: int):
    from services.common.models import default_models_dir, resolve_model_dir
    from services.reranker.cross_encoder import CrossEncoder

    return CrossEncoder(
        resolve_model_dir(conf.model_dir or default_models_dir() / "ms-marco-MiniLM-L-12-v2"),
        max_length=conf.max_length,
        batch_size=max(64, conf.max_batch_pairs),
        provider=conf.provider,
        intra_op_threads=threads,
        graph_optimization=conf.graph_optimization,
        spin=conf.allow_spinning,
    )


def raw_layouts(cpus: int) -> list[tuple[int, int]]:
    """Raw execution layouts tried for the limit: (batches at once, ORT threads each)."""
    return [(cpus, 1), (1, cpus)] if cpus > 1 else [(1, 1)]


def measure_limit_cpu(infer, encodings: Sequence[Any], batch_sizes: Sequence[int], workers: int = 1) -> dict[int, tuple[float, float]]:
    """Raw items/s of length-sorted batches of each size over ``encodings`` (one pass each), with
    ``workers`` batches running at once (threads pulling from one queue), and this process's CPU
    ms per item: ``{size: (items/s, cpu ms/item)}``.

    CPU time hardly depends on what else the machine runs, so it tells a slower run on a
    busy machine from a less efficient one.
    """
    from concurrent.futures import ThreadPoolExecutor

    ordered = sorted(encodings, key=lambda e: len(e.ids))
    out = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for size in batch_sizes:
            batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
            list(pool.map(infer, batches[len(batches) // 2 : len(batches) // 2 + workers]))  # warm this shape
            cpu, start = time.process_time(), time.perf_counter()
            list(pool.map(infer, batches))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            out[size] = (len(ordered) / wall, 1000.0 * cpu / len(ordered))
    return out


class RawLayout(NamedTuple):
    """How raw inference ran: ``workers`` batches at once, ``threads`` ORT threads each, ``batch`` items per batch."""

    workers: int
    threads: int
    batch: int

    def __str__(self) -> str:
        return f"{self.workers}x{self.threads} batch {self.batch}"


def sweep_layouts(encoders: Mapping[int, Any], encodings: Sequence[Any], layouts: Sequence[tuple[int, int]],
                  sizes: Sequence[int]) -> dict[RawLayout, tuple[float, float]]:
    """(items/s, CPU ms per item) of every (workers, threads) layout x batch size; ``encoders`` by thread count."""
    return {RawLayout(workers, threads, size): measured for workers, threads in layouts
            for size, measured in measure_limit_cpu(encoders[threads].infer, encodings, sizes, workers).items()}


def measure_layout(encoders: Mapping[int, Any], encodings: Sequence[Any], layout: RawLayout) -> tuple[float, float]:
    """(items/s, CPU ms per item) of one layout."""
    return sweep_layouts(encoders, encodings, [layout[:2]], [layout.batch])[layout]


def show_rates(rates: Mapping[RawLayout, tuple[float, float]]) -> str:
    return ", ".join(f"{k}: {r:.1f}/s ({c:.1f} cpu-ms)" for k, (r, c) in rates.items())


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    import grpc

    from search.v1 import rerank_service_pb2 as pb, rerank_service_pb2_grpc as pb_grpc

    messages = [pb.RerankRequest(query=q, passages=p) for q, p in requests]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    pairs_ok = 0
    cursor = iter(range(len(messages)))
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as channel:
        stub = pb_grpc.RerankServiceStub(channel)

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
    corpus = load_corpus(dataset)
    if corpus is None:
        return _skip("rerank", dataset)
    from services.cli.procs import ServiceProcs

    info = machine_info()
    _print_machine(info)
    conf = _rerank_config()
    clients_list = [int(x) for x in args.clients.split(",")]
    pairs_list = [int(x) for x in args.pairs.split(",")]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    print(f"reranker settings: max_length {conf.max_length}, max_batch_pairs {conf.max_batch_pairs}, max_batch_tokens "
          f"{conf.max_batch_tokens or 'auto'}, max_wait_ms {conf.max_wait_ms}, inference workers {conf.inference_workers or 'auto'}, "
          f"ORT threads {conf.intra_op_threads or 'auto'}, graph {conf.graph_optimization}, spinning {conf.allow_spinning} "
          "(the service logs the resolved values)")

    from services.common.onnx_session import available_cpus

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


# --------------------------------------------------------------------------- bench embed


def _retrieval_config():
    from services.common import config as cfg
    from services.retrieval.config import RetrievalConfig

    return cfg.load(RetrievalConfig, None)


def _bi_encoder(conf, threads: int):
    from services.common.models import default_models_dir, resolve_model_dir
    from services.retrieval.embedder import BiEncoder

    return BiEncoder(
        resolve_model_dir(conf.model_dir or default_models_dir() / "bge-small-en"),
        max_length=conf.max_length,
        batch_size=conf.batch_size,
        provider=conf.provider,
        intra_op_threads=threads,
        graph_optimization=conf.graph_optimization,
        spin=conf.allow_spinning,
    )


def _open_procs_env() -> dict[str, str]:
    # The bench talks to its own gateway without credentials or TLS.
    return {"GATEWAY_API_KEYS": "", "GATEWAY_API_KEYS_FILE": ""}


def _bench_embed(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    corpus = load_corpus(dataset, max_docs=args.docs)
    if corpus is None:
        return _skip("embed", dataset)
    from services.cli.procs import ServiceProcs

    info = machine_info()
    _print_machine(info)
    conf = _retrieval_config()
    from services.common.onnx_session import available_cpus

    layouts = raw_layouts(available_cpus())
    encoders = {threads: _bi_encoder(conf, threads) for _, threads in layouts}
    texts = corpus.passages  # the store indexes "title\ntext"
    sample = random.Random(args.seed).sample(texts, min(args.limit_docs, len(texts)))
    encodings = encoders[max(encoders)].tokenize_documents(sample)
    sizes = sorted({int(x) for x in args.batch_sizes.split(",")})
    print(f"documents: {len(texts)} from {dataset.name} to ingest; embedder max_length {encoders[max(encoders)].max_length}; "
          f"raw: {len(sample)} of them in length-sorted batches of {sizes} in layouts {['%dx%d' % l for l in layouts]} "
          "(batches at once x ORT threads)")

    def sweep() -> dict[RawLayout, tuple[float, float]]:
        rates = sweep_layouts(encoders, encodings, layouts, sizes)
        print("  " + show_rates(rates))
        return rates

    before = sweep()
    best = max(before, key=lambda k: before[k][0])
    print(f"raw batched embedding (tokenized texts, this process): best {before[best][0]:.1f} docs/s ({best}); "
          f"least CPU {min(c for _, c in before.values()):.1f} ms/doc")

    def raw_best() -> tuple[float, float]:
        return measure_layout(encoders, encodings, best)

    profiler = Profiler(args.profile)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp, ServiceProcs(tmp) as procs:
        jsonl = Path(tmp) / "docs.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for d in corpus.docs:
                f.write(json.dumps(d) + "\n")
        procs.start("retrieval", wait=False)
        procs.start("reranker", wait=False)
        procs.start("gateway", _open_procs_env(), wait=False)
        for name in ("retrieval", "reranker", "gateway"):
            procs.wait(name)
        servers = ("retrieval", "gateway")
        for i in range(1, args.rounds + 1):
            raw0 = raw_best()
            cmd = [sys.executable, "-m", "services.cli", "ingest", str(jsonl), "--collection", f"bench_embed_{i}",
                   "--target", procs.address("gateway"), "--batch-size", str(args.batch_size),
                   "--concurrency", str(args.concurrency)]
            if i == 1:
                profiler.start(procs.pid("retrieval"), "retrieval", args.profile_seconds)
            cpu0 = {name: process_cpu_seconds(procs.pid(name)) for name in servers}
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"})
            wall = time.perf_counter() - start
            cpu_ms = {name: 1000.0 * (process_cpu_seconds(procs.pid(name)) - cpu0[name]) / len(texts) for name in servers}
            if i == 1:
                profiler.finish()
            if result.returncode != 0:
                print(f"searchctl ingest failed ({result.returncode}):\n{result.stderr[-2000:]}", file=sys.stderr)
                return 1
            raw1 = raw_best()
            rate = _ingest_rate(result.stdout) or len(texts) / wall
            around = (raw0[0] + raw1[0]) / 2
            rounds.append({"ingest_docs_per_s": rate, "ingest_wall_docs_per_s": len(texts) / wall,
                           "raw_before": raw0[0], "raw_after": raw1[0], "ratio_to_raw_around": rate / around,
                           "cpu_ms_per_doc": cpu_ms, "raw_cpu_ms_per_doc": min(raw0[1], raw1[1])})
            print(f"round {i}: raw {raw0[0]:.1f} -> searchctl ingest {rate:.1f} docs/s -> raw {raw1[0]:.1f}; "
                  f"ingest / raw around it {rate / around:.2f}; CPU per document: retrieval {cpu_ms['retrieval']:.1f} + "
                  f"gateway {cpu_ms['gateway']:.1f} ms vs raw {min(raw0[1], raw1[1]):.1f} ms; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    print("raw sweep again:")
    after = sweep()
    limit = max(r for r, _ in list(before.values()) + list(after.values()))
    raw_cpu = min(c for _, c in list(before.values()) + list(after.values()))
    best_ingest = max(r["ingest_docs_per_s"] for r in rounds)
    median_paired = statistics.median(r["ratio_to_raw_around"] for r in rounds)
    service_cpu = min(sum(r["cpu_ms_per_doc"].values()) for r in rounds)
    ratio = best_ingest / limit
    print(f"\nlimit (best raw of both sweeps): {limit:.1f} docs/s; best ingest {best_ingest:.1f} docs/s")
    print(f"ratio ingest / limit: {ratio:.2f} (target >= 0.90): {'met' if ratio >= 0.9 else 'NOT met'}")
    print(f"ratio ingest / raw measured around it, per round: {', '.join(f'{x:.2f}' for x in (r['ratio_to_raw_around'] for r in rounds))}"
          f" (median {median_paired:.2f})")
    print(f"CPU per document (less sensitive to load): service {service_cpu:.1f} ms (best round) vs raw {raw_cpu:.1f} ms "
          f"-> {raw_cpu / service_cpu:.2f} of raw; load average now {os.getloadavg()[0]:.2f}")
    _write_json(args.json, {
        "docs": len(texts), "raw_docs_per_s": limit, "ingest_docs_per_s": best_ingest, "ratio": ratio,
        "ratio_to_raw_around_median": median_paired, "rounds": rounds,
        "raw_sweep_before": {str(k): {"docs_per_s": r, "cpu_ms_per_doc": c} for k, (r, c) in before.items()},
        "raw_sweep_after": {str(k): {"docs_per_s": r, "cpu_ms_per_doc": c} for k, (r, c) in after.items()},
        "raw_best_layout": str(best), "raw_cpu_ms_per_doc": raw_cpu, "service_cpu_ms_per_doc": service_cpu,
        "batch_size": args.batch_size, "concurrency": args.concurrency, "machine": info,
    })
    return 0


def _ingest_rate(stdout: str) -> float | None:
    import re

    match = re.search(r"\(([\d.]+) docs/s\)", stdout)
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------- stack with an ingested collection


class Stack:
    """The three services on loopback with SciFact ingested (reused from ``--data-dir``)."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, gateway_env: Mapping[str, str] | None = None) -> None:
        from services.cli.procs import ServiceProcs

        self._tmp = None
        if args.data_dir:
            workdir = Path(args.data_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="bench-stack-")
            workdir = Path(self._tmp.name)
        self.procs = ServiceProcs(workdir)
        self.corpus = corpus
        self.gateway_env = {**_open_procs_env(), **(gateway_env or {})}
        self.collection = BENCH_COLLECTION

    def __enter__(self) -> Stack:
        p = self.procs
        p.start("retrieval", wait=False)
        p.start("reranker", wait=False)
        p.start("gateway", self.gateway_env, wait=False)
        for name in ("retrieval", "reranker", "gateway"):
            p.wait(name)
        self.ensure_ingested()
        return self

    def __exit__(self, *exc) -> None:
        self.procs.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()

    def ensure_ingested(self) -> None:
        import grpc

        from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.procs.address("gateway"), options=_grpc_options()) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            try:
                count = stub.DescribeCollection(pb.DescribeCollectionRequest(name=self.collection), timeout=30).collection.document_count
            except grpc.RpcError:
                count = 0
        if count >= len(self.corpus.docs):
            print(f"collection {self.collection!r} already holds {count} documents")
            return
        from services.cli.client import ingest

        start = time.perf_counter()
        written = asyncio.run(ingest(self.corpus.docs, self.collection, self.procs.address("gateway"),
                                     batch_size=64, concurrency=2, total=len(self.corpus.docs), progress=False))
        print(f"ingested {written} documents in {time.perf_counter() - start:.0f} s")

    def restart_reranker(self, overrides: Mapping[str, str]) -> None:
        self.procs.start("reranker", overrides)


# --------------------------------------------------------------------------- bench e2e


@dataclass(frozen=True)
class E2EMode:
    name: str
    candidates: int  # 0 = no rerank
    retrieval: str = "default"  # dense | sparse | hybrid | default (the server's)

    @property
    def slo_ms(self) -> float:
        return SLO_MS["rerank" if self.candidates else "search"]


RETRIEVAL_MODES = ("default", "dense", "sparse", "hybrid")


def parse_e2e_modes(spec: str, retrieval: str = "default") -> list[E2EMode]:
    if retrieval not in RETRIEVAL_MODES:
        raise ValueError(f"unknown retrieval mode {retrieval!r}: use one of {', '.join(RETRIEVAL_MODES)}")
    modes = []
    for raw in spec.split(","):
        name = raw.strip()
        if name == "search":
            modes.append(E2EMode("search", 0, retrieval))
        elif name.startswith("rerank") and name[6:].isdigit():
            modes.append(E2EMode(name, int(name[6:]), retrieval))
        elif name:
            raise ValueError(f"unknown e2e mode {name!r}: use search or rerankN (e.g. rerank20)")
    return modes


def _search_request(collection: str, query: str, mode: E2EMode, top_k: int = 10):
    from search.v1 import search_service_pb2 as pb

    request = pb.SearchRequest(collection=collection, query=query, top_k=top_k, mode=_retrieval_mode(mode))
    request.rerank.enabled = bool(mode.candidates)
    if mode.candidates:
        request.rerank.candidates = mode.candidates
    return request


def _retrieval_mode(mode: E2EMode) -> int:
    from services.cli.client import MODES

    return MODES[mode.retrieval]


def paired_overhead_ms(search_ms: Sequence[float], retrieve_ms: Sequence[float], rerank_ms: Sequence[float]) -> float:
    """Median over queries of Search minus the same query's direct Retrieve (and Rerank): what the
    gateway adds. Paired per query, so the spread of the downstream times between queries cancels."""
    return percentile([s - r - k for s, r, k in zip(search_ms, retrieve_ms, rerank_ms, strict=True)], 50)


SEARCH_METHOD = "search.v1.SearchService/Search"


def gateway_time_sums(exposition: str) -> tuple[float, float, float]:
    """From the gateway's /metrics text: seconds spent serving Search, Search calls served, and
    seconds its Search calls spent waiting on downstream calls (all targets and methods)."""
    from prometheus_client.parser import text_string_to_metric_families

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


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


async def measure_overhead(stack: Stack, queries: Sequence[str], mode: E2EMode, top_k: int = 10) -> dict[str, float]:
    """Sequential calls: Search through the gateway, then the same Retrieve (and Rerank) directly."""
    import grpc

    from search.v1 import (
        rerank_service_pb2 as rr_pb,
        rerank_service_pb2_grpc as rr_grpc,
        retrieval_service_pb2 as rt_pb,
        retrieval_service_pb2_grpc as rt_grpc,
        search_service_pb2_grpc as pb_grpc,
    )

    p = stack.procs
    e2e, retrieve, rerank = [], [], []
    async with grpc.aio.insecure_channel(p.address("gateway"), options=_grpc_options()) as gw, \
            grpc.aio.insecure_channel(p.address("retrieval"), options=_grpc_options()) as rt, \
            grpc.aio.insecure_channel(p.address("reranker"), options=_grpc_options()) as rr:
        search, retrieval, reranker = pb_grpc.SearchServiceStub(gw), rt_grpc.RetrievalServiceStub(rt), rr_grpc.RerankServiceStub(rr)
        for i, query in enumerate(queries):
            start = time.perf_counter()
            await search.Search(_search_request(stack.collection, query, mode, top_k), timeout=60)
            t_search = (time.perf_counter() - start) * 1000.0
            start = time.perf_counter()
            found = await retrieval.Retrieve(
                rt_pb.RetrieveRequest(collection=stack.collection, query=query, limit=max(top_k, mode.candidates),
                                      mode=_retrieval_mode(mode)), timeout=60
            )
            t_retrieve = (time.perf_counter() - start) * 1000.0
            if i == 0:
                before = gateway_time_sums(await asyncio.to_thread(_scrape, p.metrics_url("gateway")))
            t_rerank = 0.0
            if mode.candidates and found.candidates:
                passages = [f"{c.title}\n{c.text}" if c.title else c.text for c in found.candidates[: mode.candidates]]
                start = time.perf_counter()
                await reranker.Rerank(rr_pb.RerankRequest(query=query, passages=passages), timeout=60)
                t_rerank = (time.perf_counter() - start) * 1000.0
            if i == 0:
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


async def open_loop(address: str, collection: str, queries: Sequence[str], mode: E2EMode, rate: float,
                    seconds: float, timeout: float) -> StepResult:
    """Offer Search requests at a fixed ``rate`` for ``seconds`` regardless of responses."""
    import grpc

    from search.v1 import search_service_pb2_grpc as pb_grpc

    n = max(1, int(round(rate * seconds)))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    degraded = 0
    last_done = 0.0
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await channel.channel_ready()

        async def one(request) -> None:
            nonlocal degraded, last_done
            start = time.perf_counter()
            try:
                reply = await stub.Search(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                return
            finished = time.perf_counter()
            last_done = max(last_done, finished)
            latencies.append((finished - start) * 1000.0)
            degraded += int(reply.degraded)

        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(_search_request(collection, queries[i % len(queries)], mode))))
        await asyncio.gather(*tasks)
    ok = len(latencies)
    span = max(last_done - t0, n / rate) if ok else n / rate
    return StepResult(rate, n / rate, n, ok, dict(errors), degraded, ok / span, latencies)


def _bench_e2e(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    corpus = load_corpus(dataset, max_docs=args.docs)
    if corpus is None:
        return _skip("e2e", dataset)
    try:
        modes = parse_e2e_modes(args.modes, args.retrieval_mode)
    except ValueError as exc:
        print(f"searchctl bench e2e: {exc}", file=sys.stderr)
        return 2
    info = machine_info()
    _print_machine(info)
    queries = list(corpus.queries)
    random.Random(args.seed).shuffle(queries)
    results: dict[str, Any] = {"machine": info, "modes": {}, "zipf": args.zipf}
    from services.cli import bench_peers  # issue 13: raw query limit, CPU per query, caches, the LanceDB peer

    if not args.no_raw_limit:
        raw = results["raw_query_limit"] = bench_peers.raw_query_limit(queries)
        print(f"raw query embedding, this run: {raw['one_at_a_time']:.1f} queries/s one at a time "
              f"({raw['one_at_a_time_cpu_ms']:.2f} CPU ms each), {raw['batch16']:.1f}/s in batches of 16", flush=True)
        if any(m.candidates for m in modes):
            rr = results["raw_rerank_limit"] = bench_peers.raw_rerank_limit(queries, corpus.passages)
            print(f"raw cross-encoder, this run: {rr['pairs_per_s']:.1f} pairs/s ({rr['cpu_ms_per_pair']:.1f} CPU ms each)", flush=True)
    with Stack(args, corpus) as stack:
        offset = args.overhead_queries + 1  # one sequence over all modes: no step repeats a query (unless --zipf)
        for mode in modes:
            print(f"\n== {mode.name}, retrieval mode {mode.retrieval} (p95 objective {mode.slo_ms:.0f} ms)")
            over = asyncio.run(measure_overhead(stack, queries[: args.overhead_queries + 1], mode))
            print(f"sequential: Search p50 {over['search_p50_ms']:.1f} ms (p95 {over['search_p95_ms']:.1f}); direct Retrieve p50 "
                  f"{over['retrieve_p50_ms']:.1f} ms" + (f", Rerank p50 {over['rerank_p50_ms']:.1f} ms" if mode.candidates else "")
                  + f" -> gateway overhead (median of per-query differences) {over['overhead_ms']:.1f} ms (target <= 3 ms); "
                  f"inside the gateway (its metrics: Search time not spent on downstream calls) {over['server_overhead_ms']:.2f} ms")
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
                with bench_peers.StepCounters(stack.procs) as counters:
                    step = asyncio.run(open_loop(stack.procs.address("gateway"), stack.collection, step_queries,
                                                 mode, rate, seconds, args.timeout))
                extra = counters.finish(step.ok)
                offset += step.sent
                ok = sustained(step, mode.slo_ms)
                steps.append(step)
                history.append((rate, ok))
                s = step.summary
                print(f"  offered {rate:7.2f} QPS for {step.seconds:5.1f} s: achieved {step.achieved_qps:7.2f} QPS, p50 {_fmt_ms(s['p50_ms'])} "
                      f"p95 {_fmt_ms(s['p95_ms'])} p99 {_fmt_ms(s['p99_ms'])} ms, errors {sum(step.errors.values())}"
                      + (f" {step.errors}" if step.errors else "") + f", degraded {step.degraded} -> {'ok' if ok else 'over'}", flush=True)
                print(bench_peers.describe_step(extra), flush=True)
                step_extras.append(extra)
                if over["search_p95_ms"] > mode.slo_ms:
                    break
                rate = next_rate(history, start_rate, args.growth, args.resolution, args.min_rate)
                time.sleep(args.settle)
            best = max((s for s, (_, ok) in zip(steps, history) if ok), key=lambda s: s.rate, default=None)
            if best is None:
                print(f"-> {mode.name}: no tested rate sustained p95 <= {mode.slo_ms:.0f} ms")
            else:
                s = best.summary
                print(f"-> {mode.name}: highest sustained arrival rate {best.rate:.2f} QPS (achieved {best.achieved_qps:.2f}, "
                      f"p50 {s['p50_ms']:.0f} / p95 {s['p95_ms']:.0f} / p99 {s['p99_ms']:.0f} ms)")
            results["modes"][mode.name] = {
                "retrieval_mode": mode.retrieval,
                "slo_p95_ms": mode.slo_ms, "overhead": over,
                "steps": [{**s.as_dict(), **x} for s, x in zip(steps, step_extras)],
                "max_sustained_qps": best.rate if best else 0.0,
            }
            if best is not None and "raw_query_limit" in results and not mode.candidates:
                ratio = best.rate / results["raw_query_limit"]["one_at_a_time"]
                results["modes"][mode.name]["ratio_to_raw_one_at_a_time"] = ratio
                print(f"   = {ratio:.2f} of the raw one-at-a-time query-embedding limit of this run")
            if best is not None and "raw_rerank_limit" in results and mode.candidates:
                allowed = results["raw_rerank_limit"]["pairs_per_s"] / mode.candidates
                results["modes"][mode.name]["ratio_to_raw_rerank"] = best.rate / allowed
                print(f"   = {best.rate / allowed:.2f} of the {allowed:.2f} QPS the raw cross-encoder allows at depth {mode.candidates}")
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


# --------------------------------------------------------------------------- bench frontier


def _bench_frontier(args: argparse.Namespace) -> int:
    from services.cli import beir
    from services.cli.evaluate import compute_metrics, select_queries

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
    import grpc

    from search.v1 import search_service_pb2_grpc as pb_grpc

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


def pareto(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points not dominated by a faster-or-equal point with a higher NDCG@10, fastest first."""
    out = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p["p50_ms"], -p["ndcg@10"])):
        if p["ndcg@10"] > best:
            out.append(p)
            best = p["ndcg@10"]
    return out


def plot_frontier(points: Sequence[Mapping[str, Any]], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for length in sorted({p["max_length"] for p in points if p["depth"]}):
        series = sorted((p for p in points if p["max_length"] == length and p["depth"]), key=lambda p: p["depth"])
        ax.plot([p["p50_ms"] for p in series], [p["ndcg@10"] for p in series], marker="o", label=f"rerank, max_length {length}")
        for p in series:
            ax.annotate(str(p["depth"]), (p["p50_ms"], p["ndcg@10"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for p in points:
        if not p["depth"]:
            ax.scatter([p["p50_ms"]], [p["ndcg@10"]], marker="s", color="black", zorder=3, label="no rerank (hybrid retrieval)")
    front = pareto(points)
    ax.plot([p["p50_ms"] for p in front], [p["ndcg@10"] for p in front], linestyle=":", color="grey", label="Pareto frontier")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Search p50 latency, ms (log scale; sequential requests)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Quality vs latency: rerank depth (labels) and max length", fontsize=11)
    fig.text(0.5, 0.005, subtitle, ha="center", fontsize=7, color="grey")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmarks: reranker and embedder against the raw model, end-to-end load, quality/latency frontier",
        description="Benchmarks that start their own servers on free loopback ports and print figures and ratios "
        "measured in the same run (docs/BENCHMARKS.md).",
    )
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default=str(DEFAULT_DATASET), help="BEIR folder (default %(default)s)")
        p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        p.add_argument("--seed", type=int, default=7)

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

    e = bsub.add_parser("embed", help="searchctl ingest docs/s vs raw batched embedding")
    common(e)
    e.add_argument("--docs", type=int, default=1024, help="documents to ingest, 0 = the whole corpus (default %(default)s)")
    e.add_argument("--batch-size", type=int, default=64, help="searchctl ingest --batch-size (default %(default)s)")
    e.add_argument("--concurrency", type=int, default=2, help="searchctl ingest --concurrency (default %(default)s)")
    e.add_argument("--rounds", type=int, default=3,
                   help="ingestions, each between two raw runs of the best layout, for paired ratios (default %(default)s)")
    e.add_argument("--batch-sizes", default="1,2,4,8,32", help="raw batch sizes tried for the limit (default %(default)s)")
    e.add_argument("--limit-docs", type=int, default=256, help="documents embedded per raw measurement (default %(default)s)")
    e.add_argument("--profile", metavar="DIR", help="py-spy the retrieval service during ingestion")
    e.add_argument("--profile-seconds", type=float, default=30.0)
    e.set_defaults(func=_bench_embed)

    def stack_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="keep the services' data (Qdrant) here and reuse an ingested collection "
                       "(default: a temporary directory)")
        p.add_argument("--docs", type=int, default=0, help="ingest only the first N documents (default: the whole corpus)")

    x = bsub.add_parser("e2e", help="open-loop load against the gateway; highest arrival rate under the p95 objective")
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
    x.add_argument("--no-raw-limit", action="store_true", help="skip the raw query-embedding limit")
    x.add_argument("--peer", choices=("lancedb", "none"), default="lancedb",
                   help="after the load steps: the same queries through LanceDB in-process (bench extra) and NDCG@10 (default %(default)s)")
    x.set_defaults(func=_bench_e2e)

    from services.cli import bench_profile  # where the CPU goes per process (issue 13)

    bench_profile.register(bsub, str(DEFAULT_DATASET))

    f = bsub.add_parser("frontier", help="NDCG@10 vs Search p50 for rerank depth x max length; PNG plot")
    common(f)
    stack_opts(f)
    f.add_argument("--split", default="test")
    f.add_argument("--max-queries", type=int, default=100, help="first N judged queries, 0 = all (default %(default)s)")
    f.add_argument("--depths", default="10,20,50,100", help="rerank candidates (default %(default)s)")
    f.add_argument("--max-lengths", default="128,256,512", help="RERANKER_MAX_LENGTH values (default %(default)s)")
    f.add_argument("--png", default=str(REPO / "docs" / "frontier.png"), help="plot file (default docs/frontier.png; '' = none)")
    f.set_defaults(func=_bench_frontier)

    from services.cli import bench_scale  # the store alone at 10k-1M points (its own module)

    bench_scale.register(bsub, str(DEFAULT_DATASET))
