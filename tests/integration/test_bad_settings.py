"""A setting a service refuses stops `searchctl serve` with one line naming it (exit 2, as for a
value the flag parser cannot read), never a traceback: whether the service checks it when it is
built, when it registers, or while it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_models


@pytest.mark.parametrize("service, env, line", [
    ("gateway", {"GATEWAY_RERANK_POLICY": "sometimes"},  # refused as the settings are read
     "searchctl: invalid value 'sometimes' for GATEWAY_RERANK_POLICY: expected one of always, auto, never"),
    ("gateway", {"GATEWAY_DEFAULT_CANDIDATES": "0"},  # numbers too are refused as the settings are read
     "searchctl: invalid value '0' for GATEWAY_DEFAULT_CANDIDATES: must be between 1 and 200"),
    ("gateway", {"GATEWAY_SCORE_COMBINATION": "sum"},
     "searchctl: invalid value 'sum' for GATEWAY_SCORE_COMBINATION: expected one of rerank_only, weighted_zscore, "
     "weighted_rrf"),
    ("gateway", {"GATEWAY_RERANK_WEIGHT": "1.5"},
     "searchctl: invalid value '1.5' for GATEWAY_RERANK_WEIGHT: must be between 0 and 1"),
    ("gateway", {"GATEWAY_MAX_IN_FLIGHT": "-1"},  # was a ValueError traceback, exit 1
     "searchctl: invalid value '-1' for GATEWAY_MAX_IN_FLIGHT: must be at least 0"),
    ("gateway", {"GATEWAY_RESULT_CACHE_MB": "-1"},  # was refused by the cache without the setting's name
     "searchctl: invalid value '-1' for GATEWAY_RESULT_CACHE_MB: must be at least 0"),
    ("gateway", {"GATEWAY_UPSERT_BATCH_SIZE": "0"},  # started, and every Upsert failed
     "searchctl: invalid value '0' for GATEWAY_UPSERT_BATCH_SIZE: must be between 1 and 1000"),
    ("gateway", {"GATEWAY_DEFAULT_DEADLINE_SECONDS": "nan"},  # started
     "searchctl: invalid value 'nan' for GATEWAY_DEFAULT_DEADLINE_SECONDS: must be a finite number"),
    ("gateway", {"GATEWAY_PORT": "70000"},  # started
     "searchctl: invalid value '70000' for GATEWAY_PORT: must be between 0 and 65535"),
    ("reranker", {"RERANKER_MAX_BATCH_PAIRS": "0"},
     "searchctl: invalid value '0' for RERANKER_MAX_BATCH_PAIRS: must be at least 1"),
    ("retrieval", {"RETRIEVAL_LATE_INTERACTION_WEIGHT": "2"},  # was checked only once the model had loaded
     "searchctl: invalid value '2' for RETRIEVAL_LATE_INTERACTION_WEIGHT: must be between 0 and 1"),
    ("reranker", {"RERANKER_BATCHING": "always"}, "searchctl: invalid value 'always' for RERANKER_BATCHING: expected one of "
     "dynamic, none"),
    ("retrieval", {"RETRIEVAL_LONG_DOCUMENTS": "cut"},
     "searchctl: invalid value 'cut' for RETRIEVAL_LONG_DOCUMENTS: expected one of truncate, split"),
    ("retrieval", {"RETRIEVAL_LATE_INTERACTION_MODEL_DIR": "/no/such/colbert"},  # checked as the service starts
     "searchctl: retrieval: late-interaction model not found in /no/such/colbert; run `searchctl models fetch` or set "
     "RETRIEVAL_LATE_INTERACTION_MODEL_DIR=off"),
    ("retrieval", {"EDGE_DENSE_STORAGE": "tape"},
     "searchctl: invalid value 'tape' for EDGE_DENSE_STORAGE: expected one of memory, int8, disk-int8"),
    ("reranker", {"ORT_PROVIDER": "gpu"}, "searchctl: invalid value 'gpu' for ORT_PROVIDER: expected one of auto, cpu, cuda, "
     "tensorrt"),
    ("retrieval", {"QDRANT_PATH": "/proc/no-such-store"},
     "searchctl: retrieval: QDRANT_PATH /proc/no-such-store: cannot create /proc/no-such-store/collections (No such file "
     "or directory): name a folder this service may write"),
])
def test_a_refused_setting_is_one_line_without_a_traceback(tmp_path, service, env, line):
    if service == "retrieval":
        require_models()
    full_env = {**os.environ, f"{service.upper()}_PORT": "0", f"{service.upper()}_METRICS_PORT": "0",
                "QDRANT_PATH": str(tmp_path / "q"), **env}
    run = subprocess.run([sys.executable, "-m", "services.cli", "serve", service], env=full_env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, (run.returncode, run.stderr[-1500:])
    assert run.stderr.strip().splitlines()[-1] == line, run.stderr[-1500:]
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr[-3000:]
