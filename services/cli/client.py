"""searchctl's client side of the gateway: channels, the one retry policy, unary ingest
(``--unary``, `searchctl up`'s demo, benchmarks) and `searchctl search`."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from google.protobuf import json_format
from tqdm import tqdm

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.ingest_input import Batch
from services.common import api_names
from services.common.security import BearerToken, bearer_interceptors

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


def _channel_settings(api_key: str | None, ca_file: str | None) -> tuple[str | None, bytes | None, list]:
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    ca_file = ca_file if ca_file is not None else os.environ.get(CA_FILE_ENV) or None
    options = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
    return api_key, Path(ca_file).read_bytes() if ca_file else None, options


def open_channel(target: str, api_key: str | None = None, ca_file: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway; ``api_key`` (default $SEARCHCTL_API_KEY) is sent as a bearer
    token, ``ca_file`` (default $SEARCHCTL_CA_FILE) turns TLS on and verifies the gateway."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    interceptors = bearer_interceptors(api_key) if api_key else None  # unary and streaming calls
    if ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def open_blocking_channel(target: str, api_key: str | None = None,
                          ca_file: str | None = None) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """The same channel on grpc's blocking API, and the metadata its calls carry (the bearer
    token). The streamed ingest uses it (services/cli/ingest_stream.py says why)."""
    api_key, ca, options = _channel_settings(api_key, ca_file)
    metadata = (BearerToken(api_key).entry,) if api_key else ()
    if ca:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=options), metadata
    return grpc.insecure_channel(target, options=options), metadata


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


async def upsert_with_retry(stub, collection: str, documents: Sequence[common_pb2.Document], attempts: int = 5,
                            timeout: float = 120.0) -> int:
    """Upserts are idempotent on id, so a batch is safe to retry after a transient failure."""
    request = pb.UpsertRequest(collection=collection, documents=documents)
    async for attempt in AsyncRetrying(**retry_policy(attempts)):
        with attempt:
            return (await stub.Upsert(request, timeout=timeout)).upserted
    raise AssertionError("unreachable")


class BatchFailed(Exception):
    """A batch of a unary ingest failed (after retries): the error, and the batch."""

    def __init__(self, error: BaseException, batch: Batch) -> None:
        super().__init__(str(error))
        self.error = error
        self.batch = batch
        self.written = 0  # documents written by the ingest before it stopped


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
    """Upsert ``documents`` (dicts: id, title, text, payload) into ``collection``: batched,
    bounded concurrency, idempotent. Raises the first failure (a grpc.aio.AioRpcError).

    Re-running after an interruption ends with exactly the documents given: a document
    written twice replaces itself (its point id derives from its id).
    """
    batches = (Batch.of(chunk, 1 + n * batch_size) for n, chunk in enumerate(batched(documents, batch_size)))
    try:
        return await ingest_batches(batches, collection, target, concurrency, total, progress, api_key)
    except BatchFailed as exc:
        raise exc.error from None


async def ingest_batches(
    batches: Iterable[Batch],
    collection: str,
    target: str = DEFAULT_TARGET,
    concurrency: int = 2,
    total: int | None = None,
    progress: bool = True,
    api_key: str | None = None,
) -> int:
    """Upsert ``batches`` with at most ``concurrency`` in flight; raises :class:`BatchFailed`
    (the first failure, and its batch) once the batches in flight have ended."""
    async with open_channel(target, api_key) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        await ensure_collection(stub, collection)
        bar = tqdm(total=total, unit="doc", desc=f"ingest {collection}", disable=not progress, smoothing=0.1)
        slots = asyncio.Semaphore(concurrency)
        written = 0
        pending: set[asyncio.Task] = set()
        errors: list[BatchFailed] = []  # a failed batch must fail the ingest, never vanish

        async def send(batch: Batch) -> None:
            nonlocal written
            try:
                count = await upsert_with_retry(stub, collection, batch.documents)
                written += count  # after the await: `written += await ...` would lose concurrent updates
                bar.update(len(batch.lines))
            except Exception as exc:  # noqa: BLE001 - re-raised by the loop below
                errors.append(BatchFailed(exc, batch))
            finally:
                slots.release()

        try:
            for batch in batches:
                await slots.acquire()
                if errors:
                    break
                task = asyncio.ensure_future(send(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            if errors:
                errors[0].written = written
                raise errors[0]
        finally:
            for task in pending:
                task.cancel()
            bar.close()
        return written


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
