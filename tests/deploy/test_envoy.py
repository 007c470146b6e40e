"""deploy/envoy/envoy.yaml: parsed strictly against Envoy's v3 protos by
scripts/validate_envoy.py in the isolated .venv-xds, then checked against the services
(routes, timeouts, clusters, health checks, tracing) and the Kubernetes/Compose names.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .support import GRPC_PORTS, REPO, by_kind, config_default, render, require_kubectl, require_xds_python

ENVOY_YAML = REPO / "deploy" / "envoy" / "envoy.yaml"
VALIDATOR = REPO / "scripts" / "validate_envoy.py"
SEARCH_METHODS = {
    "Search", "Upsert", "Delete", "CreateCollection", "DescribeCollection", "ListCollections", "DeleteCollection",
    "GetDocuments", "CreateAlias", "SwitchAlias", "DeleteAlias", "ListAliases", "Ingest", "Reindex", "ExportSnapshot",
    "RestoreSnapshot",
}
#: Streams that run as long as their work: no overall route timeout, never retried.
LONG_STREAMS = {"Ingest", "Reindex", "ExportSnapshot", "RestoreSnapshot"}


def run_validator(*args: str | Path) -> subprocess.CompletedProcess:
    python = require_xds_python()
    return subprocess.run([str(python), str(VALIDATOR), *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120)


@functools.lru_cache(maxsize=1)
def _dump() -> str:
    proc = run_validator("--dump", ENVOY_YAML)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def bootstrap() -> dict:
    return json.loads(_dump())


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def hcm(bootstrap: dict, listener: str) -> dict:
    for lst in bootstrap["static_resources"]["listeners"]:
        if lst["name"] == listener:
            (f,) = lst["filter_chains"][0]["filters"]
            return f["typed_config"]
    raise AssertionError(f"no listener {listener}")


def listener_port(bootstrap: dict, listener: str) -> int:
    for lst in bootstrap["static_resources"]["listeners"]:
        if lst["name"] == listener:
            return lst["address"]["socket_address"]["port_value"]
    raise AssertionError(listener)


def cluster(bootstrap: dict, name: str) -> dict:
    for c in bootstrap["static_resources"]["clusters"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no cluster {name}")


def routes(bootstrap: dict, listener: str = "grpc_ingress") -> list[dict]:
    (vhost,) = hcm(bootstrap, listener)["route_config"]["virtual_hosts"]
    return vhost["routes"]


def route_for(bootstrap: dict, method: str) -> dict:
    """The first route matching /search.v1.SearchService/<method> (Envoy's order)."""
    path = f"/search.v1.SearchService/{method}"
    for r in routes(bootstrap):
        m = r["match"]
        if m.get("path") == path or ("prefix" in m and path.startswith(m["prefix"])):
            return r
    raise AssertionError(f"no route for {path}")


# --------------------------------------------------------------------------- validation
def test_config_parses_strictly():
    proc = run_validator(ENVOY_YAML)
    assert proc.returncode == 0, proc.stderr
    assert "valid envoy.config.bootstrap.v3.Bootstrap" in proc.stderr


@pytest.mark.parametrize(
    "mutation, message",
    [
        (("grpc_health_check:", "grpc_healthcheck:"), "has no field named"),
        (("lb_policy: LEAST_REQUEST", "lb_policy: LEAST_REQUESTS"), "Invalid enum value"),
        (("DownstreamConnectionsConfig", "DownstreamConnectionConfig"), "no such message"),
        (("max_ejection_percent: 50", "max_ejection_percent: 150"), "violates lte 100"),
        (("stat_prefix: ops", 'stat_prefix: ""'), "shorter than min_len 1"),
        (("connect_timeout: 1s", "connect_timeout: 0s"), "violates gt"),
        (("      lb_policy: LEAST_REQUEST\n", "      lb_policy: LEAST_REQUEST\n      dns_refresh_rate: 5s\n"), "deprecated field"),
    ],
)
def test_validator_rejects_broken_configs(tmp_path, mutation, message):
    old, new = mutation
    text = ENVOY_YAML.read_text()
    assert old in text
    bad = tmp_path / "envoy.yaml"
    bad.write_text(text.replace(old, new, 1))
    proc = run_validator(bad)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- routes
def test_only_search_service_is_public(bootstrap):
    for r in routes(bootstrap):
        m = r["match"]
        target = m.get("path") or m.get("prefix")
        assert target.startswith("/search.v1.SearchService/"), f"route {r.get('name')} exposes {target}"
        assert "grpc" in m, f"route {r.get('name')} must only match gRPC requests"
        assert r["route"]["cluster"] == "search_gateway"
    text = json.dumps(routes(bootstrap))
    for private in ("RetrievalService", "RerankService", "grpc.health", "grpc.reflection"):
        assert private not in text
    # Every SearchService method from the proto is routed.
    proto = (REPO / "proto" / "search" / "v1" / "search_service.proto").read_text()
    service = proto.split("service SearchService", 1)[1].split("}", 1)[0]
    methods = set(re.findall(r"rpc\s+(\w+)\s*\(", service))
    assert methods == SEARCH_METHODS
    for method in methods:
        route_for(bootstrap, method)


def test_route_timeouts_cover_the_gateway_deadlines(bootstrap):
    search = route_for(bootstrap, "Search")["route"]
    # Longer than the gateway's own deadline for calls without one, so the gateway
    # answers (possibly degraded) before Envoy cuts the call.
    assert seconds(search["timeout"]) > config_default("gateway", "default_deadline_seconds")
    assert seconds(search["max_stream_duration"]["grpc_timeout_header_max"]) == seconds(search["timeout"])
    for method in ("Upsert", "Delete"):
        write = route_for(bootstrap, method)["route"]
        assert seconds(write["timeout"]) > config_default("gateway", "write_timeout_seconds")
    for method in SEARCH_METHODS:
        assert "timeout" in route_for(bootstrap, method)["route"], method
    for method in LONG_STREAMS:  # a 30 s route timeout would cut a reindex or a bulk ingest
        route = route_for(bootstrap, method)
        assert route["match"].get("path") == f"/search.v1.SearchService/{method}", method
        assert seconds(route["route"]["timeout"]) == 0 and "retry_policy" not in route["route"], method


def test_retries_on_unavailable_are_bounded(bootstrap):
    for method in ("Search", "DescribeCollection", "Upsert", "Delete"):
        policy = route_for(bootstrap, method)["route"]["retry_policy"]
        assert "unavailable" in policy["retry_on"].split(","), method
        assert 1 <= policy["num_retries"] <= 3
        assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # A non-idempotent call is only retried when it never reached a gateway.
    other = route_for(bootstrap, "CreateCollection")["route"]["retry_policy"]
    assert set(other["retry_on"].split(",")) <= {"connect-failure", "refused-stream"}
    # And retries are capped as a share of live traffic.
    (thresholds,) = cluster(bootstrap, "search_gateway")["circuit_breakers"]["thresholds"]
    budget = thresholds["retry_budget"]
    assert 0 < budget["budget_percent"]["value"] <= 50
    assert budget["min_retry_concurrency"] >= 1


# --------------------------------------------------------------------------- clusters
def test_gateway_cluster(bootstrap):
    c = cluster(bootstrap, "search_gateway")
    assert c["type"] == "STRICT_DNS"
    assert c["lb_policy"] in {"LEAST_REQUEST", "ROUND_ROBIN"}
    (endpoint,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address == {"address": "gateway-headless", "port_value": GRPC_PORTS["gateway"]}
    assert config_default("gateway", "port") == address["port_value"]
    # HTTP/2 upstream (gRPC) through the v3 protocol options extension.
    options = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (hc,) = c["health_checks"]
    assert hc["grpc_health_check"]["service_name"] == "search.v1.SearchService"
    od = c["outlier_detection"]
    assert od["consecutive_5xx"] >= 1 and od["max_ejection_percent"] <= 50


def test_gateway_cluster_resolves_the_headless_service():
    require_kubectl()
    for overlay in ("dev", "prod", "mesh"):
        services = by_kind(render(overlay), "Service")
        svc = services["gateway-headless"]
        assert svc["spec"]["clusterIP"] == "None", "STRICT_DNS needs the pod IPs, not a virtual IP"
        assert GRPC_PORTS["gateway"] in {p["port"] for p in svc["spec"]["ports"]}
        assert 4317 in {p["port"] for p in services["otel-collector"]["spec"]["ports"]}


def test_tracing_goes_to_the_otlp_collector(bootstrap):
    provider = hcm(bootstrap, "grpc_ingress")["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    cfg = provider["typed_config"]
    assert cfg["@type"].endswith("envoy.config.trace.v3.OpenTelemetryConfig")
    collector = cfg["grpc_service"]["envoy_grpc"]["cluster_name"]
    c = cluster(bootstrap, collector)
    (endpoint,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "otel-collector", "port_value": 4317}
    assert "http2_protocol_options" in c["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]["explicit_http_config"]


def test_admin_is_local_and_ops_listener_exposes_only_ready_and_stats(bootstrap):
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    assert listener_port(bootstrap, "grpc_ingress") == 8080
    assert listener_port(bootstrap, "ops") == 9902
    proxied = set()
    for r in routes(bootstrap, "ops"):
        if "route" in r:
            assert r["route"]["cluster"] == "envoy_admin"
            proxied.add(r["match"]["path"])
        else:
            assert r["direct_response"]["status"] == 404
    assert proxied == {"/ready", "/stats/prometheus"}
    (endpoint,) = cluster(bootstrap, "envoy_admin")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": admin_port}


def test_compose_provides_the_names_envoy_resolves():
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert "gateway-headless" in services["gateway"]["networks"]["default"]["aliases"]
    assert "otel-collector" in services["jaeger"]["networks"]["default"]["aliases"]
    mount = services["envoy"]["volumes"][0]
    source, target, mode = mount.split(":")
    assert (REPO / "deploy" / source).resolve() == ENVOY_YAML.resolve() and target == "/etc/envoy/envoy.yaml"
    assert "/etc/envoy/envoy.yaml" in services["envoy"]["command"]
