"""Typed run configuration: dataclass sections, YAML files, dotted command-line overrides.

Precedence is defaults < YAML (`-c file.yaml`) < `section.key=value` overrides. Unknown keys and
values of the wrong type are errors that name the key, so a typo never silently does nothing.
Each component receives only its own section (e.g. the model factory gets `ModelConfig`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from tgmae.errors import UserError
from tgmae.mask_contract import MASKED_COUNT
from tgmae.textfile import read_text


class ConfigError(ValueError, UserError):
    """A configuration value or key is invalid; the message names it."""


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """ConfigError `key=value: expected a|b|c` unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected {'|'.join(choices)}")


def check_known(key: str, values: Sequence, known: Sequence) -> None:
    """ConfigError `key: unknown [...]; known: [...]` when any of `values` is not in `known`."""
    bad = [v for v in values if v not in known]
    if bad:
        raise ConfigError(f"{key}: unknown {bad}; known: {list(known)}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

DATASET_FORMATS = ("csv", "k400", "ssv2", "ucf101", "hmdb51", "diving48", "epic55")
# ImageNet per-channel statistics of RGB in [0, 1]: data.mean / data.std's default, and what
# VideoMAE's released weights expect (tgmae.models.arch and tgmae.masking import them from here).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_MODES = ("none", "memory", "disk")  # data.cache and study.cache (tgmae.data.cache)
CROP_SCALES = (1.0, 0.875, 0.75, 0.66)  # VideoMAE's multi-scale crop (data.crop_scales' default)


@dataclass
class DataConfig:
    """Where the videos are and how clips are sampled and augmented."""

    format: str = "csv"  # annotation layout: one of DATASET_FORMATS
    root: str = ""  # folder the annotation paths are relative to
    train_annotations: str = ""  # annotation file (or folder, for split-file formats)
    val_annotations: str = ""  # evaluation annotations; empty = none
    split: int = 1  # UCF101 / HMDB51 split number
    num_frames: int = 16  # frames per clip fed to the model
    frame_stride: int = 4  # temporal stride between sampled frames (K400: 4, SSv2: 2)
    sampling: str = "dense"  # "dense" (VideoMAE clip) or "tsn" (segment sampling, SSv2)
    image_size: int = 224  # square model input side
    crop_scales: tuple[float, ...] = CROP_SCALES  # VideoMAE multi-scale crop
    flip: bool = True  # horizontal flip; off for direction-labelled data (SSv2)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel input mean, RGB in [0, 1] (ImageNet)
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel input std, RGB in [0, 1] (ImageNet)
    num_workers: int = 2  # DataLoader worker processes
    max_load_retries: int = 20  # replacement attempts for unreadable videos before giving up
    test_temporal_views: int = 5  # multi-view testing: clips along time
    test_spatial_views: int = 3  # multi-view testing: crops across the frame
    with_motion: bool = False  # also return codec motion vectors (motion-guided masking)
    rand_augment: Optional[tuple[int, int]] = (4, 7)  # finetuning RandAugment (ops n, magnitude m); null = off
    random_erase: float = 0.25  # finetuning random-erasing probability
    finetune_crop: str = "random_resized"  # finetuning crop: random_resized | multiscale (over crop_scales)
    finetune_crop_scale: tuple[float, float] = (0.08, 1.0)  # random_resized: area share range
    decoder_threads: int = 1  # PyAV threads per reader (1 measured fastest per worker)
    cache: str = "none"  # decoded-clip cache: "none" (decode every sample), "memory" or "disk" (tgmae.data.cache)
    cache_dir: str = ""  # data.cache=disk: folder of the cache files; empty = ~/.cache/tgmae/clips
    num_sample: int = 1  # training views per decoded video (VideoMAEv2 num_sample; batch stays in videos)
    repeat_mode: str = "views"  # num_sample > 1: "views" (k crops / masks of one clip) | "clips" (k clips, mae_st repeat_aug)

    def __post_init__(self) -> None:
        if self.format not in DATASET_FORMATS:
            raise ConfigError(f"data.format={self.format!r}: expected one of {DATASET_FORMATS}")
        check_choice("data.sampling", self.sampling, ("dense", "tsn"))
        _positive("data.num_frames", self.num_frames)
        _positive("data.frame_stride", self.frame_stride)
        _positive("data.image_size", self.image_size)
        _positive("data.test_temporal_views", self.test_temporal_views)
        _positive("data.test_spatial_views", self.test_spatial_views)
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers}: must be >= 0")
        _not_negative("data.max_load_retries", self.max_load_retries)  # -1: no video read at all
        _positive("data.split", self.split)
        if not self.crop_scales or any(not 0 < s <= 1 for s in self.crop_scales):
            raise ConfigError(f"data.crop_scales={self.crop_scales}: each scale must be in (0, 1]")
        check_choice("data.finetune_crop", self.finetune_crop, ("random_resized", "multiscale"))
        lo, hi = self.finetune_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.finetune_crop_scale={self.finetune_crop_scale}: need 0 < min <= max <= 1")
        if not 0.0 <= self.random_erase <= 1.0:
            raise ConfigError(f"data.random_erase={self.random_erase}: must be in [0, 1]")
        _positive("data.decoder_threads", self.decoder_threads)
        _positive("data.num_sample", self.num_sample)
        check_choice("data.repeat_mode", self.repeat_mode, ("views", "clips"))
        check_choice("data.cache", self.cache, CACHE_MODES)
        if self.cache != "none" and self.with_motion:
            raise ConfigError(f"data.cache={self.cache!r}: the cache holds no codec motion vectors "
                              "(data.with_motion=true); set data.cache=none")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"data.std={self.std}: must be positive")


# The names a config may choose (tgmae.models.arch.PRESETS and tgmae.masking.build_mask_generator
# implement them; a test keeps the lists equal), checked here so every command refuses a typo alike.
MODEL_PRESETS = ("micro", "tiny", "small", "base", "large", "huge", "giant")
# model.patch_size's default per preset: the patch each was published with (ViT-g/14), else 16
PRESET_PATCH_SIZE = {"giant": 14}
DECODER_MASKS = ("running_cell", "random")  # masking.decoder_mask (tgmae.models.dual_mask)
OBJECTIVES = ("mae", "contrastive", "mae+contrastive")  # contrastive.objective (tgmae.models.video_text)
MASKING_NAMES = tuple(MASKED_COUNT)  # random, tube, tgm, mgm
ATTENTION_KERNELS = ("auto", "sdpa", "sdpa_fp32", "math")  # train.attention (tgmae.models.attention)
PROBE_KINDS = ("linear", "knn", "attentive")  # eval.probe and study.probes
RETRIEVAL_TEXTS = ("classes", "captions")  # eval.retrieval_text and study.retrieval


@dataclass
class CaptionConfig:
    """Which captions pair with each video (paper section 3.2 and Table 6)."""

    file: str = ""  # captions JSONL (video_id, captions, source); empty = no captions
    clip_model: str = ""  # CLIP name or path whose text tower embeds the captions
    # text encoder of the video-text loss's targets and of retrieval's prompts, by name or path: a CLIP,
    # any transformers text model or a sentence-transformers folder (pooled); empty = captions.clip_model
    text_model: str = ""
    embedding_cache: str = ""  # safetensors text-embedding cache; empty = <captions stem>.<model>-<hash8>.emb.safetensors
    draw: str = "random"  # "random": one caption per video per epoch; "first": always the first

    def __post_init__(self) -> None:
        check_choice("captions.draw", self.draw, ("random", "first"))

    @property
    def target_model(self) -> str:
        """The model whose text embeddings are the contrastive targets: text_model, else clip_model."""
        return self.text_model or self.clip_model


@dataclass
class MaskingConfig:
    """Which tokens the encoder does not see (paper section 3.3)."""

    name: str = "tube"  # random | tube | tgm | mgm
    ratio: float = 0.9  # fraction of tokens masked (TGM: 0.6, MGM: 0.75 in the paper)
    select: str = "top"  # tgm: mask the "top" or "bottom" patches by caption similarity
    cache_dir: str = ""  # tgm: precomputed similarity maps (`tgmae masks`); empty = online
    tubelet_frame: str = "first"  # which frame of a tubelet represents it: first | mean
    motion_source: str = "codec"  # mgm: "codec" motion vectors or "framediff" fallback
    clip_model: str = ""  # tgm: CLIP name/path (online mode loads it; cached mode checks the cache)
    caption: str = "drawn"  # tgm cached: the sample's "drawn" caption, or the video's "mean" caption
    mode: str = "dense"  # tgm online: "dense" (MaskCLIP patch features) or "faithful" (patch crops)
    dense_size: int = 0  # tgm dense: CLIP input side; 0 = automatic
    # dual masking (VideoMAEv2): fraction of the masked tokens the decoder reconstructs in training
    # (VideoMAEv2: 0.5); null = all
    decoder_ratio: Optional[float] = None
    decoder_mask: str = "running_cell"  # dual masking's subset: running_cell (VideoMAEv2's) | random

    def __post_init__(self) -> None:
        if self.name not in MASKING_NAMES:
            raise ConfigError(f"masking.name={self.name!r}: expected one of {', '.join(MASKING_NAMES)}")
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"masking.ratio={self.ratio}: must be strictly between 0 and 1")
        check_choice("masking.select", self.select, ("top", "bottom"))
        _not_negative("masking.dense_size", self.dense_size)  # 0 = automatic
        if self.select != "top" and self.name != "tgm":  # the others rank no patch by a caption
            raise ConfigError(f"masking.select={self.select} applies to TGM only (masking.name={self.name}); "
                              "leave it top, or set masking.name=tgm")
        check_choice("masking.tubelet_frame", self.tubelet_frame, ("first", "mean"))
        check_choice("masking.caption", self.caption, ("drawn", "mean"))
        check_choice("masking.mode", self.mode, ("dense", "faithful"))
        check_choice("masking.motion_source", self.motion_source, ("codec", "framediff"))
        if self.decoder_ratio is not None and not 0.0 < self.decoder_ratio <= 1.0:
            raise ConfigError(f"masking.decoder_ratio={self.decoder_ratio}: must be in (0, 1] or null")
        check_choice("masking.decoder_mask", self.decoder_mask, DECODER_MASKS)
        if self.decoder_ratio is None and self.decoder_mask != DECODER_MASKS[0]:  # it would do nothing
            raise ConfigError(f"masking.decoder_mask={self.decoder_mask} picks dual masking's subset: "
                              "set masking.decoder_ratio too (e.g. 0.5)")


@dataclass
class ModelConfig:
    """Backbone choice; full architecture comes from the preset table in tgmae.models."""

    preset: str = "tiny"  # micro | tiny | small | base | large | huge | giant
    patch_size: Optional[int] = None  # spatial patch side; None = the preset's (16; giant: 14)
    tubelet_size: int = 2  # frames per token
    drop_path: float = 0.0  # stochastic depth rate (finetuning: 0.1)
    decoder_depth: Optional[int] = None  # None = the preset's (4; huge 12, tiny 2, micro 1)
    decoder_dim: Optional[int] = None  # None = preset default (ViT-B: 384)
    norm_pix_loss: bool = True  # VideoMAE target: per-patch normalized pixels
    pretrained: str = ""  # checkpoint to start from (ours, official .pth or HF dir)
    # encoder attention heads; None = the preset's, or the checkpoint's. Required for an official .pth
    # whose width is not a released VideoMAE one (the .pth does not store it)
    num_heads: Optional[int] = None
    decoder_heads: Optional[int] = None  # decoder attention heads; None = the preset's (or the checkpoint's)

    def __post_init__(self) -> None:
        if self.preset not in MODEL_PRESETS:
            raise ConfigError(f"model.preset={self.preset!r}: expected one of {', '.join(MODEL_PRESETS)}")
        if self.patch_size is None:
            self.patch_size = PRESET_PATCH_SIZE.get(self.preset, 16)
        _positive("model.patch_size", self.patch_size)
        _positive("model.tubelet_size", self.tubelet_size)
        if self.num_heads is not None:
            _positive("model.num_heads", self.num_heads)
        for key in ("decoder_heads", "decoder_depth", "decoder_dim"):
            if getattr(self, key) is not None:
                _positive(f"model.{key}", getattr(self, key))
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"model.drop_path={self.drop_path}: must be in [0, 1)")


@dataclass
class ContrastiveConfig:
    """Masked video-text InfoNCE (paper sections 3.4-3.5)."""

    objective: str = "mae"  # mae | contrastive | mae+contrastive
    weight: float = 1.0  # lambda on the InfoNCE term in mae+contrastive
    temperature: float = 0.07  # initial tau
    learnable_temperature: bool = False  # learn tau (log-parametrized) instead of keeping it fixed
    proj_dim: int = 256  # output width of the video projection head
    text_projection: bool = False  # learnable linear map on the frozen text embedding
    # objective mae: also compute (never optimize) InfoNCE through a frozen head and log it as
    # loss_nce (paper Figure 4's "without optimization" curve); off = mae builds no contrastive head
    monitor_nce: bool = False
    # None (the paper's): InfoNCE pools the MAE pass's visible tokens. In [0, masking.ratio]: a second
    # encoder pass over a lighter view feeds InfoNCE; the MASKED fraction of that view (0 = whole clip).
    # Needs InfoNCE: an objective with contrastive, or mae with monitor_nce (then the monitor uses the view)
    view_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        check_choice("contrastive.objective", self.objective, OBJECTIVES)
        if self.temperature <= 0:
            raise ConfigError(f"contrastive.temperature={self.temperature}: must be > 0")
        if self.weight < 0:
            raise ConfigError(f"contrastive.weight={self.weight}: must be >= 0 (lambda on InfoNCE)")
        _positive("contrastive.proj_dim", self.proj_dim)
        if self.view_ratio is not None and not 0.0 <= self.view_ratio < 1.0:
            raise ConfigError(f"contrastive.view_ratio={self.view_ratio}: must be in [0, 1) or null")


@dataclass
class OptimConfig:
    """AdamW with warmup + cosine; learning rates scale with the global batch (x batch/256)."""

    base_lr: float = 1.5e-4  # lr at global batch 256
    lr: Optional[float] = None  # absolute lr; overrides base_lr scaling when set
    lr_floor: Optional[float] = None  # the batch-scaled peak lr is at least this (None: no floor)
    min_lr: float = 1e-5  # cosine floor at batch 256 (scaled like base_lr; absolute with optim.lr)
    warmup_lr: float = 1e-6  # first warmup lr at batch 256 (scaled like base_lr; absolute with optim.lr)
    warmup_epochs: float = 1.0  # linear warmup length in epochs
    weight_decay: float = 0.05  # AdamW decoupled weight decay (biases, norms, tokens excluded)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (VideoMAE pretraining: 0.9, 0.95)
    clip_grad: Optional[float] = 1.0  # max grad norm; None = no clipping
    layer_decay: float = 1.0  # layer-wise lr decay (finetuning: 0.75); 1 = off
    fused: bool = True  # fused AdamW kernel where available (much faster on CPU)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # nan passes every `<= 0` test below; inf trains into a nan loss
            value = getattr(self, f.name)
            if any(isinstance(v, float) and not math.isfinite(v)
                   for v in (value if isinstance(value, tuple) else (value,))):
                raise ConfigError(f"optim.{f.name}={value}: must be a finite number")
        if self.base_lr <= 0 or (self.lr is not None and self.lr <= 0):
            raise ConfigError("optim.base_lr / optim.lr must be > 0")
        if self.lr_floor is not None and self.lr_floor <= 0:
            raise ConfigError(f"optim.lr_floor={self.lr_floor}: must be > 0 or null")
        # a negative floor or warmup start is a negative lr (gradient ascent), a negative decay grows the weights
        for key in ("warmup_epochs", "min_lr", "warmup_lr", "weight_decay"):
            _not_negative(f"optim.{key}", getattr(self, key))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={list(self.betas)}: two values, each in [0, 1)")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay={self.layer_decay}: must be in (0, 1]")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError(f"optim.clip_grad={self.clip_grad}: must be > 0 or null")


@dataclass
class TrainConfig:
    """The shared training loop: length, batch, precision, devices."""

    epochs: int = 1  # passes over the training set
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None = all epochs)
    batch_size: int = 8  # per process
    accum_steps: int = 1  # gradient accumulation: optimizer step every N micro-batches
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 needs CUDA; auto = bf16 if supported)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds weights, sampling, augmentation and masks
    output_dir: str = "runs/default"  # run folder: config.yaml, metrics.jsonl, checkpoints/, tensorboard/
    log_every: int = 10  # optimizer steps between metric records
    eval_every: int = 1  # epochs between evaluations of tasks that have one (the last epoch always)
    # torch.compile: off | blocks (the transformer blocks) | model (the whole forward). A bool only
    # because YAML 1.1 reads a bare `off` as false; true names no mode and is refused
    compile: Union[bool, str] = "off"
    attention: str = "auto"  # attention kernel: auto (measured per machine) | sdpa | sdpa_fp32 | math
    grad_checkpoint: bool = False  # activation checkpointing of encoder and decoder blocks (less memory)
    # parallel strategy on several processes: ddp (replicated model, averaged gradients) | fsdp (each
    # process holds 1/world of the parameters, gradients and optimizer state: fully_shard per block);
    # one process trains the plain model either way
    strategy: str = "ddp"

    def __post_init__(self) -> None:
        if not str(self.output_dir).strip():  # an unset $OUT: the run would write into the current folder
            raise ConfigError(f"train.output_dir={self.output_dir!r}: empty; give the run a folder "
                              "(train.output_dir=runs/NAME, or . for the current one)")
        _not_negative("train.seed", self.seed)  # numpy's generators refuse a negative seed
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.accum_steps", self.accum_steps)
        _positive("train.log_every", self.log_every)
        _positive("train.eval_every", self.eval_every)
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps)
        check_choice("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if self.compile is False:  # YAML's reading of `off`
            self.compile = "off"
        if self.compile not in ("off", "blocks", "model"):
            shown = "true" if self.compile is True else repr(self.compile)
            raise ConfigError(f"train.compile={shown}: expected off|blocks|model")
        check_choice("train.attention", self.attention, ATTENTION_KERNELS)
        check_choice("train.strategy", self.strategy, ("ddp", "fsdp"))
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ConfigError("train.strategy=fsdp with train.precision=fp16: the loss scaler is DDP's; "
                              "use train.precision=bf16 (or fp32)")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and where a run resumes from."""

    every_steps: int = 200  # optimizer steps between checkpoints (also written at each epoch end)
    keep_last: int = 2  # older step checkpoints are deleted
    # "auto" = latest in output_dir, "" = never, or a checkpoint path; a checkpoint trained with other
    # settings is refused (keys allowed to change: tgmae.weights.checkpoint.RESUMABLE_KEYS) unless
    # "ignore_config" (= auto, continuing under the new settings)
    resume: str = "auto"

    def __post_init__(self) -> None:
        _positive("checkpoint.every_steps", self.every_steps)
        _positive("checkpoint.keep_last", self.keep_last)


@dataclass
class LogConfig:
    """Console progress and TensorBoard events (metrics.jsonl is always written)."""

    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed


@dataclass
class EvalConfig:
    """Downstream evaluation settings (finetune, linear probe, retrieval)."""

    num_classes: Optional[int] = None  # None = from the annotations
    label_smoothing: float = 0.1  # finetuning cross-entropy label smoothing
    mixup: float = 0.0  # mixup alpha (VideoMAE finetune: 0.8)
    cutmix: float = 0.0  # cutmix alpha (VideoMAE finetune: 1.0)
    probe_optimizer: str = "lars"  # lars | sgd (MAE's probe on the loop) | lbfgs (CLIP's: logistic regression, L-BFGS)
    probe_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # lbfgs probe: L2 grid, CV-chosen; one value = fixed
    probe_folds: int = 4  # lbfgs probe: cross-validation folds of the training features that choose the L2
    head_init_scale: float = 0.001  # classifier head weights scaled by this at init (VideoMAE)
    head_dropout: float = 0.0  # dropout before the classifier head
    feature_cache: str = ""  # linear-probe feature cache; empty = <train.output_dir>/features
    retrieval_text: str = "classes"  # zero-shot retrieval against "classes" prompts or "captions"
    # class-name retrieval: a prompt template, or a list of them whose embeddings are averaged per class (CLIP's
    # prompt ensemble)
    class_prompt: str | tuple[str, ...] = "a video of {}."
    # class-name retrieval from descriptions instead (a `tgmae describe-classes` JSON, class -> [texts]): each class's
    # descriptions averaged (CuPL); empty = the templates of class_prompt
    class_descriptions: str = ""
    strict: bool = False  # an unreadable test video fails the evaluation (False: scored without it, listed)
    # retrieval through a video-text head trained afterwards on the frozen encoder (LiT's locked alignment,
    # tgmae.evaluate.align) for this many epochs over the training videos and captions; 0 = the pretraining's
    # own head. Its pooling is fixed to temporal (per-time-slice means, concatenated): a mean over all tokens
    # loses the order of the slices, where motion classes live (docs/study.md, issue 27)
    retrieval_align_epochs: int = 0
    retrieval_align_batch_size: int = 16  # videos per alignment step (>= 2: the head's BatchNorm)
    retrieval_align_lr: float = 1e-3  # AdamW lr of the alignment (constant; weight decay 0.05, tau 0.07)
    # frozen-backbone probes (tgmae.evaluate.knn / attentive): which one, and their knobs
    probe: str = "linear"  # linear (probe_optimizer) | knn (DINO's weighted k-NN) | attentive (V-JEPA's)
    knn_k: tuple[int, ...] = (10, 20, 100, 200)  # k-NN: neighbour counts, all scored in one pass (DINO's)
    knn_temperature: float = 0.07  # k-NN: vote weight exp(cosine / T) (DINO)
    attentive_lr: float = 1e-3  # attentive probe: AdamW peak lr, cosine to attentive_final_lr (V-JEPA)
    attentive_final_lr: float = 0.0  # attentive probe: lr at the last step (V-JEPA: 0)
    attentive_warmup_epochs: float = 0.0  # attentive probe: linear lr warm-up (V-JEPA: none)
    attentive_weight_decay: float = 0.01  # attentive probe: AdamW decay of >= 2-D weights (V-JEPA)
    attentive_epochs: int = 20  # attentive probe: passes over the training set (V-JEPA: 20)
    attentive_batch_size: Optional[int] = None  # None = train.batch_size (V-JEPA: 256 clips over 64 GPUs)
    attentive_queries: int = 1  # learnable query tokens of the cross-attention pooler
    attentive_heads: Optional[int] = None  # None = the encoder's head count
    # independently initialised probes trained on the same batches, their softmax averaged (one probe's
    # top-1 depends on its init; V-JEPA 2 trains several heads at once); 1 = a single probe
    attentive_ensemble: int = 1

    def __post_init__(self) -> None:
        self._check_frozen_probes()
        if self.num_classes is not None:
            _positive("eval.num_classes", self.num_classes)
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"eval.head_dropout={self.head_dropout}: must be in [0, 1)")
        _not_negative("eval.head_init_scale", self.head_init_scale)
        check_choice("eval.probe_optimizer", self.probe_optimizer, ("lars", "sgd", "lbfgs"))
        if not self.probe_l2 or any(not 0 < v < float("inf") for v in self.probe_l2):
            raise ConfigError(f"eval.probe_l2={list(self.probe_l2)}: needs at least one value, all > 0 and finite")
        if len(set(self.probe_l2)) != len(self.probe_l2):
            raise ConfigError(f"eval.probe_l2={list(self.probe_l2)}: a value appears twice")
        if self.probe_folds < 2:
            raise ConfigError(f"eval.probe_folds={self.probe_folds}: must be >= 2")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"eval.label_smoothing={self.label_smoothing}: must be in [0, 1)")
        for key in ("mixup", "cutmix"):  # a negative alpha turned mixing off while the config said otherwise
            if not 0 <= getattr(self, key) < float("inf"):
                raise ConfigError(f"eval.{key}={getattr(self, key)}: must be >= 0 (0 = off)")
        check_choice("eval.retrieval_text", self.retrieval_text, RETRIEVAL_TEXTS)
        if isinstance(self.retrieval_align_epochs, bool) or self.retrieval_align_epochs < 0:
            raise ConfigError(f"eval.retrieval_align_epochs={self.retrieval_align_epochs}: must be >= 0 (0 = the "
                              "pretraining's head)")
        if self.retrieval_align_batch_size < 2:
            raise ConfigError(f"eval.retrieval_align_batch_size={self.retrieval_align_batch_size}: must be >= 2")
        if not 0 < self.retrieval_align_lr < float("inf"):
            raise ConfigError(f"eval.retrieval_align_lr={self.retrieval_align_lr}: must be > 0 and finite")
        templates = [self.class_prompt] if isinstance(self.class_prompt, str) else list(self.class_prompt)
        if not templates:
            raise ConfigError("eval.class_prompt=[]: needs at least one template")
        for t in templates:
            if "{}" not in t:
                raise ConfigError(f"eval.class_prompt={self.class_prompt!r}: {t!r} needs a {{}} for the class name")

    def _check_frozen_probes(self) -> None:
        check_choice("eval.probe", self.probe, PROBE_KINDS)
        if not self.knn_k or any(k < 1 for k in self.knn_k) or len(set(self.knn_k)) != len(self.knn_k):
            raise ConfigError(f"eval.knn_k={list(self.knn_k)}: needs at least one value, all >= 1, none twice")
        if not 0 < self.knn_temperature < float("inf"):
            raise ConfigError(f"eval.knn_temperature={self.knn_temperature}: must be > 0 and finite")
        if not 0 < self.attentive_lr < float("inf"):
            raise ConfigError(f"eval.attentive_lr={self.attentive_lr}: must be > 0 and finite")
        for name in ("attentive_final_lr", "attentive_warmup_epochs", "attentive_weight_decay"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"eval.{name}={getattr(self, name)}: must be >= 0 and finite")
        for name in ("attentive_epochs", "attentive_queries", "attentive_batch_size", "attentive_heads",
                     "attentive_ensemble"):
            value = getattr(self, name)
            if value is not None and value < 1:
                nullable = " or null" if name in ("attentive_batch_size", "attentive_heads") else ""
                raise ConfigError(f"eval.{name}={value}: must be >= 1{nullable}")


@dataclass
class RunConfig:
    """One run: every section, resolved. Written next to outputs and into every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        d, m = self.data, self.model
        if d.num_frames % m.tubelet_size:
            raise ConfigError(
                f"data.num_frames={d.num_frames} is not divisible by model.tubelet_size={m.tubelet_size}"
            )
        if d.image_size % m.patch_size:
            raise ConfigError(
                f"data.image_size={d.image_size} is not divisible by model.patch_size={m.patch_size}"
            )
        if self.contrastive.objective != "mae" and not self.captions.file:
            raise ConfigError(
                f"contrastive.objective={self.contrastive.objective!r} needs captions.file"
            )
        if self.masking.name == "tgm" and not self.captions.file:
            raise ConfigError("masking.name='tgm' needs captions.file (text guides the mask)")
        self._check_view_ratio()
        e = self.eval
        if (e.mixup > 0 or e.cutmix > 0) and self.train.batch_size < 2:
            raise ConfigError(f"eval.mixup={e.mixup} / eval.cutmix={e.cutmix} mix each clip with another video of its "
                              f"process's batch: train.batch_size={self.train.batch_size} holds one, so nothing "
                              "would mix; raise train.batch_size to 2 or more, or set both to 0")
        if self.masking.decoder_ratio is not None and self.contrastive.objective == "contrastive":
            raise ConfigError(f"masking.decoder_ratio={self.masking.decoder_ratio} is unused: "
                              "contrastive.objective='contrastive' trains no decoder; leave it null")
        online_tgm = self.masking.name == "tgm" and not self.masking.cache_dir
        if online_tgm and self.captions.text_model:
            raise ConfigError(
                f"captions.text_model={self.captions.text_model!r} with online TGM (masking.cache_dir empty): "
                "online TGM scores the samples' caption embeddings against CLIP patches, and these would "
                "come from the text model; precompute the maps (`tgmae masks`) and set masking.cache_dir")
        if online_tgm and not self.masking.clip_model:
            raise ConfigError("masking.name='tgm' needs masking.cache_dir (similarity maps from `tgmae masks`) or "
                              "masking.clip_model (CLIP in the loop)")
        if online_tgm and not self.captions.clip_model:
            raise ConfigError(
                f"captions.clip_model is empty with online TGM (masking.clip_model={self.masking.clip_model!r}, "
                "masking.cache_dir empty): CLIP in the loop scores each sample's caption embedding, so set "
                f"captions.clip_model={self.masking.clip_model} to embed the captions with the same CLIP")

    def _check_view_ratio(self) -> None:
        """contrastive.view_ratio needs an InfoNCE to feed and may mask no more than the MAE mask
        (the view uncovers masked tokens; tgmae.models.video_text.VideoTextPretrainer.view_mask)."""
        c, m = self.contrastive, self.masking
        if c.view_ratio is None:
            return
        if c.objective == "mae" and not (c.monitor_nce and self.captions.file):
            raise ConfigError(
                f"contrastive.view_ratio={c.view_ratio} is unused: contrastive.objective='mae' computes no "
                "InfoNCE (contrastive.monitor_nce=true with captions.file monitors it on that view); "
                "leave contrastive.view_ratio null")
        t, h, w = self.token_grid
        n = t * h * w
        masked = MASKED_COUNT[m.name](self.token_grid, m.ratio)  # the generator's own count
        view = int(round(c.view_ratio * n))
        if view > masked:
            raise ConfigError(
                f"contrastive.view_ratio={c.view_ratio} masks {view} of {n} tokens, more than the MAE mask "
                f"(masking.ratio={m.ratio}, masking.name={m.name!r}: {masked}): view_ratio is the MASKED "
                "fraction of the InfoNCE view (0 = whole clip), at most masking.ratio")

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T', H', W'): tokens along time, height and width."""
        n = self.data.image_size // self.model.patch_size
        return (self.data.num_frames // self.model.tubelet_size, n, n)


# --------------------------------------------------------------------------------------------
# Loading, overrides, serialization
# --------------------------------------------------------------------------------------------


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value}: must be > 0")


def _not_negative(name: str, value: float) -> None:
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name}={value}: must be >= 0 and finite")


class _SourcedInt(int):
    """A YAML plain scalar read as an int, with the text it was read from (`text`) and where
    (`where`: "FILE, line N", or None for a command-line override). `_coerce` needs the text for a
    string key (`0123` reads as 83: re-trial 31A S2) and hands on plain ints everywhere else."""

    text: str
    where: Optional[str]


class _SourcedFloat(float):
    """`_SourcedInt`'s float: `1.50`, `.inf`, `1_0.5` read as numbers."""

    text: str
    where: Optional[str]


class _SourceLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader whose ints and floats keep their source text (`_SourcedInt`); the
    subclass's constructor table is its own copy, so yaml.safe_load is unchanged."""

    where: Optional[str] = None


def _sourced_constructor(kind: type, base: Any) -> Any:
    def construct(loader: _SourceLoader, node: yaml.ScalarNode) -> Any:
        value = kind(base(loader, node))
        value.text = str(node.value)
        value.where = None if loader.where is None else f"{loader.where}, line {node.start_mark.line + 1}"
        return value
    return construct


_SourceLoader.add_constructor("tag:yaml.org,2002:int",
                              _sourced_constructor(_SourcedInt, yaml.SafeLoader.construct_yaml_int))
_SourceLoader.add_constructor("tag:yaml.org,2002:float",
                              _sourced_constructor(_SourcedFloat, yaml.SafeLoader.construct_yaml_float))
# no setting is a date: a timestamp (`2024-01-05`, `2024-01-05 10:00`) is read as the text written,
# as a path or a run name typed so means it (re-trial 33A M1: "datetime.date(2024, 1, 5): expected a string")
_SourceLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
# a sourced number that reaches a YAML writer without `_coerce` (a study's phase overrides, an
# untyped key) is written as the number it is
yaml.SafeDumper.add_representer(_SourcedInt, yaml.SafeDumper.represent_int)
yaml.SafeDumper.add_representer(_SourcedFloat, yaml.SafeDumper.represent_float)


def _load_sourced(text: str, where: Optional[str]) -> Any:
    """yaml.safe_load of `text`, its numbers remembering their text and `where` (a file's name:
    "FILE, line N" is added per number; None: an override). yaml.YAMLError as safe_load's."""
    loader = _SourceLoader(text)
    loader.where = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _number_as_text(value: Any, key: str) -> str:
    """A number YAML read for string key `key`, as text (re-trial 31A S2): an override keeps the
    text as typed (`train.output_dir=0123` -> '0123', never 83); in a file only a number whose text
    is its own `str` (`123`, `1.5`) passes, the others (`0123`, `2024_12`, `0x10`, `1.50`) are
    refused naming the key and line: the file's text is what was meant, YAML changed it. A number
    without source text (a Python value given by code) is its `str`."""
    text, where = getattr(value, "text", None), getattr(value, "where", None)
    if text is None or where is None:
        return str(value) if text is None else text
    if str(value) == text:
        return text
    raise ConfigError(f"{key}: {where}: YAML reads {text} as the number {value}, not the text {text!r}; "
                      f"write it in quotes ('{text}')")


def _plain(value: Any) -> Any:
    """`value` without the source text of its numbers (`_SourcedInt`), for an untyped key."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (_SourcedInt, _SourcedFloat)):
        return int(value) if isinstance(value, int) else float(value)
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation, converting only where it is lossless (a number
    for a string key: `_number_as_text`). Returns plain Python values (no `_SourcedInt`)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return _plain(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} values")
        inner = args[0] if args else Any
        items = [
            _coerce(v, inner if (origin is list or args[-1] is Ellipsis) else args[i], f"{key}[{i}]")
            for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _number_as_text(value, key)
        hint = " (YAML reads yes/no/on/off/true/false unquoted as true/false: write it in quotes)" \
            if isinstance(value, bool) else ""
        raise ConfigError(f"{key}={value!r}: expected a string{hint}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, prefix=key)
    raise ConfigError(f"{key}: unsupported type {annotation}")


# Keys a release removed -> the value under which they changed nothing: a config (a checkpoint's,
# a run folder's) holding that value still loads; any other value is refused, since the run it
# describes cannot be rebuilt.
RETIRED_KEYS: dict[str, Any] = {"contrastive.text_norm": False}


def _drop_retired(values: dict, prefix: str) -> dict:
    kept = dict(values)
    for key, inert in RETIRED_KEYS.items():
        section, _, name = key.rpartition(".")
        if section == prefix and name in kept:
            if kept[name] != inert:
                raise ConfigError(f"{key}={kept[name]!r}: this setting was removed (only {inert!r} still "
                                  "loads); the run it describes cannot be rebuilt by this version")
            del kept[name]
    return kept


def from_dict(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and bad types raise ConfigError
    (a retired key at its inert value, `RETIRED_KEYS`, is dropped)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    values = _drop_retired(values, prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def yaml_problem(e: yaml.YAMLError, in_line: bool = False) -> str:
    """PyYAML's error as one line: `line L, column C: context, problem` (1-based, where the problem
    is; `column C: ...` for a one-line text, `in_line`), without its quoted line and caret."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    words = [w for w in (getattr(e, "context", None), getattr(e, "problem", None)) if w]
    what = ", ".join(words) if words else str(e).splitlines()[0] if str(e) else type(e).__name__
    what = " ".join(what.split())  # a problem text spanning lines
    if mark is None:
        return what
    where = f"column {mark.column + 1}" if in_line else f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: {what}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (['optim', 'lr'], 0.0001); the value is parsed as YAML, its numbers
    keeping the text as typed for a string key (`train.output_dir=0123` -> '0123': `_number_as_text`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        if raw.strip():  # a mapping value holds each key once, as a YAML file must
            _refuse_duplicate_keys(yaml.compose(raw), f"override {text!r}", key.strip().lstrip("-") + ".", in_line=True)
        value = _load_sourced(raw, None) if raw.strip() else ""  # numbers keep their text: `_number_as_text`
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({yaml_problem(e, in_line=True)})") from None
    return key.split("."), value


def refuse_repeated_overrides(overrides: Sequence[str], where: str = "on the command line") -> None:
    """Overrides a user gave at once that set one key twice (`masking.ratio=0.9 ... masking.ratio=0.75`,
    or a section and a key in it: `masking={ratio: 0.75} masking.ratio=0.9`) are refused naming the
    key and both texts: which one was meant cannot be known. `key+=[...]` (the study's list
    extension) may repeat. Recipes that layer internal overrides call `load_config`, where the later
    one wins."""
    seen: list[tuple[str, str]] = []
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key.endswith("+"):
            continue
        for other, other_text in seen:
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                raise ConfigError(f"{min(key, other, key=len)}: set twice {where} ({other_text!r} and {text!r}); "
                                  "give it once")
        seen.append((key, text))


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type = RunConfig,
    base: dict | None = None,
    prefix: str = "",
) -> Any:
    """defaults < `base` dict < YAML file < dotted overrides, validated into `cls` (errors name
    keys under `prefix`, e.g. "study")."""
    return load_config_and_keys(path, overrides, cls, base, prefix)[0]


def load_config_and_keys(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type = RunConfig,
    base: dict | None = None,
    prefix: str = "",
) -> tuple[Any, set[str]]:
    """`load_config`, and the dotted keys the user set: the file's and the overrides' (a section's
    mapping sets each key in it; `base`'s are a recipe's, not the user's), from its one read of the
    file, for a command that fills the others from elsewhere (`tgmae evaluate`)."""
    merged: dict = {}
    if base:  # a copy: the overrides below must not write into the caller's dict (a shared recipe)
        _deep_update(merged, copy.deepcopy(base))
    given: set[str] = set()
    if path:
        loaded = read_config_file(path)
        given |= _dotted_keys(loaded, "")
        _deep_update(merged, loaded)
    for text in overrides:
        keys, value = parse_override(text)
        given |= _dotted_keys(value, ".".join(keys))
        node = merged
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        _deep_update(node, {keys[-1]: value})  # a section's mapping sets only its keys: the others stay the file's / recipe's
    return from_dict(cls, merged, prefix=prefix), given


def _dotted_keys(node: Any, prefix: str) -> set[str]:
    """The dotted keys a value set under `prefix`: each leaf of a non-empty mapping, else `prefix`."""
    if isinstance(node, dict) and node:
        return {key for k, v in node.items() for key in _dotted_keys(v, f"{prefix}.{k}" if prefix else str(k))}
    return {prefix} if prefix else set()


def read_config_file(path: str | Path) -> dict:
    """A config file's mapping of sections; ConfigError naming the file when it is missing, not
    YAML or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (" (a directory)" if p.is_dir() else ""))
    loaded = read_yaml(p) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return loaded


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents; ConfigError names the file when it is not YAML, and the key and
    both lines when a mapping holds a key twice (YAML keeps the second silently); NotUtf8Error
    names file:line when it is not UTF-8 (`tgmae.textfile`; a BOM is fine)."""
    p = Path(path)
    text = read_text(p)
    try:
        _refuse_duplicate_keys(yaml.compose(text), p, "")
        return _load_sourced(text, str(p))  # numbers keep their text and line: `_number_as_text`
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML at {yaml_problem(e)}") from None


def _refuse_duplicate_keys(node: Any, where: Any, prefix: str, in_line: bool = False) -> None:
    """ConfigError naming `where` (a file, or an override), the key and both places when a mapping
    under `node` holds a key twice (YAML keeps the second silently)."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, where, prefix, in_line)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, str] = {}
    for key, value in node.value:
        name = f"{prefix}{key.value}" if isinstance(key, yaml.ScalarNode) else prefix + "?"
        at = f"column {key.start_mark.column + 1}" if in_line else f"line {key.start_mark.line + 1}"
        if name in first:
            raise ConfigError(f"{where}: key {name!r} appears twice ({first[name]} and {at}); keep one")
        first[name] = at
        _refuse_duplicate_keys(value, where, name + ".", in_line)


# Keys naming a local file or folder, recorded resolved when a run starts (`recorded_paths`: its
# config.yaml and checkpoints) and compared resolved on resume (`same_path_setting`): `A`, `./A`,
# `A/` and /abs/A are one folder, and a later command from another folder reads the run's own files
# (re-trial 31A S4 / M4). Empty stays empty (unset). Not train.output_dir: the run folder itself,
# named as typed and free to change on resume.
LOCAL_PATH_KEYS = ("data.root", "data.train_annotations", "data.val_annotations", "data.cache_dir",
                   "captions.file", "captions.embedding_cache", "masking.cache_dir", "eval.feature_cache",
                   "eval.class_descriptions")
ANNOTATION_KEYS = ("data.train_annotations", "data.val_annotations")  # read from data.root when not here
# Keys naming a model: a hub id (kept as written) or a local folder or file (resolved, as
# `tgmae.hub.model_name` spells a folder)
MODEL_PATH_KEYS = ("model.pretrained", "captions.clip_model", "captions.text_model", "masking.clip_model")


def annotation_path(root: str | Path, annotations: str | Path) -> Path:
    """Where an annotation file or folder is read from: as given when it exists (from the current
    folder) or is absolute, else under data.root `root`."""
    p = Path(annotations)
    if p.exists() or p.is_absolute():
        return p
    return Path(root) / p


def path_spelling(key: str, value: Any, root: str = "") -> Any:
    """One spelling of dotted key `key`'s `value` (`LOCAL_PATH_KEYS`: resolved, missing or not;
    an annotation key under data.root `root` as `annotation_path` reads it; `MODEL_PATH_KEYS`: a
    local file or folder resolved, a hub id as written). Other keys, empty and non-text values are
    returned as they are. Relative paths are read against the current folder."""
    if not isinstance(value, str) or not value:
        return value
    if key in ANNOTATION_KEYS:
        return str(annotation_path(Path(root).expanduser() if root else Path(), Path(value).expanduser()).resolve())
    path = Path(value).expanduser()
    if key in LOCAL_PATH_KEYS or (key in MODEL_PATH_KEYS and path.exists()):
        return str(path.resolve())
    return value


def recorded_paths(values: dict) -> dict:
    """A copy of nested config dict `values` (`to_dict` of a RunConfig) with its path keys in one
    spelling (`path_spelling`): what a run records, so its config names the files it read wherever
    it is read from (re-trial 31A S4)."""
    out = copy.deepcopy(values)
    root = (values.get("data") or {}).get("root", "")
    for key in LOCAL_PATH_KEYS + MODEL_PATH_KEYS:
        section, _, name = key.partition(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            out[section][name] = path_spelling(key, out[section][name], root)
    return out


def same_path_setting(key: str, a: Any, b: Any, root_a: str = "", root_b: str = "") -> bool:
    """Whether values `a` and `b` of path key `key` name one file or folder (`path_spelling`, read
    from the current folder; annotations under data.roots `root_a` / `root_b`): a resume with the same
    folder spelled otherwise (`./A`, `A/`, absolute) is not a change of settings (re-trial 31A M4)."""
    return a == b or path_spelling(key, a, root_a) == path_spelling(key, b, root_b)


def relative_paths(cfg: Any) -> list[str]:
    """`key='value'` of each `LOCAL_PATH_KEYS` value of RunConfig `cfg` that is relative: a run's
    config written before runs recorded them resolved, read against the current folder (where the
    run started is not known)."""
    out = []
    for key in LOCAL_PATH_KEYS:
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value and not Path(value).expanduser().is_absolute():
            out.append(f"{key}={value!r}")
    return out


# save_config's first line: what marks a file as a run's saved config (`is_saved_config`), never
# its YAML layout (a user's file without comments can look exactly like a dump)
SAVED_CONFIG_MARK = "# tgmae saved config"


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (a full disk: OutputError naming `path`),
    under a first line `SAVED_CONFIG_MARK (schema)` naming its dataclass; a RunConfig's path keys
    resolved (`recorded_paths`: the files the run read, wherever it is read from)."""
    from tgmae.atomic import atomic_write_text

    head = f"{SAVED_CONFIG_MARK} ({type(cfg).__name__}): the settings this run used, rewritten when it runs again\n"
    values = recorded_paths(to_dict(cfg)) if isinstance(cfg, RunConfig) else to_dict(cfg)
    atomic_write_text(path, head + yaml.safe_dump(values, sort_keys=False))


def is_saved_config(path: str | Path) -> bool:
    """Whether `path` holds what `save_config` writes (a run's config.yaml, by its first line
    `SAVED_CONFIG_MARK`), not a file of the user's; False when it is missing or unreadable. A run
    folder written before the mark is recognised by its checkpoints/ folder
    (`train.resume.check_config_file`), never here."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(SAVED_CONFIG_MARK + " (")


def _deep_update(dst: dict, src: dict) -> None:
    """Merge `src` into `dst` in place, key by key: a section in both keeps the keys of `dst` that
    `src` does not set (nested alike), and an empty one (`optim:` in YAML, `optim={}`) sets none."""
    for k, v in src.items():
        if isinstance(dst.get(k), dict) and (v is None or isinstance(v, dict)):
            _deep_update(dst[k], v or {})
        else:
            dst[k] = v
