"""`searchctl ingest`: a JSONL file or a BEIR folder into a collection, on one Ingest stream
(services/cli/ingest_stream.py, the project's one way of loading documents).

When it stops before the end, it says why (the service's status and message, or what is wrong
with a line), where (the file and line, and the document's id), how many documents are
acknowledged (durable) before that point, and what to do: run the same command again only when
that can succeed (the service was away or overloaded), otherwise what to fix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.cli import beir
from services.cli.client import DEFAULT_TARGET, connection_help, unreachable
from services.cli.ingest_input import InputLine
from services.cli.ingest_stream import Checkpoint, CheckpointMismatch, IngestFailed, run
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


def explain(source: Path, failure: IngestFailed, target: str = DEFAULT_TARGET) -> list[str]:
    """What went wrong, where, what is durable, and what to do (``target``: the gateway it streamed to)."""
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
    done = f"{n} documents{' before it' if where else ''} are acknowledged (durable)"
    out.append(done + ("; nothing after it was sent" if not failure.code else ""))
    again = f"run the same command again: it resumes after those {n}" if n else "run the same command again"
    cause = unreachable(failure.code, failure.message, target)
    if cause:
        out.append(f"{cause}; then {again}")
    elif failure.transient:
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


def _ingest_cmd(args: argparse.Namespace) -> int:
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
        outcome = run(corpus, args.collection, args.target, args.batch_size, total, checkpoint, args.restart,
                      skip_bad=args.skip_bad, on_skip=skips)
        written, skipped, resumed = outcome.written, outcome.skipped, outcome.resumed
    except IngestFailed as failure:
        for line in explain(corpus, failure, args.target):
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    except CheckpointMismatch as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if checkpoint.exists():
            done = json.loads(checkpoint.read_text()).get("documents_done", 0)
            print(f"{PROG}: interrupted; {done} documents are acknowledged (durable); "
                  "run the same command again to resume", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    since = f"; resumed after {resumed} already acknowledged" if resumed else ""
    print(f"ingested {written} documents into {args.collection!r} in {elapsed:.1f} s "
          f"({written / max(elapsed, 1e-9):.1f} docs/s, one stream{since})")
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
        "naming the file, line and document; --skip-bad leaves such lines out instead, and counts them. A missing "
        "collection is created with no payload fields to filter on: to declare some, create it first with "
        "`searchctl collections create C --filter-field KEY:TYPE`.")
    p.add_argument("path", help="a JSONL file or a BEIR folder holding corpus.jsonl")
    p.add_argument("--collection", required=True)
    p.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="documents per batch, 1..1000 (default %(default)s; a batch also stays under 4 MiB)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out lines that are not documents, or that the service would refuse (e.g. neither "
                        "title nor text), print the first ones and count them, instead of stopping at the first")
    p.add_argument("--checkpoint", help="checkpoint file (default: beside the input, or under .data/ingest-checkpoints/)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and ingest from the beginning")
    connection_help(p)
    p.set_defaults(func=_ingest_cmd)
