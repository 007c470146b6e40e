"""The lock `searchctl up` holds on its store: one stack per data directory.

The lock is an ``flock`` on ``<QDRANT_PATH>/searchctl-up.lock``, a file that holds the pid of
the `searchctl up` that took it. The services it starts inherit the locked descriptor, so the
lock is held as long as any process of that stack runs, and released by the kernel when the
last one exits, however it ended (nothing stale to clean up). A second `searchctl up` on the
same store learns which process holds it; when that process is gone but its services are still
stopping (it was killed), it waits for them.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "searchctl-up.lock"


class StoreInUse(Exception):
    """Another `searchctl up` (``pid``) holds the store."""

    def __init__(self, store: Path, pid: int | None, alive: bool) -> None:
        self.store, self.pid, self.alive = store, pid, alive
        holder = f"searchctl up (pid {pid})" if pid else "another searchctl up"
        if alive:
            advice = f"stop it first (Ctrl-C in its terminal, or kill {pid})" if pid else "stop it first"
        else:
            advice = "its services are still stopping; try again in a few seconds"
        super().__init__(f"the store {store} is in use by {holder}: {advice}, or use another --data-dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass
class StoreLock:
    """The held lock: ``fd`` is the descriptor the services inherit (``pass_fds``)."""

    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """The pid recorded in the lock file at ``path`` (None when unreadable)."""
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def acquire(store: Path, wait_for_stopping_s: float = 0.0, poll_s: float = 0.2) -> StoreLock:
    """Take the lock of ``store`` (created if missing) for this process. Raises
    :class:`StoreInUse` when another `searchctl up` holds it; when that one is dead and only its
    services still hold the lock, waits up to ``wait_for_stopping_s`` for them first."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_for_stopping_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pid = holder(path)
                alive = pid is not None and _alive(pid)
                if alive or time.monotonic() >= deadline:
                    raise StoreInUse(store, pid, alive) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return StoreLock(path, fd)
