"""`searchctl collections`, `searchctl alias`, `searchctl reindex`: operating collections
through the gateway (every command takes --target; SEARCHCTL_API_KEY as for search)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from google.protobuf import json_format
from tqdm import tqdm

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import DEFAULT_TARGET, connection_help, open_channel, rpc_failure
from services.common import api_names


def call(command: str, target: str, fn) -> int:
    """Run ``fn(stub)`` (a coroutine function) against the gateway at ``target``; an RPC error is one line."""

    async def go():
        async with open_channel(target) as channel:
            return await fn(pb_grpc.SearchServiceStub(channel))

    try:
        return asyncio.run(go()) or 0
    except grpc.aio.AioRpcError as exc:
        print(rpc_failure(command, exc, target), file=sys.stderr)
        return 1


def _collections(args: argparse.Namespace) -> int:
    async def list_(stub):
        reply = await stub.ListCollections(pb.ListCollectionsRequest(), timeout=args.timeout)
        aliases: dict[str, list[str]] = {}
        for a in reply.aliases:
            aliases.setdefault(a.collection, []).append(a.alias)
        print(f"{'collection':<32} {'documents':>10} {'points':>10}  model            fusion  aliases")
        for c in reply.collections:
            # The dense weight of hybrid fusion; * = measured on the collection (calibrated).
            fusion = f"{c.fusion_dense_weight:.2f}{'*' if c.HasField('fusion_calibration') else ' '}"
            print(f"{c.name:<32} {c.document_count:>10} {c.point_count:>10}  {c.dense_model:<16} {fusion:<6}  "
                  f"{', '.join(aliases.get(c.name, []))}")

    async def delete(stub):
        await stub.DeleteCollection(pb.DeleteCollectionRequest(name=args.name), timeout=args.timeout)
        print(f"deleted collection {args.name!r}")

    async def create(stub):
        request = pb.CreateCollectionRequest(name=args.name, filter_fields=args.filter_field, sparse=not args.no_sparse)
        if args.late_interaction != "default":
            request.late_interaction = args.late_interaction == "on"
        info = (await stub.CreateCollection(request, timeout=args.timeout)).collection
        print(created_line(info))

    async def describe(stub):
        info = (await stub.DescribeCollection(pb.DescribeCollectionRequest(name=args.name), timeout=args.timeout)).collection
        print(json_format.MessageToJson(info, preserving_proto_field_name=True))

    actions = {"list": list_, "delete": delete, "create": create, "describe": describe}
    return call("collections", args.target, actions[args.action])


def created_line(info: common_pb2.CollectionInfo) -> str:
    """What `collections create` made: the name, its filter fields and its vectors."""
    fields = ", ".join(f"{f.key} {api_names.FIELD_TYPES[f.type]}" for f in info.filter_fields) or "none"
    vectors = ["dense " + info.dense_model, *(["sparse (BM25)"] if info.sparse_enabled else []),
               *([f"late interaction {info.late_interaction_model}"] if info.late_interaction_model else [])]
    return f"created collection {info.name!r}: vectors {', '.join(vectors)}; filter fields: {fields}"


def filter_field(text: str) -> common_pb2.FilterField:
    """``KEY:TYPE`` (``year:integer``) as a FilterField; argparse prints the error and exits 2."""
    key, sep, kind = text.rpartition(":")
    kind = kind.strip().lower()
    if not sep or not key or kind not in api_names.FIELD_TYPE_ENUM:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY:TYPE, TYPE one of {', '.join(api_names.FIELD_TYPE_ENUM)} (e.g. year:integer)")
    return common_pb2.FilterField(key=key, type=api_names.FIELD_TYPE_ENUM[kind])


def _alias(args: argparse.Namespace) -> int:
    async def go(stub):
        if args.action == "list":
            for a in (await stub.ListAliases(pb.ListAliasesRequest(), timeout=args.timeout)).aliases:
                print(f"{a.alias} -> {a.collection}")
        elif args.action == "create":
            await stub.CreateAlias(pb.CreateAliasRequest(alias=args.alias, collection=args.collection), timeout=args.timeout)
            print(f"{args.alias} -> {args.collection}")
        elif args.action == "switch":
            reply = await stub.SwitchAlias(pb.SwitchAliasRequest(alias=args.alias, collection=args.collection,
                                                                 expected_collection=args.expected or ""), timeout=args.timeout)
            print(f"{args.alias} -> {args.collection} (was {reply.previous_collection})")
        else:
            await stub.DeleteAlias(pb.DeleteAliasRequest(alias=args.alias), timeout=args.timeout)
            print(f"deleted alias {args.alias!r}")

    return call("alias", args.target, go)


def done_line(done: pb.ReindexResponse) -> str:
    """What a finished reindex did to the old collection: kept (the source was an alias), or
    replaced by an alias of its own name (the source was a collection no alias named)."""
    names = done.alias.split(",")  # every alias that named the source collection was switched
    switched = f"alias {names[0]!r}" if len(names) == 1 else "aliases " + ", ".join(map(repr, names))
    head = f"done: {done.copied} points in {done.target_collection!r}; {switched} -> {done.target_collection!r}"
    if done.alias == done.source_collection:
        return (f"{head} (the collection {done.source_collection!r} was replaced by this alias of its name: "
                f"its documents are in {done.target_collection!r})")
    return (f"{head} (the old collection {done.source_collection!r} is kept: delete it with "
            f"`searchctl collections delete {done.source_collection}` once you are satisfied)")


def _reindex(args: argparse.Namespace) -> int:
    async def go(stub):
        bar = None
        last = None
        try:
            request = pb.ReindexRequest(source=args.source, target=args.to or "", reembed=args.reembed,
                                        add_filter_fields=args.filter_field)
            async for p in stub.Reindex(request):
                if bar is None:
                    how = "re-embedding the stored text" if p.reembedded else "copying the vectors"
                    if args.filter_field:
                        how += "; adding filter fields " + ", ".join(
                            f"{f.key} {api_names.FIELD_TYPES[f.type]}" for f in args.filter_field)
                    print(f"reindexing {p.source_collection!r} into {p.target_collection!r} ({how})", flush=True)
                    bar = tqdm(total=p.total, unit="point", desc="reindex", disable=not sys.stderr.isatty())
                bar.update(p.copied - bar.n)
                last = p
        finally:
            if bar is not None:
                bar.close()
        if last is None or last.phase != common_pb2.REINDEX_PHASE_DONE:
            print("searchctl reindex: the stream ended before the reindex was done", file=sys.stderr)
            return 1
        print(done_line(last))
        return 0

    return call("reindex", args.target, go)


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of the call in seconds (default %(default)s)")
    connection_help(p)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("collections", help="list, describe, create or delete collections",
                       description="List collections (documents, points, model, aliases), describe one, create one (with "
                                   "the payload fields to filter on) or delete one.")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(csub.add_parser("list", help="collections and their aliases"))
    _common(csub.add_parser("describe", help="everything the service knows of one collection (JSON): counts, "
                                             "models, filter fields, fusion calibration")).add_argument("name")
    _common(csub.add_parser("delete", help="delete a collection and everything in it")).add_argument("name")
    create = _common(csub.add_parser(
        "create", help="create a collection, with the payload fields to filter on",
        description="Create an empty collection (`searchctl ingest` creates one without filter fields when it is "
                    "missing). A declared field gets a payload index of its type; a document whose payload holds "
                    "another type there is refused, as is a filter condition that cannot match it."))
    create.add_argument("name")
    create.add_argument("--filter-field", type=filter_field, action="append", default=[], metavar="KEY:TYPE",
                        help="a payload field to filter on: KEY (dotted for nesting) and TYPE, one of keyword, "
                             "integer, float, bool (e.g. year:integer); repeat for several")
    create.add_argument("--no-sparse", action="store_true", help="dense vectors only (no BM25 sparse vectors)")
    create.add_argument("--late-interaction", choices=["default", "on", "off"], default="default",
                        help="the ColBERT late-interaction stage (default: the server's "
                             "RETRIEVAL_LATE_INTERACTION_DEFAULT)")
    c.set_defaults(func=_collections)

    a = sub.add_parser("alias", help="create, switch, delete or list aliases",
                       description="Aliases are second names of collections; Search, Upsert, Delete and GetDocuments "
                       "accept them. A switch is atomic: every request sees the old or the new collection.")
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(asub.add_parser("list", help="every alias and its collection"))
    for action, text in (("create", "create ALIAS -> COLLECTION"), ("switch", "point ALIAS at COLLECTION")):
        p = _common(asub.add_parser(action, help=text))
        p.add_argument("alias")
        p.add_argument("collection")
        if action == "switch":
            p.add_argument("--expected", help="switch only if the alias points to this collection now")
    _common(asub.add_parser("delete", help="delete an alias (the collection stays)")).add_argument("alias")
    a.set_defaults(func=_alias)

    r = sub.add_parser("reindex", help="rebuild a collection and switch its alias, without downtime",
                       description="Build a new collection from SOURCE (an alias, or a collection) in the retrieval "
                       "service: the vectors are copied when the collection's recorded models are the loaded ones, "
                       "else the stored text is re-embedded with the loaded models. Writes go on meanwhile (documents "
                       "written during the copy are copied again, the last of them while writes pause briefly); then the "
                       "alias switches atomically. A collection no alias names is replaced by an alias of its name. "
                       "Searches never fail and never mix the two collections. --filter-field declares payload "
                       "fields to filter on that the collection was created without.")
    r.add_argument("source", help="an alias (switched when done) or a collection")
    r.add_argument("--to", help="name of the new collection (default: <name>-<UTC timestamp>)")
    r.add_argument("--reembed", action="store_true", help="re-embed even when the models are unchanged")
    r.add_argument("--filter-field", type=filter_field, action="append", default=[], metavar="KEY:TYPE",
                   help="a payload field to filter on, added to the source's (as in `collections create`); every "
                        "document must hold TYPE at KEY, or the reindex stops and names the first that does not")
    r.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    connection_help(r)
    r.set_defaults(func=_reindex)
