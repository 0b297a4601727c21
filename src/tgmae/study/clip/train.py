"""A small CLIP trained on the synthetic set (`tgmae train-clip --root SYNTH_DIR --out DIR`), so
text-guided masking has a meaningful CLIP offline.

A transformers `CLIPModel` (small ViT + text tower, symmetric contrastive loss), a byte-level BPE
tokenizer trained on the captions and a CLIP image processor, saved so DIR loads like a public CLIP
(`CLIPModel` / `AutoTokenizer` / `AutoProcessor.from_pretrained(DIR)`). Pairs: frames, object boxes
and patch-sized object windows with their captions, off-object windows as negatives
(`tgmae.study.clip.data`), so the faithful mode's 16 px crops find the named object.
`--dense-weight`: the same grouping on the frames' patch tokens of the dense MaskCLIP path (value
projection -> post-LN -> projection), so the dense mode works too. `--motion-weight`: the text
tower also matches a motion tower (a small ViT on `--motion-frames` frames stacked on channels,
saved in DIR/motion, never loaded by TGM), so it separates the verbs frames cannot show.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tgmae.atomic import atomic_write_text, open_mode, remove_stale_temps, temp_path, write_failure
from tgmae.clip.data import read_split_ids
from tgmae.clip.features import CLIP_MEAN, CLIP_STD
from tgmae.errors import SettingsError, UserError
from tgmae.study.clip.data import SyntheticClipSet, load_synthetic_clip_set, sample_clips, sample_pairs
from tgmae.study.clip.tokenizer import train_clip_tokenizer

log = logging.getLogger(__name__)


@dataclass
class ClipTrainConfig:
    """Model size and schedule of `tgmae train-clip` (defaults: ~0.4M parameters, a few minutes
    on 2 CPU cores)."""

    image_size: int = 64  # CLIP input side
    patch_size: int = 8  # CLIP ViT patch
    width: int = 64  # image tower width
    layers: int = 3
    heads: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context: int = 32  # text positions
    embed_dim: int = 64  # joint space
    vocab_size: int = 1024
    steps: int = 600
    videos_per_batch: int = 32  # each gives up to 4 images
    dense_weight: float = 0.5  # weight of the patch-token loss that makes dense (MaskCLIP) mode work
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    frames_per_video: int = 12
    seed: int = 0
    motion_weight: float = 0.0  # weight of the clip-caption loss through the motion tower; 0 = frames only
    motion_frames: int = 4  # frames per motion-tower clip, in time order
    motion_stride: int = 2  # ... this many loaded frames apart (frames_per_video span the whole video)


class ClipOutputError(FileExistsError, UserError):
    """train-clip's output folder holds a run or the synthetic set, or other files (without overwrite)."""


def check_clip_output(out: Path, root: Path, overwrite: bool, what: str = "--out") -> None:
    """Refuse (`ClipOutputError`, naming the folder) an output folder that holds a run
    (`locks.RUN_MARKERS`: a CLIP's model.safetensors would replace the run's), lies inside one
    (`locks.run_around`: a run's checkpoints/) or holds the synthetic set, --overwrite or not, or
    any other non-empty folder without `overwrite`."""
    from tgmae.locks import RUN_MARKERS, run_around

    target, data = out.resolve(), root.resolve()
    run = [m for m in RUN_MARKERS if (target / m).exists()]
    if run:
        raise ClipOutputError(f"{out} ({what}): holds a run ({', '.join(run)}), which a "
                              "CLIP would overwrite; give train-clip a folder of its own")
    around = run_around(target)
    if around is not None:
        raise ClipOutputError(f"{out} ({what}): {'holds' if around == target else 'inside'} the run {around}, "
                              "whose files a CLIP would replace or mix with; give train-clip a folder outside it")
    if target == data or target in data.parents:
        raise ClipOutputError(f"{out} ({what}): holds the synthetic set {root}; give train-clip a folder of its own")
    if target.is_dir() and not overwrite and any(target.iterdir()):
        raise ClipOutputError(f"{out} ({what}): not empty; give train-clip a new folder, or --overwrite to "
                              "replace the files train-clip writes there")


def build_clip_model(cfg: ClipTrainConfig, vocab_size: int, bos_id: int = 0, eos_id: int = 1, pad_id: int = 1):
    """A randomly initialized `CLIPModel` of the configured size."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.context, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        ),
        vision_config=dict(
            image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.width,
            intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        ),
        projection_dim=cfg.embed_dim,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


def build_motion_tower(cfg: ClipTrainConfig):
    """A randomly initialized `CLIPVisionModelWithProjection` for clips [B, 3 * motion_frames, S, S]
    (the image tower's size), projecting into the joint space (embed_dim)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.width, intermediate_size=4 * cfg.width,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_channels=3 * cfg.motion_frames,
        projection_dim=cfg.embed_dim,
    )
    torch.manual_seed(cfg.seed + 1)
    return CLIPVisionModelWithProjection(config)


def save_clip(out: str | Path, model, tokenizer, image_size: int) -> None:
    """Model + tokenizer + CLIP image processor (+ processor config) into one directory."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    image_processor.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def save_clip_run(out: Path, model, tokenizer, image_size: int, motion, summary: dict) -> None:
    """`save_clip` + the motion tower (if any, in motion/) + `summary` as train_clip.json (last),
    written whole into a temp folder beside `out`, then moved in: a save that fails or is killed
    leaves `out` as it was (empty, or an earlier CLIP's files under --overwrite), never a
    config.json without weights that a retry is refused for. An earlier CLIP's motion/ goes when
    this one has none. A write the disk refuses (full, `ulimit -f`: safetensors' SafetensorError)
    is an OutputError naming `out`."""
    from transformers.utils import logging as hf_logging

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # of saves killed before their move
    work = temp_path(out)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar, also under --no-progress
    try:
        save_clip(work, model, tokenizer, image_size)
        if motion is not None:
            motion.eval().save_pretrained(work / "motion")
        atomic_write_text(work / "train_clip.json", json.dumps(summary, indent=2) + "\n")
        open_mode(work)  # safetensors makes 0600 files: the mode open() gives, as the others
    except Exception as e:
        failure = write_failure(e, out)  # before the clean-up: a full disk is told by its free space
        shutil.rmtree(work, ignore_errors=True)
        if failure is None:
            raise
        raise failure from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    try:
        _move_clip_into_place(work, out, keep_motion=motion is not None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _move_clip_into_place(work: Path, out: Path, keep_motion: bool) -> None:
    """Move `work`'s files into `out`, train_clip.json last (removed first: the study takes a folder
    with it as a finished CLIP, so a kill while moving leaves one it trains again)."""
    out.mkdir(exist_ok=True)
    (out / "train_clip.json").unlink(missing_ok=True)
    if not keep_motion and (out / "motion" / "config.json").is_file():  # an earlier CLIP's, not this one's
        shutil.rmtree(out / "motion")
    for entry in sorted(work.iterdir(), key=lambda p: p.name == "train_clip.json"):
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)


def grouped_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, key: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with grouped positives.

    image_emb [N, D], text_emb [K, D] (normalized); key [N]: the text index of each image, -1 for
    negative-only images. image -> text: cross-entropy over the K texts (positives only).
    text -> image: each text against all N images, its positives being the images of its key
    (texts with no image in the batch are left out of this direction).
    """
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()  # [N, K]
    pos = key >= 0
    i2t = F.cross_entropy(logits[pos], key[pos])
    t_logits = logits.t()  # [K, N]
    member = key[None, :] == torch.arange(text_emb.shape[0], device=key.device)[:, None]
    has = member.any(dim=1)  # texts without a positive image here take no part
    t2i = -(torch.logsumexp(t_logits[has].masked_fill(~member[has], float("-inf")), dim=1)
            - torch.logsumexp(t_logits[has], dim=1)).mean()
    return (i2t + t2i) / 2


def maskclip_tokens(model, last_input: torch.Tensor) -> torch.Tensor:
    """Input of the image tower's last block [B, 1 + g*g, W] -> [B, g*g, D] patch features on the
    dense (MaskCLIP) path: layer_norm1 -> v_proj -> out_proj -> post-LN -> visual projection."""
    vision = model.vision_model
    last = vision.encoder.layers[-1]
    v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(last_input[:, 1:])))
    return model.visual_projection(vision.post_layernorm(v))


def dense_loss(model, last_input: torch.Tensor, cover: torch.Tensor, key: torch.Tensor,
               text_emb: torch.Tensor) -> torch.Tensor:
    """Grouped contrastive loss of the whole frames' dense patch features: patches mostly on the
    object (>= 50%) are positives of the frame's caption, patches off it negatives.
    last_input [B, 1 + g*g, W], cover [B, g, g], key [B] (the frames' text index)."""
    tokens = F.normalize(maskclip_tokens(model, last_input), dim=-1).flatten(0, 1)
    c = cover.flatten()
    tok_key = torch.where(c >= 0.5, key.repeat_interleave(cover[0].numel()), torch.full_like(c, -1, dtype=torch.long))
    keep = (c >= 0.5) | (c <= 0)
    if not bool((tok_key[keep] >= 0).any()):
        return tokens.sum() * 0.0
    return grouped_contrastive_loss(tokens[keep], text_emb, tok_key[keep], model.logit_scale)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """[B, 3 * k, H, W] in [0, 1] (k frames on the channel axis) -> CLIP-normalized."""
    mean = torch.tensor(CLIP_MEAN).repeat(images.shape[1] // 3).view(1, -1, 1, 1)
    std = torch.tensor(CLIP_STD).repeat(images.shape[1] // 3).view(1, -1, 1, 1)
    return (images - mean) / std


def motion_loss(model, motion, tokenizer, cfg: ClipTrainConfig, data: SyntheticClipSet,
                g: torch.Generator) -> torch.Tensor:
    """Grouped contrastive loss of short clips (through the motion tower) against their captions
    (through the CLIP's text tower), positives grouped by object name and action."""
    batch = sample_clips(data, cfg.videos_per_batch, cfg.image_size, g, cfg.motion_frames, cfg.motion_stride)
    tok = tokenizer(batch.texts, padding=True, truncation=True, max_length=cfg.context, return_tensors="pt")
    clip = F.normalize(motion(pixel_values=_normalize(batch.clips)).image_embeds, dim=-1)
    txt = F.normalize(model.get_text_features(
        input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output, dim=-1)
    return grouped_contrastive_loss(clip, txt, batch.key, model.logit_scale)


def _lr(step: int, cfg: ClipTrainConfig) -> float:
    """Linear warmup (at most a fifth of the schedule), then cosine to 2% of the peak."""
    warmup = max(1, min(cfg.warmup, cfg.steps // 5))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    p = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def patch_auc(
    model, tokenizer, data: SyntheticClipSet, mode: str = "faithful", grid: int = 14, frames: int = 2
) -> float:
    """TGM check: per frame, the ROC-AUC of caption similarity for the 16 px model patches (of a
    224 px view) on the object (coverage >= 0.5) vs off it (no object pixel), with faithful patch
    crops or dense features; mean over frames with both kinds."""
    from tgmae.clip.features import ClipBundle, ClipPatchScorer, embed_texts

    bundle = ClipBundle(model.eval(), tokenizer, CLIP_MEAN, CLIP_STD, "training")
    scorer = ClipPatchScorer(bundle, mode, batch_size=512)
    aucs = []
    for v in range(len(data)):
        text = embed_texts(bundle, [data.captions[v][0]])
        f_idx = torch.linspace(0, data.frames.shape[1] - 1, frames).round().long()
        x = data.frames[v, f_idx].permute(0, 3, 1, 2).float() / 255
        sims = (scorer.features(x, (grid, grid), patch_size=16) @ text[0]).flatten(1)  # [f, g*g]
        cover = F.adaptive_avg_pool2d(data.masks[v, f_idx].float()[:, None], grid).flatten(1)
        for s, c in zip(sims, cover):
            pos, neg = s[c >= 0.5], s[c <= 0]
            if len(pos) and len(neg):
                aucs.append(float((pos[:, None] > neg[None, :]).float().mean()))
    model.train()
    return sum(aucs) / max(1, len(aucs))


def train_clip(root: str | Path, out: str | Path, cfg: ClipTrainConfig, progress: bool = True,
               what: str = "--out", overwrite: bool = False) -> dict:
    """Train and save; returns a summary (also written to DIR/train_clip.json). Holds `out`'s lock
    (`tgmae.locks`; `what` names the setting that chose it): a second writer, a file at `out`, an
    output folder `check_clip_output` refuses (a run's, the set's, a non-empty one without
    `overwrite`) or steps < 1 (SettingsError) are refused before training, not after it."""
    from tgmae.locks import hold

    if cfg.steps < 1:
        raise SettingsError(f"steps={cfg.steps}: must be >= 1 (train-clip --steps)")
    with hold(out, what, folder=True):
        check_clip_output(Path(out), Path(root), overwrite, what)
        return _train_clip(Path(root), Path(out), cfg, progress)


def _train_clip(root: Path, out: Path, cfg: ClipTrainConfig, progress: bool) -> dict:
    from tqdm import tqdm

    from tgmae.captions.store import read_store

    start = time.perf_counter()
    root = Path(root)
    texts = [c for r in read_store(root / "captions.jsonl").records for c in r.captions]
    tokenizer = train_clip_tokenizer(texts, cfg.vocab_size, cfg.context)
    model = build_clip_model(
        cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    train = load_synthetic_clip_set(root, "train", cfg.frames_per_video)
    val_split = "val" if read_split_ids(root, "val") else "train"  # tiny sets may have no val videos
    val = load_synthetic_clip_set(root, val_split, 2, max_videos=24)
    log.info("train-clip: %d train videos, %d parameters", len(train), sum(p.numel() for p in model.parameters()))
    motion = build_motion_tower(cfg).train() if cfg.motion_weight > 0 else None
    named = list(model.named_parameters()) + (list(motion.named_parameters(prefix="motion")) if motion else [])
    decay = [p for n, p in named if p.dim() >= 2 and "embedding" not in n]
    other = [p for n, p in named if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), fused=True,
    )
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    captured: dict[str, torch.Tensor] = {}
    hook = model.vision_model.encoder.layers[-1].register_forward_pre_hook(
        lambda module, args: captured.__setitem__("x", args[0]))
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="train-clip", unit="step", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = sample_pairs(train, cfg.videos_per_batch, cfg.image_size, g, cfg.patch_size)
        tok = tokenizer(batch.texts, padding=True, truncation=True, max_length=cfg.context, return_tensors="pt")
        img = model.get_image_features(pixel_values=_normalize(batch.images)).pooler_output
        txt = F.normalize(model.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output, dim=-1)
        loss = grouped_contrastive_loss(F.normalize(img, dim=-1), txt, batch.key, model.logit_scale)
        if cfg.dense_weight > 0:
            n = batch.whole_cover.shape[0]
            loss = loss + cfg.dense_weight * dense_loss(
                model, captured["x"][:n], batch.whole_cover, batch.key[:n], txt)
        if motion is not None:
            loss = loss + cfg.motion_weight * motion_loss(model, motion, tokenizer, cfg, train, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if not progress and (step + 1) % 100 == 0:
            log.info("train-clip: step %d/%d, loss %.3f", step + 1, cfg.steps, sum(losses[-100:]) / 100)
    hook.remove()
    model.eval()
    auc = {mode: patch_auc(model, tokenizer, val, mode) for mode in ("faithful", "dense")}
    summary = {
        "root": str(root), "steps": cfg.steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "val_patch_auc": auc["faithful"], "val_patch_auc_dense": auc["dense"], "auc_split": val_split,
        "seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg),
    }
    save_clip_run(out, model, tokenizer, cfg.image_size, motion, summary)
    return summary
