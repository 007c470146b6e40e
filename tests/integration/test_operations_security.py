"""The streamed RPCs under the platform's security: the gateway's API key guards them, the
gateway sends the internal token on its streams to retrieval too (Reindex, snapshots), and
retrieval refuses streams without it; `searchctl ingest` streams with $SEARCHCTL_API_KEY."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from search.v1 import (
    common_pb2,
    retrieval_service_pb2 as rpb,
    retrieval_service_pb2_grpc as rpb_grpc,
    search_service_pb2 as pb,
    search_service_pb2_grpc as pb_grpc,
)
from tests.conftest import REPO, Stack, require_models

KEY = "ops-key-5e1d9c2a77"
TOKEN = "internal-token-for-the-operations-test"
AUTH = (("authorization", f"Bearer {KEY}"),)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    require_models()
    internal = {"INTERNAL_TOKEN": TOKEN}
    s = Stack(tmp_path_factory.mktemp("ops-secure"), env_overrides={
        "retrieval": internal, "reranker": internal, "gateway": {**internal, "GATEWAY_API_KEYS": KEY}})
    s.start_all()
    yield s
    s.stop_all()


def test_streams_need_the_key_and_carry_the_internal_token(secured, tmp_path):
    docs = [common_pb2.Document(id=f"d{i}", text=f"Document {i} about tides and the moon.") for i in range(5)]
    batch = pb.IngestRequest(collection="secure", documents=docs, sequence=7)
    with grpc.insecure_channel(secured.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ingest(iter([batch]), timeout=60))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        acks = list(stub.Ingest(iter([batch]), timeout=60, metadata=AUTH))
        assert [a.sequence for a in acks] == [7]
        # Relayed streams reach retrieval, which demands the internal token the gateway sends.
        exported = list(stub.ExportSnapshot(pb.ExportSnapshotRequest(collection="secure"), timeout=60, metadata=AUTH))
        assert exported[0].header.point_count == 5
        restored = stub.RestoreSnapshot(iter([pb.RestoreSnapshotRequest(collection="secure-copy", header=exported[0].header)]
                                             + [pb.RestoreSnapshotRequest(points=m.points) for m in exported[1:]]),
                                        timeout=60, metadata=AUTH)
        assert restored.points == 5
        done = list(stub.Reindex(pb.ReindexRequest(source="secure"), timeout=300, metadata=AUTH))[-1]
        assert done.phase == common_pb2.REINDEX_PHASE_DONE
    with grpc.insecure_channel(secured.address("retrieval")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(rpb_grpc.RetrievalServiceStub(channel).ExportSnapshot(
                rpb.RetrievalServiceExportSnapshotRequest(collection="secure"), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    corpus = tmp_path / "more.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"m{i}", "text": f"More text {i}."}) + "\n" for i in range(40)))
    env = {**os.environ, "SEARCHCTL_API_KEY": KEY}
    result = subprocess.run([sys.executable, "-m", "services.cli", "ingest", str(corpus), "--collection", "secure",
                             "--target", secured.gateway, "--batch-size", "16"], capture_output=True, text=True,
                            timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0 and "ingested 40 documents" in result.stdout, result.stderr


def _searchctl(*args: str, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SEARCHCTL_API_KEY"}
    if key:
        env["SEARCHCTL_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)


def test_eval_and_search_send_the_key_and_say_when_it_is_missing(secured, tmp_path):
    """`searchctl eval` sent no key (its own channel); every command now does, and a refusal says what to set."""
    with grpc.insecure_channel(secured.gateway) as channel:  # no sparse vectors: eval does not wait for a fusion measurement
        pb_grpc.SearchServiceStub(channel).CreateCollection(pb.CreateCollectionRequest(name="secure-eval", sparse=False),
                                                            timeout=60, metadata=AUTH)
    dataset = tmp_path / "beir"
    (dataset / "qrels").mkdir(parents=True)
    (dataset / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"c{i}", "title": "", "text": text}) + "\n" for i, text in
                                                  enumerate(["Tides follow the moon.", "Bread needs yeast to rise.",
                                                             "Volcanoes erupt molten rock."])))
    (dataset / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why does bread rise"}) + "\n")
    (dataset / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\n")
    common = ["--collection", "secure-eval", "--modes", "dense", "--target", secured.gateway]

    refused = _searchctl("eval", str(dataset), *common, key=None)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
    assert "set SEARCHCTL_API_KEY" in refused.stderr, refused.stderr
    done = _searchctl("eval", str(dataset), *common, key=KEY)
    assert done.returncode == 0, done.stderr
    assert "ingested 3/3 documents" in done.stderr and "dense" in done.stdout, (done.stdout, done.stderr)

    refused = _searchctl("search", "bread", "--collection", "secure-eval", "--target", secured.gateway, key=None)
    assert refused.returncode == 1 and "set SEARCHCTL_API_KEY" in refused.stderr, refused.stderr
    found = _searchctl("search", "bread", "--collection", "secure-eval", "--target", secured.gateway, key=KEY)
    assert found.returncode == 0 and "c1" in found.stdout.splitlines()[1], found.stdout
