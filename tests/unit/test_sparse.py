"""BM25 sparse encoder: analyzer, term ids, weights, and BM25 scores through real Qdrant."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib

import pytest

from services.retrieval.sparse import (
    ENGLISH_STOP_WORDS,
    Bm25SparseEncoder,
    SparseEmbedding,
    term_id,
)


@pytest.fixture(scope="module")
def enc() -> Bm25SparseEncoder:
    return Bm25SparseEncoder()


# ----------------------------------------------------------------------------- analyzer


def test_analyze_lowercases_removes_stop_words_and_stems(enc):
    assert enc.analyze("The Runners were RUNNING quickly") == ["runner", "run", "quick"]


def test_analyze_uses_the_snowball_stemmer(enc):
    # Outputs of the Snowball English algorithm (not Porter's, which gives "gener" / "gener").
    assert enc.analyze("generously generous") == ["generous", "generous"]
    assert enc.analyze("fairly fairness") == ["fair", "fair"]
    assert enc.analyze("consistency consistent") == ["consist", "consist"]


def test_analyze_handles_contractions_possessives_and_curly_apostrophes(enc):
    # "don't" is a stop word; the possessive 's is removed by the stemmer.
    assert enc.analyze("I don't know Alzheimer's") == ["know", "alzheim"]
    assert enc.analyze("don\u2019t Alzheimer\u2019s") == ["alzheim"]


def test_analyze_is_unicode_aware(enc):
    assert enc.analyze("Café NAÏVE β-amyloid") == ["café", "naïv", "β", "amyloid"]
    # NFKC folds compatibility forms: the "ﬁ" ligature and full-width letters.
    assert enc.analyze("ﬁbrosis") == enc.analyze("fibrosis")
    assert enc.analyze("ＤＮＡ") == ["dna"]


def test_analyze_splits_on_punctuation_and_keeps_numbers(enc):
    assert enc.analyze("IL-6, TNF-α; p<0.05") == ["il", "6", "tnf", "α", "p", "0", "05"]


def test_analyze_drops_over_long_tokens(enc):
    assert enc.analyze("x" * 41 + " gene " + "k" * 40) == ["gene", "k" * 40]


def test_analyze_empty_and_stop_word_only_text(enc):
    assert enc.analyze("") == []
    assert enc.analyze("the and of it was") == []


def test_stop_list_is_the_snowball_english_list():
    assert len(ENGLISH_STOP_WORDS) == 174
    assert {"the", "not", "no", "don't", "ourselves", "very"} <= ENGLISH_STOP_WORDS
    assert "protein" not in ENGLISH_STOP_WORDS


def test_other_languages_stem_without_stop_words():
    german = Bm25SparseEncoder(language="german")
    assert german.analyze("Die Häuser") == ["die", "haus"]


@pytest.mark.parametrize("kwargs", [{"language": "klingon"}, {"k1": -1}, {"b": 1.5}, {"avg_doc_length": 0}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        Bm25SparseEncoder(**kwargs)


# ----------------------------------------------------------------------------- term ids


def test_term_id_is_crc32_masked_to_31_bits():
    assert term_id("run") == zlib.crc32(b"run") & 0x7FFFFFFF
    assert all(0 <= term_id(t) < 2**31 for t in ["run", "", "β", "x" * 40])


def test_term_ids_are_stable_across_processes():
    """Python's str hash is salted per process; term ids must not be."""
    code = "from services.retrieval.sparse import Bm25SparseEncoder as E; print(E().encode_query('protein folding').indices)"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
        ).stdout.strip()
        for seed in ("1", "2")
    }
    expected = sorted([term_id("protein"), term_id("fold")])
    assert outputs == {str(expected)}


# ----------------------------------------------------------------------------- weights


def test_document_values_are_bm25_saturation_with_length_normalisation():
    enc = Bm25SparseEncoder(k1=1.2, b=0.75, avg_doc_length=4.0)
    # Analyzed: ["cell", "cell", "grow", "fast"] -> dl = 4 = avgdl, so the norm is k1.
    emb = enc.encode_documents(["Cells cells grow fast"])[0]
    got = emb.as_dict()
    assert got[term_id("cell")] == pytest.approx(2 * 2.2 / (2 + 1.2))
    assert got[term_id("grow")] == pytest.approx(1 * 2.2 / (1 + 1.2))
    assert got[term_id("fast")] == pytest.approx(1.0)
    assert len(got) == 3


def test_longer_documents_get_lower_weights_unless_b_is_zero():
    short, long_ = "cancer", "cancer " + " ".join(f"word{i}" for i in range(50))
    enc = Bm25SparseEncoder(avg_doc_length=10)
    w_short = enc.encode_document(short).as_dict()[term_id("cancer")]
    w_long = enc.encode_document(long_).as_dict()[term_id("cancer")]
    assert w_short > w_long
    flat = Bm25SparseEncoder(b=0.0)
    assert flat.encode_document(short).as_dict() == {term_id("cancer"): pytest.approx(1.0)}
    assert flat.encode_document(long_).as_dict()[term_id("cancer")] == pytest.approx(1.0)


def test_term_frequency_saturates_towards_k1_plus_1():
    enc = Bm25SparseEncoder(k1=1.2, b=0.0)
    values = [enc.encode_document(" ".join(["gene"] * n)).values[0] for n in (1, 2, 5, 50)]
    assert values == sorted(values)
    assert values[-1] < 2.2
    assert values[-1] - values[-2] < values[1] - values[0]


def test_embeddings_are_sorted_unique_and_aligned(enc):
    emb = enc.encode_documents(["zeta alpha beta alpha gamma delta epsilon"])[0]
    assert emb.indices == sorted(set(emb.indices))
    assert len(emb.indices) == len(emb.values) == 6


def test_query_values_are_one_per_unique_term(enc):
    q = enc.encode_query("Protein proteins folding and the FOLD")
    assert q == SparseEmbedding(indices=sorted([term_id("protein"), term_id("fold")]), values=[1.0, 1.0])


def test_empty_text_gives_empty_embeddings(enc):
    assert enc.encode_query("the of and") == SparseEmbedding([], [])
    assert enc.encode_documents(["", "The"]) == [SparseEmbedding([], []), SparseEmbedding([], [])]
    assert len(enc.encode_query("")) == 0


def test_encode_documents_keeps_order(enc):
    texts = ["alpha", "beta", "gamma"]
    assert [e.indices for e in enc.encode_documents(texts)] == [[term_id(t)] for t in ["alpha", "beta", "gamma"]]


# ----------------------------------------------------------------------------- with Qdrant


def _bm25(query_terms, doc_terms_list, k1, b, avgdl):
    """Textbook Okapi BM25 with Qdrant's IDF and a fixed avgdl."""
    n = len(doc_terms_list)
    scores = []
    for doc in doc_terms_list:
        s = 0.0
        for t in set(query_terms):
            df = sum(t in d for d in doc_terms_list)
            if t not in doc:
                continue
            tf = doc.count(t)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(s)
    return scores


def test_qdrant_idf_modifier_yields_okapi_bm25_scores():
    qdrant_client = pytest.importorskip("qdrant_client")
    from qdrant_client import models

    enc = Bm25SparseEncoder(k1=1.2, b=0.75, avg_doc_length=6.0)
    docs = [
        "Protein folding is driven by hydrophobic collapse.",
        "Misfolded proteins aggregate in neurodegenerative disease; folding chaperones help.",
        "Insulin resistance and type 2 diabetes.",
        "The protein kinase pathway regulates cell growth and protein synthesis.",
        "Diabetes increases the risk of cardiovascular disease.",
    ]
    client = qdrant_client.QdrantClient(":memory:")
    client.create_collection(
        "bm25", vectors_config={}, sparse_vectors_config={"s": models.SparseVectorParams(modifier=models.Modifier.IDF)}
    )
    client.upsert(
        "bm25",
        points=[
            models.PointStruct(id=i, vector={"s": models.SparseVector(indices=e.indices, values=e.values)})
            for i, e in enumerate(enc.encode_documents(docs))
        ],
        wait=True,
    )
    query = "protein folding disease"
    q = enc.encode_query(query)
    hits = client.query_points("bm25", query=models.SparseVector(indices=q.indices, values=q.values), using="s", limit=10).points
    got = {h.id: h.score for h in hits}
    expected = _bm25(enc.analyze(query), [enc.analyze(d) for d in docs], 1.2, 0.75, 6.0)
    for i, score in enumerate(expected):
        if score > 0:
            assert got[i] == pytest.approx(score, rel=1e-4)
        else:
            assert i not in got or got[i] == pytest.approx(0.0)
    # Best match: the only document with all three terms; then the short protein+fold one.
    assert [h.id for h in hits[:2]] == [1, 0]
