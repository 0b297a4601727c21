"""Figure-1-style grids of masking algorithms on one clip (`tgmae visualize masks`).

Rows: the input frames, then random, tube, MGM, TGM top-k, TGM bottom-k with masked patches
greyed, visible ones outlined and `masked K/M` under each cell; columns: the first frame of evenly
spaced token slices. On the synthetic set the acting object's outline is drawn too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tgmae.locks import refuse_inside_run

log = logging.getLogger(__name__)

ROW_TITLES = {"random": "random", "tube": "tube", "mgm": "MGM (motion)", "tgm_top": "TGM top-k",
              "tgm_bottom": "TGM bottom-k"}


def overlay(frame: np.ndarray, mask: np.ndarray, patch: int, grey: int = 128, alpha: float = 0.85,
            border: int = 255) -> np.ndarray:
    """frame uint8 [H, W, 3], mask bool [H/p, W/p] (True = masked) -> frame with masked patches
    greyed out and a thin `border` outline around each visible patch, so a visible patch of a
    grey frame (a fade, an empty first frame) is never taken for a masked one."""
    up = np.kron(mask.astype(np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)
    out = frame.astype(np.float32)
    out[up] = (1 - alpha) * out[up] + alpha * grey
    edge = np.zeros((patch, patch), bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    outline = np.kron((~mask.astype(bool)).astype(np.uint8), edge.astype(np.uint8)).astype(bool)
    out[outline] = border
    return out.clip(0, 255).astype(np.uint8)


def masked_label(mask: torch.Tensor) -> str:
    """The count a grid cell states under its slice: `masked K/M` of a [H', W'] mask."""
    return f"masked {int(mask.sum())}/{mask.numel()}"


def render_mask_grid(
    frames: np.ndarray, masks: dict[str, torch.Tensor], out: str | Path, *, tubelet: int,
    columns: int = 4, ratios: Optional[dict[str, float]] = None, object_cover: Optional[torch.Tensor] = None,
    title: str = "", frame_numbers: Optional[Sequence[int]] = None,
) -> Path:
    """frames uint8 [T, H, W, 3] (the model's input clip), masks {name: [T', H', W'] bool}.
    Writes a PNG with rows = input + algorithms, columns = up to `columns` temporal slices.
    frame_numbers [T]: the source frame of each clip frame; columns are titled with them, and a
    slice showing the same source frame as an earlier one (a clip longer than its video repeats
    frames) gets no column of its own."""
    from tgmae.viz.plotting import pyplot, save_figure

    plt = pyplot()
    t_tok = next(iter(masks.values())).shape[0]
    h, w = frames.shape[1:3]
    patch = h // next(iter(masks.values())).shape[1]
    if frame_numbers is None:
        source = [s * tubelet for s in range(t_tok)]
        candidates = list(range(t_tok))
    else:
        source = [int(frame_numbers[s * tubelet]) for s in range(t_tok)]
        candidates = [s for s in range(t_tok) if source[s] not in source[:s]]  # each source frame once
    picks = np.linspace(0, len(candidates) - 1, min(columns, len(candidates))).round().astype(int)
    slices = sorted({candidates[i] for i in picks})
    rows = ["input", *masks]
    fig, axes = plt.subplots(len(rows), len(slices), figsize=(2.0 * len(slices), 2.0 * len(rows) + 0.4), squeeze=False)
    for r, name in enumerate(rows):
        for c, s in enumerate(slices):
            ax = axes[r, c]
            frame = frames[s * tubelet]
            img = frame if name == "input" else overlay(frame, masks[name][s].numpy(), patch)
            ax.imshow(img)
            if name != "input":
                ax.set_xlabel(masked_label(masks[name][s]), fontsize=7)
            if object_cover is not None:
                ax.contour(np.kron(object_cover[s].numpy(), np.ones((patch, patch))), levels=[0.5],
                           colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice {s} (frame {source[s]})", fontsize=8)
            if c == 0:
                label = ROW_TITLES.get(name, name)
                if ratios and name in ratios:
                    label += f"\nratio {ratios[name]:.2f}"
                ax.set_ylabel(label, fontsize=9)
    return save_figure(fig, out, title)


def _draw(gens: dict, ctx, seed: int, ratios: dict[str, float], out: str | Path, columns: int, title: str,
          object_cover: Optional[torch.Tensor] = None) -> Path:
    """Mask `ctx` (frames [C, T, H, W] in [0, 1]) with every generator and render the grid."""
    masks = {name: gen(ctx, torch.Generator().manual_seed(seed)).view(ctx.grid) for name, gen in gens.items()}
    frames = (ctx.frames.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()
    return render_mask_grid(frames, masks, out, tubelet=2, columns=columns, ratios={k: ratios[k] for k in masks},
                            object_cover=object_cover, title=title, frame_numbers=ctx.frame_indices.tolist())


def synthetic_figure(root: str | Path, out: str | Path, video_id: Optional[str], clip_model: Optional[str],
                     ratio: Optional[float], mode: str, image_size: int, num_frames: int, frame_stride: int,
                     columns: int, seed: int, rebuild: bool = False, patch_size: int = 16) -> Path:
    """Grid for one video of a synthetic set, with the ground-truth object outline. RunFolderError
    when `out` lies inside a run folder (`locks.refuse_inside_run`)."""
    from tgmae.captions.store import read_store
    from tgmae.clip.data import read_split_ids
    from tgmae.masking.quality import (PAPER_RATIOS, cache_way_out, clip_context, ensure_cache, load_eval_clip,
                                       make_generators)

    refuse_inside_run(out, "--out")
    root = Path(root)
    stored = read_store(root / "captions.jsonl").by_video()
    ids = read_split_ids(root, "val") or read_split_ids(root, "train")
    vid = video_id or (ids[0] if ids else "")
    if vid not in stored:
        from tgmae.errors import SettingsError

        known = ", ".join(sorted(stored)[:5]) + (" ..." if len(stored) > 5 else "")
        raise SettingsError(f"--video-id {vid!r}: not a video of {root / 'captions.jsonl'} ({known or 'none'})"
                            if video_id else f"--root {root}: no val or train video with captions")
    caps = stored[vid].captions
    grid = (num_frames // 2, image_size // patch_size, image_size // patch_size)
    ratios = {a: ratio for a in PAPER_RATIOS} if ratio else dict(PAPER_RATIOS)
    cache_dir = None
    if clip_model:
        cache_dir = str(root / "mask_cache" / f"{Path(clip_model).name}-{mode}")
        ensure_cache(root, [vid], clip_model, mode, cache_dir, image_size, patch_size, 2, progress=False,
                     rebuild=rebuild, way_out=cache_way_out(cache_dir, elsewhere="", image_size=image_size,
                                                            patch_size=patch_size))
    gens = make_generators(ratios, cache_dir)
    clip = load_eval_clip(root, vid, str(root / "videos" / f"{vid}.mp4"), caps, grid, num_frames,
                          frame_stride, image_size, False, torch.Generator().manual_seed(seed))
    text = gens["tgm_top"].cache.entry(vid).text[0] if "tgm_top" in gens else None
    return _draw(gens, clip_context(clip, grid, text), seed, ratios, out, columns,
                 f"{vid}: \"{caps[0]}\" (red: object tokens, ground truth)", clip.object_cover)


def video_figure(video: str, caption: str, out: str | Path, clip_model: Optional[str], ratio: Optional[float],
                 mode: str, image_size: int, num_frames: int, frame_stride: int, columns: int, seed: int,
                 patch_size: int = 16) -> Path:
    """Grid for any video file: TGM online with the given CLIP and caption, MGM from its codec.
    RunFolderError when `out` lies inside a run folder (`locks.refuse_inside_run`)."""
    from tgmae.data.transforms import EvalTransform
    from tgmae.mask_contract import MaskContext
    from tgmae.masking.motion import stack_codec_motion
    from tgmae.masking.quality import PAPER_RATIOS, make_generators

    refuse_inside_run(out, "--out")
    grid = (num_frames // 2, image_size // patch_size, image_size // patch_size)
    ratios = {a: ratio for a in PAPER_RATIOS} if ratio else dict(PAPER_RATIOS)
    frames, mvs, fi = _read_video(video, num_frames, frame_stride)
    clip, crop = EvalTransform(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(frames)
    gens = make_generators(ratios, None)
    if mvs is None:  # a frame folder: no codec, so no motion for MGM; the other rows stand on the frames
        log.warning("--video %s: a frame folder carries no codec motion vectors: the MGM row is left out", video)
        gens.pop("mgm", None)
    text = None
    if clip_model:
        from tgmae.clip.features import ClipPatchScorer, embed_texts, load_clip
        from tgmae.masking.tgm import OnlineTGMMask

        bundle = load_clip(clip_model)
        text = embed_texts(bundle, [caption])[0]
        scorer = ClipPatchScorer(bundle, mode)
        for name, select in (("tgm_top", "top"), ("tgm_bottom", "bottom")):
            gens[name] = OnlineTGMMask(scorer, ratios[name], select, data_mean=(0, 0, 0), data_std=(1, 1, 1))
    ctx = MaskContext(grid=grid, frames=clip, frame_indices=fi, crop=crop, video_id=Path(video).stem,
                      text_embedding=text, motion=None if mvs is None else stack_codec_motion(mvs))
    return _draw(gens, ctx, seed, ratios, out, columns, f"{Path(video).name}: \"{caption}\"")


def _read_video(video: str, num_frames: int, frame_stride: int):
    """(frames, motion vectors (None for a frame folder: no codec), source frame indices [T]) of the
    first clip of `video`; VideoLoadError naming `--video` when it cannot be read."""
    import av

    from tgmae.data.dataset import VideoLoadError
    from tgmae.data.frame_index import error_text
    from tgmae.data.sampling import clip_indices
    from tgmae.data.video import VideoError, VideoReader

    if not Path(video).exists():
        raise FileNotFoundError(2, "no such file or directory", str(video))
    try:
        with VideoReader(video) as reader:
            fi = clip_indices(0, reader.info.num_frames, num_frames, frame_stride, "dense", train=False)
            frames, mvs = reader.read(fi.numpy(), with_motion=True) if not Path(video).is_dir() else (
                reader.read(fi.numpy()), None)
    except (VideoError, OSError, EOFError, av.FFmpegError) as e:
        raise VideoLoadError(f"--video {video}: cannot be read ({error_text(video, e)})") from None
    return frames, mvs, fi
