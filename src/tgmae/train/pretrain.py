"""Pretraining as a Task for the shared loop (`tgmae pretrain`): VideoMAE reconstruction on masked
clips, optionally with video-text InfoNCE. Rank 0 then writes `model.safetensors`, a loss curve and
a reconstruction figure into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import ConfigError, RunConfig
from tgmae.train.loop import StepOutput, Trainer, unwrap
from tgmae.train.optim import param_groups
from tgmae.train.resume import locks_run_folder

log = logging.getLogger("tgmae")


def build_video_dataset(cfg: RunConfig, subset: str, train: bool, mask_generator=None,
                        captions=None) -> Dataset:
    """Annotations -> VideoDataset; a per-sample mask generator runs inside its workers. `captions`
    (a CaptionProvider) is built in the main process, before the workers start."""
    from tgmae.data.dataset import build_dataset

    return build_dataset(cfg.data, subset, train=train, token_grid=cfg.token_grid,
                         mask_generator=mask_generator, captions=captions, seed=cfg.train.seed)


class PretrainTask:
    """batch -> loss for VideoMAE pretraining: a `VideoMAEPretrainer`, or a `VideoTextPretrainer`
    when captions feed an InfoNCE (optimized, or monitored with `contrastive.monitor_nce`)."""

    name = "pretrain"
    find_unused_parameters = False  # every objective freezes what it does not use

    def __init__(self, cfg: RunConfig, dataset: Optional[Dataset] = None):
        self.cfg = cfg
        self._dataset = dataset
        self._captions = None
        self._text_table: Optional[torch.Tensor] = None
        self.batch_masker = None  # a batch mask generator (online TGM on a GPU) runs in `step`

    @property
    def captions(self):
        """The run's CaptionProvider (None without captions.file), built once."""
        if self._captions is None and self.cfg.captions.file:
            from tgmae.captions.provider import CaptionProvider

            self._captions = CaptionProvider.from_config(self.cfg.captions)
        return self._captions

    inputs_named = ("captions.file's captions", "the text model's files")  # `inputs_fingerprint`'s parts

    @property
    def inputs_fingerprint(self) -> Optional[str]:
        """"DIGEST.CAPTIONS.TEXT_MODEL", kept in checkpoints: DIGEST, sha256 of the captions every video
        has (`captions.file`) and of the text model's files (`tgmae.hub.weights_fingerprint`, where
        known), then each one's own sha256 (the refusal names which changed). A resume after the
        captions were edited (or the model replaced at its path) would train on two caption sets
        (`resume.input_changes` refuses it). None without captions."""
        if self.captions is None:
            return None
        import hashlib
        import json

        from tgmae.hub import weights_fingerprint

        model = self.cfg.captions.target_model
        texts = sorted((r.video_id, list(r.captions)) for r in self.captions.records)
        text_model = weights_fingerprint(model) if model else None
        sha = lambda x: hashlib.sha256(json.dumps(x).encode()).hexdigest()  # noqa: E731
        return ".".join([sha({"captions": texts, "text_model": text_model}), sha(texts), sha(text_model)])

    @property
    def video_text(self) -> bool:
        """True when the model has the contrastive head (InfoNCE optimized or monitored)."""
        c = self.cfg.contrastive
        return bool(self.cfg.captions.file) and (c.objective != "mae" or c.monitor_nce)

    def build_model(self) -> nn.Module:
        from tgmae.models import build_pretraining_model
        from tgmae.models.factory import training_options

        c = self.cfg
        frames, size = c.data.num_frames, c.data.image_size
        pixels = dict(pixel_mean=tuple(c.data.mean), pixel_std=tuple(c.data.std),
                      **training_options(c.masking, c.train))
        if not self.video_text:
            model = mae = build_pretraining_model(c.model, frames, size, **pixels)
        else:
            from tgmae.models.video_text import build_video_text_model

            if self.captions.embeddings is None:
                raise ConfigError("captions need text embeddings for the contrastive head: set "
                                  "captions.clip_model (a CLIP name or path) or captions.text_model")
            text_dim = int(self.captions.embeddings.shape[1])
            if not c.contrastive.text_projection and c.contrastive.proj_dim != text_dim:
                raise ConfigError(
                    f"contrastive.proj_dim={c.contrastive.proj_dim} but the text embeddings of "
                    f"{'captions.text_model' if c.captions.text_model else 'captions.clip_model'}="
                    f"{c.captions.target_model!r} are {text_dim} wide: set "
                    f"contrastive.proj_dim={text_dim}, or contrastive.text_projection=true")
            model = build_video_text_model(c.model, c.contrastive, frames, size, text_dim=text_dim, **pixels)
            mae = model.mae
        if c.model.pretrained:
            mae.load_state_dict(self._pretrained_state(mae.arch))
        return model

    def _pretrained_state(self, arch) -> dict[str, torch.Tensor]:
        """model.pretrained's weights (a file, step checkpoint or run folder: read as finetune reads
        it, `resolve_weights`), after checking they fit the model the config builds."""
        from tgmae.weights.pretraining import load_pretraining_model
        from tgmae.models.arch import check_checkpoint_geometry
        from tgmae.weights.files import detect_format, resolve_weights

        m, path = self.cfg.model, resolve_weights(self.cfg.model.pretrained)
        heads = {}
        if detect_format(path) == "official":  # a .pth stores no head counts: the config's, if given
            heads = {k: getattr(m, k) for k in ("num_heads", "decoder_heads") if getattr(m, k)}
        loaded = load_pretraining_model(path, **heads)
        check_checkpoint_geometry(m, loaded.arch, path, decoder=True)
        fields = ("embed_dim", "depth", "num_heads", "mlp_ratio", "decoder_dim", "decoder_depth", "decoder_heads",
                  "in_chans", "encoder_norm")
        differ = [f"{f} {getattr(arch, f)} vs {getattr(loaded.arch, f)}" for f in fields
                  if getattr(arch, f) != getattr(loaded.arch, f)]
        if differ:  # a checkpoint of a size no preset has: pretraining builds model.preset's
            raise ConfigError(f"model.preset={m.preset!r} builds a model that model.pretrained={path} does not fit "
                              f"(config vs checkpoint: {', '.join(differ)})")
        return loaded.state_dict()

    def train_dataset(self) -> Dataset:
        if self._dataset is None:
            from tgmae.masking import build_mask_generator, is_batch_generator
            from tgmae.distributed import resolve_device
            from tgmae.lifetime import local_rank

            device = resolve_device(self.cfg.train.device, local_rank())
            generator = build_mask_generator(self.cfg.masking, captions_file=self.cfg.captions.file,
                                             device=str(device), data_mean=self.cfg.data.mean,
                                             data_std=self.cfg.data.std, image_size=self.cfg.data.image_size,
                                             patch_size=self.cfg.model.patch_size)
            if is_batch_generator(generator):
                self.batch_masker, generator = generator, None
            self._dataset = build_video_dataset(self.cfg, "train", train=True, mask_generator=generator,
                                                captions=self.captions)
        return self._dataset

    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        """[B] caption ids -> [B, D] cached text embeddings on the ids' device."""
        if self._text_table is None or self._text_table.device != ids.device:
            self._text_table = self.captions.embeddings.to(ids.device, torch.float32)
        return self._text_table[ids]

    def _batch_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        """Masks made on the device for the whole batch, seeded by the batch's sample indices."""
        video = batch["video"]
        text = self._text(batch["caption_id"]) if self.captions is not None else None
        seed = int(torch.as_tensor(batch["index"]).sum()) * 1_000_003 + self.cfg.train.seed
        g = torch.Generator().manual_seed(seed)  # on CPU: the same masks on every device
        with torch.autocast(device_type=video.device.type, enabled=False):
            return self.batch_masker(video, text, self.cfg.token_grid, g)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay,
                            skip=set(model.no_weight_decay()))

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        mask = self._batch_mask(batch) if self.batch_masker is not None else batch["mask"]
        if not self.video_text:
            out = model(batch["video"], mask)
            return StepOutput(out.loss, {"loss_mse": out.loss.detach()})
        ids = batch["caption_id"]
        out = model(batch["video"], mask, self._text(ids), ids)
        return StepOutput(out.loss, out.metrics())


def mae_part(model: nn.Module) -> nn.Module:
    """The VideoMAEPretrainer inside a task model (itself, or `.mae` of the video-text wrapper)."""
    model = unwrap(model)
    return getattr(model, "mae", model)


def describe_run(cfg: RunConfig, frames: Optional[Sequence[int]] = None) -> str:
    """The masking, ratio and clip geometry a figure was drawn under, for its title. frames: the
    clip's source frame numbers, when known: a short video read at a smaller stride says so (and,
    spread unevenly over its frames, lists them); TSN sampling names its segments."""
    m, d = cfg.model, cfg.data
    steps = {int(b) - int(a) for a, b in zip(frames, frames[1:])} if frames is not None and len(frames) > 1 else set()
    if d.sampling == "tsn":  # one frame per segment: its spacing varies by design, no stride to name
        stride = f"{d.num_frames} TSN segments"
    elif len(steps) > 1:  # dense: only a video shorter than the clip spreads it unevenly
        stride = f"frames {', '.join(str(int(f)) for f in frames)}: a short video, stride {d.frame_stride} asked"
    elif steps and d.frame_stride not in steps:
        stride = f"stride {steps.pop()} ({d.frame_stride} asked: a short video)"
    else:
        stride = f"stride {d.frame_stride}"
    return (f"{cfg.masking.name} mask, ratio {cfg.masking.ratio:g}; {d.num_frames} frames x {d.image_size} px "
            f"({stride}, tubelet {m.tubelet_size}, patch {m.patch_size})")


def describe_objective(cfg: RunConfig) -> str:
    """contrastive.objective and the loss it optimizes, in the terms the metrics log."""
    c = cfg.contrastive
    loss = {"mae": "loss_mse", "contrastive": "loss_nce",
            "mae+contrastive": f"loss_mse + {c.weight:g} x loss_nce"}[c.objective]
    return f"objective {c.objective} (loss = {loss})"


def trains_decoder(cfg: RunConfig) -> bool:
    """False for contrastive.objective=contrastive: the decoder never trains, its reconstruction means nothing."""
    return cfg.contrastive.objective != "contrastive"


def write_pretrain_figures(model: nn.Module, dataset: Dataset, cfg: RunConfig, out_dir: Path,
                           index: int = 0, make_mask=None) -> dict[str, Path]:
    """Loss curve (a panel per logged term) + reconstruction (original / masked / reconstructed)
    of one clip, titled with its masked MSE in pixels next to the patch-mean oracle
    (`patch_mean_mse`); with norm_pix_loss (drawn with the true patch statistics) the loss on the
    normalized target instead. No reconstruction when the decoder never trained (`trains_decoder`).
    `dataset`: indexable sample dicts; make_mask: sample -> [1, N] mask (masks made on the batch)."""
    from tgmae.train.metrics import read_metrics
    from tgmae.viz.curves import plot_curves
    from tgmae.viz.reconstruction import write_reconstruction

    out: dict[str, Path] = {}
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        records = [r for r in read_metrics(metrics) if "loss" in r]
        terms = [k for k in ("loss_mse", "loss_nce") if any(k in r for r in records)]
        out["loss_curve"] = plot_curves({"pretrain": records}, ["loss", *terms, "lr"], out_dir / "loss_curve.png",
                                        title=f"pretraining, {describe_objective(cfg)}; {describe_run(cfg)}")
    if not trains_decoder(cfg):
        log.info("no reconstruction figure: contrastive.objective=contrastive never trains the decoder")
        return out
    sample = dataset[index]
    if getattr(dataset, "num_sample", 1) > 1:  # k views per item (data.num_sample): draw the first
        from tgmae.data.views import first_view

        sample = first_view(sample)
    out.update(write_reconstruction(mae_part(model), sample, cfg, out_dir, "reconstruction",
                                    f"{sample.get('video_id', index)} ({describe_run(cfg)})", make_mask))
    return out


@locks_run_folder
def pretrain(cfg: RunConfig, hooks=None) -> Path:
    """Run pretraining; returns the run directory."""
    from tgmae.weights.model_card import own_run_id, section_settings
    from tgmae.weights.pretraining import save_pretraining_model

    task = PretrainTask(cfg)
    trainer = Trainer(task, cfg, hooks=hooks)
    result = trainer.fit()
    if trainer.dist.is_main:
        make_mask = None
        if task.batch_masker is not None:
            from torch.utils.data import default_collate

            make_mask = lambda sample: task._batch_mask(default_collate([sample])).cpu()  # noqa: E731
        figures = write_pretrain_figures(result.model, task.train_dataset(), cfg, result.output_dir,
                                         make_mask=make_mask)
        for name, path in figures.items():
            log.info("%s: %s", name, path)
        # last: the model file says the run is done (`pretrain_done`), so a run killed while drawing
        # its figures is rerun (a finished run's resume: the figures again), not taken as done
        save_pretraining_model(mae_part(result.model), result.output_dir / "model.safetensors",
                               data=section_settings("data", cfg.data), masking=section_settings("masking", cfg.masking),
                               run_id=own_run_id(result.output_dir))  # what proves it the run's (re-trial 33B S1)
    return result.output_dir


def pretrain_outputs(cfg: RunConfig) -> list[Path]:
    """The files a finished pretraining run leaves in train.output_dir: model.safetensors, the loss
    curve, and the reconstruction figures where the decoder trains (`trains_decoder`)."""
    out = Path(cfg.train.output_dir)
    names = ["model.safetensors", "loss_curve.png"]
    names += ["reconstruction.png", "reconstruction.gif"] if trains_decoder(cfg) else []
    return [out / n for n in names]


def pretrain_done(cfg: RunConfig) -> bool:
    """Whether `cfg`'s run folder holds every file of `pretrain_outputs`: else `pretrain(cfg)` is due
    (it resumes a finished run from its last checkpoint and writes the missing files)."""
    return all(p.is_file() for p in pretrain_outputs(cfg))
