"""Which source frames make a clip: dense (VideoMAE), TSN segments (SSv2), multi-view testing.

Every function returns int64 frame indices into [start, end) of the source video and draws its
randomness from the `torch.Generator` it is given, never from global state.
"""

from __future__ import annotations

from typing import Optional

import torch


def clip_span(num_frames: int, stride: int) -> int:
    """Source frames a dense clip spans: a range shorter than this is read with a smaller stride."""
    return (num_frames - 1) * stride + 1


def dense_indices(
    start: int, end: int, num_frames: int, stride: int, *,
    generator: Optional[torch.Generator] = None, offset: Optional[float] = None,
) -> torch.Tensor:
    """[num_frames] int64: `num_frames` frames `stride` apart inside [start, end).

    The clip start is uniform over all positions that fit (`generator`), or at `offset` in
    [0, 1] of the free range (0.5 = centre; used for evaluation). When the range is shorter than
    the clip span the stride shrinks: frames are spread evenly over the whole range (VideoMAE's
    behaviour for short videos), repeating frames only when fewer than `num_frames` exist.
    """
    length = end - start
    if length <= 0:
        raise ValueError(f"empty frame range [{start}, {end})")
    span = clip_span(num_frames, stride)
    if span <= length:
        free = length - span
        if offset is None:
            if generator is None:
                raise ValueError("dense_indices needs a generator or an offset")
            first = int(torch.randint(free + 1, (1,), generator=generator))
        else:
            first = int(round(free * float(offset)))
        return start + first + stride * torch.arange(num_frames, dtype=torch.int64)
    pos = torch.linspace(0, length - 1, num_frames, dtype=torch.float64)
    return start + pos.round().to(torch.int64)


def tsn_indices(
    start: int, end: int, num_segments: int, *,
    generator: Optional[torch.Generator] = None, offset: Optional[float] = None,
) -> torch.Tensor:
    """[num_segments] int64: one frame per equal segment of [start, end) (TSN / SSv2 sampling).

    Training draws a uniform frame inside each segment (`generator`); testing takes the frame at
    `offset` in [0, 1) of every segment (0.5 = segment centre).
    """
    length = end - start
    if length <= 0:
        raise ValueError(f"empty frame range [{start}, {end})")
    edges = torch.linspace(0, length, num_segments + 1, dtype=torch.float64)
    lo, hi = edges[:-1], edges[1:]
    if offset is None:
        if generator is None:
            raise ValueError("tsn_indices needs a generator or an offset")
        u = torch.rand(num_segments, generator=generator, dtype=torch.float64)
    else:
        u = torch.full((num_segments,), float(offset), dtype=torch.float64)
    pos = (lo + u * (hi - lo)).floor().clamp_(0, length - 1)
    return start + pos.to(torch.int64)


def temporal_views(
    start: int, end: int, num_frames: int, stride: int, num_views: int, mode: str = "dense",
) -> torch.Tensor:
    """[num_views, num_frames] int64: clips spread evenly through the video (multi-view test).

    dense: view k starts at k / (V - 1) of the free range (one view: the centre), as VideoMAE's
    Kinetics test loader. tsn: view k takes the frame at (k + 1) / (V + 1) of every segment.
    """
    views = []
    for k in range(num_views):
        if mode == "dense":
            off = 0.5 if num_views == 1 else k / (num_views - 1)
            views.append(dense_indices(start, end, num_frames, stride, offset=off))
        else:  # tsn (data.sampling is validated: dense | tsn)
            views.append(tsn_indices(start, end, num_frames, offset=(k + 1) / (num_views + 1)))
    return torch.stack(views)


def clip_indices(
    start: int, end: int, num_frames: int, stride: int, mode: str, *,
    train: bool, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One clip for training (random) or single-view evaluation (centre), by `mode`."""
    if mode == "dense":
        return dense_indices(start, end, num_frames, stride,
                             generator=generator if train else None, offset=None if train else 0.5)
    return tsn_indices(start, end, num_frames,  # tsn (data.sampling is validated: dense | tsn)
                       generator=generator if train else None, offset=None if train else 0.5)
