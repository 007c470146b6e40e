"""Child processes for tests that never outlive them.

Every child runs in a process group of its own (a new session), so whatever it starts in turn
(`searchctl up` starts three services) can be killed with it in one ``killpg``. Its stdout and
stderr go to a log file that is kept: a failing test gets the tail of every live child's log in
its report (tests/conftest.py adds it), and :func:`running` kills the whole group when its
block ends, however it ends. Children still alive when the session ends are killed too.

``ignore_sigint=True`` starts the child the way a non-interactive shell starts a background
job: with SIGINT ignored, which the child inherits (``sh -c 'trap "" INT; exec ...'``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORING_SIGINT = ("sh", "-c", 'trap "" INT; exec "$@"', "sh")

#: Children started and not yet reaped by :meth:`Child.kill_group`, oldest first.
LIVE: list[Child] = []


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, needle: str, timeout: float) -> str:
        """The log once it contains ``needle``; AssertionError (with the log) if the child exits
        first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before printing {needle!r}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not print {needle!r} within {timeout:.0f} s")

    def group_alive(self) -> bool:
        """Whether any process of the child's group is left (the child itself once reaped)."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def kill_group(self) -> None:
        """SIGKILL every process of the child's group, and reap the child."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if self in LIVE:
            LIVE.remove(self)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    ignore_sigint: bool = False,
) -> Child:
    """Start ``argv`` in a new process group, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*(IGNORING_SIGINT if ignore_sigint else ()), *argv],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name, proc, Path(log))
    LIVE.append(child)
    return child


@contextmanager
def running(child: Child) -> Iterator[Child]:
    """``child`` for the block; when it ends (passed, failed, timed out) its whole group is
    killed, and on a failure its output is printed (pytest shows it with the failure)."""
    try:
        yield child
    except BaseException:
        print(f"--- {child.name} (pid {child.pid}) output, last 4000 characters ---\n{child.tail()}")
        raise
    finally:
        child.kill_group()


def kill_all() -> None:
    """Kill every child still alive (the session's safety net)."""
    for child in list(LIVE):
        child.kill_group()
