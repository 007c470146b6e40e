"""`searchctl bench fairness`: one noisy caller cannot starve the rest.

The gateway runs with named callers (inline ``GATEWAY_API_KEYS``): ``quiet`` (a search quota it
stays within), ``noisy`` (a search quota it exceeds ``--noisy-factor`` times) and ``flood`` (no
quota: it floods the in-flight cap, ``--cap``, with ``3 x cap`` closed-loop clients). Each round:

1. ``baseline``: quiet alone, open loop at ``--quiet-rate``;
2. ``quota``: quiet as before, and noisy open loop at ``factor x`` its quota;
3. ``baseline`` again (the machine drifts: the loaded steps are compared with the mean of the
   baselines around them);
4. ``flood``: quiet as before, and flood.

Printed per step: the quiet caller's success rate, p50/p95 and the ratio of its p95 to the
unloaded p95; for noisy and flood: sent, served, shed with RESOURCE_EXHAUSTED and how many of those
carried a ``google.rpc.RetryInfo``. The targets (quiet success >= 99 %, p95 within 1.5x of unloaded,
the noisy caller shed with RetryInfo) are printed next to the figures, not asserted.
Search is first-stage only by default (``--candidates`` reranks), so the figures are about the
gateway's admission, not the reranker's queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.bench.harness import (
    Stack,
    _grpc_options,
    _write_json,
    common,
    latency_summary,
    open_dataset,
    stack_opts,
)

CALLERS = """
[[caller]]
name = "bench-admin"
scopes = ["search", "write", "admin"]
keys = ["{admin}"]

[[caller]]
name = "quiet"
scopes = ["search"]
keys = ["{quiet}"]
quota.search = {{ rate = {quiet_quota}, burst = {quiet_quota} }}

[[caller]]
name = "noisy"
scopes = ["search"]
keys = ["{noisy}"]
quota.search = {{ rate = {noisy_quota}, burst = {noisy_quota} }}

[[caller]]
name = "flood"
scopes = ["search"]
keys = ["{flood}"]
"""


@dataclass
class Outcomes:
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    retry_info: int = 0

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def record(self, started: float, exc: grpc.aio.AioRpcError | None) -> None:
        if exc is None:
            self.codes["OK"] += 1
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            return
        self.codes[exc.code().name] += 1
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _has_retry_info(exc):
            self.retry_info += 1

    def summary(self) -> dict[str, Any]:
        ok = self.codes.get("OK", 0)
        return {"sent": self.sent, "ok": ok, "success": ok / self.sent if self.sent else float("nan"),
                "codes": dict(self.codes), "shed_with_retry_info": self.retry_info, **latency_summary(self.latencies_ms)}


def _has_retry_info(exc: grpc.aio.AioRpcError) -> bool:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status_pb2.Status.FromString(value).details)
    return False


def _request(collection: str, query: str, candidates: int) -> pb.SearchRequest:
    request = pb.SearchRequest(collection=collection, query=query, top_k=10)
    request.rerank.enabled = bool(candidates)
    if candidates:
        request.rerank.candidates = candidates
    return request


async def _call(stub, request, key: str, out: Outcomes) -> None:
    started = time.perf_counter()
    try:
        await stub.Search(request, timeout=30, metadata=(("authorization", f"Bearer {key}"),))
        out.record(started, None)
    except grpc.aio.AioRpcError as exc:
        out.record(started, exc)


async def _open_loop(stub, collection: str, queries: Sequence[str], key: str, rate: float, seconds: float,
                     candidates: int) -> Outcomes:
    out = Outcomes()
    tasks = []
    t0 = time.perf_counter()
    for i in range(max(1, int(rate * seconds))):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_call(stub, _request(collection, queries[i % len(queries)], candidates), key, out)))
    await asyncio.gather(*tasks)
    return out


async def _closed_loop(stub, collection: str, queries: Sequence[str], key: str, workers: int, until: asyncio.Event,
                       candidates: int) -> Outcomes:
    out = Outcomes()

    async def worker(w: int) -> None:
        i = w
        while not until.is_set():
            await _call(stub, _request(collection, queries[i % len(queries)], candidates), key, out)
            i += workers

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return out


async def _step(address: str, collection: str, queries: list[str], keys: dict[str, str], args, loud: str | None) -> dict:
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as quiet_ch, \
            grpc.aio.insecure_channel(address, options=_grpc_options()) as loud_ch:
        quiet_stub, loud_stub = pb_grpc.SearchServiceStub(quiet_ch), pb_grpc.SearchServiceStub(loud_ch)
        await quiet_ch.channel_ready()
        await loud_ch.channel_ready()
        other: asyncio.Future | None = None
        until = asyncio.Event()
        if loud == "noisy":
            other = asyncio.ensure_future(_open_loop(loud_stub, collection, queries[::-1], keys["noisy"],
                                                     args.noisy_factor * args.quota, args.seconds, args.candidates))
        elif loud == "flood":
            other = asyncio.ensure_future(_closed_loop(loud_stub, collection, queries[::-1], keys["flood"],
                                                       3 * args.cap, until, args.candidates))
        quiet = await _open_loop(quiet_stub, collection, queries, keys["quiet"], args.quiet_rate, args.seconds,
                                 args.candidates)
        until.set()
        step = {"quiet": quiet.summary()}
        if other is not None:
            step[loud] = (await other).summary()
        return step


def _line(name: str, step: dict, base_p95: float | None) -> str:
    q = step["quiet"]
    ratio = f", p95/unloaded {q['p95_ms'] / base_p95:.2f}x" if base_p95 else ""
    text = (f"  {name:<9} quiet: {q['ok']}/{q['sent']} ok ({100 * q['success']:.2f} %), "
            f"p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms{ratio}")
    for loud in ("noisy", "flood"):
        if loud in step:
            o = step[loud]
            shed = o["codes"].get("RESOURCE_EXHAUSTED", 0)
            text += (f"\n  {'':<9} {loud}: sent {o['sent']}, served {o['ok']}, shed {shed} RESOURCE_EXHAUSTED "
                     f"({o['shed_with_retry_info']} with RetryInfo), other codes "
                     f"{ {c: n for c, n in o['codes'].items() if c not in ('OK', 'RESOURCE_EXHAUSTED')} or 'none'}")
    return text


def _bench_fairness(args: argparse.Namespace) -> int:
    opened = open_dataset("fairness", Path(args.dataset), max_docs=args.docs)
    if opened is None:
        return 0
    corpus, info = opened
    keys = {name: secrets.token_urlsafe(32) for name in ("admin", "quiet", "noisy", "flood")}
    callers = CALLERS.format(**keys, quiet_quota=max(1.0, 2 * args.quiet_rate), noisy_quota=args.quota)
    env = {"GATEWAY_API_KEYS": callers, "GATEWAY_MAX_IN_FLIGHT": str(args.cap), "GATEWAY_RESULT_CACHE_SIZE": "0"}
    queries = list(corpus.queries)
    random.Random(args.seed).shuffle(queries)
    print(f"callers: quiet at {args.quiet_rate:g}/s (quota {max(1.0, 2 * args.quiet_rate):g}/s), noisy at "
          f"{args.noisy_factor:g} x its quota of {args.quota:g}/s, flood {3 * args.cap} closed-loop clients (no quota); "
          f"GATEWAY_MAX_IN_FLIGHT={args.cap}; {args.seconds:g} s per step, {args.rounds} round(s); "
          f"{'rerank ' + str(args.candidates) if args.candidates else 'first stage only'}")
    rounds = []
    with Stack(args, corpus, gateway_env=env, api_key=keys["admin"]) as stack:
        address = stack.procs.address("gateway")
        asyncio.run(_step(address, stack.collection, [f"warm-up {q}" for q in queries[:20]], keys,
                          argparse.Namespace(**{**vars(args), "seconds": 2.0}), None))
        for r in range(args.rounds):
            chunk = queries[(r * 4) % len(queries):] + queries[: (r * 4) % len(queries)]
            steps = {}
            for name, loud in (("baseline", None), ("quota", "noisy"), ("baseline2", None), ("flood", "flood")):
                steps[name] = asyncio.run(_step(address, stack.collection, chunk, keys, args, loud))
                time.sleep(1.0)
            base = statistics.mean([steps["baseline"]["quiet"]["p95_ms"], steps["baseline2"]["quiet"]["p95_ms"]])
            print(f"round {r + 1} (load average {os.getloadavg()[0]:.2f}):")
            for name, step in steps.items():
                print(_line(name, step, None if name.startswith("baseline") else base))
            for name in ("quota", "flood"):
                steps[name]["quiet_p95_over_unloaded"] = steps[name]["quiet"]["p95_ms"] / base
            rounds.append(steps)
    print("targets: quiet success >= 99 % and p95 within 1.5x of unloaded under load; noisy shed with RESOURCE_EXHAUSTED + RetryInfo")
    for name in ("quota", "flood"):
        ratios = [r[name]["quiet_p95_over_unloaded"] for r in rounds]
        success = min(r[name]["quiet"]["success"] for r in rounds)
        print(f"  {name}: quiet success (worst round) {100 * success:.2f} %, p95/unloaded "
              + ", ".join(f"{x:.2f}x" for x in ratios))
    _write_json(args.json, {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "func"},
                            "rounds": rounds, "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    return 0


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("fairness", help="a noisy caller at 10x its quota and one flooding the in-flight cap, beside a steady caller")
    common(p)
    stack_opts(p)
    p.add_argument("--quiet-rate", type=float, default=5.0, help="the steady caller's Search rate, open loop (default %(default)s)")
    p.add_argument("--quota", type=float, default=5.0, help="the noisy caller's search quota, requests/s (default %(default)s)")
    p.add_argument("--noisy-factor", type=float, default=10.0, help="the noisy caller's rate over its quota (default %(default)s)")
    p.add_argument("--cap", type=int, default=8, help="GATEWAY_MAX_IN_FLIGHT (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each step (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the four steps (default %(default)s)")
    p.add_argument("--candidates", type=int, default=0, help="rerank this many candidates (default 0: first stage only)")
    p.set_defaults(func=_bench_fairness)
