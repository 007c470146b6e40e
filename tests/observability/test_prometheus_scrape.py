"""A real Prometheus scrapes the three real services' /metrics and evaluates the alert rules on them.

The targets are the metrics ports of the session's ``stack`` (tests/conftest.py: gateway,
retrieval and reranker started by ``searchctl serve`` on loopback). After a Search through
the gateway, each service's RED counter for the method it served is queried through
Prometheus's HTTP API, so the whole path (interceptor -> /metrics -> scrape -> PromQL) is real.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from datetime import datetime

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.procs import free_port
from tests.observability.prom import JOBS, prometheus_binary, start_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

#: The method each service serves during one Search with reranking.
SEARCH_METHODS = {
    "gateway": "search.v1.SearchService/Search",
    "retrieval": "search.v1.RetrievalService/Retrieve",
    "reranker": "search.v1.RerankService/Rerank",
}


@pytest.fixture(scope="module")
def scrape_targets(stack):
    prometheus_binary()  # skip before anything else when Prometheus is absent
    return {name: f"127.0.0.1:{stack.metrics_ports[name]}" for name in JOBS}


def served(address: str, method: str) -> float:
    """The OK count of ``method`` on a service's /metrics right now, read without Prometheus."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "search_grpc_server_requests_total" and sample.labels.get("method") == method
                    and sample.labels.get("code") == "OK"):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def searched(stack, scrape_targets):
    """One collection and one reranked Search through the gateway; each service's count of its
    Search-path method just before it (the session's stack has served earlier tests' searches)."""
    before = {service: served(scrape_targets[service], method) for service, method in SEARCH_METHODS.items()}
    name = f"t{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
        stub.Upsert(
            pb.UpsertRequest(
                collection=name,
                documents=[
                    common_pb2.Document(id="tides", title="Tides", text="The Moon's pull raises and lowers the sea."),
                    common_pb2.Document(id="bread", title="Bread", text="Yeast makes dough rise before baking."),
                ],
            ),
            timeout=60,
        )
        response = stub.Search(pb.SearchRequest(collection=name, query="sea level and the moon", top_k=2,
                                                      rerank=pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS)), timeout=60)
    assert response.reranked and response.results[0].id == "tides"
    return before


@pytest.fixture(scope="module")
def prometheus(scrape_targets, tmp_path_factory):
    prom = start_prometheus(
        tmp_path_factory.mktemp("prometheus"), {JOBS[service]: [address] for service, address in scrape_targets.items()}
    )
    yield prom
    prom.stop()


def by_job(result: list[dict]) -> dict[str, dict]:
    return {r["metric"]["job"]: r for r in result}


def test_every_target_is_up(prometheus, scrape_targets):
    def all_up():
        result = by_job(prometheus.query('up{job=~"search-.*"}'))
        return result if len(result) == len(scrape_targets) and all(r["value"][1] == "1" for r in result.values()) else None

    result = prometheus.wait_for("every target up", all_up)
    assert {job: r["metric"]["instance"] for job, r in result.items()} == {
        JOBS[service]: address for service, address in scrape_targets.items()
    }


def test_each_real_service_counts_the_search_it_served(prometheus, scrape_targets, searched):
    def counted():
        # Each service's own Search-path method, counted past its value before this Search: the
        # session's stack served earlier tests' searches, so the series alone would also be
        # there in a scrape taken while this Search was still running (its query in the
        # embedder's queue). A service counts a call once it has answered it.
        results = {}
        for service, method in SEARCH_METHODS.items():
            result = prometheus.query(
                f'search_grpc_server_requests_total{{job="{JOBS[service]}",method="{method}",code="OK"}}'
            )
            if not result or float(result[0]["value"][1]) < searched[service] + 1:
                return None
            results[service] = result
        return results

    results = prometheus.wait_for("the Search counted by every service", counted)
    for service, method in SEARCH_METHODS.items():
        result = results[service]
        assert len(result) == 1, (service, result)
        labels = result[0]["metric"]
        assert labels["service"] == service and labels["instance"] == scrape_targets[service]
        # and its latency histogram is there, with the 1 ms .. 10 s buckets
        buckets = prometheus.query(
            f'search_grpc_server_request_duration_seconds_bucket{{job="{JOBS[service]}",method="{method}"}}'
        )
        assert {b["metric"]["le"] for b in buckets} >= {"0.001", "10.0", "+Inf"}
    # Each service's own metrics, from its own process.
    reranker = JOBS["reranker"]
    assert prometheus.query(f'search_reranker_pairs_scored_total{{job="{reranker}"}} > 0')
    (provider,) = prometheus.query(f'search_reranker_execution_provider_info{{job="{reranker}"}}')
    assert provider["metric"]["provider"] == "CPUExecutionProvider"
    assert prometheus.query(f'search_retrieval_embedding_seconds_count{{job="{JOBS["retrieval"]}",kind="query"}} > 0')
    # the embedder's batcher: the query went through at least one batch, and nothing is queued now
    assert prometheus.query(f'search_retrieval_embed_batch_texts_count{{job="{JOBS["retrieval"]}"}} > 0')
    assert prometheus.query(f'search_retrieval_embed_queue_texts{{job="{JOBS["retrieval"]}"}} == 0')
    assert prometheus.query(f'search_gateway_candidates_count{{job="{JOBS["gateway"]}"}} > 0')


def test_each_target_exports_its_own_service_metrics(prometheus, scrape_targets):
    result = prometheus.wait_for(
        "search_service_info from every target",
        lambda: (r := by_job(prometheus.query("search_service_info"))) and len(r) == len(scrape_targets) and r,
    )
    for service in scrape_targets:
        assert result[JOBS[service]]["metric"]["service"] == service
    # A RED histogram family is queryable through the API by its contract name on every target.
    counts = by_job(prometheus.query("count by (job) (search_reranker_queue_pairs)"))
    assert set(counts) == {JOBS[s] for s in scrape_targets}
    requests = by_job(prometheus.query('sum by (job) (search_grpc_server_requests_total{code="OK"})'))
    assert set(requests) == {JOBS[s] for s in scrape_targets}


def evaluated_at(rule: dict) -> float:
    """A rule's lastEvaluation (RFC 3339 with nanoseconds) as a Unix timestamp; 0 if never."""
    stamp = rule.get("lastEvaluation", "")
    if not stamp.startswith("20"):
        return 0.0
    match = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    base, fraction, zone = match.groups()
    whole = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return whole + float(fraction or 0)


def test_alert_rules_load_and_evaluate_cleanly_against_live_targets(prometheus, scrape_targets):
    prometheus.wait_for("every target up", lambda: len(prometheus.query('up{job=~"search-.*"} == 1')) == len(scrape_targets))
    # Evaluations before the first scrapes legitimately see absent() series; wait for fresh ones.
    since = time.time()

    def evaluated():
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(evaluated_at(rule) > since + 1 for rule in rules) else None

    rules = prometheus.wait_for("every rule evaluated", evaluated)
    names = {rule["name"] for rule in rules}
    assert {"SearchServiceDown", "SearchServiceAbsent", "SearchHighErrorRatio", "SearchGatewayLatencyHigh"} <= names
    for rule in rules:
        assert rule["health"] == "ok", rule
    # With every job scraped and exporting its metrics, the availability alerts are quiet:
    # this is what proves the job-name convention matches the rules.
    active = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not active & {"SearchServiceDown", "SearchServiceAbsent", "SearchServiceMetricsMissing"}, active


def test_a_dead_target_makes_service_down_pending(tmp_path, scrape_targets):
    live = scrape_targets["reranker"]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    prom = start_prometheus(tmp_path, {"search-reranker": [live, dead]})
    try:
        def pending():
            alerts = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "SearchServiceDown"]
            return alerts or None

        alerts = prom.wait_for("SearchServiceDown pending for the dead target", pending)
        assert [(a["labels"]["instance"], a["state"]) for a in alerts] == [(dead, "pending")]
        # The two targets are scraped at different offsets: the alert on the dead one can come
        # before the live one's first scrape has produced its `up` sample.
        live_up = prom.wait_for("the live target scraped", lambda: prom.query(f'up{{instance="{live}"}}') or None)
        assert live_up[0]["value"][1] == "1"
    finally:
        prom.stop()


def test_dashboard_queries_are_valid_promql_on_a_real_prometheus(prometheus):
    from tests.observability.prom import as_plain_promql, dashboard_exprs

    for title, expr in dashboard_exprs():
        try:
            prometheus.query(as_plain_promql(expr))
        except Exception as exc:  # HTTP 400 carries Prometheus's parse error
            body = exc.read().decode() if hasattr(exc, "read") else ""
            pytest.fail(f"{title}: {expr!r} rejected by Prometheus: {exc} {body}")
