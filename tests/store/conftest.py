"""The store's contract suite runs once per backend: Qdrant Edge (the embedded default) and
the Qdrant server backend. No Qdrant server can be installed where the tests run, so the
server backend talks to qdrant-client's local mode, which receives the same client calls a
server would."""

from __future__ import annotations

import pytest

from services.common.model_dir import default_models_dir
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.qdrant_server import QdrantServerBackend
from services.retrieval.embedder import BiEncoder
from services.retrieval.passages import PassageSplitter
from services.retrieval.sparse import Bm25SparseEncoder
from services.retrieval.store import DocumentStore

BGE = default_models_dir() / "bge-small-en"


@pytest.fixture(scope="session")
def encoder() -> BiEncoder:
    if not (BGE / "model.onnx").is_file():
        pytest.skip(f"model bge-small-en not in {BGE.parent}; run `searchctl models fetch`")
    return BiEncoder(BGE, max_length=128, intra_op_threads=1)


def make_backend(kind: str, path):
    if kind == "edge":
        return EdgeBackend(path / "edge", search_threads=1)
    from qdrant_client import QdrantClient

    return QdrantServerBackend(QdrantClient(path=str(path / "qdrant-local")))


@pytest.fixture(params=["edge", "qdrant"])
def backend(request, tmp_path):
    b = make_backend(request.param, tmp_path)
    yield b
    b.close()


def make_store(backend, encoder, long_documents: str = "truncate", window: int = 128) -> DocumentStore:
    splitter = PassageSplitter(BGE / "tokenizer.json", window, 8)
    return DocumentStore(backend, encoder, Bm25SparseEncoder(), splitter=splitter, long_documents=long_documents)


@pytest.fixture
def store(backend, encoder) -> DocumentStore:
    return make_store(backend, encoder)
