"""Child processes that do not outlive their parent: the one way the project starts a process
that must stop when the one that started it dies (`searchctl up`'s three services, the Qdrant
Edge optimizer child of the retrieval service).

On Linux the child asks the kernel, before it executes its program, for a signal when its parent
dies (``prctl(PR_SET_PDEATHSIG)``, through ctypes): a parent killed with SIGKILL, or by the
terminal closing, cannot leave an orphan that keeps a port, a store's lock or a half-written
file. The signal comes when the *thread* that started the child ends, so start such children
from a thread that lives as long as they should (the main thread, or the worker that waits
for them). Elsewhere (macOS, Windows) there is no such call: the child starts as before and
only a parent that stops normally stops it (`searchctl up` does, on SIGINT, SIGTERM and
SIGHUP), so a killed parent can leave orphans to stop by hand.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1
#: True where a child can be tied to its parent's life (Linux).
SUPPORTED = sys.platform.startswith("linux")
_LIBC = ctypes.CDLL(None, use_errno=True) if SUPPORTED else None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child receives ``sig`` when the process starting it dies (None where
    unsupported). Armed before the child executes its program, and the parent checked after
    arming, so there is no window in which the parent's death goes unseen."""
    if _LIBC is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def start(argv: Sequence[str], *, on_parent_death: int = signal.SIGTERM, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` for a child that gets ``on_parent_death`` when this
    process dies (SIGTERM: a service then shuts down within its grace period)."""
    return subprocess.Popen(list(argv), preexec_fn=die_with_parent(on_parent_death), **popen)
