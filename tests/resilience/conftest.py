"""Helpers for the fault, overload, shutdown and security tests: real servers on loopback.

Each module starts its own :class:`~tests.conftest.Stack` (it kills and restarts services)
with a fast reranker (short ``RERANKER_MAX_LENGTH``, small passages) so the suite stays
within minutes on two cores. Tests print their figures (``-s`` shows them); the numbers in
docs/RELIABILITY.md are copied from those lines.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import Stack, require_models

pytestmark = pytest.mark.integration

#: Reranker settings that keep these tests quick on a 2-core machine.
FAST_RERANKER = {"RERANKER_MAX_LENGTH": "128"}

CORPUS = [
    ("photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen."),
    ("volcano", "A volcano is a rupture in the crust that lets lava, ash and gases escape from a magma chamber."),
    ("sourdough", "Sourdough bread rises thanks to a starter of wild yeast and lactic acid bacteria."),
    ("tides", "Tides are the rise and fall of sea level caused by the pull of the Moon and the Sun."),
    ("vaccines", "Vaccines train the immune system to recognise a pathogen with a harmless antigen."),
    ("gpu", "A GPU runs thousands of threads in parallel, fast for matrix multiplication."),
    ("glacier", "A glacier is a persistent body of dense ice that moves under its own weight."),
    ("bees", "Honey bees communicate the location of flowers with a waggle dance."),
]
QUERIES = [
    "why does the sea level go up and down",
    "how do plants make sugar from light",
    "what makes bread rise",
    "hardware for neural networks",
    "how do vaccines work",
    "moving ice",
]


def start_stack(tmp, overrides: dict[str, dict[str, str]] | None = None) -> Stack:
    require_models()
    # These tests drive the uncached paths (degradation, shedding, outages) with a few repeated
    # queries: the caches (which would answer those repeats) are off unless a test turns them on.
    env = {"reranker": {**FAST_RERANKER, "RERANKER_SCORE_CACHE_SIZE": "0"},
           "gateway": {"GATEWAY_RESULT_CACHE_SIZE": "0"}, "retrieval": {"RETRIEVAL_QUERY_CACHE_SIZE": "0"}}
    for name, values in (overrides or {}).items():
        env.setdefault(name, {}).update(values)
    stack = Stack(tmp, env_overrides=env)
    stack.start_all()
    return stack


def make_collection(stack: Stack, docs=CORPUS) -> str:
    name = f"r{uuid.uuid4().hex[:10]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
        documents = [common_pb2.Document(id=i, title=i.title(), text=t) for i, t in docs]
        stub.Upsert(pb.UpsertRequest(collection=name, documents=documents), timeout=60)
    return name


def search_request(collection: str, i: int, candidates: int = 8, top_k: int = 5) -> pb.SearchRequest:
    request = pb.SearchRequest(collection=collection, query=QUERIES[i % len(QUERIES)], top_k=top_k)
    request.rerank.candidates = candidates
    request.rerank.policy = pb.RERANK_POLICY_ALWAYS  # these tests drive the reranker hop
    return request


@dataclass
class Outcome:
    started: float
    finished: float
    code: grpc.StatusCode
    details: str = ""
    degraded: bool = False
    reason: str = ""
    reranked: bool = False

    @property
    def latency(self) -> float:
        return self.finished - self.started


@dataclass
class Load:
    """Outcomes of a load run, with the tallies the tests assert on and print."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code == grpc.StatusCode.OK]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != grpc.StatusCode.OK]

    @property
    def degraded(self) -> list[Outcome]:
        return [o for o in self.ok if o.degraded]

    def codes(self) -> Counter:
        return Counter(o.code.name for o in self.outcomes)

    def reasons(self) -> Counter:
        return Counter(o.reason for o in self.degraded)

    def between(self, start: float, end: float) -> Load:
        return Load([o for o in self.outcomes if start <= o.started < end])


async def timed_search(stub, request: pb.SearchRequest, timeout: float, metadata=None) -> Outcome:
    started = time.monotonic()
    try:
        reply = await stub.Search(request, timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return Outcome(started, time.monotonic(), exc.code(), exc.details() or "")
    return Outcome(
        started,
        time.monotonic(),
        grpc.StatusCode.OK,
        degraded=reply.degraded,
        reason=pb.DegradedReason.Name(reply.degraded_reason) if reply.degraded else "",
        reranked=reply.reranked,
    )


async def search_load(target: str, collection: str, stop: asyncio.Event, *, workers: int = 4, timeout: float = 5.0,
                      candidates: int = 8, pause: float = 0.0) -> Load:
    """``workers`` closed-loop clients searching until ``stop`` is set."""
    load = Load()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SearchServiceStub(channel)

        async def worker(w: int) -> None:
            i = w
            while not stop.is_set():
                load.outcomes.append(await timed_search(stub, search_request(collection, i, candidates), timeout))
                i += workers
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(worker(w) for w in range(workers)))
    return load


def scrape(stack: Stack, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics", timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, metric: str, **labels: str) -> float:
    """The value of one sample of ``metric`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def gateway_reaches_retrieval(stack: Stack, collection: str, timeout: float = 30.0) -> float:
    """Seconds until DescribeCollection through the gateway succeeds again.

    A restarted retrieval service reports SERVING before the gateway's channel has left its
    reconnect backoff (at most grpc.max_reconnect_backoff_ms); a test that restarts it waits
    here before the next call that must reach it.
    """
    started = time.monotonic()
    errors: list[str] = []

    def reached() -> bool:
        with grpc.insecure_channel(stack.gateway) as channel:
            try:
                pb_grpc.SearchServiceStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=5)
            except grpc.RpcError as exc:
                errors.append(f"{time.monotonic() - started:.1f}s {exc.code().name}: {exc.details()}")
                return False
        return True

    assert await wait_for(lambda: reached(), timeout=timeout, interval=0.2), (
        f"the gateway did not reach the restarted retrieval service within {timeout:.0f} s; "
        f"{len(errors)} attempts, first and last: {errors[:2]} ... {errors[-2:]}"
    )
    return time.monotonic() - started


def figures(title: str, **values) -> None:
    """One line of figures for docs/RELIABILITY.md."""
    print(f"\nFIGURES {title}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
