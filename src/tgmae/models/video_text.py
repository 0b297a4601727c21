"""Masked video-text contrastive learning on top of VideoMAE (paper sections 3.4-3.5, Figure 4).

`VideoTextPretrainer` wraps a `VideoMAEPretrainer` as `mae.` and adds a projection head on the
mean visible-token latent, an optional linear map on the frozen text embedding, and `InfoNCE`.
Objectives: `mae` (InfoNCE only monitored, under no_grad, heads frozen), `contrastive` (the
decoder never runs and is frozen), `mae+contrastive` (MSE + weight x InfoNCE). Freezing what is
unused lets DDP run with `find_unused_parameters=False`. Do not apply `convert_sync_batchnorm`:
`GlobalBatchNorm1d` already spans ranks (and works on gloo/CPU, unlike SyncBatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tgmae.config import ContrastiveConfig, ModelConfig
from tgmae.distributed import rank_world
from tgmae.models.factory import build_pretraining_model
from tgmae.models.infonce import InfoNCE, all_reduce_with_grad
from tgmae.models.pretrainer import VideoMAEPretrainer


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """[B, C] -> [B, C] BatchNorm1d whose training statistics span every rank's batch.

    Training: two-pass fp32 mean and biased variance through a differentiable all-reduce (equal to
    BatchNorm1d of the concatenated batch, gradients included); running statistics as BatchNorm1d.
    Eval: plain BatchNorm1d. Same parameters and buffers as nn.BatchNorm1d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"GlobalBatchNorm1d expects [B, C], got {tuple(x.shape)}")
        if x.shape[0] < 2 and rank_world()[1] == 1:
            raise ValueError(f"GlobalBatchNorm1d needs more than 1 value per channel in training, "
                             f"got a batch of {x.shape[0]}")
        xf = x.float()
        count = torch.tensor([float(x.shape[0])], device=x.device)
        stats = all_reduce_with_grad(torch.cat([xf.sum(dim=0), count]))  # [C + 1]
        n = stats[-1].detach()  # global batch size
        mean = stats[:-1] / n  # [C]
        centered = xf - mean
        var = all_reduce_with_grad((centered * centered).sum(dim=0)) / n  # [C], biased
        y = centered * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y.to(x.dtype)


class ProjectionHead(nn.Module):
    """SimCLR-style projection MLP: [B, in_dim] -> [B, out_dim]. Linear - BN - ReLU - Linear -
    BN(affine=False) (SimCLR v2 / MoCo v3), no biases, every BN a GlobalBatchNorm1d."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.bn1 = GlobalBatchNorm1d(hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=False)
        self.bn2 = GlobalBatchNorm1d(out_dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.act(self.bn1(self.fc1(x)))))


@dataclass
class VideoTextOutput:
    """loss: the objective's scalar; loss_mse: MSE on masked tokens (None for `contrastive`);
    loss_nce: InfoNCE of the local rows (detached for `mae`); pred [B, N_dec, P] or None; mask
    [B, N] bool (True = masked); latent [B, N_vis, D]; video_embedding, text_embedding
    [B, proj_dim] L2-normalized fp32; temperature: 0-D detached tau; decoded [B, N] bool: `pred`'s
    tokens (None when the decoder does not run)."""

    loss: torch.Tensor
    loss_mse: Optional[torch.Tensor]
    loss_nce: torch.Tensor
    pred: Optional[torch.Tensor]
    mask: torch.Tensor
    latent: torch.Tensor
    video_embedding: torch.Tensor
    text_embedding: torch.Tensor
    temperature: torch.Tensor
    decoded: Optional[torch.Tensor] = None

    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached scalars to log: loss_nce and temperature always, loss_mse when computed."""
        out = {"loss_nce": self.loss_nce.detach(), "temperature": self.temperature}
        if self.loss_mse is not None:
            out["loss_mse"] = self.loss_mse.detach()
        return out


class VideoTextPretrainer(nn.Module):
    """VideoMAE + masked video-text InfoNCE; the arguments are a validated `ContrastiveConfig`'s.

    Args:
        mae: the pretraining model; kept as `self.mae`.
        text_dim: width Dt of the cached text embeddings.
        objective: "mae" | "contrastive" | "mae+contrastive".
        weight: lambda on InfoNCE in "mae+contrastive".
        temperature: tau (initial value when learnable).
        learnable_temperature: learn tau (CLIP-style clamped log-parameter).
        proj_dim: output width of the video projection head (and of the text side).
        text_projection: learnable Linear(Dt, proj_dim, no bias) on the text embedding; off, Dt
            must equal proj_dim (else ValueError).
        hidden_dim: projection head hidden width; None = the encoder width D.
        view_ratio: None (the paper's): InfoNCE pools the MAE pass's visible tokens. In [0, 1):
            a second encoder pass over the MAE mask with masked tokens uncovered until
            `view_ratio` of the N stay masked (`view_mask`; docs/sanity.md).

    forward(video [B, C, T, H, W], mask [B, N] bool (True = masked), text_embedding [B, Dt],
    caption_id [B] int64 or None) -> VideoTextOutput. Masks are inputs: any generator works.
    """

    def __init__(self, mae: VideoMAEPretrainer, text_dim: int, *, objective: str = "mae",
                 weight: float = 1.0, temperature: float = 0.07, learnable_temperature: bool = False,
                 proj_dim: int = 256, text_projection: bool = False,
                 hidden_dim: Optional[int] = None, view_ratio: Optional[float] = None) -> None:
        super().__init__()
        if not text_projection and text_dim != proj_dim:
            raise ValueError(
                f"text embeddings have {text_dim} dims but contrastive.proj_dim={proj_dim}: set "
                f"contrastive.text_projection=true (learnable {text_dim} -> {proj_dim} map) or "
                f"contrastive.proj_dim={text_dim}"
            )
        self.objective = objective
        self.weight = float(weight)
        self.view_ratio = view_ratio
        self.text_dim = text_dim
        self.proj_dim = proj_dim
        self.mae = mae
        d = mae.arch.embed_dim
        self.video_head = ProjectionHead(d, hidden_dim or d, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim, bias=False) if text_projection else nn.Identity()
        self.nce = InfoNCE(temperature, learnable_temperature)
        if objective == "mae":
            for module in (self.video_head, self.text_proj, self.nce):
                module.requires_grad_(False)
        elif objective == "contrastive":
            for p in self.decoder_parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, mae: VideoMAEPretrainer, cfg: ContrastiveConfig,
                    text_dim: int) -> "VideoTextPretrainer":
        """Wrap `mae` with the `contrastive` config section."""
        return cls(mae, text_dim, objective=cfg.objective, weight=cfg.weight,
                   temperature=cfg.temperature, learnable_temperature=cfg.learnable_temperature,
                   proj_dim=cfg.proj_dim, text_projection=cfg.text_projection,
                   view_ratio=cfg.view_ratio)

    # -- stages --------------------------------------------------------------------------------

    def embed_video(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, N_vis, D] -> [B, proj_dim]: mean over visible tokens, projection head."""
        return self.video_head(latent.mean(dim=1))

    def embed_text(self, text_embedding: torch.Tensor) -> torch.Tensor:
        """[B, Dt] frozen text embedding -> [B, proj_dim]: text_projection (identity when off)."""
        return self.text_proj(text_embedding.float())

    def forward_contrastive(
        self, latent: torch.Tensor, text_embedding: torch.Tensor, caption_id: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent [B, N_vis, D], text [B, Dt], caption_id [B] -> (video_emb, text_emb, loss_nce);
        embeddings [B, proj_dim] L2-normalized fp32."""
        v = self.embed_video(latent)
        t = self.embed_text(text_embedding)
        loss = self.nce(v, t, caption_id)
        return F.normalize(v.float(), dim=-1), F.normalize(t.float(), dim=-1), loss

    def view_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, N] MAE mask -> [B, N] lighter mask (True = masked): round(view_ratio * N) random
        masked tokens per clip stay masked (default torch generator on the mask's device)."""
        n_keep = int(round(self.view_ratio * mask.shape[1]))
        if n_keep > int(mask.sum(dim=1).min()):
            raise ValueError(f"contrastive.view_ratio={self.view_ratio} masks more tokens than the MAE mask")
        score = torch.rand(mask.shape, device=mask.device).masked_fill_(~mask, 2.0)  # visible last
        order = score.argsort(dim=1)
        view = torch.zeros_like(mask)
        return view.scatter_(1, order[:, :n_keep], True)

    def forward(self, video: torch.Tensor, mask: torch.Tensor, text_embedding: torch.Tensor,
                caption_id: Optional[torch.Tensor] = None) -> VideoTextOutput:
        b = video.shape[0]
        if text_embedding.shape != (b, self.text_dim):
            raise ValueError(f"text_embedding must be [B, Dt] = [{b}, {self.text_dim}], "
                             f"got {tuple(text_embedding.shape)}")
        loss_mse = pred = decoded = None
        if self.objective == "contrastive":  # encoder + heads only: the decoder never runs
            latent = self.mae.forward_encoder(video, self.mae.split(mask))
        else:
            mae_out = self.mae(video, mask)
            latent, pred, loss_mse, decoded = mae_out.latent, mae_out.pred, mae_out.loss, mae_out.decoded
        nce_latent = latent
        if self.view_ratio is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.objective != "mae"):
                nce_latent = self.mae.forward_encoder(video, self.mae.split(self.view_mask(mask)))
        if self.objective == "mae":
            with torch.no_grad():
                v, t, loss_nce = self.forward_contrastive(nce_latent.detach(), text_embedding, caption_id)
            loss = loss_mse
        else:
            v, t, loss_nce = self.forward_contrastive(nce_latent, text_embedding, caption_id)
            loss = loss_nce if self.objective == "contrastive" else loss_mse + self.weight * loss_nce
        return VideoTextOutput(
            loss=loss, loss_mse=loss_mse, loss_nce=loss_nce, pred=pred, mask=mask, latent=latent,
            video_embedding=v, text_embedding=t,
            temperature=torch.exp(-self.nce.log_scale.detach()),  # clamped by the loss call
            decoded=decoded,
        )

    # -- parameters ----------------------------------------------------------------------------

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """The MAE decoder side: everything of `mae` outside its encoder (encoder_to_decoder,
        mask_token, decoder.*)."""
        return (p for n, p in self.mae.named_parameters() if not n.startswith("encoder."))

    def no_weight_decay(self) -> set[str]:
        """MAE's no-decay names (prefixed) and the temperature."""
        return {f"mae.{n}" for n in self.mae.no_weight_decay()} | {"nce.log_scale"}

    @property
    def arch(self):
        return self.mae.arch

    @property
    def encoder(self) -> nn.Module:
        return self.mae.encoder

    def extra_repr(self) -> str:
        return (f"objective={self.objective!r}, weight={self.weight}, text_dim={self.text_dim}, "
                f"view_ratio={self.view_ratio}")


def build_video_text_model(model_cfg: ModelConfig, contrastive_cfg: ContrastiveConfig,
                           num_frames: int, image_size: int, text_dim: int,
                           pixel_mean: Optional[tuple[float, ...]] = None,
                           pixel_std: Optional[tuple[float, ...]] = None,
                           **options: Any) -> VideoTextPretrainer:
    """`model` + `contrastive` sections, clip geometry and text width -> fresh VideoTextPretrainer
    (`options` go to `build_pretraining_model`; load pretrained MAE weights into `.mae`)."""
    mae = build_pretraining_model(model_cfg, num_frames, image_size, pixel_mean, pixel_std, **options)
    return VideoTextPretrainer.from_config(mae, contrastive_cfg, text_dim)
