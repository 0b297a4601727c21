"""tgmae.data.sampling: dense clips, TSN segments, multi-view temporal positions."""

from __future__ import annotations

import pytest
import torch

from tgmae.data.sampling import clip_indices, dense_indices, temporal_views, tsn_indices


def _g(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_dense_clip_fits_and_covers_every_start():
    starts = set()
    for s in range(300):
        idx = dense_indices(10, 110, 16, 4, generator=_g(s))
        assert idx.dtype == torch.int64 and idx.shape == (16,)
        assert (idx.diff() == 4).all() and idx.min() >= 10 and idx.max() < 110
        starts.add(int(idx[0]))
    assert min(starts) == 10 and max(starts) == 110 - 61  # span (16 - 1) * 4 + 1 = 61
    assert len(starts) > 30


def test_dense_centre_and_short_video():
    assert dense_indices(0, 100, 4, 10, offset=0.5).tolist() == [34, 44, 54, 64]
    short = dense_indices(0, 20, 16, 4, offset=0.5)  # span 61 > 20: spread over the video
    assert short[0] == 0 and short[-1] == 19 and (short.diff() >= 1).all()
    tiny = dense_indices(5, 9, 8, 2, offset=0.5)  # fewer frames than wanted: repeats, in range
    assert tiny.min() == 5 and tiny.max() == 8 and (tiny.diff() >= 0).all()
    with pytest.raises(ValueError):
        dense_indices(0, 10, 4, 2)  # neither generator nor offset


def test_tsn_one_frame_per_segment():
    edges = torch.linspace(0, 50, 9, dtype=torch.float64)  # segments 6.25 frames long
    seen = set()
    for s in range(100):
        idx = tsn_indices(0, 50, 8, generator=_g(s))
        assert (idx >= edges[:-1].floor()).all() and (idx < edges[1:]).all()
        assert (idx.diff() >= 0).all()
        seen.update(idx.tolist())
    assert len(seen) == 50  # every frame reachable
    mid = tsn_indices(0, 80, 8, offset=0.5)
    assert mid.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert tsn_indices(0, 4, 8, offset=0.5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_temporal_views_spread_and_tsn_offsets():
    v = temporal_views(0, 100, 4, 5, 5)
    assert v.shape == (5, 4)
    assert v[0, 0] == 0 and v[-1, -1] == 99 and (v[1:, 0] > v[:-1, 0]).all()
    assert temporal_views(0, 100, 4, 5, 1)[0, 0] == 42  # single view is the centre
    t = temporal_views(0, 80, 8, 1, 2, mode="tsn")
    assert t[0].tolist() == [3, 13, 23, 33, 43, 53, 63, 73] and (t[1] > t[0]).all()


def test_clip_indices_modes_and_generator_isolation():
    a = clip_indices(0, 200, 16, 4, "dense", train=True, generator=_g(1))
    b = clip_indices(0, 200, 16, 4, "dense", train=True, generator=_g(1))
    assert torch.equal(a, b)
    state = torch.random.get_rng_state()
    clip_indices(0, 200, 16, 2, "tsn", train=True, generator=_g(2))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert torch.equal(clip_indices(0, 200, 16, 4, "dense", train=False),
                       dense_indices(0, 200, 16, 4, offset=0.5))
