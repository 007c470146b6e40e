"""What `searchctl ingest` reads: the documents of a JSONL file (or a BEIR folder's
corpus.jsonl), in batches, each document with the number of its line.

Each non-blank line is read by services/cli/beir.py and becomes a ``Document`` message here
(:func:`to_document`, the one conversion from a document's dict). A line that is not a
document (not UTF-8, not JSON, no id, a field of the wrong type, a payload protobuf cannot
hold, larger than a batch may be) is a *bad line*. Without ``skip_bad`` the input ends at the
first one: the documents before it are sent, nothing after it. With ``skip_bad`` it is left
out and counted, and so is a document the API would refuse (services/common/validation.py,
the rule the services apply, e.g. one with neither title nor text); without ``skip_bad`` such
a document is sent and the service's refusal names it.

A batch holds at most ``batch_size`` documents and MAX_BATCH_BYTES, and never one id twice
(the service refuses a batch that repeats an id): a repeated id starts the next batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from search.v1 import common_pb2
import services.cli.beir as beir
from services.common import validation
from services.common.errors import InvalidArgument

#: A batch's documents, serialized: well under the services' 16 MiB message limit. No document
#: within the API's limits (services/common/validation.py) comes near it.
MAX_BATCH_BYTES = 4 << 20
_DOCUMENT_FIELD = re.compile(r"^documents\[(\d+)\]")


def to_document(doc: dict[str, Any]) -> common_pb2.Document:
    """``{"id", "title", "text", "payload"}`` (title, text and payload optional) as a Document."""
    message = common_pb2.Document(id=str(doc["id"]), title=doc.get("title") or "", text=doc.get("text") or "")
    if doc.get("payload"):
        json_format.ParseDict(doc["payload"], message.payload)
    return message


@dataclass(frozen=True)
class InputLine:
    """One non-blank line of the input: a document, or why it is not one."""

    number: int  # 1-based line number (for documents given as a list: the position)
    end: int  # byte offset just past the line: where reading resumes
    document: common_pb2.Document | None
    problem: str = ""
    size: int = 0  # the document's serialized size


@dataclass(frozen=True)
class Batch:
    """Documents sent together (one Ingest message or one Upsert), with their lines."""

    lines: tuple[InputLine, ...]

    @property
    def documents(self) -> list[common_pb2.Document]:
        return [line.document for line in self.lines]

    @property
    def end(self) -> int:
        return self.lines[-1].end

    @property
    def last_line(self) -> int:
        return self.lines[-1].number

    def describe(self) -> str:
        first, last = self.lines[0].number, self.lines[-1].number
        return f"line {first}" if first == last else f"lines {first}-{last}"

    def at(self, field: str) -> InputLine | None:
        """The line of the document a field path names (``documents[3].text`` -> the 4th)."""
        match = _DOCUMENT_FIELD.match(field)
        if match and int(match.group(1)) < len(self.lines):
            return self.lines[int(match.group(1))]
        return None

    @classmethod
    def of(cls, documents: Sequence[dict[str, Any]], first: int = 1) -> Batch:
        """A batch of documents given as dicts; a document's 'line' is its position from ``first``."""
        return cls(tuple(InputLine(first + i, 0, to_document(d)) for i, d in enumerate(documents)))


def read_input(path: str | Path, offset: int = 0, line: int = 0) -> Iterator[InputLine]:
    """Every non-blank line from byte ``offset`` (just past line ``line``) on, as a Document or
    with the reason it is not one; never raises for what a line holds."""
    for entry in beir.read_corpus(path, offset, line):
        if entry.document is None:
            yield InputLine(entry.number, entry.end, None, entry.problem)
            continue
        try:
            document = to_document(entry.document)
        except (ValueError, TypeError, OverflowError, RecursionError, json_format.Error) as exc:
            yield InputLine(entry.number, entry.end, None, f"'payload' cannot be stored: {exc}")
            continue
        size = document.ByteSize()
        if size > MAX_BATCH_BYTES:
            yield InputLine(entry.number, entry.end, None,
                            f"the document is {size / 2**20:.1f} MiB; a batch carries at most {MAX_BATCH_BYTES >> 20} MiB "
                            f"(a text is at most {validation.MAX_TEXT_CHARS:,} characters)")
            continue
        yield InputLine(entry.number, entry.end, document, size=size)


def refusal(document: common_pb2.Document) -> str:
    """Why the API would refuse ``document`` ("" when it would not): the services' own rule."""
    try:
        validation.document(document)
    except InvalidArgument as exc:
        return exc.message
    return ""


class Input:
    """An input file read in batches from a position on; a bad line ends it, or is skipped."""

    def __init__(self, path: str | Path, batch_size: int, skip_bad: bool = False,
                 on_skip: Callable[[InputLine], None] = lambda line: None) -> None:
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.path = beir.corpus_path(path)
        self.batch_size = min(batch_size, validation.MAX_BATCH_DOCUMENTS)
        self.skip_bad = skip_bad
        self.on_skip = on_skip
        #: Bad lines left out so far (a line read again after a resumed stream counts once).
        self.skipped = 0
        self._last_skipped = 0
        #: The bad line that ended the input (without skip_bad), once read.
        self.stopped_at: InputLine | None = None

    def batches(self, offset: int = 0, line: int = 0) -> Iterator[Batch]:
        """Batches of the documents after line ``line`` (which ends at byte ``offset``)."""
        self.stopped_at = None
        return _batches(self._documents(offset, line), self.batch_size)

    def _documents(self, offset: int, line: int) -> Iterator[InputLine]:
        for entry in read_input(self.path, offset, line):
            problem = entry.problem or (refusal(entry.document) if self.skip_bad else "")
            if not problem:
                yield entry
            elif self.skip_bad:
                if entry.number > self._last_skipped:
                    self.skipped += 1
                    self._last_skipped = entry.number
                    self.on_skip(replace(entry, document=None, problem=problem))
            else:
                self.stopped_at = entry
                return


def _batches(lines: Iterable[InputLine], batch_size: int) -> Iterator[Batch]:
    batch: list[InputLine] = []
    ids: set[str] = set()
    size = 0
    for entry in lines:
        if batch and (len(batch) >= batch_size or size + entry.size > MAX_BATCH_BYTES or entry.document.id in ids):
            yield Batch(tuple(batch))
            batch, ids, size = [], set(), 0
        batch.append(entry)
        ids.add(entry.document.id)
        size += entry.size
    if batch:
        yield Batch(tuple(batch))
