"""The values a document may hold at a payload key its collection declares for filtering.

A collection's ``filter_fields`` give a key a type (keyword, integer, float, bool) and the
engine an index of that type. A value of another type is not indexed and no filter on the key
ever matches its document: ``{"year": "2020"}`` in a collection that declares ``year`` an
integer is invisible to ``year`` filters, silently. :func:`check` refuses such a batch before
anything is embedded or written (INVALID_ARGUMENT naming the document and the key), as a
typed index would. Keys are followed as filters follow them (dots into objects, through
arrays); an array holds values of the declared type; a missing key or a null is no value.
Only new writes are checked: points already stored and snapshots are copied as they are; a
reindex checks the fields it adds (services/retrieval/reindex.py).

Retrieval checks every batch it writes (services/retrieval/store.py). The gateway checks a
request it forwards in several batches before the first (services/gateway/collections.py), so
that a refused request writes nothing there too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from services.common.errors import InvalidArgument


def check(collection: str, declared: Mapping[str, str], payloads: Sequence[Mapping[str, Any]]) -> None:
    """InvalidArgument for the first document (``documents[i]``, ``payloads[i]`` its payload as
    JSON) holding a value of another type than ``declared`` (key -> keyword|integer|float|bool)."""
    if not declared:
        return
    for i, payload in enumerate(payloads):
        found = misfit(declared, payload)
        if found is not None:
            key, kind, value = found
            raise InvalidArgument(
                f"documents[{i}].payload.{key}",
                f"collection {collection!r} declares {key!r} {with_article(kind)} field for filtering (filter_fields); "
                f"{explain(kind, value)}, and no filter on {key!r} would match this document",
            )


def misfit(declared: Mapping[str, str], payload: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """The first (key, declared type, value) of ``payload`` whose value is not of the type, or None."""
    for key, kind in declared.items():
        for value in _values(payload, key.split(".")):
            if not _fits(kind, value):
                return key, kind, value
    return None


def explain(kind: str, value: Any) -> str:
    """``the string '2020' is not an integer``."""
    return f"{describe(value)} is not {with_article(kind)}"


def _values(node: Any, path: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _values(item, path)
        return
    if not path:
        if node is not None:
            yield node
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _values(node[path[0]], path[1:])


def _fits(kind: str, value: Any) -> bool:
    if kind == "keyword":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # JSON (a protobuf Struct) carries every number as a double: 2020.0 is the integer 2020.
    return kind == "float" or isinstance(value, int) or value.is_integer()


def with_article(kind: str) -> str:
    """``an integer``, ``a keyword``: a declared type in a sentence."""
    return {"integer": "an integer", "keyword": "a keyword", "float": "a float", "bool": "a bool"}.get(kind, kind)


def describe(value: Any) -> str:
    """``the string '2020'``, ``the number 2021.5``, ``the boolean true``, ``an object``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, (int, float)):
        return f"the number {value:g}"
    return "an object"
