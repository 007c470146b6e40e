"""`searchctl up` and `searchctl serve` as a script or a CI runner starts them: in the background
of a non-interactive shell, so with SIGINT ignored (tests/processes.py, ``ignore_sigint``).

Every process is started in its own process group and killed with it when the test ends,
whatever happened; its output is printed when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from search.v1 import (
    common_pb2,
    rerank_service_pb2,
    rerank_service_pb2_grpc,
    retrieval_service_pb2,
    retrieval_service_pb2_grpc,
    search_service_pb2 as pb,
    search_service_pb2_grpc as pb_grpc,
)
from services.cli.procs import free_port, wait_serving
from tests.conftest import REPO, require_models
from tests.processes import running, spawn

API_KEY = "e2e-key-3f9c0a71"
#: `searchctl up`'s bound: the services' default grace (10 s) + its 5 s margin.
STOP_BOUND_S = 15.0


def up_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEARCHCTL_API_KEY", "INTERNAL_TOKEN", "INTERNAL_TOKEN_FILE")}
    env.update({"QDRANT_PATH": str(tmp_path / "qdrant"), "ORT_INTRA_OP_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "GATEWAY_METRICS_PORT": "0", "RETRIEVAL_METRICS_PORT": "0", "RERANKER_METRICS_PORT": "0", **extra})
    return env


def start_up(tmp_path: Path, env: dict[str, str], *flags: str, ports: dict[str, int] | None = None, log: str = "up.log"):
    ports = ports or {name: free_port() for name in ("gateway", "retrieval", "reranker")}
    argv = [sys.executable, "-m", "services.cli", "up", *flags,
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))]
    return spawn("searchctl up", argv, tmp_path / log, env=env, ignore_sigint=True), ports


def children_of(pid: int) -> dict[str, int]:
    """The services `searchctl up` (pid) runs: {name: pid}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"serve" in argv:
            found[argv[argv.index(b"serve") + 1].decode()] = int(entry.name)
    return found


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def stop_with_sigint(child, bound: float) -> float:
    """SIGINT to `searchctl up`; the seconds it took to exit 0 (at most ``bound``)."""
    started = time.monotonic()
    child.proc.send_signal(signal.SIGINT)
    try:
        code = child.proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"searchctl up still running {bound:.0f} s after SIGINT")
    assert code == 0, child.tail()
    return time.monotonic() - started


def test_the_harness_starts_children_with_sigint_ignored(tmp_path: Path):
    probe = spawn("probe", [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"],
                  tmp_path / "probe.log", ignore_sigint=True)
    with running(probe):
        assert probe.proc.wait(timeout=30) == 0
        assert probe.output().strip() == "True"


@pytest.mark.parametrize("service, when", [("gateway", "serving"), ("reranker", "loading its model")])
def test_serve_stops_on_sigint_even_when_started_with_it_ignored(tmp_path: Path, service: str, when: str):
    if service != "gateway":
        require_models()
    port, prefix = free_port(), service.upper()
    env = {**os.environ, f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port), f"{prefix}_METRICS_PORT": "0",
           "PYTHONUNBUFFERED": "1"}
    server = spawn(service, [sys.executable, "-m", "services.cli", "serve", service], tmp_path / f"{service}.log",
                   env=env, ignore_sigint=True)
    with running(server):
        if when == "serving":
            wait_serving(f"127.0.0.1:{port}", timeout=60, proc=server.proc)
        else:  # port bound, health NOT_SERVING, model loading
            server.wait_for_output('"message": "listening"', timeout=60)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=20) == 0, server.tail()
        assert '"message": "stopped"' in server.output()


def test_up_started_with_sigint_ignored_loads_the_demo_and_stops_on_sigint(tmp_path: Path):
    require_models()
    up, ports = start_up(tmp_path, up_env(tmp_path))
    with running(up):
        text = up.wait_for_output("Ctrl-C stops", timeout=400)
        assert "loaded" in text and "demo passages" in text, text
        assert "ready:" in text and "grpcurl -plaintext" in text, text
        assert "Traceback" not in text
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "search", "how do I run the tests", "--collection", "docs",
             "--target", f"127.0.0.1:{ports['gateway']}", "--json"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        hits = json.loads(result.stdout)["results"]
        assert hits and any("test" in (h.get("text", "") + h.get("title", "")).lower() for h in hits[:3])
        services = children_of(up.pid)
        assert set(services) == {"gateway", "retrieval", "reranker"}, services

        seconds = stop_with_sigint(up, STOP_BOUND_S + 5)
        output = up.output()
        assert "stopping retrieval, reranker, gateway" in output and "stopped" in output, output[-3000:]
        assert not up.group_alive(), "a process of `searchctl up` outlived it"
        print(f"\nFIGURES searchctl up stop on SIGINT (started with SIGINT ignored): seconds={seconds:.1f}")


def test_up_with_api_keys_guards_the_internal_services(tmp_path: Path):
    """Keys on: the demo loads with a configured key (no traceback), retrieval and reranker listen on
    loopback and refuse callers without the internal token; the gateway with a key works.
    Then the stop path: a service that does not stop is reported, and a second SIGINT kills it."""
    require_models()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# e2e\n{API_KEY}\n")
    up, ports = start_up(tmp_path, up_env(tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file)))
    with running(up):
        text = up.wait_for_output("Ctrl-C stops", timeout=400)
        assert "Traceback" not in text
        assert "loaded" in text and "demo passages" in text, text
        assert "export SEARCHCTL_API_KEY=" in text and "internal token" in text, text
        assert 'authorization: Bearer $SEARCHCTL_API_KEY' in text

        # Retrieval and reranker listen on loopback only: 127.0.0.1, or ::ffff:127.0.0.1 (gRPC's
        # dual-stack socket); before, 0.0.0.0 / :: (all zeros).
        for name in ("retrieval", "reranker"):
            addresses = listening_addresses(ports[name])
            assert addresses and addresses <= {"0100007F", "0000000000000000FFFF00000100007F"}, (name, addresses)

        gateway = f"127.0.0.1:{ports['gateway']}"
        key = (("authorization", f"Bearer {API_KEY}"),)
        with grpc.insecure_channel(gateway) as channel:
            search = pb_grpc.SearchServiceStub(channel)
            before = search.DescribeCollection(pb.DescribeCollectionRequest(name="docs"), timeout=30, metadata=key)
            before = before.collection.document_count
        assert before > 0

        intruder = common_pb2.Document(id="intruder", text="written around the gateway")
        with grpc.insecure_channel(f"127.0.0.1:{ports['retrieval']}") as channel:
            retrieval = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
            for metadata, reason in [(None, "missing internal token"),
                                     ((("authorization", f"Bearer {API_KEY}"),), "invalid internal token")]:
                with pytest.raises(grpc.RpcError) as info:
                    retrieval.Upsert(retrieval_service_pb2.RetrievalServiceUpsertRequest(collection="docs", documents=[intruder]),
                                     timeout=30, metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value
                assert reason in info.value.details()
            # Health needs no token (probes, searchctl up itself).
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{ports['reranker']}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                rerank_service_pb2_grpc.RerankServiceStub(channel).Rerank(
                    rerank_service_pb2.RerankRequest(query="q", passages=["p"]), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with grpc.insecure_channel(gateway) as channel:
            search = pb_grpc.SearchServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                search.DescribeCollection(pb.DescribeCollectionRequest(name="docs"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            after = search.DescribeCollection(pb.DescribeCollectionRequest(name="docs"), timeout=30, metadata=key)
            assert after.collection.document_count == before, "the refused direct Upsert wrote something"
            friend = common_pb2.Document(id="friend", text="Glaciers carve U-shaped valleys as they move downhill.")
            reply = search.Upsert(pb.UpsertRequest(collection="docs", documents=[friend]), timeout=60, metadata=key)
            assert reply.upserted == 1
            after = search.DescribeCollection(pb.DescribeCollectionRequest(name="docs"), timeout=30, metadata=key)
            assert after.collection.document_count == before + 1
            found = search.Search(pb.SearchRequest(collection="docs", query="how do glaciers shape valleys", top_k=3,
                                                          rerank=pb.RerankOptions(policy=pb.RERANK_POLICY_ALWAYS)),
                                  timeout=60, metadata=key)
            assert found.results[0].id == "friend" and found.reranked, found

        # A service that does not stop (SIGSTOP: SIGTERM stays pending) is reported by name;
        # a second SIGINT kills it at once instead of after the stop timeout.
        services = children_of(up.pid)
        os.kill(services["retrieval"], signal.SIGSTOP)
        up.proc.send_signal(signal.SIGINT)
        up.wait_for_output("still waiting for retrieval", timeout=10)
        started = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=5) == 130, up.tail()
        assert time.monotonic() - started < 5
        assert "killed retrieval (on a second signal)" in up.output()
        assert not up.group_alive(), "a process of `searchctl up` outlived it"


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_up_binds_loopback_holds_its_store_and_takes_its_services_along_when_killed(tmp_path: Path):
    """Every port of `searchctl up` on loopback; a second `up` on the same store names the holder and
    exits 1; `up` killed with SIGKILL: its services stop by themselves (parent-death signal), and a
    new `up` comes up on the same ports and store."""
    require_models()
    metrics = {f"{name.upper()}_METRICS_PORT": str(free_port()) for name in ("gateway", "retrieval", "reranker")}
    env = up_env(tmp_path, **metrics)
    up, ports = start_up(tmp_path, env, "--no-demo")
    with running(up):
        text = up.wait_for_output("Ctrl-C stops", timeout=400)
        assert "everything on loopback" in text and "--host opens the gateway" in text, text
        for port in (*ports.values(), *map(int, metrics.values())):
            addresses = listening_addresses(port)
            assert addresses and addresses <= LOOPBACK_HEX, (port, addresses)
        services = children_of(up.pid)
        assert set(services) == {"gateway", "retrieval", "reranker"}, services

        others = [arg for name in ports for arg in (f"--{name}-port", str(free_port()))]
        second = subprocess.run([sys.executable, "-m", "services.cli", "up", "--no-demo", *others], env=env,
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert second.returncode == 1, second.stderr
        assert f"in use by searchctl up (pid {up.pid})" in second.stderr and "Traceback" not in second.stderr
        assert str(tmp_path / "qdrant") in second.stderr

        up.proc.kill()
        up.proc.wait()
        deadline = time.monotonic() + STOP_BOUND_S + 15  # a bound for the wait, not a measurement
        while any(map(alive, services.values())) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {name: pid for name, pid in services.items() if alive(pid)}
        assert not left, f"services of the killed searchctl up outlived it: {left}"

    again, _ = start_up(tmp_path, env, "--no-demo", ports=ports, log="again.log")
    with running(again):
        text = again.wait_for_output("Ctrl-C stops", timeout=400)
        assert "Traceback" not in text and "in use" not in text, text
        stop_with_sigint(again, STOP_BOUND_S + 5)
