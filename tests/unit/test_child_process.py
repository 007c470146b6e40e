"""Children that die with their parent (services/common/child_process.py), with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common import child_process

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not child_process.SUPPORTED, reason="parent-death signals are Linux-only")
def test_a_child_gets_its_signal_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from services.common import child_process\n"
         "child = child_process.start([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
         f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
         "time.sleep(600)\n"],
        cwd=REPO)
    try:
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert running(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    for _ in range(100):  # a bound for the wait, not a measurement
        if not running(child):
            break
        time.sleep(0.1)
    assert not running(child), f"child {child} outlived its killed parent"


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False
