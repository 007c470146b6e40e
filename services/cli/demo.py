"""The demo corpus: the project's own documentation, split into passages by section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADING = re.compile(r"^(#{1,4})\s+(.*)$")


def doc_files(root: Path = REPO_ROOT) -> list[Path]:
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


def passages(path: Path, root: Path = REPO_ROOT) -> Iterator[dict]:
    """One passage per section (heading + its text); long sections split at paragraph breaks."""
    rel = path.relative_to(root).as_posix()
    title, lines, n = rel, [], 0

    def flush():
        nonlocal n
        text = "\n".join(lines).strip()
        if not text:
            return
        chunk: list[str] = []
        for para in re.split(r"\n\s*\n", text):
            if chunk and sum(len(c) for c in chunk) + len(para) > 1500:
                yield {"id": f"{rel}#{n}", "title": title, "text": "\n\n".join(chunk), "payload": {"source": rel}}
                n += 1
                chunk = []
            chunk.append(para)
        if chunk:
            yield {"id": f"{rel}#{n}", "title": title, "text": "\n\n".join(chunk), "payload": {"source": rel}}
            n += 1

    for line in path.read_text(encoding="utf-8").splitlines():
        m = HEADING.match(line)
        if m:
            yield from flush()
            title, lines = f"{rel}: {m.group(2).strip()}", []
        else:
            lines.append(line)
    yield from flush()


def demo_corpus(root: Path = REPO_ROOT) -> list[dict]:
    return [p for f in doc_files(root) for p in passages(f, root)]
