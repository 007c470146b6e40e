"""`searchctl bench embed`: documents/s of ``searchctl ingest`` (gateway -> retrieval:
embedding, BM25, Qdrant) against raw batched embedding of the same texts in this process."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.cli.bench.harness import (
    REPO,
    Profiler,
    RawLayout,
    ServiceProcs,
    _bi_encoder,
    _open_procs_env,
    _retrieval_config,
    _write_json,
    common,
    measure_layout,
    open_dataset,
    process_cpu_seconds,
    raw_layouts,
    show_rates,
    sweep_layouts,
)



def _bench_embed(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    opened = open_dataset("embed", dataset, max_docs=args.docs)
    if opened is None:
        return 0
    corpus, info = opened
    conf = _retrieval_config()
    from services.common.hardware import available_cpus

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
                   "--target", procs.address("gateway"), "--batch-size", str(args.batch_size)]
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
        "batch_size": args.batch_size, "machine": info,
    })
    return 0


def _ingest_rate(stdout: str) -> float | None:
    match = re.search(r"\(([\d.]+) docs/s\)", stdout)
    return float(match.group(1)) if match else None


def register(bsub: argparse._SubParsersAction) -> None:
    e = bsub.add_parser("embed", help="searchctl ingest docs/s vs raw batched embedding")
    common(e)
    e.add_argument("--docs", type=int, default=1024, help="documents to ingest, 0 = the whole corpus (default %(default)s)")
    e.add_argument("--batch-size", type=int, default=64, help="searchctl ingest --batch-size (default %(default)s)")
    e.add_argument("--rounds", type=int, default=3,
                   help="ingestions, each between two raw runs of the best layout, for paired ratios (default %(default)s)")
    e.add_argument("--batch-sizes", default="1,2,4,8,32", help="raw batch sizes tried for the limit (default %(default)s)")
    e.add_argument("--limit-docs", type=int, default=256, help="documents embedded per raw measurement (default %(default)s)")
    e.add_argument("--profile", metavar="DIR", help="py-spy the retrieval service during ingestion")
    e.add_argument("--profile-seconds", type=float, default=30.0)
    e.set_defaults(func=_bench_embed)
