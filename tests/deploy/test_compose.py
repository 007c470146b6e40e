"""deploy/compose.yaml: valid against the Compose specification schema (check-jsonschema's
vendored compose-spec, in .venv-xds), consistent with the Dockerfiles and the services'
settings, hardened like the Kubernetes pods; its Prometheus config passes promtool.
No container engine is needed (none runs here).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .support import GRPC_PORTS, METRICS_PORTS, REPO, SERVICES, known_env_names, xds_tool

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
APPS = tuple(SERVICES)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_files_match_the_compose_spec():
    tool = xds_tool("check-jsonschema")
    proc = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(COMPOSE_GPU)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_file(tmp_path):
    tool = xds_tool("check-jsonschema")
    bad = tmp_path / "compose.yaml"
    text = COMPOSE.read_text()
    assert "    depends_on:\n      qdrant:" in text
    bad.write_text(text.replace("    depends_on:\n      qdrant:", "    depends_onn:\n      qdrant:", 1))
    proc = subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_stack_has_every_part(compose):
    services = compose["services"]
    assert set(services) >= {"qdrant", "retrieval", "reranker", "gateway", "envoy", "prometheus", "jaeger"}
    for name, svc in services.items():
        image = svc["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: image {image} must be pinned"
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:v")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


@pytest.mark.parametrize("service", APPS)
def test_app_services_build_their_target(compose, service):
    svc = compose["services"][service]
    build = svc["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == (REPO / "services" / "Dockerfile").resolve() and build["target"] == service
    assert (DEPLOY / build["context"]).resolve() == REPO.resolve()
    assert svc["image"] == f"search-{service}:0.1.0"


@pytest.mark.parametrize("service", APPS)
def test_app_services_are_hardened_and_private(compose, service):
    svc = compose["services"][service]
    assert svc["read_only"] is True
    assert any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]
    assert "ports" not in svc, f"{service} must only be reachable through Envoy"


@pytest.mark.parametrize("service", APPS)
def test_app_environment_uses_real_settings(compose, service):
    known = known_env_names(service)
    for name in compose["services"][service]["environment"]:
        assert name in known or name.startswith("OTEL_"), f"{service}: {name} is not a setting"


def test_wiring(compose):
    services = compose["services"]
    env = services["gateway"]["environment"]
    assert env["RETRIEVAL_ADDR"] == f"dns:///retrieval:{GRPC_PORTS['retrieval']}"
    assert env["RERANKER_ADDR"] == f"dns:///reranker:{GRPC_PORTS['reranker']}"
    assert services["retrieval"]["environment"]["QDRANT_URL"] == "http://qdrant:6333"
    assert services["retrieval"]["depends_on"]["qdrant"]["condition"] == "service_healthy"
    for name in ("retrieval", "gateway", "reranker"):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    # Only Envoy's gRPC port is published beyond loopback.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                assert (name, port) == ("envoy", "8080:8080"), f"{name} publishes {port} on every interface"


def test_gpu_override(compose):
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["reranker"]
    assert (DEPLOY / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == (REPO / "services" / "Dockerfile").resolve()
    assert gpu["build"]["target"] == "reranker-cuda"
    assert gpu["environment"]["ORT_PROVIDER"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["image"].endswith("-cuda")


def test_prometheus_scrapes_every_service(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for service in APPS:
        (sd,) = jobs[f"search-{service}"]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == METRICS_PORTS[service]
    assert jobs["search-envoy"]["metrics_path"] == "/stats/prometheus"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../observability/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert config["rule_files"] == ["alerts.yml"]


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
    alerts = REPO / "observability" / "alerts.yml"
    if not alerts.exists():
        pytest.skip("observability/alerts.yml does not exist yet")
    # The same layout as in the container: alerts.yml next to prometheus.yml.
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(alerts, tmp_path / "alerts.yml")
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
