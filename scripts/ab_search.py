"""A/B of two service configurations under the same Search load, interleaved in one run.

Both stacks (gateway, retrieval, reranker) run at once, each on its own copy of the same
collection; the load alternates between them in rounds ordered A B, B A, A B, ... (``--rounds``;
use an even number), so a drift of the machine's speed and the advantage of the turn that comes
second hit both alike. Each turn: ``--clients`` closed-loop clients for
``--seconds`` (in the load process of `bench e2e`, distinct queries, search only), then one
client for ``--one-client-seconds``; it prints QPS, p50/p95 and CPU ms per Search of every
service process (their own process_cpu_seconds_total), and at the end each figure of B over A.

A configuration is ``NAME[:KEY=VALUE,...][@TREE]``: environment settings for all three services,
and optionally another source tree to run the services from (e.g. an export of an earlier
commit: ``git archive COMMIT | tar -x -C /tmp/base``), to compare code changes.

    PYTHONPATH=$PWD .venv/bin/python scripts/ab_search.py --a window2:EMBEDDER_MAX_WAIT_MS=2 \\
        --b window0:EMBEDDER_MAX_WAIT_MS=0 --data-dir /tmp/ab22 --docs 3600 --json ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.cli import procs as procs_module  # noqa: E402
from services.cli.bench import peers  # noqa: E402
from services.cli.bench.harness import DEFAULT_DATASET, E2EMode, Stack, load_corpus, machine_info  # noqa: E402
from services.cli.bench.loadgen import LoadGenerator  # noqa: E402


def parse_config(spec: str) -> dict[str, Any]:
    """``NAME[:K=V,...][@TREE]`` -> {"name", "env", "tree"}."""
    spec, _, tree = spec.partition("@")
    name, _, settings = spec.partition(":")
    env = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    if tree and not (Path(tree) / "services" / "cli").is_dir():
        raise SystemExit(f"{tree} is not a source tree of this project (no services/cli)")
    return {"name": name, "env": env, "tree": tree or None}


def start_stack(config: dict[str, Any], data_dir: Path, docs: int, corpus) -> Stack:
    args = argparse.Namespace(data_dir=str(data_dir), docs=docs)
    env = {service: dict(config["env"]) for service in ("gateway", "retrieval", "reranker")}
    stack = Stack(args, corpus, env=env)
    saved = procs_module.REPO
    procs_module.REPO = Path(config["tree"]) if config["tree"] else saved  # the services run from this tree
    try:
        return stack.__enter__()
    finally:
        procs_module.REPO = saved


def turn(load: LoadGenerator, stack: Stack, queries: list[str], offset: int, clients: int, seconds: float,
         timeout: float = 30.0) -> tuple[dict[str, Any], int]:
    mode = E2EMode("search", 0, "dense")
    step_queries = peers.step_queries(queries, offset, int(1000 * seconds) + clients, 0.0, 0)
    with peers.StepCounters(stack.procs) as counters:
        step, load_cpu = load.closed(stack.procs.address("gateway"), stack.collection, step_queries, mode, clients, seconds, timeout)
    extra = counters.finish(step.ok)
    cpu = extra["cpu_ms_per_query"]
    row = {"clients": clients, "qps": step.achieved_qps, **step.summary, "errors": step.errors,
           "cpu_ms": {**cpu, "services": sum(cpu.values()), "load generator": load_cpu / max(step.ok, 1) * 1000.0},
           "cpu_ms_by_thread": extra.get("cpu_ms_per_query_by_thread", {}),
           "search_result_hit_rate": extra["cache_hit_rates"].get("search_result"),
           "embed_batch_mean_texts": extra["embed_batch_mean_texts"], "load_avg": round(os.getloadavg()[0], 2)}
    return row, offset + step.sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="configuration A: NAME[:KEY=VALUE,...][@TREE]")
    p.add_argument("--b", required=True, help="configuration B")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--docs", type=int, default=3600, help="documents ingested (default %(default)s)")
    p.add_argument("--data-dir", required=True, help="keeps one copy of the collection per configuration, reused")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="closed-loop seconds per turn (default %(default)s)")
    p.add_argument("--one-client-seconds", type=float, default=8.0, help="one-client seconds per turn, 0 to skip")
    p.add_argument("--rounds", type=int, default=2, help="turns per configuration, interleaved A B, B A, ... (default %(default)s)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    configs = [parse_config(args.a), parse_config(args.b)]
    if configs[0]["name"] == configs[1]["name"]:
        raise SystemExit("give the two configurations different names")
    corpus = load_corpus(Path(args.dataset), max_docs=args.docs)
    if corpus is None:
        raise SystemExit(f"no BEIR dataset at {args.dataset}")
    queries = list(corpus.queries)
    root = Path(args.data_dir)
    first = root / configs[0]["name"]
    for config in configs[1:]:
        target = root / config["name"]
        if not (target / "qdrant").exists():
            if not (first / "qdrant").exists():
                start_stack(configs[0], first, args.docs, corpus).__exit__(None, None, None)  # ingest once
            shutil.copytree(first, target, ignore=shutil.ignore_patterns("*.log"))
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_avg']}")
    rows: list[dict[str, Any]] = []
    offset = 0
    with ExitStack() as stacks, LoadGenerator() as load:
        running = {}
        for c in configs:
            running[c["name"]] = start_stack(c, root / c["name"], args.docs, corpus)
            stacks.push(running[c["name"]])  # stopped on the way out
        for c in configs:  # warm both up (connections, first batches): not counted
            _, offset = turn(load, running[c["name"]], queries, offset, args.clients, 2.0)
        for r in range(args.rounds):
            # A B, then B A, ...: the turn that follows the other configuration's turn measured
            # 5-16% faster in every plain A-then-B run of 2026-12-06 (BENCHMARKS.md, issue 22),
            # whichever configuration it was; alternating the order cancels that and linear drift.
            for c in (configs if r % 2 == 0 else configs[::-1]):
                for clients, seconds in ((args.clients, args.seconds), (1, args.one_client_seconds)):
                    if seconds <= 0:
                        continue
                    row, offset = turn(load, running[c["name"]], queries, offset, clients, seconds)
                    row.update(config=c["name"], round=r)
                    rows.append(row)
                    cpu = row["cpu_ms"]
                    print(f"{c['name']:>12} round {r} {clients:>2} clients: {row['qps']:7.1f} QPS  p50 {row['p50_ms']:6.1f}  "
                          f"p95 {row['p95_ms']:6.1f} ms  CPU ms/Search gateway {cpu['gateway']:.2f} retrieval {cpu['retrieval']:.2f} "
                          f"services {cpu['services']:.2f} (load gen {cpu['load generator']:.2f})  embed batch {row['embed_batch_mean_texts']:.2f}  "
                          f"errors {row['errors'] or 0}  "
                          f"result-cache hits {row['search_result_hit_rate'] if row['search_result_hit_rate'] is not None else '-'}  "
                          f"load {row['load_avg']:.2f}", flush=True)
                    print("               by thread: " + "; ".join(
                        f"{n}: " + ", ".join(f"{g} {v:.2f}" for g, v in groups.items() if v >= 0.05)
                        for n, groups in row["cpu_ms_by_thread"].items() if n != "reranker"), flush=True)
    print("\nmeans over the rounds, and B / A:")
    summary: dict[str, Any] = {}
    for clients in sorted({row["clients"] for row in rows}, reverse=True):
        for c in configs:
            mine = [row for row in rows if row["config"] == c["name"] and row["clients"] == clients]
            summary[f"{c['name']}:{clients}"] = {
                "qps": statistics.mean(row["qps"] for row in mine),
                "p50_ms": statistics.mean(row["p50_ms"] for row in mine),
                "p95_ms": statistics.mean(row["p95_ms"] for row in mine),
                "cpu_ms_per_search": statistics.mean(row["cpu_ms"]["services"] for row in mine),
            }
        a, b = (summary[f"{c['name']}:{clients}"] for c in configs)
        for key in ("qps", "p50_ms", "p95_ms", "cpu_ms_per_search"):
            print(f"  {clients:>2} clients {key:>18}: {configs[0]['name']} {a[key]:8.2f}  {configs[1]['name']} {b[key]:8.2f}  "
                  f"B/A {b[key] / a[key]:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "configs": configs, "rows": rows, "summary": summary},
                                              indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
