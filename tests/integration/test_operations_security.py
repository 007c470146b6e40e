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
