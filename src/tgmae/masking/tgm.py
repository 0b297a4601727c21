"""Text-guided masking (TGM, paper section 3.3): mask the patches most (or least) similar to the
sample's caption in CLIP space, k = ratio x patches per temporal slice.

- `CachedTGMMask` (training default): maps precomputed by `tgmae masks`, resampled into the
  augmented token grid (`tgmae.masking.resample`); no CLIP call. It masks with the map of the
  caption drawn for the sample (`caption="drawn"`: found by its text, `ctx.caption`, else by its
  embedding among the cached ones) or with the video's mean caption (`caption="mean"`).
- `OnlineTGMMask` / `BatchTGMMask`: CLIP on the augmented frames, per sample in the DataLoader
  worker / per batch in the main process; `ctx.text_embedding` must come from the same CLIP.
A temporal slice (tubelet) is represented by its first frame or by the mean of its frames' maps.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tgmae.captions.store import read_store
from tgmae.config import IMAGENET_MEAN, IMAGENET_STD
from tgmae.mask_contract import MaskContext, masked_per_slice
from tgmae.masking.cache import CacheEntry, CacheMismatchError, SimilarityCache
from tgmae.clip.features import ClipPatchScorer, frames_to_unit
from tgmae.masking.resample import resample_to_tokens
from tgmae.masking.select import ScoredMask, select_batch_per_slice

MATCH_MIN_COSINE = 0.99  # a sample's caption embedding must be this close to a cached caption's


class CachedTGMMask(ScoredMask):
    """TGM from an offline similarity cache: resample + top-k per slice, no CLIP call.
    cache: a `SimilarityCache` or its directory; the rest as validated by `MaskingConfig`."""

    def __init__(
        self, cache: SimilarityCache | str, ratio: float = 0.6, select: str = "top",
        tubelet_frame: str = "first", caption: str = "drawn",
    ):
        self.cache = cache if isinstance(cache, SimilarityCache) else SimilarityCache(cache)
        self.ratio, self.select = ratio, select
        self.tubelet_frame, self.caption = tubelet_frame, caption
        self.captions_file = ""  # the run's captions file: `check_videos` compares the maps' captions

    def check_videos(self, video_ids: list[str], paths: Optional[dict[str, str]] = None) -> None:
        """At set-up (`tgmae.data.dataset`): the cache holds maps for every video, made from the
        files at `paths` ({id: path}) and each from its captions in the run's captions file, compared
        per video (`SimilarityCache.check_videos`)."""
        captions = None
        if self.captions_file:
            captions = {r.video_id: list(r.captions) for r in read_store(self.captions_file).records}
        self.cache.check_videos(list(video_ids), captions, paths, captions_file=self.captions_file)

    def caption_maps(self, entry: CacheEntry, ctx: MaskContext) -> np.ndarray:
        """The [F, gh, gw] maps of the caption this sample uses (see the module docstring)."""
        sim = entry.sim.numpy()
        if self.caption == "mean":
            return sim[0] if sim.shape[0] == 1 else entry.mean_sim
        text = getattr(ctx, "caption", None)  # the drawn caption's text, where the pipeline gives it
        if sim.shape[0] == 1 and not isinstance(text, str):
            return sim[0]  # the video's one caption: no embedding to match
        if isinstance(text, str):  # one cached caption too: the map of another caption is not this one's
            if text.strip() in entry.captions:
                return sim[entry.captions.index(text.strip())]
            raise CacheMismatchError(
                f"video {ctx.video_id!r}: the drawn caption {text!r} is not among the {sim.shape[0]} "
                f"captions cached for it; rebuild the cache ({self.cache.root}) from this run's captions"
            )
        if ctx.text_embedding is None:
            raise ValueError(
                f"text-guided masking needs the caption drawn for video {ctx.video_id!r}, but the "
                "sample has no text embedding (no caption?); set masking.caption=mean to use the "
                "mean of the cached captions instead"
            )
        emb = ctx.text_embedding.detach().reshape(-1).float().cpu().numpy()
        if emb.size != entry.text.shape[1]:
            raise ValueError(
                f"video {ctx.video_id!r}: the sample's caption embedding has {emb.size} dims, the "
                f"cache's CLIP ({self.cache.manifest.clip_model}) has {entry.text.shape[1]}: embed the "
                "captions with the cache's CLIP, or set masking.caption=mean"
            )
        cos = entry.text.numpy() @ emb / max(float(np.linalg.norm(emb)), 1e-12)  # cached rows are unit
        best = int(cos.argmax())
        if float(cos[best]) < MATCH_MIN_COSINE:
            raise ValueError(
                f"video {ctx.video_id!r}: the sample's caption embedding matches none of the "
                f"{sim.shape[0]} cached captions (best cosine {float(cos[best]):.3f}); the cache was "
                f"built from other captions or another CLIP (cache: {self.cache.manifest.caption_source}, "
                f"{self.cache.manifest.clip_model}); rebuild it or set masking.caption=mean"
            )
        return sim[best]

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        """[T', H', W'] cosine similarity of each token of the augmented clip."""
        if ctx.video_id is None or ctx.frame_indices is None:
            raise ValueError("cached text-guided masking needs ctx.video_id and ctx.frame_indices")
        if ctx.crop is None:
            raise ValueError(
                f"cached text-guided masking needs the clip's crop parameters (ctx.crop) for video {ctx.video_id!r}")
        entry = self.cache.entry(ctx.video_id)
        maps = self.caption_maps(entry, ctx)
        return resample_to_tokens(maps, entry.frames, ctx.frame_indices, ctx.crop, ctx.grid, self.tubelet_frame)

    def __repr__(self) -> str:
        return (f"CachedTGMMask(ratio={self.ratio}, select={self.select!r}, tubelet_frame="
                f"{self.tubelet_frame!r}, caption={self.caption!r}, cache={str(self.cache.root)!r})")


def _slice_scores(
    scorer: ClipPatchScorer, frames01: torch.Tensor, text: torch.Tensor, grid: tuple[int, int, int],
    tubelet_frame: str, batch: int = 1,
) -> torch.Tensor:
    """frames01 [B*T, 3, H, W] in [0, 1], text [B, D] -> [B, T', H', W'] cosine per token."""
    t_tok, h, w = grid
    t = frames01.shape[0] // batch
    if t % t_tok:
        raise ValueError(f"{t} frames do not split into {t_tok} temporal token slices")
    tub = t // t_tok
    frames = frames01.reshape(batch, t, *frames01.shape[1:])
    if tubelet_frame == "first":
        frames = frames[:, ::tub]
    per = frames.shape[1]
    feats = scorer.features(frames.reshape(batch * per, *frames.shape[2:]), (h, w))  # [B*per, h, w, D]
    feats = feats.reshape(batch, per, h, w, -1)
    sims = torch.einsum("bphwd,bd->bphw", feats, F.normalize(text.to(feats.device).float(), dim=-1))
    if tubelet_frame == "mean":
        sims = sims.reshape(batch, t_tok, tub, h, w).mean(dim=2)
    return sims


class _ClipInTheLoop:
    """Shared settings of the online TGM generators: a CLIP scorer, ratio, top/bottom, which
    frame stands for a tubelet, and the data normalization to undo before CLIP sees frames.
    ratio, select, tubelet_frame: as validated by `MaskingConfig` (not checked again)."""

    masked_count = staticmethod(masked_per_slice)  # tgmae.mask_contract.MASKED_COUNT["tgm"]

    def __init__(
        self, scorer: ClipPatchScorer, ratio: float = 0.6, select: str = "top",
        tubelet_frame: str = "first", data_mean: Sequence[float] = IMAGENET_MEAN,
        data_std: Sequence[float] = IMAGENET_STD,
    ):
        self.scorer, self.ratio, self.select, self.tubelet_frame = scorer, ratio, select, tubelet_frame
        self.data_mean, self.data_std = tuple(data_mean), tuple(data_std)


class OnlineTGMMask(_ClipInTheLoop, ScoredMask):
    """TGM with CLIP in the loop, per sample (on the worker's device; slow on CPU in faithful mode),
    on `ctx.frames` (data-normalized with `data_mean`/`data_std`) and `ctx.text_embedding`."""

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        if ctx.frames is None:
            raise ValueError("online text-guided masking needs the clip's frames (ctx.frames)")
        text = _require_text(ctx.text_embedding, self.scorer, ctx.video_id)
        frames01 = frames_to_unit(ctx.frames, self.data_mean, self.data_std)
        return _slice_scores(self.scorer, frames01, text[None], ctx.grid, self.tubelet_frame)[0].cpu()

    def __repr__(self) -> str:
        return (f"OnlineTGMMask(mode={self.scorer.mode!r}, ratio={self.ratio}, select={self.select!r}, "
                f"tubelet_frame={self.tubelet_frame!r})")


class BatchTGMMask(_ClipInTheLoop):
    """TGM with CLIP in the loop on a whole batch (main process, GPU): a `BatchMaskGenerator`."""

    batched = True

    @torch.no_grad()
    def __call__(
        self, video: torch.Tensor, text_embedding: Optional[torch.Tensor],
        grid: tuple[int, int, int], generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """video [B, C, T, H, W], text_embedding [B, D] -> [B, N] bool on video's device."""
        if text_embedding is None:
            raise ValueError("batch text-guided masking needs the batch's caption embeddings [B, D]")
        b = video.shape[0]
        if text_embedding.shape[0] != b:
            raise ValueError(f"{text_embedding.shape[0]} caption embeddings for a batch of {b}")
        _require_text(text_embedding[0], self.scorer, None)
        frames01 = frames_to_unit(video, self.data_mean, self.data_std)
        sims = _slice_scores(self.scorer, frames01, text_embedding, grid, self.tubelet_frame, batch=b)
        t, h, w = grid
        return select_batch_per_slice(sims.reshape(b, t, h * w), self.ratio, self.select, generator).to(video.device)

    def __repr__(self) -> str:
        return f"BatchTGMMask(mode={self.scorer.mode!r}, ratio={self.ratio}, select={self.select!r})"


def _require_text(emb: Optional[torch.Tensor], scorer: ClipPatchScorer, video_id: Optional[str]) -> torch.Tensor:
    if emb is None:
        raise ValueError(
            f"text-guided masking needs the caption drawn for video {video_id!r}, but the sample "
            "has no text embedding (no caption for this video?)"
        )
    emb = emb.reshape(-1).float()
    if emb.numel() != scorer.clip.embed_dim:
        raise ValueError(
            f"caption embedding has {emb.numel()} dims, the masking CLIP ({scorer.clip.name}) has "
            f"{scorer.clip.embed_dim}: embed captions with the same CLIP as masking.clip_model"
        )
    return emb
