"""The gateway's Search result cache never serves an answer a write could have changed.

Two gateways share one retrieval and one reranker: the stack's own (result cache on, the
default) and a second one with GATEWAY_RESULT_CACHE_SIZE=0. Writes (upserts of new and of
changed documents, deletes, through either gateway) interleave with reads of a fixed set of
queries; after every step every query is asked of both gateways and the answers must be the
same. The cached gateway's metrics must show hits, so the comparison did exercise the cache.
"""

from __future__ import annotations

import random
import sys
import urllib.request

import grpc

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.procs import free_port, wait_serving
from tests import processes

TOPICS = ["volcanoes and lava", "sourdough bread yeast", "ocean tides and the moon", "vaccines and antibodies",
          "graphics processors and matrices", "photosynthesis in plants"]
QUERIES = ["how does a volcano erupt", "what makes bread rise", "why are there tides", "how do vaccines work",
           "what is a GPU good for"]


def _doc(i: int, version: int) -> common_pb2.Document:
    topic = TOPICS[(i + version) % len(TOPICS)]
    return common_pb2.Document(id=f"d{i}", title=f"Note {i}", text=f"Version {version} of note {i}: about {topic}.")


def _requests(collection: str) -> list[pb.SearchRequest]:
    out = []
    for n, query in enumerate(QUERIES):
        request = pb.SearchRequest(collection=collection, query=query, top_k=3,
                                   mode=(common_pb2.RETRIEVAL_MODE_DENSE, common_pb2.RETRIEVAL_MODE_HYBRID)[n % 2])
        request.rerank.enabled = False  # the comparison is about staleness, not about the model's batch noise
        out.append(request)
    return out


def _answer(response: pb.SearchResponse) -> list[tuple[str, str, float]]:
    return [(r.id, r.text, round(r.score, 4)) for r in response.results]


def _hits(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('search_cache_lookups_total{cache="search_result",outcome="hit"}'):
            return float(line.split()[-1])
    return 0.0


def test_interleaved_writes_and_reads_never_get_a_stale_cached_answer(fresh_stack):
    stack = fresh_stack
    stack.start_all()
    port, metrics_port = free_port(), free_port()
    env = stack.env("gateway")
    env.update({"GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port), "GATEWAY_RESULT_CACHE_SIZE": "0"})
    uncached = processes.spawn("gateway-uncached", [sys.executable, "-m", "services.cli", "serve", "gateway"],
                               stack.tmp / "gateway-uncached.log", env=env)
    try:
        wait_serving(f"127.0.0.1:{port}", proc=uncached.proc)
        with grpc.insecure_channel(stack.gateway) as a, grpc.insecure_channel(f"127.0.0.1:{port}") as b:
            cached_stub, plain_stub = pb_grpc.SearchServiceStub(a), pb_grpc.SearchServiceStub(b)
            cached_stub.CreateCollection(pb.CreateCollectionRequest(name="cachecheck"), timeout=30)
            versions = {i: 0 for i in range(8)}
            cached_stub.Upsert(pb.UpsertRequest(collection="cachecheck", documents=[_doc(i, 0) for i in versions]), timeout=60)
            requests = _requests("cachecheck")
            rng = random.Random(13)
            compared = 0
            for step in range(24):
                writer = (cached_stub, plain_stub)[step % 2]  # writes through either gateway
                action = rng.choice(("change", "change", "add", "delete", "none"))
                if action == "change" and versions:
                    i = rng.choice(sorted(versions))
                    versions[i] += 1
                    writer.Upsert(pb.UpsertRequest(collection="cachecheck", documents=[_doc(i, versions[i])]), timeout=60)
                elif action == "add":
                    i = max(versions, default=-1) + 1
                    versions[i] = 0
                    writer.Upsert(pb.UpsertRequest(collection="cachecheck", documents=[_doc(i, 0)]), timeout=60)
                elif action == "delete" and len(versions) > 3:
                    i = rng.choice(sorted(versions))
                    del versions[i]
                    writer.Delete(pb.DeleteRequest(collection="cachecheck", ids=[f"d{i}"]), timeout=60)
                for request in requests:
                    for _ in range(2):  # the second read of a step is the one the cache can answer
                        got = _answer(cached_stub.Search(request, timeout=60))
                        want = _answer(plain_stub.Search(request, timeout=60))
                        assert got == want, (step, action, request.query)
                        assert {doc_id for doc_id, _, _ in got} <= {f"d{i}" for i in versions}
                        compared += 1
        assert compared == 24 * len(QUERIES) * 2
        assert _hits(stack.metrics_ports["gateway"]) >= 24 * len(QUERIES) * 0.5  # the cache did answer
    finally:
        if uncached.proc.poll() is None:
            uncached.proc.terminate()
            uncached.proc.wait(timeout=30)
        uncached.kill_group()
