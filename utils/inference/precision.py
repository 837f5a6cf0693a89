"""Choosing the numeric precision: bf16 where the hardware multiplies it fast, fp32 elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the reduced precisions, as torch types


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX bf16 tiles (Intel Xeon 4th generation and later)."""
    try:
        return "amx_bf16" in cpuinfo.read_text()
    except OSError:
        return False


def gpu_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, on_gpu: bool | None = None,
                      has_amx: Callable[[], bool] = cpu_has_amx,
                      gpu_bf16: Callable[[], bool] = gpu_supports_bf16) -> str:
    """The precision to run in: `auto` is bf16 on AMX CPUs and bf16-capable GPUs, fp32 elsewhere."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    if on_gpu:
        return "bf16" if gpu_bf16() else "fp32"
    return "bf16" if has_amx() else "fp32"


def accelerate_mixed_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
