"""The contracts: generated stubs are fresh, buf lint passes, buf's breaking check bites."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOS = sorted((REPO / "proto" / "search" / "v1").glob("*.proto"))


def test_generated_stubs_are_fresh(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *map(str, PROTOS)],
        check=True,
    )
    fresh = sorted(p.name for p in (tmp_path / "search" / "v1").iterdir())
    committed = REPO / "gen" / "search" / "v1"
    stale = [name for name in fresh if not filecmp.cmp(tmp_path / "search" / "v1" / name, committed / name, shallow=False)]
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit"


def test_documented_descriptor_set_is_fresh(tmp_path):
    """What reflection serves with the comments (services/common/reflection.py) is the .proto
    files as they are now, comments included."""
    from google.protobuf import descriptor_pb2

    fresh = tmp_path / "contracts.binpb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), "--include_source_info",
                    "--include_imports", f"--descriptor_set_out={fresh}", *map(str, PROTOS)], check=True)
    committed = REPO / "gen" / "search" / "v1" / "contracts.binpb"
    assert committed.exists(), "gen/search/v1/contracts.binpb is missing: run `make proto` and commit"
    assert (descriptor_pb2.FileDescriptorSet.FromString(fresh.read_bytes())
            == descriptor_pb2.FileDescriptorSet.FromString(committed.read_bytes())), (
        "stale gen/search/v1/contracts.binpb: run `make proto` and commit")


def test_every_service_has_its_own_file_and_package():
    names = {p.name for p in PROTOS}
    assert {"common.proto", "search_service.proto", "retrieval_service.proto", "rerank_service.proto"} <= names
    for proto in PROTOS:
        assert "package search.v1;" in proto.read_text()


def buf() -> str:
    path = shutil.which("buf")
    if not path:
        pytest.skip("buf not installed (npm install -g @bufbuild/buf); .ci/run installs it")
    return path


def test_buf_lint_passes():
    result = subprocess.run([buf(), "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_detects_a_removed_field(tmp_path):
    exe = buf()
    shutil.copytree(REPO / "proto", tmp_path / "before" / "proto")
    shutil.copy(REPO / "buf.yaml", tmp_path / "before" / "buf.yaml")
    shutil.copytree(tmp_path / "before", tmp_path / "after")
    target = tmp_path / "after" / "proto" / "search" / "v1" / "rerank_service.proto"
    target.write_text(target.read_text().replace("  int32 top_k = 3;\n", ""))
    against = str(tmp_path / "before")
    same = subprocess.run([exe, "breaking", str(tmp_path / "before"), "--against", against], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    broken = subprocess.run([exe, "breaking", str(tmp_path / "after"), "--against", against], capture_output=True, text=True)
    assert broken.returncode != 0 and "top_k" in broken.stdout + broken.stderr


def test_working_tree_is_compatible_with_last_commit():
    exe = buf()
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run([exe, "breaking", "--against", ".git#ref=HEAD"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
