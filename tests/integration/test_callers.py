"""Named callers with scopes, collections and quotas, through the three real servers: the scope
matrix, a limited key on another collection, an alias checked against its collection, quotas with
RetryInfo, the mesh identity header, the caller in the metrics, the access log, the span and the
audit log, and the callers file reloaded (under load, and a bad file) without a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from tests.conftest import Stack, require_models
from tests.resilience.conftest import FAST_RERANKER, metric_value, scrape

KEYS = {name: f"{name}-key-{uuid.uuid4().hex}" for name in ("reader", "writer", "ops", "team", "slow", "spare")}
MESH_ID = "spiffe://cluster.local/ns/web/sa/frontend"
CALLERS = f"""# the test's callers
[[caller]]
name = "reader"
scopes = ["search"]
keys = ["{KEYS['reader']}"]

[[caller]]
name = "writer"
scopes = ["search", "write"]
keys = ["{KEYS['writer']}"]

[[caller]]
name = "ops"
scopes = ["search", "write", "admin"]
keys = ["{KEYS['ops']}"]

[[caller]]
name = "team"
scopes = ["search", "write", "admin"]
collections = ["team-*"]
keys = ["{KEYS['team']}"]

[[caller]]
name = "slow"
scopes = ["search"]
keys = ["{KEYS['slow']}"]
quota.search = {{ rate = 0.5, burst = 2 }}

[[caller]]
name = "mesh"
scopes = ["search"]
identities = ["{MESH_ID}"]
"""


def auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name]}"),)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_models()
    tmp = tmp_path_factory.mktemp("callers")
    keys_file = tmp / "callers.toml"
    keys_file.write_text(CALLERS)
    gateway = {"GATEWAY_API_KEYS_FILE": str(keys_file), "GATEWAY_API_KEYS_RELOAD_SECONDS": "0.2",
               "GATEWAY_TRUST_FORWARDED_CLIENT_CERT": "true", "LOG_LEVEL": "DEBUG",
               "OTEL_TRACES_EXPORTER": "console", "GATEWAY_RESULT_CACHE_SIZE": "0"}
    s = Stack(tmp, env_overrides={"reranker": FAST_RERANKER, "gateway": gateway})
    s.keys_file = keys_file
    s.start_all()
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.gateway) as channel:
        yield pb_grpc.SearchServiceStub(channel)


DOCS = [common_pb2.Document(id=i, text=t) for i, t in [
    ("tides", "Tides are the rise and fall of sea level caused by the Moon."),
    ("bread", "Sourdough bread rises thanks to wild yeast."),
]]


def make(stub, name: str) -> str:
    stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30, metadata=auth("ops"))
    stub.Upsert(pb.UpsertRequest(collection=name, documents=DOCS), timeout=60, metadata=auth("ops"))
    return name


@pytest.fixture(scope="module")
def collections(stub):
    suffix = uuid.uuid4().hex[:6]
    names = {"open": make(stub, f"open-{suffix}"), "team": make(stub, f"team-{suffix}"), "other": make(stub, f"other-{suffix}")}
    for alias, target in (("to-team", names["team"]), ("team-to-other", names["other"])):
        stub.CreateAlias(pb.CreateAliasRequest(alias=f"{alias}-{suffix}", collection=target), timeout=30, metadata=auth("ops"))
        names[alias] = f"{alias}-{suffix}"
    return names


def code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def calls(stub, collection: str, key: str) -> dict:
    """One call of each method a search key must not make, and a Search, with ``key``."""
    md = auth(key)
    doc = common_pb2.Document(id="x", text="a document")
    return {
        "Search": lambda: stub.Search(pb.SearchRequest(collection=collection, query="sea level", top_k=1), timeout=30, metadata=md),
        "Upsert": lambda: stub.Upsert(pb.UpsertRequest(collection=collection, documents=[doc]), timeout=30, metadata=md),
        "Delete": lambda: stub.Delete(pb.DeleteRequest(collection=collection, ids=["nope"]), timeout=30, metadata=md),
        "Ingest": lambda: list(stub.Ingest(iter([pb.IngestRequest(collection=collection, documents=[doc], sequence=1)]),
                                           timeout=30, metadata=md)),
        "DeleteCollection": lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name=f"nope-{uuid.uuid4().hex[:6]}"),
                                                          timeout=30, metadata=md),
        "SwitchAlias": lambda: stub.SwitchAlias(pb.SwitchAliasRequest(alias=f"nope-{uuid.uuid4().hex[:6]}", collection=collection),
                                                timeout=30, metadata=md),
        "Reindex": lambda: list(stub.Reindex(pb.ReindexRequest(source=f"nope-{uuid.uuid4().hex[:6]}"), timeout=30, metadata=md)),
        "RestoreSnapshot": lambda: stub.RestoreSnapshot(iter([pb.RestoreSnapshotRequest(collection=f"nope-{uuid.uuid4().hex[:6]}")]),
                                                        timeout=30, metadata=md),
    }


def test_a_search_key_may_search_and_nothing_else(stub, collections):
    got = {method: code(call) for method, call in calls(stub, collections["open"], "reader").items()}
    assert got.pop("Search")[0] == grpc.StatusCode.OK
    for method, (status, details) in got.items():
        assert status == grpc.StatusCode.PERMISSION_DENIED, (method, status, details)
        scope = "write" if method in ("Upsert", "Delete", "Ingest") else "admin"
        assert f"it needs scope {scope!r}" in details and "caller 'reader'" in details, details
    # Nothing was written: the write calls were refused before any work.
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(name=collections["open"]), timeout=30,
                                   metadata=auth("reader")).collection.document_count == len(DOCS)


def test_a_write_key_writes_but_does_not_administer(stub, collections):
    got = {method: code(call)[0] for method, call in calls(stub, collections["open"], "writer").items()}
    assert got == {"Search": grpc.StatusCode.OK, "Upsert": grpc.StatusCode.OK, "Delete": grpc.StatusCode.OK,
                   "Ingest": grpc.StatusCode.OK, "DeleteCollection": grpc.StatusCode.PERMISSION_DENIED,
                   "SwitchAlias": grpc.StatusCode.PERMISSION_DENIED, "Reindex": grpc.StatusCode.PERMISSION_DENIED,
                   "RestoreSnapshot": grpc.StatusCode.PERMISSION_DENIED}
    # An Ingest into a collection that does not exist would create it: that is admin's.
    status, details = code(lambda: list(stub.Ingest(iter([pb.IngestRequest(collection=f"new-{uuid.uuid4().hex[:6]}",
                                                                            documents=DOCS, sequence=1)]),
                                                    timeout=30, metadata=auth("writer"))))
    assert status == grpc.StatusCode.PERMISSION_DENIED and "needs scope 'admin'" in details


def test_missing_and_unknown_keys_are_unauthenticated(stub, collections):
    for metadata, reason in [(None, "missing API key"), ((("authorization", "Bearer nope-0123456789abcdef"),), "invalid API key"),
                             ((("authorization", KEYS["reader"]),), "malformed authorization")]:
        status, details = code(lambda: stub.Search(pb.SearchRequest(collection=collections["open"], query="q"), timeout=30,
                                                   metadata=metadata))
        assert status == grpc.StatusCode.UNAUTHENTICATED and reason in details, (status, details)
        assert KEYS["reader"] not in details


def test_a_key_limited_to_its_collections_is_denied_on_another(stub, collections):
    search = lambda name: code(lambda: stub.Search(pb.SearchRequest(collection=name, query="sea level", top_k=1),  # noqa: E731
                                                   timeout=30, metadata=auth("team")))
    assert search(collections["team"])[0] == grpc.StatusCode.OK
    status, details = search(collections["other"])
    assert status == grpc.StatusCode.PERMISSION_DENIED and "outside its collections (team-*)" in details
    # An alias is checked against the collection it points to, whatever its own name.
    assert search(collections["to-team"])[0] == grpc.StatusCode.OK
    status, details = search(collections["team-to-other"])
    assert status == grpc.StatusCode.PERMISSION_DENIED and "alias of a collection outside" in details
    assert f"'{collections['other']}'" not in details  # the hidden collection is not named
    status, _ = code(lambda: stub.Upsert(pb.UpsertRequest(collection=collections["team-to-other"], documents=DOCS),
                                         timeout=30, metadata=auth("team")))
    assert status == grpc.StatusCode.PERMISSION_DENIED
    status, _ = code(lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name=collections["other"]), timeout=30,
                                                   metadata=auth("team")))
    assert status == grpc.StatusCode.PERMISSION_DENIED
    # Its lists show what it reaches only.
    listed = stub.ListCollections(pb.ListCollectionsRequest(), timeout=30, metadata=auth("team"))
    assert collections["team"] in {c.name for c in listed.collections}
    assert not {c.name for c in listed.collections} & {collections["other"], collections["open"]}
    assert {a.alias for a in listed.aliases} >= {collections["to-team"]} and collections["team-to-other"] not in {a.alias for a in listed.aliases}
    # A switch of an alias it reaches to a collection it does not is refused, and so is one of its own.
    status, _ = code(lambda: stub.SwitchAlias(pb.SwitchAliasRequest(alias=collections["to-team"], collection=collections["other"]),
                                              timeout=30, metadata=auth("team")))
    assert status == grpc.StatusCode.PERMISSION_DENIED


def retry_info(err: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info
    return None


def test_a_caller_over_its_quota_is_told_when_to_retry(stub, stack, collections):
    outcomes = []
    for _ in range(4):
        try:
            stub.Search(pb.SearchRequest(collection=collections["open"], query="sea", top_k=1), timeout=30, metadata=auth("slow"))
            outcomes.append(("OK", None))
        except grpc.RpcError as err:
            outcomes.append((err.code().name, err))
    codes = [c for c, _ in outcomes]
    assert codes[:2] == ["OK", "OK"] and "RESOURCE_EXHAUSTED" in codes[2:], codes  # burst 2, then 0.5/s
    err = next(e for c, e in outcomes if c == "RESOURCE_EXHAUSTED")
    info = retry_info(err)
    assert info is not None and 0 < info.retry_delay.ToNanoseconds() <= 2_000_000_000
    assert "over its search quota" in err.details()
    text = scrape(stack, "gateway")
    assert metric_value(text, "search_gateway_caller_shed_total", caller="slow", reason="rate_limit") >= 1
    # Other callers are untouched by its quota.
    stub.Search(pb.SearchRequest(collection=collections["open"], query="sea", top_k=1), timeout=30, metadata=auth("reader"))


def test_a_mesh_identity_from_the_sidecars_header_is_a_caller(stub, collections):
    header = lambda uri: (("x-forwarded-client-cert", f'By=spiffe://cluster.local/ns/search/sa/gateway;Hash=ab;Subject="";URI={uri}'),)  # noqa: E731
    ok = stub.Search(pb.SearchRequest(collection=collections["open"], query="sea", top_k=1), timeout=30, metadata=header(MESH_ID))
    assert ok.results
    status, details = code(lambda: stub.Upsert(pb.UpsertRequest(collection=collections["open"], documents=DOCS), timeout=30,
                                               metadata=header(MESH_ID)))
    assert status == grpc.StatusCode.PERMISSION_DENIED and "caller 'mesh'" in details
    status, details = code(lambda: stub.Search(pb.SearchRequest(collection=collections["open"], query="q"), timeout=30,
                                               metadata=header("spiffe://cluster.local/ns/x/sa/stranger")))
    assert status == grpc.StatusCode.UNAUTHENTICATED and "stranger" in details
    # Only the last element counts (the one the nearest proxy added): a forged earlier one is ignored.
    forged = (("x-forwarded-client-cert", f"URI={MESH_ID},By=x;URI=spiffe://cluster.local/ns/x/sa/stranger"),)
    assert code(lambda: stub.Search(pb.SearchRequest(collection=collections["open"], query="q"), timeout=30,
                                    metadata=forged))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_the_caller_is_in_the_metrics_the_access_log_the_span_and_the_audit_log(stub, stack, collections):
    stub.Search(pb.SearchRequest(collection=collections["open"], query="sea", top_k=1), timeout=30, metadata=auth("reader"))
    name = f"team-audit-{uuid.uuid4().hex[:6]}"
    stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=30, metadata=auth("team"))
    code(lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=30, metadata=auth("reader")))
    text = scrape(stack, "gateway")
    assert metric_value(text, "search_gateway_caller_requests_total", caller="reader",
                        method="search.v1.SearchService/Search", code="OK") >= 1
    assert metric_value(text, "search_gateway_caller_requests_total", caller="reader",
                        method="search.v1.SearchService/DeleteCollection", code="PERMISSION_DENIED") >= 1
    assert metric_value(text, "search_gateway_caller_requests_total", caller="other", code="UNAUTHENTICATED") >= 0
    callers_seen = {line.split('caller="')[1].split('"')[0] for line in text.splitlines()
                    if line.startswith("search_gateway_caller_requests_total{")}
    assert callers_seen <= {"reader", "writer", "ops", "team", "slow", "mesh", "spare", "other"}  # bounded

    deadline = time.monotonic() + 30  # spans leave in batches (every 5 s)
    while True:
        log = stack.log_text("gateway")
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"level"' in line]
        audit = [r for r in records if r.get("logger") == "search.audit"]
        created = [r for r in audit if r.get("collection") == name and r["method"].endswith("/CreateCollection")]
        denied = [r for r in audit if r.get("collection") == name and r["method"].endswith("/DeleteCollection")]
        if (created and denied and '"enduser.id": "reader"' in log) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert created and created[0]["caller"] == "team" and created[0]["outcome"] == "OK" and created[0]["time"]
    assert denied and denied[0]["caller"] == "reader" and denied[0]["outcome"] == "PERMISSION_DENIED"
    access = [r for r in records if r.get("logger") == "search.rpc" and r.get("method") == "search.v1.SearchService/Search"]
    assert any(r.get("caller") == "reader" for r in access)
    assert '"enduser.id": "reader"' in log  # the request span (console exporter)
    for key in KEYS.values():
        assert key not in log, "a key was logged"


def swap(stack, text: str) -> None:
    tmp = stack.keys_file.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(stack.keys_file)  # atomically, as a Kubernetes Secret volume does


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_the_callers_file_reloads_under_load_without_a_failed_call(stub, stack, collections):
    """Readers search continuously while the file is rewritten several times (a caller added, one
    given a scope, one removed, one bad file): every call of the unchanged callers succeeds."""
    stop = threading.Event()
    results: dict[str, list[str]] = {"reader": [], "writer": []}

    def load(who: str) -> None:
        with grpc.insecure_channel(stack.gateway) as channel:
            s = pb_grpc.SearchServiceStub(channel)
            while not stop.is_set():
                results[who].append(code(lambda: s.Search(pb.SearchRequest(collection=collections["open"], query="sea", top_k=1),
                                                         timeout=30, metadata=auth(who)))[0].name)

    threads = [threading.Thread(target=load, args=(who,)) for who in results]
    for t in threads:
        t.start()
    try:
        extra = f'\n[[caller]]\nname = "late"\nscopes = ["search"]\nkeys = ["late-key-{uuid.uuid4().hex}"]\n'
        late_key = extra.split('keys = ["')[1].split('"')[0]
        searcher = lambda key: code(lambda: stub.Search(pb.SearchRequest(collection=collections["open"], query="sea"),  # noqa: E731
                                                        timeout=30, metadata=(("authorization", f"Bearer {key}"),)))[0]
        assert searcher(late_key) == grpc.StatusCode.UNAUTHENTICATED
        swap(stack, CALLERS + extra)  # a caller added: seen by the file watch, no restart
        assert wait_until(lambda: searcher(late_key) == grpc.StatusCode.OK)
        spare_upsert = lambda: code(lambda: stub.Upsert(pb.UpsertRequest(collection=collections["open"], documents=DOCS),  # noqa: E731
                                                        timeout=30, metadata=auth("slow")))[0]
        assert spare_upsert() == grpc.StatusCode.PERMISSION_DENIED
        swap(stack, (CALLERS + extra).replace('scopes = ["search"]\nkeys = ["' + KEYS["slow"],
                                               'scopes = ["search", "write"]\nkeys = ["' + KEYS["slow"]))
        assert wait_until(lambda: spare_upsert() == grpc.StatusCode.OK)  # a scope given
        before_errors = stack.log_text("gateway").count("callers file not reloaded")
        swap(stack, (CALLERS + extra).replace('scopes = ["search"]\nkeys = ["' + KEYS["reader"], 'scopes = ["serch"]\nkeys = ["'
                                              + KEYS["reader"]))
        assert wait_until(lambda: stack.log_text("gateway").count("callers file not reloaded") > before_errors)
        assert searcher(late_key) == grpc.StatusCode.OK  # the rules in force stayed
        error = [line for line in stack.log_text("gateway").splitlines() if "callers file not reloaded" in line][-1]
        assert "line 2" in error or "line 3" in error, error  # names the line of the bad entry
        # SIGHUP reloads too (here: the good file back, without the late caller).
        stack.keys_file.write_text(CALLERS)
        stack.procs["gateway"].send_signal(signal.SIGHUP)
        assert wait_until(lambda: searcher(late_key) == grpc.StatusCode.UNAUTHENTICATED)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert stack.procs["gateway"].poll() is None
    for who, codes in results.items():
        assert codes and set(codes) == {"OK"}, (who, {c: codes.count(c) for c in set(codes)})
    text = scrape(stack, "gateway")
    assert metric_value(text, "search_gateway_callers_reloads_total", outcome="ok") >= 3
    assert metric_value(text, "search_gateway_callers_reloads_total", outcome="error") >= 1


def test_arbitrary_messages_from_limited_callers_never_fail_internally(stack, collections):
    """The fuzz suite's messages (tests/resilience/test_fuzz.py) for every SearchService method,
    sent by a caller limited to team-* and by a search-only caller: the caller checks (scopes,
    names, aliases, answers) add PERMISSION_DENIED, never INTERNAL or UNKNOWN."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings, strategies as st

    from tests.resilience import test_fuzz as fuzz

    allowed = fuzz.ALLOWED | {grpc.StatusCode.PERMISSION_DENIED}
    seen: dict[str, int] = {}
    with grpc.insecure_channel(stack.gateway) as channel:
        for service, method, request_cls, _ in fuzz.RPCS:
            if service != "SearchService":
                continue
            client_streams, server_streams = fuzz.STREAMING[(service, method)]
            path = f"/search.v1.{service}/{method}"
            # Names the limited caller reaches, and ones it does not (aliases of both kinds too).
            target = st.sampled_from([collections["team"], collections["other"], collections["to-team"],
                                      collections["team-to-other"], f"team-new-{uuid.uuid4().hex[:6]}"])
            base = fuzz.base_request(method, request_cls, collections["team"])

            @settings(max_examples=12, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
            @given(who=st.sampled_from(["team", "reader"]), name=target, data=st.data())
            def prop(who, name, data):
                message = data.draw(st.one_of(
                    fuzz.message_strategy(request_cls.DESCRIPTOR, name),
                    fuzz.message_strategy(request_cls.DESCRIPTOR, name, one_field=True).map(lambda m: fuzz.merged(base, m))))
                body, md = message.SerializeToString(), auth(who)
                try:
                    if client_streams and server_streams:
                        list(channel.stream_stream(path)(iter([body]), timeout=60, metadata=md))
                    elif client_streams:
                        channel.stream_unary(path)(iter([body]), timeout=60, metadata=md)
                    elif server_streams:
                        list(channel.unary_stream(path)(body, timeout=60, metadata=md))
                    else:
                        channel.unary_unary(path)(body, timeout=60, metadata=md)
                    status = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    status, details = exc.code(), exc.details()
                    assert status in allowed, f"{method} by {who}: {status.name}: {details}"
                seen[status.name] = seen.get(status.name, 0) + 1

            prop()
    assert seen.get("PERMISSION_DENIED", 0) > 0 and sum(seen.values()) >= 16 * 6
    assert stack.procs["gateway"].poll() is None
    assert "unhandled error" not in stack.log_text("gateway")
    print(f"\nFIGURES limited callers fuzzed: {dict(sorted(seen.items()))}")


def test_searchctl_keys_create_adds_a_caller_the_gateway_takes_without_a_restart(stub, stack, collections):
    import subprocess
    import sys

    from tests.conftest import REPO

    run = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--file", str(stack.keys_file),
                          "--name", "fresh", "--scopes", "search", "--collections", "team-*"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip()
    assert run.stdout == key + "\n" and len(key) >= 40  # the key, alone on stdout
    assert f'keys = ["{key}"]' in stack.keys_file.read_text()
    fresh = (("authorization", f"Bearer {key}"),)
    search = lambda name: code(lambda: stub.Search(pb.SearchRequest(collection=name, query="sea"), timeout=30,  # noqa: E731
                                                   metadata=fresh))[0]
    assert wait_until(lambda: search(collections["team"]) == grpc.StatusCode.OK)
    assert search(collections["other"]) == grpc.StatusCode.PERMISSION_DENIED
    again = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--file", str(stack.keys_file),
                            "--name", "fresh", "--scopes", "search"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 2 and f"caller 'fresh' already exists in {stack.keys_file}: choose another --name" in again.stderr and not again.stdout
    assert key not in stack.log_text("gateway")


def test_a_bad_line_in_the_callers_file_stops_the_gateway_naming_the_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    bad = tmp_path / "callers.toml"
    bad.write_text(CALLERS.replace('scopes = ["search", "write"]', 'scopes = ["search", "writes"]'))
    env = {**os.environ, "GATEWAY_PORT": "0", "GATEWAY_METRICS_PORT": "0", "GATEWAY_API_KEYS_FILE": str(bad)}
    run = subprocess.run([sys.executable, "-m", "services.cli", "serve", "gateway"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, (run.returncode, run.stderr[-1500:])
    assert f"GATEWAY_API_KEYS_FILE={bad} line 7: caller 'writer': unknown scope 'writes'" in run.stderr
    assert KEYS["writer"] not in run.stderr


def test_a_refused_client_stream_gets_its_own_status_while_an_asyncio_caller_is_still_writing(stack, collections):
    """The access guard refuses a streaming call (no key, a key without the scope) once the caller
    has finished writing: a status sent while a grpc.aio caller still writes reaches it as INTERNAL
    "Internal error from Core" (grpc/grpc#36066) instead of UNAUTHENTICATED or PERMISSION_DENIED."""
    restore = [pb.RestoreSnapshotRequest(collection=f"r{uuid.uuid4().hex[:12]}")] + [
        pb.RestoreSnapshotRequest(points=[common_pb2.StoredPoint(id=str(i), dense=[0.5] * 384)]) for i in range(40)]
    ingest = [pb.IngestRequest(collection=collections["open"], documents=[common_pb2.Document(id=f"d{i}", text="x " * 200)],
                               sequence=i + 1) for i in range(40)]

    async def refusals() -> Counter:
        outcomes: Counter = Counter()
        async with grpc.aio.insecure_channel(stack.gateway) as channel:
            aio_stub = pb_grpc.SearchServiceStub(channel)
            for _ in range(100):
                for call in (lambda: aio_stub.RestoreSnapshot(iter(restore), timeout=60, metadata=auth("writer")),
                             lambda: aio_stub.RestoreSnapshot(iter(restore), timeout=60)):
                    try:
                        await call()
                    except grpc.aio.AioRpcError as exc:
                        outcomes[exc.code()] += 1
                try:
                    async for _ in aio_stub.Ingest(iter(ingest), timeout=60, metadata=auth("reader")):
                        pass
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code()] += 1
        return outcomes

    outcomes = asyncio.run(refusals())
    assert outcomes == {grpc.StatusCode.PERMISSION_DENIED: 200, grpc.StatusCode.UNAUTHENTICATED: 100}, outcomes
