"""Retry budget, retries, circuit breaker, in-flight cap, deadline budget and error mapping."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from services.gateway.clients import Budget, downstream_error
from services.gateway.resilience import (
    CircuitBreaker,
    RetryBudget,
    RetryPolicy,
    call_with_retries,
    is_retryable,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def relayed(error_cls, code: grpc.StatusCode, message: str = "boom"):
    err = error_cls(message)
    err.downstream_code = code
    return err


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002, min_attempt_s=0.0)


# --- retry budget -------------------------------------------------------------------------


def test_retry_budget_caps_a_burst_at_capacity():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, capacity=5, clock=clock)
    assert [budget.try_withdraw() for _ in range(7)] == [True] * 5 + [False] * 2
    assert budget.retries == 5 and budget.refused == 2


def test_retry_budget_counts_its_decisions_per_target():
    labels = {"target": "t-budget"}
    retried, refused = sample("search_gateway_retries_total", outcome="retried", **labels), sample(
        "search_gateway_retries_total", outcome="budget_exhausted", **labels
    )
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, capacity=2, clock=FakeClock(), target="t-budget")
    for _ in range(5):
        budget.try_withdraw()
    assert sample("search_gateway_retries_total", outcome="retried", **labels) - retried == 2
    assert sample("search_gateway_retries_total", outcome="budget_exhausted", **labels) - refused == 3


def test_retry_budget_earns_a_retry_per_ten_requests():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, capacity=5, clock=clock)
    while budget.try_withdraw():
        pass
    for _ in range(9):
        budget.deposit()
    assert not budget.try_withdraw()
    budget.deposit()
    assert budget.try_withdraw()


def test_retry_budget_refills_with_time():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, capacity=3, clock=clock)
    while budget.try_withdraw():
        pass
    clock.advance(0.4)
    assert not budget.try_withdraw()
    clock.advance(0.2)
    assert budget.try_withdraw()
    clock.advance(100)
    assert budget.tokens == 3  # never above capacity


def test_retry_budget_rejects_nonsense():
    with pytest.raises(ValueError):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError):
        RetryBudget(capacity=0)


# --- retries ------------------------------------------------------------------------------


class Flaky:
    """Fails ``failures`` times with ``error`` then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retries_unavailable_then_succeeds():
    flaky = Flaky(2, relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    result = await call_with_retries(flaky, policy=FAST, budget=RetryBudget(), time_left=lambda: 10.0)
    assert result == "ok" and flaky.calls == 3


async def test_retries_resource_exhausted():
    flaky = Flaky(1, relayed(ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert await call_with_retries(flaky, policy=FAST, budget=RetryBudget(), time_left=lambda: 10.0) == "ok"
    assert flaky.calls == 2


@pytest.mark.parametrize(
    "error",
    [
        relayed(Unavailable, grpc.StatusCode.DEADLINE_EXCEEDED),  # may have run: never repeated
        relayed(Unavailable, grpc.StatusCode.INTERNAL),
        relayed(ServiceError, grpc.StatusCode.INVALID_ARGUMENT),
        DeadlineExceeded("no time left"),  # raised locally, no downstream code
        ValueError("a bug"),
    ],
)
async def test_does_not_retry_other_errors(error):
    flaky = Flaky(5, error)
    with pytest.raises(type(error)):
        await call_with_retries(flaky, policy=FAST, budget=RetryBudget(), time_left=lambda: 10.0)
    assert flaky.calls == 1


async def test_stops_after_max_attempts_and_reraises_the_last_error():
    error = relayed(Unavailable, grpc.StatusCode.UNAVAILABLE, "down")
    flaky = Flaky(100, error)
    with pytest.raises(Unavailable, match="down"):
        await call_with_retries(flaky, policy=FAST, budget=RetryBudget(), time_left=lambda: 10.0)
    assert flaky.calls == FAST.max_attempts


async def test_stops_when_the_deadline_leaves_no_room():
    flaky = Flaky(100, relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.001, max_backoff_s=0.001, min_attempt_s=0.5)
    with pytest.raises(Unavailable):
        await call_with_retries(flaky, policy=policy, budget=RetryBudget(), time_left=lambda: 0.3)
    assert flaky.calls == 1


async def test_stops_when_the_retry_budget_is_empty():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, capacity=1, clock=clock)
    first = Flaky(100, relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(Unavailable):
        await call_with_retries(first, policy=FAST, budget=budget, time_left=lambda: 10.0)
    assert first.calls == 2  # one retry: the only token
    second = Flaky(100, relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(Unavailable):
        await call_with_retries(second, policy=FAST, budget=budget, time_left=lambda: 10.0)
    assert second.calls == 1


async def test_an_outage_cannot_multiply_load():
    """1000 requests against a dead downstream: attempts <= requests * (1 + ratio) + capacity."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, capacity=10, clock=clock)
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.0, max_backoff_s=0.0, min_attempt_s=0.0)
    attempts = 0

    async def dead() -> None:
        nonlocal attempts
        attempts += 1
        raise relayed(Unavailable, grpc.StatusCode.UNAVAILABLE)

    for _ in range(1000):
        with pytest.raises(Unavailable):
            await call_with_retries(dead, policy=policy, budget=budget, time_left=lambda: 10.0)
    assert attempts <= 1000 * 1.1 + 10, attempts
    assert attempts >= 1000 + 100  # and the budget was used, not wasted
    print(f"\noutage: 1000 requests -> {attempts} attempts (x{attempts / 1000:.3f}); without a budget: 5000")


async def test_backoff_grows_exponentially_with_jitter():
    sleeps: list[float] = []
    flaky = Flaky(3, relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=1.0, min_attempt_s=0.0)

    async def recording_sleep(seconds):
        sleeps.append(seconds)

    retrying_result = await call_with_retries(
        flaky, policy=policy, budget=RetryBudget(), time_left=lambda: 10.0, sleep=recording_sleep
    )
    assert retrying_result == "ok"
    assert len(sleeps) == 3
    # exponential base 0.01, 0.02, 0.04 plus jitter in [0, 0.01)
    for sleep, base in zip(sleeps, (0.01, 0.02, 0.04)):
        assert base <= sleep < base + 0.01 + 1e-9


def test_is_retryable():
    assert is_retryable(relayed(Unavailable, grpc.StatusCode.UNAVAILABLE))
    assert is_retryable(relayed(ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert not is_retryable(Unavailable("raised here, not relayed"))
    assert not is_retryable(relayed(Unavailable, grpc.StatusCode.DEADLINE_EXCEEDED))


# --- circuit breaker ----------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only():
    clock = FakeClock()
    breaker = CircuitBreaker("reranker", failure_threshold=3, cooldown_s=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # resets the streak
    for _ in range(2):
        breaker.failure()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == CircuitBreaker.OPEN
    assert not breaker.allow()


def test_breaker_probes_once_after_cooldown_and_closes_on_success():
    clock = FakeClock()
    breaker = CircuitBreaker("reranker", failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.state == CircuitBreaker.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.success()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.allow()


def test_breaker_reopens_when_the_probe_fails():
    clock = FakeClock()
    breaker = CircuitBreaker("reranker", failure_threshold=2, cooldown_s=5, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == CircuitBreaker.OPEN and not breaker.allow()
    clock.advance(5)
    assert breaker.allow()
    assert breaker.opened_count == 2


def test_breaker_exports_whether_it_is_open():
    clock = FakeClock()
    breaker = CircuitBreaker("t-breaker", failure_threshold=1, cooldown_s=5, clock=clock)
    assert sample("search_gateway_circuit_open", target="t-breaker") == 0
    breaker.failure()
    assert sample("search_gateway_circuit_open", target="t-breaker") == 1
    clock.advance(5)
    assert breaker.allow()  # probing: still reported open until the probe succeeds
    assert sample("search_gateway_circuit_open", target="t-breaker") == 1
    breaker.success()
    assert sample("search_gateway_circuit_open", target="t-breaker") == 0


def test_breaker_neutral_outcome_frees_the_probe():
    clock = FakeClock()
    breaker = CircuitBreaker("reranker", failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.failure()
    clock.advance(1)
    assert breaker.allow()
    breaker.neutral()  # e.g. the probe was shed (overloaded): no verdict
    assert breaker.state == CircuitBreaker.HALF_OPEN
    assert breaker.allow()


# --- deadline budget ----------------------------------------------------------------------


def test_budget_caps_each_hop_and_keeps_a_reserve():
    clock = FakeClock()
    budget = Budget(2.0, reserve_s=0.1, clock=clock)
    assert budget.for_hop(0.5) == 0.5
    assert budget.for_hop(5.0) == pytest.approx(1.9)
    clock.advance(1.5)
    assert budget.for_hop(5.0) == pytest.approx(0.4)
    clock.advance(0.5)
    assert budget.for_hop(5.0) < 0  # Downstream refuses to call with no time left


# --- downstream error mapping -------------------------------------------------------------


def rpc_error(code: grpc.StatusCode, details: str, trailing=()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def test_hop_timeout_is_unavailable_but_running_out_of_deadline_is_deadline_exceeded():
    capped = downstream_error("retrieval", "Retrieve", rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), 3.0, False)
    assert isinstance(capped, Unavailable) and "3.00 s timeout" in capped.message
    bound = downstream_error("retrieval", "Retrieve", rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), 0.4, True)
    assert isinstance(bound, DeadlineExceeded) and "request's deadline" in bound.message
    assert capped.downstream_code == bound.downstream_code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_names_the_service():
    err = downstream_error("retrieval", "Retrieve", rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"), 1, False)
    assert isinstance(err, Unavailable)
    assert err.message.startswith("retrieval service unavailable during Retrieve") and "connection refused" in err.message
    internal = downstream_error("reranker", "Rerank", rpc_error(grpc.StatusCode.INTERNAL, "bug"), 1, False)
    assert isinstance(internal, Unavailable) and "INTERNAL" in internal.message


def test_invalid_argument_keeps_the_downstream_field():
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="fusion.rrf_k", description="too big")]
    )
    packed = any_pb2.Any()
    packed.Pack(bad)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="fusion.rrf_k: too big", details=[packed])
    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    err = downstream_error("retrieval", "Retrieve", rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "fusion.rrf_k: too big", trailing), 1, False)
    assert isinstance(err, InvalidArgument) and err.field == "fusion.rrf_k" and err.description == "too big"
    plain = downstream_error("retrieval", "Retrieve", rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "no details"), 1, False)
    assert isinstance(plain, InvalidArgument) and plain.message == "no details"


# --- request limits (services/common/validation.py) ----------------------------------------

from google.protobuf import struct_pb2  # noqa: E402

from search.v1 import common_pb2  # noqa: E402
from services.common import validation as v  # noqa: E402


def _doc_with_payload(payload: dict | None = None, value: struct_pb2.Value | None = None) -> common_pb2.Document:
    doc = common_pb2.Document(id="a", text="t")
    if payload is not None:
        doc.payload.update(payload)
    if value is not None:
        doc.payload.fields["x"].CopyFrom(value)
    return doc


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_payload_numbers_must_be_finite(number):
    with pytest.raises(InvalidArgument, match="finite") as info:
        v.documents([_doc_with_payload({"nested": {"list": [1, number]}})])
    assert info.value.field == "documents[0].payload"


def _nested_payload(levels: int) -> dict:
    deep: dict = {}
    node = deep
    for _ in range(levels):
        node["k"] = {}
        node = node["k"]
    return deep


def test_payload_nesting_is_bounded():
    v.documents([_doc_with_payload(_nested_payload(v.MAX_PAYLOAD_DEPTH))])
    with pytest.raises(InvalidArgument, match="deeper"):
        v.documents([_doc_with_payload(_nested_payload(v.MAX_PAYLOAD_DEPTH + 1))])
    shallow = {"a": {"b": [1, 2, {"c": "d"}]}, "n": None}
    assert v.documents([_doc_with_payload(shallow)])[0]["payload"] == shallow


def test_retrieval_mode():
    assert v.retrieval_mode(common_pb2.RETRIEVAL_MODE_HYBRID) == common_pb2.RETRIEVAL_MODE_HYBRID
    with pytest.raises(InvalidArgument, match="mode"):
        v.retrieval_mode(42)


@pytest.mark.parametrize(
    "options, field",
    [
        (common_pb2.FusionOptions(method=99), "fusion.method"),
        (common_pb2.FusionOptions(dense_weight=1.5), "fusion.dense_weight"),
        (common_pb2.FusionOptions(dense_weight=float("nan")), "fusion.dense_weight"),
        (common_pb2.FusionOptions(rrf_k=0), "fusion.rrf_k"),
        (common_pb2.FusionOptions(rrf_k=v.MAX_RRF_K + 1), "fusion.rrf_k"),
        (common_pb2.FusionOptions(prefetch_limit=-1), "fusion.prefetch_limit"),
        (common_pb2.FusionOptions(prefetch_limit=v.MAX_PREFETCH_LIMIT + 1), "fusion.prefetch_limit"),
    ],
)
def test_fusion_options_limits(options, field):
    with pytest.raises(InvalidArgument) as info:
        v.fusion_options(options)
    assert info.value.field == field


def test_fusion_options_accept_the_defaults_and_the_bounds():
    v.fusion_options(common_pb2.FusionOptions())
    v.fusion_options(common_pb2.FusionOptions(method=common_pb2.FUSION_METHOD_DBSF, dense_weight=0.0, rrf_k=1, prefetch_limit=1000))


def _cond(**kw) -> common_pb2.Condition:
    return common_pb2.Condition(field=common_pb2.FieldCondition(**kw))


def _nested(depth: int) -> common_pb2.Filter:
    flt = common_pb2.Filter(must=[_cond(key="a", keyword="b")])
    for _ in range(depth - 1):
        flt = common_pb2.Filter(must=[common_pb2.Condition(filter=flt)])
    return flt


@pytest.mark.parametrize(
    "flt, needle",
    [
        (_nested(v.MAX_FILTER_DEPTH + 1), "nest at most"),
        (common_pb2.Filter(must=[_cond(key="a", keyword="b")] * (v.MAX_FILTER_CONDITIONS + 1)), "at most 64 conditions"),
        (common_pb2.Filter(must=[_cond(key="bad key", keyword="b")]), "keys are"),
        (common_pb2.Filter(must=[_cond(key="a" * 129, keyword="b")]), "keys are"),
        (common_pb2.Filter(must=[_cond(key="a", keyword="x" * (v.MAX_KEYWORD_CHARS + 1))]), "longer than"),
        (common_pb2.Filter(must=[_cond(key="a", any_integer=common_pb2.IntegerList())]), "give 1..256"),
        (common_pb2.Filter(must=[_cond(key="a", any_keyword=common_pb2.KeywordList(values=["x"] * 257))]), "give 1..256"),
        (common_pb2.Filter(must=[_cond(key="a", range=common_pb2.Range())]), "at least one bound"),
        (common_pb2.Filter(must=[_cond(key="a", range=common_pb2.Range(gt=float("inf")))]), "finite"),
        (common_pb2.Filter(must=[_cond(key="a")]), "needs a match"),
        (common_pb2.Filter(should=[common_pb2.Condition()]), "either `field` or `filter`"),
    ],
)
def test_payload_filter_limits(flt, needle):
    with pytest.raises(InvalidArgument, match=needle):
        v.payload_filter(flt)


def test_payload_filter_accepts_a_legal_filter():
    v.payload_filter(_nested(v.MAX_FILTER_DEPTH))
    v.payload_filter(common_pb2.Filter())
    v.payload_filter(common_pb2.Filter(must_not=[_cond(key="year.n-1_x", range=common_pb2.Range(gte=1, lt=2))]))


def test_gateway_and_retrieval_refuse_the_same_filters():
    from services.common.errors import InvalidArgument
    from services.retrieval import filters

    bad = [
        _nested(v.MAX_FILTER_DEPTH + 1),
        common_pb2.Filter(must=[_cond(key="a b", keyword="x")]),
        common_pb2.Filter(must=[_cond(key="k" * (v.MAX_FILTER_KEY_CHARS + 1), keyword="x")]),
        common_pb2.Filter(must=[_cond(key="a", keyword="x")] * (v.MAX_FILTER_CONDITIONS + 1)),
    ]
    for flt in bad:
        with pytest.raises(InvalidArgument):
            v.payload_filter(flt)
        with pytest.raises(InvalidArgument):
            filters.to_filter(flt)
    ok = common_pb2.Filter(must_not=[_cond(key="year.n-1_x", range=common_pb2.Range(gte=1, lt=2))])
    v.payload_filter(ok)
    assert filters.to_filter(ok).must_not[0].key == "payload.year.n-1_x"


@pytest.mark.parametrize(
    "fields, needle",
    [
        ([common_pb2.FilterField(key="a", type=common_pb2.FIELD_TYPE_KEYWORD)] * 2, "duplicate"),
        ([common_pb2.FilterField(key="", type=common_pb2.FIELD_TYPE_KEYWORD)], "keys are"),
        ([common_pb2.FilterField(key="a b", type=common_pb2.FIELD_TYPE_KEYWORD)], "keys are"),
        ([common_pb2.FilterField(key="a")], "choose KEYWORD"),
        ([common_pb2.FilterField(key="a", type=17)], "choose KEYWORD"),
        ([common_pb2.FilterField(key=f"k{i}", type=1) for i in range(v.MAX_FILTER_FIELDS + 1)], "the limit is"),
    ],
)
def test_filter_fields_limits(fields, needle):
    from services.retrieval.messages import filter_fields as retrieval_filter_fields

    with pytest.raises(InvalidArgument, match=needle):
        v.filter_fields(fields)
    with pytest.raises(InvalidArgument, match=needle):  # the retrieval service, called directly, agrees
        retrieval_filter_fields(fields)


def test_retrieval_maps_valid_filter_fields_to_type_names():
    from services.retrieval.messages import filter_fields as retrieval_filter_fields

    fields = [common_pb2.FilterField(key="year", type=common_pb2.FIELD_TYPE_INTEGER),
              common_pb2.FilterField(key="meta.lang", type=common_pb2.FIELD_TYPE_KEYWORD)]
    assert retrieval_filter_fields(fields) == {"year": "integer", "meta.lang": "keyword"}


def test_rerank_passage_is_cut_to_the_rerankers_limit():
    from services.gateway.pipeline import rerank_text

    assert len(rerank_text("T", "x" * (v.MAX_TEXT_CHARS))) == v.MAX_PASSAGE_CHARS
    assert rerank_text("T", "body") == "T\nbody" and rerank_text("", "body") == "body"
    assert rerank_text("T", "") == "T"  # a title-only document: the cross-encoder reads its title
