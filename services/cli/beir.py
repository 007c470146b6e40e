"""Streaming loaders for BEIR-format datasets (and plain JSONL document files).

A BEIR dataset directory holds ``corpus.jsonl`` (``{"_id", "title", "text",
"metadata"}`` per line), ``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv``
(a header line, then ``query-id<TAB>corpus-id<TAB>score``).

The corpus is read one line at a time and never held in memory. Plain JSONL document
files are accepted too: ``id`` or ``_id``, ``title`` (optional), ``text``, and an optional
``payload`` (or BEIR's ``metadata``) object that becomes the document's payload.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["count_corpus", "corpus_path", "iter_corpus", "load_qrels", "load_queries"]

PathLike = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset file is missing or malformed (the message names the file and line)."""


def corpus_path(path: PathLike) -> Path:
    """``path`` itself when it is a file, else ``path/corpus.jsonl``."""
    p = Path(path)
    return p / "corpus.jsonl" if p.is_dir() else p


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, record


def _record_id(path: Path, lineno: int, record: dict[str, Any]) -> str:
    value = record.get("_id", record.get("id"))
    if value is None or str(value) == "":
        raise DatasetError(f"{path}:{lineno}: missing 'id' / '_id'")
    return str(value)


def iter_corpus(path: PathLike) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "title", "text"}`` (plus ``"payload"`` when present) per document.

    ``path`` is a BEIR dataset directory or a JSONL file. Lines are read one at a time.
    """
    file = corpus_path(path)
    for lineno, record in _records(file):
        doc: dict[str, Any] = {
            "id": _record_id(file, lineno, record),
            "title": str(record.get("title") or ""),
            "text": str(record.get("text") or ""),
        }
        payload = record.get("payload", record.get("metadata"))
        if payload:
            if not isinstance(payload, dict):
                raise DatasetError(f"{file}:{lineno}: 'payload' must be a JSON object")
            doc["payload"] = payload
        yield doc


def count_corpus(path: PathLike) -> int:
    """Number of non-blank lines (documents) in the corpus, counted without parsing."""
    file = corpus_path(path)
    if not file.is_file():
        raise DatasetError(f"{file}: no such file")
    count = 0
    with file.open("rb") as fh:
        for line in fh:
            if line.strip():
                count += 1
    return count


def load_queries(path: PathLike) -> dict[str, str]:
    """``{query id: text}`` from ``path/queries.jsonl`` (or ``path`` when it is a file)."""
    p = Path(path)
    file = p / "queries.jsonl" if p.is_dir() else p
    return {_record_id(file, lineno, r): str(r.get("text") or "") for lineno, r in _records(file)}


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
