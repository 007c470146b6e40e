"""Gateway configuration (env var, flag, default)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import setting


@dataclass(frozen=True)
class GatewayConfig:
    host: str = setting("0.0.0.0", "GATEWAY_HOST", "address to listen on")
    port: int = setting(50051, "GATEWAY_PORT", "gRPC port")
    metrics_port: int = setting(9101, "GATEWAY_METRICS_PORT", "Prometheus /metrics port (0 disables)")
    grace_seconds: float = setting(10.0, "GATEWAY_GRACE_SECONDS", "time in-flight calls get to finish on SIGTERM")
    log_level: str = setting("INFO", "LOG_LEVEL", "log level")
    retrieval_addr: str = setting("localhost:50052", "RETRIEVAL_ADDR", "retrieval service address (dns:/// for per-request balancing)")
    reranker_addr: str = setting("localhost:50053", "RERANKER_ADDR", "reranker service address")
    default_candidates: int = setting(50, "GATEWAY_DEFAULT_CANDIDATES", "first-stage candidates reranked when a request does not say")
    default_deadline_seconds: float = setting(10.0, "GATEWAY_DEFAULT_DEADLINE_SECONDS", "deadline of a Search whose caller set none")
    retrieval_timeout_seconds: float = setting(3.0, "GATEWAY_RETRIEVAL_TIMEOUT_SECONDS", "longest wait for one Retrieve call")
    rerank_timeout_seconds: float = setting(5.0, "GATEWAY_RERANK_TIMEOUT_SECONDS", "longest wait for one Rerank call (then degrade)")
    write_timeout_seconds: float = setting(60.0, "GATEWAY_WRITE_TIMEOUT_SECONDS", "longest wait for one forwarded Upsert/Delete batch")
    upsert_batch_size: int = setting(64, "GATEWAY_UPSERT_BATCH_SIZE", "documents per batch forwarded to retrieval")
