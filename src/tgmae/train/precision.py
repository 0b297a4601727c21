"""Mixed precision: which autocast dtype a run uses and whether it needs a GradScaler."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Optional

import torch

from tgmae.config import ConfigError, RunConfig


PRECISION_PROBE_TOKENS, PRECISION_PROBE_WIDTH = 256, 768  # a ViT-B MLP on 256 tokens


@lru_cache(maxsize=1)
def cpu_prefers_bf16() -> bool:
    """Whether a bf16-autocast training step is faster than fp32 on this CPU, measured (CPU flags
    do not say it, docs/benchmarks.md): forward + backward of a ViT-B MLP block on [256, 768]
    tokens, via `tgmae.autotune.choose`. bf16 must win by 10%; autotuning off: fp32."""
    from tgmae import autotune

    T, D = PRECISION_PROBE_TOKENS, PRECISION_PROBE_WIDTH
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.LayerNorm(D), torch.nn.Linear(D, 4 * D), torch.nn.GELU(),
                              torch.nn.Linear(4 * D, D))
    x = torch.randn(T, D, generator=g)

    def step(bf16: bool) -> None:
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    name = f"precision/cpu/mlp{T}x{D}"
    choice = autotune.choose(name, {"fp32": lambda: step(False), "bf16": lambda: step(True)},
                             torch.device("cpu"), default="fp32", rounds=5, margin=0.1)
    return choice == "bf16"


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> CPU: bf16 where a measured step is faster (`cpu_prefers_bf16`), else fp32;
    CUDA: bf16 where supported, else fp16. fp16 off CUDA raises ConfigError."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_prefers_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision='fp16' needs a CUDA device; use bf16 or fp32 on CPU")
    return name


def usable(precision: str, device: torch.device) -> bool:
    """Whether `device` runs autocast in `precision` (fp16: CUDA only; bf16 on CUDA: where supported)."""
    if precision == "fp16":
        return device.type == "cuda"
    if precision == "bf16" and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return precision in ("fp32", "bf16")


def begun_precision(cfg: RunConfig) -> Optional[str]:
    """The precision the run that `cfg` resumes (checkpoint.resume, `resume_source`) was trained in,
    kept in its checkpoints' extras; None for a fresh run or a checkpoint written before it was kept.
    train.precision=auto reuses it: measured again (`cpu_prefers_bf16`: another thread count, a
    deleted cache, TGMAE_AUTOTUNE=off) a resumed run could switch bf16 <-> fp32 half way."""
    from tgmae.train.resume import begun

    began = begun(cfg, "precision")
    return began if began in ("fp32", "bf16", "fp16") else None


def run_precision(cfg: RunConfig, device: torch.device) -> str:
    """The precision of the run `cfg` trains or resumes: under auto the one it began with where
    `device` runs it (`begun_precision`), else `resolve_precision`. For a task's evaluations inside
    the run (the Trainer's own choice logs why, `Trainer._choose_precision`)."""
    began = begun_precision(cfg) if cfg.train.precision == "auto" else None
    return began if began and usable(began, device) else resolve_precision(cfg.train.precision, device)


def autocast(precision: str, device: torch.device):
    """Context manager for the forward pass; fp32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A real scaler only for fp16 (bf16 has fp32's range); disabled scalers are pass-through."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
