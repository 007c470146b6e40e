"""A real Prometheus scrapes the platform's /metrics endpoints and evaluates the alert rules on them.

The targets come from the ``scrape_targets`` fixture (service name -> "host:port" of its
/metrics). Today it starts three stand-in processes that serve services.common.metrics the
way ``searchctl serve`` does; to scrape the real services instead, make it return the
stack's metrics ports, e.g.::

    @pytest.fixture(scope="module")
    def scrape_targets(stack):
        return {name: f"127.0.0.1:{stack.metrics_ports[name]}" for name in ("gateway", "retrieval", "reranker")}
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from tests.observability.prom import JOBS, free_port, start_metrics_target, start_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def scrape_targets():
    started = []
    try:
        for service in JOBS:
            started.append(start_metrics_target(service))
        yield {t.service: t.address for t in started}
    finally:
        for target in started:
            target.stop()


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


def test_a_dead_target_makes_service_down_pending(tmp_path):
    live = start_metrics_target("reranker")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    prom = start_prometheus(tmp_path, {"search-reranker": [live.address, dead]})
    try:
        def pending():
            alerts = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "SearchServiceDown"]
            return alerts or None

        alerts = prom.wait_for("SearchServiceDown pending for the dead target", pending)
        assert [(a["labels"]["instance"], a["state"]) for a in alerts] == [(dead, "pending")]
        assert prom.query(f'up{{instance="{live.address}"}}')[0]["value"][1] == "1"
    finally:
        prom.stop()
        live.stop()


def test_dashboard_queries_are_valid_promql_on_a_real_prometheus(prometheus):
    from tests.observability.prom import as_plain_promql, dashboard_exprs

    for title, expr in dashboard_exprs():
        try:
            prometheus.query(as_plain_promql(expr))
        except Exception as exc:  # HTTP 400 carries Prometheus's parse error
            body = exc.read().decode() if hasattr(exc, "read") else ""
            pytest.fail(f"{title}: {expr!r} rejected by Prometheus: {exc} {body}")
