"""`searchctl ingest`: a JSONL file or a BEIR folder into a collection, on one Ingest stream
(services/cli/ingest_stream.py) or in unary Upserts (``--unary``, services/cli/client.py).

When it stops before the end, it says why (the service's status and message, or what is wrong
with a line), where (the file and line, and the document's id), how many documents are
acknowledged (durable) before that point, and what to do: run the same command again only when
that can succeed (the service was away or overloaded), otherwise what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from services.cli import beir
from services.cli.client import DEFAULT_TARGET, _connection_help, transient
from services.cli.ingest_input import InputLine
from services.common import validation

PROG = "searchctl ingest"
#: Skipped lines printed one by one (--skip-bad); past these only the count at the end.
SHOWN_SKIPS = 20


class SkipReport:
    """The lines --skip-bad leaves out: the first SHOWN_SKIPS printed as they come, all counted."""

    def __init__(self, source: Path, out=sys.stderr) -> None:
        self.source = source
        self.out = out
        self.count = 0

    def __call__(self, line: InputLine) -> None:
        self.count += 1
        if self.count <= SHOWN_SKIPS:
            print(f"skipped {self.source}:{line.number}: {line.problem}", file=self.out)
        elif self.count == SHOWN_SKIPS + 1:
            print("(more lines skipped; the count comes at the end)", file=self.out)


def explain(source: Path, failure, unary: bool = False) -> list[str]:
    """What went wrong, where, what is durable, and what to do (``failure``: an IngestFailed)."""
    where = ""
    if failure.line is not None:
        where = f"{source}:{failure.line.number}"
        if failure.line.document is not None:
            where += f" (document {failure.line.document.id!r})"
    elif failure.batch is not None:
        where = f"{source}, the batch of {failure.batch.describe()}"
    out = [f"{failure.code}: {failure.message}" if failure.code else f"{where}: {failure.message}"]
    if failure.code and where:
        out.append(f"at {where}")
    n = failure.acknowledged
    done = f"{n} documents{' before it' if where else ''} {'were written' if unary else 'are acknowledged (durable)'}"
    out.append(done + ("; nothing after it was sent" if not failure.code else ""))
    if unary:
        again = "run the same command again (--unary starts over; documents written are replaced, not duplicated)"
    else:
        again = f"run the same command again: it resumes after those {n}" if n else "run the same command again"
    if failure.transient:
        out.append(f"the service was unavailable or overloaded; {again}")
    elif not failure.code:
        out.append(f"fix that line and {again}; or add --skip-bad to leave out lines that are not documents")
    elif failure.code == "INVALID_ARGUMENT" and failure.line is not None:
        out.append(f"fix that document and {again}; or add --skip-bad to leave out documents the service refuses")
    elif failure.code == "INVALID_ARGUMENT":
        out.append("fix what the message names and run the command again")
    elif failure.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        out.append("the gateway wants an API key that may write: set SEARCHCTL_API_KEY")
    elif failure.code == "INTERNAL":
        out.append("a fault in the service: its log has the details (search it for the trace id)")
    return out


def _unary(args: argparse.Namespace, corpus: Path, total: int, on_skip) -> tuple[int, int]:
    """(written, skipped) by unary Upserts; raises IngestFailed like the stream."""
    from services.cli.client import BatchFailed, ingest_batches
    from services.cli.ingest_input import Input
    from services.cli.ingest_stream import IngestFailed

    source = Input(corpus, args.batch_size, args.skip_bad, on_skip)
    try:
        written = asyncio.run(ingest_batches(source.batches(), args.collection, args.target, args.concurrency, total))
    except grpc.RpcError as exc:  # before any batch: the collection could not be described or made
        raise IngestFailed(exc.code().name, exc.details() or "", 0, transient=transient(exc)) from None
    except BatchFailed as exc:
        error = exc.error
        if not isinstance(error, grpc.RpcError):
            raise error from None
        field = (error.details() or "").split(":", 1)[0]
        line = exc.batch.at(field)
        raise IngestFailed(error.code().name, error.details() or "", exc.written, line=line,
                           batch=None if line else exc.batch, transient=transient(error)) from None
    if source.stopped_at is not None:
        raise IngestFailed("", source.stopped_at.problem, written, line=source.stopped_at)
    return written, source.skipped


def _ingest_cmd(args: argparse.Namespace) -> int:
    from services.cli.ingest_stream import Checkpoint, CheckpointMismatch, IngestFailed, run

    path = Path(args.path)
    if not path.exists():
        print(f"{PROG}: {path} does not exist", file=sys.stderr)
        return 2
    corpus = beir.corpus_path(path)
    if not corpus.is_file():
        print(f"{PROG}: {path} is a folder without corpus.jsonl (BEIR layout expected)", file=sys.stderr)
        return 2
    if not 1 <= args.batch_size <= validation.MAX_BATCH_DOCUMENTS:
        print(f"{PROG}: --batch-size must be 1..{validation.MAX_BATCH_DOCUMENTS}", file=sys.stderr)
        return 2
    total = beir.count_corpus(corpus)
    skips = SkipReport(corpus)
    checkpoint = Path(args.checkpoint) if args.checkpoint else Checkpoint.path_for(corpus, args.collection)
    start = time.perf_counter()
    resumed = 0
    try:
        if args.unary:
            written, skipped = _unary(args, corpus, total, skips)
        else:
            outcome = run(corpus, args.collection, args.target, args.batch_size, total, checkpoint, args.restart,
                          skip_bad=args.skip_bad, on_skip=skips)
            written, skipped, resumed = outcome.written, outcome.skipped, outcome.resumed
    except IngestFailed as failure:
        for line in explain(corpus, failure, args.unary):
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    except CheckpointMismatch as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not args.unary and checkpoint.exists():
            done = json.loads(checkpoint.read_text()).get("documents_done", 0)
            print(f"{PROG}: interrupted; {done} documents are acknowledged (durable); "
                  "run the same command again to resume", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    how = "unary Upserts" if args.unary else "one stream"
    since = f"; resumed after {resumed} already acknowledged" if resumed else ""
    print(f"ingested {written} documents into {args.collection!r} in {elapsed:.1f} s "
          f"({written / max(elapsed, 1e-9):.1f} docs/s, {how}{since})")
    if skipped:
        print(f"skipped {skipped} lines of {corpus} that are not documents the service accepts (--skip-bad)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="load a JSONL file or BEIR folder into a collection (streamed, resumable)",
        description="Stream documents (one JSON object per line: id or _id, title, text, payload or metadata; a "
        "document needs a title or a text, or both) through the gateway in batches on one Ingest stream; each batch "
        "is acknowledged once durable, and a checkpoint file beside the input (<input>.<collection>.ingest-checkpoint) "
        "records what was acknowledged: after an interruption the same command resumes there, also after lines past "
        "that point were edited. Prints the rate. Idempotent: re-running ends with exactly the file's documents. A bad "
        "line (not JSON, no id, a field of the wrong type) or a document the service refuses stops the ingest there, "
        "naming the file, line and document; --skip-bad leaves such lines out instead, and counts them.")
    p.add_argument("path", help="a JSONL file or a BEIR folder holding corpus.jsonl")
    p.add_argument("--collection", required=True)
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="documents per batch, 1..1000 (default %(default)s; a batch also stays under 4 MiB)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out lines that are not documents, or that the service would refuse (e.g. neither "
                        "title nor text), print the first ones and count them, instead of stopping at the first")
    p.add_argument("--concurrency", type=int, default=2, help="Upserts in flight with --unary (default %(default)s)")
    p.add_argument("--unary", action="store_true", help="unary Upsert batches instead of the stream (no checkpoint)")
    p.add_argument("--checkpoint", help="checkpoint file (default: beside the input, or under .data/ingest-checkpoints/)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and ingest from the beginning")
    _connection_help(p)
    p.set_defaults(func=_ingest_cmd)
