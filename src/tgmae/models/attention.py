"""Multi-head self-attention with VideoMAE's bias layout and a per-precision kernel choice.

Parameters match the official VideoMAE names: `qkv.weight` [3D, D] without bias, plus separate
`q_bias` and `v_bias` [D] (the key bias is fixed at zero), then `proj`.

Kernels for softmax(q k^T / sqrt(d)) v: "sdpa" (torch SDPA in the input dtype), "sdpa_fp32"
(the same in float32), "math" (explicit matmuls; keeps the [N, N] probabilities), and "auto": the
fastest for device, dtype, head width and length bucket, measured at set-up (`plan_kernels`) by
`tgmae.autotune.choose`, "sdpa" unless another is 5% faster (docs/benchmarks.md). `forward` never
measures: an unplanned length takes the stored choice, else "sdpa" (also with autotuning off).
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tgmae.config import ATTENTION_KERNELS as KERNELS

Kernel = Literal["auto", "sdpa", "sdpa_fp32", "math"]  # one of KERNELS


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] x3 -> [B, H, N, d]: softmax(q k^T / sqrt(d)) v, spelled out."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # [B, H, N, N]
    return torch.matmul(scores.softmax(dim=-1), v)


def sdpa_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] x3 -> [B, H, N, d] in q's dtype, computed by float32 SDPA."""
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out.to(q.dtype)


# "auto" never picks "math" when its probabilities [B, H, Nq, N] would exceed this (per block; a
# rule on memory, not speed, so it holds on every machine): e.g. ViT-B finetuning on 1568 tokens.
MATH_MAX_BYTES = 64 * 2**20
_resolved: dict[tuple, str] = {}  # (device type, dtype, d, n, threads) -> kernel


def _choice_name(device_type: str, dtype: torch.dtype, d: int, n: int) -> str:
    """The autotune name of the kernel choice for head width d at length bucket n."""
    return f"attention/{device_type}/{str(dtype).removeprefix('torch.')}/d{d}/n{n}"


def length_bucket(n: int) -> int:
    """Sequence length -> the power of two (>= 16) the kernel choice is measured at."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _run_kernel(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if kernel == "math":
        return math_attention(q, k, v)
    if kernel == "sdpa_fp32":
        return sdpa_fp32(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


@torch.compiler.disable
def measure_kernel(device: torch.device, dtype: torch.dtype, heads: int, d: int, n: int) -> str:
    """Fastest kernel for forward + backward of [1, min(heads, 2), n, d] in `dtype` on this
    machine (tgmae.autotune.choose; "sdpa" unless another is 5% faster). Set-up only."""
    from tgmae import autotune  # below models in the import order; imported late for start-up

    dev = torch.device(device)
    key = (dev.type, dtype, d, n, torch.get_num_threads())
    if key in _resolved:
        return _resolved[key]
    name = _choice_name(dev.type, dtype, d, n)
    g = torch.Generator().manual_seed(0)
    shape = (1, min(heads, 2), n, d)
    with torch.inference_mode(False):  # the first call may come from an inference-mode forward
        qkv = [torch.randn(shape, generator=g).to(dev, dtype).requires_grad_() for _ in range(3)]
    names = ("sdpa", "math") if dtype == torch.float32 else ("sdpa", "sdpa_fp32", "math")

    def work(kernel: str) -> None:
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autocast(dev.type, enabled=False)):
            _run_kernel(kernel, *qkv).float().sum().backward()
        for t in qkv:
            t.grad = None

    candidates = {kn: (lambda kn=kn: work(kn)) for kn in names}
    _resolved[key] = autotune.choose(name, candidates, dev, default="sdpa", rounds=3, margin=0.05)
    return _resolved[key]


def kernel_plan(model: nn.Module, device: torch.device, dtype: torch.dtype, lengths: Iterable[int]) -> dict[str, str]:
    """{"d{head width}/n{length bucket}": kernel} the "auto" Attention modules of `model` use at
    `lengths` in `dtype` on `device` (`plan_kernels`' choices, else the stored or default one):
    what a run keeps in its checkpoints, so a resume computes as it began (`pin_kernels`)."""
    dev = torch.device(device)
    widths = sorted({m.head_dim for m in model.modules() if isinstance(m, Attention) and m.kernel == "auto"})
    plan = {}
    for d in widths:
        for n in sorted({length_bucket(x) for x in lengths}):
            key = (dev.type, dtype, d, n, torch.get_num_threads())
            plan[f"d{d}/n{n}"] = _resolved.get(key) or _known_kernel(key)
    return plan


def pin_kernels(device: torch.device, dtype: torch.dtype, plan: dict[str, str]) -> None:
    """Use `plan` (`kernel_plan`'s) for "auto" in this process instead of measuring: a resumed
    run's kernels, which a new measurement (another thread count, a deleted cache,
    TGMAE_AUTOTUNE=off) could change half way, and its weights with them. ValueError for a plan
    that is not one."""
    dev = torch.device(device)
    for name, kernel in plan.items():
        d, _, n = name.partition("/")
        if kernel not in KERNELS or kernel == "auto" or not (d[1:].isdigit() and n[1:].isdigit()):
            raise ValueError(f"attention plan entry {name!r}: {kernel!r}")
        _resolved[(dev.type, dtype, int(d[1:]), int(n[1:]), torch.get_num_threads())] = kernel


def pick_kernel(q: torch.Tensor, kernel: Kernel, n: int | None = None) -> str:
    """Resolve "auto" for queries [B, H, Nq, d] attending to n keys (default Nq): the set-up's
    choice for that length bucket, else the stored one / "sdpa" (`_known_kernel`). Never measures."""
    if kernel != "auto":
        return kernel
    keys = q.shape[-2] if n is None else n
    if q.shape[0] * q.shape[1] * q.shape[-2] * keys * q.element_size() > MATH_MAX_BYTES:
        return "sdpa"  # "math" would keep a large [B, H, N, N] buffer per block for backward
    key = (q.device.type, q.dtype, q.shape[-1], length_bucket(keys), torch.get_num_threads())
    if key not in _resolved:
        return _known_kernel(key)
    return _resolved[key]


_looked_up: dict[tuple, str] = {}  # keys no set-up planned in this process: the cached choice or "sdpa"


@torch.compiler.disable
def _known_kernel(key: tuple) -> str:
    """An unplanned length: the choice stored on this machine (`tgmae.autotune.lookup`), else "sdpa"."""
    if key not in _looked_up:
        from tgmae import autotune

        dev, dtype, d, n, _ = key
        _looked_up[key] = autotune.lookup(_choice_name(dev, dtype, d, n), torch.device(dev), KERNELS) or "sdpa"
    return _looked_up[key]


def plan_kernels(model: nn.Module, device: torch.device, dtype: torch.dtype, lengths: Iterable[int]) -> dict:
    """Set-up: measure the kernel of every "auto" Attention module of `model` for each length in
    `lengths` (bucketed) in `dtype` on `device`. Returns {(head width, length bucket): kernel}."""
    shapes = {(m.num_heads, m.head_dim) for m in model.modules() if isinstance(m, Attention) and m.kernel == "auto"}
    buckets = sorted({length_bucket(n) for n in lengths})
    return {(d, n): measure_kernel(device, dtype, heads, d, n) for heads, d in sorted(shapes) for n in buckets}


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
        out = _run_kernel(pick_kernel(q, self.kernel, N), q, k, v)  # [B, H, Nq, d]
        return self.proj(out.transpose(1, 2).reshape(B, N - q_start, D))


def set_attention_kernel(model: nn.Module, kernel: Kernel) -> None:
    """Use `kernel` in every Attention module of `model` (e.g. "sdpa" to compare kernels)."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r}: expected one of {KERNELS}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.kernel = kernel
