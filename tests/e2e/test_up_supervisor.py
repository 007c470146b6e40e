"""`searchctl up` keeps the platform serving when a service dies: kill the reranker, Searches go on
(degraded), the supervisor restarts it with backoff and says so, reranking comes back."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import require_models
from tests.e2e.test_up import STOP_BOUND_S, children_of, start_up, stop_with_sigint, up_env
from tests.processes import running


def test_a_killed_reranker_is_restarted_while_searches_keep_succeeding(tmp_path: Path):
    require_models()
    up, ports = start_up(tmp_path, up_env(tmp_path, GATEWAY_BREAKER_COOLDOWN_SECONDS="1"))
    with running(up):
        up.wait_for_output("Ctrl-C stops", timeout=400)
        before = children_of(up.pid)
        answers, failures, stop = [], [], threading.Event()

        def searcher():
            with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
                stub = pb_grpc.SearchServiceStub(channel)
                n = 0
                while not stop.is_set():
                    n += 1  # a new query each time: no cache answers in place of the reranker
                    try:
                        reply = stub.Search(pb.SearchRequest(collection="docs", query=f"how do I run the tests ({n})", top_k=3,
                                                                         rerank=pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS)),
                                            timeout=10)
                        answers.append((time.monotonic(), reply.degraded, reply.reranked, len(reply.results)))
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")
                    time.sleep(0.05)

        thread = threading.Thread(target=searcher)
        thread.start()
        try:
            time.sleep(1.0)
            killed_at = time.monotonic()
            os.kill(before["reranker"], signal.SIGKILL)
            text = up.wait_for_output("reranker is serving again", timeout=240)
            back_at = time.monotonic()
            deadline = back_at + 60
            while time.monotonic() < deadline and not any(t > back_at and r for t, _, r, _ in answers):
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
        assert not failures, failures[:5]
        assert all(n == 3 for *_, n in answers)
        assert any(d for t, d, _, _ in answers if killed_at < t < back_at), "no degraded answer while the reranker was down"
        assert any(r for t, _, r, _ in answers if t > back_at), "reranking did not come back"
        assert f"reranker (pid {before['reranker']}) exited with signal 9; restarting it in 1 s" in text, text[-2000:]
        after = children_of(up.pid)
        assert after["reranker"] != before["reranker"]
        assert (after["gateway"], after["retrieval"]) == (before["gateway"], before["retrieval"])
        print(f"\nFIGURES reranker killed under searchctl up: back in {back_at - killed_at:.1f} s, "
              f"{len(answers)} searches, {sum(d for _, d, _, _ in answers)} degraded, 0 failed")
        stop_with_sigint(up, STOP_BOUND_S + 5)
