"""The load generator of `searchctl bench e2e` (and scripts/ab_search.py), in its own process.

The load runs in a child process (started once, ``spawn``), so that its gRPC client work and
its event loop do not share the bench process's GIL with the raw-limit measurement, and it
costs the machine what a separate client process would. Two loads:

* :func:`closed_loop`: ``clients`` callers, each sending its next Search as soon as the previous
  one is answered, for ``seconds``; every request takes the next text of ``queries`` (distinct
  texts give the result cache nothing to answer).
* :func:`~services.cli.bench.harness.open_loop`: requests at a fixed arrival rate.

Both report a :class:`~services.cli.bench.harness.StepResult` and the CPU seconds the load
process used (``LoadGenerator.run`` returns both).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import grpc

from search.v1 import search_service_pb2_grpc as pb_grpc
from services.cli.bench.harness import E2EMode, StepResult, _grpc_options, _search_request, open_loop

__all__ = ["LoadGenerator", "closed_loop"]


async def closed_loop(address: str, collection: str, queries: Sequence[str], mode: E2EMode, clients: int,
                      seconds: float, timeout: float) -> StepResult:
    """``clients`` concurrent callers for ``seconds`` over one channel, each query sent once.

    Stops early when ``queries`` run out. ``rate`` in the result is the number of clients.
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    degraded = sent = 0
    cursor = iter(queries)
    async with grpc.aio.insecure_channel(address, options=_grpc_options()) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await channel.channel_ready()
        start = time.perf_counter()
        end = start + seconds

        async def client() -> None:
            nonlocal degraded, sent
            for query in cursor:
                if time.perf_counter() >= end:
                    return
                sent += 1
                began = time.perf_counter()
                try:
                    reply = await stub.Search(_search_request(collection, query, mode), timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000.0)
                degraded += int(reply.degraded)

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return StepResult(float(clients), elapsed, sent, len(latencies), dict(errors), degraded, len(latencies) / elapsed, latencies)


def _run(kind: str, args: tuple[Any, ...]) -> tuple[StepResult, float]:
    cpu = time.process_time()
    if kind == "closed":
        step = asyncio.run(closed_loop(*args))
    else:
        step = asyncio.run(open_loop(*args))
    return step, time.process_time() - cpu


def _ready() -> bool:
    return True


class LoadGenerator:
    """One child process that runs load steps; use as a context manager."""

    def __enter__(self) -> LoadGenerator:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(_ready).result()  # start it (and import grpc there) before any step
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)

    def closed(self, address: str, collection: str, queries: Sequence[str], mode: E2EMode, clients: int,
               seconds: float, timeout: float) -> tuple[StepResult, float]:
        """A :func:`closed_loop` step in the child: (result, CPU seconds of the load process)."""
        return self._pool.submit(_run, "closed", (address, collection, list(queries), mode, clients, seconds, timeout)).result()

    def open(self, address: str, collection: str, queries: Sequence[str], mode: E2EMode, rate: float,
             seconds: float, timeout: float) -> tuple[StepResult, float]:
        """An open-loop step (fixed arrival ``rate``) in the child: (result, CPU seconds of the load process)."""
        return self._pool.submit(_run, "open", (address, collection, list(queries), mode, rate, seconds, timeout)).result()
