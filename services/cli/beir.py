"""Streaming loaders for BEIR-format datasets (and plain JSONL document files).

A BEIR dataset directory holds ``corpus.jsonl`` (``{"_id", "title", "text",
"metadata"}`` per line), ``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv``
(a header line, then ``query-id<TAB>corpus-id<TAB>score``).

The corpus is read one line at a time and never held in memory. Plain JSONL document
files are accepted too: ``id`` or ``_id`` (a string or an integer), ``title`` and ``text``
(strings, either may be absent), and an optional ``payload`` (or BEIR's ``metadata``) object
that becomes the document's payload. A line that is not such an object (not UTF-8, not JSON,
no id, a field of the wrong type) is reported with its file and line number:
:func:`read_corpus` yields it with the reason, :func:`iter_corpus` raises :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CorpusLine", "count_corpus", "corpus_path", "iter_corpus", "load_qrels", "load_queries", "read_corpus"]

PathLike = str | os.PathLike[str]

#: A line longer than this is not read into memory: no document of the API's limits comes near it.
MAX_LINE_BYTES = 16 * 1024 * 1024
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class DatasetError(ValueError):
    """A dataset file is missing or malformed (the message names the file and line)."""


@dataclass(frozen=True)
class CorpusLine:
    """One non-blank line of a corpus file: a document, or why it is not one."""

    number: int  # 1-based line number in the file
    end: int  # byte offset just past the line: where reading resumes
    document: dict[str, Any] | None  # {"id", "title", "text"} (+ "payload"); None when the line is bad
    problem: str = ""


def corpus_path(path: PathLike) -> Path:
    """``path`` itself when it is a file, else ``path/corpus.jsonl``."""
    p = Path(path)
    return p / "corpus.jsonl" if p.is_dir() else p


def _lines(path: Path, offset: int = 0, number: int = 0) -> Iterator[tuple[int, int, bytes | None]]:
    """``(line number, end offset, bytes)`` of every non-blank line from byte ``offset`` (which
    starts line ``number + 1``); the bytes are None for a line longer than MAX_LINE_BYTES."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with path.open("rb") as fh:
        fh.seek(offset)
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            offset += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while rest := fh.readline(1 << 20):  # the rest of the line, skipped unread
                    offset += len(rest)
                    if rest.endswith(b"\n"):
                        break
                yield number, offset, None
            elif raw.strip():
                yield number, offset, raw


def _json_object(raw: bytes | None, first: bool) -> tuple[dict[str, Any] | None, str]:
    """The JSON object a line holds, or why it holds none."""
    if raw is None:
        return None, f"the line is longer than {MAX_LINE_BYTES >> 20} MiB"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at byte {exc.start + 1} of the line)"
    if first:
        line = line.lstrip("\ufeff")  # a byte-order mark
    try:
        record = json.loads(line)
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return None, f"invalid JSON: {exc}"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {_json_type(record)}"
    if _SURROGATE_ESCAPE.search(line):  # \ud800-style escapes: paired is fine, alone is not Unicode
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            return None, "holds an unpaired surrogate escape (\\ud800-\\udfff alone is not Unicode text)"
    return record, ""


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def _record_id(record: dict[str, Any]) -> tuple[str, str]:
    """``(id, "")``, or ``("", problem)``: an id is a non-empty string or an integer."""
    value = record.get("_id", record.get("id"))
    if value is None or value == "":
        return "", "missing 'id' / '_id'"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "", f"'id' must be a string or an integer, got {_json_type(value)}"
    return str(value), ""


def _document(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    doc_id, problem = _record_id(record)
    if problem:
        return None, problem
    doc: dict[str, Any] = {"id": doc_id}
    for key in ("title", "text"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return None, f"'{key}' must be a string, got {_json_type(value)}"
        doc[key] = value or ""
    payload = record.get("payload", record.get("metadata"))
    if payload:
        if not isinstance(payload, dict):
            return None, f"'payload' must be a JSON object, got {_json_type(payload)}"
        doc["payload"] = payload
    return doc, ""


def read_corpus(path: PathLike, offset: int = 0, line: int = 0) -> Iterator[CorpusLine]:
    """Every non-blank line of the corpus, in order, as a document or with the reason it is
    not one; never raises for a line's content. ``offset`` (a :attr:`CorpusLine.end`) and
    ``line`` (its number) resume reading after that line."""
    file = corpus_path(path)
    for number, end, raw in _lines(file, offset, line):
        record, problem = _json_object(raw, number == 1)
        document = None
        if record is not None:
            document, problem = _document(record)
        yield CorpusLine(number, end, document, problem)


def iter_corpus(path: PathLike) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "title", "text"}`` (plus ``"payload"`` when present) per document.

    ``path`` is a BEIR dataset directory or a JSONL file. Lines are read one at a time; the
    first bad line raises :class:`DatasetError` naming the file and line.
    """
    file = corpus_path(path)
    for entry in read_corpus(file):
        if entry.document is None:
            raise DatasetError(f"{file}:{entry.number}: {entry.problem}")
        yield entry.document


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, _, raw in _lines(path):
        record, problem = _json_object(raw, number == 1)
        if record is None:
            raise DatasetError(f"{path}:{number}: {problem}")
        yield number, record


def _query_id(path: Path, lineno: int, record: dict[str, Any]) -> str:
    value, problem = _record_id(record)
    if problem:
        raise DatasetError(f"{path}:{lineno}: {problem}")
    return value


def count_corpus(path: PathLike) -> int:
    """Number of non-blank lines (documents) in the corpus, counted without parsing."""
    return sum(1 for _ in _lines(corpus_path(path)))


def load_queries(path: PathLike) -> dict[str, str]:
    """``{query id: text}`` from ``path/queries.jsonl`` (or ``path`` when it is a file)."""
    p = Path(path)
    file = p / "queries.jsonl" if p.is_dir() else p
    return {_query_id(file, lineno, r): str(r.get("text") or "") for lineno, r in _records(file)}


def load_qrels(path: PathLike, split: str = "test") -> dict[str, dict[str, int]]:
    """``{query id: {doc id: relevance}}`` from ``path/qrels/<split>.tsv``.

    The first line is a header (``query-id corpus-id score``) and is skipped. Relevance
    0 rows are kept (pytrec_eval treats them as judged non-relevant).
    """
    p = Path(path)
    file = p if p.is_file() else p / "qrels" / f"{split}.tsv"
    if not file.is_file():
        raise DatasetError(f"{file}: no such file (splits: {_splits(p)})")
    qrels: dict[str, dict[str, int]] = {}
    with file.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for lineno, row in enumerate(reader, 1):
            if lineno == 1 or not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise DatasetError(f"{file}:{lineno}: expected query-id, corpus-id, score")
            try:
                score = int(float(row[2]))
            except ValueError as exc:
                raise DatasetError(f"{file}:{lineno}: score {row[2]!r} is not a number") from exc
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def _splits(path: Path) -> list[str]:
    qrels_dir = path / "qrels"
    return sorted(f.stem for f in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
