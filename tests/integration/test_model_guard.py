"""The model guard through the real services: retrieval started with a different model file over an
existing collection refuses Search and Upsert (FAILED_PRECONDITION naming both models and the
reindex command); the reindex it names rebuilds the collection, and it serves again."""

from __future__ import annotations

import shutil

import grpc
import pytest

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.retrieval.model_guard import file_sha256
from tests.conftest import models_dir
from tests.integration.test_search_flow import DOCS, document


def test_other_model_file_is_refused_until_reindexed(fresh_stack, tmp_path):
    fresh_stack.start_all()
    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs"), timeout=30)
        stub.Upsert(pb.UpsertRequest(collection="docs", documents=[document(*d) for d in DOCS]), timeout=60)
    original = file_sha256(models_dir() / "bge-small-en" / "model.onnx")

    # The same model directory name, another model.onnx (one more protobuf field: a valid ONNX
    # model whose bytes, and so whose sha256, differ), as after an upgrade.
    other = tmp_path / "models" / "bge-small-en"
    shutil.copytree(models_dir() / "bge-small-en", other)
    with open(other / "model.onnx", "ab") as f:
        f.write(b"\x32\x08upgraded")  # ModelProto.doc_string
    changed = file_sha256(other / "model.onnx")
    assert changed != original
    fresh_stack.stop("retrieval")
    fresh_stack.env_overrides["retrieval"] = {"EMBEDDER_MODEL_DIR": str(other)}
    fresh_stack.start("retrieval")

    with grpc.insecure_channel(fresh_stack.gateway) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        for call in (lambda: stub.Search(pb.SearchRequest(collection="docs", query="sea level"), timeout=60),
                     lambda: stub.Upsert(pb.UpsertRequest(collection="docs", documents=[document(*DOCS[0])]), timeout=60)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            details = err.value.details()
            assert original[:12] in details and changed[:12] in details and "searchctl reindex docs" in details, details

        progress = list(stub.Reindex(pb.ReindexRequest(source="docs"), timeout=300))
        done = progress[-1]
        assert done.phase == common_pb2.REINDEX_PHASE_DONE and done.reembedded and done.alias == "docs"
        reply = stub.Search(pb.SearchRequest(collection="docs", query="why does the sea level rise and fall", top_k=1), timeout=60)
        assert reply.results[0].id == "tides" and reply.collection == done.target_collection
        stub.Upsert(pb.UpsertRequest(collection="docs", documents=[document(*DOCS[0])]), timeout=60)
