"""tgmae.data.transforms: crop boxes match the pixels, flip, normalization, kornia extras."""

from __future__ import annotations

import numpy as np
import torch

from tgmae.data.transforms import (
    EvalTransform, FinetuneTransform, PretrainTransform, crop_resize,
    multiscale_crop_box, normalize, random_resized_crop_box, spatial_view_boxes,
)
from tgmae.mask_contract import CropParams

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _g(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _coords(t: int, h: int, w: int) -> np.ndarray:
    """Frames whose pixels encode their own position: R = y, G = x (mod 256), B = 10 * t."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = np.stack([yy % 256, xx % 256, np.zeros_like(yy)], -1).astype(np.uint8)
    clip = np.repeat(f[None], t, 0)
    clip[..., 2] = (10 * np.arange(t)).reshape(t, 1, 1)
    return clip


def test_multiscale_boxes_follow_videomae():
    sizes, corners = set(), set()
    for s in range(400):
        top, left, h, w = multiscale_crop_box(256, 340, 224, (1, .875, .75, .66), _g(s))
        sizes.add((h, w))
        corners.add((top, left))
        assert 0 <= top <= 256 - h and 0 <= left <= 340 - w
    base = [256, 224, 192, 168]  # int(256 * s); 224 snaps to the input size
    allowed = {(base[i], base[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert sizes == allowed
    assert (0, 0) in corners and len(corners) > 13  # 13 fixed positions per crop size


def test_crop_params_match_the_pixels():
    """Crop a coordinate-coded clip: each output pixel's value says where it came from."""
    clip = _coords(4, 200, 240)
    tr = PretrainTransform(size=50, scales=(0.5,), mean=(0, 0, 0), std=(1 / 255,) * 3, flip=True)
    flips = set()
    for s in range(12):
        video, crop = tr(clip, _g(s))
        assert isinstance(crop, CropParams) and (crop.source_height, crop.source_width) == (200, 240)
        assert crop.height == crop.width == 100  # 0.5 x short side
        flips.add(crop.flip)
        ys = video[0, 0, :, 0]  # R channel, first frame: source row of each output row
        xs = video[1, 0, 0, :]
        scale = crop.height / 50
        exp_y = crop.top + (torch.arange(50) + 0.5) * scale - 0.5
        exp_x = crop.left + (torch.arange(50) + 0.5) * (crop.width / 50) - 0.5
        if crop.flip:
            exp_x = exp_x.flip(0)
        assert torch.allclose(ys, exp_y, atol=1.0) and torch.allclose(xs, exp_x, atol=1.0)
        assert torch.equal(video[2, :, 10, 10], torch.tensor([0.0, 10, 20, 30]))  # frames in order
    assert flips == {True, False}


def test_flip_off_and_normalization_numbers():
    clip = np.zeros((3, 40, 60, 3), np.uint8)
    clip[..., 0], clip[..., 1], clip[..., 2] = 255, 128, 0
    tr = PretrainTransform(32, (1.0,), MEAN, STD, flip=False)
    for s in range(5):
        video, crop = tr(clip, _g(s))
        assert crop.flip is False
    expected = torch.tensor([(1 - MEAN[0]) / STD[0], (128 / 255 - MEAN[1]) / STD[1], (0 - MEAN[2]) / STD[2]])
    assert video.shape == (3, 3, 32, 32) and video.dtype == torch.float32
    assert torch.allclose(video.mean(dim=(1, 2, 3)), expected, atol=1e-5)
    assert torch.allclose(video.std(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)


def test_crop_resize_uint8_layout_and_flip():
    clip = _coords(2, 30, 40)
    out = crop_resize(clip, (5, 10, 20, 20), 20)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 20, 20)
    assert int(out[0, 0, 0, 0]) == 5 and int(out[0, 1, 0, 0]) == 10  # exact crop, no resize
    flipped = crop_resize(clip, (5, 10, 20, 20), 20, flip=True)
    assert torch.equal(flipped, out.flip(-1))
    norm = normalize(out, (0, 0, 0), (1, 1, 1))
    assert norm.shape == (3, 2, 20, 20) and torch.allclose(norm[1, 1, 0, 0], torch.tensor(10 / 255))


def test_random_resized_crop_box_ranges():
    areas = []
    for s in range(200):
        top, left, h, w = random_resized_crop_box(120, 160, _g(s))
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        areas.append(h * w / (120 * 160))
    assert min(areas) < 0.2 and max(areas) > 0.8


def test_spatial_views_and_eval_transform():
    assert spatial_view_boxes(100, 160, 3) == [(0, 0, 100, 100), (0, 30, 100, 100), (0, 60, 100, 100)]
    assert spatial_view_boxes(160, 100, 1) == [(30, 0, 100, 100)]
    clip = _coords(2, 100, 160)
    ev = EvalTransform(25, (0, 0, 0), (1 / 255,) * 3, num_views=3)
    video, crop = ev(clip)
    assert crop.left == 30 and not crop.flip and video.shape == (3, 2, 25, 25)
    views, crops = ev.views(clip)
    assert views.shape == (3, 3, 2, 25, 25) and [c.left for c in crops] == [0, 30, 60]
    assert views[0, 1, 0, 0, 0] < views[2, 1, 0, 0, 0]  # G channel = x: right view starts further right


def test_finetune_transform_is_seeded_and_same_for_every_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 4, 0)  # identical frames -> identical outputs per frame
    tr = FinetuneTransform(32, MEAN, STD, rand_augment=(2, 9), erase_prob=1.0)
    state = torch.random.get_rng_state()
    a, ca = tr(clip, _g(5))
    b, cb = tr(clip, _g(5))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert torch.equal(a, b) and ca == cb
    for t in range(1, 4):
        assert torch.equal(a[:, t], a[:, 0])  # RandAugment and erasing identical across frames
    c, _ = tr(clip, _g(6))
    assert not torch.equal(a, c)


def test_finetune_multiscale_crop_keeps_most_of_the_frame():
    clip = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    rrc = FinetuneTransform(32, MEAN, STD, rand_augment=None, erase_prob=0.0)
    ms = FinetuneTransform(32, MEAN, STD, rand_augment=None, erase_prob=0.0, crop="multiscale", scales=(1.0, 0.75))
    for seed in range(30):
        _, box = ms(clip, _g(seed))
        side = 48  # short side: multiscale crop sides are scale x short side
        assert min(box.height, box.width) >= 0.75 * side - 1
    small = [rrc(clip, _g(s))[1] for s in range(30)]
    assert min(b.height * b.width for b in small) < 0.5 * 48 * 64  # the 8-100% crop does cut deep
