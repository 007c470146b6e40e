"""`searchctl`: run the services, load documents, search, fetch models, evaluate, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys

from services.common import config as cfg

SERVICES = {
    "gateway": ("services.gateway.config:GatewayConfig", "services.gateway.server:GatewayService"),
    "retrieval": ("services.retrieval.config:RetrievalConfig", "services.retrieval.server:RetrievalService"),
    "reranker": ("services.reranker.config:RerankerConfig", "services.reranker.server:RerankerService"),
}
# Subcommands that live in their own modules, each with register(subparsers).
COMMAND_MODULES = (
    "services.cli.up", "services.cli.ingest_cmd", "services.cli.search_cmd", "services.cli.collections_cmd", "services.cli.snapshot_cmd",
    "services.cli.migrate", "services.cli.models_cmd", "services.cli.store_cmd", "services.cli.evaluate",
    "services.cli.bench", "services.cli.keys_cmd",
)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _serve(args: argparse.Namespace) -> int:
    from services.common.logs import configure_logging
    from services.common.server import Endpoint, run

    config_cls = _load(SERVICES[args.service][0])
    service_cls = _load(SERVICES[args.service][1])
    config = cfg.load(config_cls, args)
    configure_logging(args.service, config.log_level)
    endpoint = Endpoint(config.host, config.port, config.metrics_port, config.grace_seconds)
    asyncio.run(run(service_cls(config), endpoint))
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    from services.common import security

    for name, (config_path, _) in SERVICES.items():
        print(f"### {name}\n\n{cfg.markdown_table(_load(config_path))}\n")
    print(f"### security (every service; environment only)\n\n{security.markdown_table()}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchctl",
        description="gRPC search platform: gateway, retrieval (Qdrant) and reranker (ONNX cross-encoder).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one service in the foreground", description="Run one service.")
    serve_sub = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, (config_path, _) in SERVICES.items():
        p = serve_sub.add_parser(
            name,
            help=f"run the {name} service",
            description=f"Run the {name} service. Every flag can also be set by the environment variable shown.",
        )
        cfg.add_arguments(p, _load(config_path))
        p.set_defaults(func=_serve, service=name)

    docs = sub.add_parser("config-docs", help="print every service's configuration table (Markdown)")
    docs.set_defaults(func=_config_docs)

    # A service's image installs only its service's dependency group (pyproject.toml), so a
    # command whose libraries are not installed here is left out and named in --help.
    missing = []
    for module in COMMAND_MODULES:
        try:
            register = getattr(importlib.import_module(module), "register", None)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            if not exc.name or exc.name.split(".")[0] in ("services", "search"):
                raise
            missing.append(f"{module.rsplit('.', 1)[-1]} (needs {exc.name}: pip install '.[cli]')")
            continue
        if register is not None:  # tests/e2e/test_cli.py checks every command is listed
            register(sub)
    if missing:
        parser.epilog = "Not installed here: " + "; ".join(missing) + "."
    return parser


def take_sigint() -> None:
    """Make Ctrl-C work however searchctl was started: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python keeps that. (`serve` and `up`
    install their own SIGINT/SIGTERM handlers as soon as they start; this covers the imports
    before.)"""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    take_sigint()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except cfg.ConfigError as exc:
        parser.exit(2, f"searchctl: {exc}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
