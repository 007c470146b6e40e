"""Retrieval's CPU per Retrieve, with and without the model: 16 callers straight to the retrieval
service (the gateway is not called), from a separate process, dense mode, 10 s per step.

``repeat50`` cycles over 50 queries, so after the first pass every query embedding comes from
the query cache: what a Retrieve costs outside the model (gRPC, the engine, the response).
``distinct`` numbers every query (never repeated, in this step or another): the model and the batching path added.
Each line gives the process's CPU and, of it, the main thread's (the event loop: gRPC, the
handler, the engine call, tokenizing and batching) and the inference threads'.

    PYTHONPATH=$PWD .venv/bin/python scripts/retrieve_cpu.py --data-dir /tmp/ab22/base

``--data-dir`` holds (or receives) the ingested collection, as scripts/ab_search.py keeps it;
KEY=VALUE arguments are settings for the services.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import ab_search  # noqa: E402
from services.cli.bench import peers  # noqa: E402
from services.cli.bench.harness import DEFAULT_DATASET, load_corpus  # noqa: E402

DRIVER = r'''
import json, sys, threading, time
import grpc
sys.path.insert(0, sys.argv[5])
from search.v1 import common_pb2, retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc
address, collection, seconds, distinct, salt = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1", sys.argv[6]
queries = json.loads(sys.stdin.read())
stub = pb_grpc.RetrievalServiceStub(grpc.insecure_channel(address))
lock, state, end = threading.Lock(), {"next": 0, "done": 0}, time.time() + seconds
def caller():
    while time.time() < end:
        with lock:
            i = state["next"]; state["next"] += 1
        text = queries[i % len(queries)]
        if distinct:
            text = f"{text} {salt}.{i // len(queries)}"
        stub.Retrieve(pb.RetrieveRequest(collection=collection, query=text, limit=10,
                                         mode=common_pb2.RETRIEVAL_MODE_DENSE), timeout=30)
        with lock:
            state["done"] += 1
threads = [threading.Thread(target=caller) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(state["done"])
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--docs", type=int, default=3600)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("settings", nargs="*", help="KEY=VALUE settings for the services")
    args = p.parse_args()
    corpus = load_corpus(Path(DEFAULT_DATASET), max_docs=args.docs)
    if corpus is None:
        raise SystemExit(f"no BEIR dataset at {DEFAULT_DATASET}")
    queries = list(corpus.queries)
    env = dict(s.split("=", 1) for s in args.settings)
    stack = ab_search.start_stack({"name": "x", "env": env, "tree": None}, Path(args.data_dir), args.docs, corpus)
    try:
        address = stack.procs.address("retrieval")
        for step, (label, texts) in enumerate((("repeat50", queries[:50]), ("distinct", queries)) * 2):
            with peers.StepCounters(stack.procs) as counters:
                out = subprocess.run([sys.executable, "-c", DRIVER, address, stack.collection, str(args.seconds),
                                      "1" if label == "distinct" else "0", str(REPO / "gen"), str(step)],
                                     input=json.dumps(texts), capture_output=True, text=True, check=True)
            done = int(out.stdout.strip())
            extra = counters.finish(done)
            threads = extra.get("cpu_ms_per_query_by_thread", {}).get("retrieval", {})
            print(f"{label}: {done / args.seconds:.0f} Retrieve/s, retrieval CPU ms per Retrieve "
                  f"{extra['cpu_ms_per_query']['retrieval']:.2f} (main thread {threads.get('main', 0.0):.2f}, "
                  f"inference {threads.get('embed-inference', 0.0):.2f}), query embedding batches of "
                  f"{extra['embed_batch_mean_texts']:.2f}, load average {os.getloadavg()[0]:.2f}", flush=True)
            time.sleep(1.0)
    finally:
        stack.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
