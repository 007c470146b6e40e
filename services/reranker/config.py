"""Reranker service configuration (env var, flag, default)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import server_settings, setting
from services.common.hardware import GRAPH_OPTIMIZATIONS, PROVIDER_CHOICES

#: RERANKER_BATCHING's values.
BATCHING_MODES = ("dynamic", "none")


@dataclass(frozen=True)
class RerankerConfig(server_settings("RERANKER", 50053, 9103)):
    model_dir: str | None = setting(
        None,
        "RERANKER_MODEL_DIR",
        "cross-encoder directory (model.onnx + tokenizer.json); unset: $SEARCH_MODELS_DIR/ms-marco-MiniLM-L-12-v2",
    )
    max_length: int = setting(256, "RERANKER_MAX_LENGTH", "tokens per (query, passage) pair; longer passages are truncated", minimum=8)
    max_batch_pairs: int = setting(32, "RERANKER_MAX_BATCH_PAIRS", "pairs per inference batch", minimum=1)
    max_batch_tokens: int = setting(0, "RERANKER_MAX_BATCH_TOKENS", "padded tokens per inference batch (0 = 256 on CPU, 16384 on GPU)", minimum=0)
    max_wait_ms: float = setting(2.0, "RERANKER_MAX_WAIT_MS", "while a batch runs, how long a partial batch waits for concurrent requests to join before it takes a free worker; an idle reranker starts a lone request at once", minimum=0)
    max_queue_pairs: int = setting(2048, "RERANKER_MAX_QUEUE_PAIRS", "pairs queued before requests are shed (RESOURCE_EXHAUSTED)", minimum=1)
    batching: str = setting(
        "dynamic",
        "RERANKER_BATCHING",
        "dynamic: coalesce pairs across concurrent requests; none: score each request on its own (the naive baseline of `searchctl bench rerank`)",
        choices=BATCHING_MODES,
    )
    graph_optimization: str = setting("all", "RERANKER_GRAPH_OPTIMIZATION", "ONNX Runtime graph optimisation level: disable, basic, extended or all", choices=GRAPH_OPTIMIZATIONS)
    provider: str = setting("auto", "ORT_PROVIDER", "ONNX Runtime execution provider: auto, cpu, cuda or tensorrt", choices=PROVIDER_CHOICES)
    inference_workers: int = setting(
        0, "RERANKER_INFERENCE_WORKERS", "inference batches run at once (0 = one per available CPU on CPU, 1 on GPU)", minimum=0
    )
    intra_op_threads: int = setting(0, "ORT_INTRA_OP_THREADS", "ONNX Runtime threads per inference batch (0 = the available CPUs divided among the inference workers)", minimum=0)
    allow_spinning: bool = setting(True, "ORT_ALLOW_SPINNING", "let ONNX Runtime's intra-op threads spin-wait between operators (false yields the cores)")
    score_cache_size: int = setting(
        50000, "RERANKER_SCORE_CACHE_SIZE",
        "rerank scores kept, keyed by (model identity, query, document id, content hash); LRU, about 0.3 KiB each (0 turns the cache off)", minimum=0,
    )
