"""docs/METRICS.md documents every metric (with its labels) and every alert."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.common import metrics

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "METRICS.md").read_text()
ALERTS = yaml.safe_load((REPO / "observability" / "alerts.yml").read_text())


def doc_rows() -> dict[str, str]:
    """Metric name (first backticked cell of a table row) -> the whole row."""
    rows = {}
    for line in DOC.splitlines():
        match = re.match(r"\|\s*`([a-z_:]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_every_metric_in_metrics_py_is_documented_with_type_and_labels():
    rows = doc_rows()
    for metric in metrics.ALL_METRICS:
        name = metrics.family_name(metric)
        assert name in rows, f"{name} is not documented in docs/METRICS.md"
        kind = metric.describe()[0].type
        assert kind in rows[name], f"{name}: type {kind} not in its row"
        for label in metric._labelnames:
            assert f"`{label}`" in rows[name], f"{name}: label {label} not in its row"


def test_no_documented_metric_is_missing_from_metrics_py():
    defined = {metrics.family_name(m) for m in metrics.ALL_METRICS}
    documented = {name for name in doc_rows() if name.startswith("search_")}
    assert documented <= defined, sorted(documented - defined)


def test_documented_buckets_match_the_code():
    def listed(text: str) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(", ") if x != "+Inf")

    table = {}
    for line in DOC.splitlines():
        match = re.match(r"\|\s*(latency \(seconds\)|batch pairs|batch tokens|candidates)\s*\|\s*([^|]+)\|", line)
        if match:
            table[match.group(1)] = listed(match.group(2).strip())
    assert table["latency (seconds)"] == metrics.LATENCY_BUCKETS
    assert table["batch pairs"] == tuple(float(b) for b in metrics.BATCH_PAIRS_BUCKETS)
    assert table["batch tokens"] == tuple(float(b) for b in metrics.BATCH_TOKENS_BUCKETS)
    assert table["candidates"] == tuple(float(b) for b in metrics.CANDIDATES_BUCKETS)


def test_every_alert_is_documented():
    names = {rule["alert"] for group in ALERTS["groups"] for rule in group["rules"]}
    for name in names:
        assert f"| `{name}` |" in DOC, f"alert {name} is not in docs/METRICS.md"
