"""Learning sanity checks: does each objective learn on data where it must? (issue 14)

Small, CPU-budgeted runs on synthetic clips rendered straight to memory (no codec, no
DataLoader), so a check measures the objective, not the data path:
- `train_supervised`: the tiny ViT + linear head, cross-entropy from scratch (the reference).
- `pretrain`: MAE, video-text InfoNCE against fixed per-class ("oracle") text vectors, or both,
  with the library's own `VideoMAEPretrainer` / `VideoTextPretrainer`.
- `linear_probe`: logistic regression on the frozen encoder's mean-pooled features.
- `patch_mean_mse` (from `tgmae.models.target`): the masked MSE of predicting every masked
  token's true per-channel mean colour, the bar MAE must go under to have learnt more than patch
  means; `visible_mean_mse` and `copy_mse` (the same place in the nearest time slice): baselines
  that need no learning. All in pixels ([0, 1]); `pixel_mse` puts a norm_pix_loss model's error
  in the same units.
The study's reconstruction check (`tgmae.study.recon_check`) is one of these runs with a fixed
recipe.

Built on the library's model (`VideoMAEPretrainer`, `VideoTextPretrainer`, `VideoClassifier`),
target and baselines (`tgmae.models.target`) and optimizer (`tgmae.train.optim`). The step loop
(`_loop`) is this harness's own: a budget in CPU seconds, clips in memory, and one seeded
generator drawing the data order, shifts and masks, which the documented numbers were made with.

Budgets are CPU seconds of this process (`time.process_time`; run with 1 torch thread), so a
figure does not depend on what else shares the machine. `benchmarks/sanity.py` runs the full
checks and writes the figures of docs/sanity.md; tests/test_study_sanity.py the fast ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tgmae.data.synthetic import ACTIONS, render_scene, sample_scene
from tgmae.models.arch import PRESETS, VideoMAEArch
from tgmae.models.classifier import VideoClassifier, classifier_arch
from tgmae.models.pretrainer import VideoMAEPretrainer
from tgmae.models.target import masked_pixel_mse, patch_mean_mse, pixel_target
from tgmae.models.tokens import mask_to_indices
from tgmae.models.video_text import VideoTextPretrainer

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass
class SanityData:
    """Rendered clips: `train` / `val` uint8 [N, T, H, W, 3], labels int64 [N] (ACTIONS ids)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(ACTIONS)


def render_clips(num_videos: int, *, frames: int = 8, size: int = 64, seed: int = 0, first: int = 0,
                 distractors: int = 0, distractor_speed: float = 1.0, background: Optional[str] = None,
                 static_camera: bool = False, classes: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos first..first+num_videos-1 of `sample_scene` (label = classes[index % len(classes)],
    all ACTIONS by default; one generator per (seed, index)) -> (uint8 [N, frames, size, size, 3],
    int64 [N]). Each clip spans the whole action. distractors / distractor_speed / background /
    static_camera: the synthetic set's knobs (`sample_scene`)."""
    classes = list(range(len(ACTIONS))) if classes is None else list(classes)
    clips, labels = [], []
    for i in range(first, first + num_videos):
        label = classes[i % len(classes)]
        scene = sample_scene(label, size, size, frames, np.random.default_rng([seed, i]),
                             distractors=distractors, distractor_speed=distractor_speed, background=background,
                             static_camera=static_camera)
        clips.append(render_scene(scene).frames)
        labels.append(label)
    return torch.from_numpy(np.stack(clips)), torch.tensor(labels, dtype=torch.int64)


def make_data(num_train: int, num_val: int, seed: int = 0, **kw) -> SanityData:
    """Disjoint train / val clips (val = the indices after train's)."""
    tr, trl = render_clips(num_train, seed=seed, **kw)
    va, val = render_clips(num_val, seed=seed, first=num_train, **kw)
    return SanityData(tr, trl, va, val)


def to_input(clips: torch.Tensor, shift: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] normalized with MEAN / STD. shift > 0: a random
    translation of up to `shift` px per clip (reflect-padded crop), the same on every frame."""
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255.0)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1, 1)
    if shift > 0:
        b, c, t, h, w = x.shape
        padded = F.pad(x.reshape(b, c * t, h, w), (shift,) * 4, mode="reflect")
        offs = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs.tolist())])
        x = x.reshape(b, c, t, h, w)
    return x


def tube_masks(batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, N] bool, True = masked: one random spatial mask per clip repeated over time (tube)."""
    t, h, w = grid
    n_masked = int(round(ratio * h * w))
    order = torch.rand(batch, h * w, generator=generator).argsort(dim=1)
    plane = torch.zeros(batch, h * w, dtype=torch.bool)
    plane.scatter_(1, order[:, :n_masked], True)
    return plane.repeat(1, t)


def random_masks(batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, N] bool, True = masked: round(ratio * N) tokens per clip drawn uniformly over space and
    time (VideoMAE's "random" masking; unlike a tube, a token hidden at time t may show at t+1)."""
    n = grid[0] * grid[1] * grid[2]
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    return mask.scatter_(1, order[:, :int(round(ratio * n))], True)


def visible_mean_mse(model: VideoMAEPretrainer, video: torch.Tensor, mask: torch.Tensor) -> float:
    """MSE of predicting every masked pixel as the clip's mean colour over its visible tokens
    (per channel, in pixel units [0, 1]): the baseline that uses only what the model sees.
    video [B, C, T, H, W], mask [B, N] bool (True = masked)."""
    split = mask_to_indices(mask, model.arch.num_tokens)
    vis = pixel_target(video, model.arch, split.visible)  # [B, n_vis, C, t*p*p]
    target = pixel_target(video, model.arch, split.masked)
    colour = vis.float().mean(dim=(1, 3), keepdim=True)  # [B, 1, C, 1]
    return float((target.float() - colour).pow(2).mean())


def copy_mse(model: VideoMAEPretrainer, video: torch.Tensor, mask: torch.Tensor) -> float:
    """MSE of a hand-written local rule: predict each masked token as the visible token at the
    same place in the nearest time slice (the earlier one on a tie), or as the clip's visible mean
    colour where that place is masked in every slice. It needs no learning and shows how much of
    the data is copyable from another time (a static background under random masks).
    video [B, C, T, H, W], mask [B, N] bool (True = masked); in pixel units [0, 1]."""
    gt, gh, gw = model.arch.grid
    tok = pixel_target(video, model.arch)  # [B, N, C, t*p*p]
    b = tok.shape[0]
    tok = tok.view(b, gt, gh * gw, *tok.shape[2:])
    m = mask.view(b, gt, gh * gw)
    colour = visible_mean_colour(tok.flatten(1, 2), mask)  # [B, 1, C, 1]
    pred = colour.unsqueeze(1).expand_as(tok).clone()
    best = torch.full(m.shape, gt, dtype=torch.long)  # distance in slices of the copy source
    for src in range(gt):
        for dst in range(gt):
            d = abs(src - dst)
            take = m[:, dst] & ~m[:, src] & (d < best[:, dst])  # [B, h*w]
            pred[:, dst][take] = tok[:, src][take]
            best[:, dst][take] = d
    return float((pred - tok).pow(2)[m].mean())


def visible_mean_colour(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, C, K] (channel-first target), mask [B, N] -> [B, 1, C, 1] mean colour of the
    visible tokens of each clip."""
    vis = (~mask).to(tokens.dtype)[:, :, None, None]
    return (tokens * vis).sum(dim=(1, 3), keepdim=True) / (vis.sum(dim=1, keepdim=True) * tokens.shape[-1])


@dataclass
class SanityRun:
    """One budgeted sanity run (not a `tgmae.config.RunConfig`: no data files, no run folder; the
    fields are the harness's). budget_s: CPU seconds of training (evaluation not counted)."""

    budget_s: float = 60.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    patch_size: int = 16
    preset: str = "tiny"
    arch: dict = field(default_factory=dict)  # overrides of the preset's sizes (tests: a smaller model)
    mask_ratio: float = 0.75
    mask_kind: str = "tube"  # tube | random
    norm_pix_loss: bool = False  # VideoMAE's per-patch normalized target (mae_errors compares in pixels)
    baselines: bool = True  # the baselines of every training batch (~40% more CPU, not charged to budget_s)
    shift: int = 4  # random translation (px) of training clips
    num_sample: int = 1  # views per clip (data.num_sample): a step takes batch_size clips, k rows each
    seed: int = 0
    max_steps: Optional[int] = None  # stop earlier than the budget (tests)
    eval_every_s: Optional[float] = None  # evaluate every this many CPU seconds (curves)
    # video-text
    objective: str = "mae"  # mae | contrastive | mae+contrastive
    nce_weight: float = 1.0
    temperature: float = 0.07
    learnable_temperature: bool = False
    proj_dim: int = 64
    text_projection: bool = False
    text_norm: bool = True
    head_lr_scale: float = 1.0
    view_ratio: Optional[float] = None  # contrastive.view_ratio (None: pool the MAE pass)

    def __post_init__(self) -> None:
        if self.mask_kind not in ("tube", "random"):
            raise ValueError(f"mask_kind={self.mask_kind!r}: expected tube|random")
        if self.num_sample < 1:
            raise ValueError(f"num_sample={self.num_sample}: must be >= 1")

    def masks(self, batch: int, grid: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        """[B, N] bool training masks (True = masked) of this run's kind and ratio."""
        fn = tube_masks if self.mask_kind == "tube" else random_masks
        return fn(batch, grid, self.mask_ratio, generator)


def make_arch(cfg: SanityRun, frames: int, size: int) -> VideoMAEArch:
    return VideoMAEArch(**(PRESETS[cfg.preset] | cfg.arch), patch_size=cfg.patch_size, tubelet_size=2, num_frames=frames,
                        image_size=size, norm_pix_loss=cfg.norm_pix_loss, pixel_mean=MEAN, pixel_std=STD)


def _optimizer(groups: list[dict], cfg: SanityRun) -> torch.optim.Optimizer:
    """The library's AdamW (`tgmae.train.optim.build_optimizer`) over `groups` ({"params",
    "lr_scale"}), weight decay on every parameter (as the documented runs were made), betas
    (0.9, 0.95), unfused (the documented numbers' kernel)."""
    from tgmae.config import OptimConfig
    from tgmae.train.optim import build_optimizer

    groups = [g | {"weight_decay": cfg.weight_decay} for g in groups]
    return build_optimizer(groups, OptimConfig(base_lr=cfg.lr, betas=(0.9, 0.95), fused=False), torch.device("cpu"))


def _lr_at(step: int, cfg: SanityRun) -> float:
    return min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def _loop(cfg: SanityRun, n_train: int, step_fn: Callable[[torch.Tensor, torch.Generator], dict],
          opt: torch.optim.Optimizer, eval_fn: Optional[Callable[[], dict]] = None) -> dict:
    """Shuffled minibatches until the CPU budget (or max_steps) is spent; constant lr after a
    linear warmup. A step may return "untimed_s": CPU seconds of bookkeeping (baselines) that
    are not charged to the budget. With cfg.num_sample = k a step takes batch_size clips, each
    k times in a row (each row draws its own shift and mask: k views), as the training loop's
    batches count videos (`tgmae.data.views`): the same views in a k-th of the passes and steps.
    Returns {"steps", "cpu_s", "log": [per-step dicts], "curve": [eval dicts]}."""
    from tgmae.train.optim import set_lr

    g = torch.Generator().manual_seed(cfg.seed)
    spent, step, log, curve, next_eval = 0.0, 0, [], [], cfg.eval_every_s
    clips = cfg.batch_size
    while spent < cfg.budget_s and (cfg.max_steps is None or step < cfg.max_steps):
        perm = torch.randperm(n_train, generator=g)
        for i in range(0, n_train - clips + 1, clips):
            t0 = time.process_time()
            set_lr(opt, cfg.lr * _lr_at(step, cfg))
            out = step_fn(perm[i:i + clips].repeat_interleave(cfg.num_sample), g)
            opt.zero_grad(set_to_none=True)
            out.pop("loss").backward()
            opt.step()
            spent += time.process_time() - t0 - out.pop("untimed_s", 0.0)
            step += 1
            log.append(out)
            if eval_fn is not None and next_eval is not None and spent >= next_eval:
                curve.append({"cpu_s": spent, "step": step, **eval_fn()})
                next_eval += cfg.eval_every_s
            if spent >= cfg.budget_s or (cfg.max_steps is not None and step >= cfg.max_steps):
                break
    return {"steps": step, "cpu_s": spent, "log": log, "curve": curve}


@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor, labels: torch.Tensor,
             batch: int = 64) -> float:
    """top-1 of fn(float video batch) -> logits over the clips."""
    hits = 0
    for i in range(0, len(clips), batch):
        hits += int((fn(to_input(clips[i:i + batch])).argmax(-1) == labels[i:i + batch]).sum())
    return hits / len(clips)


def train_supervised(data: SanityData, cfg: SanityRun) -> dict:
    """Cross-entropy from scratch -> {"train_top1", "val_top1", "steps", "cpu_s", "curve"}."""
    torch.manual_seed(cfg.seed)
    arch = make_arch(cfg, data.train.shape[1], data.train.shape[2])
    model = VideoClassifier(classifier_arch(arch), data.num_classes, head_init_scale=1.0)
    opt = _optimizer([{"params": list(model.parameters())}], cfg)

    def step(idx, g):
        model.train()
        logits = model(to_input(data.train[idx], cfg.shift, g))
        return {"loss": F.cross_entropy(logits, data.train_labels[idx])}

    def evaluate():
        model.eval()
        return {"val_top1": accuracy(model, data.val, data.val_labels)}

    res = _loop(cfg, len(data.train), step, opt, evaluate)
    model.eval()
    res.update(train_top1=accuracy(model, data.train, data.train_labels),
               val_top1=accuracy(model, data.val, data.val_labels))
    res.pop("log")
    return res


def class_text_table(num_classes: int, dim: int, cosine: float = 0.0, seed: int = 0) -> torch.Tensor:
    """[K, dim] L2-normalized fixed "oracle" text vectors, one per class, with pairwise cosine
    about `cosine` (0: nearly orthogonal random vectors; 0.999: the near-collinear class-name
    embeddings a weak text encoder gives, field notes)."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    return F.normalize(math.sqrt(cosine) * common + math.sqrt(1 - cosine) * own, dim=1)


def pretrain(data: SanityData, cfg: SanityRun, text_table: Optional[torch.Tensor] = None) -> dict:
    """MAE / video-text / both from scratch on data.train with tube masking at cfg.mask_ratio.

    text_table [K, Dt]: the caption embedding of each class (oracle captions; caption_id = label).
    -> {"model", "steps", "cpu_s", "loss_mse", "loss_nce", "patch_mean_mse", "curve", ...}
    (losses: means over the last 20% of steps; patch_mean_mse / visible_mean_mse / copy_mse over
    the same batches' masks, computed outside the CPU budget)."""
    torch.manual_seed(cfg.seed)
    arch = make_arch(cfg, data.train.shape[1], data.train.shape[2])
    mae = VideoMAEPretrainer(arch)
    if text_table is None:
        text_table = class_text_table(data.num_classes, cfg.proj_dim)
    model = VideoTextPretrainer(mae, text_table.shape[1], objective=cfg.objective, weight=cfg.nce_weight,
                                temperature=cfg.temperature, learnable_temperature=cfg.learnable_temperature,
                                proj_dim=cfg.proj_dim, text_projection=cfg.text_projection,
                                text_norm=cfg.text_norm, view_ratio=cfg.view_ratio)
    heads = [p for n, p in model.named_parameters() if not n.startswith("mae.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if n.startswith("mae.") and p.requires_grad]
    opt = _optimizer([{"params": rest}, {"params": heads, "lr_scale": cfg.head_lr_scale}], cfg)

    def step(idx, g):
        model.train()
        video = to_input(data.train[idx], cfg.shift, g)
        mask = cfg.masks(len(idx), arch.grid, g)
        out = model(video, mask, text_table[data.train_labels[idx]], data.train_labels[idx])
        rec = {"loss": out.loss, "loss_nce": float(out.loss_nce.detach())}
        if out.loss_mse is not None:
            rec["loss_mse"] = float(out.loss_mse.detach())
        if out.loss_mse is not None and cfg.baselines:
            t0 = time.process_time()
            rec["patch_mean_mse"] = patch_mean_mse(video, mask, mae.arch)
            rec["visible_mean_mse"] = visible_mean_mse(mae, video, mask)
            rec["copy_mse"] = copy_mse(mae, video, mask)
            rec["untimed_s"] = time.process_time() - t0
        return rec

    res = _loop(cfg, len(data.train), step, opt)
    log = res["log"]
    tail = log[-max(1, len(log) // 5):]
    keys = [k for k in ("loss_mse", "loss_nce", "patch_mean_mse", "visible_mean_mse", "copy_mse") if k in tail[0]]
    for key in keys:
        res[key] = float(np.mean([r[key] for r in tail]))
    # the training curve: means over 10 consecutive windows of steps
    edges = np.linspace(0, len(log), 11).astype(int)
    res["curve"] = [{"step": int(b), **{k: float(np.mean([r[k] for r in log[a:b]])) for k in keys}}
                    for a, b in zip(edges[:-1], edges[1:]) if b > a]
    res["model"] = model
    res.pop("log")
    return res


@torch.no_grad()
def pixel_mse(mae: VideoMAEPretrainer, video: torch.Tensor, mask: torch.Tensor) -> float:
    """Masked MSE of `mae`'s reconstruction in pixel units ([0, 1]): its loss without
    norm_pix_loss; with it, each prediction de-normalized with its patch's true mean and std
    (`tgmae.models.target.predicted_pixels`), so the comparison with `patch_mean_mse` - which also knows the true
    mean - asks whether the predicted within-patch pattern beats a flat patch.
    video [B, C, T, H, W] (normalized), mask [B, N] bool (True = masked)."""
    return masked_pixel_mse(video, mae(video, mask).pred, mask, mae.arch)


@torch.no_grad()
def mae_errors(mae: VideoMAEPretrainer, clips: torch.Tensor, cfg: SanityRun, seed: int = 0, batch: int = 64) -> dict:
    """Held-out reconstruction: masked MSE of `mae` on uint8 clips [N, T, H, W, 3], masked as in
    training (cfg.mask_kind, cfg.mask_ratio; masks from `seed`), next to the per-patch-mean and
    visible-mean and copy baselines on the same masks -> {"mse", "patch_mean_mse",
    "visible_mean_mse", "copy_mse"} (means over clips, in pixel units [0, 1]; see `pixel_mse`)."""
    mae.eval()
    g = torch.Generator().manual_seed(seed)
    sums = {"mse": 0.0, "patch_mean_mse": 0.0, "visible_mean_mse": 0.0, "copy_mse": 0.0}
    for i in range(0, len(clips), batch):
        video = to_input(clips[i:i + batch])
        mask = cfg.masks(len(video), mae.arch.grid, g)
        n = len(video)
        sums["mse"] += pixel_mse(mae, video, mask) * n
        sums["patch_mean_mse"] += patch_mean_mse(video, mask, mae.arch) * n
        sums["visible_mean_mse"] += visible_mean_mse(mae, video, mask) * n
        sums["copy_mse"] += copy_mse(mae, video, mask) * n
    return {k: v / len(clips) for k, v in sums.items()}


@torch.no_grad()
def encoder_features(encoder: nn.Module, clips: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """[N, D] mean over all tokens of the frozen encoder's output (no mask)."""
    encoder.eval()
    return torch.cat([encoder(to_input(clips[i:i + batch])).mean(dim=1) for i in range(0, len(clips), batch)])


def linear_probe(encoder: nn.Module, data: SanityData, steps: int = 300, lr: float = 0.05,
                 weight_decay: float = 1e-4) -> dict:
    """Multinomial logistic regression on standardized frozen features (full-batch AdamW, fixed
    steps) -> {"train_top1", "val_top1"}."""
    ftr, fva = encoder_features(encoder, data.train), encoder_features(encoder, data.val)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fva = (ftr - mu) / sd, (fva - mu) / sd
    torch.manual_seed(0)
    head = nn.Linear(ftr.shape[1], data.num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(ftr), data.train_labels).backward()
            opt.step()
    top1 = lambda f, y: float((head(f).argmax(-1) == y).float().mean())  # noqa: E731
    return {"train_top1": top1(ftr, data.train_labels), "val_top1": top1(fva, data.val_labels)}


def recon_figure(mae: VideoMAEPretrainer, data: SanityData, path: Path, title: str, cfg: SanityRun,
                 clip: int = 3) -> Path:
    """Original / masked / MAE reconstruction / true patch means of validation clip `clip`, masked
    as in training (cfg.mask_kind, cfg.mask_ratio; masks from seed 0) -> the PNG's path. The last
    row is the patch-mean oracle's picture (`patch_mean_mse`): each masked token filled with its
    own true mean colour."""
    from tgmae.models.target import patchify, reconstruct_video, unpatchify
    from tgmae.viz.plotting import to_uint8_frames
    from tgmae.viz.reconstruction import reconstruction_rows, save_reconstruction_figure

    arch = mae.arch
    video = to_input(data.val[clip:clip + 1])
    mask = cfg.masks(1, arch.grid, torch.Generator().manual_seed(0))
    mae.eval()
    with torch.no_grad():
        out = mae(video, mask)
        recon = reconstruct_video(video, out.pred, mask, arch)
        p = patchify(video, arch.tubelet_size, arch.patch_size)  # [1, N, t*p*p*C], channel last
        c = arch.in_chans
        means = p.view(*p.shape[:2], -1, c).mean(dim=2, keepdim=True).expand(-1, -1, p.shape[2] // c, -1)
        means = torch.where(mask[..., None], means.reshape(p.shape), p)
        mean_video = unpatchify(means, arch.tubelet_size, arch.patch_size, arch.grid)
    rows = reconstruction_rows(video[0], recon[0], mask[0], arch.grid, arch.tubelet_size, arch.patch_size, MEAN, STD)
    rows["true patch means"] = to_uint8_frames(mean_video[0], MEAN, STD)
    return save_reconstruction_figure(rows, path, title=title)


__all__ = [
    "MEAN", "STD", "SanityData", "SanityRun", "accuracy", "class_text_table", "copy_mse", "encoder_features",
    "linear_probe", "mae_errors", "make_arch", "make_data", "patch_mean_mse", "pixel_mse", "pretrain",
    "random_masks", "recon_figure",
    "render_clips", "to_input", "train_supervised", "tube_masks", "visible_mean_colour",
    "visible_mean_mse",
]
