"""What one unary gRPC call costs a grpc.aio server in Python, before any work: the floor under
every hop of a Search (issue 22).

A RetrievalService whose Retrieve returns a fixed 11-candidate answer (about the size of a real
one) is served in this process, with no interceptor or with the interceptors every platform
server installs (call tracker, trace ids, RED metrics, error mapping; retrieval's conditional
Retrieve), or with the same interceptors composed once per method and cached (what a server
would save by not running each interceptor's ``intercept_service`` on every call; a prototype,
valid only while every interceptor decides by the method alone), or on grpc's synchronous
server (a thread pool of ``--sync-workers`` running the handler, no interceptor: what a server
would pay without grpc.aio's event loop); 16 concurrent callers in a separate process
(grpc.aio, one channel) call it for ``--seconds``. Printed: calls/s and this process's CPU
microseconds per call, each configuration ``--rounds`` times, interleaved.

    PYTHONPATH=$PWD .venv/bin/python scripts/grpc_floor.py --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.v1 import retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc  # noqa: E402

CALLERS = r'''
import asyncio, sys, time, grpc
sys.path.insert(0, sys.argv[3])
from search.v1 import retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc
async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        end, done = time.time() + float(sys.argv[2]), 0
        async def caller():
            nonlocal done
            while time.time() < end:
                await stub.Retrieve(pb.RetrieveRequest(collection="c", query="q" * 40, limit=10), timeout=10)
                done += 1
        await asyncio.gather(*(caller() for _ in range(16)))
        print(done)
asyncio.run(main())
'''

ANSWER = pb.RetrieveResponse(candidates=[pb.Candidate(id=str(i), score=1.0, title="t" * 60, text="x" * 1200)
                                         for i in range(11)])


class Fixed(pb_grpc.RetrievalServiceServicer):
    async def Retrieve(self, request, context):
        return ANSWER


class FixedSync(pb_grpc.RetrievalServiceServicer):
    def Retrieve(self, request, context):
        return ANSWER


def platform_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The list services/common/server.py installs for the retrieval service (tracing off, no token)."""
    from services.common import metrics, tracing
    from services.common.server import UnaryCallTracker
    from services.common.status import ErrorMappingInterceptor
    from services.retrieval.conditional_retrieve import ConditionalRetrieveInterceptor

    return [UnaryCallTracker(), *tracing.server_interceptors(), metrics.MetricsServerInterceptor("retrieval"),
            ConditionalRetrieveInterceptor(lambda name: "", pb.RetrieveResponse), ErrorMappingInterceptor()]


class ComposedOncePerMethod(grpc.aio.ServerInterceptor):
    """Runs ``chain`` (interceptors) once per method and serves the handler it produced after that."""

    def __init__(self, chain: list[grpc.aio.ServerInterceptor]) -> None:
        self.chain = chain
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = self.handlers.get(handler_call_details.method)
        if handler is None:
            async def run(i: int, details):
                if i == len(self.chain):
                    return await continuation(details)
                return await self.chain[i].intercept_service(lambda d: run(i + 1, d), details)

            handler = await run(0, handler_call_details)
            if handler is not None:
                self.handlers[handler_call_details.method] = handler
        return handler


def report(name: str, calls: int, seconds: float, cpu: float) -> None:
    print(f"{name:>13}: {calls / seconds:7.1f} calls/s, server CPU {cpu / calls * 1e6:6.1f} us per call", flush=True)


async def measure(name: str, interceptors: list, seconds: float) -> None:
    server = grpc.aio.server(interceptors=interceptors)
    pb_grpc.add_RetrievalServiceServicer_to_server(Fixed(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        cpu = time.process_time()
        callers = await asyncio.create_subprocess_exec(sys.executable, "-c", CALLERS, f"127.0.0.1:{port}", str(seconds),
                                                       str(REPO), stdout=asyncio.subprocess.PIPE)
        out, _ = await callers.communicate()
        report(name, int(out), seconds, time.process_time() - cpu)
    finally:
        await server.stop(None)


def run_callers(port: int, seconds: float) -> int:
    """The 16 callers against 127.0.0.1:``port`` for ``seconds``, in a process of their own (blocking); calls made."""
    return int(subprocess.run([sys.executable, "-c", CALLERS, f"127.0.0.1:{port}", str(seconds), str(REPO)],
                              capture_output=True, text=True, check=True).stdout)


def measure_sync(workers: int, seconds: float) -> None:
    """The same calls answered by grpc's synchronous server (blocks the caller's event loop: run it alone)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_RetrievalServiceServicer_to_server(FixedSync(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cpu = time.process_time()
        calls = run_callers(port, seconds)
        report(f"sync, {workers} thr", calls, seconds, time.process_time() - cpu)
    finally:
        server.stop(None)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sync-workers", type=int, default=4, help="threads of the synchronous server's pool")
    args = p.parse_args()
    for _ in range(args.rounds):
        await measure("none", [], args.seconds)
        await measure("platform's 5", platform_interceptors(), args.seconds)
        await measure("5, cached", [ComposedOncePerMethod(platform_interceptors())], args.seconds)
        measure_sync(args.sync_workers, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
