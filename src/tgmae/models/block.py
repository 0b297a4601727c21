"""Pre-norm transformer block (VideoMAE layout): x + attn(norm1(x)), then x + mlp(norm2(x)).

Parameter names match the official checkpoints: norm1, attn.{qkv, q_bias, v_bias, proj}, norm2,
mlp.{fc1, fc2}. Stochastic depth (DropPath) drops a sample's residual branch in training only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tgmae.models.attention import Attention, Kernel


class DropPath(nn.Module):
    """[B, ...] -> [B, ...]: zero each sample's branch with probability p, rescale by 1/(1-p).

    Identity in eval mode. Draws from the default torch generator, like nn.Dropout.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """[B, N, D] -> [B, N, D]: fc1 -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """[B, N, D] -> [B, N, D] pre-norm transformer block.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim.
        drop_path: stochastic depth rate of this block (0 = nn.Identity).
        eps: LayerNorm eps.
        kernel: attention kernel choice (see tgmae.models.attention).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 eps: float = 1e-6, kernel: Kernel = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, kernel=kernel)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, q_start: int = 0) -> torch.Tensor:
        """[B, N, D] -> [B, N - q_start, D]: q_start > 0 computes only the last tokens' outputs
        (they still attend to all N), e.g. the decoder's final block, read only at masked tokens."""
        x_out = x[:, q_start:] if q_start else x
        x_out = x_out + self.drop_path(self.attn(self.norm1(x), q_start))
        return x_out + self.drop_path(self.mlp(self.norm2(x_out)))


def run_block(blk: Block, x: torch.Tensor, grad_checkpoint: bool, q_start: int = 0) -> torch.Tensor:
    """`blk(x, q_start)`, under activation checkpointing when `grad_checkpoint` and autograd is on.

    Checkpointing (torch.utils.checkpoint, non-reentrant) keeps only the block's input and
    recomputes its activations in the backward pass: same values and gradients (the RNG state is
    restored, so DropPath draws the same samples), less memory, one more forward per block."""
    if grad_checkpoint and torch.is_grad_enabled():
        return checkpoint(blk, x, q_start, use_reentrant=False)
    return blk(x, q_start)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth per block, linear from 0 to `rate` over `depth` blocks (VideoMAE rule)."""
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


def init_vit_weights(module: nn.Module) -> None:
    """VideoMAE init, for `module.apply`: xavier-uniform Linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
