"""`searchctl up`: the whole stack on one machine, on embedded Qdrant; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc

START_ORDER = ("retrieval", "reranker", "gateway")


def wait_serving(address: str, timeout: float, procs: dict[str, subprocess.Popen] | None = None) -> None:
    """Block until ``address`` reports SERVING, or raise TimeoutError / RuntimeError."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            for name, proc in (procs or {}).items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up (see its log lines above)")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not report SERVING within {timeout:.0f} s")


def _demo(target: str, collection: str) -> None:
    from services.cli.client import ingest, open_channel
    from services.cli.demo import demo_corpus

    async def count() -> int:
        async with open_channel(target) as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            try:
                reply = await stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30)
                return reply.collection.document_count
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return 0
                raise

    if asyncio.run(count()) > 0:
        print(f"collection {collection!r} already holds documents; not reloading the demo corpus", flush=True)
        return
    docs = demo_corpus()
    written = asyncio.run(ingest(docs, collection, target, batch_size=32, total=len(docs)))
    print(f"loaded {written} demo passages (the project's own docs) into {collection!r}", flush=True)


def _up(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    env.setdefault("QDRANT_PATH", args.data_dir)
    ports = {"gateway": args.gateway_port, "retrieval": args.retrieval_port, "reranker": args.reranker_port}
    env["RETRIEVAL_ADDR"] = f"localhost:{ports['retrieval']}"
    env["RERANKER_ADDR"] = f"localhost:{ports['reranker']}"
    procs: dict[str, subprocess.Popen] = {}

    def stop_all(*_):
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    try:
        for name in START_ORDER:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", name, "--port", str(ports[name])],
                env=env,
            )
        for name in START_ORDER:
            wait_serving(f"localhost:{ports[name]}", args.start_timeout, procs)
        target = f"localhost:{ports['gateway']}"
        if not args.no_demo:
            _demo(target, args.collection)
        body = '{"collection": "%s", "query": "how do I run the tests?", "top_k": 3}' % args.collection
        print(
            f"\nready: gateway on {target} (retrieval :{ports['retrieval']}, reranker :{ports['reranker']}; "
            f"metrics :{env.get('GATEWAY_METRICS_PORT', '9101')}/:{env.get('RETRIEVAL_METRICS_PORT', '9102')}/"
            f":{env.get('RERANKER_METRICS_PORT', '9103')}). Try:\n"
            f"  grpcurl -plaintext -d '{body}' {target} search.v1.SearchService/Search\n"
            f"  searchctl search \"how do I run the tests?\" --collection {args.collection}\n"
            "Ctrl-C stops all three services.",
            flush=True,
        )
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        failed = [n for n, p in procs.items() if p.returncode not in (0, None)]
        if failed:
            print(f"searchctl up: {', '.join(failed)} exited; stopping the others", file=sys.stderr)
            return 1
        return 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"searchctl up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop_all()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run all three services locally on embedded Qdrant",
        description="Start retrieval, reranker and gateway as child processes on embedded Qdrant, load the demo "
        "corpus when the collection is empty, print a ready line, and stop everything on Ctrl-C.",
    )
    p.add_argument("--data-dir", default=".data/qdrant", help="embedded Qdrant path unless QDRANT_PATH is set (default %(default)s)")
    p.add_argument("--collection", default="docs", help="demo collection (default %(default)s)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo corpus")
    p.add_argument("--gateway-port", type=int, default=50051)
    p.add_argument("--retrieval-port", type=int, default=50052)
    p.add_argument("--reranker-port", type=int, default=50053)
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for each service (default %(default)s)")
    p.set_defaults(func=_up)
