"""`searchctl eval`: retrieval quality of a running stack on a BEIR dataset.

    searchctl eval DATASET_DIR --collection C [--modes dense,sparse,hybrid,dense+rerank,hybrid+rerank]
        [--candidates N] [--top-k 100] [--json FILE] [--target localhost:50051] [--split test]
        [--max-queries N]

1. Ingest: when the collection does not exist it is created (CreateCollection); when it
   holds no documents the corpus is streamed into it on the gateway's Ingest stream, with a
   checkpoint, as `searchctl ingest --skip-bad` does (``--reingest`` forces this; documents are
   replaced by id; a load that stopped part-way is resumed by the next run).
2. Every query of the split that has judgements is sent through the gateway's Search in
   each mode, ``top_k`` results (100 by default, the API's maximum, so Recall@100 can be
   computed). The ranking is the order the gateway returned.
3. Metrics with pytrec_eval: NDCG@10 (``ndcg_cut_10``), Recall@100 (``recall_100``) and
   MRR@10 (``recip_rank`` on runs cut to 10), averaged over the judged queries (a query
   that returned nothing counts 0), plus client-side latency p50/p95 of the Search calls.

A reranking mode returns at most ``--candidates`` results (only reranked candidates are
returned), so its Recall@100 is the recall of those candidates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytrec_eval

from services.common import api_names

__all__ = ["MODES", "Mode", "compute_metrics", "parse_modes", "percentile", "register"]

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MODES = "dense,sparse,hybrid,dense+rerank,hybrid+rerank"
MAX_TOP_K = 100  # SearchRequest.top_k's upper bound

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


# --------------------------------------------------------------------------- metrics


def _cut(run: Run, depth: int) -> dict[str, dict[str, float]]:
    """Each query's best ``depth`` documents, ordered like trec_eval (score desc, doc id desc)."""
    out = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:depth]
        out[qid] = {d: float(s) for d, s in ranked}
    return out


def compute_metrics(run: Run, qrels: Qrels) -> dict[str, float]:
    """NDCG@10, Recall@100 and MRR@10 of ``run`` against ``qrels``.

    Args:
        run: ``{query id: {doc id: score}}``; higher scores rank first (ties as trec_eval:
            by doc id, descending).
        qrels: ``{query id: {doc id: relevance grade}}``. Only queries with at least one
            relevant (grade > 0) document are evaluated; one absent from ``run`` scores 0.

    Returns:
        ``{"ndcg@10", "recall@100", "mrr@10", "queries"}``: means over the evaluated queries.
    """
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        return {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "queries": 0}
    run_judged = {q: {d: float(s) for d, s in run[q].items()} for q in judged if run.get(q)}
    full = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(_cut(run_judged, 100))
    top10 = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_cut(run_judged, 10))
    n = len(judged)

    def mean(per_query: dict, measure: str) -> float:
        return math.fsum(per_query[q][measure] for q in per_query) / n

    return {
        "ndcg@10": mean(full, "ndcg_cut_10"),
        "recall@100": mean(full, "recall_100"),
        "mrr@10": mean(top10, "recip_rank"),
        "queries": n,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --------------------------------------------------------------------------- modes


@dataclass(frozen=True)
class Mode:
    name: str
    retrieval: str  # dense | sparse | hybrid
    #: The rerank policy: "never" (no suffix), "always" ("+rerank") or "auto" ("+auto": the cascade).
    rerank: str


RETRIEVALS = ("dense", "sparse", "hybrid")
POLICY_SUFFIXES = {"": "never", "rerank": "always", "auto": "auto"}
MODES = tuple(f"{r}{'+' + s if s else ''}" for s in POLICY_SUFFIXES for r in RETRIEVALS)


def parse_modes(spec: str) -> list[Mode]:
    """``"dense,hybrid+rerank"`` -> modes, in order, without duplicates."""
    out: list[Mode] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        retrieval, _, suffix = name.partition("+")
        if retrieval not in RETRIEVALS or suffix not in POLICY_SUFFIXES:
            raise ValueError(f"unknown mode {raw.strip()!r}; choose from {', '.join(MODES)}")
        if name not in [m.name for m in out]:
            out.append(Mode(name, retrieval, POLICY_SUFFIXES[suffix]))
    if not out:
        raise ValueError("no modes given")
    return out


# --------------------------------------------------------------------------- gRPC


def _grpc():
    import grpc

    from search.v1 import common_pb2, search_service_pb2, search_service_pb2_grpc

    return grpc, common_pb2, search_service_pb2, search_service_pb2_grpc


def _call(fn, request, timeout: float, attempts: int = 5):
    from tenacity import Retrying

    from services.cli.client import retry_policy

    for attempt in Retrying(**retry_policy(attempts)):
        with attempt:
            return fn(request, timeout=timeout)
    raise AssertionError("unreachable")


def ensure_ingested(stub, collection: str, corpus: Path, batch_size: int, reingest: bool, target: str,
                    out=sys.stderr) -> int:
    """Create ``collection`` if missing and ingest ``corpus`` if it is empty (or ``reingest``), on
    the Ingest stream with its checkpoint (services/cli/ingest_stream.py), leaving out documents
    the API refuses; return its document count."""
    from services.cli import beir
    from services.cli.ingest_stream import Checkpoint, run

    grpc, _, pb, _ = _grpc()
    try:
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        print(f"creating collection {collection!r}", file=out)
        try:
            stub.CreateCollection(pb.CreateCollectionRequest(name=collection), timeout=60)
        except grpc.RpcError as exc2:
            if exc2.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
    total = beir.count_corpus(corpus)
    interrupted = Checkpoint.path_for(corpus, collection).exists()  # an earlier load stopped part-way: resume it
    if info.document_count and not reingest and not interrupted:
        if info.document_count != total:
            print(
                f"warning: {collection!r} holds {info.document_count} documents but {corpus} has {total}; "
                "evaluating as is (use --reingest to upsert the corpus)",
                file=out,
            )
        return int(info.document_count)
    skipped: list[str] = []
    outcome = run(corpus, collection, target, batch_size, total, restart=reingest, progress=False, skip_bad=True,
                  on_skip=lambda line: skipped.append(line.problem))
    written = outcome.written + outcome.resumed
    print(f"ingested {written}/{total} documents on one stream ({outcome.written / max(outcome.seconds, 1e-9):.0f} docs/s)",
          file=out)
    if skipped:
        print(f"warning: skipped {len(skipped)} documents the API refuses (first: {skipped[0]})", file=out)
    return written


def wait_for_calibration(stub, collection: str, timeout_s: float = 120.0, first_s: float = 15.0, out=sys.stderr) -> None:
    """Wait until retrieval has measured the collection's fusion weight at its current size (it
    does so in the background after writes, and hybrid results depend on it). A collection that
    shows no measurement within ``first_s`` is taken as one that is not measured (too small, or
    RETRIEVAL_FUSION_CALIBRATION off)."""
    pb = _grpc()[2]
    start = time.monotonic()
    while True:
        info = stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection), timeout=30).collection
        measured = info.fusion_calibration.documents if info.HasField("fusion_calibration") else 0
        waited = time.monotonic() - start
        if 2 * measured > info.document_count or not info.sparse_enabled or (not measured and waited > first_s):
            how = (f"measured at {measured} documents: self-retrieval dense {info.fusion_calibration.dense_recall:.3f}, "
                   f"sparse {info.fusion_calibration.sparse_recall:.3f}" if measured else "not measured")
            print(f"fusion: dense weight {info.fusion_dense_weight:.3f} ({how})", file=out)
            return
        if waited > timeout_s:
            print(f"warning: {collection!r} was last measured at {measured} of {info.document_count} documents; "
                  f"evaluating with dense weight {info.fusion_dense_weight:.3f}", file=out)
            return
        time.sleep(0.5)


def search_request(mode: Mode, collection: str, query: str, top_k: int, args: argparse.Namespace):
    pb = _grpc()[2]
    request = pb.SearchRequest(collection=collection, query=query, top_k=top_k, mode=api_names.RETRIEVAL_MODE_ENUM[mode.retrieval])
    request.rerank.policy = api_names.RERANK_POLICY_ENUM[mode.rerank]
    if mode.rerank != "never":
        if getattr(args, "candidates", None):
            request.rerank.candidates = args.candidates
        if getattr(args, "combination", None):
            request.rerank.combination = api_names.SCORE_COMBINATION_ENUM[args.combination]
        if getattr(args, "rerank_weight", None) is not None:
            request.rerank.rerank_weight = args.rerank_weight
    if mode.retrieval == "hybrid":
        if getattr(args, "fusion", None):
            request.fusion.method = api_names.FUSION_METHOD_ENUM[args.fusion]
        if getattr(args, "dense_weight", None) is not None:
            request.fusion.dense_weight = args.dense_weight
        if getattr(args, "rrf_k", None):
            request.fusion.rrf_k = args.rrf_k
    return request


def run_mode(stub, mode: Mode, collection: str, queries: Mapping[str, str], top_k: int, args, timeout: float):
    """``(run, latencies in ms, degraded count)`` for one mode."""
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    degraded = 0
    for i, (qid, text) in enumerate(queries.items(), 1):
        request = search_request(mode, collection, text, top_k, args)
        start = time.perf_counter()
        response = _call(stub.Search, request, timeout=timeout)
        latencies.append((time.perf_counter() - start) * 1000.0)
        degraded += int(response.degraded)
        n = len(response.results)
        # The gateway's order is the ranking: rank-derived scores avoid ties.
        run[qid] = {r.id: float(n - rank) for rank, r in enumerate(response.results)}
        if i % 25 == 0 or i == len(queries):
            print(f"\r{mode.name}: {i}/{len(queries)} queries", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return run, latencies, degraded


# --------------------------------------------------------------------------- output


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    header = f"{'mode':<16}{'NDCG@10':>9}{'R@100':>9}{'MRR@10':>9}{'queries':>9}{'p50 ms':>9}{'p95 ms':>9}"
    lines = [header, "-" * len(header)]
    for name, m in results.items():
        lines.append(
            f"{name:<16}{m['ndcg@10']:>9.4f}{m['recall@100']:>9.4f}{m['mrr@10']:>9.4f}"
            f"{m['queries']:>9d}{m['p50_ms']:>9.1f}{m['p95_ms']:>9.1f}"
        )
    return "\n".join(lines)


def select_queries(queries: Mapping[str, str], qrels: Qrels, max_queries: int | None) -> dict[str, str]:
    """Judged queries (with a relevant document) in file order, at most ``max_queries``."""
    chosen = {q: t for q, t in queries.items() if any(g > 0 for g in qrels.get(q, {}).values())}
    if max_queries:
        chosen = dict(list(chosen.items())[:max_queries])
    return chosen


def load_judged(dataset: Path, split: str, max_queries: int | None) -> tuple[dict[str, str], Qrels, dict[str, str]]:
    """A BEIR dataset's queries, the qrels of ``split`` and the judged queries chosen from them
    (:func:`select_queries`). Raises beir.DatasetError or OSError when a file is missing or malformed."""
    from services.cli import beir

    queries = beir.load_queries(dataset)
    qrels = beir.load_qrels(dataset, split)
    return queries, qrels, select_queries(queries, qrels, max_queries)


def _eval_cmd(args: argparse.Namespace) -> int:
    from services.cli import beir

    try:
        modes = parse_modes(args.modes)
    except ValueError as exc:
        print(f"searchctl eval: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.top_k <= MAX_TOP_K:
        print(f"searchctl eval: --top-k must be 1..{MAX_TOP_K}", file=sys.stderr)
        return 2
    dataset = Path(args.dataset)
    try:
        queries, qrels, chosen = load_judged(dataset, args.split, args.max_queries)
    except (beir.DatasetError, OSError) as exc:
        print(f"searchctl eval: {exc}", file=sys.stderr)
        return 2
    missing = set(q for q, docs in qrels.items() if any(g > 0 for g in docs.values())) - set(queries)
    if missing:
        print(f"warning: {len(missing)} judged queries have no text in queries.jsonl; they are skipped", file=sys.stderr)
    if not chosen:
        print(f"searchctl eval: no judged queries in split {args.split!r}", file=sys.stderr)
        return 2
    qrels_used = {q: qrels[q] for q in chosen}

    grpc, _, _, pb_grpc = _grpc()
    from services.cli.client import open_blocking_channel, rpc_failure
    from services.cli.ingest_stream import IngestFailed

    channel = open_blocking_channel(args.target)  # $SEARCHCTL_API_KEY and $SEARCHCTL_CA_FILE, as every command
    results: dict[str, dict[str, float]] = {}
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        if not args.no_ingest:
            ensure_ingested(stub, args.collection, beir.corpus_path(dataset), args.batch_size, args.reingest, args.target)
        wait_for_calibration(stub, args.collection)
        for mode in modes:
            run, latencies, degraded = run_mode(stub, mode, args.collection, chosen, args.top_k, args, args.timeout)
            metrics = compute_metrics(run, qrels_used)
            metrics["p50_ms"] = percentile(latencies, 50)
            metrics["p95_ms"] = percentile(latencies, 95)
            if degraded:
                metrics["degraded"] = degraded
                print(f"warning: {degraded} {mode.name} responses were degraded (not reranked)", file=sys.stderr)
            results[mode.name] = metrics
    except grpc.RpcError as exc:
        print(rpc_failure("eval", exc, args.target), file=sys.stderr)
        return 1
    except IngestFailed as exc:
        print(f"searchctl eval: ingesting {dataset} failed: {exc} ({exc.acknowledged} documents acknowledged; "
              "run the same command again to resume)", file=sys.stderr)
        return 1
    finally:
        channel.close()

    print(f"{dataset.name} / {args.split}: {len(chosen)} queries, collection {args.collection!r}, top_k {args.top_k}")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure NDCG@10 / Recall@100 / MRR@10 of a running stack on a BEIR dataset",
        description="Ingest a BEIR dataset through the gateway (when the collection is empty), run the split's "
        "judged queries in each mode and print NDCG@10, Recall@100, MRR@10 and latency.",
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--collection", required=True)
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, from {', '.join(MODES)} (default %(default)s)")
    p.add_argument("--candidates", type=int, default=0, help="candidates to rerank (default: the gateway's)")
    p.add_argument("--top-k", type=int, default=MAX_TOP_K, help="results per query, 1..100 (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    p.add_argument("--split", default="test", help="qrels split (default %(default)s)")
    p.add_argument("--max-queries", type=int, default=0, help="evaluate only the first N judged queries")
    p.add_argument("--combination", choices=list(api_names.SCORE_COMBINATION_ENUM),
                   help="rerank score combination (default: the gateway's)")
    p.add_argument("--rerank-weight", type=float, help="weight of the rerank score, 0..1 (default: the gateway's)")
    p.add_argument("--fusion", choices=list(api_names.FUSION_METHOD_ENUM),
                   help="hybrid fusion method (default: the retrieval service's)")
    p.add_argument("--dense-weight", type=float, help="hybrid: weight of the dense ranking, 0..1")
    p.add_argument("--rrf-k", type=int, default=0, help="hybrid: RRF constant k")
    p.add_argument("--batch-size", type=int, default=64, help="documents per Ingest batch while ingesting (default %(default)s)")
    p.add_argument("--reingest", action="store_true", help="ingest the corpus from its start even when the collection has documents")
    p.add_argument("--no-ingest", action="store_true", help="never ingest; evaluate the collection as it is")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of each Search in seconds (default %(default)s)")
    from services.cli.client import connection_help

    connection_help(p)
    p.set_defaults(func=_eval_cmd)

