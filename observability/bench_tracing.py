"""Micro-benchmark: what tracing costs when off, and when on.

    python observability/bench_tracing.py            # from the repo root, in the venv
    python observability/bench_tracing.py --calls 3000 --spans 200000

Two measurements:

1. ``tracing.span()`` (and ``set_attributes``, ``batch_member``) per call, in-process:
   off (the shared null context), on and sampled, on but not sampled.
2. A unary RPC through the platform's interceptor chain on a real grpc.aio server and
   client on loopback (``tracing.server_interceptors()``, ``MetricsServerInterceptor``,
   ``ErrorMappingInterceptor``; the client with ``tracing.client_interceptors()``; the
   handler opens one inner span), sequential calls, per-call latency: a baseline whose
   handler makes no tracing call at all and no tracing interceptor runs, off (ids only:
   ``TraceIdOnlyServerInterceptor``, exactly what a service runs by default), on + sampled,
   on + not sampled.

"On" exports through a SimpleSpanProcessor to an exporter that drops the spans, so the
figures are the SDK's cost in the request path (span creation, context, attributes,
propagation), not a collector's. Results go to stdout; docs/METRICS.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402

from services.common import metrics, tracing  # noqa: E402
from services.common.errors import ErrorMappingInterceptor  # noqa: E402

MODES = ("off", "on, sampled", "on, not sampled")


class DropExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def enable(mode: str) -> None:
    tracing.shutdown_tracing()
    os.environ.pop("OTEL_TRACES_SAMPLER", None)
    if mode == "off":
        return
    if mode == "on, not sampled":
        os.environ["OTEL_TRACES_SAMPLER"] = "always_off"
    tracing.setup_tracing("bench", exporter=DropExporter(), set_global=False)


def bench_spans(n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    items = [object() for _ in range(4)]
    for mode in MODES:
        enable(mode)
        figures = {}
        for label, body in (
            ("span()", lambda: tracing.span("inner", **{"batch.size": 4}).__enter__()),
            ("span() with block", None),
            ("set_attributes()", lambda: tracing.set_attributes(**{"search.top_k": 10})),
            ("batch_member()", None),
        ):
            best = float("inf")
            for _ in range(5):  # best of 5: the least disturbed by the other processes
                start = time.perf_counter_ns()
                if label == "span() with block":
                    for _ in range(n):
                        with tracing.span("inner", **{"batch.size": 4}):
                            pass
                elif label == "batch_member()":
                    for _ in range(n):
                        with tracing.batch_member(items):
                            pass
                elif label == "span()":
                    for _ in range(n):
                        tracing.span("inner", **{"batch.size": 4})
                else:
                    for _ in range(n):
                        body()
                best = min(best, (time.perf_counter_ns() - start) / n)
            figures[label] = best
        out[mode] = figures
    tracing.shutdown_tracing()
    return out


RPC_MODES = ("baseline", *MODES)


async def bench_rpc(calls: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {mode: [] for mode in RPC_MODES}

    async def plain(request: bytes, context) -> bytes:
        return request

    async def traced(request: bytes, context) -> bytes:
        with tracing.span("inner", **{"payload.bytes": len(request)}):
            tracing.set_attributes(**{"search.top_k": 10})
            return request

    for _ in range(rounds):  # interleave the modes so load changes hit all of them alike
        for mode in RPC_MODES:
            enable("off" if mode == "baseline" else mode)
            echo = plain if mode == "baseline" else traced
            server = grpc.aio.server(
                interceptors=[*(tracing.server_interceptors() if mode != "baseline" else ()),
                              metrics.MetricsServerInterceptor("bench"), ErrorMappingInterceptor()]
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("bench.v1.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)}),)
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=tracing.client_interceptors()) as ch:
                say = ch.unary_unary("/bench.v1.Echo/Say")
                for _ in range(200):
                    await say(b"x" * 64, timeout=5)
                samples = []
                for _ in range(calls):
                    start = time.perf_counter_ns()
                    await say(b"x" * 64, timeout=5)
                    samples.append((time.perf_counter_ns() - start) / 1000)
            await server.stop(None)
            results[mode].append(statistics.median(samples))
    tracing.shutdown_tracing()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=100_000, help="span() calls per timing")
    parser.add_argument("--calls", type=int, default=1500, help="RPCs per mode per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the modes (median of medians)")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("\n1. per call, in-process (best of 5, ns)")
    spans = bench_spans(args.spans)
    labels = list(next(iter(spans.values())))
    print(f"{'':22}" + "".join(f"{m:>18}" for m in MODES))
    for label in labels:
        print(f"{label:22}" + "".join(f"{spans[m][label]:>18.0f}" for m in MODES))

    print(f"\n2. unary RPC on loopback through the interceptor chain (median us per call; {args.rounds} rounds x {args.calls} calls)")
    rpc = asyncio.run(bench_rpc(args.calls, args.rounds))
    base = statistics.median(rpc["baseline"])
    for mode in RPC_MODES:
        value = statistics.median(rpc[mode])
        rounds = ", ".join(f"{v:.0f}" for v in rpc[mode])
        print(f"{mode:22}{value:>10.0f} us   ({value - base:+.0f} us vs baseline)   rounds: {rounds}")


if __name__ == "__main__":
    main()
