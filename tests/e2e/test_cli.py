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


def test_a_collection_with_filter_fields_from_create_to_a_filtered_search(stack, tmp_path: Path):
    collection = f"f{uuid.uuid4().hex[:10]}"
    target = ("--target", stack.gateway)
    created = searchctl("collections", "create", collection, "--filter-field", "year:integer",
                        "--filter-field", "topic:KEYWORD", *target)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == (f"created collection {collection!r}: vectors dense bge-small-en, sparse (BM25); "
                                      "filter fields: topic keyword, year integer")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{year}", "title": f"Glaciers in {year}",
                                          "text": f"Glacier retreat measured in {year}.",
                                          "payload": {"year": year, "topic": "ice"}}) + "\n" for year in (2019, 2020, 2021)))
    assert searchctl("ingest", str(corpus), "--collection", collection, *target).returncode == 0
    described = json.loads(searchctl("collections", "describe", collection, *target).stdout)
    assert described["document_count"] == "3" and described["filter_fields"] == [
        {"key": "topic", "type": "FIELD_TYPE_KEYWORD"}, {"key": "year", "type": "FIELD_TYPE_INTEGER"}]

    def search(flt: dict) -> subprocess.CompletedProcess:
        return searchctl("search", "glacier retreat", "--collection", collection, "--json", "--no-rerank",
                         "--filter", json.dumps(flt), *target)

    found = search({"must": [{"field": {"key": "year", "range": {"gte": 2020}}}]})
    assert found.returncode == 0, found.stderr
    assert sorted(r["id"] for r in json.loads(found.stdout)["results"]) == ["d2020", "d2021"]
    refused = search({"must": [{"field": {"key": "year", "keyword": "2020"}}]})
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr
    assert "declares 'year' an integer field (filter_fields): a `keyword` condition on it never matches" in refused.stderr
    bad_json = search({"must": [{"feild": {}}]})
    assert bad_json.returncode == 2 and bad_json.stderr.startswith("searchctl search: --filter is not a Filter in JSON: ")
    assert len(bad_json.stderr.strip().splitlines()) == 1

    typed_wrong = tmp_path / "wrong.jsonl"
    typed_wrong.write_text(json.dumps({"id": "late", "text": "Glaciers in 2022.", "payload": {"year": "2022"}}) + "\n")
    stopped = searchctl("ingest", str(typed_wrong), "--collection", collection, *target)
    assert stopped.returncode != 0 and "the string '2022' is not an integer" in stopped.stderr, stopped.stderr
    assert f"at {typed_wrong}:1 (document 'late')" in stopped.stderr, stopped.stderr
    bad_field = searchctl("collections", "create", f"{collection}-x", "--filter-field", "year:date", *target)
    assert bad_field.returncode == 2 and "expected KEY:TYPE, TYPE one of keyword, integer, float, bool" in bad_field.stderr
    assert searchctl("collections", "delete", collection, *target).returncode == 0


def test_reindex_adds_a_field_to_filter_on_and_stops_at_a_document_that_does_not_fit(stack, tmp_path: Path):
    collection = f"r{uuid.uuid4().hex[:10]}"
    target = ("--target", stack.gateway)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{year}", "title": f"Tides in {year}", "text": f"Tide gauges in {year}.",
                                          "payload": {"year": year}}) + "\n" for year in (2019, 2020, 2021)))
    assert searchctl("ingest", str(corpus), "--collection", collection, *target).returncode == 0  # no filter fields
    done = searchctl("reindex", collection, "--to", f"{collection}-typed", "--filter-field", "year:integer", *target)
    assert done.returncode == 0, done.stderr
    assert "(copying the vectors; adding filter fields year integer)" in done.stdout
    described = json.loads(searchctl("collections", "describe", collection, *target).stdout)  # now an alias of its name
    assert described["name"] == f"{collection}-typed"
    assert described["filter_fields"] == [{"key": "year", "type": "FIELD_TYPE_INTEGER"}]
    found = searchctl("search", "tide gauges", "--collection", collection, "--json", "--no-rerank", "--filter",
                      json.dumps({"must": [{"field": {"key": "year", "range": {"lt": 2021}}}]}), *target)
    assert sorted(r["id"] for r in json.loads(found.stdout)["results"]) == ["d2019", "d2020"], found.stderr
    changed = searchctl("reindex", collection, "--filter-field", "year:keyword", *target)
    assert changed.returncode == 1 and "declares 'year' an integer field; a reindex adds fields, it does not change " \
                                       "their type" in changed.stderr, changed.stderr

    mixed = f"m{uuid.uuid4().hex[:10]}"
    corpus.write_text(json.dumps({"id": "ok", "text": "Tides.", "payload": {"year": 2020}}) + "\n"
                      + json.dumps({"id": "odd", "text": "Tides again.", "payload": {"year": "recent"}}) + "\n")
    assert searchctl("ingest", str(corpus), "--collection", mixed, *target).returncode == 0
    stopped = searchctl("reindex", mixed, "--to", f"{mixed}-typed", "--filter-field", "year:integer", *target)
    assert stopped.returncode == 1 and "INVALID_ARGUMENT" in stopped.stderr
    assert ("document 'odd' holds the string 'recent' at 'year', not an integer: fix that document or declare 'year' with the type it "
            "holds; the reindex stopped and its new collection was deleted") in stopped.stderr, stopped.stderr
    listing = searchctl("collections", "list", *target).stdout
    assert f"{mixed}-typed" not in listing and mixed in listing
    for name in (mixed, f"{collection}-typed"):
        searchctl("collections", "delete", name, *target)
