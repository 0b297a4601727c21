"""Fixed sin-cos position embedding, built the way VideoMAE builds it.

VideoMAE numbers the T' * H' * W' tokens in (t, h, w) raster order and gives token n the 1-D
table row n: channel 2i is sin(n / 10000^(2i / D)), channel 2i + 1 is cos(n / 10000^(2i / D)).
Not learned and not stored in checkpoints (modules keep it as a non-persistent buffer).
"""

from __future__ import annotations

import torch


def sincos_position_table(num_tokens: int, dim: int) -> torch.Tensor:
    """[num_tokens, dim] float32 table; computed in float64 like the reference (numpy)."""
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]  # [N, 1]
    channel = torch.arange(dim, dtype=torch.float64)
    freq = torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    angle = pos / freq  # [N, D]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)
