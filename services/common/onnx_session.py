"""ONNX Runtime session factory and tokenizer loading shared by both encoders.

Provider names accepted everywhere (``ORT_PROVIDER``): ``auto``, ``cpu``, ``cuda``,
``tensorrt``.

* ``auto``: CUDA only when a CUDA device is really present (``onnxruntime-gpu`` lists
  the CUDA provider as *available* even on machines without a GPU), else CPU.
  ``auto`` never picks TensorRT because building engines is slow and must be opted in.
* ``cuda``: CUDA, then CPU.
* ``tensorrt``: TensorRT (engine and timing caches, fp16 enabled and, when the caller
  gives a :class:`TrtProfile`, one explicit optimisation profile covering every batch
  shape the dynamic batcher can form, so engines are built once, not per new shape),
  then CUDA, then CPU.
* ``cpu``: CPU only.

CPU is always the last fallback. If a GPU provider was asked for but the session ended
up on CPU, :func:`create_session` logs a warning; the provider actually used is read
back from ``session.get_providers()[0]``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

__all__ = [
    "CPU",
    "CUDA",
    "GPU_PROVIDERS",
    "GRAPH_OPTIMIZATIONS",
    "PROVIDER_CHOICES",
    "TENSORRT",
    "ProviderSpec",
    "TrtProfile",
    "create_session",
    "available_cpus",
    "batching_for",
    "cpu_layout",
    "cuda_device_present",
    "encodings_to_inputs",
    "load_tokenizer",
    "run_with_io_binding",
    "select_providers",
]

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")

#: An ORT provider entry: a name, or (name, options).
ProviderSpec = str | tuple[str, dict[str, Any]]

_GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


#: The inputs of the BERT-style encoders this project ships.
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TrtProfile:
    """The (batch, sequence) range a TensorRT engine must cover.

    ONNX Runtime's TensorRT provider builds an engine for the shapes it has seen and
    rebuilds it whenever a larger one arrives; with a dynamic batcher that means
    rebuilds (seconds to minutes each) in the middle of serving. An explicit profile from
    ``1 x 1`` to ``max_batch x max_length`` gives one engine for every batch, tuned for
    full batches.
    """

    max_batch: int
    max_length: int
    input_names: tuple[str, ...] = BERT_INPUTS

    def options(self) -> dict[str, str]:
        def shapes(batch: int, length: int) -> str:
            return ",".join(f"{name}:{batch}x{length}" for name in self.input_names)

        return {
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(self.max_batch, self.max_length),
            "trt_profile_max_shapes": shapes(self.max_batch, self.max_length),
        }

GRAPH_OPTIMIZATIONS = tuple(_GRAPH_OPT_LEVELS)


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


@lru_cache(maxsize=1)
def cuda_device_present() -> bool:
    """True when an NVIDIA GPU is visible to this process.

    Checks ``/proc/driver/nvidia/gpus`` (present when the kernel driver sees a GPU,
    also inside containers run with the NVIDIA toolkit), then ``nvidia-smi -L``.
    The result is cached for the life of the process.
    """
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and any(
        line.startswith("GPU ") for line in proc.stdout.splitlines()
    )


def available_cpus(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` reports the node's cores even in a container limited to two
    (Kubernetes ``resources.limits.cpu``); sizing thread pools from it oversubscribes the
    quota and the kernel throttles the pod. cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) quotas are honoured, rounded up.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    root = Path(cgroup_root)
    quota = None
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            quota = float(fields[0]) / float(fields[1])
    except (OSError, ValueError):
        try:
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None and quota > 0:
        cpus = min(cpus, max(1, int(-(-quota // 1))))
    return max(1, cpus)


def cpu_layout(workers: int, intra_op_threads: int, cpus: int) -> tuple[int, int]:
    """How to spend ``cpus`` on inference: ``(batches run at once, ORT threads per batch)``.

    0 means "choose". Both chosen: one batch per CPU, each on one thread. Measured on
    the shipped int8 encoders with sequences of 128-256 tokens, a batch on one thread
    costs 10-25 % less CPU per item than the same work split across threads inside
    ONNX Runtime (and small batches cost less per item than large ones), so parallel
    single-threaded batches are the faster layout on a CPU. One value given: the other
    fills the CPUs. Both given: used as is.
    """
    if workers < 0 or intra_op_threads < 0:
        raise ValueError("inference workers and intra-op threads must be >= 0 (0 = choose)")
    cpus = max(1, cpus)
    if workers and intra_op_threads:
        return workers, intra_op_threads
    if workers:
        return workers, max(1, cpus // workers)
    if intra_op_threads:
        return max(1, cpus // intra_op_threads), intra_op_threads
    return cpus, 1


#: Padded tokens per batch when not configured. CPU: one full-length (256-token) sequence
#: per batch; measured interleaved on both models, the cost per item grows with the batch
#: (batch 2 costs ~1.15x per item, batch 8 ~1.4x; docs/BENCHMARKS.md), and a sequence
#: longer than the bound still runs alone. GPU: large batches.
CPU_BATCH_TOKENS = 256
GPU_BATCH_TOKENS = 16384


def batching_for(provider: str, workers: int, workers_setting: int, max_batch_tokens: int) -> tuple[int, int, int]:
    """``(workers, prefetch, max_batch_tokens)`` for a session running on ``provider``.

    On a GPU one batch runs at a time (unless ``workers_setting`` says otherwise) with one
    whole batch queued behind it, and batches are large; on a CPU the ``workers`` chosen
    by :func:`cpu_layout` run small batches side by side. ``max_batch_tokens`` 0 = default.
    """
    gpu = provider in GPU_PROVIDERS
    if gpu:
        return (workers_setting or 1), 1, (max_batch_tokens or GPU_BATCH_TOKENS)
    return workers, 0, (max_batch_tokens or CPU_BATCH_TOKENS)


def select_providers(
    requested: str,
    available: Sequence[str],
    cuda_device_present: bool,
    *,
    trt_cache_dir: str | os.PathLike[str] | None = None,
    trt_fp16: bool = True,
    trt_profile: TrtProfile | None = None,
) -> list[ProviderSpec]:
    """Map a provider choice to the ORT ``providers`` list (pure function).

    Args:
        requested: ``auto`` | ``cpu`` | ``cuda`` | ``tensorrt`` (case-insensitive).
        available: ``onnxruntime.get_available_providers()``.
        cuda_device_present: whether a GPU was detected (see :func:`cuda_device_present`).
            Only ``auto`` consults it; an explicit ``cuda``/``tensorrt`` request is tried
            whenever the provider library is available, and ORT falls back to CPU.
        trt_cache_dir: TensorRT engine cache directory (default
            ``$SEARCH_MODELS_DIR/trt-cache``).
        trt_fp16: enable fp16 kernels in TensorRT.
        trt_profile: explicit TensorRT optimisation profile (see :class:`TrtProfile`).

    Returns:
        Provider entries in priority order, always ending with ``CPUExecutionProvider``.

    Raises:
        ValueError: ``requested`` is not one of :data:`PROVIDER_CHOICES`.
    """
    choice = requested.strip().lower()
    if choice not in PROVIDER_CHOICES:
        raise ValueError(
            f"unknown execution provider {requested!r}; expected one of {', '.join(PROVIDER_CHOICES)}"
        )
    have = set(available)
    chain: list[ProviderSpec] = []
    if choice == "auto":
        if cuda_device_present and CUDA in have:
            chain.append(CUDA)
    elif choice == "cuda":
        if CUDA in have:
            chain.append(CUDA)
    elif choice == "tensorrt":
        if TENSORRT in have:
            if trt_cache_dir is None:
                from services.common.model_dir import default_models_dir

                trt_cache_dir = default_models_dir() / "trt-cache"
            options: dict[str, Any] = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_cache_dir),
                "trt_fp16_enable": bool(trt_fp16),
            }
            if trt_profile is not None:
                options.update(trt_profile.options())
            chain.append((TENSORRT, options))
        if CUDA in have:
            chain.append(CUDA)
    chain.append(CPU)
    return chain


def _session_options(
    intra_op_threads: int, inter_op_threads: int, graph_optimization: str, spin: bool = True
) -> ort.SessionOptions:
    level = _GRAPH_OPT_LEVELS.get(graph_optimization.strip().lower())
    if level is None:
        raise ValueError(
            f"unknown graph optimization {graph_optimization!r}; expected one of {', '.join(_GRAPH_OPT_LEVELS)}"
        )
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise ValueError("thread counts must be >= 0 (0 = onnxruntime default)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    # Spinning keeps intra-op threads busy-waiting between operators (lower latency on a
    # dedicated machine); off, they yield the cores to the server's other threads.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def create_session(
    model_path: str | os.PathLike[str],
    provider: str = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    trt_cache_dir: str | os.PathLike[str] | None = None,
    *,
    spin: bool = True,
    trt_profile: TrtProfile | None = None,
) -> tuple[ort.InferenceSession, str]:
    """Create a tuned ``InferenceSession``; return it and the provider really in use.

    Args:
        model_path: path to ``model.onnx`` (or a model directory containing it).
        provider: ``auto`` | ``cpu`` | ``cuda`` | ``tensorrt`` (see module docstring).
        intra_op_threads / inter_op_threads: 0 lets ORT decide.
        graph_optimization: ``disable`` | ``basic`` | ``extended`` | ``all``.
        trt_cache_dir: TensorRT engine cache directory.
        spin: let intra-op threads spin-wait between operators.
        trt_profile: explicit TensorRT optimisation profile (batch x sequence range).

    fp16 variant: when the chain starts with CUDA or TensorRT and a ``model.fp16.onnx``
    exists beside ``model.onnx``, that file is loaded instead. If the session then ends
    up on CPU anyway, the fp32 ``model.onnx`` is loaded in its place.

    If creating a session with GPU providers raises, a CPU-only session is created and
    a warning logged. The returned name is the ORT name, e.g. ``"CPUExecutionProvider"``.
    """
    path = Path(model_path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    opts = _session_options(intra_op_threads, inter_op_threads, graph_optimization, spin)
    chain = select_providers(
        provider,
        ort.get_available_providers(),
        cuda_device_present() if provider.strip().lower() == "auto" else False,
        trt_cache_dir=trt_cache_dir,
        trt_profile=trt_profile,
    )
    wants_gpu = _provider_name(chain[0]) in GPU_PROVIDERS
    for entry in chain:
        if isinstance(entry, tuple) and entry[0] == TENSORRT:
            Path(entry[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)

    fp16 = path.with_name("model.fp16.onnx")
    load_path = fp16 if wants_gpu and fp16.is_file() else path
    try:
        session = ort.InferenceSession(str(load_path), sess_options=opts, providers=chain)
    except Exception as exc:  # noqa: BLE001 - any GPU init failure falls back to CPU
        if not wants_gpu:
            raise
        logger.warning(
            "GPU session creation failed, falling back to CPU",
            extra={"model_path": str(load_path), "requested_provider": provider, "error": str(exc)},
        )
        load_path = path
        session = ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])
    actual = session.get_providers()[0]
    if load_path != path and actual not in GPU_PROVIDERS:
        load_path = path
        session = ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])
        actual = session.get_providers()[0]

    fields = {
        "model_path": str(load_path),
        "requested_provider": provider,
        "provider": actual,
        "providers": session.get_providers(),
        "provider_chain": [_provider_name(e) for e in chain],
        "graph_optimization": graph_optimization,
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
        "spin": spin,
    }
    logger.info("onnxruntime session created on %s for %s", actual, load_path.name, extra=fields)
    if provider.strip().lower() in ("cuda", "tensorrt") and actual not in GPU_PROVIDERS:
        logger.warning(
            "requested execution provider %s is not in use; running on %s",
            provider,
            actual,
            extra=fields,
        )
    return session, actual


def run_with_io_binding(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_name: str,
    device: str | None = None,
) -> np.ndarray:
    """Run ``session`` for one output, using I/O binding on CUDA.

    With ``device=None`` the device follows the session: on CUDA/TensorRT the inputs
    are bound from host memory, the output is allocated on the GPU and copied back once;
    on CPU this is a plain ``session.run``. Pass ``device="cpu"`` or ``"cuda"`` to force
    the binding path (each call uses its own binding, so this is thread-safe).
    """
    if device is None:
        if session.get_providers()[0] not in GPU_PROVIDERS:
            return session.run([output_name], dict(feeds))[0]
        device = "cuda"
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(output_name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def _model_max_positions(model_dir: Path) -> int | None:
    for name in ("config.json", "vectrix_config.json"):
        try:
            cfg = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        for key in ("max_position_embeddings", "max_length"):
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def load_tokenizer(
    model_dir: str | os.PathLike[str],
    max_length: int,
    *,
    padding: bool = True,
    truncation_strategy: str = "longest_first",
) -> Tokenizer:
    """Load ``tokenizer.json`` with dynamic padding and truncation at ``max_length``.

    The shipped tokenizer files pad to a fixed 512 tokens; that padding is removed and,
    when ``padding`` is true, replaced by padding to the longest sequence of each
    ``encode_batch`` call. ``truncation_strategy`` is ``longest_first``, ``only_first``
    or ``only_second`` (``only_second`` keeps a cross-encoder's query intact; note that
    it raises if the first sequence alone exceeds ``max_length``).
    ``max_length`` is capped to the model's position-embedding size when known.
    """
    model_dir = Path(model_dir)
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    limit = _model_max_positions(model_dir)
    if limit is not None and max_length > limit:
        logger.warning(
            "max_length %d exceeds the model's %d positions; using %d",
            max_length, limit, limit,
            extra={"model_dir": str(model_dir)},
        )  # fmt: skip
        max_length = limit
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    previous = tokenizer.padding or {}
    pad_token = previous.get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        pad_id = int(previous.get("pad_id", 0))
    tokenizer.no_padding()
    if padding:
        tokenizer.enable_padding(
            pad_id=pad_id, pad_type_id=int(previous.get("pad_type_id", 0)), pad_token=pad_token
        )
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length, strategy=truncation_strategy)
    return tokenizer


def runtime_options(cfg: Any) -> dict[str, Any]:
    """A model constructor's ONNX Runtime keywords from a service config (ORT_PROVIDER,
    *_GRAPH_OPTIMIZATION, ORT_ALLOW_SPINNING): the part every ``from_config`` shares."""
    return {"provider": cfg.provider, "graph_optimization": cfg.graph_optimization, "spin": cfg.allow_spinning}


def model_input_names(session: ort.InferenceSession, model_name: str) -> list[str]:
    """The session's input names, all of which must be BERT_INPUTS (what encodings_to_inputs feeds)."""
    names = [i.name for i in session.get_inputs()]
    unsupported = set(names) - set(BERT_INPUTS)
    if unsupported:
        raise ValueError(f"{model_name}: unsupported model inputs {sorted(unsupported)}")
    return names


def encodings_to_inputs(
    encodings: Sequence[Encoding],
    pad_id: int = 0,
    input_names: Sequence[str] = BERT_INPUTS,
) -> dict[str, np.ndarray]:
    """Stack encodings into int64 ONNX inputs, right-padded to the longest in the batch.

    Only the names in ``input_names`` are returned (models without ``token_type_ids``
    simply do not list it).
    """
    if not encodings:
        raise ValueError("encodings must not be empty")
    n = len(encodings)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        length = len(enc.ids)
        ids[row, :length] = enc.ids
        mask[row, :length] = enc.attention_mask
        types[row, :length] = enc.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in input_names if name in arrays}
