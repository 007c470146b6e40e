"""Gateway configuration (env var, flag, default)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import api_names, validation
from services.common.config import server_settings, setting
from services.gateway.cascade import POLICIES


@dataclass(frozen=True)
class GatewayConfig(server_settings("GATEWAY", 50051, 9101)):
    retrieval_addr: str = setting("localhost:50052", "RETRIEVAL_ADDR", "retrieval service address (dns:/// for per-request balancing)")
    reranker_addr: str = setting("localhost:50053", "RERANKER_ADDR", "reranker service address")
    rerank_policy: str = setting(
        "auto", "GATEWAY_RERANK_POLICY",
        "when a Search is reranked if the request does not say: always, auto (only queries whose first stage is "
        "uncertain, GATEWAY_AUTO_RERANK_*) or never; chosen on SciFact train for a CPU reranker (docs/QUALITY.md); "
        "always suits a GPU",
        choices=POLICIES,
    )
    auto_rerank_depth: int = setting(
        5, "GATEWAY_AUTO_RERANK_DEPTH",
        "candidates the auto policy reranks when it reranks (a request's rerank.candidates caps it)", minimum=1,
    )
    auto_rerank_max_gap: float = setting(
        0.2, "GATEWAY_AUTO_RERANK_MAX_GAP",
        "the auto policy reranks a query when its first-stage leader is at most this many standard deviations of "
        "the top GATEWAY_AUTO_RERANK_DEPTH scores ahead of the second (docs/QUALITY.md)", minimum=0,
    )
    auto_rerank_max_in_flight: int = setting(
        1, "GATEWAY_AUTO_RERANK_MAX_IN_FLIGHT",
        "near-tie reranks of the auto policy one gateway runs at once; a near-tie decided while this many are in flight is "
        "served from the first stage (reason auto_busy) instead of queueing on the cross-encoder; weak-list and always "
        "reranks are not capped; 1 suits one CPU reranker per gateway (docs/BENCHMARKS.md), raise it with reranker "
        "capacity (0 = no cap)", minimum=0,
    )
    default_candidates: int = setting(
        10, "GATEWAY_DEFAULT_CANDIDATES",
        "first-stage candidates the always policy reranks when a request does not say (chosen on SciFact train, docs/QUALITY.md)", minimum=1, maximum=validation.MAX_CANDIDATES,
    )
    score_combination: str = setting(
        "weighted_zscore", "GATEWAY_SCORE_COMBINATION",
        "default combination of rerank and first-stage scores: weighted_zscore, weighted_rrf or rerank_only",
        choices=tuple(api_names.SCORE_COMBINATIONS.values()),
    )
    rerank_weight: float = setting(0.4, "GATEWAY_RERANK_WEIGHT", "default weight of the rerank score in the combination (0..1)", minimum=0, maximum=1)
    default_deadline_seconds: float = setting(10.0, "GATEWAY_DEFAULT_DEADLINE_SECONDS", "deadline of a Search whose caller set none", above=0)
    retrieval_timeout_seconds: float = setting(3.0, "GATEWAY_RETRIEVAL_TIMEOUT_SECONDS", "longest wait for one Retrieve call", above=0)
    rerank_timeout_seconds: float = setting(5.0, "GATEWAY_RERANK_TIMEOUT_SECONDS", "longest wait for one Rerank call (then degrade)", above=0)
    write_timeout_seconds: float = setting(60.0, "GATEWAY_WRITE_TIMEOUT_SECONDS", "longest wait for one forwarded Upsert/Delete batch", above=0)
    upsert_batch_size: int = setting(64, "GATEWAY_UPSERT_BATCH_SIZE", "documents per batch forwarded to retrieval", minimum=1, maximum=validation.MAX_BATCH_DOCUMENTS)
    answer_reserve_seconds: float = setting(0.05, "GATEWAY_ANSWER_RESERVE_SECONDS", "part of every deadline kept back to build and send the answer", minimum=0)
    max_in_flight: int = setting(
        128, "GATEWAY_MAX_IN_FLIGHT",
        "unary SearchService calls served at once, shared fairly among callers: at the cap a caller under its share "
        "(the cap over the callers with calls in flight) is still served, one at or over it gets RESOURCE_EXHAUSTED "
        "at once (0 = no cap)", minimum=0,
    )
    retry_max_attempts: int = setting(3, "GATEWAY_RETRY_MAX_ATTEMPTS", "attempts of an idempotent downstream call on UNAVAILABLE/RESOURCE_EXHAUSTED (1 = no retry)", minimum=1)
    retry_initial_backoff_seconds: float = setting(0.05, "GATEWAY_RETRY_INITIAL_BACKOFF_SECONDS", "first retry backoff; doubles per attempt, plus jitter", minimum=0)
    retry_max_backoff_seconds: float = setting(1.0, "GATEWAY_RETRY_MAX_BACKOFF_SECONDS", "longest retry backoff", minimum=0)
    retry_budget_ratio: float = setting(0.1, "GATEWAY_RETRY_BUDGET_RATIO", "retries allowed per request, per downstream (token bucket: 0.1 = retries add at most a tenth to the load)", minimum=0)
    retry_budget_min_per_second: float = setting(1.0, "GATEWAY_RETRY_BUDGET_MIN_PER_SECOND", "retries per second allowed regardless of traffic, per downstream", minimum=0)
    breaker_failures: int = setting(5, "GATEWAY_BREAKER_FAILURES", "consecutive reranker failures (error, timeout) that open its circuit breaker", minimum=1)
    breaker_cooldown_seconds: float = setting(5.0, "GATEWAY_BREAKER_COOLDOWN_SECONDS", "how long an open breaker degrades without calling the reranker before one probe call", minimum=0)
    api_keys_file: str | None = setting(
        None, "GATEWAY_API_KEYS_FILE",
        "callers file: TOML [[caller]] entries (name, scopes search/write/admin, collections, keys, mTLS identities, "
        "quotas), or the old one key per line (every scope); set (or GATEWAY_API_KEYS): callers need "
        "'authorization: Bearer <key>' or a configured certificate identity; reloaded on change and on SIGHUP",
    )
    api_keys: str | None = setting(
        None, "GATEWAY_API_KEYS",
        "callers inline, added to GATEWAY_API_KEYS_FILE's: comma-separated keys (every scope), or the callers file's TOML text",
    )
    api_keys_reload_seconds: float = setting(
        5.0, "GATEWAY_API_KEYS_RELOAD_SECONDS",
        "how often GATEWAY_API_KEYS_FILE is checked for a change to reload (0: only on SIGHUP); a file that does not "
        "load keeps the rules in force and logs an error", minimum=0,
    )
    trust_forwarded_client_cert: bool = setting(
        False, "GATEWAY_TRUST_FORWARDED_CLIENT_CERT",
        "identify callers without a key by the URI SAN in the x-forwarded-client-cert header a mesh sidecar sets "
        "(Istio); only when every request reaches the gateway through that sidecar (STRICT mTLS)",
    )
    result_cache_size: int = setting(
        2000, "GATEWAY_RESULT_CACHE_SIZE",
        "Search responses kept, keyed by the whole normalised request and served only while retrieval reports the collection's write version unchanged; LRU, also bounded by GATEWAY_RESULT_CACHE_MB (0 turns the cache off)", minimum=0,
    )
    result_cache_mb: float = setting(64.0, "GATEWAY_RESULT_CACHE_MB", "bound on the serialized size of the Search responses the result cache keeps, MiB", minimum=0)
    ingest_window: int = setting(2, "GATEWAY_INGEST_WINDOW", "batches of one Ingest stream written at once; the next batch is read only when one is acknowledged (flow control)", minimum=1)
