"""Pretraining as a Task for the shared loop: VideoMAE reconstruction on masked clips.

`tgmae pretrain -c configs/pretrain_tiny.yaml optim.base_lr=3e-4` runs it; under `torchrun` the
same command runs data-parallel. After training, rank 0 writes the portable model
(`model.safetensors`, loadable by `tgmae.models.load_pretraining_model`), a loss curve and a
reconstruction figure into the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import RunConfig
from tgmae.train.loop import StepOutput, Trainer, unwrap
from tgmae.train.optim import param_groups

log = logging.getLogger("tgmae")


def build_video_dataset(cfg: RunConfig, subset: str, train: bool, with_masks: bool) -> Dataset:
    """Annotations -> VideoDataset with the run's mask generator (made per sample, in workers).

    The caption provider is built here, in the main process, so caption embeddings missing from
    the cache are computed once before DataLoader workers start.
    """
    from tgmae.captions.provider import CaptionProvider
    from tgmae.data.dataset import build_dataset
    from tgmae.masking import build_mask_generator

    return build_dataset(
        cfg.data, subset, train=train, token_grid=cfg.token_grid,
        mask_generator=build_mask_generator(cfg.masking) if with_masks else None,
        captions=CaptionProvider.from_config(cfg.captions), seed=cfg.train.seed,
    )


class PretrainTask:
    """batch -> MSE on masked tokens. The model is tgmae.models.VideoMAEPretrainer."""

    name = "pretrain"
    find_unused_parameters = False

    def __init__(self, cfg: RunConfig, dataset: Optional[Dataset] = None):
        self.cfg = cfg
        self._dataset = dataset

    def build_model(self) -> nn.Module:
        from tgmae.models import build_pretraining_model

        model = build_pretraining_model(self.cfg.model, self.cfg.data.num_frames, self.cfg.data.image_size)
        if self.cfg.model.pretrained:
            from tgmae.models import load_pretraining_model

            source = load_pretraining_model(self.cfg.model.pretrained)
            model.load_state_dict(source.state_dict())
        return model

    def train_dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = build_video_dataset(self.cfg, "train", train=True, with_masks=True)
        return self._dataset

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay,
                            skip=set(model.no_weight_decay()))

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["video"], batch["mask"])
        return StepOutput(out.loss, {"loss_mse": out.loss.detach()})


def write_pretrain_figures(model: nn.Module, dataset: Dataset, cfg: RunConfig, out_dir: Path,
                           index: int = 0) -> dict[str, Path]:
    """Loss curve + reconstruction (original / masked / reconstructed) of one clip."""
    from tgmae.models import reconstruct_video
    from tgmae.train.metrics import read_metrics
    from tgmae.viz.curves import plot_curves
    from tgmae.viz.reconstruction import reconstruction_rows, save_gif, save_reconstruction_figure

    out: dict[str, Path] = {}
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        records = [r for r in read_metrics(metrics) if "loss" in r]
        out["loss_curve"] = plot_curves({"pretrain": records}, ["loss", "lr"], out_dir / "loss_curve.png",
                                        title=f"pretraining ({cfg.masking.name} mask, ratio {cfg.masking.ratio})")
    sample = dataset[index]
    model = unwrap(model).eval()
    video = sample["video"][None]
    mask = sample["mask"][None]
    with torch.no_grad():
        res = model(video, mask)
        recon = reconstruct_video(video, res.pred, mask, model.arch)
    rows = reconstruction_rows(video[0], recon[0], mask[0], cfg.token_grid, cfg.model.tubelet_size,
                               cfg.model.patch_size, cfg.data.mean, cfg.data.std)
    out["reconstruction"] = save_reconstruction_figure(
        rows, out_dir / "reconstruction.png",
        title=f"{sample.get('video_id', index)}: loss {float(res.loss):.3f}")
    strip = torch.cat([rows["original"], rows["masked"], rows["reconstruction"]], dim=2)
    out["reconstruction_gif"] = save_gif(strip, out_dir / "reconstruction.gif")
    return out


def pretrain(cfg: RunConfig, hooks=None) -> Path:
    """Run pretraining; returns the run directory."""
    from tgmae.models import save_pretraining_model

    task = PretrainTask(cfg)
    trainer = Trainer(task, cfg, hooks=hooks)
    result = trainer.fit()
    if trainer.dist.is_main:
        save_pretraining_model(result.model, result.output_dir / "model.safetensors")
        figures = write_pretrain_figures(result.model, task.train_dataset(), cfg, result.output_dir)
        for name, path in figures.items():
            log.info("%s: %s", name, path)
    return result.output_dir


def main(argv: list[str]) -> int:
    from tgmae.cli import parse_run_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, _ = parse_run_args("pretrain", argv, description=__doc__.splitlines()[0])
    out = pretrain(cfg)
    print(f"run directory: {out}")
    return 0
