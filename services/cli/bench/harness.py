"""The shared harness of ``searchctl bench``: data, machine line, JSON output, the process
stack (the three services on loopback with SciFact ingested), open-loop load generation and
rate search, percentiles, raw-model limits, the py-spy profiler and the frontier plot.

Optional packages stay lazy so that ``searchctl --help`` does not import them: onnxruntime
(and the model classes over it), matplotlib, and py-spy (a separate executable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import MODES
from services.cli.evaluate import percentile
from services.cli.ingest_stream import load
from services.cli.procs import ServiceProcs
from services.common import config as cfg
from services.reranker.config import RerankerConfig
from services.retrieval.config import RetrievalConfig

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "scifact"
SLO_MS = {"search": 350.0, "rerank": 900.0}
BENCH_COLLECTION = "bench_scifact"


# --------------------------------------------------------------------------- percentiles and rate search


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (linear interpolation, as ``searchctl eval``) of latencies in ms; NaN when empty."""
    return {f"p{q}_ms": percentile(list(latencies_ms), q) for q in (50, 95, 99)}


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


# --------------------------------------------------------------------------- data, machine, output


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


def open_dataset(command: str, dataset: Path, max_docs: int = 0) -> tuple[Corpus, dict[str, Any]] | None:
    """How a bench over one BEIR dataset starts: its corpus and the machine's figures (printed);
    None, after telling why ``command`` skips, when the dataset is absent."""
    corpus = load_corpus(dataset, max_docs=max_docs)
    if corpus is None:
        _skip(command, dataset)
        return None
    info = machine_info()
    _print_machine(info)
    return corpus, info


def _fmt_ms(x: float) -> str:
    return f"{x:8.1f}" if not math.isnan(x) else "     n/a"


def _write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def _grpc_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def common(p: argparse.ArgumentParser) -> None:
    """The flags every dataset bench takes."""
    p.add_argument("--dataset", default=str(DEFAULT_DATASET), help="BEIR folder (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=7)


def stack_opts(p: argparse.ArgumentParser) -> None:
    """The flags of the benches that run a :class:`Stack`."""
    p.add_argument("--data-dir", help="keep the services' data (Qdrant) here and reuse an ingested collection "
                   "(default: a temporary directory)")
    p.add_argument("--docs", type=int, default=0, help="ingest only the first N documents (default: the whole corpus)")


# --------------------------------------------------------------------------- profiling (py-spy, ONNX Runtime)


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


# --------------------------------------------------------------------------- models and raw limits


def _rerank_config():
    return cfg.load(RerankerConfig, None)


def _cross_encoder(conf, threads: int):
    """The service's cross-encoder (CrossEncoder.from_config), scoring at least 64 pairs a call."""
    from services.reranker.cross_encoder import CrossEncoder

    return CrossEncoder.from_config(replace(conf, max_batch_pairs=max(64, conf.max_batch_pairs)), threads)


def _retrieval_config():
    return cfg.load(RetrievalConfig, None)


def _bi_encoder(conf, threads: int):
    """The service's bi-encoder (BiEncoder.from_config)."""
    from services.retrieval.embedder import BiEncoder

    return BiEncoder.from_config(conf, threads)


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


# --------------------------------------------------------------------------- stack with an ingested collection


def _open_procs_env() -> dict[str, str]:
    # The bench talks to its own gateway without credentials or TLS.
    return {"GATEWAY_API_KEYS": "", "GATEWAY_API_KEYS_FILE": ""}


class Stack:
    """The three services on loopback with SciFact ingested (reused from ``--data-dir``)."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, gateway_env: Mapping[str, str] | None = None,
                 api_key: str | None = None, env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._tmp = None
        self.env = {name: dict(values) for name, values in (env or {}).items()}  # per service, e.g. caches off
        self.api_key = api_key  # a key of a caller with search, write and admin when gateway_env sets callers
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
        p.start("retrieval", self.env.get("retrieval"), wait=False)
        p.start("reranker", self.env.get("reranker"), wait=False)
        p.start("gateway", {**self.env.get("gateway", {}), **self.gateway_env}, wait=False)
        for name in ("retrieval", "reranker", "gateway"):
            p.wait(name)
        self.ensure_ingested()
        return self

    def __exit__(self, *exc) -> None:
        self.procs.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()

    def ensure_ingested(self) -> None:
        with grpc.insecure_channel(self.procs.address("gateway"), options=_grpc_options()) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            try:
                count = stub.DescribeCollection(pb.DescribeCollectionRequest(name=self.collection), timeout=30,
                                                metadata=self.metadata).collection.document_count
            except grpc.RpcError:
                count = 0
        if count >= len(self.corpus.docs):
            print(f"collection {self.collection!r} already holds {count} documents")
            return

        start = time.perf_counter()
        outcome = load(self.corpus.docs, self.collection, self.procs.address("gateway"), batch_size=64,
                       api_key=self.api_key)
        print(f"ingested {outcome.written} documents in {time.perf_counter() - start:.0f} s (one Ingest stream)")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else None

    def restart_reranker(self, overrides: Mapping[str, str]) -> None:
        self.procs.start("reranker", {**self.env.get("reranker", {}), **overrides})


# --------------------------------------------------------------------------- Search requests and open-loop load


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
    request = pb.SearchRequest(collection=collection, query=query, top_k=top_k, mode=_retrieval_mode(mode))
    # rerankN means every query reranked at depth N (the always policy), search means never.
    request.rerank.policy = pb.RERANK_POLICY_ALWAYS if mode.candidates else pb.RERANK_POLICY_NEVER
    if mode.candidates:
        request.rerank.candidates = mode.candidates
    return request


def _retrieval_mode(mode: E2EMode) -> int:
    return MODES[mode.retrieval]


async def open_loop(address: str, collection: str, queries: Sequence[str], mode: E2EMode, rate: float,
                    seconds: float, timeout: float) -> StepResult:
    """Offer Search requests at a fixed ``rate`` for ``seconds`` regardless of responses."""


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
