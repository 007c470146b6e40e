"""The `searchctl` console script as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, require_models

pytestmark = pytest.mark.e2e


def searchctl(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kw)


def test_help_lists_every_command():
    out = searchctl("--help").stdout
    for command in ("up", "serve", "ingest", "search", "models", "eval", "config-docs"):
        assert command in out
    serve_help = searchctl("serve", "reranker", "--help").stdout
    assert "RERANKER_MAX_LENGTH" in serve_help and "--max-length" in serve_help


def test_bad_config_value_fails_clearly():
    result = searchctl("serve", "gateway", env={**os.environ, "GATEWAY_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "GATEWAY_PORT" in result.stderr


def test_ingest_jsonl_then_search(stack, tmp_path: Path):
    corpus = tmp_path / "docs.jsonl"
    docs = [
        {"_id": "d1", "title": "Rust ownership", "text": "Rust's borrow checker enforces ownership rules at compile time."},
        {"_id": "d2", "title": "Espresso", "text": "Espresso is coffee brewed by forcing hot water through finely ground beans."},
        {"_id": "d3", "title": "Glaciers", "text": "Glaciers carve U-shaped valleys as they slowly move downhill under their own weight."},
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    name = f"cli{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # idempotent: a second run leaves exactly the file's documents
        result = searchctl("ingest", str(corpus), "--collection", name, "--target", stack.gateway, "--batch-size", "2")
        assert result.returncode == 0, result.stderr
        assert "ingested 3 documents" in result.stdout
    result = searchctl("search", "how is coffee made", "--collection", name, "--target", stack.gateway, "--json")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["results"][0]["id"] == "d2"
    assert len(response["results"]) == 3


def test_search_reports_errors_without_traceback(stack):
    result = searchctl("search", "x", "--collection", "nope", "--target", stack.gateway)
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "Traceback" not in result.stderr


def test_up_starts_the_stack_loads_the_demo_and_stops_on_ctrl_c(tmp_path: Path):
    require_models()
    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "QDRANT_PATH": str(tmp_path / "qdrant"), "ORT_INTRA_OP_THREADS": "1",
           "GATEWAY_METRICS_PORT": "0", "RETRIEVAL_METRICS_PORT": "0", "RERANKER_METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--gateway-port", ports[0], "--retrieval-port", ports[1],
         "--reranker-port", ports[2]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        text = "".join(lines)
        assert "loaded" in text and "demo passages" in text, text
        assert "ready:" in text and "grpcurl -plaintext" in text, text
        result = searchctl("search", "how do I run the tests", "--collection", "docs", "--target", f"localhost:{ports[0]}", "--json")
        assert result.returncode == 0, result.stderr
        hits = json.loads(result.stdout)["results"]
        assert hits and any("test" in (h.get("text", "") + h.get("title", "")).lower() for h in hits[:3])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
