"""`searchctl up`: the whole stack on one machine, on embedded Qdrant; Ctrl-C stops it all.

Once the stack is ready, a service that exits is restarted with backoff while the others keep
serving (:mod:`services.cli.supervisor`); one that keeps failing stops everything.

Stopping is bounded: the first SIGINT, SIGTERM or SIGHUP (the terminal closed) sends SIGTERM
to the three services at once and waits for them together, saying what it still waits for;
what still runs after the longest ``*_GRACE_SECONDS`` plus :data:`STOP_MARGIN_S` is killed,
and a second signal kills at once. The handlers are installed at start, whatever was inherited: a process started in
the background by a non-interactive shell inherits SIGINT ignored, and Python keeps that.

If `searchctl up` itself is killed (SIGKILL), its services get SIGTERM from the kernel (Linux:
services/common/child_process.py) and stop within their grace period. They also inherit its lock
on the store (services/cli/store_lock.py): a second `searchctl up` on the same store says which
process holds it and exits 1; one started while a killed stack's services are still stopping waits
for them.

Every port binds loopback: the three gRPC ports and their metrics ports (each service's /metrics
listens on its gRPC address); ``--host`` opens the gateway (and its metrics) deliberately, and the
ready line says so. When the gateway requires API keys
(``GATEWAY_API_KEYS_FILE`` / ``GATEWAY_API_KEYS``), they also require an internal token the
gateway sends (``INTERNAL_TOKEN``, generated for the run unless one is configured), and the
demo loader calls the gateway with a configured key whose caller has the search, write and
admin scopes on the demo collection (``$SEARCHCTL_API_KEY`` when it is one); without such a
caller the demo is not loaded, and the ready line says why.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.client import API_KEY_ENV, open_blocking_channel
from services.cli.demo import demo_corpus
from services.cli.ingest_stream import Checkpoint, IngestFailed, load
from services.cli.procs import stop_processes, wait_serving
from services.cli.store_lock import StoreInUse, acquire
from services.cli.supervisor import Supervisor
from services.common import child_process
from services.common import config as cfg

START_ORDER = ("retrieval", "reranker", "gateway")
INTERNAL = ("retrieval", "reranker")
LOOPBACK = "127.0.0.1"
#: Seconds `searchctl up` waits past the services' longest grace period before killing them.
STOP_MARGIN_S = 5.0


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP handlers: the first signal asks for a stop (``requested``); any signal
    once a stop was asked for (by a signal, or because a service exited) asks to kill at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.kill_now = threading.Event()
        self.signals = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signals += 1
        if self.requested.is_set():
            self.kill_now.set()
        self.requested.set()

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _say(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _load_demo(target: str, collection: str, api_key: str | None, spool: Path, stop: threading.Event) -> str:
    """The demo corpus into ``collection`` on the Ingest stream (services/cli/ingest_stream.py,
    through ``spool`` and its checkpoint), unless it already holds documents and no earlier load
    of it was interrupted (that one is resumed)."""
    spool.parent.mkdir(parents=True, exist_ok=True)
    if not Checkpoint.path_for(spool, collection).exists():
        with open_blocking_channel(target, api_key) as channel:
            try:
                reply = pb_grpc.SearchServiceStub(channel).DescribeCollection(
                    pb.DescribeCollectionRequest(name=collection), timeout=30)
                if reply.collection.document_count > 0:
                    return f"collection {collection!r} already holds documents; not reloading the demo corpus"
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    outcome = load(demo_corpus(), collection, target, spool=spool, batch_size=32, api_key=api_key, cancel=stop)
    resumed = f" (resumed after {outcome.resumed})" if outcome.resumed else ""
    return f"loaded {outcome.written + outcome.resumed} demo passages (the project's own docs) into {collection!r}{resumed}"


def _demo(target: str, collection: str, api_key: str | None, spool: Path, stop: threading.Event) -> str | None:
    """Load the demo corpus unless ``stop`` is set first (then None: the stream is cancelled, and
    its checkpoint lets the next `searchctl up` resume it)."""
    outcome: list = []

    def loading() -> None:
        try:
            outcome.append(_load_demo(target, collection, api_key, spool, stop))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome.append(exc)

    worker = threading.Thread(target=loading, name="demo-load", daemon=True)
    worker.start()
    while worker.is_alive():
        if stop.wait(0.1):
            worker.join(timeout=10)  # the stream is cancelled at once; the checkpoint stays
            return None
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _grace_seconds(env: dict[str, str]) -> float:
    """The longest grace period of the three services, as they will read it from ``env``."""
    from services.cli.main import SERVICES, _load

    return max(cfg.load(_load(SERVICES[name][0]), None, env).grace_seconds for name in START_ORDER)


def _callers(env: dict[str, str]):
    """The gateway's callers as it will load them from ``env`` (a bad file: ConfigError, one line, exit 2)."""
    from services.gateway.callers import load
    from services.gateway.config import GatewayConfig

    gateway = cfg.load(GatewayConfig, None, env)
    return load(gateway.api_keys_file, gateway.api_keys)


#: What loading the demo takes: create the collection (admin), write it (write), look at it (search).
DEMO_SCOPES = ("search", "write", "admin")


def _demo_keys(env: dict[str, str], book, collection: str) -> list[str]:
    """The configured keys whose caller may load the demo into ``collection``, in file order."""
    from services.gateway.config import GatewayConfig

    gateway = cfg.load(GatewayConfig, None, env)
    keys = []
    for caller in book.callers:
        if all(caller.may(s) for s in DEMO_SCOPES) and caller.reaches(collection):
            keys += _keys_of(gateway, caller.name)
    return keys


def _keys_of(gateway, name: str) -> list[str]:
    from services.gateway.callers import LEGACY, parse_inline, read_file

    parts = ([read_file(gateway.api_keys_file)] if gateway.api_keys_file else []) + (
        [parse_inline(gateway.api_keys)] if gateway.api_keys and gateway.api_keys.strip() else [])
    found = []
    for part in parts:
        if name == LEGACY:
            found += part.legacy_keys
        found += [key for key, caller in part.keys if caller.name == name]
    return found


def _client_key(book, demo_keys: list[str]) -> tuple[str | None, str | None]:
    """The key `searchctl up` uses for its own calls (the demo), and a line for the user (or None)."""
    if not book.enabled:
        return None, None
    mine = os.environ.get(API_KEY_ENV)
    known = bool(mine) and book.by_key(mine) is not None
    if not demo_keys:
        note = ("no configured caller may load the demo (it needs scopes search, write and admin on the collection): "
                "the demo is not loaded")
        return None, note if known or not mine else f"{API_KEY_ENV} is not one of the gateway's keys; {note}"
    if known:
        return (mine if mine in demo_keys else demo_keys[0]), None
    if mine:
        return demo_keys[0], f"{API_KEY_ENV} is set but is not one of the gateway's keys: searchctl search will be refused"
    return demo_keys[0], f"the gateway requires API keys: export {API_KEY_ENV}=<a configured key> for searchctl search"


def _up(args: argparse.Namespace) -> int:
    signals = StopSignals()  # first: Ctrl-C must work from here on, however we were started
    try:
        return _run(args, signals)
    finally:
        signals.restore()


def _run(args: argparse.Namespace, signals: StopSignals) -> int:
    from services.common.security import load_security

    env = dict(os.environ)
    env.setdefault("QDRANT_PATH", args.data_dir)
    ports = {"gateway": args.gateway_port, "retrieval": args.retrieval_port, "reranker": args.reranker_port}
    env["RETRIEVAL_ADDR"] = f"{LOOPBACK}:{ports['retrieval']}"
    env["RERANKER_ADDR"] = f"{LOOPBACK}:{ports['reranker']}"
    book = _callers(env)
    keys = book.enabled
    token_note = None
    if keys and not (env.get("INTERNAL_TOKEN") or env.get("INTERNAL_TOKEN_FILE")):
        env["INTERNAL_TOKEN"] = secrets.token_urlsafe(32)
        token_note = "API keys are on: retrieval and reranker require an internal token (generated for this run; the gateway sends it)"
    load_security(env)  # a bad TLS_* or INTERNAL_TOKEN* setting: one line now, not three dying services
    api_key, key_note = _client_key(book, _demo_keys(env, book, args.collection) if keys else [])
    no_demo = args.no_demo or (keys and api_key is None)
    stop_timeout = args.stop_timeout if args.stop_timeout is not None else _grace_seconds(env) + STOP_MARGIN_S
    try:
        # A killed stack's services may still be stopping (within their grace period): wait for them.
        lock = acquire(Path(env["QDRANT_PATH"]), wait_for_stopping_s=stop_timeout)
    except StoreInUse as exc:
        _say(f"searchctl up: {exc}", err=True)
        return 1
    with lock:
        return _stack(args, signals, env, ports, lock.fd, stop_timeout,
                      _Access(keys, token_note, api_key, key_note, no_demo))


@dataclass(frozen=True)
class _Access:
    """What the API keys decided: keys on, the notes to print, the demo's key, whether to load it."""

    keys: bool
    token_note: str | None
    api_key: str | None
    key_note: str | None
    no_demo: bool


def _stack(args, signals: StopSignals, env: dict[str, str], ports: dict[str, int], lock_fd: int,
           stop_timeout: float, access: _Access) -> int:
    """Start, supervise and stop the three services (the store's lock held)."""

    def spawn(argv: list[str]) -> subprocess.Popen:
        # The services hold the store's lock with us, and get SIGTERM if we are killed.
        return child_process.start(argv, env=env, pass_fds=(lock_fd,))

    procs: dict[str, subprocess.Popen] = {}
    argvs: dict[str, list[str]] = {}
    code = 0
    try:
        for name in START_ORDER:
            if signals.requested.is_set():
                break
            argv = argvs[name] = [sys.executable, "-m", "services.cli", "serve", name, "--port", str(ports[name]),
                                  "--host", LOOPBACK if name in INTERNAL else args.host]
            procs[name] = spawn(argv)
        addresses = {name: f"{_reachable(LOOPBACK if name in INTERNAL else args.host)}:{port}" for name, port in ports.items()}
        for name in START_ORDER:
            if name in procs and not wait_serving(addresses[name], args.start_timeout, watch=procs, stop=signals.requested):
                break
        target = addresses["gateway"]
        if not signals.requested.is_set():
            if access.token_note:
                _say(access.token_note)
            if not access.no_demo:
                spool = Path(env["QDRANT_PATH"]).parent / "ingest-checkpoints" / f"demo-{args.collection}.jsonl"
                loaded = _demo(target, args.collection, access.api_key, spool, signals.requested)
                if loaded:
                    _say(loaded)
        if not signals.requested.is_set():
            _say(_ready(args, env, ports, access.keys, access.key_note, access.no_demo))
            # A service that exits is restarted with backoff; the others keep serving (supervisor.py).
            supervisor = Supervisor(procs, argvs, addresses, spawn=spawn, say=_say, max_restarts=args.max_restarts)
            gave_up = supervisor.watch(signals.requested)
            if gave_up:
                _say(f"searchctl up: {gave_up}; stopping the others", err=True)
                code = 1
    except (TimeoutError, RuntimeError) as exc:
        _say(f"searchctl up: {exc}", err=True)
        code = 1
    except (IngestFailed, grpc.RpcError) as exc:
        failed = exc.code if isinstance(exc, IngestFailed) else exc.code().name
        hint = " (set SEARCHCTL_API_KEY to one of the gateway's keys, or use --no-demo)" if failed == "UNAUTHENTICATED" else ""
        _say(f"searchctl up: loading the demo corpus failed: {exc if isinstance(exc, IngestFailed) else f'{failed}: {exc.details()}'}{hint}",
             err=True)
        code = 1
    finally:
        signals.requested.set()  # from here on, a signal kills at once
        alive = [n for n, p in procs.items() if p.poll() is None]
        if alive:
            _say(f"\nstopping {', '.join(alive)} (at most {stop_timeout:.0f} s; Ctrl-C again kills them now)...")
        outcome = stop_processes(
            procs, stop_timeout, kill_now=signals.kill_now.is_set, report=lambda line: _say(f"searchctl up: {line}")
        )
        killed = [n for n, how in outcome.items() if how == "killed"]
        if killed:
            why = "on a second signal" if signals.kill_now.is_set() else f"still running {stop_timeout:.0f} s after SIGTERM"
            _say(f"searchctl up: killed {', '.join(killed)} ({why})", err=True)
            code = code or (130 if signals.kill_now.is_set() else 1)
        elif procs:
            _say("stopped", err=False)
    return code


def _reachable(host: str) -> str:
    """The host part of an address this process reaches a service listening on ``host`` at."""
    if host in ("0.0.0.0", "::", "[::]", "", "localhost"):
        return LOOPBACK
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _ready(args, env, ports, keys, key_note, no_demo: bool) -> str:
    target = f"localhost:{ports['gateway']}"
    body = '{"collection": "%s", "query": "how do I run the tests?", "top_k": 3}' % args.collection
    auth = "-H \"authorization: Bearer $SEARCHCTL_API_KEY\" " if keys else ""
    metrics = (f"metrics :{env.get('GATEWAY_METRICS_PORT', '9101')}/:{env.get('RETRIEVAL_METRICS_PORT', '9102')}/"
               f":{env.get('RERANKER_METRICS_PORT', '9103')}")
    if args.host == LOOPBACK:
        where = f"gateway on {target} (everything on loopback: retrieval :{ports['retrieval']}, reranker :{ports['reranker']}, {metrics}; --host opens the gateway)"
    else:
        where = (f"gateway on {args.host}:{ports['gateway']}, OPEN to the network (--host {args.host}) with its metrics "
                 f":{env.get('GATEWAY_METRICS_PORT', '9101')} (retrieval :{ports['retrieval']}, reranker :{ports['reranker']} "
                 "and their metrics on loopback)")
    lines = [f"\nready: {where}."]
    if no_demo:  # the collection may hold nothing: say so before suggesting a search of it
        why = "--no-demo" if args.no_demo else "no configured caller may load it"
        lines.append(f"The demo corpus was not loaded ({why}): `searchctl ingest PATH --collection {args.collection}` "
                     "loads your documents.")
    lines += [
        "Try:",
        f"  grpcurl -plaintext {auth}-d '{body}' {target} search.v1.SearchService/Search",
        f"  searchctl search \"how do I run the tests?\" --collection {args.collection}",
    ]
    if key_note:
        lines.append(key_note)
    lines.append("Ctrl-C stops all three services.")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run all three services locally on embedded Qdrant",
        description="Start retrieval, reranker and gateway (every port on loopback unless --host opens the gateway) as "
        "child processes on embedded Qdrant, "
        "load the demo corpus when the collection is empty, print a ready line, restart a service that exits (with "
        "backoff; the others keep serving, Search degrades meanwhile), and stop everything on Ctrl-C "
        "(SIGINT, SIGTERM or SIGHUP): the services get SIGTERM at once and are killed if they still run after the "
        "stop timeout; a second Ctrl-C kills them at once. Killed itself, it takes its services with it (Linux). One "
        "stack per store: a second one on the same --data-dir says which process holds it and exits 1. With GATEWAY_API_KEYS_FILE or GATEWAY_API_KEYS set, "
        "retrieval and reranker require an internal token (INTERNAL_TOKEN, generated unless set) that the gateway "
        "sends, and the demo is loaded with a key whose caller has the search, write and admin scopes.",
    )
    p.add_argument("--data-dir", default=".data/qdrant", help="embedded Qdrant path unless QDRANT_PATH is set (default %(default)s)")
    p.add_argument("--collection", default="docs", help="demo collection (default %(default)s)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo corpus")
    p.add_argument("--host", default=LOOPBACK,
                   help="address the gateway (and its metrics) listens on (default %(default)s, loopback only; "
                        "0.0.0.0 opens it to the network)")
    p.add_argument("--gateway-port", type=int, default=50051)
    p.add_argument("--retrieval-port", type=int, default=50052)
    p.add_argument("--reranker-port", type=int, default=50053)
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for each service (default %(default)s)")
    p.add_argument("--max-restarts", type=int, default=10,
                   help="restarts in a row of a service that keeps exiting before everything stops (default %(default)s)")
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        help=f"seconds the services get to stop before they are killed (default: the longest *_GRACE_SECONDS + {STOP_MARGIN_S:.0f})",
    )
    p.set_defaults(func=_up)
