"""ONNX Runtime session factory: provider selection, fallback, options, I/O binding, tokenizer."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.model_dir import default_models_dir
from services.common.hardware import CPU, CUDA, TENSORRT, cuda_device_present
from services.common.onnx_session import (
    TrtProfile,
    create_session,
    encodings_to_inputs,
    run_with_io_binding,
    select_providers,
)
from services.common.tokenization import load_tokenizer

BGE = default_models_dir() / "bge-small-en"
RERANKER = default_models_dir() / "ms-marco-MiniLM-L-12-v2"
ALL = [TENSORRT, CUDA, CPU]


def _need(model_dir: Path) -> Path:
    if not (model_dir / "model.onnx").is_file() or not (model_dir / "tokenizer.json").is_file():
        pytest.skip(f"model {model_dir.name} not in {model_dir.parent}; run `searchctl models fetch`")
    return model_dir


def _no_gpu() -> None:
    if cuda_device_present():
        pytest.skip("a CUDA device is present; this test asserts the CPU fallback")


def _names(chain: list) -> list[str]:
    return [e if isinstance(e, str) else e[0] for e in chain]


# ------------------------------------------------------------------ select_providers (pure)


@pytest.mark.parametrize(
    ("requested", "available", "device", "expected"),
    [
        # cpu: always CPU only
        ("cpu", ALL, True, [CPU]),
        ("cpu", ALL, False, [CPU]),
        ("cpu", [CPU], False, [CPU]),
        # auto: CUDA only when a device is really present and the library has it
        ("auto", ALL, True, [CUDA, CPU]),
        ("auto", [CUDA, CPU], True, [CUDA, CPU]),
        ("auto", ALL, False, [CPU]),  # onnxruntime-gpu lists CUDA without a GPU
        ("auto", [CPU], True, [CPU]),
        ("auto", [CPU], False, [CPU]),
        ("auto", [TENSORRT, CPU], True, [CPU]),  # auto never opts into TensorRT
        # cuda: tried whenever the library offers it; ORT falls back at runtime
        ("cuda", ALL, True, [CUDA, CPU]),
        ("cuda", ALL, False, [CUDA, CPU]),
        ("cuda", [CPU], True, [CPU]),
        ("cuda", [CPU], False, [CPU]),
        # tensorrt: TRT -> CUDA -> CPU, each only if available
        ("tensorrt", ALL, True, [TENSORRT, CUDA, CPU]),
        ("tensorrt", ALL, False, [TENSORRT, CUDA, CPU]),
        ("tensorrt", [CUDA, CPU], True, [CUDA, CPU]),
        ("tensorrt", [TENSORRT, CPU], True, [TENSORRT, CPU]),
        ("tensorrt", [CPU], True, [CPU]),
        # CPU is appended even when the list somehow lacks it
        ("cuda", [CUDA], True, [CUDA, CPU]),
        ("auto", [], False, [CPU]),
    ],
)
def test_select_providers_table(requested: str, available: list[str], device: bool, expected: list[str]) -> None:
    assert _names(select_providers(requested, available, device, trt_cache_dir="/tmp/trt")) == expected


def test_tensorrt_options(tmp_path: Path) -> None:
    chain = select_providers("tensorrt", ALL, True, trt_cache_dir=tmp_path / "trt")
    name, opts = chain[0]
    assert name == TENSORRT
    assert opts == {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "trt"),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path / "trt"),
        "trt_fp16_enable": True,
    }
    _, opts32 = select_providers("tensorrt", ALL, True, trt_cache_dir=tmp_path, trt_fp16=False)[0]
    assert opts32["trt_fp16_enable"] is False


def test_tensorrt_profile_covers_every_batch_the_batcher_forms(tmp_path: Path) -> None:
    profile = TrtProfile(max_batch=32, max_length=256)
    assert profile.options() == {
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
        "trt_profile_opt_shapes": "input_ids:32x256,attention_mask:32x256,token_type_ids:32x256",
        "trt_profile_max_shapes": "input_ids:32x256,attention_mask:32x256,token_type_ids:32x256",
    }
    two = TrtProfile(4, 64, input_names=("input_ids", "attention_mask"))
    assert two.options()["trt_profile_max_shapes"] == "input_ids:4x64,attention_mask:4x64"
    _, opts = select_providers("tensorrt", ALL, True, trt_cache_dir=tmp_path, trt_profile=profile)[0]
    assert opts["trt_profile_max_shapes"] == profile.options()["trt_profile_max_shapes"]
    assert opts["trt_engine_cache_enable"] is True
    # The profile only concerns TensorRT: other chains are unchanged.
    assert select_providers("cuda", ALL, True, trt_profile=profile) == [CUDA, CPU]


def test_tensorrt_default_cache_dir_follows_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEARCH_MODELS_DIR", str(tmp_path))
    _, opts = select_providers("tensorrt", ALL, True)[0]
    assert opts["trt_engine_cache_path"] == str(tmp_path / "trt-cache")


@pytest.mark.parametrize("requested", ["CUDA", " Auto ", "Cpu", "TensorRT"])
def test_select_providers_is_case_insensitive(requested: str) -> None:
    assert select_providers(requested, ALL, True, trt_cache_dir="/x")[-1] == CPU


@pytest.mark.parametrize("requested", ["gpu", "", "rocm", "cuda,cpu", "CPUExecutionProvider"])
def test_select_providers_rejects_unknown(requested: str) -> None:
    with pytest.raises(ValueError, match="unknown execution provider"):
        select_providers(requested, ALL, True)


@given(
    requested=st.sampled_from(["auto", "cpu", "cuda", "tensorrt"]),
    available=st.lists(st.sampled_from(ALL + ["ROCMExecutionProvider"]), unique=True),
    device=st.booleans(),
)
def test_select_providers_properties(requested: str, available: list[str], device: bool) -> None:
    names = _names(select_providers(requested, available, device, trt_cache_dir="/tmp/trt"))
    assert names[-1] == CPU and names.count(CPU) == 1
    assert len(names) == len(set(names))
    assert all(n == CPU or n in available for n in names)
    if requested == "cpu" or (requested == "auto" and not device):
        assert names == [CPU]


# ------------------------------------------------------------------ real sessions on this machine


def test_cuda_device_detection_matches_machine() -> None:
    has_driver = Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi") is not None
    if has_driver:
        pytest.skip("NVIDIA driver present; detection result depends on the hardware")
    assert cuda_device_present() is False


def test_auto_session_runs_on_cpu_here(caplog: pytest.LogCaptureFixture) -> None:
    _no_gpu()
    model = _need(RERANKER) / "model.onnx"
    with caplog.at_level(logging.INFO, logger="services.common.onnx_session"):
        session, provider = create_session(model, provider="auto", intra_op_threads=1)
    assert provider == CPU == session.get_providers()[0]
    created = [r for r in caplog.records if getattr(r, "provider", None) == CPU]
    assert created and created[0].requested_provider == "auto"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_session_options_applied() -> None:
    model = _need(RERANKER)
    session, _ = create_session(
        model, provider="cpu", intra_op_threads=1, inter_op_threads=1, graph_optimization="basic"
    )
    opts = session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_invalid_session_arguments() -> None:
    model = _need(RERANKER)
    with pytest.raises(ValueError, match="graph optimization"):
        create_session(model, provider="cpu", graph_optimization="maximum")
    with pytest.raises(ValueError, match="thread counts"):
        create_session(model, provider="cpu", intra_op_threads=-1)
    with pytest.raises(ValueError, match="unknown execution provider"):
        create_session(model, provider="npu")
    with pytest.raises(FileNotFoundError):
        create_session(model / "nope.onnx")


def test_requested_gpu_falls_back_to_cpu_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    _no_gpu()
    model = _need(RERANKER) / "model.onnx"
    with caplog.at_level(logging.INFO, logger="services.common.onnx_session"):
        session, provider = create_session(model, provider="cuda", intra_op_threads=1)
    assert provider == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "cuda" in warnings[-1].getMessage()


def test_requested_tensorrt_falls_back_to_cpu_and_prepares_its_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _no_gpu()
    if TENSORRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT provider")
    model = _need(RERANKER)
    cache = tmp_path / "trt-cache"
    with caplog.at_level(logging.INFO, logger="services.common.onnx_session"):
        session, provider = create_session(
            model, provider="tensorrt", intra_op_threads=1, trt_cache_dir=cache, trt_profile=TrtProfile(8, 128)
        )
    assert provider == CPU == session.get_providers()[0]
    assert cache.is_dir()  # created up front so TensorRT can write engines into it
    created = [r for r in caplog.records if getattr(r, "provider", None) == CPU]
    assert created and created[-1].provider_chain == [TENSORRT, CUDA, CPU]
    assert any(r.levelno == logging.WARNING and "tensorrt" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("spin", [True, False])
def test_spinning_option_applied(spin: bool) -> None:
    session, _ = create_session(_need(RERANKER), provider="cpu", intra_op_threads=1, spin=spin)
    entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert entry == ("1" if spin else "0")


def test_fp16_variant_only_considered_for_gpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _no_gpu()
    src = _need(RERANKER)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(src / "model.onnx", model_dir / "model.onnx")
    # Not a valid graph: loading it would fail, so success proves which file was used.
    (model_dir / "model.fp16.onnx").write_bytes(b"not an onnx graph")

    session, provider = create_session(model_dir, provider="cpu", intra_op_threads=1)
    assert provider == CPU

    # With cuda requested the fp16 file is tried first; here it fails to load (and there
    # is no GPU), so the factory must fall back to the fp32 graph on CPU and warn.
    with caplog.at_level(logging.INFO, logger="services.common.onnx_session"):
        session, provider = create_session(model_dir, provider="cuda", intra_op_threads=1)
    assert provider == CPU
    assert any("falling back to CPU" in r.getMessage() for r in caplog.records)
    created = [r for r in caplog.records if getattr(r, "provider", None) == CPU]
    assert Path(created[-1].model_path).name == "model.onnx"


def test_io_binding_matches_plain_run() -> None:
    model_dir = _need(RERANKER)
    session, _ = create_session(model_dir, provider="cpu", intra_op_threads=1)
    tok = load_tokenizer(model_dir, 64, padding=False, truncation_strategy="only_second")
    encs = tok.encode_batch([("what is onnx", "ONNX is an open format for ML models."), ("q", "short")])
    feeds = encodings_to_inputs(encs, 0)
    plain = session.run(["logits"], feeds)[0]
    auto = run_with_io_binding(session, feeds, "logits")
    bound = run_with_io_binding(session, feeds, "logits", device="cpu")
    assert plain.shape == auto.shape == bound.shape == (2, 1)
    np.testing.assert_allclose(auto, plain, rtol=0, atol=0)
    np.testing.assert_allclose(bound, plain, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ tokenizer + input building


def test_load_tokenizer_pads_to_longest_not_512() -> None:
    model_dir = _need(BGE)
    tok = load_tokenizer(model_dir, 128)
    assert tok.padding is not None and tok.padding["length"] is None
    assert tok.truncation["max_length"] == 128
    encs = tok.encode_batch(["hello", "a slightly longer sentence here"])
    assert len(encs[0].ids) == len(encs[1].ids) < 40
    assert sum(encs[0].attention_mask) < len(encs[0].ids)  # the short one is padded
    assert len(tok.encode("word " * 1000).ids) == 128


def test_load_tokenizer_without_padding_and_cap() -> None:
    model_dir = _need(RERANKER)  # its shipped tokenizer.json pads to a fixed 512
    tok = load_tokenizer(model_dir, 4096, padding=False)
    assert tok.padding is None
    assert tok.truncation["max_length"] == 512  # capped to the model's positions
    assert len(tok.encode("hi").ids) == 3
    with pytest.raises(ValueError):
        load_tokenizer(model_dir, 2)


def test_only_second_truncation_keeps_the_query() -> None:
    model_dir = _need(RERANKER)
    tok = load_tokenizer(model_dir, 32, padding=False, truncation_strategy="only_second")
    query = "what is the boiling point of water at sea level"
    enc = tok.encode(query, "passage text " * 200)
    assert len(enc.ids) == 32
    full_query = tok.encode(query)
    n_query = enc.type_ids.index(1)
    assert enc.ids[:n_query] == full_query.ids  # [CLS] query [SEP] intact
    assert tok.truncation["strategy"] == "only_second"


def test_encodings_to_inputs() -> None:
    model_dir = _need(RERANKER)
    tok = load_tokenizer(model_dir, 64, padding=False)
    encs = tok.encode_batch([("a", "b"), ("a longer query", "and a longer passage too")])
    arrays = encodings_to_inputs(encs, pad_id=0)
    assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    width = max(len(e.ids) for e in encs)
    for arr in arrays.values():
        assert arr.dtype == np.int64 and arr.shape == (2, width)
    short = len(encs[0].ids)
    assert arrays["input_ids"][0, :short].tolist() == encs[0].ids
    assert (arrays["input_ids"][0, short:] == 0).all() and (arrays["attention_mask"][0, short:] == 0).all()
    assert arrays["attention_mask"][1].sum() == width
    assert arrays["token_type_ids"][1].tolist() == encs[1].type_ids
    assert set(encodings_to_inputs(encs, 0, ["input_ids", "attention_mask"])) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError):
        encodings_to_inputs([], 0)


# ------------------------------------------------------------------ CPU layout and batch sizing

from services.common.hardware import (  # noqa: E402
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    available_cpus,
    batching_for,
    cpu_layout,
)


@pytest.mark.parametrize(
    ("workers", "threads", "cpus", "expected"),
    [
        (0, 0, 2, (2, 1)),  # default: one single-threaded batch per CPU
        (0, 0, 1, (1, 1)),
        (0, 2, 2, (1, 2)),  # threads given: batches fill the rest
        (0, 3, 8, (2, 3)),
        (0, 4, 2, (1, 4)),
        (1, 0, 4, (1, 4)),  # workers given: threads fill the rest
        (3, 0, 2, (3, 1)),
        (2, 2, 2, (2, 2)),  # both given: as is
        (0, 0, 0, (1, 1)),
    ],
)
def test_cpu_layout(workers: int, threads: int, cpus: int, expected: tuple[int, int]) -> None:
    assert cpu_layout(workers, threads, cpus) == expected


def test_cpu_layout_rejects_negative() -> None:
    with pytest.raises(ValueError):
        cpu_layout(-1, 0, 2)


def test_batching_for_cpu_and_gpu() -> None:
    assert batching_for(CPU, 2, 0, 0) == (2, 0, CPU_BATCH_TOKENS)
    assert batching_for(CPU, 2, 0, 4096) == (2, 0, 4096)
    assert batching_for(CUDA, 2, 0, 0) == (1, 1, GPU_BATCH_TOKENS)  # one batch at a time, one queued
    assert batching_for(TENSORRT, 4, 2, 0) == (2, 1, GPU_BATCH_TOKENS)  # an explicit worker count is kept


def _cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[int, int] | None = None) -> Path:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def test_available_cpus_honours_cgroup_quotas(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup(tmp_path / "none")) == affinity  # no cgroup files: the affinity mask
    (tmp_path / "a").mkdir()
    assert available_cpus(_cgroup(tmp_path / "a", v2="max 100000")) == affinity  # unlimited
    (tmp_path / "b").mkdir()
    assert available_cpus(_cgroup(tmp_path / "b", v2="50000 100000")) == 1  # half a CPU rounds up to 1
    (tmp_path / "c").mkdir()
    assert available_cpus(_cgroup(tmp_path / "c", v2=f"{100000 * (affinity + 4)} 100000")) == affinity
    (tmp_path / "d").mkdir()
    assert available_cpus(_cgroup(tmp_path / "d", v1=(100000, 100000))) == 1
    (tmp_path / "e").mkdir()
    assert available_cpus(_cgroup(tmp_path / "e", v1=(-1, 100000))) == affinity
    assert available_cpus() >= 1  # this machine
