"""Documented defaults and limits agree with the code that enforces them.

Each value has one home: settings in the services' config classes (`setting()`), request
limits in services/common/validation.py (paging's window in services/gateway/paging.py).
The proto comments, README.md and docs/ARCHITECTURE.md either name the setting or state a
limit that is checked here against its constant, so a change on one side fails this test.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from services.common import config as cfg
from services.common import validation as v
from services.gateway.config import GatewayConfig
from services.gateway.paging import MAX_RESULT_WINDOW
from services.reranker.config import RerankerConfig
from services.retrieval.config import RetrievalConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = (GatewayConfig, RetrievalConfig, RerankerConfig)
PROTOS = sorted((REPO / "proto" / "search" / "v1").glob("*.proto"))
SETTING_NAME = re.compile(r"\b(?:GATEWAY|RETRIEVAL|RERANKER|EMBEDDER|QDRANT|ORT|EDGE|INTERNAL|TLS)_[A-Z0-9_]*[A-Z0-9]\b")

#: Every number a proto comment states, as the code has it. A comment line with a range, a
#: numeric default or a numeric bound must contain one of these.
PROTO_FACTS = (
    f"1..{v.MAX_ID_BYTES} bytes of UTF-8",
    f"RRF constant k (1..{v.MAX_RRF_K})",
    f"before fusion (1..{v.MAX_PREFETCH_LIMIT})",
    f"(1..{v.MAX_PREFETCH_LIMIT}; unset: RETRIEVAL_LATE_INTERACTION_CANDIDATES)",
    f"to rerank, 1..{v.MAX_CANDIDATES} (unset: GATEWAY_DEFAULT_CANDIDATES)",
    f"Query text, 1..{v.MAX_QUERY_CHARS} characters",
    f"Number of results, 1..{v.MAX_TOP_K} (default {v.DEFAULT_TOP_K} when 0)",
    f"offset + top_k is at most {MAX_RESULT_WINDOW}",
    f"1..{v.MAX_BATCH_DOCUMENTS} documents",
    f"1..{v.MAX_BATCH_DOCUMENTS} ids",
    f"1..{v.MAX_BATCH_DOCUMENTS} document ids",
    f"to return, 1..{v.MAX_RETRIEVE_LIMIT} (0: {v.DEFAULT_RETRIEVE_LIMIT})",
    "(0..1)",
)
NUMBER_CLAIM = re.compile(r"\d+\.\.\d+|\bdefault \d|\bat most \d|\bmax \d", re.IGNORECASE)

#: docs/ARCHITECTURE.md "Limits": the row's first cell -> what its limit cell must say.
LIMIT_ROWS = {
    "query (Search, Retrieve, Rerank)": [f"1..{v.MAX_QUERY_CHARS} characters"],
    "`top_k` (Search)": [f"1..{v.MAX_TOP_K} (0 = {v.DEFAULT_TOP_K})"],
    "`rerank.candidates`": [f"1..{v.MAX_CANDIDATES} (unset = `GATEWAY_DEFAULT_CANDIDATES`"],
    "`fusion`": [f"`rrf_k` 1..{v.MAX_RRF_K}", f"`prefetch_limit` 1..{v.MAX_PREFETCH_LIMIT}"],
    "`filter`": [
        f"at most {v.MAX_FILTER_CONDITIONS} conditions, {v.MAX_FILTER_DEPTH} levels",
        f"keys 1..{v.MAX_FILTER_KEY_CHARS} characters",
        f"`any_*` 1..{v.MAX_ANY_VALUES} values",
        f"keywords at most {v.MAX_KEYWORD_CHARS:,} characters",
    ],
    "documents per Upsert / ids per Delete": [f"1..{v.MAX_BATCH_DOCUMENTS}"],
    "document id": [f"1..{v.MAX_ID_BYTES} bytes"],
    "document text": [f"at most {v.MAX_TEXT_CHARS:,} characters"],
    "title": [f"at most {v.MAX_TITLE_CHARS:,} characters"],
    "payload": [f"at most {v.MAX_PAYLOAD_BYTES // 1024} KiB", f"nesting at most {v.MAX_PAYLOAD_DEPTH} levels"],
    "`filter_fields` (CreateCollection)": [f"at most {v.MAX_FILTER_FIELDS}"],
    "`limit` (Retrieve)": [f"1..{v.MAX_RETRIEVE_LIMIT} (0 = {v.DEFAULT_RETRIEVE_LIMIT})"],
    "`offset`, `page_token` (Search)": [f"`offset + top_k` <= {MAX_RESULT_WINDOW}", f"up to {MAX_RESULT_WINDOW}"],
    "ids per GetDocuments": [f"1..{v.MAX_BATCH_DOCUMENTS}, each 1..{v.MAX_ID_BYTES} bytes"],
    "passages per Rerank": [f"1..{v.MAX_RERANK_PASSAGES}, each at most {v.MAX_PASSAGE_CHARS:,} characters"],
}


def _settings() -> dict[str, object]:
    out: dict[str, object] = {}
    for cls in CONFIGS:
        for field in dataclasses.fields(cls):
            if "env" in field.metadata:
                out[field.metadata["env"]] = field.default
    return out


def _proto_comments() -> list[tuple[str, int, str]]:
    return [
        (proto.name, n, line.split("//", 1)[1].strip())
        for proto in PROTOS
        for n, line in enumerate(proto.read_text().splitlines(), 1)
        if "//" in line
    ]


def test_proto_comments_state_numbers_the_code_has():
    wrong = [
        f"{name}:{n}: {text}"
        for name, n, text in _proto_comments()
        if NUMBER_CLAIM.search(text) and not any(fact in text for fact in PROTO_FACTS)
    ]
    assert not wrong, (
        "proto comments state a default or limit the code does not have (name the setting, "
        f"or state the constant's value and list it in PROTO_FACTS): {wrong}"
    )


def test_proto_comments_name_real_settings():
    enum_values = {m for proto in PROTOS for m in re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*=\s*\d+;", proto.read_text(), re.M)}
    known = set(_settings()) | enum_values
    unknown = [
        f"{name}:{n}: {token}" for name, n, text in _proto_comments() for token in SETTING_NAME.findall(text)
        if token not in known and not text[text.index(token) + len(token):].startswith("_*")
    ]
    assert not unknown, f"proto comments name settings that do not exist: {unknown}"


def test_readme_defaults_match_the_settings():
    readme = " ".join((REPO / "README.md").read_text().split())
    claims = re.findall(r"\*\*([^*]+)\*\*[^*()]*\(((?:`[A-Z][A-Z0-9_]+`(?:, )?)+)\)", readme)
    assert len(claims) >= 2, "README.md's defaults (a bold value followed by its settings in brackets) not found"
    settings = _settings()
    wrong = []
    for value, names in claims:
        for name in re.findall(r"`([A-Z0-9_]+)`", names):
            if name not in settings:
                wrong.append(f"{name} is not a setting")
            elif str(settings[name]) != value:
                wrong.append(f"README says {name} is {value}, the code {settings[name]}")
    assert not wrong, wrong


@pytest.mark.parametrize("cls", CONFIGS)
def test_architecture_config_tables_match_the_code(cls):
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    stale = [row for row in cfg.markdown_table(cls).splitlines()[2:] if row not in doc]
    assert not stale, f"docs/ARCHITECTURE.md has other defaults or meanings; paste `searchctl config-docs` output: {stale}"


def test_architecture_limits_match_validation():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in doc.splitlines() if line.startswith("| ") and line.count("|") >= 4}
    wrong = []
    for key, expected in LIMIT_ROWS.items():
        if key not in rows:
            wrong.append(f"no Limits row {key!r}")
            continue
        wrong += [f"{key}: expected {text!r} in {rows[key].strip()!r}" for text in expected if text not in rows[key]]
    assert not wrong, wrong


def test_candidate_limits_fit_together():
    # The gateway retrieves max(offset + top_k + 1, candidates): always within one Retrieve.
    assert max(MAX_RESULT_WINDOW + 1, v.MAX_CANDIDATES) <= v.MAX_RETRIEVE_LIMIT
    assert GatewayConfig().default_candidates <= v.MAX_CANDIDATES
    assert RetrievalConfig().late_interaction_candidates <= v.MAX_PREFETCH_LIMIT
