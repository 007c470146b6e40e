"""Monitoring wiring: the PrometheusRule and Grafana dashboard shipped to Kubernetes are
exactly observability/'s files, scrape jobs carry the names the alerts use, and the
prometheus-adapter rule turns search_reranker_queue_pairs into the per-pod metric the
reranker's HPA reads (its PromQL evaluated by promtool on synthetic series).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from .support import K8S, REPO, by_kind, kustomize, one, render

ALERTS = REPO / "observability" / "alerts.yml"
DASHBOARD = REPO / "observability" / "grafana" / "search-dashboard.json"
SYNC = K8S / "components" / "monitoring" / "sync_observability.py"
ADAPTER = K8S / "prometheus-adapter"


def test_generated_monitoring_objects_are_in_sync():
    proc = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("overlay", ["prod", "mesh"])
def test_prometheus_rule_wraps_the_alert_groups(overlay):
    if not ALERTS.exists():
        pytest.skip("observability/alerts.yml does not exist yet")
    docs = render(overlay)
    rule = one(docs, "PrometheusRule", "search-platform-alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == groups
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"], r


@pytest.mark.parametrize("overlay", ["prod", "mesh"])
def test_dashboard_configmap_holds_the_dashboard(overlay):
    if not DASHBOARD.exists():
        pytest.skip("observability/grafana/search-dashboard.json does not exist yet")
    cm = one(render(overlay), "ConfigMap", "search-platform-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = cm["data"][DASHBOARD.name]
    assert text == DASHBOARD.read_text()
    json.loads(text)
    # kubectl's client-side apply keeps a copy in an annotation capped at 256 KiB.
    assert len(text.encode()) < 256 * 1024


def test_dev_has_no_monitoring_crds():
    kinds = {d["kind"] for d in render("dev")}
    assert not kinds & {"PrometheusRule", "ServiceMonitor"}


def test_alert_jobs_are_scraped():
    """Every job the alert rules name is produced by the ServiceMonitor's jobLabel."""
    if not ALERTS.exists():
        pytest.skip("observability/alerts.yml does not exist yet")
    jobs = set(re.findall(r"search-[a-z]+", " ".join(r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"])))
    assert jobs, "alerts name no search-* job"
    docs = render("prod")
    (sm,) = by_kind(docs, "ServiceMonitor").values()
    produced = {
        s["metadata"]["labels"][sm["spec"]["jobLabel"]]
        for s in by_kind(docs, "Service").values()
        if sm["spec"]["jobLabel"] in s["metadata"].get("labels", {})
    }
    assert jobs <= produced, jobs - produced
    compose_jobs = {j["job_name"] for j in yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs <= compose_jobs, jobs - compose_jobs


# --------------------------------------------------------------------------- prometheus-adapter
def adapter_rules() -> list[dict]:
    return yaml.safe_load((ADAPTER / "rules.yaml").read_text())["rules"]


def test_adapter_config_and_helm_values_agree():
    values = yaml.safe_load((ADAPTER / "values.yaml").read_text())
    assert values["rules"]["default"] is False
    assert values["rules"]["custom"] == adapter_rules()


def test_adapter_exposes_the_hpa_metric():
    from services.common import metrics as service_metrics

    hpa = one(render("prod"), "HorizontalPodAutoscaler", "reranker")
    wanted = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exported = service_metrics.family_name(service_metrics.RERANK_QUEUE_PAIRS)
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == wanted]
    assert re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1) == exported
    assert re.fullmatch(rule["name"]["matches"], exported)
    overrides = rule["resources"]["overrides"]
    assert overrides["namespace"]["resource"] == "namespace" and overrides["pod"]["resource"] == "pod"
    assert "<<.GroupBy>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_adapter_configmap_renders_the_rules():
    docs = kustomize(ADAPTER)
    cm = one(docs, "ConfigMap", "adapter-config")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert yaml.safe_load(cm["data"]["config.yaml"])["rules"] == adapter_rules()


def test_adapter_query_gives_one_smoothed_value_per_pod(tmp_path):
    """Expand the adapter's metricsQuery as the adapter does for the HPA's request and let
    promtool evaluate it on synthetic scrapes of two reranker pods."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
    (rule,) = adapter_rules()
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "search_reranker_queue_pairs")
        .replace("<<.LabelMatchers>>", 'namespace="search",pod=~"reranker-a|reranker-b"')
        .replace("<<.GroupBy>>", "pod")
    )
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "adapter:queue_pairs", "expr": query}]}]})
    )
    (tmp_path / "test.yml").write_text(
        textwrap.dedent(
            """\
            rule_files: [rules.yml]
            evaluation_interval: 15s
            tests:
              - interval: 15s
                input_series:
                  # reranker-a: a burst (0, 0, 0, 400) -> 1-minute average 100
                  - series: 'search_reranker_queue_pairs{namespace="search",pod="reranker-a",job="search-reranker"}'
                    values: '0 0 0 400'
                  # reranker-b: steady 40
                  - series: 'search_reranker_queue_pairs{namespace="search",pod="reranker-b",job="search-reranker"}'
                    values: '40 40 40 40'
                  # another namespace's pod is not selected
                  - series: 'search_reranker_queue_pairs{namespace="other",pod="reranker-a",job="search-reranker"}'
                    values: '999 999 999 999'
                promql_expr_test:
                  - expr: adapter:queue_pairs
                    eval_time: 45s
                    exp_samples:
                      - labels: 'adapter:queue_pairs{pod="reranker-a"}'
                        value: 100
                      - labels: 'adapter:queue_pairs{pod="reranker-b"}'
                        value: 40
            """
        )
    )
    proc = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
