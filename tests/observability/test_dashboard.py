"""The Grafana dashboard: well-formed, on a datasource variable, and only querying metrics that exist."""

from __future__ import annotations

import json
import re

import pytest

from services.common import metrics
from tests.observability.prom import DASHBOARD, dashboard_exprs, dashboard_panels

# Series Prometheus adds itself, not the services.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exported() -> set[str]:
    return {name for metric in metrics.ALL_METRICS for name in metrics.exported_names(metric)} | PROMETHEUS_SERIES


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: identifiers outside strings, braces and by()/without()."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        token = match.group(0)
        following = text[match.end():].lstrip()[:1]
        if following == "(":  # a function or aggregation
            continue
        if token in {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}:
            continue
        names.add(token)
    return names


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.99, sum by (service, le) (rate(search_x_bucket{method!~"a|b", code="OK"}[5m]))) / up'
    assert metric_names(expr) == {"search_x_bucket", "up"}
    # group_left without a label list is a modifier, not a series
    ratio = "sum by (a) (rate(x_total[5m])) / ignoring(a) group_left sum(rate(x_total[5m]))"
    assert metric_names(ratio) == {"x_total"}


def test_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_expr_queries_only_metrics_defined_in_metrics_py(dashboard):
    known = exported()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: unknown metrics {sorted(names - known)}"


def test_dashboard_covers_red_reranker_and_degradation(dashboard):
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    required = {
        "search_grpc_server_requests_total",
        "search_grpc_server_request_duration_seconds_bucket",
        "search_grpc_server_in_flight_requests",
        "search_gateway_degraded_responses_total",
        "search_gateway_downstream_duration_seconds_bucket",
        "search_reranker_queue_pairs",
        "search_reranker_queue_wait_seconds_bucket",
        "search_reranker_tokenization_seconds_bucket",
        "search_reranker_inference_seconds_bucket",
        "search_reranker_batch_pairs_bucket",
        "search_reranker_batch_tokens_bucket",
        "search_reranker_rejected_requests_total",
    }
    assert required <= used, sorted(required - used)
    titles = " ".join(p["title"] for p in dashboard_panels(dashboard)).lower()
    for word in ("p50", "p95", "p99", "error ratio", "degraded", "request rate"):
        assert word in titles, word


def test_panels_have_unique_ids_and_do_not_overlap(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
