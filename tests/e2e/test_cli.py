"""The `searchctl` console script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import REPO


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


# `searchctl up`: tests/e2e/test_up.py
