"""`searchctl up`: the whole stack on one machine, on embedded Qdrant; Ctrl-C stops it all.

Once the stack is ready, a service that exits is restarted with backoff while the others keep
serving (:mod:`services.cli.supervisor`); one that keeps failing stops everything.

Stopping is bounded: the first SIGINT or SIGTERM sends SIGTERM to the three services at once
and waits for them together, saying what it still waits for; what still runs after the
longest ``*_GRACE_SECONDS`` plus :data:`STOP_MARGIN_S` is killed, and a second signal kills
at once. The handlers are installed at start, whatever was inherited: a process started in
the background by a non-interactive shell inherits SIGINT ignored, and Python keeps that.

Retrieval and reranker listen on loopback only. When the gateway requires API keys
(``GATEWAY_API_KEYS_FILE`` / ``GATEWAY_API_KEYS``), they also require an internal token the
gateway sends (``INTERNAL_TOKEN``, generated for the run unless one is configured), and the
demo loader calls the gateway with a configured key whose caller has the search, write and
admin scopes on the demo collection (``$SEARCHCTL_API_KEY`` when it is one); without such a
caller the demo is not loaded, and the ready line says why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading

import grpc

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.procs import stop_processes, wait_serving
from services.cli.supervisor import Supervisor
from services.common import config as cfg

START_ORDER = ("retrieval", "reranker", "gateway")
INTERNAL = ("retrieval", "reranker")
LOOPBACK = "127.0.0.1"
#: Seconds `searchctl up` waits past the services' longest grace period before killing them.
STOP_MARGIN_S = 5.0


class StopSignals:
    """SIGINT and SIGTERM handlers: the first signal asks for a stop (``requested``); any signal
    once a stop was asked for (by a signal, or because a service exited) asks to kill at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

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


async def _until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.1)


async def _load_demo(target: str, collection: str, api_key: str | None) -> str:
    from services.cli.client import ingest, open_channel
    from services.cli.demo import demo_corpus

    async with open_channel(target, api_key) as channel:
        try:
            reply = await pb_grpc.SearchServiceStub(channel).DescribeCollection(
                pb.DescribeCollectionRequest(name=collection), timeout=30
            )
            if reply.collection.document_count > 0:
                return f"collection {collection!r} already holds documents; not reloading the demo corpus"
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
    docs = demo_corpus()
    written = await ingest(docs, collection, target, batch_size=32, total=len(docs), api_key=api_key)
    return f"loaded {written} demo passages (the project's own docs) into {collection!r}"


def _demo(target: str, collection: str, api_key: str | None, stop: threading.Event) -> str | None:
    """Load the demo corpus unless ``stop`` is set first (then None)."""

    async def race() -> str | None:
        loading = asyncio.ensure_future(_load_demo(target, collection, api_key))
        stopping = asyncio.ensure_future(_until(stop))
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            return None
        return loading.result()

    return asyncio.run(race())


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
    from services.cli.client import API_KEY_ENV

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

    procs: dict[str, subprocess.Popen] = {}
    argvs: dict[str, list[str]] = {}
    code = 0
    try:
        for name in START_ORDER:
            if signals.requested.is_set():
                break
            argv = argvs[name] = [sys.executable, "-m", "services.cli", "serve", name, "--port", str(ports[name])]
            if name in INTERNAL:
                argv += ["--host", LOOPBACK]
            procs[name] = subprocess.Popen(argv, env=env)
        for name in START_ORDER:
            if name in procs and not wait_serving(
                f"{LOOPBACK}:{ports[name]}", args.start_timeout, watch=procs, stop=signals.requested
            ):
                break
        target = f"{LOOPBACK}:{ports['gateway']}"
        if not signals.requested.is_set():
            if token_note:
                _say(token_note)
            if not no_demo:
                loaded = _demo(target, args.collection, api_key, signals.requested)
                if loaded:
                    _say(loaded)
        if not signals.requested.is_set():
            _say(_ready(args, env, ports, keys, key_note))
            # A service that exits is restarted with backoff; the others keep serving (supervisor.py).
            supervisor = Supervisor(procs, argvs, {n: f"{LOOPBACK}:{p}" for n, p in ports.items()},
                                    spawn=lambda argv: subprocess.Popen(argv, env=env), say=_say,
                                    max_restarts=args.max_restarts)
            gave_up = supervisor.watch(signals.requested)
            if gave_up:
                _say(f"searchctl up: {gave_up}; stopping the others", err=True)
                code = 1
    except (TimeoutError, RuntimeError) as exc:
        _say(f"searchctl up: {exc}", err=True)
        code = 1
    except grpc.aio.AioRpcError as exc:
        hint = " (set SEARCHCTL_API_KEY to one of the gateway's keys, or use --no-demo)" if exc.code() == grpc.StatusCode.UNAUTHENTICATED else ""
        _say(f"searchctl up: loading the demo corpus failed: {exc.code().name}: {exc.details()}{hint}", err=True)
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


def _ready(args, env, ports, keys, key_note) -> str:
    target = f"localhost:{ports['gateway']}"
    body = '{"collection": "%s", "query": "how do I run the tests?", "top_k": 3}' % args.collection
    auth = "-H \"authorization: Bearer $SEARCHCTL_API_KEY\" " if keys else ""
    lines = [
        f"\nready: gateway on {target} (retrieval :{ports['retrieval']}, reranker :{ports['reranker']} on loopback; "
        f"metrics :{env.get('GATEWAY_METRICS_PORT', '9101')}/:{env.get('RETRIEVAL_METRICS_PORT', '9102')}/"
        f":{env.get('RERANKER_METRICS_PORT', '9103')}). Try:",
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
        description="Start retrieval, reranker (both on loopback) and gateway as child processes on embedded Qdrant, "
        "load the demo corpus when the collection is empty, print a ready line, restart a service that exits (with "
        "backoff; the others keep serving, Search degrades meanwhile), and stop everything on Ctrl-C "
        "(SIGINT or SIGTERM): the services get SIGTERM at once and are killed if they still run after the "
        "stop timeout; a second Ctrl-C kills them at once. With GATEWAY_API_KEYS_FILE or GATEWAY_API_KEYS set, "
        "retrieval and reranker require an internal token (INTERNAL_TOKEN, generated unless set) that the gateway "
        "sends, and the demo is loaded with a key whose caller has the search, write and admin scopes.",
    )
    p.add_argument("--data-dir", default=".data/qdrant", help="embedded Qdrant path unless QDRANT_PATH is set (default %(default)s)")
    p.add_argument("--collection", default="docs", help="demo collection (default %(default)s)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo corpus")
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
