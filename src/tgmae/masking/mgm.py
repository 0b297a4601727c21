"""Motion-guided masking (MGM, Fan et al., ICCV 2023, arXiv 2308.12962): a masked volume that
follows the region of highest motion over time, located with the codec's motion vectors.

Fan et al.'s construction is not published as code; our reading:
1. Motion per token: codec block vectors of each clip frame (I-frames take the nearest frame's)
   minus the frame's median vector (camera motion), as magnitudes at the augmented clip's token
   centres (same crop and flip as the pixels); without vectors, mean absolute frame differences.
2. Per temporal slice: the mean over its frames, smoothed by a Gaussian of `sigma` tokens (a blob,
   not isolated blocks), divided by the slice's maximum; a motionless slice takes the nearest
   slice's map, so the volume follows the object through pauses and I-frames.
3. Per slice, the k = ratio x H' x W' tokens of highest score are masked; tokens below `floor`
   (codec noise) count as static, and the volume is completed to exactly k with static tokens in
   a random order from the sample's generator (so at ratio 0.75 the moving object is masked and
   the rest of the budget is random).
"""

from __future__ import annotations

import logging

import torch

from tgmae.data.seen import SeenVideos
from tgmae.mask_contract import MaskContext
from tgmae.masking.motion import (
    codec_token_motion, fill_from_nearest, frame_difference, gaussian_smooth, has_codec_motion,
)
from tgmae.masking.select import ScoredMask

log = logging.getLogger(__name__)


class MotionGuidedMask(ScoredMask):
    """MGM generator: (MaskContext with `motion` and/or `frames`, generator) -> [N] bool.

    ratio: masked fraction (0.75 in the TGM paper's comparison). motion_source: "codec" (falls
    back to frame differences, logged, where the video has no vectors) or "framediff". Both as
    validated by `MaskingConfig` (not checked again). A dataset read by DataLoader workers calls
    `share_with_workers` (the fallback table in shared memory); without workers none is used.
    """

    sigma = 1.0  # spatial smoothing, in tokens
    floor = 0.05  # fraction of a slice's peak below which a token counts as static (codec noise)

    def __init__(self, ratio: float = 0.75, motion_source: str = "codec"):
        self.ratio, self.motion_source = ratio, motion_source
        # each video's fallback is logged once, across workers (once shared) and epochs
        self.warned = SeenVideos(shared=False)
        # the dataset reads codec motion vectors for a generator that asks for them
        self.needs_motion = motion_source == "codec"

    def share_with_workers(self) -> None:
        """Put the logged-videos table in shared memory, before DataLoader workers start (called by
        `tgmae.data.dataset.VideoDataset` for data.num_workers > 0). Raises SharedMemoryError."""
        self.warned.share()

    def token_motion(self, ctx: MaskContext) -> tuple[torch.Tensor, str]:
        """-> ([T, H', W'] motion per clip frame and token, source used: "codec" | "framediff")."""
        _, h, w = ctx.grid
        if self.motion_source == "codec" and has_codec_motion(ctx.motion):
            return codec_token_motion(ctx.motion, ctx.crop, (h, w)), "codec"
        if ctx.frames is None:
            raise ValueError(
                f"motion-guided masking for video {ctx.video_id!r}: no codec motion vectors and no "
                "frames to take differences of"
            )
        if self.motion_source == "codec":
            if self.warned.first_time(str(ctx.video_id)):
                log.warning(
                    "MGM: video %r has no codec motion vectors (frame folder, I-frames only, or a "
                    "codec that exports none); using frame differences instead", ctx.video_id,
                )
        return frame_difference(ctx.frames, (h, w)), "framediff"

    def slice_scores(self, token_motion: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[T, H', W'] -> [T', H', W'] in [0, 1]: tubelet mean, smoothed, per-slice normalized,
        static (below floor) = 0, motionless slices filled from the nearest moving slice."""
        t_tok, h, w = grid
        t = token_motion.shape[0]
        if t % t_tok:
            raise ValueError(f"{t} clip frames do not split into {t_tok} temporal token slices")
        s = token_motion.reshape(t_tok, t // t_tok, h, w).mean(dim=1)
        s = gaussian_smooth(s, self.sigma)
        peak = s.flatten(1).amax(dim=1)  # [T']
        moving = peak > 1e-6
        s = s / peak.clamp(min=1e-6)[:, None, None]
        s = torch.where(s >= self.floor, s, torch.zeros_like(s))
        return fill_from_nearest(s, moving)

    def scores(self, ctx: MaskContext) -> torch.Tensor:
        """[T', H', W'] motion score of each token of the augmented clip."""
        motion, _ = self.token_motion(ctx)
        return self.slice_scores(motion, ctx.grid)

    def __repr__(self) -> str:
        return (f"MotionGuidedMask(ratio={self.ratio}, motion_source={self.motion_source!r}, "
                f"sigma={self.sigma}, floor={self.floor})")
