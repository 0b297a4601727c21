"""tgmae.data.views: k views from one decode (data.num_sample, data.repeat_mode), their seeding,
the collate to [B*k, ...], the cache, motion vectors, per-view mask inputs and the contrastive rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tgmae.config import ConfigError, DataConfig
from tgmae.data import video as video_mod
from tgmae.data.annotations import VideoRecord
from tgmae.data.dataset import VideoDataset
from tgmae.data.video import write_video
from tgmae.data.views import collate_views, first_view, view_generators
from tgmae.masking.mgm import MotionGuidedMask
from test_data_dataset import _clip  # the textured, scrolling test clip
from tgmae.masking.simple import TubeMask
from tgmae.models.infonce import info_nce_rows


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[VideoRecord]:
    r = tmp_path_factory.mktemp("views")
    recs = []
    for i in range(4):
        write_video(r / f"v{i}.mp4", _clip(48, 64, 88, i), fps=25, gop=8)
        recs.append(VideoRecord(str(r / f"v{i}.mp4"), i % 2, f"v{i}"))
    return recs


def _cfg(**kw) -> DataConfig:
    base = dict(num_frames=4, frame_stride=2, image_size=32, max_load_retries=2, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def _ds(records, **kw) -> VideoDataset:
    return VideoDataset(records, _cfg(**kw), train=True, token_grid=(2, 4, 4), mask_generator=TubeMask(0.75), seed=3)


@pytest.mark.parametrize("mode", ["views", "clips"])
def test_view_zero_is_the_single_view_sample(records, mode):
    one, four = _ds(records), _ds(records, num_sample=4, repeat_mode=mode)
    for i in range(len(records)):
        a, b = one[i], four[i]
        assert all(len(b[key]) == 4 for key in ("video", "frame_indices", "crop", "mask", "caption_id"))
        assert b["video"][3].shape == (3, 4, 32, 32) and b["mask"][3].shape == (32,)
        b0 = first_view(b)
        for key in ("video", "frame_indices", "crop", "mask", "caption_id"):
            assert torch.equal(a[key], b0[key]), key
        assert b["label"] == a["label"] and b["index"] == i


def test_views_are_independent_draws_of_one_clip(records):
    ds = _ds(records, num_sample=4)
    crops, masks = set(), set()
    for i in range(len(records)):
        s = ds[i]
        assert all(torch.equal(fi, s["frame_indices"][0]) for fi in s["frame_indices"])  # one clip
        crops |= {tuple(c.tolist()) for c in s["crop"]}
        masks |= {tuple(m.tolist()) for m in s["mask"]}
        assert len({tuple(m.tolist()) for m in s["mask"]}) > 1  # k masks, not one repeated
    assert len(crops) > len(records) and len(masks) > len(records)


def test_clips_mode_draws_k_clips_and_decodes_once(records, monkeypatch):
    calls = []
    real = video_mod.VideoReader.read

    def counted(self, idx, **kw):
        calls.append(len(idx))
        return real(self, idx, **kw)

    monkeypatch.setattr(video_mod.VideoReader, "read", counted)
    ds = _ds(records, num_sample=3, repeat_mode="clips")
    starts = set()
    for i in range(len(records)):
        s = ds[i]
        starts |= {int(fi[0]) for fi in s["frame_indices"]}
        assert all((fi.diff() == 2).all() for fi in s["frame_indices"])
    assert calls == [12] * len(records)  # one read of the 3 clips' frames per video
    assert len(starts) > len(records)  # different temporal clips


def test_seeded_by_epoch_index_view_independent_of_workers(records):
    ds = _ds(records, num_sample=2, num_workers=2)  # built for workers: its epoch counter is shared
    ds.set_epoch(1)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=ds.collate)
        batches.append(list(loader))
    for a, b in zip(*batches):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["mask"], b["mask"])
    ds.set_epoch(2)
    assert not torch.equal(torch.stack(ds[0]["mask"]), batches[0][0]["mask"][:2])  # another epoch, other views
    g = torch.Generator().manual_seed(5)
    assert [x.initial_seed() for x in view_generators(g, 3)] == [x.initial_seed() for x in view_generators(g, 3)]


def test_collate_flattens_views_video_major(records):
    ds = _ds(records, num_sample=3)
    batch = ds.collate([ds[0], ds[1]])
    assert batch["video"].shape == (6, 3, 4, 32, 32) and batch["mask"].shape == (6, 32)
    assert batch["index"].tolist() == [0, 0, 0, 1, 1, 1] and batch["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["video_id"] == ["v0"] * 3 + ["v1"] * 3
    assert batch["load_failures"].shape == (2,)  # per video: failures are counted once
    assert torch.equal(batch["video"][4], ds[1]["video"][1])
    assert collate_views is ds.collate


@pytest.mark.parametrize("mode", ["views", "clips"])
def test_cache_gives_the_same_views(records, mode):
    plain = _ds(records, num_sample=2, repeat_mode=mode)
    cached = _ds(records, num_sample=2, repeat_mode=mode, cache="memory")
    for i in range(len(records)):
        a, b = plain[i], cached[i]
        for key in ("video", "mask", "frame_indices"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key


class _Recorder:
    """A mask generator that records what each view hands it (crop, frames, motion)."""

    needs_motion = True

    def __init__(self):
        self.seen = []
        self.inner = MotionGuidedMask(0.5)

    def __call__(self, ctx, g):
        self.seen.append((ctx.crop.as_tensor(), ctx.frame_indices.clone(), ctx.motion))
        return self.inner(ctx, g)


@pytest.mark.parametrize("mode", ["views", "clips"])
def test_each_view_masks_with_its_crop_and_the_one_decodes_motion(records, mode):
    rec = _Recorder()
    ds = VideoDataset(records, _cfg(num_sample=3, repeat_mode=mode), train=True, token_grid=(2, 4, 4),
                      mask_generator=rec, seed=1)
    s = ds[0]
    assert len(rec.seen) == 3
    for v, (crop, fi, motion) in enumerate(rec.seen):
        assert torch.equal(crop, s["crop"][v]) and torch.equal(fi, s["frame_indices"][v])
        assert motion is not None and motion.shape[0] == 4
    if mode == "views":
        assert all(m is rec.seen[0][2] for _, _, m in rec.seen)  # the same decoded vectors


def test_views_share_one_caption_and_are_not_each_others_negatives(records):
    class Captions:
        texts = ["a", "b", "c"]

        def draw(self, video_id, g):
            i = int(torch.randint(3, (1,), generator=g))
            return i, torch.full((4,), float(i))

    ds = VideoDataset(records, _cfg(num_sample=3), train=True, captions=Captions(), seed=0)
    s = ds[1]
    assert len(set(int(c) for c in s["caption_id"])) == 1
    # rows 0, 1 = two views of video A (caption 0), row 2 = video B (caption 1)
    torch.manual_seed(0)
    v, t = torch.randn(3, 8), torch.randn(3, 8)
    t[1] = t[0]  # one caption, one text
    ids = torch.tensor([0, 0, 1])
    base = info_nce_rows(v, t, 10.0, ids, gather=False)
    v2 = v.clone()
    v2[1] = torch.randn(8) * 5  # the other view of A changes: row 0's losses do not
    moved = info_nce_rows(v2, t, 10.0, ids, gather=False)
    assert torch.allclose(base[0][0], moved[0][0]) and torch.allclose(base[1][0], moved[1][0])
    assert not torch.allclose(base[1][2], moved[1][2])  # video B's text still sees A's views


def test_eval_datasets_stay_single_view(records):
    ds = VideoDataset(records, _cfg(num_sample=4), train=False)
    assert ds.num_sample == 1 and ds[0]["video"].shape == (3, 4, 32, 32) and not hasattr(ds, "collate")


def test_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="data.num_sample"):
        DataConfig(num_sample=0)
    with pytest.raises(ConfigError, match="data.repeat_mode"):
        DataConfig(repeat_mode="frames")
