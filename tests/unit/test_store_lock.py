"""One `searchctl up` per store (services/cli/store_lock.py), with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.store_lock import LOCK_NAME, StoreInUse, acquire

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time\n"
        "from pathlib import Path\n"
        "from services.cli.store_lock import acquire\n"
        "lock = acquire(Path(sys.argv[1]))\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


def holder(store: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_told_which_process_holds_the_store(tmp_path):
    proc = holder(tmp_path / "qdrant")
    try:
        with pytest.raises(StoreInUse) as caught:
            acquire(tmp_path / "qdrant")
        assert caught.value.pid == proc.pid and caught.value.alive
        assert f"searchctl up (pid {proc.pid})" in str(caught.value) and str(tmp_path / "qdrant") in str(caught.value)
    finally:
        proc.kill()
        proc.wait()
    with acquire(tmp_path / "qdrant") as lock:  # released by the kernel when its holder died
        assert (tmp_path / "qdrant" / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert os.get_inheritable(lock.fd)


def test_the_lock_is_held_while_a_child_that_inherited_it_runs(tmp_path):
    """The services inherit the lock: with `up` gone, the store stays locked until they exit."""
    lock = acquire(tmp_path / "qdrant")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=(lock.fd,))
    lock.release()
    (tmp_path / "qdrant" / LOCK_NAME).write_text("")  # no live holder recorded: `up` was killed
    try:
        with pytest.raises(StoreInUse) as caught:
            acquire(tmp_path / "qdrant")
        assert not caught.value.alive and "still stopping" in str(caught.value)
    finally:
        child.kill()
        child.wait()
    acquire(tmp_path / "qdrant").release()
