"""Symmetric video-text InfoNCE over the global batch (paper section 3.4, eq. 4).

loss = (L_v->t + L_t->v) / 2, logits = cos(v_i, t_j) / tau, in fp32 with autocast off. Under
torch.distributed each rank scores its rows against every rank's keys; the gather's backward
sums gradients over ranks, so after DDP's average the gradient is that of the concatenated batch.
Duplicate captions (same `caption_id`) are never negatives of each other: video -> text scores
each distinct caption once (its own plus first occurrences of others); text -> video drops the
other clips of the same caption. Without duplicates this is exactly the CLIP loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tgmae.distributed import rank_world

LOGIT_SCALE_MAX = 100.0  # CLIP's clamp on 1 / tau (tau >= 0.01)
LOGIT_SCALE_MIN = 1.0  # open_clip's lower clamp (tau <= 1)


def _gathered(x: torch.Tensor, world: int) -> torch.Tensor:
    """[B, ...] -> [world * B, ...]: every rank's x, in rank order."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def _summed(x: torch.Tensor) -> torch.Tensor:
    """x summed over ranks, in a new tensor."""
    y = x.contiguous().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


class _GatherWithGrad(torch.autograd.Function):
    """[B, ...] local -> [world * B, ...] in rank order; backward: all-reduce, local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        return _gathered(x, world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _summed(grad)[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; backward sums the incoming gradients over ranks too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _summed(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _summed(grad)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [world * B, ...] (rank order; same shape on every rank); gradient flows back to
    this rank's rows. Identity when not distributed."""
    _, world = rank_world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x) if torch.is_grad_enabled() and x.requires_grad else _gathered(x, world)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable (gradient = sum of the ranks' gradients). Identity when
    not distributed."""
    if rank_world()[1] == 1:
        return x
    return _AllReduceWithGrad.apply(x) if torch.is_grad_enabled() and x.requires_grad else _summed(x)


def first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """[G] int -> [G] bool, True where ids[j] appears for the first time (in index order)."""
    same = ids[:, None] == ids[None, :]  # [G, G]
    return ~torch.tril(same, diagonal=-1).any(dim=1)


def candidate_masks(local_ids: torch.Tensor, global_ids: torch.Tensor,
                    offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each local row may score against (the duplicate-caption rule, module doc).

    local_ids [B], global_ids [G] (local rows sit at offset..offset+B-1) ->
    (keep_v2t [B, G], keep_t2v [B, G]) bool; the positive (column offset + i) is always kept.
    """
    cols = torch.arange(global_ids.shape[0], device=global_ids.device)
    rows = torch.arange(local_ids.shape[0], device=global_ids.device) + offset
    positive = cols[None, :] == rows[:, None]  # [B, G]
    other_caption = local_ids[:, None] != global_ids[None, :]  # [B, G]
    keep_t2v = positive | other_caption
    keep_v2t = positive | (other_caption & first_occurrence(global_ids)[None, :])
    return keep_v2t, keep_t2v


def info_nce_rows(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                  caption_id: Optional[torch.Tensor] = None,
                  gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """video [B, D], text [B, D] (paired by row, normalized here), logit_scale = 1 / tau, caption_id
    [B] int64 >= 0 or None (all distinct), gather: global-batch negatives when distributed
    -> (loss_v2t [B], loss_t2v [B]) fp32: -log softmax of the positive. ValueError on bad shapes
    or a negative caption id."""
    if video.dim() != 2 or video.shape != text.shape:
        raise ValueError(f"video and text embeddings must both be [B, D], got {tuple(video.shape)} "
                         f"and {tuple(text.shape)}")
    b = video.shape[0]
    if caption_id is not None:
        if caption_id.shape != (b,):
            raise ValueError(f"caption_id must be [B] = [{b}], got {tuple(caption_id.shape)}")
        if bool((caption_id < 0).any()):
            raise ValueError("caption_id < 0 (a clip without a caption) cannot enter the contrastive "
                             "loss: every clip needs a caption (check captions.file covers the data)")
        caption_id = caption_id.to(device=video.device, dtype=torch.int64)
    with torch.autocast(device_type=video.device.type, enabled=False):
        v = F.normalize(video.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        rank, world = rank_world() if gather else (0, 1)
        offset = rank * b
        v_all, t_all = (all_gather_with_grad(v), all_gather_with_grad(t)) if world > 1 else (v, t)
        if caption_id is None:  # all distinct: every row of the global batch its own id
            ids_all = torch.arange(world * b, device=video.device)
            caption_id = ids_all[offset:offset + b]
        else:
            ids_all = all_gather_with_grad(caption_id) if world > 1 else caption_id
        scale = torch.as_tensor(logit_scale, device=v.device).float()
        keep_v2t, keep_t2v = candidate_masks(caption_id, ids_all, offset)
        target = torch.arange(b, device=v.device) + offset
        logits_v2t = (scale * (v @ t_all.T)).masked_fill(~keep_v2t, float("-inf"))  # [B, G]
        logits_t2v = (scale * (t @ v_all.T)).masked_fill(~keep_t2v, float("-inf"))  # [B, G]
        loss_v2t = F.cross_entropy(logits_v2t, target, reduction="none")
        loss_t2v = F.cross_entropy(logits_t2v, target, reduction="none")
    return loss_v2t, loss_t2v


def info_nce(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
             caption_id: Optional[torch.Tensor] = None, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE: video [B, D], text [B, D], logit_scale = 1 / tau, caption_id [B] or
    None -> scalar (L_v->t + L_t->v) / 2, each a mean over the local rows. Under DDP the mean
    of this value over ranks is the loss of the concatenated global batch (module doc)."""
    loss_v2t, loss_t2v = info_nce_rows(video, text, logit_scale, caption_id, gather)
    return 0.5 * (loss_v2t.mean() + loss_t2v.mean())


class InfoNCE(nn.Module):
    """Symmetric InfoNCE with a fixed or learnable temperature tau.

    learnable: learn log(1 / tau) (CLIP's `logit_scale`), clamped to [log 1, log 100] before every
    use; fixed, the same quantity is a buffer (both checkpoint as `log_scale`).
    forward(video [B, D], text [B, D], caption_id [B] or None) -> scalar; gathers the global batch
    in training mode only, so one rank can evaluate without blocking.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False) -> None:
        super().__init__()
        if learnable and not 1.0 / LOGIT_SCALE_MAX <= temperature <= 1.0 / LOGIT_SCALE_MIN:
            raise ValueError(
                f"learnable temperature={temperature}: must start in [{1 / LOGIT_SCALE_MAX}, "
                f"{1 / LOGIT_SCALE_MIN}], the clamped range"
            )
        self.learnable = learnable
        value = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def logit_scale(self) -> torch.Tensor:
        """1 / tau as a 0-D tensor (differentiable when learnable)."""
        if self.learnable:
            with torch.no_grad():
                self.log_scale.clamp_(math.log(LOGIT_SCALE_MIN), math.log(LOGIT_SCALE_MAX))
        return self.log_scale.exp()

    @property
    def temperature(self) -> float:
        """Current tau (the clamped value when learnable)."""
        log_scale = float(self.log_scale.detach())
        if self.learnable:
            log_scale = min(max(log_scale, math.log(LOGIT_SCALE_MIN)), math.log(LOGIT_SCALE_MAX))
        return math.exp(-log_scale)

    def forward(self, video: torch.Tensor, text: torch.Tensor,
                caption_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        return info_nce(video, text, self.logit_scale(), caption_id, gather=self.training)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, learnable={self.learnable}"
