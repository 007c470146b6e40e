"""The files and the child process of a background optimization (``EdgeBackend.optimize_in_background``).

A collection's directory during one::

    shard/              the shard being served (its WAL takes every write)
    shard.optimizing/   the copy the child process optimizes, then the writes made meanwhile
    shard.replaced/     the old shard, between the two renames of the swap
    optimized.json      points at the last finished optimization (what the next one counts from)

Disk: the copy and the segments the child builds need about twice the shard's size; the build
starts only when that leaves ``min_free`` bytes free, and the child is stopped when free space
falls below it (writes to the served shard are refused below the same mark, edge.py), so a build
never takes the space acknowledged writes need.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from services.common.errors import ResourceExhausted
from services.retrieval.backends.edge_shard import SCHEMA_FILE
from services.retrieval.backends.edge_tuning import ShardTuning

SHARD_DIR = "shard"
#: The optimizer's copy while a child process optimizes it; the replaced shard during a swap.
OPTIMIZING_DIR = "shard.optimizing"
REPLACED_DIR = "shard.replaced"
OPTIMIZED_FILE = "optimized.json"
#: Room for the copy and for the segments the child writes, per byte of the shard.
SPACE_PER_SHARD_BYTE = 2.0


def finish_interrupted_swap(directory: Path) -> None:
    """Complete or undo a swap of optimized shards that a crash interrupted.

    The new shard is renamed into place only after every write was replayed into it and
    flushed, so when the serving shard is missing the optimized copy is complete.
    """
    shard, staging, replaced = directory / SHARD_DIR, directory / OPTIMIZING_DIR, directory / REPLACED_DIR
    if not shard.exists():
        if staging.exists() and replaced.exists():
            os.replace(staging, shard)
        elif replaced.exists():
            os.replace(replaced, shard)
    if shard.exists():
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)


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
            fin.seek(start)
            fout.seek(start)
            remaining = end - start
            while remaining:
                chunk = fin.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
            offset = end
        fout.truncate(size)
    shutil.copystat(src, dst)


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
    needed = int(allocated_bytes(directory / SHARD_DIR) * SPACE_PER_SHARD_BYTE)
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


PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int):
    """Runs in the forked child before it executes the optimizer: the kernel kills it when the
    serving process dies, so an orphan never keeps writing into a copy that the next start
    discards (set before exec, so there is no window in which the parent's death goes unseen)."""
    def arm() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm if _LIBC is not None else None


class OptimizerChild:
    """``edge_optimizer.py`` on a copy of a shard, watched: killed when free disk falls below
    ``min_free`` or :meth:`kill` is called (the service closing)."""

    POLL_S = 0.5

    def __init__(self, staging: Path, directory: Path, tuning: ShardTuning, min_free: int) -> None:
        self.staging = staging
        self.directory = directory
        self.min_free = min_free
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.retrieval.backends.edge_optimizer", str(staging),
             str(directory / SCHEMA_FILE), tuning.as_json()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent(os.getpid()),
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
