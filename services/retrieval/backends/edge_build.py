"""The files and the child process of a background optimization (``EdgeBackend.optimize_in_background``).

A collection's directory::

    collection.json     the schema
    current             which shard directory is served: {"shard": "shard.3"} (absent: "shard")
    shard.3/            the shard being served (its WAL takes every write)
    shard.4/            during a build: the copy the child optimizes, then loaded by the
                        serving process, which replays the writes made meanwhile into it
    optimized.json      points at the last finished optimization (what the next one counts from)

Rewriting ``current`` (written aside, then renamed over the old file) is the swap's one commit
point, made once the new shard holds every write and is flushed. A crash before it leaves the
old shard served and the copy is deleted at the next start; after it, the new shard is served
and the old one deleted. Collections written before this layout have a ``shard/`` directory
and no ``current`` (and, from a crash during the older two-rename swap, maybe
``shard.optimizing/`` and ``shard.replaced/``): :func:`settle` handles them too.

Disk: the copy and the segments the child builds need about twice the shard's size; the build
starts only when that leaves ``min_free`` bytes free, and the child is stopped when free space
falls below it (writes to the served shard are refused below the same mark, edge.py), so a build
never takes the space acknowledged writes need.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from services.common import child_process
from services.common.errors import ResourceExhausted
from services.retrieval.backends.edge_shard import SCHEMA_FILE
from services.retrieval.backends.edge_tuning import ShardTuning

SHARD_DIR = "shard"
CURRENT_FILE = "current"
#: The older layout's copy while a child optimized it, and its replaced shard during a swap.
OPTIMIZING_DIR = "shard.optimizing"
REPLACED_DIR = "shard.replaced"
OPTIMIZED_FILE = "optimized.json"
#: Room for the copy and for the segments the child writes, per byte of the shard.
SPACE_PER_SHARD_BYTE = 2.0
_GENERATION = re.compile(r"^shard\.(\d+)$")


def current_shard(directory: Path) -> Path:
    """The shard directory the collection under ``directory`` serves."""
    try:
        name = json.loads((directory / CURRENT_FILE).read_text())["shard"]
    except FileNotFoundError:
        return directory / SHARD_DIR
    if name != SHARD_DIR and not _GENERATION.match(name):
        raise ValueError(f"{directory / CURRENT_FILE} names {name!r}, not a shard directory")
    return directory / name


def next_shard(directory: Path) -> Path:
    """Where the next optimized copy of the collection's shard goes."""
    match = _GENERATION.match(current_shard(directory).name)
    return directory / f"shard.{int(match.group(1)) + 1 if match else 1}"


def set_current(directory: Path, shard: Path) -> None:
    """Serve ``shard`` from now on: the swap's commit point (durable when it returns)."""
    tmp = directory / f".{CURRENT_FILE}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as out:
        out.write(json.dumps({"shard": shard.name}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, directory / CURRENT_FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(directory: Path) -> None:
    """At start: keep the served shard, delete what an interrupted build or swap left beside it."""
    if not (directory / CURRENT_FILE).exists():
        _settle_two_rename_swap(directory)
    keep = current_shard(directory)
    if not keep.exists():  # nothing is deleted; opening the collection reports what is missing
        return
    keep = keep.name
    for entry in directory.iterdir():
        if entry.is_dir() and (entry.name == SHARD_DIR or entry.name.startswith(SHARD_DIR + ".")) and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)


def _settle_two_rename_swap(directory: Path) -> None:
    """The older layout: the optimized copy was renamed into ``shard/`` only once it held every
    write, so when ``shard/`` is missing the copy is complete, else the old shard is."""
    shard, staging, replaced = directory / SHARD_DIR, directory / OPTIMIZING_DIR, directory / REPLACED_DIR
    if not shard.exists():
        if staging.exists() and replaced.exists():
            os.replace(staging, shard)
        elif replaced.exists():
            os.replace(replaced, shard)


def copy_shard(src: Path, dst: Path) -> None:
    """Copy a shard's files keeping their holes: the engine preallocates sparse files (its WAL
    segments are 32 MiB long and mostly unwritten), which a plain copy would fill with zeros."""
    shutil.copytree(src, dst, copy_function=_copy_sparse)


def _copy_sparse(src: str, dst: str) -> None:
    size = os.stat(src).st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            _copy_range(fin, fout, start, end)
            offset = end
        fout.truncate(size)
    shutil.copystat(src, dst)


def _copy_range(fin, fout, start: int, end: int) -> None:
    position = start
    try:
        while position < end:  # in the kernel
            copied = os.copy_file_range(fin.fileno(), fout.fileno(), end - position, position, position)
            if not copied:
                break
            position += copied
    except OSError as exc:  # no copy_file_range here (or not across these files): read and write
        if exc.errno == errno.ENOSPC:
            raise
        fin.seek(position)
        fout.seek(position)
        while position < end:
            chunk = fin.read(min(end - position, 1 << 20))
            if not chunk:
                break
            fout.write(chunk)
            position += len(chunk)


def warm(path: Path) -> float:
    """Read a shard's files once, in order, before the engine opens it; the seconds it took.

    Opening a shard whose pages are not in the page cache faults them in one 4 KiB page at a
    time (the engine maps its files for random access), and the engine holds the GIL all the
    while: opening a 1M-point shard with int8 copies took 183 s here, stalling every search. Read
    in order first (the GIL released, so the process serves on), the same opening took 1-2 s
    per 100k points instead of 25."""
    started = time.perf_counter()
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb", buffering=0) as f:
                    while f.read(1 << 22):
                        pass
            except OSError:
                continue
    return time.perf_counter() - started


def allocated_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (like ``du``: the engine's files are sparse)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def check_room_for_build(directory: Path, min_free: int) -> None:
    """ResourceExhausted (with the path and the figures) when a copy and a build of the shard
    under ``directory`` would leave less than ``min_free`` bytes free."""
    needed = int(allocated_bytes(current_shard(directory)) * SPACE_PER_SHARD_BYTE)
    free = free_bytes(directory)
    if free - needed < min_free:
        raise ResourceExhausted(
            f"not enough disk to optimize {directory}: {mb(free)} free, the copy and its index need about "
            f"{mb(needed)} and {mb(min_free)} stay reserved for writes (EDGE_MIN_FREE_DISK_MB); the collection "
            "keeps serving as it is; free space, or move large collections to a Qdrant cluster (searchctl migrate)")


def read_optimized_points(directory: Path) -> int:
    """Points the collection had when its last optimization finished (0: never, or unknown)."""
    try:
        return int(json.loads((directory / OPTIMIZED_FILE).read_text())["points"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def write_optimized_points(directory: Path, points: int) -> None:
    tmp = directory / f".{OPTIMIZED_FILE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"points": points}))
    os.replace(tmp, directory / OPTIMIZED_FILE)


class OptimizerChild:
    """``edge_optimizer.py`` on a copy of a shard, watched: killed when free disk falls below
    ``min_free`` or :meth:`kill` is called (the service closing)."""

    POLL_S = 0.5

    def __init__(self, staging: Path, directory: Path, tuning: ShardTuning, min_free: int) -> None:
        self.staging = staging
        self.directory = directory
        self.min_free = min_free
        # Killed with this process (on Linux), so an orphan never keeps writing into a copy that
        # the next start discards.
        self._proc = child_process.start(
            [sys.executable, "-m", "services.retrieval.backends.edge_optimizer", str(staging),
             str(directory / SCHEMA_FILE), tuning.as_json()],
            on_parent_death=signal.SIGKILL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self._proc.pid
        self._out_of_space: int | None = None

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()

    def wait(self) -> dict:
        """The child's figures; RuntimeError when it failed, ResourceExhausted when the disk ran short."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(self.POLL_S):
                free = free_bytes(self.directory)
                if free < self.min_free:
                    self._out_of_space = free
                    self.kill()
                    return

        watcher = threading.Thread(target=watch, name="edge-optimizer-disk", daemon=True)
        watcher.start()
        try:
            out, err = self._proc.communicate()
        finally:
            done.set()
            watcher.join()
        if self._out_of_space is not None:
            raise ResourceExhausted(
                f"optimization of {self.directory} stopped: free disk fell to {mb(self._out_of_space)}, below the "
                f"{mb(self.min_free)} kept for writes (EDGE_MIN_FREE_DISK_MB); its copy was removed and the "
                "collection serves as it was")
        if self._proc.returncode != 0:
            raise RuntimeError(f"the optimizer process exited with {self._proc.returncode}: {err.strip()[-500:]}")
        return json.loads(out.strip().splitlines()[-1])
