"""Locked video-text alignment for retrieval (`eval.retrieval_align_epochs` > 0; LiT, Zhai et al. 2022).

A fresh video-text head trained on the FROZEN encoder, then used by `tgmae.evaluate.retrieval` in
place of the pretraining's own head. Why: the pretraining's head (mean of the tokens, a few hundred
steps) can stay at colour-level alignment while the encoder's tokens carry the class (docs/study.md,
"Zero-shot retrieval at chance (issue 27)"); a head trained afterwards reads what the encoder learnt.

Inputs: the encoder's token grid [L, D] of every training video's centre clip (evaluation
transform, as the probes'; extracted once by `tgmae.evaluate.features`, cached beside the
attentive probe's tokens), pooled temporally (`temporal_pool`: [T' * D], the mean over space of each
time slice, concatenated; fixed because the mean over all tokens discards the order of the slices,
which is where motion classes live), and the frozen text embeddings of the run's captions
(`captions.file` embedded by `captions.target_model`, as the pretraining read them).
Training: a `ProjectionHead` [T' * D] -> ALIGN_DIM (hidden D) and a linear text map Dt -> ALIGN_DIM
(no bias), symmetric InfoNCE (`tgmae.models.infonce`, tau ALIGN_TEMPERATURE, duplicate captions
never negatives), one random caption per video per step, AdamW (lr `eval.retrieval_align_lr`, weight
decay ALIGN_WEIGHT_DECAY on >= 2-D weights), `eval.retrieval_align_epochs` passes of
`eval.retrieval_align_batch_size` videos (last incomplete batch dropped). Init, order and captions
follow `train.seed`: deterministic.

Output: `<train.output_dir>/aligned_head.safetensors` (atomic) with the settings (`align_settings`)
and the encoder's digest as metadata. A rerun with the same settings and weights reuses it; other
settings or other weights are refused naming the key (`checkpoint.resume=ignore_config` retrains).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import torch
from torch import nn

from tgmae.config import ConfigError
from tgmae.hub import model_name
from tgmae.models.video_text import ProjectionHead

log = logging.getLogger("tgmae")

HEAD_FILE = "aligned_head.safetensors"
POOLING = "temporal"
ALIGN_DIM = 64  # joint space width (the study's contrastive.proj_dim)
ALIGN_TEMPERATURE = 0.07
ALIGN_WEIGHT_DECAY = 0.05


def temporal_pool(tokens: torch.Tensor, slices: int) -> torch.Tensor:
    """tokens [B, N, D] (time-major: N = slices x S) -> [B, slices * D]: the mean over the S spatial
    tokens of each time slice, the slices concatenated in time order. ValueError when N % slices."""
    b, n, d = tokens.shape
    if n % slices:
        raise ValueError(f"{n} tokens do not split into {slices} time slices")
    return tokens.reshape(b, slices, n // slices, d).mean(dim=2).flatten(1)


class AlignedVideoText(nn.Module):
    """A frozen encoder with a video head on its temporally pooled tokens and a text map: the
    interface retrieval reads (`encoder`, `embed_video`, `embed_text`).

    embed_video(latent [B, N, D]) -> [B, proj_dim]; embed_text([B, Dt]) -> [B, proj_dim].
    """

    def __init__(self, encoder: nn.Module, slices: int, text_dim: int, proj_dim: int = ALIGN_DIM) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.slices = slices
        d = encoder.arch.embed_dim
        self.video_head = ProjectionHead(slices * d, d, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim, bias=False)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, slices * D] -> [B, proj_dim]."""
        return self.video_head(pooled)

    def embed_video(self, latent: torch.Tensor) -> torch.Tensor:
        return self.video_head(temporal_pool(latent, self.slices))

    def embed_text(self, text_embedding: torch.Tensor) -> torch.Tensor:
        return self.text_proj(text_embedding.float())

    def head_state(self) -> dict[str, torch.Tensor]:
        """What alignment trained (no encoder weights): video_head.*, text_proj.*."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def train(self, mode: bool = True) -> "AlignedVideoText":
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self


def resolved_path(path: str) -> str:
    """A setting's file as one spelling (absolute, links followed); "" stays "" (not set)."""
    return str(Path(path).resolve()) if path else ""


def align_settings(cfg) -> dict[str, Any]:
    """What decides the aligned head, {key: value}: the `eval.retrieval_align_*` keys, train.seed,
    the fixed recipe (pooling, width, tau, weight decay), the training videos, their clips' pixels
    and the captions."""
    e, d = cfg.eval, cfg.data
    pixels = {f"data.{k}": getattr(d, k) for k in ("format", "split", "num_frames", "frame_stride", "sampling",
                                                   "image_size")}  # a clip's pixels (and T': the head's width)
    pixels.update({"data.mean": list(d.mean), "data.std": list(d.std)})
    return {**pixels, "eval.retrieval_align_epochs": e.retrieval_align_epochs,
            "eval.retrieval_align_batch_size": e.retrieval_align_batch_size,
            "eval.retrieval_align_lr": e.retrieval_align_lr, "train.seed": cfg.train.seed,
            "pooling": POOLING, "dim": ALIGN_DIM, "temperature": ALIGN_TEMPERATURE,
            "weight_decay": ALIGN_WEIGHT_DECAY, "data.train_annotations": cfg.data.train_annotations,
            "data.root": resolved_path(cfg.data.root), "captions.file": resolved_path(cfg.captions.file),
            "captions.target_model": model_name(cfg.captions.target_model)}


def stored_head(path: Path, settings: dict[str, Any], digest: str, replace: bool = False
                ) -> Optional[dict[str, torch.Tensor]]:
    """The head's tensors at `path` when it was trained with `settings` on weights `digest`; None
    when there is none (or replace). ConfigError naming the file and the differing keys (or
    model.pretrained, for other weights) otherwise."""
    from tgmae.evaluate.multiview import not_replaced, setting_diffs
    from tgmae.weights.files import read_safetensors

    if replace or not path.is_file():
        return None
    state, meta = read_safetensors(path)
    try:
        stored = json.loads(meta.get("settings", ""))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise not_replaced(path.parent, path.name, "of unrecorded settings")
    if meta.get("encoder") != digest:
        raise not_replaced(path.parent, path.name, f"aligned on other weights (model.pretrained's weights: digest "
                                                    f"{str(meta.get('encoder'))[:12]} -> {digest[:12]})")
    diffs = setting_diffs(stored, settings)
    if diffs:
        raise not_replaced(path.parent, path.name, "of other settings (" + "; ".join(diffs) + ")")
    return state


def save_head(path: Path, model: AlignedVideoText, settings: dict[str, Any], digest: str) -> Path:
    """The head's tensors with its settings and encoder digest as metadata, written atomically."""
    from safetensors.torch import save_file

    from tgmae.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, own_folder=True) as tmp:
        save_file(model.head_state(), str(tmp), metadata={"settings": json.dumps(settings, sort_keys=True),
                                                          "encoder": digest, "slices": str(model.slices)})
    return path


def fit_head(model: AlignedVideoText, pooled: torch.Tensor, caption_ids: Sequence[Sequence[int]],
             text: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
             progress: bool = False) -> list[float]:
    """Train `model`'s video head and text map in place; pooled [N, slices * D] (row i: video i),
    caption_ids[i]: the caption rows of `text` [Nc, Dt] that describe video i. -> the step losses.
    Batch order and caption draws follow `seed` (the init is `build_aligned`'s)."""
    from tgmae.models.infonce import InfoNCE
    from tgmae.train.optim import param_groups

    n = pooled.shape[0]
    if n < batch_size:
        raise ConfigError(f"eval.retrieval_align_batch_size={batch_size}: more than the {n} training videos")
    model.to(pooled.device).train()
    gen = torch.Generator().manual_seed(seed)
    nce = InfoNCE(ALIGN_TEMPERATURE).train(False)  # one process: no gathering
    params = [(f"video_head.{k}", p) for k, p in model.video_head.named_parameters()]
    params += [(f"text_proj.{k}", p) for k, p in model.text_proj.named_parameters()]
    opt = torch.optim.AdamW(param_groups(params, ALIGN_WEIGHT_DECAY), lr=lr)
    steps = n // batch_size
    bar = _bar(progress, epochs * steps)
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(steps):
            rows = order[s * batch_size:(s + 1) * batch_size].tolist()
            cid = torch.tensor([caption_ids[i][int(torch.randint(len(caption_ids[i]), (1,), generator=gen))]
                                for i in rows])
            loss = nce(model.embed_pooled(pooled[rows]), model.embed_text(text[cid].to(pooled.device)), cid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    return losses


def build_aligned(encoder: nn.Module, text_dim: int, seed: int) -> AlignedVideoText:
    """A fresh `AlignedVideoText` on `encoder` (slices: its grid's time extent T'), its head drawn
    from `seed` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlignedVideoText(encoder, int(encoder.arch.grid[0]), text_dim)


def _bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", desc="aligning", dynamic_ncols=True)


def aligned_model(cfg, device: torch.device, progress: bool = True,
                  given: Optional[Collection[str]] = None) -> AlignedVideoText:
    """`cfg.model.pretrained`'s frozen encoder with a head aligned on the training videos (module
    doc), read from `<train.output_dir>/aligned_head.safetensors` when it holds this head, else
    trained and written there. Works for any checkpoint with an encoder (no pretraining head needed).
    ConfigError naming the key for a missing captions.file / text model (CaptionStoreError for a
    video without captions); refusals of other settings or weights as `stored_head`. given: the
    dotted keys the user set, the model keys among the others then the encoder's
    (`tgmae.evaluate.probe.frozen_probe_encoder`).
    The store is checked against the training videos at set-up, before the head is read or trained,
    as pretraining checks it (`data.dataset.check_videos_known`: a caption for each, of its file,
    frames and, for a store made from annotations, its text and class now; re-trial 32A S3: a stale
    `--oracle` store trained the head and recalls were reported)."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.data.dataset import build_dataset, check_videos_known
    from tgmae.data.fileid import videos_fingerprint
    from tgmae.distributed import rank_world
    from tgmae.evaluate.probe import frozen_probe_encoder
    from tgmae.weights.checkpoint import IGNORE_CONFIG
    from tgmae.weights.sources import tensors_digest

    if not cfg.captions.file or not cfg.captions.target_model:
        raise ConfigError("eval.retrieval_align_epochs > 0 trains on the training captions: set captions.file and "
                          "captions.text_model (or captions.clip_model)")
    encoder, digest = frozen_probe_encoder(cfg, device, given)
    provider = CaptionProvider.from_config(cfg.captions, device=str(device))
    data = build_dataset(cfg.data, "train", train=False, seed=cfg.train.seed)
    check_videos_known(data.records, provider, None, getattr(data, "class_names", None) or ())
    # what the paths in align_settings do not say: the files there now and the texts as embedded now
    # (captions edited, videos or the text model replaced in place: another head)
    path = Path(cfg.train.output_dir) / HEAD_FILE
    settings = {**align_settings(cfg), "training videos": videos_fingerprint([r.path for r in data.records]),
                "caption embeddings": tensors_digest({"embeddings": provider.embeddings})}
    state = stored_head(path, settings, digest, replace=cfg.checkpoint.resume == IGNORE_CONFIG)
    model = build_aligned(encoder, int(provider.embeddings.shape[1]), cfg.train.seed).to(device)
    if state is not None:
        log.info("aligned head from %s", path)
        model.load_state_dict({**state, **{f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}})
        return model.eval()
    pooled, video_ids = train_pooled(cfg, data, encoder, digest, device, progress)
    ids = [provider.caption_ids(v) for v in video_ids]  # one per video: `check_videos_known` refused any without
    losses = fit_head(model, pooled.to(device), ids, provider.embeddings.float(),
                      epochs=cfg.eval.retrieval_align_epochs, batch_size=cfg.eval.retrieval_align_batch_size,
                      lr=cfg.eval.retrieval_align_lr, seed=cfg.train.seed, progress=progress and cfg.log.progress)
    last = losses[-(len(losses) // cfg.eval.retrieval_align_epochs):]
    log.info("aligned head: %d steps, InfoNCE %.3f over the last epoch", len(losses), sum(last) / len(last))
    if rank_world()[0] == 0:
        save_head(path, model, settings, digest)
    return model.eval()


def train_pooled(cfg, data, encoder: nn.Module, digest: str, device: torch.device,
                 progress: bool) -> tuple[torch.Tensor, list[str]]:
    """([N, T' * D] temporally pooled tokens of the readable videos' centre clips of `data` (the
    training split, train=False), their video ids): the token grids through `tgmae.evaluate.features`'
    cache (the attentive probe's key, under eval.feature_cache or <train.output_dir>/features),
    unreadable videos left out."""
    from tgmae.evaluate.features import cached_features, feature_cache_key
    from tgmae.evaluate.probe import scored_video_ids
    from tgmae.train.precision import resolve_precision

    precision = resolve_precision(cfg.train.precision, device)
    key, inputs = feature_cache_key(digest, cfg.data, "train", "tokens", videos=[r.path for r in data.records],
                                    classes=list(getattr(data, "class_names", None) or []), precision=precision)
    root = Path(cfg.eval.feature_cache or Path(cfg.train.output_dir) / "features")
    skipped: list = []
    tokens, _ = cached_features(encoder, data, root / f"train-{key}.safetensors", inputs, strict=cfg.eval.strict,
                                unreadable=skipped, batch_size=cfg.train.batch_size, precision=precision,
                                num_workers=cfg.data.num_workers, device=device,
                                progress=progress and cfg.log.progress, tokens=True)
    return temporal_pool(tokens, int(encoder.arch.grid[0])), scored_video_ids(data, skipped)
