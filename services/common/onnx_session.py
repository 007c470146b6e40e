"""ONNX Runtime sessions for the encoders: provider choice, session options, I/O binding and
the model inputs (hardware probing: hardware.py; tokenizers: tokenization.py).

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

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding

from services.common.hardware import (
    CPU, CUDA, GPU_PROVIDERS, GRAPH_OPTIMIZATIONS, PROVIDER_CHOICES, TENSORRT, cuda_device_present,
)

__all__ = [
    "GRAPH_OPTIMIZATIONS",
    "PROVIDER_CHOICES",
    "ProviderSpec",
    "TrtProfile",
    "create_session",
    "encodings_to_inputs",
    "run_with_io_binding",
    "select_providers",
]

logger = logging.getLogger(__name__)

#: An ORT provider entry: a name, or (name, options).
ProviderSpec = str | tuple[str, dict[str, Any]]

_GRAPH_OPT_LEVELS = dict(zip(GRAPH_OPTIMIZATIONS, (  # disable, basic, extended, all
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
), strict=True))


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


def _provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


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


@dataclass(frozen=True)
class ModelSession:
    """A BERT-style model's session as an encoder holds it."""

    session: ort.InferenceSession
    #: The execution provider really in use.
    provider: str
    #: Its inputs, every one among BERT_INPUTS.
    input_names: list[str]
    #: Its first output (``name``, ``shape``).
    output: Any


def open_model(model_dir: Path, name: str, batch_size: int, max_length: int, provider: str = "auto",
               intra_op_threads: int = 0, graph_optimization: str = "all", spin: bool = True) -> ModelSession:
    """``model_dir``'s ``model.onnx`` for batches of up to ``batch_size`` x ``max_length`` tokens
    (:func:`create_session`), its inputs checked (:func:`model_input_names`)."""
    session, used = create_session(model_dir / "model.onnx", provider=provider, intra_op_threads=intra_op_threads,
                                   graph_optimization=graph_optimization, spin=spin,
                                   trt_profile=TrtProfile(max_batch=batch_size, max_length=max_length))
    return ModelSession(session, used, model_input_names(session, name), session.get_outputs()[0])


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
