"""Mixed precision: which autocast dtype a run uses and whether it needs a GradScaler."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16 dot products (AVX512-BF16 / AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware has it, else fp32. fp16 is refused off CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision='fp16' needs a CUDA device; use bf16 or fp32 on CPU")
    return name


def autocast(precision: str, device: torch.device):
    """Context manager for the forward pass; fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A real scaler only for fp16 (bf16 has fp32's range); disabled scalers are pass-through."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
