"""docs/DEPLOY.md names real files, overlays and commands."""

from __future__ import annotations

import itertools
import re

from .support import K8S, OVERLAYS, REPO

DOC = REPO / "docs" / "DEPLOY.md"
ROOTS = ("k8s/", "deploy/", "services/", "scripts/", "tests/deploy/", "observability/", "docs/")


def expand(path: str) -> list[str]:
    """`k8s/overlays/{dev,prod}` -> both paths."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_paths_in_the_guide_exist():
    text = DOC.read_text()
    paths = set()
    for token in re.findall(r"`([^`\s]+)`", text) + re.findall(r"(?<![\w/.-])((?:%s)[\w./{},-]+)" % "|".join(map(re.escape, ROOTS)), text):
        token = token.rstrip(".,:;)")
        if re.fullmatch(r"deploy/(gateway|retrieval|reranker|envoy)", token):
            continue  # `kubectl ... deploy/<name>`, not a path
        if token.startswith(ROOTS) and "<" not in token and "*" not in token:
            paths.update(expand(token))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_guide_covers_every_overlay_and_the_operations():
    text = DOC.read_text()
    for overlay in OVERLAYS:
        assert (K8S / "overlays" / overlay / "kustomization.yaml").exists()
        assert f"k8s/overlays/{overlay}" in text
    for phrase in ("kubectl apply -k k8s/overlays/dev", "kubectl apply -k k8s/overlays/prod", "rollout undo",
                   "maxUnavailable: 0", "nvidia.com/gpu", "values-cluster.yaml", "search_reranker_queue_pairs",
                   "FETCH_MODELS=0", "scripts/setup_xds_env.sh"):
        assert phrase in text, phrase
