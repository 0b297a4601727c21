"""Mixed precision: which autocast dtype a run uses and whether it needs a GradScaler."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """bf16 autocast can only pay on CPUs with native bf16 dot products (AVX512-BF16 / AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def cpu_prefers_bf16() -> bool:
    """Whether bf16 matmuls are actually faster than fp32 here (about 50 ms to find out).

    Having the instructions is not enough: on a Zen 4 bf16 GEMMs ran 2.4x fp32's rate, on an
    Intel Xeon with AVX512-BF16 but no AMX they ran at 0.55x. So `auto` times both once.
    """
    if not cpu_supports_bf16():
        return False
    import time

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(768, 768).to(dtype)
        b = torch.randn(768, 768).to(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) < 0.9 * best(torch.float32)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware makes it faster, else fp32 (fp16 on CUDA without bf16).
    fp16 is refused off CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_prefers_bf16() else "fp32"
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
