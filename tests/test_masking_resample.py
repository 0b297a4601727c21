"""Carrying source-frame maps into the augmented token grid, and per-slice top-k selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgmae.mask_contract import CropParams, num_masked
from tgmae.masking.resample import (
    full_frame_crop, resample_to_tokens, sample_maps,
)
from tgmae.masking.select import select_batch_per_slice, select_per_slice, topk_iou


def test_full_frame_identity_and_flip():
    maps = torch.randn(3, 14, 14)
    crop = full_frame_crop(224, 224)
    assert torch.allclose(sample_maps(maps, crop, (14, 14)), maps, atol=1e-5)
    flipped = sample_maps(maps, full_frame_crop(224, 224, flip=True), (14, 14))
    assert torch.allclose(flipped, maps.flip(-1), atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_maps_token_centres_to_source_pixels(flip):
    # A map whose value is the source x (resp. y) coordinate: bilinear sampling is exact for it,
    # so each token must read the source position of its centre.
    src_h, src_w = 240, 320
    gh, gw = 60, 80  # cells of 4 px
    xs = (torch.arange(gw) + 0.5) * (src_w / gw)
    ys = (torch.arange(gh) + 0.5) * (src_h / gh)
    maps = torch.stack([xs[None, :].expand(gh, gw), ys[:, None].expand(gh, gw)])
    crop = CropParams(top=37.0, left=101.0, height=160.0, width=176.0, flip=flip, source_height=src_h, source_width=src_w)
    out = sample_maps(maps, crop, (10, 11))
    tx = 101.0 + (torch.arange(11) + 0.5) * 16.0
    ty = 37.0 + (torch.arange(10) + 0.5) * 16.0
    if flip:
        tx = tx.flip(0)
    assert torch.allclose(out[0], tx[None, :].expand(10, 11), atol=1e-3)
    assert torch.allclose(out[1], ty[:, None].expand(10, 11), atol=1e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_resampled_map_follows_the_pixel_augmentation(flip):
    """A bright blob in the source frame: its token in the augmented clip (data pipeline's
    crop_resize) is the token where the resampled source map peaks."""
    from tgmae.data.transforms import crop_resize

    h, w = 180, 240
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    blob = torch.exp(-((yy - 70) ** 2 + (xx - 150) ** 2) / (2 * 8.0 ** 2))
    frames = (blob[None, :, :, None].expand(1, h, w, 3) * 255).to(torch.uint8).numpy()
    box = (20, 60, 150, 150)  # top, left, height, width
    aug = crop_resize(frames, box, 112, flip)  # [C, T, 112, 112]
    tok_pix = torch.nn.functional.avg_pool2d(aug[0].float(), 16)[0]  # [7, 7]
    crop = CropParams(20.0, 60.0, 150.0, 150.0, flip, h, w)
    tok_map = sample_maps(blob[None], crop, (7, 7))[0]
    assert int(tok_pix.argmax()) == int(tok_map.argmax())


def test_resample_to_tokens_tubelet_first_and_mean():
    maps = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 4, 4).clone()  # map f = f
    map_frames = torch.arange(0, 12, 2)  # cached every 2 frames: 0, 2, ..., 10
    clip = torch.arange(8)  # frames 0..7, tubelet 2 -> 4 slices
    crop = full_frame_crop(64, 64)
    first = resample_to_tokens(maps, map_frames, clip, crop, (4, 4, 4), "first")
    mean = resample_to_tokens(maps, map_frames, clip, crop, (4, 4, 4), "mean")
    # frame 2k -> map k; frame 2k+1 -> tie between k and k+1 -> k
    assert first[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert mean[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    stride3 = resample_to_tokens(maps, map_frames, torch.arange(0, 12, 3)[:4], crop, (2, 4, 4), "mean")
    assert stride3[:, 0, 0].tolist() == [pytest.approx((0 + 1) / 2), pytest.approx((3 + 4) / 2)]
    with pytest.raises(ValueError, match="temporal token slices"):
        resample_to_tokens(maps, map_frames, torch.arange(7), crop, (4, 4, 4))


def test_crop_without_source_size_is_refused():
    with pytest.raises(ValueError, match="source size"):
        sample_maps(torch.zeros(1, 4, 4), CropParams(0, 0, 10, 10), (2, 2))


@pytest.mark.parametrize("select", ["top", "bottom"])
def test_select_per_slice_exact_count_and_order(select):
    scores = torch.randn(8, 196)
    mask = select_per_slice(scores, 0.6, select, torch.Generator().manual_seed(0)).view(8, 196)
    k = num_masked(196, 0.6)
    assert (mask.sum(dim=1) == k).all()
    masked_min, unmasked_max = scores.masked_fill(~mask, 1e9).amin(1), scores.masked_fill(mask, -1e9).amax(1)
    if select == "top":
        assert (masked_min > unmasked_max).all()
    else:
        assert (scores.masked_fill(~mask, -1e9).amax(1) < scores.masked_fill(mask, 1e9).amin(1)).all()


def test_select_breaks_ties_randomly_but_deterministically():
    flat = torch.zeros(4, 196)
    a = select_per_slice(flat, 0.5, "top", torch.Generator().manual_seed(1))
    b = select_per_slice(flat, 0.5, "top", torch.Generator().manual_seed(1))
    c = select_per_slice(flat, 0.5, "top", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # not all piled up at the start of each slice
    assert a.view(4, 196)[:, :98].float().mean() < 0.75


def test_select_nan_is_least_preferred():
    s = torch.tensor([[float("nan"), 1.0, 2.0, 3.0]])
    assert select_per_slice(s, 0.5, "top").tolist() == [False, False, True, True]
    assert select_per_slice(s, 0.5, "bottom").tolist() == [False, True, True, False]


def test_batch_selection_and_iou():
    scores = torch.randn(3, 8, 196)
    mask = select_batch_per_slice(scores, 0.6, "top", torch.Generator().manual_seed(0))
    assert mask.shape == (3, 8 * 196) and (mask.view(3, 8, 196).sum(-1) == num_masked(196, 0.6)).all()
    for b in range(3):
        assert torch.equal(mask[b], select_per_slice(scores[b], 0.6, "top"))
    assert topk_iou(scores[0], scores[0], 0.6) == 1.0
    assert topk_iou(scores[0], -scores[0], 0.4) == 0.0


def test_numpy_free_of_global_rng():
    torch.manual_seed(3)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    select_per_slice(torch.zeros(2, 16), 0.5, "top", torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state()) and (np.random.get_state()[1] == np_state).all()
