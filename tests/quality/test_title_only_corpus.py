"""A BEIR folder whose documents have titles and empty texts (as old
bibliographic collections do) is indexed whole by `searchctl ingest`, and `searchctl eval`
over it gives the NDCG@10 that eval's own loader gives: one rule for a document, two paths.

The folder is a small part of Cranfield: the first judged test queries, their judged documents
and more in corpus order, with the text of every other document emptied. No reranking: the
models are slow on two cores. (On the whole of Cranfield so treated, 225 queries: ingest and
eval's loader agree within 0.0002 in every mode, the difference between two runs of the same
loader; an older loader, which copied the title into an empty text, is in
docs/QUALITY.md.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.beir import iter_corpus, load_qrels, load_queries
from tests.conftest import REPO, SHARED_DATASETS

QUERIES = 30
DOCUMENTS = 300
MODES = "dense,sparse,hybrid"


def small_cranfield(out: Path) -> tuple[Path, list[dict]]:
    source = SHARED_DATASETS / "cranfield"
    if not (source / "corpus.jsonl").is_file():
        pytest.skip(f"{source} absent: the Cranfield collection lives in ../shared/datasets (beside the repository)")
    qrels = load_qrels(source, "test")
    queries = load_queries(source)
    chosen = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())][:QUERIES]
    judged = {d for q in chosen for d in qrels[q]}
    corpus = [d for d in iter_corpus(source) if d["text"].strip() or d["title"].strip()]
    docs = [d for d in corpus if d["id"] in judged]
    docs += [d for d in corpus if d["id"] not in judged][: max(0, DOCUMENTS - len(docs))]
    for i, doc in enumerate(docs):
        if i % 2 == 0:
            doc["text"] = ""  # a title and no body
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"]}) + "\n"
                                              for d in docs))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in chosen))
    ids = {d["id"] for d in docs}
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q in chosen for d, g in qrels[q].items() if d in ids))
    return out, docs


def searchctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def evaluate(stack, dataset: Path, collection: str, out: Path, *extra: str) -> dict:
    result = searchctl("eval", str(dataset), "--collection", collection, "--modes", MODES, "--target", stack.gateway,
                       "--json", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_ingest_indexes_every_title_only_document_and_eval_agrees_with_its_own_loader(fresh_stack, tmp_path):
    dataset, docs = small_cranfield(tmp_path / "cranfield-titles")
    # One batch written at a time, as eval's loader writes them: the bi-encoder's int8 graphs give a
    # text a vector that moves slightly with the batch it is embedded in (services/retrieval/embedder.py),
    # and two batches written at once share embedding batches. With that the same, so must be the results.
    fresh_stack.env_overrides["gateway"] = {"GATEWAY_INGEST_WINDOW": "1"}
    fresh_stack.start_all()
    stack = fresh_stack
    assert sum(1 for d in docs if not d["text"]) == (len(docs) + 1) // 2
    tag = uuid.uuid4().hex[:8]
    ingested, loaded = f"ti{tag}", f"te{tag}"
    result = searchctl("ingest", str(dataset), "--collection", ingested, "--target", stack.gateway)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ingested {len(docs)} documents" in result.stdout
    with grpc.insecure_channel(stack.gateway) as channel:
        described = pb_grpc.SearchServiceStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=ingested), timeout=30)
    assert described.collection.document_count == len(docs)

    by_ingest = evaluate(stack, dataset, ingested, tmp_path / "ingest.json", "--no-ingest")
    by_eval = evaluate(stack, dataset, loaded, tmp_path / "eval.json")  # eval's own loader ingests
    figures = {mode: (round(by_ingest[mode]["ndcg@10"], 4), round(by_eval[mode]["ndcg@10"], 4)) for mode in MODES.split(",")}
    print(f"\nFIGURES NDCG@10 on {len(docs)} Cranfield documents (half title-only), {by_ingest['dense']['queries']} queries, "
          f"(searchctl ingest, searchctl eval's loader): {figures}")
    for mode, (ingest, own) in figures.items():
        assert ingest == own, (mode, figures)
