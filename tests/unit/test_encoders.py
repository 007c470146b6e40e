"""Real-model tests of the bi-encoder (retrieval) and the cross-encoder (reranker).

Both shipped models are int8 dynamically quantized: activation scales are computed per
tensor, over the whole padded batch, so a text's output moves slightly with its batch
mates. Exact equalities are therefore asserted only where the batches are identical
(batch_size=1, permuted inputs, concurrent vs sequential calls); batched vs unbatched
results are compared with tolerances measured for these models.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.common.hardware import CPU, cuda_device_present
from services.common.model_dir import ModelNotFoundError, default_models_dir
from services.common.onnx_session import encodings_to_inputs
from services.reranker.cross_encoder import CrossEncoder
from services.retrieval.embedder import BiEncoder

BGE = default_models_dir() / "bge-small-en"
RERANKER = default_models_dir() / "ms-marco-MiniLM-L-12-v2"

QUERY = "what is the capital of france"
RELEVANT = "Paris is the capital and most populous city of France, on the river Seine."
UNRELATED = [
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The Great Barrier Reef is the world's largest coral reef system, off Australia.",
    "A binary search halves the search interval each step, taking logarithmic time.",
    "Berlin is the capital of Germany.",
]
LONG_PASSAGE = " ".join(["tokenization"] + ["lorem ipsum dolor sit amet"] * 1000)  # ~5000 words
VARIED = [
    "short",
    "a medium length sentence about cooking pasta with garlic and olive oil",
    "x " * 120,
    "Quantum computers use qubits, which can be in superpositions of states, to solve some problems faster.",
    "tiny text",
    "The mitochondria is the powerhouse of the cell and produces ATP through respiration.",
    "what",
    # equal lengths (characters and tokens): batch composition must not follow input order
    "red apple pie",
    "big brown dog",
    "old stone wall",
    "new paper cup",
]


def _need(model_dir: Path) -> Path:
    if not (model_dir / "model.onnx").is_file() or not (model_dir / "tokenizer.json").is_file():
        pytest.skip(f"model {model_dir.name} not in {model_dir.parent}; run `searchctl models fetch`")
    return model_dir


@pytest.fixture(scope="module")
def bi() -> BiEncoder:
    return BiEncoder(_need(BGE), batch_size=3, intra_op_threads=1)


@pytest.fixture(scope="module")
def ce() -> CrossEncoder:
    return CrossEncoder(_need(RERANKER), batch_size=3, intra_op_threads=1)


# ------------------------------------------------------------------ bi-encoder


def test_bi_encoder_attributes(bi: BiEncoder) -> None:
    assert bi.name == "bge-small-en"
    assert bi.dimension == 384
    assert bi.max_length == 256
    if not cuda_device_present():
        assert bi.provider == CPU


def test_bi_encoder_vectors_are_unit_norm_float32(bi: BiEncoder) -> None:
    docs = bi.embed_documents(VARIED)
    queries = bi.embed_queries([QUERY, "cooking"])
    assert docs.shape == (len(VARIED), 384) and queries.shape == (2, 384)
    assert docs.dtype == np.float32 and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_query_is_closest_to_its_relevant_passage(bi: BiEncoder) -> None:
    q = bi.embed_queries([QUERY])[0]
    docs = bi.embed_documents([RELEVANT, *UNRELATED])
    sims = docs @ q
    assert int(np.argmax(sims)) == 0
    assert sims[0] > sims[1:].max() + 0.02


def test_query_prefix_is_applied(bi: BiEncoder) -> None:
    as_query = bi.embed_queries([QUERY])[0]
    as_doc = bi.embed_documents([QUERY])[0]
    prefixed_doc = bi.embed_documents([bi.query_prefix + QUERY])[0]
    np.testing.assert_allclose(as_query, prefixed_doc, atol=1e-5)
    assert float(as_query @ as_doc) < 0.999


def test_bi_encoder_list_equals_one_by_one_without_batching() -> None:
    unbatched = BiEncoder(_need(BGE), batch_size=1, intra_op_threads=1)
    together = unbatched.embed_documents(VARIED)
    one_by_one = np.vstack([unbatched.embed_documents([t]) for t in VARIED])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)


def test_bi_encoder_batched_close_to_unbatched(bi: BiEncoder) -> None:
    together = bi.embed_documents(VARIED)  # batch_size=3, padded batches
    one_by_one = np.vstack([bi.embed_documents([t]) for t in VARIED])
    cosines = (together * one_by_one).sum(axis=1)
    assert cosines.min() > 0.99, cosines  # int8 dynamic-quantization noise only


def test_bi_encoder_output_follows_input_order(bi: BiEncoder) -> None:
    together = bi.embed_documents(VARIED)
    perm = list(range(len(VARIED)))
    random.Random(7).shuffle(perm)
    shuffled = bi.embed_documents([VARIED[i] for i in perm])
    np.testing.assert_allclose(shuffled, together[perm], atol=1e-6)
    # Each row really belongs to its own text (not just a consistent permutation).
    own = (shuffled * np.vstack([bi.embed_documents([VARIED[i]]) for i in perm])).sum(axis=1)
    assert own.min() > 0.99


def test_mean_pooling_respects_the_attention_mask() -> None:
    mean = BiEncoder(_need(BGE), batch_size=8, pooling="mean", normalize=False, intra_op_threads=1)
    texts = ["short", "x " * 120]
    got = mean.embed_documents(texts)
    # Reference from the same padded batch: average only the real tokens of each row.
    encs = mean.tokenize(texts)
    feeds = encodings_to_inputs(encs, 0)
    hidden = mean._session.run(None, feeds)[0]
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths[0] < hidden.shape[1]  # the short text is padded
    expected = np.vstack([hidden[i, : lengths[i]].mean(axis=0) for i in range(len(texts))])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], hidden[0].mean(axis=0), atol=1e-3)  # padding is excluded
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # normalize=False honoured


def test_mean_and_cls_pooling_differ(bi: BiEncoder) -> None:
    mean = BiEncoder(_need(BGE), pooling="mean", intra_op_threads=1)
    a, b = bi.embed_documents([RELEVANT])[0], mean.embed_documents([RELEVANT])[0]
    assert abs(float(np.linalg.norm(b)) - 1.0) < 1e-5
    assert float(a @ b) < 0.9999


def test_bi_encoder_truncates_and_pads_to_longest(bi: BiEncoder) -> None:
    assert bi.count_tokens(["hello world", LONG_PASSAGE]) == [4, 256]
    encs = bi.tokenize(["hi", "two words"])
    assert len(encs[0].ids) == len(encs[1].ids) < 40
    vec = bi.embed_documents([LONG_PASSAGE])
    assert vec.shape == (1, 384) and np.isfinite(vec).all()


def test_bi_encoder_empty_input(bi: BiEncoder) -> None:
    assert bi.embed_queries([]).shape == (0, 384)
    assert bi.embed_documents([]).dtype == np.float32
    assert bi.count_tokens([]) == []


def test_bi_encoder_is_thread_safe(bi: BiEncoder) -> None:
    texts = [f"{t} #{i}" for i in range(4) for t in VARIED]
    sequential = np.vstack([bi.embed_documents([t]) for t in texts])
    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(lambda t: bi.embed_documents([t])[0], texts))
    np.testing.assert_allclose(np.vstack(parts), sequential, atol=1e-6)


def test_bi_encoder_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(_need(BGE), pooling="max")
    with pytest.raises(ModelNotFoundError, match="searchctl models fetch"):
        BiEncoder(tmp_path / "nothing-here")


# ------------------------------------------------------------------ cross-encoder


def test_cross_encoder_attributes(ce: CrossEncoder) -> None:
    assert ce.name == "ms-marco-MiniLM-L-12-v2"
    assert ce.max_length == 256
    if not cuda_device_present():
        assert ce.provider == CPU


def test_relevant_passage_scores_highest(ce: CrossEncoder) -> None:
    passages = [*UNRELATED[:2], RELEVANT, *UNRELATED[2:]]
    scores = ce.score(QUERY, passages)
    assert scores.dtype == np.float32 and scores.shape == (len(passages),)
    assert int(np.argmax(scores)) == 2
    assert scores[2] > max(scores[[0, 1, 3, 4]]) + 3.0  # clear margin on raw logits


def test_cross_encoder_list_equals_one_by_one_without_batching() -> None:
    unbatched = CrossEncoder(_need(RERANKER), batch_size=1, intra_op_threads=1)
    passages = [RELEVANT, *UNRELATED, *VARIED]
    together = unbatched.score(QUERY, passages)
    one_by_one = np.array([unbatched.score(QUERY, [p])[0] for p in passages], dtype=np.float32)
    np.testing.assert_allclose(together, one_by_one, atol=1e-4)


def test_cross_encoder_batched_close_to_unbatched(ce: CrossEncoder) -> None:
    passages = [RELEVANT, *UNRELATED, *VARIED]
    together = ce.score(QUERY, passages)  # batch_size=3, padded batches
    one_by_one = np.array([ce.score(QUERY, [p])[0] for p in passages], dtype=np.float32)
    # int8 dynamic quantization: typically < 0.1 logit of batch dependence (measured
    # worst case here ~0.25) on a ~20 logit range.
    np.testing.assert_allclose(together, one_by_one, atol=0.5)
    assert float(np.abs(together - one_by_one).mean()) < 0.1
    assert int(np.argmax(together)) == int(np.argmax(one_by_one)) == 0


def test_cross_encoder_scores_follow_input_order(ce: CrossEncoder) -> None:
    passages = [RELEVANT, *UNRELATED, *VARIED]
    together = ce.score(QUERY, passages)
    perm = list(range(len(passages)))
    random.Random(11).shuffle(perm)
    shuffled = ce.score(QUERY, [passages[i] for i in perm])
    np.testing.assert_allclose(shuffled, together[perm], atol=1e-5)
    assert perm.index(0) == int(np.argmax(shuffled))  # the relevant one moved with its score


def test_split_api_matches_score(ce: CrossEncoder) -> None:
    passages = [RELEVANT, *UNRELATED]
    encs = ce.tokenize_pairs([(QUERY, p) for p in passages])
    lengths = [len(e.ids) for e in encs]
    assert len(set(lengths)) > 1  # unpadded: real token counts
    assert all(sum(e.attention_mask) == len(e.ids) for e in encs)
    logits = ce.infer(encs)  # one mixed-length batch, padded inside
    assert logits.shape == (len(passages),) and logits.dtype == np.float32
    np.testing.assert_allclose(ce.infer(encs[::-1]), logits[::-1], atol=1e-5)  # row order kept
    big = CrossEncoder(_need(RERANKER), batch_size=32, intra_op_threads=1)
    np.testing.assert_allclose(big.score(QUERY, passages), logits, atol=1e-5)  # same single batch
    assert ce.infer([]).shape == (0,)
    assert ce.score(QUERY, []).shape == (0,)


def test_cross_encoder_pads_to_longest_in_batch(ce: CrossEncoder) -> None:
    encs = ce.tokenize_pairs([("hi", "hello there"), ("q", "a")])
    inputs = ce.build_inputs(encs)
    assert inputs["input_ids"].shape == (2, max(len(e.ids) for e in encs))
    assert inputs["input_ids"].shape[1] < 40
    assert inputs["attention_mask"][1].sum() == len(encs[1].ids)


def test_cross_encoder_truncates_long_passage_keeping_query(ce: CrossEncoder) -> None:
    enc = ce.tokenize_pairs([(QUERY, LONG_PASSAGE)])[0]
    assert len(enc.ids) == ce.max_length
    query_only = ce.tokenize_pairs([(QUERY, "")])[0]  # [CLS] q [SEP] [SEP]
    k = query_only.type_ids.index(1)
    assert enc.type_ids.index(1) == k and enc.ids[:k] == query_only.ids[:k]  # [CLS] q [SEP] intact
    scores = ce.score(QUERY, [LONG_PASSAGE, RELEVANT + " " + LONG_PASSAGE])
    assert np.isfinite(scores).all()
    assert scores[1] > scores[0]  # the relevant start survives truncation


def test_cross_encoder_query_longer_than_max_length_falls_back(ce: CrossEncoder) -> None:
    long_query = "why " * 400
    encs = ce.tokenize_pairs([(long_query, RELEVANT), (QUERY, RELEVANT)])
    assert len(encs[0].ids) == ce.max_length
    assert 1 in encs[0].type_ids  # the passage kept some tokens under longest_first
    assert encs[1].ids == ce.tokenize_pairs([(QUERY, RELEVANT)])[0].ids
    assert np.isfinite(ce.score(long_query, [RELEVANT])).all()


def test_cross_encoder_is_thread_safe(ce: CrossEncoder) -> None:
    passages = [RELEVANT, *UNRELATED, *VARIED]
    sequential = np.array([ce.score(QUERY, [p])[0] for p in passages])
    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(lambda p: ce.score(QUERY, [p])[0], passages))
    np.testing.assert_allclose(np.array(parts), sequential, atol=1e-5)


# ------------------------------------------------------------------ bi-encoder split API + dynamic batching


def test_bi_encoder_split_api_matches_embed(bi: BiEncoder) -> None:
    docs = bi.tokenize_documents(VARIED)
    lengths = [len(e.ids) for e in docs]
    assert len(set(lengths)) > 1 and all(sum(e.attention_mask) == len(e.ids) for e in docs)  # unpadded
    np.testing.assert_allclose(bi.embed_encodings(docs), bi.embed_documents(VARIED), atol=1e-6)
    queries = bi.tokenize_queries([QUERY])
    assert len(queries[0].ids) > len(bi.tokenize_documents([QUERY])[0].ids)  # the prefix is there
    one_batch = bi.infer(docs[:3])  # a mixed-length batch, padded inside
    assert one_batch.shape == (3, 384) and one_batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(one_batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(bi.infer(docs[:3][::-1]), one_batch[::-1], atol=1e-5)  # row order kept
    assert bi.tokenize_queries([]) == [] and bi.embed_encodings([]).shape == (0, 384)


def test_batched_embedder_refuses_a_request_larger_than_its_whole_queue() -> None:
    import asyncio

    from services.common.errors import InvalidArgument
    from services.retrieval.batched_embedder import BatchedEmbedder

    encoder = BiEncoder(_need(BGE), batch_size=8, intra_op_threads=1)

    async def scenario():
        embedder = BatchedEmbedder(encoder, max_queue_texts=3)
        try:
            with pytest.raises(InvalidArgument, match="EMBEDDER_MAX_QUEUE_TEXTS"):
                await embedder.aembed_documents(VARIED[:4])
            with pytest.raises(InvalidArgument, match="4 texts"):
                await asyncio.get_running_loop().run_in_executor(None, embedder.embed_documents, VARIED[:4])
            return await embedder.aembed_documents(VARIED[:3])  # exactly the queue's size fits
        finally:
            await embedder.close()

    assert asyncio.run(scenario()).shape == (3, 384)


def test_batched_embedder_serves_threads_and_coalesces() -> None:
    import asyncio

    from services.retrieval.batched_embedder import BatchedEmbedder

    encoder = BiEncoder(_need(BGE), batch_size=8, intra_op_threads=1)
    reference_docs = np.vstack([encoder.embed_documents([t]) for t in VARIED])
    reference_query = encoder.embed_queries([QUERY])[0]

    from prometheus_client import REGISTRY

    def exported(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    before = {n: exported(n) for n in ("search_retrieval_embed_batch_texts_sum", "search_retrieval_embed_batch_texts_count",
                                       "search_retrieval_embed_inference_seconds_count")}

    async def scenario():
        embedder = BatchedEmbedder(encoder, max_wait_s=0.01)
        assert (embedder.name, embedder.dimension, embedder.max_length) == ("bge-small-en", 384, 256)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=6) as pool:  # the store's worker threads
            calls = [loop.run_in_executor(pool, embedder.embed_documents, [t]) for t in VARIED]
            calls.append(loop.run_in_executor(pool, embedder.embed_queries, [QUERY]))
            calls.append(loop.run_in_executor(pool, embedder.embed_documents, VARIED[:4]))
            results = await asyncio.gather(*calls)
        with pytest.raises(RuntimeError, match="aembed"):
            embedder.embed_queries([QUERY])  # blocking call on the loop thread would deadlock
        on_loop = await embedder.aembed_queries([QUERY, "cooking"])
        empty = await loop.run_in_executor(None, embedder.embed_documents, [])
        await embedder.close()
        return embedder, results, on_loop, empty

    embedder, results, on_loop, empty = asyncio.run(scenario())
    docs = np.vstack(results[: len(VARIED)])
    # Batch mates change int8 activation scales slightly (see BiEncoder): compare by
    # cosine, and check every row is its own text's vector, not a neighbour's.
    assert ((docs * reference_docs).sum(axis=1)).min() > 0.98
    assert (np.argmax(docs @ reference_docs.T, axis=1) == np.arange(len(VARIED))).all()
    assert float(results[len(VARIED)][0] @ reference_query) > 0.98
    assert ((results[-1] * reference_docs[:4]).sum(axis=1)).min() > 0.98
    assert on_loop.shape == (2, 384) and float(on_loop[0] @ reference_query) > 0.98
    assert empty.shape == (0, 384)
    assert embedder.metrics.items == len(VARIED) + 1 + 4 + 2
    assert embedder.metrics.batches < len(VARIED) + 3  # fewer batches than calls: coalesced
    # ... and Prometheus sees the same batches (the retrieval service's /metrics)
    delta = {n: exported(n) - v for n, v in before.items()}
    assert delta["search_retrieval_embed_batch_texts_sum"] == embedder.metrics.items
    assert delta["search_retrieval_embed_batch_texts_count"] == embedder.metrics.batches
    assert delta["search_retrieval_embed_inference_seconds_count"] == embedder.metrics.batches
    assert exported("search_retrieval_embed_queue_texts") == 0
