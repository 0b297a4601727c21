"""Learning sanity checks: does each objective learn on data where it must? (docs/sanity.md)

Small CPU runs on synthetic clips rendered to memory (no codec), each a `RunConfig`
(`sanity_config`) trained by the library's loop, tasks, models, masks and optimizer:
`train_supervised` (the reference), `pretrain` (MAE, InfoNCE against per-class oracle text vectors,
or both), `linear_probe` (`tgmae.evaluate.logistic`), `zero_shot_retrieval` (with a random
ranking's band), and the no-learning baselines `patch_mean_mse`, `visible_mean_mse`, `copy_mse`
(pixels, [0, 1]; `pixel_mse` puts a norm_pix_loss model's error in the same units). Runs are
fixed step counts; `cpu_s` is this process's CPU seconds. `benchmarks/sanity.py` runs the full
checks; `tgmae.study.recon_check` is one run with a fixed recipe.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import RunConfig, load_config
from tgmae.data.synthetic import ACTIONS, render_scene, sample_scene
from tgmae.mask_contract import MaskContext
from tgmae.masking import build_mask_generator
from tgmae.models.pretrainer import VideoMAEPretrainer
from tgmae.models.video_text import VideoTextPretrainer
from tgmae.models.target import masked_pixel_mse, patch_mean_mse, pixel_target
from tgmae.models.tokens import mask_to_indices
from tgmae.train.loop import StepOutput
from tgmae.train.pretrain import PretrainTask, mae_part

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


def make_masks(cfg: RunConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B, N] bool (True = masked): one mask per clip from the library's generator of cfg.masking
    (random | tube), on cfg's token grid."""
    make = build_mask_generator(cfg.masking)
    return torch.stack([make(MaskContext(cfg.token_grid), generator) for _ in range(batch)])


class ClipSet(Dataset):
    """In-memory clips as the library's training items: {"video": float [3, T, H, W] (`to_input`,
    shifted by up to `shift` px), "label", "caption_id" (= label: its class's oracle text), "index",
    and with `masking` (a RunConfig) "mask": [N] bool, True = masked; with its data.num_sample = k > 1,
    k views of each clip as `VideoDataset` gives them}. Shift and mask come from a
    generator seeded by (seed, epoch, index) (`tgmae.data.dataset.sample_generator`), as
    `VideoDataset` seeds its samples; the loop calls `set_epoch`.
    clips uint8 [N, T, H, W, 3], labels int64 [N]."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor, *, shift: int = 0, seed: int = 0,
                 masking: Optional[RunConfig] = None):
        self.clips, self.labels, self.shift, self.seed = clips, labels, shift, seed
        self.make_mask = build_mask_generator(masking.masking) if masking is not None else None
        self.grid = masking.token_grid if masking is not None else None
        self.epoch = 0
        # repeated sampling (data.num_sample, `tgmae.data.views`): k views per clip, batches of B*k rows
        self.num_sample = masking.data.num_sample if masking is not None else 1
        if self.num_sample > 1:
            from tgmae.data.views import collate_views

            self.collate = collate_views

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from tgmae.data.dataset import sample_generator
        from tgmae.data.views import gather_views, view_generators

        g = sample_generator(self.seed, self.epoch, i, 0)
        label = self.labels[i]
        views = []
        for gv in view_generators(g, self.num_sample):  # k views: own shift and mask each
            view = {"video": to_input(self.clips[i:i + 1], self.shift, gv)[0], "caption_id": label}
            if self.make_mask is not None:
                view["mask"] = self.make_mask(MaskContext(self.grid), gv)
            views.append(view)
        return {"label": label, "index": i, **(views[0] if self.num_sample == 1 else gather_views(views))}


# The harness's settings (docs/sanity.md): the micro preset (64 wide, 2 blocks; decoder 32 x 1) on
# 12 px patches, raw-pixel target, tube .75, batch 16, AdamW lr 1e-3 held constant after 20 warmup
# steps (optim.min_lr = optim.lr), wd .05 (biases, norms and tokens excluded, as the library
# groups them), no gradient clipping; fp32 on the CPU, no run-folder extras.
HARNESS: dict[str, dict[str, Any]] = {
    "data": {"mean": list(MEAN), "std": list(STD), "num_workers": 0},
    "model": {"preset": "micro", "patch_size": 12, "norm_pix_loss": False},
    "masking": {"name": "tube", "ratio": 0.75},
    "contrastive": {"proj_dim": 64},
    "optim": {"lr": 1e-3, "warmup_lr": 0.0, "weight_decay": 0.05, "clip_grad": None},
    "train": {"batch_size": 16, "device": "cpu", "precision": "fp32", "attention": "sdpa"},
    "checkpoint": {"every_steps": 10**9, "keep_last": 1, "resume": ""},
    "log": {"progress": False, "tensorboard": False},
    "eval": {"label_smoothing": 0.0, "head_init_scale": 1.0},
}


def sanity_config(overrides: Sequence[str], *, num_train: int, frames: int, size: int, steps: int,
                  warmup_steps: int = 20, evals: int = 0, output_dir: str = "") -> RunConfig:
    """The RunConfig of a `steps`-step sanity run on num_train clips of `frames` x size x size:
    `HARNESS` < `overrides` (`section.key=value`, e.g. "optim.lr=3e-3"), then what follows from
    them: train.epochs / train.max_steps for `steps` optimizer steps, warmup_steps of linear warmup
    (optim.warmup_epochs), optim.min_lr = optim.lr (constant after the warmup), 10 metric records
    (train.log_every) and `evals` evaluations (train.eval_every; 0 = the last epoch only).
    ConfigError naming the key for an unknown key or bad value."""
    base = HARNESS | {"data": HARNESS["data"] | {"num_frames": frames, "image_size": size}}
    first = load_config(None, list(overrides), base=base)
    per_epoch = num_train // first.train.batch_size
    epochs = math.ceil(steps / per_epoch)
    derived = [f"train.max_steps={steps}", f"train.epochs={epochs}", f"train.log_every={max(1, steps // 10)}",
               f"train.eval_every={max(1, epochs // evals) if evals else epochs}",
               f"optim.warmup_epochs={warmup_steps / per_epoch}", f"optim.min_lr={first.optim.lr}",
               f"train.output_dir={output_dir or '.'}"]
    return load_config(None, list(overrides) + derived, base=base)


@dataclass
class OracleCaptions:
    """Stands in for `CaptionProvider`: the caption embedding of caption id k is row k of
    `embeddings` [K, D] (one fixed text vector per class; the items' caption_id is their label)."""

    embeddings: torch.Tensor


class SanityPretrainTask(PretrainTask):
    """`PretrainTask` on in-memory clips with oracle class texts; `baselines`: each step also logs
    the patch-mean, visible-mean and copy baselines of its batch and masks (pixels, no gradient)."""

    def __init__(self, cfg: RunConfig, dataset: Dataset, text_table: torch.Tensor, baselines: bool = False):
        super().__init__(cfg, dataset)
        self._captions = OracleCaptions(text_table) if cfg.captions.file else None
        self.baselines = baselines

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = super().step(model, batch)
        if self.baselines and "loss_mse" in out.metrics:
            mae, video, mask = mae_part(model), batch["video"], batch["mask"]
            with torch.no_grad():
                out.metrics.update(baseline_mses(mae, video, mask))
        return out


def baseline_mses(mae: VideoMAEPretrainer, video: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """{"patch_mean_mse", "visible_mean_mse", "copy_mse"} of a batch under its masks (pixels)."""
    return {"patch_mean_mse": patch_mean_mse(video, mask, mae.arch),
            "visible_mean_mse": visible_mean_mse(mae, video, mask), "copy_mse": copy_mse(mae, video, mask)}


def fit(task: Any, cfg: RunConfig) -> tuple[Any, float]:
    """`Trainer(task, cfg).fit()` in a temporary run folder (cfg.train.output_dir "." = a fresh
    one, deleted after) -> (FitResult, CPU seconds of this process)."""
    from dataclasses import replace

    from tgmae.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="tgmae-sanity-") as tmp:
        if cfg.train.output_dir == ".":
            cfg = replace(cfg, train=replace(cfg.train, output_dir=tmp))
        t0 = time.process_time()
        result = Trainer(task, cfg).fit()
        return result, time.process_time() - t0


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
    """MSE of predicting each masked token as the visible token at the same place in the nearest time
    slice (the earlier on a tie), else the clip's visible mean colour: how much is copyable from
    another time. video [B, C, T, H, W], mask [B, N] bool (True = masked); pixels [0, 1]."""
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



@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor, labels: torch.Tensor,
             batch: int = 64) -> float:
    """top-1 of fn(float video batch) -> logits over the clips."""
    hits = 0
    for i in range(0, len(clips), batch):
        hits += int((fn(to_input(clips[i:i + batch])).argmax(-1) == labels[i:i + batch]).sum())
    return hits / len(clips)


def train_supervised(data: SanityData, cfg: RunConfig, shift: int = 2) -> dict:
    """Cross-entropy from scratch (`FinetuneTask` on `ClipSet`s, the harness's config `cfg`,
    training clips shifted by up to `shift` px) -> {"model", "train_top1", "val_top1", "steps",
    "cpu_s", "curve": [{"step", "epoch", "val_top1", ...}, one per evaluation]}."""
    from tgmae.evaluate.finetune import FinetuneTask

    task = FinetuneTask(cfg, ClipSet(data.train, data.train_labels, shift=shift, seed=cfg.train.seed),
                        ClipSet(data.val, data.val_labels), num_classes=data.num_classes)
    result, cpu_s = fit(task, cfg)
    model = result.model.eval()
    curve = [{k: r[k] for k in ("step", "epoch", "val_top1")} for r in result.history if "val_top1" in r]
    return {"model": model, "train_top1": accuracy(model, data.train, data.train_labels),
            "val_top1": accuracy(model, data.val, data.val_labels), "steps": result.position.step,
            "cpu_s": cpu_s, "curve": curve}


def class_text_table(num_classes: int, dim: int, cosine: float = 0.0, seed: int = 0) -> torch.Tensor:
    """[K, dim] L2-normalized fixed "oracle" text vectors, one per class, with pairwise cosine
    about `cosine` (0: nearly orthogonal random vectors; 0.999: the near-collinear class-name
    embeddings a weak text encoder gives, field notes)."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    return F.normalize(math.sqrt(cosine) * common + math.sqrt(1 - cosine) * own, dim=1)


ORACLE_CAPTIONS = "oracle-class-texts"  # captions.file of a sanity run with InfoNCE: no file is read


def pretrain(data: SanityData, cfg: RunConfig, text_table: Optional[torch.Tensor] = None, shift: int = 2,
             baselines: bool = False) -> dict:
    """MAE / video-text / both from scratch on data.train (`SanityPretrainTask`, masks of cfg.masking,
    clips shifted by up to `shift` px). cfg: `sanity_config`'s (InfoNCE needs
    captions.file=ORACLE_CAPTIONS); text_table [K, Dt]: each class's caption embedding (default
    `class_text_table`). -> {"model", "mae", "steps", "cpu_s", "loss_mse", "loss_nce", "curve", and
    with `baselines` their three MSEs}: means over the last 20% of the records."""
    if text_table is None:
        text_table = class_text_table(data.num_classes, cfg.contrastive.proj_dim)
    clips = ClipSet(data.train, data.train_labels, shift=shift, seed=cfg.train.seed, masking=cfg)
    result, cpu_s = fit(SanityPretrainTask(cfg, clips, text_table, baselines), cfg)
    records = [r for r in result.history if "loss" in r]
    tail = records[-max(1, len(records) // 5):]
    keys = [k for k in ("loss_mse", "loss_nce", "patch_mean_mse", "visible_mean_mse", "copy_mse") if k in tail[0]]
    res = {key: float(np.mean([r[key] for r in tail])) for key in keys}
    res.update(model=result.model, mae=mae_part(result.model), steps=result.position.step, cpu_s=cpu_s,
               curve=[{k: r[k] for k in ["step", *keys]} for r in records])
    return res


@torch.no_grad()
def pixel_mse(mae: VideoMAEPretrainer, video: torch.Tensor, mask: torch.Tensor) -> float:
    """Masked MSE of `mae`'s reconstruction in pixels ([0, 1]); with norm_pix_loss each prediction is
    de-normalized with its patch's true mean and std (`predicted_pixels`), as `patch_mean_mse` knows
    them. video [B, C, T, H, W] (normalized), mask [B, N] bool (True = masked)."""
    return masked_pixel_mse(video, mae(video, mask).pred, mask, mae.arch)


@torch.no_grad()
def mae_errors(mae: VideoMAEPretrainer, clips: torch.Tensor, cfg: RunConfig, seed: int = 0, batch: int = 64) -> dict:
    """Held-out {"mse", "patch_mean_mse", "visible_mean_mse", "copy_mse"} of `mae` on uint8 clips
    [N, T, H, W, 3] under training's masks (seeded by `seed`); means over clips, pixels [0, 1]."""
    mae.eval()
    g = torch.Generator().manual_seed(seed)
    sums = {"mse": 0.0, "patch_mean_mse": 0.0, "visible_mean_mse": 0.0, "copy_mse": 0.0}
    for i in range(0, len(clips), batch):
        video = to_input(clips[i:i + batch])
        mask = make_masks(cfg, len(video), g)
        for k, v in {"mse": pixel_mse(mae, video, mask), **baseline_mses(mae, video, mask)}.items():
            sums[k] += v * len(video)
    return {k: v / len(clips) for k, v in sums.items()}


@torch.no_grad()
def encoder_features(encoder: nn.Module, clips: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """[N, D] mean over all tokens of the frozen encoder's output (no mask)."""
    encoder.eval()
    return torch.cat([encoder(to_input(clips[i:i + batch])).mean(dim=1) for i in range(0, len(clips), batch)])


def linear_probe(encoder: nn.Module, data: SanityData, l2: float = 1e-3) -> dict:
    """Multinomial logistic regression (`tgmae.evaluate.logistic.fit_logistic`: standardized
    features, L-BFGS, weight `l2` on sum(W^2)) on the frozen encoder's mean-pooled features
    -> {"train_top1", "val_top1"}."""
    from tgmae.evaluate.logistic import fit_logistic

    ftr, fva = encoder_features(encoder, data.train), encoder_features(encoder, data.val)
    probe = fit_logistic(ftr, data.train_labels, l2, data.num_classes)
    top1 = lambda f, y: float((probe.predict(f) == y).float().mean())  # noqa: E731
    return {"train_top1": top1(ftr, data.train_labels), "val_top1": top1(fva, data.val_labels)}


@torch.no_grad()
def zero_shot_retrieval(model: VideoTextPretrainer, clips: torch.Tensor, labels: torch.Tensor,
                        text_table: torch.Tensor, ks: Sequence[int] = (1, 5), batch: int = 64):
    """Class retrieval as `tgmae retrieve` does it: uint8 clips [N, T, H, W, 3] through the unmasked
    encoder and the video head; `text_table` [K, Dt] through the text map; Recall@ks both ways with
    chance bands (`RetrievalResult`). labels [N] in [0, K)."""
    from tgmae.evaluate.metrics import relevance_from_ids
    from tgmae.evaluate.retrieval import retrieval_metrics, text_embeddings

    was_training = model.training
    model.eval()
    try:
        video = torch.cat([model.embed_video(model.encoder(to_input(clips[i:i + batch])))
                           for i in range(0, len(clips), batch)])
        text = text_embeddings(model, text_table)
    finally:
        model.train(was_training)
    relevant = relevance_from_ids(labels, torch.arange(len(text_table)))
    return retrieval_metrics(video, text, relevant, ks, mode="classes")


def recon_figure(mae: VideoMAEPretrainer, data: SanityData, path: Path, title: str, cfg: RunConfig,
                 clip: int = 3) -> Path:
    """Original / masked / reconstruction / true patch means (`patch_mean_mse`'s picture) of validation
    clip `clip` under training's masks (seed 0) -> the PNG's path."""
    from tgmae.models.target import patchify, reconstruct_video, unpatchify
    from tgmae.viz.plotting import to_uint8_frames
    from tgmae.viz.reconstruction import reconstruction_rows, save_reconstruction_figure

    arch = mae.arch
    video = to_input(data.val[clip:clip + 1])
    mask = make_masks(cfg, 1, torch.Generator().manual_seed(0))
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
