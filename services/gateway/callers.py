"""The gateway's callers: who may call, with which scopes, on which collections, at what rate.

One file (``GATEWAY_API_KEYS_FILE``) names every caller. Its format (TOML, docs/RELIABILITY.md
"Callers, scopes and quotas")::

    [defaults.quota]                        # optional: the quota of callers that set none
    search = { rate = 50, burst = 100 }     # requests per second, and the bucket's size

    [[caller]]
    name = "web-frontend"                   # in logs, spans, audit lines and the metric label
    scopes = ["search"]                     # search, write, admin
    collections = ["docs", "products-*"]    # optional: names, or prefixes ending in *
    keys = ["3q8...long random..."]         # sent as 'authorization: Bearer <key>'
    identities = ["spiffe://cluster.local/ns/web/sa/frontend"]   # mTLS URI SANs
    quota.search = { rate = 20, burst = 40 }

The old format, one key per line (``#`` comments), still loads: its keys belong to one caller,
``legacy``, with every scope on every collection and no quota (the start-up log says so).
``GATEWAY_API_KEYS`` adds callers inline: comma-separated keys (``legacy``), or the TOML text
itself (tests). A mistake names the line and stops start-up; on a reload it keeps the rules in
force (:class:`CallersSource`). Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest` against every key (no early exit) and never logged.

No gRPC here: :mod:`services.gateway.guard` is the transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from services.common import validation
from services.common.config import ConfigError
from services.common.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib

log = logging.getLogger(__name__)

SEARCH, WRITE, ADMIN = "search", "write", "admin"
#: Every scope, in the order the docs list them (also the method classes quotas are set for).
SCOPES: tuple[str, ...] = (SEARCH, WRITE, ADMIN)
#: The caller every key of the old one-key-per-line format belongs to.
LEGACY = "legacy"
#: The caller of every request while no caller is configured (authentication off).
ANONYMOUS = "anonymous"
#: Metric label of a request from no configured caller (keeps the label set bounded).
OTHER = "other"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_KEY = re.compile(r"[\x21-\x7e]+")
MIN_KEY_CHARS = 16
_CALLER_HEADER = re.compile(r"^\s*\[\[\s*caller\s*\]\]")
_CALLER_FIELDS = {"name", "scopes", "collections", "keys", "identities", "quota"}


@dataclass(frozen=True)
class Quota:
    """A token bucket: ``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: float


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]
    #: Collection names and prefixes (``logs-*``) the caller reaches; () = every collection.
    collections: tuple[str, ...] = ()
    #: Quota per method class (a scope); a class without one is not rate limited.
    quotas: Mapping[str, Quota] = field(default_factory=lambda: MappingProxyType({}))
    #: Line of the caller's entry in its file (0: inline or legacy).
    line: int = 0
    #: False for :data:`ANONYMOUS` (authentication off): its metric label is :data:`OTHER`.
    configured: bool = True

    @property
    def restricted(self) -> bool:
        return bool(self.collections)

    @property
    def label(self) -> str:
        """The value of the ``caller`` metric label."""
        return self.name if self.configured else OTHER

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def reaches(self, collection: str) -> bool:
        """Whether ``collection`` (a real collection's name, not an alias) is among the caller's."""
        if not self.collections:
            return True
        return any(p == collection or (p.endswith("*") and collection.startswith(p[:-1])) for p in self.collections)

    def describe_collections(self) -> str:
        return ", ".join(self.collections) if self.collections else "every collection"


#: The caller of every request while authentication is off: every scope, no limit, no quota.
NOBODY = Caller(ANONYMOUS, frozenset(SCOPES), configured=False)


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class CallerBook:
    """The callers in force, looked up by key (constant time) or by certificate identity."""

    def __init__(self, callers: Sequence[Caller], keys: Sequence[tuple[str, Caller]] = (),
                 identities: Mapping[str, Caller] | None = None, legacy_keys: int = 0, source: str = "") -> None:
        self.callers = tuple(callers)
        self._keys = [(_digest(k), c) for k, c in keys]
        self._identities = dict(identities or {})
        self.legacy_keys = legacy_keys
        self.source = source
        self.by_name = {c.name: c for c in self.callers}

    @property
    def enabled(self) -> bool:
        """Whether callers must identify themselves (any caller configured)."""
        return bool(self.callers)

    @property
    def key_count(self) -> int:
        return len(self._keys)

    @property
    def identity_count(self) -> int:
        return len(self._identities)

    def by_key(self, presented: str | bytes) -> Caller | None:
        """The caller ``presented`` belongs to; every key is compared, whatever matches."""
        candidate = _digest(presented)
        found = None
        for known, caller in self._keys:
            if hmac.compare_digest(candidate, known):
                found = caller
        return found

    def by_identity(self, uris: Iterable[str]) -> Caller | None:
        """The caller of the first of a certificate's URI SANs that is configured."""
        for uri in uris:
            caller = self._identities.get(uri)
            if caller is not None:
                return caller
        return None

    def summary(self) -> dict[str, Any]:
        """For the log: counts and names, never a key."""
        return {"callers": sorted(self.by_name), "keys": self.key_count, "identities": self.identity_count,
                "legacy_keys": self.legacy_keys}


EMPTY = CallerBook(())


# --- the file -------------------------------------------------------------------------------


@dataclass
class CallersFile:
    """What one file (or inline text) defines, before the callers are joined into a book."""

    callers: list[Caller] = field(default_factory=list)
    keys: list[tuple[str, Caller]] = field(default_factory=list)
    identities: dict[str, Caller] = field(default_factory=dict)
    legacy_keys: list[str] = field(default_factory=list)
    #: Where each key and identity was given, for duplicate errors.
    origin: dict[str, str] = field(default_factory=dict)


def is_callers_format(text: str) -> bool:
    """A file with a TOML table (a line starting with ``[``) is the callers format; otherwise
    every line is one key (the old format)."""
    return any(line.lstrip().startswith("[") for line in text.splitlines())


def parse(text: str, source: str) -> CallersFile:
    """Parse a callers file or inline text; :class:`ConfigError` names ``source`` and the line."""
    if is_callers_format(text):
        return _parse_toml(text, source)
    return _parse_legacy(text.splitlines(), source)


def _parse_legacy(lines: Sequence[str], source: str, numbered: bool = True) -> CallersFile:
    parsed = CallersFile()
    for number, raw in enumerate(lines, 1):
        key = raw.strip()
        if not key or key.startswith("#"):
            continue
        where = f"{source} line {number}" if numbered else source
        if not _KEY.fullmatch(key):
            raise ConfigError(f"{where}: a key is one word of printable characters, one per line "
                              "(or use the callers format: docs/RELIABILITY.md, 'Callers, scopes and quotas')")
        parsed.legacy_keys.append(key)
    return parsed


def parse_inline(text: str, source: str = "GATEWAY_API_KEYS") -> CallersFile:
    """``GATEWAY_API_KEYS``: the callers format's TOML, or keys separated by commas."""
    if is_callers_format(text):
        return _parse_toml(text, source)
    return _parse_legacy(text.split(","), source, numbered=False)


def _parse_toml(text: str, source: str) -> CallersFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _CALLER_HEADER.match(line)]
    unknown = sorted(set(data) - {"caller", "defaults"})
    if unknown:
        raise ConfigError(f"{source} line {_line_of(text, unknown[0])}: unknown table or key {unknown[0]!r} "
                          "(expected [[caller]] entries and an optional [defaults] table)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - {"quota"}:
        raise ConfigError(f"{source} line {_line_of(text, 'defaults')}: [defaults] holds only 'quota'")
    default_quotas = _quotas(defaults.get("quota", {}), f"{source} line {_line_of(text, 'defaults')}")
    entries = data.get("caller", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: no [[caller]] entry")
    parsed = CallersFile()
    for index, entry in enumerate(entries):
        line = lines[index] if index < len(lines) else 0
        where = f"{source} line {line or '?'}"
        caller = _caller(entry, where, default_quotas, line)
        if any(c.name == caller.name for c in parsed.callers):
            raise ConfigError(f"{where}: caller {caller.name!r} is defined twice (names are unique)")
        parsed.callers.append(caller)
        for key in _strings(entry, "keys", where):
            if not _KEY.fullmatch(key):
                raise ConfigError(f"{where}: caller {caller.name!r}: a key is printable characters without blanks")
            if len(key) < MIN_KEY_CHARS:
                log.warning("caller %r has a key shorter than %d characters: easy to guess (`searchctl keys create` "
                            "makes 43)", caller.name, MIN_KEY_CHARS, extra={"source": source})
            _claim(parsed, key, where, f"caller {caller.name!r}", "the same key")
            parsed.keys.append((key, caller))
        for uri in _strings(entry, "identities", where):
            if "://" not in uri or any(ch.isspace() for ch in uri):
                raise ConfigError(f"{where}: caller {caller.name!r}: identity {uri!r} is not a URI "
                                  "(a certificate's URI SAN, e.g. spiffe://cluster.local/ns/NS/sa/ACCOUNT)")
            _claim(parsed, "identity:" + uri, where, f"caller {caller.name!r}", f"identity {uri!r}")
            parsed.identities[uri] = caller
        if not entry.get("keys") and not entry.get("identities"):
            raise ConfigError(f"{where}: caller {caller.name!r} has neither keys nor identities: nobody could use it")
    return parsed


def _line_of(text: str, key: str) -> int | str:
    pattern = re.compile(rf"^\s*\[*\s*{re.escape(key)}\b")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return "?"


def _claim(parsed: CallersFile, token: str, where: str, owner: str, what: str) -> None:
    if token in parsed.origin:
        raise ConfigError(f"{where}: {owner} has {what} as {parsed.origin[token]}: a credential names one caller")
    parsed.origin[token] = f"{owner} ({where})"


def _at(where: str, message: str) -> str:
    """``message`` prefixed with where it was found (a file's line), if anywhere."""
    return f"{where}: {message}" if where else message


def check_caller(name: str, scopes: Sequence[str], collections: Sequence[str]) -> None:
    """ConfigError, saying what is wrong without a location, unless an entry of caller ``name``
    with these scopes and collections would be valid (``searchctl keys create`` checks its flags)."""
    _caller({"name": name, "scopes": list(scopes), "collections": list(collections)}, "", {}, 0)


def _strings(entry: Mapping[str, Any], name: str, where: str) -> list[str]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(_at(where, f"{name} must be a list of strings, e.g. {name} = [\"...\"]"))
    return value


def _caller(entry: Any, where: str, default_quotas: Mapping[str, Quota], line: int) -> Caller:
    if not isinstance(entry, dict):
        raise ConfigError(_at(where, "a [[caller]] entry is a table"))
    unknown = sorted(set(entry) - _CALLER_FIELDS)
    if unknown:
        raise ConfigError(_at(where, f"unknown field {unknown[0]!r} (a caller has {', '.join(sorted(_CALLER_FIELDS))})"))
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(_at(where, f"name must be 1-63 letters, digits, '.', '_' or '-' (got {name!r})"))
    if name in (ANONYMOUS, OTHER):
        raise ConfigError(_at(where, f"{name!r} is reserved (it names requests from no configured caller)"))
    scopes = _strings(entry, "scopes", where)
    if not scopes:
        raise ConfigError(_at(where, f"caller {name!r} needs scopes, some of {', '.join(SCOPES)}"))
    wrong = [s for s in scopes if s not in SCOPES]
    if wrong:
        raise ConfigError(_at(where, f"caller {name!r}: unknown scope {wrong[0]!r} (scopes: {', '.join(SCOPES)})"))
    collections = collection_patterns(_strings(entry, "collections", where), _at(where, f"caller {name!r}"))
    quotas = {**default_quotas, **_quotas(entry.get("quota", {}), _at(where, f"caller {name!r}"))}
    return Caller(name, frozenset(scopes), collections, MappingProxyType(quotas), line)


def collection_patterns(values: Iterable[str], where: str) -> tuple[str, ...]:
    """Collection names and prefixes (``logs-*``), each checked like a collection name."""
    patterns = []
    for value in values:
        stem = value[:-1] if value.endswith("*") else value
        if value != "*":
            try:
                validation.collection_name(stem, "collections")
            except InvalidArgument as exc:
                raise ConfigError(_at(where, f"collections: {value!r}: {exc.description}")) from exc
        patterns.append(value)
    return () if "*" in patterns else tuple(patterns)


def _quotas(value: Any, where: str) -> dict[str, Quota]:
    if not isinstance(value, dict):
        raise ConfigError(_at(where, f"quota is a table of method classes, e.g. quota.search = {{ rate = 20, burst = 40 }}"))
    quotas = {}
    for klass, spec in value.items():
        if klass not in SCOPES:
            raise ConfigError(_at(where, f"quota for unknown method class {klass!r} (classes: {', '.join(SCOPES)})"))
        if not isinstance(spec, dict) or set(spec) - {"rate", "burst"} or "rate" not in spec:
            raise ConfigError(_at(where, f"quota.{klass} = {{ rate = <requests per second>, burst = <requests> }}"))
        rate, burst = spec["rate"], spec.get("burst", max(1.0, math.ceil(spec["rate"])) if _number(spec["rate"]) else 0)
        if not _number(rate) or rate <= 0 or not _number(burst) or burst < 1:
            raise ConfigError(_at(where, f"quota.{klass}: rate must be > 0 and burst >= 1 (got rate={rate!r}, burst={burst!r})"))
        quotas[klass] = Quota(float(rate), float(burst))
    return quotas


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build(parts: Sequence[CallersFile], source: str) -> CallerBook:
    """Join the callers of the file and the inline text into one book (names and credentials unique)."""
    callers: list[Caller] = []
    keys: list[tuple[str, Caller]] = []
    identities: dict[str, Caller] = {}
    seen: set[str] = set()
    legacy = [k for part in parts for k in part.legacy_keys]
    if legacy:
        caller = Caller(LEGACY, frozenset(SCOPES))
        callers.append(caller)
        keys += [(k, caller) for k in legacy]
    for part in parts:
        for caller in part.callers:
            if caller.name in {c.name for c in callers}:
                raise ConfigError(f"caller {caller.name!r} is defined twice (in {source})")
            callers.append(caller)
        keys += part.keys
        for uri, caller in part.identities.items():
            if uri in identities:
                raise ConfigError(f"identity {uri!r} names two callers (in {source})")
            identities[uri] = caller
    for key, _ in keys:
        if key in seen:
            raise ConfigError(f"a key is given twice (in {source}); each key names one caller")
        seen.add(key)
    return CallerBook(callers, keys, identities, legacy_keys=len(legacy), source=source)


def load(keys_file: str | None, inline: str | None) -> CallerBook:
    """The callers of ``GATEWAY_API_KEYS_FILE`` and ``GATEWAY_API_KEYS``; an empty book (auth off)
    when neither is set. A configured file that is missing or holds no caller is an error: a
    typo in the path must not turn authentication off."""
    parts = []
    sources = []
    if keys_file:
        parts.append(read_file(keys_file))
        sources.append(f"GATEWAY_API_KEYS_FILE={keys_file}")
    if inline and inline.strip():
        parts.append(parse_inline(inline))
        sources.append("GATEWAY_API_KEYS")
    return build(parts, " and ".join(sources))


def read_file(keys_file: str) -> CallersFile:
    source = f"GATEWAY_API_KEYS_FILE={keys_file}"
    try:
        text = Path(keys_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    parsed = parse(text, source)
    if not parsed.callers and not parsed.legacy_keys:
        raise ConfigError(f"{source} holds no key (docs/RELIABILITY.md, 'Callers, scopes and quotas'; # starts a comment)")
    return parsed


def announce(book: CallerBook, reloaded: bool = False) -> None:
    """The log lines of a (re)loaded book: counts and names, and once about legacy keys."""
    if not book.enabled:
        return
    log.info("callers reloaded" if reloaded else "callers loaded", extra={"source": book.source, **book.summary()})
    if book.legacy_keys and not reloaded:
        log.warning(
            "%d API key(s) in the one-key-per-line format: caller %r, every scope on every collection, no quota; "
            "give each its caller name and scopes (docs/RELIABILITY.md, 'Callers, scopes and quotas')",
            book.legacy_keys, LEGACY,
        )


# --- reload ---------------------------------------------------------------------------------


class CallersSource:
    """The book in force, reloaded from ``GATEWAY_API_KEYS_FILE`` on :meth:`reload` (SIGHUP) and
    when :meth:`watch` sees its content change. A file that does not load leaves the book in
    force as it is and logs an error naming the line."""

    def __init__(self, keys_file: str | None, inline: str | None) -> None:
        self.keys_file, self.inline = keys_file, inline
        self.book = load(keys_file, inline)  # ConfigError: start-up stops
        self._seen = self._content()
        self.reloads = 0
        self.failures = 0
        self.listeners: list = []

    def _content(self) -> bytes | None:
        if not self.keys_file:
            return None
        try:
            return hashlib.sha256(Path(self.keys_file).read_bytes()).digest()
        except OSError:
            return None

    def reload(self) -> bool:
        """Load the file again; True when the new book is in force."""
        if not self.keys_file:
            return False
        self._seen = self._content()
        try:
            book = load(self.keys_file, self.inline)
        except ConfigError as exc:
            self.failures += 1
            log.error("callers file not reloaded, the rules in force stay: %s", exc, extra={"source": self.keys_file})
            for listener in self.listeners:
                listener(None)
            return False
        self.book = book
        self.reloads += 1
        announce(book, reloaded=True)
        for listener in self.listeners:
            listener(book)
        return True

    def changed(self) -> bool:
        return self.keys_file is not None and self._content() != self._seen

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the file's content changes (checked every ``interval_s``)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                self.reload()


# --- `searchctl keys create` ----------------------------------------------------------------


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def entry_text(name: str, scopes: Sequence[str], collections: Sequence[str], key: str) -> str:
    """A ``[[caller]]`` entry as text, to append to a callers file."""
    lines = ["", "[[caller]]", f"name = {_toml_string(name)}",
             "scopes = [" + ", ".join(_toml_string(s) for s in scopes) + "]"]
    if collections:
        lines.append("collections = [" + ", ".join(_toml_string(c) for c in collections) + "]")
    lines.append(f"keys = [{_toml_string(key)}]")
    return "\n".join(lines) + "\n"


def legacy_as_callers(text: str) -> str:
    """An old one-key-per-line file rewritten in the callers format, with the same rights: its keys
    become caller ``legacy`` with every scope; comments are kept."""
    parsed = _parse_legacy(text.splitlines(), "the file")
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    head = "\n".join(comments) + ("\n" if comments else "")
    body = ["", "[[caller]]", f"name = {_toml_string(LEGACY)}", "scopes = [" + ", ".join(_toml_string(s) for s in SCOPES) + "]",
            "keys = [" + ", ".join(_toml_string(k) for k in parsed.legacy_keys) + "]"]
    return head + "\n".join(body) + "\n" if parsed.legacy_keys else head
