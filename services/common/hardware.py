"""The machine and how inference spends it: GPU and CPU probing (what this process may use)
and the inference layout that follows (batches run at once, threads per batch, batch bounds).
No ONNX Runtime here: services/common/onnx_session.py builds the sessions."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

__all__ = [
    "CPU",
    "CPU_BATCH_TOKENS",
    "CUDA",
    "GPU_BATCH_TOKENS",
    "GRAPH_OPTIMIZATIONS",
    "GPU_PROVIDERS",
    "PROVIDER_CHOICES",
    "TENSORRT",
    "available_cpus",
    "batching_for",
    "cpu_layout",
    "cuda_device_present",
]

#: ORT_PROVIDER's values, and the graph optimization levels (*_GRAPH_OPTIMIZATION) by name:
#: here, without ONNX Runtime, so the settings can list them (services/common/onnx_session.py maps them).
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")

#: ONNX Runtime's execution provider names.
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})


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
