"""Retrieval service configuration (env var, flag, default)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import validation
from services.common.config import server_settings, setting
from services.common.hardware import GRAPH_OPTIMIZATIONS, PROVIDER_CHOICES
from services.retrieval.backends.edge_tuning import DENSE_STORAGE, ShardTuning

#: RETRIEVAL_LONG_DOCUMENTS, RETRIEVAL_LATE_INTERACTION_QUANTIZATION and _PRUNE: their values,
#: here once (late_interaction.py's encoder checks its prune mode against PRUNE_MODES too).
LONG_DOCUMENT_MODES = ("truncate", "split")
LATE_QUANTIZATIONS = ("int8", "binary", "none")
PRUNE_MODES = ("none", "punctuation", "stopwords")


@dataclass(frozen=True)
class RetrievalConfig(server_settings("RETRIEVAL", 50052, 9102)):
    qdrant_path: str = setting(".data/qdrant", "QDRANT_PATH", "data directory of the embedded engine (Qdrant Edge): one shard per collection")
    qdrant_url: str | None = setting(None, "QDRANT_URL", "Qdrant server or cluster URL; overrides QDRANT_PATH")
    edge_search_threads: int = setting(0, "EDGE_SEARCH_THREADS", "search threads of each embedded collection's shard (0 = a collection not optimized yet searches in the calling thread, an optimized one with the available CPUs, fewer as collections add up: at most 2 per CPU in all; docs/BENCHMARKS.md, issue 22)", minimum=0)
    edge_optimize_after_points: int = setting(
        20000, "EDGE_OPTIMIZE_AFTER_POINTS",
        "points written to an embedded collection before it is optimized in the background (a child process "
        "optimizes a copy of the shard, then it is swapped in; HNSW past the engine's indexing threshold); 0 = never", minimum=0,
    )
    edge_optimize_quiet_seconds: float = setting(
        30.0, "EDGE_OPTIMIZE_QUIET_SECONDS",
        "how long writes must pause before a due background optimization starts (during a long ingest it starts "
        "anyway once the new points equal the old; a collection found unoptimized at start waits this long too)", minimum=0,
    )
    edge_min_free_disk_mb: int = setting(
        256, "EDGE_MIN_FREE_DISK_MB",
        "writes to the embedded engine are refused (RESOURCE_EXHAUSTED, naming the path and the free space) while "
        "less than this is free, and a background optimization starts only when its copy leaves this much free "
        "(the engine writes through memory maps: a full disk would kill the process); 0 disables the check", minimum=0,
    )
    edge_dense_storage: str = setting(
        "memory", "EDGE_DENSE_STORAGE",
        "where embedded collections keep dense vectors: memory (originals in RAM), int8 (originals in RAM plus int8 "
        "copies, which the HNSW build and searches use first, the best candidates rescored with the originals) or "
        "disk-int8 (the same, originals on disk, read to rescore: less RAM, slower on a slow disk; docs/BENCHMARKS.md "
        "compares them at 100k and 1M points); applied at the next optimization",
        choices=DENSE_STORAGE,
    )
    edge_int8_oversampling: float = setting(
        2.0, "EDGE_INT8_OVERSAMPLING",
        "with int8 copies (EDGE_DENSE_STORAGE int8 or disk-int8): candidates found by them per result wanted, "
        "rescored with the original vectors (1 loses dense recall@100: 0.95 at most at 100k points; 2: 0.98 at hnsw_ef 256)", minimum=1,
    )
    edge_segments: int = setting(0, "EDGE_SEGMENTS", "segments the optimizer aims for in an embedded collection (0 = the engine's choice)", minimum=0)
    edge_max_indexing_threads: int = setting(0, "EDGE_MAX_INDEXING_THREADS", "threads one HNSW build uses (0 = the engine's choice: the CPUs)", minimum=0)
    edge_indexing_threshold_kb: int = setting(0, "EDGE_INDEXING_THRESHOLD_KB", "segments with more KB of dense vectors than this get an HNSW graph, smaller ones are searched exactly (0 = the engine's default)", minimum=0)
    edge_hnsw_m: int = setting(16, "EDGE_HNSW_M", "HNSW links per point of embedded collections", minimum=0)
    edge_hnsw_ef_construct: int = setting(100, "EDGE_HNSW_EF_CONSTRUCT", "HNSW build breadth of embedded collections", minimum=4)
    edge_query_batching: bool = setting(
        False, "EDGE_QUERY_BATCHING",
        "run the queries that arrive at an embedded collection while its previous engine call runs as one engine "
        "call (Qdrant Edge holds Python's GIL per call; docs/BENCHMARKS.md, 'The engine and the GIL')",
    )
    edge_optimize_on_start: bool = setting(
        False, "EDGE_OPTIMIZE_ON_START",
        "optimize the embedded collections at start, before reporting SERVING (each in a child process on a copy, "
        "as in the background; start-up waits for it; `searchctl store optimize` does it offline)",
    )
    store_stats_seconds: float = setting(10.0, "RETRIEVAL_STORE_STATS_SECONDS", "how often the store's own figures (points, segments, indexed vectors) are refreshed on /metrics (0 disables)", minimum=0)
    hnsw_ef: int = setting(
        256, "QDRANT_HNSW_EF",
        "HNSW search breadth on indexed segments (0 = the engine default, 100: recall@100 0.965 on SciFact; "
        "256: 0.996; 0.98 at 100k points, docs/BENCHMARKS.md); wider for large embedded collections (QDRANT_HNSW_EF_POINTS)", minimum=0,
    )
    hnsw_ef_points: int = setting(
        500_000, "QDRANT_HNSW_EF_POINTS",
        "embedded collections with more points than this search proportionally wider than QDRANT_HNSW_EF (1M points: "
        "512, which kept 0.964 of the exact dense top 100 where 256 kept 0.950; at most 4096); 0 = QDRANT_HNSW_EF always", minimum=0,
    )
    qdrant_api_key: str | None = setting(None, "QDRANT_API_KEY", "API key for QDRANT_URL")
    qdrant_timeout_seconds: float = setting(10.0, "QDRANT_TIMEOUT_SECONDS", "timeout of one Qdrant call", above=0)
    shard_number: int = setting(1, "QDRANT_SHARD_NUMBER", "shards of new collections (Qdrant cluster)", minimum=1)
    replication_factor: int = setting(1, "QDRANT_REPLICATION_FACTOR", "replicas of each shard of new collections", minimum=1)
    write_consistency_factor: int = setting(1, "QDRANT_WRITE_CONSISTENCY_FACTOR", "replicas that must confirm a write", minimum=1)
    model_dir: str | None = setting(
        None, "EMBEDDER_MODEL_DIR", "bi-encoder directory (model.onnx + tokenizer.json); unset: $SEARCH_MODELS_DIR/bge-small-en"
    )
    max_length: int = setting(256, "EMBEDDER_MAX_LENGTH", "tokens per passage the bi-encoder sees (longer text is truncated)", minimum=8)
    bm25_k1: float = setting(2.0, "RETRIEVAL_BM25_K1", "BM25 term-frequency saturation (chosen on SciFact train)", minimum=0)
    bm25_b: float = setting(0.75, "RETRIEVAL_BM25_B", "BM25 length normalisation", minimum=0, maximum=1)
    bm25_avg_doc_length: float = setting(256.0, "RETRIEVAL_BM25_AVG_DOC_LENGTH", "BM25 average document length in analyzed tokens", above=0)
    long_documents: str = setting(
        "truncate", "RETRIEVAL_LONG_DOCUMENTS",
        "documents longer than the model window: truncate (index the first window) or split (overlapping passages); "
        "recorded per collection at creation",
        choices=LONG_DOCUMENT_MODES,
    )
    passage_overlap: int = setting(32, "RETRIEVAL_PASSAGE_OVERLAP_TOKENS", "tokens neighbouring passages share when splitting", minimum=0)
    batch_size: int = setting(32, "EMBEDDER_BATCH_SIZE", "texts per bi-encoder inference batch", minimum=1)
    max_batch_tokens: int = setting(0, "EMBEDDER_MAX_BATCH_TOKENS", "padded tokens per bi-encoder inference batch (0 = 256 on CPU, 16384 on GPU)", minimum=0)
    max_wait_ms: float = setting(2.0, "EMBEDDER_MAX_WAIT_MS", "while a batch runs, how long a partial batch waits for concurrent requests (queries, upserts) to join before it takes a free worker; an idle embedder starts a lone request at once", minimum=0)
    max_queue_texts: int = setting(8192, "EMBEDDER_MAX_QUEUE_TEXTS", "texts queued for embedding before requests are shed (RESOURCE_EXHAUSTED)", minimum=1)
    graph_optimization: str = setting("all", "EMBEDDER_GRAPH_OPTIMIZATION", "ONNX Runtime graph optimisation level: disable, basic, extended or all", choices=GRAPH_OPTIMIZATIONS)
    provider: str = setting("auto", "ORT_PROVIDER", "ONNX Runtime execution provider: auto, cpu, cuda or tensorrt", choices=PROVIDER_CHOICES)
    inference_workers: int = setting(
        0, "EMBEDDER_INFERENCE_WORKERS", "bi-encoder batches run at once (0 = one per available CPU on CPU, 1 on GPU)", minimum=0
    )
    intra_op_threads: int = setting(0, "ORT_INTRA_OP_THREADS", "ONNX Runtime threads per inference batch (0 = the available CPUs divided among the inference workers)", minimum=0)
    allow_spinning: bool = setting(True, "ORT_ALLOW_SPINNING", "let ONNX Runtime's intra-op threads spin-wait between operators (false yields the cores)")
    workers: int = setting(4, "RETRIEVAL_WORKERS", "threads for writes and for engine calls that may wait (a Qdrant server, late interaction, a collection being swapped); the embedded engine's other searches run on the event loop", minimum=1)
    late_interaction_model_dir: str | None = setting(
        None, "RETRIEVAL_LATE_INTERACTION_MODEL_DIR",
        "late-interaction (ColBERT) model directory; unset: $SEARCH_MODELS_DIR/answerai-colbert-small-v1 when it is "
        "there; 'off' loads none (collections with the stage are then refused)",
    )
    late_interaction_default: bool = setting(
        False, "RETRIEVAL_LATE_INTERACTION_DEFAULT",
        "whether CreateCollection adds the late-interaction stage when the request does not say (docs/QUALITY.md)",
    )
    late_interaction_candidates: int = setting(
        100, "RETRIEVAL_LATE_INTERACTION_CANDIDATES", "candidates the dense and sparse lists each give the MaxSim stage", minimum=1, maximum=validation.MAX_PREFETCH_LIMIT,
    )
    late_interaction_weight: float = setting(
        0.4, "RETRIEVAL_LATE_INTERACTION_WEIGHT", "weight of the MaxSim list in the fusion (the first-stage lists share the rest)", minimum=0, maximum=1,
    )
    late_interaction_quantization: str = setting(
        "int8", "RETRIEVAL_LATE_INTERACTION_QUANTIZATION", "token vectors in the engine: int8, binary or none (recorded per collection)",
        choices=LATE_QUANTIZATIONS,
    )
    late_interaction_prune: str = setting(
        "none", "RETRIEVAL_LATE_INTERACTION_PRUNE", "document tokens not stored: none, punctuation or stopwords",
        choices=PRUNE_MODES,
    )
    late_interaction_max_length: int = setting(256, "RETRIEVAL_LATE_INTERACTION_MAX_LENGTH", "tokens per passage the late-interaction model reads", minimum=8)
    fusion_calibration: bool = setting(
        True, "RETRIEVAL_FUSION_CALIBRATION",
        "measure each collection's dense and sparse lists on its own documents (once it has "
        "RETRIEVAL_FUSION_CALIBRATION_SAMPLE of them and again each time it doubles, off the request path) and fuse "
        "them with the weight that gives, unless a request sets one (docs/QUALITY.md)",
    )
    fusion_calibration_sample: int = setting(
        256, "RETRIEVAL_FUSION_CALIBRATION_SAMPLE",
        "documents the fusion check samples (each one a query embedding and two engine queries), and the size from "
        "which a collection is measured", minimum=1,
    )
    query_cache_size: int = setting(
        10000, "RETRIEVAL_QUERY_CACHE_SIZE",
        "query embeddings kept, keyed by (model identity, normalised text); LRU, about 1.6 KiB each (0 turns the cache off)", minimum=0,
    )

    def shard_tuning(self) -> ShardTuning:
        """How embedded shards are stored and indexed (the EDGE_* settings)."""
        return ShardTuning(indexing_threshold_kb=self.edge_indexing_threshold_kb,
                           max_indexing_threads=self.edge_max_indexing_threads, segments=self.edge_segments,
                           dense_storage=self.edge_dense_storage, hnsw_m=self.edge_hnsw_m,
                           ef_construct=self.edge_hnsw_ef_construct, oversampling=self.edge_int8_oversampling)
