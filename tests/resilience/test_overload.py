"""Load shedding on real servers: past a bound, RESOURCE_EXHAUSTED at once; the served keep their latency."""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from search.v1 import rerank_service_pb2, rerank_service_pb2_grpc, search_service_pb2_grpc as pb_grpc
from tests.resilience.conftest import figures, make_collection, metric_value, scrape, search_request, start_stack, timed_search

pytestmark = pytest.mark.integration

QUEUE_PAIRS = 64
PAIRS_PER_REQUEST = 16  # the queue holds 4 requests
GATEWAY_CAP = 4
WORDS = "the quick brown fox jumps over the lazy dog near the old stone bridge by the river".split()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(
        tmp_path_factory.mktemp("overload"),
        {"reranker": {"RERANKER_MAX_QUEUE_PAIRS": str(QUEUE_PAIRS)}, "gateway": {"GATEWAY_MAX_IN_FLIGHT": str(GATEWAY_CAP)}},
    )
    yield s
    s.stop_all()


def rerank_request(i: int) -> rerank_service_pb2.RerankRequest:
    passages = [" ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(24)) for j in range(PAIRS_PER_REQUEST)]
    return rerank_service_pb2.RerankRequest(query=f"fox by the river {i}", passages=passages)


async def rerank_load(address: str, workers: int, seconds: float) -> list[tuple[str, float]]:
    """Closed-loop clients; a shed client backs off 200 ms (as a well-behaved caller does)."""
    results: list[tuple[str, float]] = []
    stop_at = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rerank_service_pb2_grpc.RerankServiceStub(channel)

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    await stub.Rerank(rerank_request(i), timeout=30)
                    results.append(("OK", time.monotonic() - start))
                except grpc.aio.AioRpcError as exc:
                    results.append((exc.code().name, time.monotonic() - start))
                    await asyncio.sleep(0.2)
                i += workers

        await asyncio.gather(*(worker(w) for w in range(workers)))
    return results


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def test_reranker_sheds_past_its_queue_and_served_requests_keep_their_latency(stack):
    address = stack.address("reranker")
    await rerank_load(address, 2, 1.0)  # warm
    # Baseline and overload alternate in short rounds, so a change in what else the machine
    # is running (the CPU's speed drifts too) weighs on both alike instead of on one of them.
    baseline, overload = [], []
    for _ in range(3):
        baseline += await rerank_load(address, QUEUE_PAIRS // PAIRS_PER_REQUEST, 1.5)
        overload += await rerank_load(address, 4 * QUEUE_PAIRS // PAIRS_PER_REQUEST, 1.5)
    base_ok = [t for code, t in baseline if code == "OK"]
    served = [t for code, t in overload if code == "OK"]
    shed = [t for code, t in overload if code == "RESOURCE_EXHAUSTED"]
    other = [code for code, _ in baseline + overload if code not in ("OK", "RESOURCE_EXHAUSTED")]
    assert not other, other
    assert len(base_ok) == len(baseline), "the queue holds the baseline load: nothing is shed"
    assert shed and served, (len(shed), len(served))
    assert pct(shed, 0.99) < 0.25, "shedding must be immediate, not a timeout"
    # The queue is bounded, so a served request waits behind at most a queue's worth of work.
    # (An unbounded queue would make them wait ~4x longer: 16 callers instead of 4.)
    assert statistics.median(served) < 2 * statistics.median(base_ok), (statistics.median(served), statistics.median(base_ok))
    rejected_metric = metric_value(scrape(stack, "reranker"), "search_reranker_rejected_requests_total")
    assert rejected_metric >= len(shed)
    figures(
        "reranker overload",
        queue_pairs=QUEUE_PAIRS,
        pairs_per_request=PAIRS_PER_REQUEST,
        baseline_workers=QUEUE_PAIRS // PAIRS_PER_REQUEST,
        overload_workers=4 * QUEUE_PAIRS // PAIRS_PER_REQUEST,
        baseline_requests=len(baseline),
        baseline_p50_ms=round(1000 * statistics.median(base_ok)),
        baseline_p95_ms=round(1000 * pct(base_ok, 0.95)),
        overload_requests=len(overload),
        served=len(served),
        shed=len(shed),
        served_p50_ms=round(1000 * statistics.median(served)),
        served_p95_ms=round(1000 * pct(served, 0.95)),
        shed_p99_ms=round(1000 * pct(shed, 0.99), 1),
    )


async def test_gateway_caps_in_flight_requests(stack):
    collection = make_collection(stack)
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        burst = 3 * GATEWAY_CAP
        rounds = []
        for r in range(3):
            rounds.append(await asyncio.gather(*(timed_search(stub, search_request(collection, r * burst + i), 10.0) for i in range(burst))))
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert health.status == health_pb2.HealthCheckResponse.SERVING, "health is never capped"
    outcomes = [o for r in rounds for o in r]
    ok = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    shed = [o for o in outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(ok) + len(shed) == len(outcomes), {o.code for o in outcomes}
    for r in rounds:
        assert sum(o.code == grpc.StatusCode.OK for o in r) >= GATEWAY_CAP  # the cap is served...
        assert sum(o.code == grpc.StatusCode.RESOURCE_EXHAUSTED for o in r) > 0  # ...the excess is not
    assert all("GATEWAY_MAX_IN_FLIGHT" in o.details for o in shed)
    assert max(o.latency for o in shed) < 0.25
    codes = scrape(stack, "gateway")
    assert metric_value(codes, "search_grpc_server_requests_total", method="search.v1.SearchService/Search", code="RESOURCE_EXHAUSTED") >= len(shed)
    figures(
        "gateway in-flight cap",
        cap=GATEWAY_CAP,
        sent=len(outcomes),
        served=len(ok),
        shed=len(shed),
        shed_max_ms=round(1000 * max(o.latency for o in shed), 1),
        served_p50_ms=round(1000 * statistics.median(o.latency for o in ok)),
    )


async def test_an_overloaded_reranker_degrades_searches_instead_of_failing_them(stack):
    collection = make_collection(stack, [(f"d{i}", " ".join(WORDS[(i + k) % len(WORDS)] for k in range(20))) for i in range(48)])
    async with grpc.aio.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        outcomes = []
        for r in range(3):
            # 4 Searches x 40 candidates = 160 pairs > the reranker's 64: retries (50-150 ms apart)
            # cannot wait out the ~0.5 s a 40-pair request takes, so some Searches degrade.
            outcomes += await asyncio.gather(
                *(timed_search(stub, search_request(collection, r * 4 + i, candidates=40), 10.0) for i in range(GATEWAY_CAP))
            )
    assert all(o.code == grpc.StatusCode.OK for o in outcomes), [(o.code, o.details) for o in outcomes]
    overloaded = [o for o in outcomes if o.reason == "DEGRADED_REASON_RERANKER_OVERLOADED"]
    assert overloaded, "some Searches must find the reranker's queue full"
    assert any(o.reranked for o in outcomes)
    figures(
        "overloaded reranker behind the gateway",
        searches=len(outcomes),
        failed=0,
        reranked=sum(o.reranked for o in outcomes),
        degraded_overloaded=len(overloaded),
    )


async def test_a_request_larger_than_the_whole_queue_is_invalid_not_shed(stack):
    """A request that could never fit the queue, even idle, is INVALID_ARGUMENT (not retryable), at once."""
    async with grpc.aio.insecure_channel(stack.address("reranker")) as channel:
        stub = rerank_service_pb2_grpc.RerankServiceStub(channel)
        request = rerank_service_pb2.RerankRequest(query="fox", passages=["the quick brown fox"] * (QUEUE_PAIRS + 1))
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Rerank(request, timeout=30)
        took = time.monotonic() - start
        fits = await stub.Rerank(rerank_service_pb2.RerankRequest(query="fox", passages=["the quick brown fox"] * QUEUE_PAIRS), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{QUEUE_PAIRS + 1} passages" in info.value.details() and "RERANKER_MAX_QUEUE_PAIRS" in info.value.details()
    assert took < 1.0
    assert len(fits.results) == QUEUE_PAIRS  # a request of exactly the queue's size is served
