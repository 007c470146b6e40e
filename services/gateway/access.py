"""What a caller may do: the scope each SearchService method needs, and the collections a
request touches checked against the caller's. No gRPC here (services/gateway/guard.py is the
transport); requests and responses are the generated messages.

Scopes: ``search`` (Search, GetDocuments, DescribeCollection, ListCollections, ListAliases),
``write`` (Upsert, Delete, Ingest) and ``admin`` (collections, aliases, Reindex, snapshots).
A method not in :data:`METHOD_SCOPES` needs ``admin`` (a new RPC is closed until classed).

Collections: a caller limited to some collections (names, or prefixes ending in ``*``) reaches
a collection when its *real* name is among them. An alias is checked against the collection it
points to: searching alias ``docs`` that points to ``docs-v2`` needs ``docs-v2`` (e.g. via
``docs*``). Managing an alias (create, switch, delete) also needs the alias's own name, and
Reindex every alias it will switch, so a limited caller cannot take over a name outside its
collections. Answers that name the collection that served them (Search, GetDocuments,
DescribeCollection) are checked again, so an alias switched between the check and the call, or
a page token, never serves a collection outside the caller's; the lists (ListCollections,
ListAliases) are filtered to what the caller reaches.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from services.common.errors import PermissionDenied
from services.gateway.callers import ADMIN, NOBODY, SEARCH, WRITE, Caller

#: The caller the current request is served for (set by services/gateway/guard.py): handlers
#: that decide more than the method's scope read it (an Ingest that would create its collection).
CURRENT: ContextVar[Caller] = ContextVar("gateway_caller", default=NOBODY)
#: How long the gateway trusts its copy of the alias table for a limited caller's Search and other
#: reads (answers are checked again); writes and admin calls read the table afresh.
ALIAS_CACHE_S = 1.0

#: The scope each SearchService method needs (its quota class too).
METHOD_SCOPES: dict[str, str] = {
    "Search": SEARCH,
    "GetDocuments": SEARCH,
    "DescribeCollection": SEARCH,
    "ListCollections": SEARCH,
    "ListAliases": SEARCH,
    "Upsert": WRITE,
    "Delete": WRITE,
    "Ingest": WRITE,
    "CreateCollection": ADMIN,
    "DeleteCollection": ADMIN,
    "CreateAlias": ADMIN,
    "SwitchAlias": ADMIN,
    "DeleteAlias": ADMIN,
    "Reindex": ADMIN,
    "ExportSnapshot": ADMIN,
    "RestoreSnapshot": ADMIN,
}

#: How a request uses a name: DATA reads or writes the collection it designates (an alias's
#: target); NAME creates, deletes or re-points that very name (an alias: its target too);
#: SOURCE is Reindex's source (its collection, and every alias that will be switched).
DATA, NAME, SOURCE = "data", "name", "source"


def scope_of(method: str) -> str:
    return METHOD_SCOPES.get(method, ADMIN)


@dataclass(frozen=True)
class Use:
    field: str
    value: str
    how: str


def uses(method: str, request: Any) -> list[Use]:
    """The names ``request`` (a message of ``method``; for a streamed request, its first one) uses."""
    def get(name: str) -> str:
        value = getattr(request, name, "")
        return value if isinstance(value, str) else ""

    table = {
        "Search": [("collection", DATA)], "GetDocuments": [("collection", DATA)], "Upsert": [("collection", DATA)],
        "Delete": [("collection", DATA)], "Ingest": [("collection", DATA)], "ExportSnapshot": [("collection", DATA)],
        "DescribeCollection": [("name", DATA)], "CreateCollection": [("name", NAME)], "DeleteCollection": [("name", NAME)],
        "CreateAlias": [("alias", NAME), ("collection", DATA)], "SwitchAlias": [("alias", NAME), ("collection", DATA)],
        "DeleteAlias": [("alias", NAME)], "Reindex": [("source", SOURCE), ("target", NAME)],
        "RestoreSnapshot": [("collection", NAME)],
    }
    return [Use(f, get(f), how) for f, how in table.get(method, []) if get(f)]


def require_scope(caller: Caller, method: str) -> str:
    """The scope ``method`` needs; PermissionDenied naming it when ``caller`` lacks it."""
    scope = scope_of(method)
    if not caller.may(scope):
        has = ", ".join(sorted(caller.scopes)) or "none"
        raise PermissionDenied(f"caller {caller.name!r} may not call {method}: it needs scope {scope!r} "
                               f"(the caller has: {has})")
    return scope


def needs_aliases(caller: Caller, method: str) -> bool:
    """Whether checking ``method`` for ``caller`` needs the alias table (limited callers only)."""
    return caller.restricted and method in METHOD_SCOPES and method not in ("ListCollections", "ListAliases")


def check_uses(caller: Caller, method: str, request: Any, aliases: Mapping[str, str]) -> None:
    """PermissionDenied when ``request`` uses a collection outside ``caller``'s; ``aliases`` maps
    every alias to its collection. Callers without limits pass at once."""
    if not caller.restricted:
        return
    found = uses(method, request)
    if method == "Reindex" and not any(u.field == "target" for u in found):
        raise PermissionDenied(f"caller {caller.name!r} may not reindex without naming the target: it is limited to "
                               f"{caller.describe_collections()} (name a target among them)")
    for use in found:
        _check(caller, method, use, aliases)


def _check(caller: Caller, method: str, use: Use, aliases: Mapping[str, str]) -> None:
    name = use.value
    target = aliases.get(name)  # None: not an alias (a collection, or a name not taken yet)
    real = target if target is not None else name
    outside = f"outside its collections ({caller.describe_collections()})"
    where = f"({use.field} of {method})"
    if use.how == NAME and not caller.reaches(name):
        raise PermissionDenied(f"caller {caller.name!r} may not use {name!r} {where}: it is {outside}")
    if not caller.reaches(real):
        what = "an alias of a collection" if target is not None else ""
        raise PermissionDenied(f"caller {caller.name!r} may not use {name!r} {where}: it is {what or ''}"
                               f"{' ' if what else ''}{outside}")
    if use.how == SOURCE:
        for alias, points_to in aliases.items():
            if points_to == real and not caller.reaches(alias):
                raise PermissionDenied(f"caller {caller.name!r} may not reindex {name!r}: the reindex switches alias "
                                       f"{alias!r}, which is {outside}")


def check_answer(caller: Caller, method: str, response: Any) -> Any:
    """The answer as ``caller`` may see it: PermissionDenied when it came from a collection outside
    the caller's (Search, GetDocuments, DescribeCollection); lists filtered to what it reaches."""
    if not caller.restricted:
        return response
    if method in ("Search", "GetDocuments"):
        served = response.collection
    elif method == "DescribeCollection":
        served = response.collection.name
    elif method in ("ListCollections", "ListAliases"):
        return _filtered(caller, response)
    else:
        return response
    if served and not caller.reaches(served):
        raise PermissionDenied(f"caller {caller.name!r} may not read {served!r}: it is outside its collections "
                               f"({caller.describe_collections()})")
    return response


def _filtered(caller: Caller, response: Any) -> Any:
    out = type(response)()
    out.CopyFrom(response)
    if hasattr(out, "collections"):
        kept = [c for c in out.collections if caller.reaches(c.name)]
        del out.collections[:]
        out.collections.extend(kept)
    kept_aliases = [a for a in out.aliases if caller.reaches(a.collection)]
    del out.aliases[:]
    out.aliases.extend(kept_aliases)
    return out


def audit_fields(method: str, request: Any) -> dict[str, str]:
    """What an admin call acted on, for its audit line (names only, never documents): ``collection``,
    ``alias``, ``source``, ``target``."""
    if not hasattr(request, "DESCRIPTOR"):  # none, or a body that did not parse
        return {}
    return {("collection" if u.field == "name" else u.field): u.value for u in uses(method, request)}


def require_admin_to_create(collection: str) -> None:
    """An Ingest into a collection that does not exist creates it: that needs ``admin``."""
    caller = CURRENT.get()
    if not caller.may(ADMIN):
        raise PermissionDenied(f"caller {caller.name!r} may not create collection {collection!r} (an Ingest creates a "
                               "missing collection): it needs scope 'admin'; create the collection first")


class AliasDirectory:
    """Every alias and its collection, read from retrieval (``fetch``) and kept for
    :data:`ALIAS_CACHE_S`; ``fresh=True`` reads it now. Only limited callers' requests need it."""

    def __init__(self, fetch: Callable[[], Awaitable[dict[str, str]]], ttl_s: float = ALIAS_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self._clock = clock
        self._cached: tuple[float, dict[str, str]] | None = None
        self.fetches = 0

    async def get(self, fresh: bool = False) -> dict[str, str]:
        now = self._clock()
        if fresh or self._cached is None or now - self._cached[0] > self.ttl_s:
            table = await self._fetch()
            self.fetches += 1
            self._cached = (self._clock(), table)
        return self._cached[1]

    def invalidate(self) -> None:
        self._cached = None
