"""Scenarios the embedded-store tests run in a process of their own, because they end it
(SIGKILL mid-build, mid-swap) or need a filesystem of their own (a small tmpfs in a private
mount namespace). Each prints one JSON line of facts for the test to check.

    python -m tests.store.edge_scenarios NAME DATA_DIR [ARG]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from services.common.errors import ResourceExhausted
from services.retrieval.backends import base
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.edge_build import CURRENT_FILE, allocated_bytes, current_shard
from services.retrieval.backends.edge_tuning import ShardTuning

DIM = 384
#: Every segment gets an HNSW graph, so a small collection is really built.
INDEXED = ShardTuning(indexing_threshold_kb=1)


def points(start: int, n: int, seed: int = 0) -> list[base.PointIn]:
    rng = np.random.default_rng([seed, start])
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [base.PointIn(id=f"00000000-0000-0000-0000-{i:012d}", dense=v.tolist(),
                         sparse=base.SparseVector((i % 50 + 1,), (1.0,)), payload={"doc_id": f"d{i}", "passage": 0})
            for i, v in zip(range(start, start + n), vectors)]


def fill(backend: EdgeBackend, n: int, batch: int = 500) -> None:
    backend.create_collection(base.CollectionSchema("c", DIM, True))
    for start in range(0, n, batch):
        backend.upsert("c", points(start, min(batch, n - start)))


def start_build(backend: EdgeBackend) -> tuple[threading.Thread, dict, int]:
    """A background optimization in a thread, its child stopped (SIGSTOP) as soon as it exists."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["figures"] = backend.optimize_in_background("c")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run)
    thread.start()
    while backend.optimizer_pid is None:
        if not thread.is_alive():
            raise SystemExit(f"the build ended before its child was seen: {outcome}")
        time.sleep(0.01)
    pid = backend.optimizer_pid
    os.kill(pid, signal.SIGSTOP)
    return thread, outcome, pid


def leave(ballast: Path, free: int) -> None:
    """(Re)write ``ballast`` so that about ``free`` bytes stay free on its filesystem."""
    ballast.unlink(missing_ok=True)
    stat = os.statvfs(ballast.parent)
    with open(ballast, "wb") as out:
        out.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free))


def report(**facts) -> None:
    print(json.dumps(facts), flush=True)


def crash_during_build(root: Path, n: int) -> None:
    """Writes land while the child builds; then this process dies (SIGKILL)."""
    backend = EdgeBackend(root, search_threads=1, tuning=INDEXED)
    fill(backend, n)
    _thread, _outcome, pid = start_build(backend)
    backend.upsert("c", points(n, 100))  # acknowledged during the build
    report(child=pid, acknowledged=n + 100)
    os.kill(os.getpid(), signal.SIGKILL)


def copies(root: Path) -> list[str]:
    """Shard directories of collection c other than the one served."""
    collection = root / "collections" / "c"
    return sorted(p.name for p in collection.iterdir() if p.is_dir() and p != current_shard(collection))


def crash_during_swap(root: Path, n: int, when: str) -> None:
    """The build finishes and the writes made meanwhile are replayed into the copy; the process
    dies just before the swap's commit (``when=before``: rewriting ``current``) or just after."""
    backend = EdgeBackend(root, search_threads=1, tuning=INDEXED)
    fill(backend, n)
    before = backend.stats("c").indexed_vectors
    thread, _outcome, pid = start_build(backend)
    backend.upsert("c", points(n, 100))  # replayed into the copy before the swap
    real_replace = os.replace

    def replace(src, dst):
        committing = Path(dst).name == CURRENT_FILE
        if committing and when == "before":
            report(acknowledged=n + 100, indexed_before=before)
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if committing:
            report(acknowledged=n + 100, indexed_before=before)
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    os.kill(pid, signal.SIGCONT)
    thread.join()
    report(error="the swap finished without the crash")


def disk_full(root: Path, reserve_mb: int) -> None:
    """On a small filesystem: writes until refused, a build refused for room, a build whose
    disk runs short while the child works, then room again. Every step's facts reported."""
    facts: dict = {}
    backend = EdgeBackend(root, search_threads=1, tuning=INDEXED, min_free_disk_mb=reserve_mb)
    fill(backend, 2000)
    acknowledged = 2000
    # 1. A build that runs out of room while its child works: the watchdog stops it.
    thread, outcome, _pid = start_build(backend)
    backend.upsert("c", points(acknowledged, 100))
    acknowledged += 100
    ballast = root / "ballast"
    leave(ballast, reserve_mb * 1_000_000 // 2)  # less than the reserve
    thread.join()
    facts["build_error"] = outcome.get("error")
    facts["copy_left"] = copies(root)
    facts["count_after_build"] = backend.count("c")
    # 2. Writes below the reserve are refused, reads go on.
    leave(ballast, reserve_mb * 1_000_000 // 2)  # the removed copy freed its space
    try:
        backend.upsert("c", points(10_000, 50))
        facts["write_error"] = None
    except ResourceExhausted as exc:
        facts["write_error"] = exc.message
    facts["query_hits"] = len(backend.query("c", [base.Nearest(base.DENSE, points(5, 1)[0].dense, 3)])[0])
    # 3. Room for writes but not for a copy and its index: writes go on, the build is refused
    #    before it copies anything.
    leave(ballast, reserve_mb * 1_000_000 + allocated_bytes(current_shard(root / "collections" / "c")) // 2)
    backend.upsert("c", points(acknowledged, 50))
    acknowledged += 50
    try:
        backend.optimize_in_background("c")
        facts["room_error"] = None
    except ResourceExhausted as exc:
        facts["room_error"] = exc.message
    facts["copy_left_after_refusal"] = copies(root)
    # 4. Space freed: writes are accepted again, nothing acknowledged is missing.
    ballast.unlink()
    backend.upsert("c", points(acknowledged, 50))
    acknowledged += 50
    facts["count_after_room"] = backend.count("c")
    backend.close()
    reopened = EdgeBackend(root, search_threads=1, tuning=INDEXED, min_free_disk_mb=reserve_mb)
    facts["count_reopened"] = reopened.count("c")
    reopened.close()
    report(acknowledged=acknowledged, **facts)


def main(argv: list[str]) -> int:
    name, root = argv[0], Path(argv[1])
    if name == "crash-during-build":
        crash_during_build(root, int(argv[2]))
    elif name == "crash-during-swap":
        crash_during_swap(root, int(argv[2]), argv[3])
    elif name == "disk-full":
        disk_full(root, int(argv[2]))
    else:
        raise SystemExit(f"unknown scenario {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
