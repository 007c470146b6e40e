"""`searchctl search`: one Search through the gateway, printed as a ranking or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from google.protobuf import json_format

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import DEFAULT_TARGET, MODES, connection_help, open_channel, rpc_failure
from services.common import api_names


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
    if args.filter:
        try:
            json_format.Parse(args.filter, request.filter)
        except json_format.ParseError as exc:
            print(f"searchctl search: --filter is not a Filter in JSON: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
    try:
        response = asyncio.run(search(args.target, request, args.timeout))
    except grpc.aio.AioRpcError as exc:
        print(rpc_failure("search", exc, args.target), file=sys.stderr)
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
    s.add_argument("--filter", metavar="JSON",
                   help="a payload filter: the API's Filter message in JSON, as grpcurl takes it, e.g. "
                        "'{\"must\": [{\"field\": {\"key\": \"year\", \"range\": {\"gte\": 2020}}}]}' "
                        "(conditions: keyword, integer, boolean, any_keyword, any_integer, range; must, should, must_not)")
    s.add_argument("--json", action="store_true", help="print the response as JSON")
    s.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default %(default)s)")
    s.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    connection_help(s)
    s.set_defaults(func=_search_cmd)
