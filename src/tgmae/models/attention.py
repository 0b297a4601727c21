"""Multi-head self-attention with VideoMAE's bias layout and a per-precision kernel choice.

Parameters match the official VideoMAE names: `qkv.weight` [3D, D] without bias, plus separate
`q_bias` and `v_bias` [D] (the key bias is fixed at zero), then `proj`.

Kernels for softmax(q k^T / sqrt(d)) v:
- "sdpa": `torch.nn.functional.scaled_dot_product_attention` in the input dtype.
- "sdpa_fp32": the same in float32 (q, k, v upcast, output cast back), autocast off inside.
- "math": explicit matmul-softmax-matmul (reference; stores the [N, N] probabilities).
- "auto" (default): "sdpa", except bf16/fp16 on a CPU without AMX, where "sdpa_fp32". Measured
  on the 2-core avx512_bf16 machine (benchmarks/pretrain_step.py, docs/benchmarks.md): bf16
  GEMMs there run at ~0.6x the fp32 rate and the bf16 flash-SDPA backward is slow, so the fp32
  kernel was 1.8x faster than bf16 SDPA for the 1568-token decoder and 1.1-2x faster than
  the explicit bf16 kernel at every length we use. It is also the more accurate choice.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Kernel = Literal["auto", "sdpa", "sdpa_fp32", "math"]
KERNELS = ("auto", "sdpa", "sdpa_fp32", "math")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] x3 -> [B, H, N, d]: softmax(q k^T / sqrt(d)) v, spelled out."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # [B, H, N, N]
    return torch.matmul(scores.softmax(dim=-1), v)


def sdpa_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] x3 -> [B, H, N, d] in q's dtype, computed by float32 SDPA."""
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out.to(q.dtype)


def _cpu_low_precision_prefers_fp32() -> bool:
    """True unless the CPU has AMX tiles (there bf16 matmuls are much faster than fp32)."""
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return not has_amx()


_CPU_FP32 = _cpu_low_precision_prefers_fp32()


def pick_kernel(q: torch.Tensor, kernel: Kernel) -> str:
    """Resolve "auto" to a concrete kernel for these [B, H, N, d] queries."""
    if kernel != "auto":
        return kernel
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and _CPU_FP32:
        return "sdpa_fp32"
    return "sdpa"


class Attention(nn.Module):
    """[B, N, D] -> [B, N - q_start, D] self-attention over all N tokens (no attention mask).

    Args:
        dim: token width D.
        num_heads: heads; D % num_heads == 0.
        kernel: one of KERNELS (see the module docstring).
    """

    def __init__(self, dim: int, num_heads: int, kernel: Kernel = "auto") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"attention kernel {kernel!r}: expected one of {KERNELS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel: Kernel = kernel
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, q_start: int = 0) -> torch.Tensor:
        """x [B, N, D] -> [B, N - q_start, D]: outputs of tokens q_start.. only (all attend to
        every token; q_start > 0 skips the query work of tokens whose output is not needed)."""
        B, N, D = x.shape
        H, d = self.num_heads, self.head_dim
        # Split q/k/v by unbinding dim 2 of [B, N, 3, H, d]: in backward the three gradients are
        # stacked straight back into that layout (one copy; unbinding a permuted view costs two).
        if q_start == 0:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])  # [3D]
            qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3D]
            q, k, v = (t.transpose(1, 2) for t in qkv.view(B, N, 3, H, d).unbind(2))  # [B, H, N, d]
        else:
            w = self.qkv.weight
            q = F.linear(x[:, q_start:], w[:D], self.q_bias).view(B, N - q_start, H, d).transpose(1, 2)
            kv = F.linear(x, w[D:], torch.cat([torch.zeros_like(self.v_bias), self.v_bias]))
            k, v = (t.transpose(1, 2) for t in kv.view(B, N, 2, H, d).unbind(2))
        kernel = pick_kernel(q, self.kernel)
        if kernel == "math":
            out = math_attention(q, k, v)
        elif kernel == "sdpa_fp32":
            out = sdpa_fp32(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # [B, H, Nq, d]
        return self.proj(out.transpose(1, 2).reshape(B, N - q_start, D))


def set_attention_kernel(model: nn.Module, kernel: Kernel) -> None:
    """Use `kernel` in every Attention module of `model` (e.g. "sdpa" to compare kernels)."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: expected one of {KERNELS}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.kernel = kernel


__all__ = ["Attention", "KERNELS", "math_attention", "sdpa_fp32", "pick_kernel", "set_attention_kernel"]
