"""V-JEPA's attentive probe: a cross-attention pooler + linear head on a frozen token grid.

V-JEPA (Bardes et al. 2024) and V-JEPA 2 report every frozen-backbone number with this probe
instead of mean pooling + linear, which undervalues MAE-style encoders whose information sits in
particular tokens. Module as facebookresearch/jepa `src/models/attentive_pooler.py`
(`AttentivePooler`, `AttentiveClassifier`) and `src/models/utils/modules.py`
(`CrossAttentionBlock`):

    q0 = learnable query tokens [1, Q, D] (trunc-normal, std 0.02)
    y  = CrossAttention(q0, LN1(x))          x: tokens [B, N, D]; the queries are not normalised
    q1 = q0 + y
    q2 = q1 + MLP(LN2(q1))                   MLP: D -> 4D -> D, GELU
    logits = Linear(mean over the Q queries of q2)   (V-JEPA: Q = 1, so the mean is a squeeze)

CrossAttention: q = Wq q0, (k, v) = Wkv x, per-head softmax(q k^T / sqrt(D / H)) v, then Wproj.
Init as jepa: Linear weights trunc-normal std 0.02, biases 0, LayerNorm (1, 0), and the two
residual-branch outputs (attention proj, MLP fc2) divided by sqrt(2).

Training (the shared loop's task, `tgmae.evaluate.attentive_probe`) as V-JEPA's frozen evaluation
(`evals/video_classification_frozen/eval.py`, configs
`configs/evals/vitl16_k400_16x8x3.yaml`, `vitl16_ssv2_16x2x3.yaml`): AdamW, lr 1e-3 with no
warm-up and a cosine decay to 0 over the run (per step), weight decay 0.01 on >= 2-D weights
(biases and LayerNorm parameters none), 20 epochs, gradient norm clipped to 1.0, cross-entropy
without label smoothing. Their global batch is 256 clips (4 per GPU x 64 GPUs).

Testing as finetuning does (`tgmae.evaluate.multiview`): every view's token grid goes through
the probe, the softmax is averaged over a video's views. (V-JEPA's K400 protocol instead
concatenates the tokens of a video's temporal segments before pooling; not done here.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tgmae.train.precision import autocast


def _trunc_normal(t: torch.Tensor, std: float, generator: Optional[torch.Generator]) -> None:
    # bounds +-2 absolute, as jepa's trunc_normal_ (not +-2 std)
    nn.init.trunc_normal_(t, std=std, generator=generator)


class CrossAttention(nn.Module):
    """queries [B, Q, D], tokens [B, N, D] -> [B, Q, D]: multi-head attention of the queries over
    the tokens (no mask: every token is visible)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        n, h = tokens.shape[1], self.num_heads
        q = self.q(queries).view(b, nq, h, d // h).transpose(1, 2)  # [B, H, Q, d/H]
        k, v = self.kv(tokens).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x [B, H, N, d/H]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d/H)) v
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class AttentivePooler(nn.Module):
    """tokens [B, N, D] -> pooled queries [B, Q, D]: one cross-attention block (jepa's
    `AttentivePooler` with depth 1, complete_block=True). Every random init draws from
    `generator` (None: the global RNG)."""

    def __init__(self, dim: int, num_heads: int, num_queries: int = 1, mlp_ratio: float = 4.0,
                 init_std: float = 0.02, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init (replaced below) draws globally
            self.xattn = CrossAttention(dim, num_heads)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)
        _trunc_normal(self.query_tokens, init_std, generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight, init_std, generator)
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # jepa's _rescale_blocks for layer 1
            self.xattn.proj.weight.div_(math.sqrt(2.0))
            self.mlp[2].weight.div_(math.sqrt(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.expand(tokens.shape[0], -1, -1)
        q = q + self.xattn(q, self.norm1(tokens))
        return q + self.mlp(self.norm2(q))


class AttentiveClassifier(nn.Module):
    """tokens [B, N, D] -> logits [B, K]: `AttentivePooler`, mean over its queries, linear head."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, num_queries: int = 1,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads, num_queries, generator=generator)
        with torch.random.fork_rng(devices=[]):
            self.head = nn.Linear(dim, num_classes)
        _trunc_normal(self.head.weight, 0.02, generator)
        nn.init.zeros_(self.head.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] -> [B, D]."""
        return self.pooler(tokens).mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(tokens))


class AttentiveEnsemble(nn.Module):
    """K independently initialised `AttentiveClassifier`s (`members`) on the same tokens: tokens
    [B, N, D] -> logits [K, B, C], one row per member. Each member trains on its own cross-entropy
    (`ensemble_loss`); `predict_attentive` averages the members' softmax. Why: one attentive probe's
    result depends on its init (the study's tube MAE encoder, seed 0: 18.7 / 32.2 / 41.2% top-1 for
    probe seeds 0 / 1 / 2, docs/study.md); averaging K of them, as V-JEPA 2 trains several heads on
    the same features, gives the encoder's figure instead of one init's."""

    def __init__(self, members: Iterable[AttentiveClassifier]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(tokens) for m in self.members])


def ensemble_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [K, B, C] of K members, labels [B] -> the sum of the members' cross-entropies: each
    member's gradient is the one it would get trained alone."""
    return sum(F.cross_entropy(member.float(), labels) for member in logits)


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """A probe's logits [B, C] (or an ensemble's [K, B, C]) -> softmax [B, C] (averaged over members)."""
    probs = logits.float().softmax(dim=-1)
    return probs.mean(dim=0) if probs.dim() == 3 else probs


class TokenDataset(Dataset):
    """Cached token grids as a dataset: tokens [M, N, D] (or [M, V, N, D]), labels [M] ->
    {"tokens", "label"} samples."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        if tokens.shape[0] != labels.shape[0]:
            raise ValueError(f"{tokens.shape[0]} token grids but {labels.shape[0]} labels")
        self.tokens, self.labels = tokens, labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"tokens": self.tokens[i], "label": self.labels[i]}


TokenFn = Callable[[dict[str, Any]], torch.Tensor]


def cached_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's own token grids (`TokenDataset`): [B, N, D] or [B, V, N, D]."""
    return batch["tokens"]


def encoder_tokens(encoder: nn.Module, precision: str = "fp32") -> TokenFn:
    """On-the-fly token grids: batch["video"] [B, C, T, H, W] or [B, V, C, T, H, W] -> the frozen
    encoder's output [B, N, D] or [B, V, N, D] float32 (no gradient)."""

    @torch.no_grad()
    def fn(batch: dict[str, Any]) -> torch.Tensor:
        video = batch["video"]
        clips = video.flatten(0, 1) if video.dim() == 6 else video
        with autocast(precision, clips.device):
            out = encoder(clips).float()
        return out.view(*video.shape[:2], *out.shape[1:]) if video.dim() == 6 else out

    return fn


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def predict_attentive(model: nn.Module, batches: Iterable[dict[str, Any]], tokens_of: TokenFn = cached_tokens,
                      device: Optional[torch.device] = None, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """{probs [M, K], label [M]}: per video, the softmax over classes averaged over its views
    (token grids [B, V, N, D]; [B, N, D] is one view), as `tgmae.evaluate.multiview` does, and over
    an `AttentiveEnsemble`'s members."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in batches:
            batch = _to(batch, device)
            tokens = tokens_of(batch)
            views = tokens.unsqueeze(1) if tokens.dim() == 3 else tokens  # [B, V, N, D]
            with autocast(precision, device):
                logits = model(views.flatten(0, 1))
            probs.append(class_probs(logits).view(views.shape[0], views.shape[1], -1).mean(dim=1).cpu())
            labels.append(batch["label"].long().cpu())
    finally:
        model.train(was_training)
    return {"probs": torch.cat(probs), "label": torch.cat(labels)}
