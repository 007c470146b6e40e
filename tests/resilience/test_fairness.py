"""Fairness under overload on real servers, asserted by counts (never times): a caller sending
far past its quota, or flooding the in-flight cap, is shed with RESOURCE_EXHAUSTED and RetryInfo,
while a caller within its quota and share keeps every call. The latency figures (p95 against the
unloaded p95) are `searchctl bench fairness`'s (docs/benchmarks/fairness.md)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.resilience.conftest import CORPUS, QUERIES, figures, metric_value, scrape, start_stack

pytestmark = pytest.mark.integration

CAP = 4
KEYS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("admin", "noisy", "quiet", "flood")}
CALLERS = f"""
[[caller]]
name = "admin"
scopes = ["search", "write", "admin"]
keys = ["{KEYS['admin']}"]

[[caller]]
name = "noisy"
scopes = ["search"]
keys = ["{KEYS['noisy']}"]
quota.search = {{ rate = 2, burst = 2 }}

[[caller]]
name = "quiet"
scopes = ["search"]
keys = ["{KEYS['quiet']}"]
quota.search = {{ rate = 50, burst = 50 }}

[[caller]]
name = "flood"
scopes = ["search"]
keys = ["{KEYS['flood']}"]
"""


def auth(name: str):
    return (("authorization", f"Bearer {KEYS[name]}"),)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("fairness"), {"gateway": {"GATEWAY_API_KEYS": CALLERS, "GATEWAY_MAX_IN_FLIGHT": str(CAP)}})
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def collection(stack):
    name = f"fair{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30, metadata=auth("admin"))
        stub.Upsert(pb.UpsertRequest(collection=name, documents=[common_pb2.Document(id=i, text=t) for i, t in CORPUS]),
                    timeout=60, metadata=auth("admin"))
    return name


def request(collection: str, i: int) -> pb.SearchRequest:
    r = pb.SearchRequest(collection=collection, query=QUERIES[i % len(QUERIES)], top_k=3)
    r.rerank.enabled = False  # counts are the point: keep each call short
    return r


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToNanoseconds() / 1e9
    return None


class Tally:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.shed: list[tuple[str, float | None]] = []

    def add(self, code: str, exc: grpc.aio.AioRpcError | None = None) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        if exc is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.shed.append((exc.details() or "", retry_delay_s(exc)))

    @property
    def total(self) -> int:
        return sum(self.codes.values())


async def one(stub, collection: str, i: int, who: str, tally: Tally) -> None:
    try:
        await stub.Search(request(collection, i), timeout=30, metadata=auth(who))
        tally.add("OK")
    except grpc.aio.AioRpcError as exc:
        tally.add(exc.code().name, exc)


async def steady(stub, collection: str, who: str, calls: int, pause_s: float) -> Tally:
    """One call at a time, paced: within any quota above 1 / pause_s."""
    tally = Tally()
    for i in range(calls):
        await one(stub, collection, i, who, tally)
        await asyncio.sleep(pause_s)
    return tally


async def flood(stub, collection: str, who: str, workers: int, until: asyncio.Event) -> Tally:
    """``workers`` closed-loop clients, no pause, until ``until`` is set."""
    tally = Tally()

    async def worker(w: int) -> None:
        i = w
        while not until.is_set():
            await one(stub, collection, i, who, tally)
            i += workers
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return tally


async def race(stack, collection: str, loud: str, workers: int) -> tuple[Tally, Tally]:
    async with grpc.aio.insecure_channel(stack.gateway) as a, grpc.aio.insecure_channel(stack.gateway) as b:
        done = asyncio.Event()
        loud_task = asyncio.ensure_future(flood(pb_grpc.SearchServiceStub(a), collection, loud, workers, done))
        await asyncio.sleep(0.2)  # the flood is on before the steady caller starts
        quiet = await steady(pb_grpc.SearchServiceStub(b), collection, "quiet", 40, 0.05)
        done.set()
        return await loud_task, quiet


async def test_a_caller_far_over_its_quota_is_shed_and_one_within_its_quota_is_served(stack, collection):
    noisy, quiet = await race(stack, collection, "noisy", workers=4)
    assert quiet.codes == {"OK": quiet.total} and quiet.total == 40, quiet.codes  # 100% (>= 99%)
    shed = noisy.codes.get("RESOURCE_EXHAUSTED", 0)
    assert set(noisy.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, noisy.codes
    assert shed >= 10 * max(1, noisy.codes.get("OK", 0)) // 2, noisy.codes  # most of its calls: over its quota
    assert all("over its search quota" in details and delay is not None and 0 < delay <= 0.5 + 1e-3
               for details, delay in noisy.shed), noisy.shed[:3]
    text = scrape(stack, "gateway")
    assert metric_value(text, "search_gateway_caller_shed_total", caller="noisy", reason="rate_limit") == shed
    assert metric_value(text, "search_gateway_caller_shed_total", caller="quiet") == 0
    figures("quota: a caller at many times its quota beside a steady one", noisy_sent=noisy.total,
            noisy_served=noisy.codes.get("OK", 0), noisy_shed=shed, quiet_sent=quiet.total, quiet_served=quiet.codes["OK"])


async def test_a_caller_flooding_the_in_flight_cap_is_shed_first_and_a_steady_one_keeps_its_share(stack, collection):
    before = metric_value(scrape(stack, "gateway"), "search_gateway_caller_shed_total", caller="flood", reason="fair_share")
    loud, quiet = await race(stack, collection, "flood", workers=3 * CAP)
    assert quiet.codes == {"OK": quiet.total} and quiet.total == 40, quiet.codes
    shed = loud.codes.get("RESOURCE_EXHAUSTED", 0)
    assert set(loud.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, loud.codes
    assert shed > 0 and loud.codes.get("OK", 0) > 0, loud.codes
    assert all("GATEWAY_MAX_IN_FLIGHT" in details and delay is not None for details, delay in loud.shed), loud.shed[:3]
    assert any("fair share" in details for details, _ in loud.shed)
    after = metric_value(scrape(stack, "gateway"), "search_gateway_caller_shed_total", caller="flood", reason="fair_share")
    assert after - before == shed
    figures("fair share: 12 closed-loop clients against a cap of 4 beside a steady caller", cap=CAP,
            flood_sent=loud.total, flood_served=loud.codes.get("OK", 0), flood_shed=shed,
            quiet_sent=quiet.total, quiet_served=quiet.codes["OK"])
