"""The embedded store under faults, each in a process of its own: killed while the optimizer
child builds, killed between the swap's two renames, and a filesystem that fills up. The
collection stays readable, the next start finishes or discards the swap, nothing
acknowledged is lost, and a full disk is RESOURCE_EXHAUSTED with the path and free space."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.retrieval.backends import base
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.edge_build import current_shard
from tests.store.edge_scenarios import INDEXED, points

REPO = Path(__file__).resolve().parents[2]
N = 1500


def scenario(*args: str, wrap: list[str] | None = None, timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[dict]]:
    run = subprocess.run([*(wrap or []), sys.executable, "-m", "tests.store.edge_scenarios", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=timeout)
    facts = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return run, facts


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_crash_during_the_build_leaves_the_served_shard_and_the_next_start_discards_the_copy(tmp_path):
    run, facts = scenario("crash-during-build", str(tmp_path), str(N))
    assert run.returncode == -9, run.stderr[-2000:]  # it died as planned, mid-build
    assert facts and "child" in facts[0], run.stdout
    child, acknowledged = facts[0]["child"], facts[0]["acknowledged"]
    # The child dies with its parent (parent-death signal), so no orphan writes into the copy.
    for _ in range(200):
        if not pid_alive(child):
            break
        time.sleep(0.05)
    assert not pid_alive(child), f"optimizer child {child} outlived the killed service"
    collection = tmp_path / "collections" / "c"
    assert (collection / "shard.1").exists()  # the copy the crash left behind
    backend = EdgeBackend(tmp_path, search_threads=1, tuning=INDEXED)
    try:
        assert not (collection / "shard.1").exists()  # discarded at start
        assert current_shard(collection).name == "shard"
        assert backend.count("c") == acknowledged  # including the writes made during the build
        written = points(N, 100)[7]  # one of the writes made during the build
        hit = backend.query("c", [base.Nearest(base.DENSE, written.dense, 1)])[0][0]
        assert hit.id == written.id
    finally:
        backend.close()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_during_the_swap_leaves_one_complete_shard_at_the_next_start(tmp_path, when):
    run, facts = scenario("crash-during-swap", str(tmp_path), str(N), when)
    assert run.returncode == -9, (run.stdout, run.stderr[-2000:])
    assert facts and "acknowledged" in facts[0], run.stdout
    collection = tmp_path / "collections" / "c"
    assert sorted(p.name for p in collection.iterdir() if p.is_dir()) == ["shard", "shard.1"]  # both left
    backend = EdgeBackend(tmp_path, search_threads=1, tuning=INDEXED)
    try:
        served = "shard.1" if when == "after" else "shard"
        assert sorted(p.name for p in collection.iterdir() if p.is_dir()) == [served]
        assert backend.count("c") == facts[0]["acknowledged"]
        indexed = backend.stats("c").indexed_vectors  # dense and sparse vectors held in an index
        if when == "after":  # the optimized copy (a dense graph for the N copied points), writes replayed into it
            assert indexed >= 2 * N
        else:  # the old shard, which took every write first: its sparse index only
            assert indexed == facts[0]["acknowledged"]
        written = points(N, 100)[99]
        assert backend.existing("c", [written.id]) == [written.id]
    finally:
        backend.close()


def _private_tmpfs(mountpoint: Path, size_mb: int) -> list[str] | None:
    """A command prefix running the scenario with a tmpfs of ``size_mb`` at ``mountpoint``, in a
    mount namespace of its own (unprivileged: a user namespace); None where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {mountpoint} && umount {mountpoint}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
            f'mount -t tmpfs -o size={size_mb}m tmpfs {mountpoint} && exec "$0" "$@"']


def test_a_full_disk_refuses_writes_with_the_path_and_loses_nothing(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    wrap = _private_tmpfs(mountpoint, 160)
    if wrap is None:
        pytest.skip("cannot mount a small tmpfs here (unshare --user --mount not allowed)")
    run, facts = scenario("disk-full", str(mountpoint), "24", wrap=wrap)
    assert run.returncode == 0, run.stderr[-3000:]
    f = facts[-1]
    # A build whose disk ran short was stopped, its copy removed, nothing else touched.
    assert f["build_error"] and f["build_error"].startswith("ResourceExhausted") and "stopped" in f["build_error"], f
    assert f["copy_left"] == [] and f["count_after_build"] == 2100
    # Writes below the reserve: refused with the path and the free space; reads go on.
    assert f["write_error"] and str(mountpoint) in f["write_error"] and "MB free" in f["write_error"], f
    assert f["query_hits"] == 3
    # No room for a copy: refused before copying.
    assert f["room_error"] and "not enough disk to optimize" in f["room_error"] and "MB free" in f["room_error"], f
    assert f["copy_left_after_refusal"] == []
    # Nothing acknowledged was lost, before or after reopening.
    assert f["count_after_room"] == f["count_reopened"] == f["acknowledged"]
