"""What a Search's two hops cost in gRPC alone, with grpc.aio or grpc's synchronous server at
each end (issue 22).

Three processes, as in a Search: 16 callers (grpc.aio, one channel; scripts/grpc_floor.py's)
call a *middle* server (the gateway's place), whose Retrieve calls a *back* server (retrieval's
place) that answers a fixed 11-candidate response. Each end runs either grpc.aio (``aio``: an
async handler, an async stub) or the synchronous server (``sync``: a thread pool of
``--middle-threads`` / ``--back-threads``, a blocking stub), no interceptors. All three
processes share the machine, as in `searchctl bench e2e`, so the figures include the
contention a real Search's processes meet. Printed per pairing: calls/s and the middle's and the
back's CPU microseconds per call (from /proc), the four pairings ``--rounds`` times, interleaved.

    PYTHONPATH=$PWD .venv/bin/python scripts/grpc_relay.py --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from grpc_floor import ANSWER, Fixed, FixedSync, run_callers  # noqa: E402
from search.v1 import retrieval_service_pb2_grpc as pb_grpc  # noqa: E402
from services.cli.bench.harness import process_cpu_seconds  # noqa: E402
from services.cli.procs import free_port  # noqa: E402


def serve(role: str, kind: str, port: int, back_port: int, threads: int) -> None:
    """Run one end in this process until killed."""
    address = f"127.0.0.1:{port}"
    if kind == "aio":
        async def main() -> None:
            server = grpc.aio.server()
            if role == "back":
                servicer = Fixed()
            else:
                stub = pb_grpc.RetrievalServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{back_port}"))

                class Relay(pb_grpc.RetrievalServiceServicer):
                    async def Retrieve(self, request, context):
                        return await stub.Retrieve(request, timeout=10)

                servicer = Relay()
            pb_grpc.add_RetrievalServiceServicer_to_server(servicer, server)
            server.add_insecure_port(address)
            await server.start()
            await server.wait_for_termination()

        asyncio.run(main())
        return
    if role == "back":
        servicer = FixedSync()
    else:
        stub = pb_grpc.RetrievalServiceStub(grpc.insecure_channel(f"127.0.0.1:{back_port}"))

        class RelaySync(pb_grpc.RetrievalServiceServicer):
            def Retrieve(self, request, context):
                return stub.Retrieve(request, timeout=10)

        servicer = RelaySync()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_RetrievalServiceServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()


def pairing(middle: str, back: str, args: argparse.Namespace) -> None:
    back_port, middle_port = free_port(), free_port()
    me = [sys.executable, __file__, "--serve"]
    procs = [subprocess.Popen(me + ["back", back, str(back_port), "0", str(args.back_threads)]),
             subprocess.Popen(me + ["middle", middle, str(middle_port), str(back_port), str(args.middle_threads)])]
    try:
        for port in (back_port, middle_port):  # both ends listening before any call
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
        run_callers(middle_port, 1.0)  # warm-up: connections made, code paths run once
        before = [process_cpu_seconds(p.pid) for p in procs]
        calls = run_callers(middle_port, args.seconds)
        back_cpu, middle_cpu = (process_cpu_seconds(p.pid) - b for p, b in zip(procs, before))
        print(f"middle {middle:>4}, back {back:>4}: {calls / args.seconds:7.1f} calls/s, CPU per call: middle "
              f"{middle_cpu / calls * 1e6:6.1f} us, back {back_cpu / calls * 1e6:6.1f} us, both "
              f"{(middle_cpu + back_cpu) / calls * 1e6:6.1f} us", flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        role, kind, port, back_port, threads = sys.argv[2:7]
        serve(role, kind, int(port), int(back_port), int(threads))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--middle-threads", type=int, default=8, help="the synchronous middle server's pool")
    p.add_argument("--back-threads", type=int, default=4, help="the synchronous back server's pool")
    args = p.parse_args()
    print(f"answer: {len(ANSWER.SerializeToString())} bytes; load average {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for middle, back in (("aio", "aio"), ("sync", "sync"), ("aio", "sync"), ("sync", "aio")):
            pairing(middle, back, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
