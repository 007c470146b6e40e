"""`searchctl keys create`: a new caller with a random key, appended to the gateway's callers file."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

from services.common.config import ConfigError
from services.gateway import callers


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def create(path: Path, name: str, scopes: list[str], collections: list[str]) -> tuple[str, str | None]:
    """Append caller ``name`` with a new random key to ``path`` (created, mode 0600, when absent);
    return the key and a note for the user (or None). The whole new file is checked before it
    replaces the old one, atomically: a mistake changes nothing."""
    old = path.read_text() if path.exists() else ""
    note = None
    if old.strip() and not callers.is_callers_format(old):
        old = callers.legacy_as_callers(old)
        note = (f"{path} was in the one-key-per-line format: rewritten in the callers format, its keys as caller "
                f"{callers.LEGACY!r} with every scope (as before)")
    if old.strip() and any(c.name == name for c in callers.parse(old, str(path)).callers):  # a broken file: its line
        raise ConfigError(f"caller {name!r} already exists in {path}: choose another --name")
    callers.check_caller(name, scopes, collections)  # what is wrong with the flags, without a line of any file
    key = secrets.token_urlsafe(32)
    entry = callers.entry_text(name, scopes, collections, key)
    text = (old if old.endswith("\n") or not old else old + "\n") + entry
    parsed = callers.parse(text, str(path))
    if not any(c.name == name for c in parsed.callers):  # pragma: no cover - entry_text always adds it
        raise ConfigError(f"{path}: caller {name!r} was not added")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key, note


def _create_cmd(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.parent.exists():
        print(f"searchctl keys create: {path.parent} does not exist", file=sys.stderr)
        return 2
    try:
        key, note = create(path, args.name, _list(args.scopes), _list(args.collections))
    except ConfigError as exc:
        print(f"searchctl keys create: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    print(key)  # alone on stdout: KEY=$(searchctl keys create ...)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage the gateway's callers file (API keys with scopes)",
                          description="Manage GATEWAY_API_KEYS_FILE (docs/RELIABILITY.md, 'Callers, scopes and quotas'). "
                          "The gateway reloads the file when it changes (and on SIGHUP): no restart.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    c = keys_sub.add_parser(
        "create", help="add a caller with a new random key to the callers file and print the key",
        description="Append a [[caller]] entry with a new random key (32 random bytes, URL-safe) to the callers file, "
        "creating the file (mode 0600) when absent; an old one-key-per-line file is first rewritten in the callers "
        "format with the same rights. Prints the new key alone on stdout (it is stored only in the file). The new "
        "file is checked whole before it atomically replaces the old one: a name that exists or a bad scope "
        "changes nothing.")
    c.add_argument("--file", required=True, help="the callers file (GATEWAY_API_KEYS_FILE)")
    c.add_argument("--name", required=True, help="the caller's name: logs, spans, audit lines, the metric label")
    c.add_argument("--scopes", required=True, help="comma-separated, among search, write, admin")
    c.add_argument("--collections", help="comma-separated collection names or prefixes ending in * (default: every collection)")
    c.set_defaults(func=_create_cmd)
