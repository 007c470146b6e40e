"""Client commands: `searchctl ingest` and `searchctl search`, through the gateway over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from google.protobuf import json_format
from tqdm import tqdm

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.common import api_names
from services.common.security import bearer_interceptors

DEFAULT_TARGET = "localhost:50051"
MODES = api_names.CLI_RETRIEVAL_MODES
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def transient(exc: BaseException) -> bool:
    """A failure worth retrying: the service was unreachable, overloaded or too slow."""
    return isinstance(exc, grpc.RpcError) and exc.code() in RETRYABLE


def retry_policy(attempts: int = 5, before_sleep=None) -> dict:
    """searchctl's one retry policy (tenacity keyword arguments): transient failures only,
    ``attempts`` tries, waits doubling from 0.5 s to at most 8 s, the last error re-raised."""
    return {
        "stop": stop_after_attempt(attempts),
        "wait": wait_exponential(multiplier=0.5, max=8.0),
        "retry": retry_if_exception(transient),
        "reraise": True,
        "before_sleep": before_sleep,
    }


API_KEY_ENV = "SEARCHCTL_API_KEY"
CA_FILE_ENV = "SEARCHCTL_CA_FILE"


def open_channel(target: str, api_key: str | None = None, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway; ``api_key`` (default $SEARCHCTL_API_KEY) is sent as a bearer
    token, ``ca_file`` (default $SEARCHCTL_CA_FILE) turns TLS on and verifies the gateway."""
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    ca_file = ca_file if ca_file is not None else os.environ.get(CA_FILE_ENV) or None
    options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    interceptors = bearer_interceptors(api_key) if api_key else None  # unary and streaming calls
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def to_document(doc: dict) -> common_pb2.Document:
    message = common_pb2.Document(id=str(doc["id"]), title=doc.get("title") or "", text=doc.get("text") or "")
    if doc.get("payload"):
        json_format.ParseDict(doc["payload"], message.payload)
    return message


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


async def ensure_collection(stub: pb_grpc.SearchServiceStub, name: str, create: bool = True) -> pb.DescribeCollectionResponse:
    try:
        return await stub.DescribeCollection(pb.DescribeCollectionRequest(name=name), timeout=30)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND or not create:
            raise
    try:
        await stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # created concurrently: fine
            raise
    return await stub.DescribeCollection(pb.DescribeCollectionRequest(name=name), timeout=30)


async def upsert_with_retry(stub, collection: str, batch: list[dict], attempts: int = 5, timeout: float = 120.0) -> int:
    """Upserts are idempotent on id, so a batch is safe to retry after a transient failure."""
    request = pb.UpsertRequest(collection=collection, documents=[to_document(d) for d in batch])
    async for attempt in AsyncRetrying(**retry_policy(attempts)):
        with attempt:
            return (await stub.Upsert(request, timeout=timeout)).upserted
    raise AssertionError("unreachable")


async def ingest(
    documents: Iterable[dict],
    collection: str,
    target: str = DEFAULT_TARGET,
    batch_size: int = 64,
    concurrency: int = 2,
    total: int | None = None,
    progress: bool = True,
    api_key: str | None = None,
) -> int:
    """Stream ``documents`` into ``collection``: batched, bounded concurrency, idempotent.

    Re-running after an interruption ends with exactly the documents given: a document
    written twice replaces itself (its point id derives from its id).
    """
    async with open_channel(target, api_key) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await ensure_collection(stub, collection)
        bar = tqdm(total=total, unit="doc", desc=f"ingest {collection}", disable=not progress, smoothing=0.1)
        slots = asyncio.Semaphore(concurrency)
        written = 0
        pending: set[asyncio.Task] = set()
        errors: list[BaseException] = []  # a failed batch must fail the ingest, never vanish

        async def send(batch: list[dict]) -> None:
            nonlocal written
            try:
                count = await upsert_with_retry(stub, collection, batch)
                written += count  # after the await: `written += await ...` would lose concurrent updates
                bar.update(len(batch))
            except Exception as exc:  # noqa: BLE001 - re-raised by the loop below
                errors.append(exc)
            finally:
                slots.release()

        try:
            for batch in batched(documents, batch_size):
                await slots.acquire()
                if errors:
                    break
                task = asyncio.ensure_future(send(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            if errors:
                raise errors[0]
        finally:
            for task in pending:
                task.cancel()
            bar.close()
        return written


def _ingest_cmd(args: argparse.Namespace) -> int:
    from services.cli import beir

    path = Path(args.path)
    if not path.exists():
        print(f"searchctl ingest: {path} does not exist", file=sys.stderr)
        return 2
    corpus = path / "corpus.jsonl" if path.is_dir() else path
    if not corpus.exists():
        print(f"searchctl ingest: {path} is a folder without corpus.jsonl (BEIR layout expected)", file=sys.stderr)
        return 2
    total = beir.count_corpus(corpus)
    start = time.perf_counter()
    resumed = 0
    try:
        if args.unary:
            written = asyncio.run(
                ingest(beir.iter_corpus(corpus), args.collection, args.target, args.batch_size, args.concurrency, total)
            )
        else:
            from services.cli import ingest_stream

            written, resumed, _ = ingest_stream.run(
                corpus, lambda: beir.iter_corpus(corpus), args.collection, args.target, args.batch_size, total,
                Path(args.checkpoint) if args.checkpoint else None, args.restart)
    except grpc.aio.AioRpcError as exc:
        print(f"searchctl ingest: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if not args.unary:
            print("searchctl ingest: what was acknowledged is durable; run the same command again to resume", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not fit: one line
        if type(exc).__name__ != "CheckpointMismatch":
            raise
        print(f"searchctl ingest: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    how = "unary Upserts" if args.unary else "one stream"
    since = f"; resumed after {resumed} already acknowledged" if resumed else ""
    print(f"ingested {written} documents into {args.collection!r} in {elapsed:.1f} s "
          f"({written / max(elapsed, 1e-9):.1f} docs/s, {how}{since})")
    return 0


async def search(target: str, request: pb.SearchRequest, timeout: float, api_key: str | None = None) -> pb.SearchResponse:
    async with open_channel(target, api_key) as channel:
        return await pb_grpc.SearchServiceStub(channel).Search(request, timeout=timeout)


def _search_cmd(args: argparse.Namespace) -> int:
    request = pb.SearchRequest(collection=args.collection, query=args.query, top_k=args.top_k, mode=MODES[args.mode])
    if args.no_rerank:
        request.rerank.policy = pb.RERANK_POLICY_NEVER
    elif args.rerank != "default":
        request.rerank.policy = api_names.RERANK_POLICY_ENUM[args.rerank]
    if args.candidates:
        request.rerank.candidates = args.candidates
    try:
        response = asyncio.run(search(args.target, request, args.timeout))
    except grpc.aio.AioRpcError as exc:
        print(f"searchctl search: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return 0
    decision = response.rerank_decision
    how = f"reranked {decision.depth}" if response.reranked else "first stage"
    print(f"({how}: policy {pb.RerankPolicy.Name(decision.policy).removeprefix('RERANK_POLICY_').lower()}, "
          f"{pb.RerankReason.Name(decision.reason).removeprefix('RERANK_REASON_').lower()})")
    if response.degraded:
        print(f"(degraded: {pb.DegradedReason.Name(response.degraded_reason)})")
    for rank, r in enumerate(response.results, 1):
        title = r.title or r.text[:60].replace("\n", " ")
        rerank = f" rerank={r.rerank_score:.3f}" if r.HasField("rerank_score") else ""
        print(f"{rank:>2}. {r.score:8.4f}  {r.id}  {title}  (retrieval={r.retrieval_score:.4f}{rerank})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="load a JSONL file or BEIR folder into a collection (streamed, resumable)",
                       description="Stream documents ({id|_id, title, text, payload}) through the gateway in batches on one "
                       "Ingest stream; each batch is acknowledged once durable, and a checkpoint file beside the input "
                       "(<input>.<collection>.ingest-checkpoint) records what was acknowledged: after an interruption the "
                       "same command resumes there. Prints the rate. Idempotent: re-running ends with exactly the file's documents.")
    p.add_argument("path", help="a JSONL file or a BEIR folder holding corpus.jsonl")
    p.add_argument("--collection", required=True)
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="documents per Upsert (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=2, help="Upserts in flight with --unary (default %(default)s)")
    p.add_argument("--unary", action="store_true", help="unary Upsert batches instead of the stream (no checkpoint)")
    p.add_argument("--checkpoint", help="checkpoint file (default: beside the input, or under .data/ingest-checkpoints/)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and ingest from the beginning")
    _connection_help(p)
    p.set_defaults(func=_ingest_cmd)

    s = sub.add_parser("search", help="search a collection", description="Search through the gateway.")
    s.add_argument("query")
    s.add_argument("--collection", required=True)
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--mode", choices=sorted(MODES), default="default")
    s.add_argument("--candidates", type=int, default=0,
                   help="candidates to rerank; with --rerank auto the deepest it may go (default: server's)")
    s.add_argument("--rerank", choices=["default", *api_names.RERANK_POLICY_ENUM], default="default",
                   help="when to rerank: always, auto (only an uncertain first stage) or never "
                        "(default: the server's GATEWAY_RERANK_POLICY)")
    s.add_argument("--no-rerank", action="store_true", help="skip the cross-encoder (as --rerank never)")
    s.add_argument("--json", action="store_true", help="print the response as JSON")
    s.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default %(default)s)")
    s.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    _connection_help(s)
    s.set_defaults(func=_search_cmd)


def _connection_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        f"A gateway that requires an API key: set {API_KEY_ENV} (sent as 'authorization: Bearer <key>'; "
        f"not a flag, so the key stays out of the process list). A TLS gateway: set {CA_FILE_ENV} to its CA bundle."
    )
