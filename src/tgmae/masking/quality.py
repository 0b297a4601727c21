"""How well each masking algorithm hits the acting object, on the synthetic set (`tgmae eval-masks`).

One clip per video goes through the real data pipeline (sampling, crop/flip, codec motion) and
each algorithm masks it: random, tube, MGM and, with a CLIP, TGM top-k and bottom-k (from a
similarity cache built on the fly). A token is "on the object" when at least `min_cover` of its
pixels (tubelet mean) belong to the acting object. Summed over videos: precision = masked object
tokens / masked tokens, recall = masked object tokens / object tokens. Precision is capped by
the ratio (object fraction f, ratio r: at most min(1, f / r)), so all algorithms share one ratio
unless `paper_ratios` (random/tube 0.9, MGM 0.75, TGM 0.6). A clip without a token on the object
(too coarse a token grid for its object, or too high a `min_cover`) has no recall to give: it is
left out of every sum and counted; a split with no such clip is refused (NothingToMeasureError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tgmae.config import CROP_SCALES
from tgmae.errors import SettingsError, count
from tgmae.mask_contract import CropParams, MaskContext
from tgmae.masking.mgm import MotionGuidedMask
from tgmae.masking.motion import stack_codec_motion
from tgmae.masking.resample import sample_maps
from tgmae.masking.simple import RandomMask, TubeMask

def is_quality_results(path: str | Path) -> bool:
    """Whether `path` holds results of `tgmae eval-masks --out` ({algorithm: {precision, recall,
    ratio}}, at least one algorithm): an earlier result file, which a rerun replaces."""
    import json

    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(res, dict) and bool(res)
            and all(isinstance(r, dict) and {"precision", "recall", "ratio"} <= set(r) for r in res.values()))


class NothingToMeasureError(SettingsError):
    """eval-masks has nothing to measure at the settings given: the split lists no video, or no
    clip has a token on the object; the message names the flags to change."""


PAPER_RATIOS = {"random": 0.9, "tube": 0.9, "mgm": 0.75, "tgm_top": 0.6, "tgm_bottom": 0.6}


@dataclass
class MaskQuality:
    """results {algorithm: {precision, recall, ratio}} over the `videos` measured (precision None
    where nothing was masked, recall None where no token is on the object: undefined, never 0);
    object_fraction: object tokens / tokens; left_out: ids of the split's videos whose clip has no
    token on the object, left out of every sum."""

    results: dict[str, dict[str, Optional[float]]]
    object_fraction: float
    videos: int
    left_out: list[str] = field(default_factory=list)


@dataclass
class EvalClip:
    """One clip of a synthetic video, as the training pipeline would give it."""

    video_id: str
    frames: torch.Tensor  # float [C, T, H, W] in [0, 1] (the augmented clip)
    frame_indices: torch.Tensor  # [T]
    crop: CropParams
    motion: Optional[torch.Tensor]  # [T, Hb, Wb, 2] codec motion of the source frames
    object_cover: torch.Tensor  # [T', H', W'] object pixel fraction per token
    captions: list[str]


def object_coverage(masks: torch.Tensor, crop: CropParams, grid: tuple[int, int, int], sub: int = 4) -> torch.Tensor:
    """Source-frame object masks [T, H, W] -> [T', H', W'] fraction of each token's pixels on the
    object (sub x sub samples per token through the crop/flip, tubelet mean)."""
    t_tok, h, w = grid
    cov = sample_maps(masks.float(), crop, (h * sub, w * sub))
    cov = F.avg_pool2d(cov[:, None], sub)[:, 0]  # [T, h, w]
    return cov.reshape(t_tok, -1, h, w).mean(dim=1)


def load_eval_clip(
    root: Path, video_id: str, path: str, captions: list[str], grid: tuple[int, int, int],
    num_frames: int, frame_stride: int, image_size: int, augment: bool, g: torch.Generator,
) -> EvalClip:
    from tgmae.data.sampling import clip_indices
    from tgmae.data.transforms import EvalTransform, PretrainTransform
    from tgmae.data.video import VideoReader

    with VideoReader(path) as reader:
        n = reader.info.num_frames
        fi = clip_indices(0, n, num_frames, frame_stride, "dense", train=augment, generator=g)
        frames, mvs = reader.read(fi.numpy(), with_motion=True)
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # keep [0, 1] pixels: no data normalization here
    if augment:
        video, crop = PretrainTransform(image_size, CROP_SCALES, *unit, flip=True)(frames, g)
    else:
        video, crop = EvalTransform(image_size, *unit)(frames)
    with np.load(root / "masks" / f"{video_id}.npz") as z:
        masks = torch.from_numpy(z["masks"][fi.numpy()])
    return EvalClip(video_id, video, fi, crop, stack_codec_motion(mvs), object_coverage(masks, crop, grid), captions)


def clip_context(clip: EvalClip, grid: tuple[int, int, int], text: Optional[torch.Tensor]) -> MaskContext:
    return MaskContext(grid=grid, frames=clip.frames, frame_indices=clip.frame_indices, crop=clip.crop,
                       video_id=clip.video_id, text_embedding=text, motion=clip.motion)


def make_generators(ratios: dict[str, float], cache_dir: Optional[str]) -> dict[str, Callable]:
    gens: dict[str, Callable] = {
        "random": RandomMask(ratios["random"]),
        "tube": TubeMask(ratios["tube"]),
        "mgm": MotionGuidedMask(ratios["mgm"]),
    }
    if cache_dir:
        from tgmae.masking.tgm import CachedTGMMask

        for select in ("top", "bottom"):
            gens[f"tgm_{select}"] = CachedTGMMask(cache_dir, ratio=ratios[f"tgm_{select}"], select=select,
                                                  tubelet_frame="first", caption="drawn")
    return gens


def evaluate_masks(
    root: str | Path, clip_model: Optional[str] = None, *, ratio: float = 0.3, paper_ratios: bool = False,
    split: str = "val", num_frames: int = 16, frame_stride: int = 2, image_size: int = 224,
    patch_size: int = 16, tubelet: int = 2, mode: str = "faithful", cache_dir: Optional[str] = None,
    augment: bool = False, min_cover: float = 0.5, max_videos: Optional[int] = None, seed: int = 0,
    cache_stride: int = 2, progress: bool = True, rebuild: bool = False,
) -> MaskQuality:
    """Precision / recall / ratio per algorithm over the split's clips with a token on the object
    (module docstring). rebuild: empty the similarity cache first (one built differently is
    refused otherwise). NothingToMeasureError, before CLIP is loaded, when the split lists no video
    or no clip has a token on the object."""
    from tqdm import tqdm

    from tgmae.captions.store import read_store
    from tgmae.clip.data import read_split_ids

    root = Path(root)
    ids = read_split_ids(root, split)[: max_videos or None]
    if not ids:
        raise NothingToMeasureError(f"{root / f'{split}.csv'} lists no video: nothing to measure; give --split a "
                                    "split with videos")
    caps = {r.video_id: r.captions for r in read_store(root / "captions.jsonl").records}
    ratios = dict(PAPER_RATIOS) if paper_ratios else dict.fromkeys(PAPER_RATIOS, ratio)
    grid = (num_frames // tubelet, image_size // patch_size, image_size // patch_size)

    def load(i: int) -> tuple[EvalClip, torch.Generator]:  # alike in both passes: the same draws
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        return load_eval_clip(root, ids[i], str(root / "videos" / f"{ids[i]}.mp4"), caps[ids[i]], grid,
                              num_frames, frame_stride, image_size, augment, g), g

    # a first pass, before the cache is built for them: a refusal then leaves no cache made at
    # the settings it asks to change
    keep = [i for i in tqdm(range(len(ids)), desc="eval-masks objects", unit="video", disable=not progress)
            if bool((load(i)[0].object_cover >= min_cover).any())]
    if not keep:
        raise no_object_error(root, split, len(ids), min_cover, image_size, patch_size)
    cache_dir = similarity_cache_dir(root, clip_model, mode, cache_dir)
    if clip_model:
        ensure_cache(root, [ids[i] for i in keep], clip_model, mode, cache_dir, image_size, patch_size, cache_stride,
                     progress, rebuild, way_out=cache_way_out(cache_dir, mode=mode, frame_stride=cache_stride,
                                                             image_size=image_size, patch_size=patch_size),
                     setting=EVAL_SETTING)
    gens = make_generators(ratios, cache_dir)
    totals = {name: np.zeros(3) for name in gens}  # hit, masked, object
    for i in tqdm(keep, desc="eval-masks", unit="video", disable=not progress):
        clip, g = load(i)
        obj = (clip.object_cover >= min_cover).reshape(-1)
        text = None
        if "tgm_top" in gens:  # the caption drawn for this sample, embedded by the cache's CLIP
            entry = gens["tgm_top"].cache.entry(ids[i])
            text = entry.text[int(torch.randint(entry.text.shape[0], (1,), generator=g))]
        ctx = clip_context(clip, grid, text)
        for name, gen in gens.items():
            mask = gen(ctx, torch.Generator().manual_seed(seed * 7919 + i))
            totals[name] += [float((mask & obj).sum()), float(mask.sum()), float(obj.sum())]
    n_tok = float(np.prod(grid)) * len(keep)
    out = {name: {"precision": hit / masked if masked else None, "recall": hit / objects if objects else None,
                  "ratio": masked / n_tok} for name, (hit, masked, objects) in totals.items()}
    kept = set(keep)
    left_out = [vid for i, vid in enumerate(ids) if i not in kept]
    return MaskQuality(out, float(totals["random"][2] / n_tok), len(keep), left_out)


def similarity_cache_dir(root: str | Path, clip_model: Optional[str], mode: str,
                         cache_dir: Optional[str]) -> Optional[str]:
    """The similarity cache folder eval-masks reads (and, with a CLIP, writes): `cache_dir`, else
    with a CLIP ROOT/mask_cache/<CLIP folder name>-<mode>; None without either (no TGM rows)."""
    if cache_dir or not clip_model:
        return cache_dir
    return str(Path(root) / "mask_cache" / f"{Path(clip_model).name}-{mode}")


def no_object_error(root: Path, split: str, videos: int, min_cover: float, image_size: int,
                    patch_size: int) -> NothingToMeasureError:
    """The refusal of a split none of whose `videos` clips has a token on the object, naming the
    flags that give one: a lower --min-cover, or a finer token grid."""
    side = image_size // patch_size
    return NothingToMeasureError(
        f"{root} ({split}): no clip of its {count(videos, 'video')} has a token with {min_cover:g} of its pixels "
        f"on the object (--min-cover {min_cover:g}) at {side} x {side} tokens a frame (--image-size {image_size}, "
        f"--patch-size {patch_size}): no recall to measure; lower --min-cover, or give a frame more tokens "
        "(a larger --image-size or a smaller --patch-size)")


EVAL_SETTING = "similarity cache folder (eval-masks --cache)"  # what chose it, in eval-masks' refusals
# manifest field -> the eval-masks flag that sets it
EVAL_FLAGS = {"mode": "--mode", "frame_stride": "--cache-stride", "image_size": "--image-size",
              "patch_size": "--patch-size"}


def cache_way_out(cache_dir: str, elsewhere: str = "give --cache another folder", **requested) -> str:
    """A command's advice on a cache built differently, led by the flags that would match the cache
    at `cache_dir` (e.g. "rerun with --patch-size 8 (the cache's) to use it") when its manifest
    differs from `requested` (EVAL_FLAGS' fields: eval-masks' and visualize masks' flags alike).
    elsewhere: the command's way to another folder ("" for none). A missing or unreadable manifest:
    --rebuild and `elsewhere` alone (the build refuses or writes it)."""
    import json

    ways = ["with --rebuild to replace it"] + ([elsewhere] if elsewhere else [])
    try:
        have = json.loads((Path(cache_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        have = {}
    flags = [f"{flag} {have[key]}" for key, flag in EVAL_FLAGS.items()
             if key in requested and key in have and have[key] != requested[key]]
    if flags:
        ways.insert(0, f"with {' '.join(flags)} (the cache's) to use it")
    return "rerun " + ", or ".join(ways)


def ensure_cache(root: Path, ids: Sequence[str], clip_model: str, mode: str, cache_dir: str,
                 image_size: int, patch_size: int, frame_stride: int, progress: bool, rebuild: bool = False,
                 way_out: str = "rerun with --rebuild to replace it", setting: str = "similarity cache folder") -> None:
    """Build (or resume) the similarity cache of these videos; rebuild: empty it first. Holds the
    cache's lock throughout (`tgmae.locks`): another writer is refused, naming it. A cache built
    with other settings is refused (CacheMismatchError), ending with `way_out`: what the calling
    command offers (`cache_way_out`).
    `setting`: what chose `cache_dir`, named in the refusals of a folder in use, inside a run or
    not a cache (eval-masks: `EVAL_SETTING`), which come before CLIP is loaded."""
    from tgmae.locks import check_kind, hold, refuse_inside_run
    from tgmae.masking.cache import check_cache_folder, clear_cache, merge_parts
    from tgmae.clip.features import load_clip
    from tgmae.masking.precompute import PrecomputeOptions, precompute

    check_kind(cache_dir, setting, folder=True)
    refuse_inside_run(cache_dir, setting)
    check_cache_folder(cache_dir, setting)
    with hold(cache_dir, setting, folder=True):
        if rebuild:
            clear_cache(cache_dir, setting)
        clip = load_clip(clip_model)
        videos = [(v, str(root / "videos" / f"{v}.mp4")) for v in ids]
        opts = PrecomputeOptions(mode=mode, frame_stride=frame_stride, image_size=image_size, patch_size=patch_size)
        precompute(videos, str(root / "captions.jsonl"), clip, cache_dir, opts, progress=progress, way_out=way_out,
                   setting=setting)
        merge_parts(cache_dir)


def format_table(quality: MaskQuality) -> str:
    """The printout of `quality`: one row per algorithm, "-" for an undefined number (None)."""
    results, object_fraction = quality.results, quality.object_fraction
    lines = [f"{'algorithm':<12} {'ratio':>6} {'precision':>10} {'recall':>8} {'prec/random':>12} {'ceiling':>8}"]
    base = results.get("random", {}).get("precision") or 0.0

    def num(x: Optional[float], width: int, digits: int = 4) -> str:
        return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"

    for name, r in results.items():
        ceiling = min(1.0, object_fraction / max(r["ratio"], 1e-9))
        # random masking that hit no object token (too few videos, or none): no ratio to give
        ratio = num(r["precision"] / base if base > 0 and r["precision"] is not None else None, 12, 2)
        lines.append(f"{name:<12} {r['ratio']:>6.3f} {num(r['precision'], 10)} {num(r['recall'], 8)} "
                     f"{ratio} {ceiling:>8.4f}")
    lines.append(f"(object tokens: {object_fraction:.4f} of all; ceiling = best possible precision at that ratio"
                 + ("; prec/random: - as random masking hit no object token" if base <= 0 else "") + ")")
    return "\n".join(lines)
