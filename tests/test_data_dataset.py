"""tgmae.data.dataset: the sample contract, determinism, robust loading, masks, captions, views."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tgmae.config import DataConfig
from tgmae.data.annotations import VideoRecord
from tgmae.data.formats import load_annotations
from tgmae.data.dataset import MultiViewDataset, VideoDataset, VideoLoadError, build_dataset, sample_generator
from tgmae.data.video import write_video
from tgmae.mask_contract import CropParams, MaskContext, num_masked
from tgmae.masking.simple import TubeMask

FIXTURES = Path(__file__).parent / "data"


def _clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(t)])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The csv fixture's layout: videos/{walk,jump,walk2}.mp4, a broken file, a frame folder."""
    r = tmp_path_factory.mktemp("csvroot")
    (r / "videos").mkdir()
    write_video(r / "videos" / "walk.mp4", _clip(48, 72, 96, 0), fps=25, gop=12)
    write_video(r / "videos" / "jump.mp4", _clip(40, 80, 64, 1), fps=30, gop=30)
    write_video(r / "videos" / "walk2.mp4", _clip(64, 64, 88, 2), fps=24, gop=250)
    (r / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    frames = r / "frames" / "jump"
    frames.mkdir(parents=True)
    for i, img in enumerate(_clip(16, 40, 56, 3)):
        Image.fromarray(img).save(frames / f"frame_{i + 1:010d}.jpg")
    return r


def _cfg(**kw) -> DataConfig:
    base = dict(num_frames=4, frame_stride=2, image_size=32, max_load_retries=5)
    base.update(kw)
    return DataConfig(**base)


def _records(root: Path):
    recs, classes = load_annotations("csv", root, FIXTURES / "csv" / "train.csv")
    return recs, classes


def _two_epochs_in_workers(ds, tmp_path) -> list[str]:
    """Read `ds` for two epochs in 2 forked DataLoader workers; the lines its logger wrote."""
    handler = logging.FileHandler(tmp_path / "log.txt")  # forked workers write to the same file
    logger = logging.getLogger("tgmae.data.dataset")
    logger.addHandler(handler)
    try:
        for epoch in range(2):
            ds.set_epoch(epoch)
            for _ in DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork"):
                pass
    finally:
        logger.removeHandler(handler)
        handler.close()
    return (tmp_path / "log.txt").read_text().splitlines()


def test_sample_contract(root):
    recs, classes = _records(root)
    assert classes == ["walking", "jumping"]
    ds = VideoDataset(recs, _cfg(), train=True, token_grid=(2, 2, 2), mask_generator=TubeMask(0.75))
    s = ds[0]
    assert set(s) == {"video", "label", "index", "video_id", "frame_indices", "crop", "mask",
                      "caption_id", "load_failures"}
    assert s["video"].dtype == torch.float32 and s["video"].shape == (3, 4, 32, 32)
    assert s["label"] == 0 and s["index"] == 0 and s["video_id"] == "videos/walk"
    assert s["frame_indices"].dtype == torch.int64 and s["frame_indices"].shape == (4,)
    assert (s["frame_indices"].diff() == 2).all()
    assert s["crop"].dtype == torch.float32 and s["crop"].shape == (7,)
    crop = CropParams.from_tensor(s["crop"])
    assert (crop.source_height, crop.source_width) == (72, 96)
    assert s["mask"].dtype == torch.bool and s["mask"].shape == (8,)
    assert int(s["mask"].sum()) == 2 * num_masked(4, 0.75)
    assert s["caption_id"].dtype == torch.int64 and int(s["caption_id"]) == -1
    assert s["load_failures"] == 0
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["mask"].shape == (2, 8)
    assert batch["crop"].shape == (2, 7) and batch["caption_id"].dtype == torch.int64


def test_same_seed_same_sample_and_epochs_differ(root):
    recs, _ = _records(root)
    a = VideoDataset(recs, _cfg(), train=True, seed=3)
    b = VideoDataset(recs, _cfg(), train=True, seed=3)
    for i in range(3):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["video"], sb["video"]) and torch.equal(sa["crop"], sb["crop"])
    draws = set()
    for e in range(6):
        a.set_epoch(e)
        draws.add((tuple(a[2]["frame_indices"].tolist()), tuple(a[2]["crop"].tolist())))
    assert len(draws) > 1


def test_determinism_across_worker_counts(root):
    recs, _ = _records(root)
    ds = VideoDataset(recs * 2, _cfg(), train=True, seed=7, token_grid=(2, 2, 2), mask_generator=TubeMask(0.5))
    ds.set_epoch(1)

    def run(workers):
        out = []
        for b in DataLoader(ds, batch_size=3, num_workers=workers, shuffle=False):
            out.append(b)
        return out

    a, b = run(0), run(2)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in ("video", "mask", "frame_indices", "crop", "index", "load_failures"):
            assert torch.equal(x[k], y[k]), k
    assert sum(int(x["load_failures"].sum()) for x in a) >= 1  # broken.mp4 was replaced


def test_set_epoch_reaches_persistent_workers(root):
    recs, _ = _records(root)
    ds = VideoDataset(recs[:3], _cfg(), train=True, seed=1)
    loader = DataLoader(ds, batch_size=3, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader))["frame_indices"])
    for epoch in range(2):
        ds.set_epoch(epoch)
        ref = torch.stack([ds[i]["frame_indices"] for i in range(3)])
        assert torch.equal(seen[epoch], ref)


def test_unreadable_videos_are_counted_and_replaced(root, tmp_path, caplog):
    good = tmp_path / "good.mp4"
    write_video(good, _clip(20, 32, 32, 5), gop=10)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(good.read_bytes()[:1500])
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    short = tmp_path / "short.mp4"
    write_video(short, _clip(3, 32, 32, 6))
    bad = [VideoRecord(str(p), 1, p.stem) for p in (tmp_path / "missing.mp4", zero, trunc, short,
                                                    root / "videos" / "broken.mp4")]
    recs = bad + [VideoRecord(str(good), 0, "good")]
    ds = VideoDataset(recs, _cfg(max_load_retries=50), train=True)
    with caplog.at_level(logging.WARNING, logger="tgmae.data.dataset"):
        samples = [ds[i] for i in range(len(recs))] + [ds[0]]
    for s in samples:
        assert s["video_id"] == "good" and s["index"] == 5
    assert all(s["load_failures"] >= 1 for s in samples[:5]) and samples[5]["load_failures"] == 0
    assert ds.failures == sum(s["load_failures"] for s in samples)
    logged = [r.getMessage() for r in caplog.records]
    for r in bad[:4]:  # each bad path logged once per process, however often it was drawn
        assert sum(r.path in m for m in logged) == 1
    assert any("too short" in m for m in logged)


def test_error_after_max_retries(tmp_path):
    recs = [VideoRecord(str(tmp_path / f"none{i}.mp4"), 0, f"n{i}") for i in range(3)]
    ds = VideoDataset(recs, _cfg(max_load_retries=4), train=True)
    with pytest.raises(VideoLoadError, match="max_load_retries"):
        ds[0]


class _Captions:
    """A minimal caption provider: two captions per video, embeddings from a fixed table."""

    def __init__(self):
        self.table = torch.arange(40, dtype=torch.float32).view(10, 4)
        self.texts = [f"caption {i}" for i in range(10)]

    def draw(self, video_id, generator):
        cid = int(torch.randint(2, (1,), generator=generator)) + (2 if video_id == "videos/jump" else 0)
        return cid, self.table[cid]


class _Recorder:
    """A mask generator that records the context it is called with (random mask at `ratio`)."""

    ratio = 0.5

    def __init__(self):
        self.contexts: list[MaskContext] = []

    def __call__(self, ctx, generator):
        self.contexts.append(ctx)
        return TubeMask(self.ratio)(ctx, generator)


def test_mask_context_captions_and_motion(root):
    recs, _ = _records(root)
    rec = _Recorder()
    ds = VideoDataset(recs[:2], _cfg(with_motion=True), train=True, token_grid=(2, 2, 2),
                      mask_generator=rec, captions=_Captions())
    s = ds[1]
    ctx = rec.contexts[-1]
    assert ctx.grid == (2, 2, 2) and ctx.video_id == "videos/jump"
    assert torch.equal(ctx.frames, s["video"]) and torch.equal(ctx.frame_indices, s["frame_indices"])
    assert torch.equal(ctx.crop.as_tensor(), s["crop"])
    assert int(s["caption_id"]) in (2, 3) and torch.equal(ctx.text_embedding, _Captions().table[int(s["caption_id"])])
    assert ctx.caption == f"caption {int(s['caption_id'])}"  # cached TGM finds its maps by the text
    assert ctx.motion.shape == (4, 5, 4, 2) and ctx.motion.dtype == torch.float32  # 80x64 source
    assert torch.isfinite(ctx.motion).all()


def test_frame_folder_records_with_frame_range(root):
    recs, _ = load_annotations("csv", root, FIXTURES / "csv" / "val.jsonl")
    assert recs[1].start_frame == 2 and recs[1].end_frame == 14
    ds = VideoDataset(recs, _cfg(num_frames=4, frame_stride=3), train=False)
    s = ds[1]
    assert s["label"] == 1 and s["video"].shape == (3, 4, 32, 32)
    fi = s["frame_indices"]
    assert fi.min() >= 2 and fi.max() < 14 and (fi.diff() == 3).all()


def test_eval_mode_is_centre_and_deterministic(root):
    recs, _ = _records(root)
    ds = VideoDataset(recs, _cfg(), train=False)
    s0 = ds[0]
    ds.set_epoch(5)
    s1 = ds[0]
    assert torch.equal(s0["video"], s1["video"])
    assert s0["frame_indices"].tolist() == [20, 22, 24, 26]  # 48 frames, span 7: start 41 // 2
    assert CropParams.from_tensor(s0["crop"]).left == 12  # 72x72 square centred in width 96


def test_multi_view_dataset(root):
    recs, _ = _records(root)
    ds = MultiViewDataset(recs[:1], _cfg(test_temporal_views=3, test_spatial_views=2))
    s = ds[0]
    assert s["video"].shape == (6, 3, 4, 32, 32)
    assert s["frame_indices"].shape == (6, 4) and s["crop"].shape == (6, 7)
    assert s["frame_indices"][0].tolist() == [0, 2, 4, 6] and s["frame_indices"][-1].tolist() == [41, 43, 45, 47]
    assert torch.equal(s["frame_indices"][0], s["frame_indices"][1])  # spatial views share frames
    lefts = [CropParams.from_tensor(c).left for c in s["crop"][:2]]
    assert lefts == [0, 24]
    batch = next(iter(DataLoader(ds, batch_size=1)))
    assert batch["video"].shape == (1, 6, 3, 4, 32, 32)


def test_tsn_sampling_in_dataset(root):
    recs, _ = _records(root)
    ds = VideoDataset(recs[:1], _cfg(sampling="tsn", num_frames=8, flip=False), train=True)
    fi = ds[0]["frame_indices"]
    edges = torch.linspace(0, 48, 9)
    assert ((fi >= edges[:-1].floor()) & (fi < edges[1:])).all()
    assert CropParams.from_tensor(ds[0]["crop"]).flip is False


def test_build_dataset_and_sample_generator(root):
    cfg = _cfg(root=str(root), train_annotations=str(FIXTURES / "csv" / "train.csv"),
               val_annotations=str(FIXTURES / "csv" / "val.jsonl"))
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    assert train.class_names == ["walking", "jumping"] and len(train) == 4 and len(val) == 2
    assert train.train and not val.train
    mv = build_dataset(cfg, "val", multi_view=True)
    assert isinstance(mv, MultiViewDataset)
    g1 = sample_generator(0, 0, 5, 0)
    g2 = sample_generator(0, 0, 5, 0)
    g3 = sample_generator(0, 1, 5, 0)
    a, b, c = (torch.rand(4, generator=g) for g in (g1, g2, g3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_epic_frame_folders_carry_verb_and_noun(tmp_path):
    """EPIC-55 rows over an RGB frame folder: action label plus verb / noun targets."""
    folder = tmp_path / "P02" / "P02_03"
    folder.mkdir(parents=True)
    for i, img in enumerate(_clip(25, 36, 48, 4)):
        Image.fromarray(img).save(folder / f"frame_{i + 1:010d}.jpg")
    recs, classes = load_annotations("epic55", tmp_path, FIXTURES / "epic55" / "EPIC_val_action_labels.csv")
    ds = VideoDataset(recs, _cfg(num_frames=4, frame_stride=4), train=True)
    s = ds[1]
    assert s["video"].shape == (3, 4, 32, 32) and s["load_failures"] == 0
    assert (s["verb"], s["noun"]) == (0, 31) and classes[s["label"]] == "take milk"
    assert s["frame_indices"].min() >= 4 and s["frame_indices"].max() <= 23  # frames 5..24, 1-based
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["verb"].tolist() == [3, 0] and batch["noun"].tolist() == [8, 31]


@pytest.mark.parametrize("multi_view", [False, True])
def test_evaluation_mode_reports_an_unreadable_video_instead_of_replacing_it(root, multi_view):
    recs, _ = _records(root)  # walk, jump, walk2, broken (label 1)
    ds = (MultiViewDataset(recs, _cfg(), temporal_views=2, spatial_views=2) if multi_view
          else VideoDataset(recs, _cfg(), train=False))
    ds.substitute = False
    good, bad = ds[0], ds[3]
    assert good["unreadable"] is False and good["load_error"] == "" and good["video_id"] == "videos/walk"
    assert bad["unreadable"] is True and bad["index"] == 3 and bad["label"] == 1 and bad["video_id"] == "videos/broken"
    assert "broken.mp4" in bad["load_error"]
    for k in ("video", "frame_indices", "crop"):  # a placeholder of the sample's shapes: batches collate
        assert bad[k].shape == good[k].shape and bad[k].dtype == good[k].dtype, k
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["unreadable"].tolist() == [False, False, False, True]
    assert batch["index"].tolist() == [0, 1, 2, 3]  # no video stands in for another
    ds.substitute = True
    assert ds[3]["video_id"] != "videos/broken"  # training keeps replacing (counted in load_failures)


def test_mgm_turns_motion_vector_reading_on(root, caplog):
    """masking.name=mgm (codec source) with data.with_motion=false (the default) reads the codec's
    vectors, logs that once and never the false "no codec motion vectors" fallback warning; with
    a decoded-clip cache (which holds none) it is a ConfigError naming the keys."""
    import logging

    from tgmae.config import ConfigError
    from tgmae.masking.mgm import MotionGuidedMask

    recs, _ = _records(root)
    with caplog.at_level(logging.INFO):
        ds = VideoDataset(recs[:2], _cfg(), train=True, token_grid=(2, 2, 2), mask_generator=MotionGuidedMask(0.5))
        for i in range(2):
            ds[i]
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("reading codec motion vectors" in m for m in msgs) == 1
    assert not any("no codec motion vectors" in m for m in msgs), msgs
    _, _, motion = ds._decode(recs[0], [torch.Generator().manual_seed(0)], ds.read_motion)
    assert motion is not None and motion.abs().sum() > 0
    with pytest.raises(ConfigError, match="data.cache='memory'"):
        VideoDataset(recs[:2], _cfg(cache="memory"), train=True, token_grid=(2, 2, 2),
                     mask_generator=MotionGuidedMask(0.5))
    plain = VideoDataset(recs[:2], _cfg(cache="memory"), train=True, token_grid=(2, 2, 2),
                         mask_generator=MotionGuidedMask(0.5, "framediff"))
    assert not plain.read_motion


def test_replaced_video_is_logged_once_per_run_across_workers(root, tmp_path):
    """Two DataLoader workers, two epochs (fresh workers each): broken.mp4 is logged once."""
    recs, _ = _records(root)
    broken = [r for r in recs if r.path.endswith("broken.mp4")]
    good = [r for r in recs if r.path.endswith("walk.mp4")]
    ds = VideoDataset([*broken * 2, *good * 3], _cfg(max_load_retries=50), train=True)
    lines = [l for l in _two_epochs_in_workers(ds, tmp_path) if "unreadable video" in l]
    assert len(lines) == 1 and lines[0].count("broken.mp4") == 1, lines


def test_a_frame_range_past_the_videos_end_is_unreadable_not_clipped(root, caplog):
    """Issue 28 re-trial 15 (S3): a record whose end_frame (or start_frame) lies past the video's end
    was read from the frames there, clipped without a word. Now it is one of the unreadable cases
    the dataset reports: left out (evaluation) or replaced (training), counted, named once."""
    walk = str(root / "videos" / "walk.mp4")  # 48 frames
    past = VideoRecord(walk, 0, "past", 4, 60)
    ds = VideoDataset([past, VideoRecord(walk, 0, "in", 4, 40)], _cfg(), train=False)
    ds.substitute = False
    sample = ds[0]
    assert sample["unreadable"] and "[4, 60)" in sample["load_error"] and "48 frames" in sample["load_error"]
    assert not ds[1]["unreadable"]
    late = VideoDataset([VideoRecord(walk, 0, "late", 50, None), VideoRecord(walk, 0, "in", 4, 40)], _cfg(),
                        train=False)
    late.substitute = False
    assert late[0]["unreadable"] and "from frame 50" in late[0]["load_error"] and "48 frames" in late[0]["load_error"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train = VideoDataset([past, VideoRecord(walk, 0, "in", 4, 40)], _cfg(max_load_retries=50), train=True)
        for _ in range(3):
            assert train[0]["video_id"] == "in"  # replaced, never read clipped
    assert train.failures >= 3 and caplog.text.count("[4, 60)") == 1, caplog.text


def _ucf_lists(root, test_list: str, test_rows: str, split: int = 1):
    """A UCF101 list folder under root (classes Animation, Biking; trainlist01 of a.avi, b.avi) and
    its DataConfig naming the train list file, with no val annotations."""
    from tgmae.config import DataConfig

    folder = root / "ucfTrainTestlist"
    folder.mkdir()
    (folder / "classInd.txt").write_text("1 Animation\n2 Biking\n")
    (folder / "trainlist01.txt").write_text("Animation/a.avi 1\nBiking/b.avi 2\n")
    (folder / test_list).write_text(test_rows)
    return DataConfig(format="ucf101", root=str(root), train_annotations="ucfTrainTestlist/trainlist01.txt",
                      val_annotations="", split=split)


def test_an_empty_val_annotations_reads_the_test_list_beside_a_train_list_file(tmp_path):
    """UCF101 with data.train_annotations = the trainlist file and no val annotations: the val set
    is testlist01.txt of that folder, never the train list read again (a silent train-as-val)."""
    from tgmae.data.dataset import build_dataset

    cfg = _ucf_lists(tmp_path, "testlist01.txt", "Biking/c.avi\n")
    assert [r.video_id for r in build_dataset(cfg, "val").records] == ["Biking/c"]
    assert [r.video_id for r in build_dataset(cfg, "train").records] == ["Animation/a", "Biking/b"]


def test_a_train_list_of_another_split_than_data_split_is_refused(tmp_path):
    """trainlist01.txt with data.split=2 would pair split 1's train list with split 2's test list
    (videos in both): refused naming data.split."""
    from tgmae.config import ConfigError, DataConfig
    from tgmae.data.dataset import build_dataset, subset_annotations

    cfg = _ucf_lists(tmp_path, "testlist02.txt", "Animation/a.avi\n", split=2)
    with pytest.raises(ConfigError, match=r"data.split=2: .*trainlist01.txt"):
        build_dataset(cfg, "val")
    with pytest.raises(ConfigError, match=r"data.split=2: .*trainlist01.txt"):  # the folder named as val
        build_dataset(dataclasses.replace(cfg, val_annotations="ucfTrainTestlist"), "val")
    assert subset_annotations(cfg, "train") == "ucfTrainTestlist/trainlist01.txt"
    csv = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv", val_annotations="")
    assert subset_annotations(csv, "val") == ""  # only split-folder formats read a test list beside


def test_a_test_list_of_only_training_videos_is_refused_naming_both_keys(caplog, tmp_path):
    """Issue 28 re-trial 15 (S1): a split-folder train list that is the test list itself
    (UCF101 testlist01.txt, SSv2 validation.json) with data.val_annotations empty read the same
    file again as the test set: "test top-1" on the training videos. The check refuses a val/test
    list whose videos are all training videos, naming both keys; a proper split passes."""
    import json

    from tgmae.config import ConfigError, DataConfig
    from tgmae.data.dataset import refuse_training_videos_as_test

    cfg = _ucf_lists(tmp_path, "testlist01.txt", "Biking/c.avi\n")
    refuse_training_videos_as_test(cfg)  # trainlist01 + testlist01 beside it: other videos
    same = dataclasses.replace(cfg, train_annotations="ucfTrainTestlist/testlist01.txt")
    with pytest.raises(ConfigError, match=r"data.val_annotations.*data.train_annotations") as e:
        refuse_training_videos_as_test(same)
    assert "testlist01.txt" in str(e.value) and "\n" not in str(e.value)
    ssv2 = tmp_path / "ssv2"
    ssv2.mkdir()
    (ssv2 / "labels.json").write_text(json.dumps({"Pushing something": "0"}))
    item = {"id": "7", "template": "Pushing [something]", "label": "Pushing a cup", "placeholders": ["a cup"]}
    (ssv2 / "validation.json").write_text(json.dumps([item]))
    ssv2_cfg = DataConfig(format="ssv2", root=str(ssv2), train_annotations="validation.json", val_annotations="")
    with pytest.raises(ConfigError, match=r"data.val_annotations.*data.train_annotations.*validation.json"):
        refuse_training_videos_as_test(ssv2_cfg)
    (tmp_path / "train.csv").write_text("path,label\na.mp4,walk\nb.mp4,run\n")
    (tmp_path / "copy.csv").write_text("path,label\nb.mp4,run\n")  # another file, training videos only
    csv = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv", val_annotations="copy.csv")
    with pytest.raises(ConfigError, match=r"data.val_annotations=copy.csv.*data.train_annotations=train.csv"):
        refuse_training_videos_as_test(csv)
    refuse_training_videos_as_test(dataclasses.replace(csv, val_annotations=""))  # no test set: nothing to refuse
    # some training videos among other ones: the test goes on, the overlap said with its count
    (tmp_path / "some.csv").write_text("path,label\nb.mp4,run\nc.mp4,walk\n")
    with caplog.at_level("WARNING", logger="tgmae"):
        refuse_training_videos_as_test(dataclasses.replace(csv, val_annotations="some.csv"))
    assert "data.val_annotations=some.csv: 1 of its 2 videos is a training video" in caplog.text
    caplog.clear()  # re-trial 16A (M5): set-up and test check the same lists; said once, naming the list
    with caplog.at_level("WARNING", logger="tgmae"):
        refuse_training_videos_as_test(dataclasses.replace(csv, val_annotations="some.csv"))
    assert "training video" not in caplog.text


def test_a_list_without_any_label_is_refused_naming_its_key_and_file(tmp_path):
    """Re-trial 29B S2, T2: a test list shipped without labels (SSv2 test.json, Kinetics test.csv
    without a label column: every record UNLABELLED) was scored as wrong answers (k-NN top-1 0.0)
    or failed after decoding. `refuse_unlabelled` refuses it in one line naming the key, the file and
    why the command needs labels; labelled lists, no list and a dataset without records pass."""
    import shutil

    from tgmae.config import ConfigError
    from tgmae.data.dataset import refuse_unlabelled

    ssv2 = DataConfig(format="ssv2", root=str(FIXTURES / "ssv2"), train_annotations="train.json",
                      val_annotations="test.json")
    with pytest.raises(ConfigError, match=r"^data.val_annotations=test.json has no labels \(a test list, 2 videos "
                                          r"without a label\), and it scores them: name a list with labels$"):
        refuse_unlabelled(ssv2, "val", use="it scores them")
    refuse_unlabelled(ssv2, "train", use="it trains on them")  # labelled
    with pytest.raises(ConfigError, match=r"^data.train_annotations=test.json has no labels"):
        refuse_unlabelled(dataclasses.replace(ssv2, train_annotations="test.json"), "train", use="it trains on them")
    refuse_unlabelled(dataclasses.replace(ssv2, val_annotations=""), "val", use="-")  # validation.json beside
    refuse_unlabelled(ssv2, "val", torch.utils.data.TensorDataset(torch.zeros(2)), use="-")  # no records: unknown
    given = torch.utils.data.TensorDataset(torch.zeros(2))  # a dataset's own records, not the list cfg names
    given.records = [VideoRecord("a.mp4", -1, "a"), VideoRecord("b.mp4", 0, "b")]
    with pytest.raises(ConfigError, match=r"^data.val_annotations=test.json: 1 of its 2 videos have no label "
                                          r"\(first: 'a'\), and -: label them or leave them out$"):
        refuse_unlabelled(ssv2, "val", given, use="-")  # some: scored as wrong, or a head's crash (29B T1)
    given.records = given.records[:1]
    with pytest.raises(ConfigError, match=r"^data.val_annotations=test.json has no labels \(a test list, 1 video "):
        refuse_unlabelled(ssv2, "val", given, use="-")
    k400 = tmp_path / "k400"
    shutil.copytree(FIXTURES / "k400", k400)
    rows = (k400 / "validate.csv").read_text().splitlines()
    (k400 / "test.csv").write_text("youtube_id,time_start,time_end,split\n"
                                   + "".join(",".join(r.split(",")[1:]) + "\n" for r in rows[1:]))
    k400_cfg = DataConfig(format="k400", root=str(k400), train_annotations="train.csv", val_annotations="test.csv")
    with pytest.raises(ConfigError, match=r"^data.val_annotations=test.csv has no labels"):
        refuse_unlabelled(k400_cfg, "val", use="-")


def test_a_test_list_of_a_checkpoints_training_videos_is_refused_naming_its_config(caplog, tmp_path):
    """Issue 28 re-trial 16B (S1): `trained_on` compares the test list with the list a checkpoint
    trained on (its run's saved data settings), not this command's data.train_annotations: all of
    them refused naming the config file, some warned with their count, the same list as this
    command's own left to the plain check (said once, not twice)."""
    from tgmae.config import ConfigError, DataConfig
    from tgmae.data.dataset import refuse_training_videos_as_test

    (tmp_path / "train.csv").write_text("path,label\na.mp4,walk\nb.mp4,run\n")
    (tmp_path / "val.csv").write_text("path,label\nc.mp4,walk\n")
    (tmp_path / "some.csv").write_text("path,label\nb.mp4,run\nc.mp4,walk\n")
    run_data = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv", val_annotations="val.csv")
    swapped = dataclasses.replace(run_data, train_annotations="val.csv", val_annotations="train.csv")
    refuse_training_videos_as_test(swapped)  # this command's own training list: other videos
    with pytest.raises(ConfigError, match=r"data.val_annotations=train.csv: .*data.train_annotations=train.csv "
                                          r"in RUN/config.yaml") as e:
        refuse_training_videos_as_test(swapped, trained_on=(run_data, "RUN/config.yaml"))
    assert "\n" not in str(e.value)
    assert "start from a model that did not train on them" in str(e.value)  # re-trial 21A: a way out
    with caplog.at_level("WARNING", logger="tgmae"):
        refuse_training_videos_as_test(dataclasses.replace(swapped, val_annotations="some.csv"),
                                       trained_on=(run_data, "RUN/config.yaml"))
        assert "1 of its 2 videos is a training video of data.train_annotations=train.csv in RUN" in caplog.text
        caplog.clear()
        refuse_training_videos_as_test(dataclasses.replace(run_data, val_annotations="some.csv"),
                                       trained_on=(run_data, "RUN/config.yaml"))  # cfg's own list: its own check
        assert caplog.text == ""
        # re-trial 17A (S3): the run's list does not read from here (a relative root, a deleted file): said
        gone = dataclasses.replace(run_data, root="elsewhere")
        refuse_training_videos_as_test(swapped, trained_on=(gone, "RUN/config.yaml"))
        assert "not compared with the training videos of data.train_annotations=train.csv in RUN" in caplog.text


def test_a_clip_longer_than_every_video_is_refused_at_set_up_naming_the_longest(tmp_path):
    """Issue #28.7: data.num_frames beyond every video was refused only after each item's retries
    (max_load_retries + 1 decodes per item). The frame counts known cheaply (the frame index when
    cached, a frame folder's files, else the container's stated count; the longest confirmed by
    its index) now refuse it at set-up, naming data.num_frames and the longest video's frames."""
    from tgmae.config import ConfigError

    paths = []
    for i, t in enumerate((6, 10, 8)):
        paths.append(tmp_path / f"v{i}.mp4")
        write_video(paths[-1], _clip(t, 32, 32, i))
    recs = [VideoRecord(str(p), 0, p.stem) for p in paths] + [VideoRecord(str(tmp_path / "gone.mp4"), 0, "gone")]
    with pytest.raises(ConfigError) as e:
        VideoDataset(recs, _cfg(num_frames=12, max_load_retries=50), train=True)
    msg = str(e.value)
    assert "data.num_frames=12" in msg and "10 frames" in msg and "v1.mp4" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="data.num_frames=12"):
        MultiViewDataset(recs, _cfg(num_frames=12))
    assert "no video holds one" in msg and "multiple of model.tubelet_size" in msg  # re-trial 17B (N2)
    ranged = [VideoRecord(str(paths[1]), 0, "r", start_frame=4)]  # 6 frames in its range
    with pytest.raises(ConfigError, match="6 frames") as e:
        VideoDataset(ranged, _cfg(num_frames=8), train=True)
    assert "and the video has 6 frames in its range" in str(e.value)  # one video (`visualize --video`): said so
    one = tmp_path / "one.mp4"  # re-trial 19A: "lower data.num_frames to 1 or less", "1 frames"
    write_video(one, _clip(1, 32, 32, 0))
    with pytest.raises(ConfigError) as e:
        VideoDataset([VideoRecord(str(one), 0, "one")], _cfg(num_frames=4), train=True)
    assert "the video has 1 frame (" in str(e.value) and "lower" not in str(e.value)
    assert len(VideoDataset(recs, _cfg(num_frames=10), train=True)) == 4  # one video holds a clip: no refusal


def test_check_videos_known_gives_the_mask_generator_each_records_file():
    """A TGM cache checks its maps were made from the files the run reads (a video replaced in
    place since `tgmae masks` is refused at set-up): the generator gets {id: path}."""
    from tgmae.data.annotations import VideoRecord
    from tgmae.data.dataset import check_videos_known

    seen = {}

    class Generator:
        def check_videos(self, ids, paths):
            seen.update(ids=ids, paths=paths)

    records = [VideoRecord("/d/a.mp4", 0, "a"), VideoRecord("/d/b.mp4", 1, "b")]
    check_videos_known(records, None, Generator())
    assert seen == {"ids": ["a", "b"], "paths": {"a": "/d/a.mp4", "b": "/d/b.mp4"}}


def test_without_workers_a_dataset_puts_nothing_in_shared_memory(root):
    """Issue 28 (re-trial 9): `pretrain data.num_workers=0` under a small file-size limit (or a full
    /dev/shm) died in build_dataset with torch's "unable to resize file </torch_...>": the
    epoch counter and the logged-videos table went to shared memory for workers there were none
    of. Without workers they are plain tensors; with workers they are still shared."""
    recs, _ = _records(root)
    alone = VideoDataset(recs, _cfg(num_workers=0), train=True)
    assert not alone._epoch.is_shared() and not alone._logged.table.is_shared()
    alone.set_epoch(3)
    assert alone.epoch == 3
    # read by persistent workers anyway: refused, not every epoch drawn as the first
    with pytest.raises(RuntimeError, match="data.num_workers=0"):
        next(iter(DataLoader(alone, batch_size=1, num_workers=1)))
    shared = VideoDataset(recs, _cfg(num_workers=2), train=True)
    assert shared._epoch.is_shared() and shared._logged.table.is_shared()


def test_without_workers_the_mgm_generator_puts_nothing_in_shared_memory(root):
    """Issue 28: MGM's table of videos whose fallback was logged went to shared memory always (the
    generator does not know the worker count), so data.num_workers=0 under a small /dev/shm could
    still fail there. The dataset tells its generator: shared only for DataLoader workers."""
    from tgmae.masking.mgm import MotionGuidedMask

    recs, _ = _records(root)
    alone = MotionGuidedMask(0.5)
    VideoDataset(recs[:2], _cfg(num_workers=0), train=True, token_grid=(2, 2, 2), mask_generator=alone)
    assert not alone.warned.table.is_shared()
    workers = MotionGuidedMask(0.5)
    VideoDataset(recs[:2], _cfg(num_workers=2), train=True, token_grid=(2, 2, 2), mask_generator=workers)
    assert workers.warned.table.is_shared()


def test_captions_of_another_data_sets_videos_are_refused_at_set_up(root, tmp_path, caplog):
    """Issue #28 re-trial 11, S1: a caption store made for another data set with the same video
    ids trained TGM with the other set's captions. A record's recorded video identity must be
    the file's this run reads; a store without identities (older) is used as before, logged."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.captions.store import CaptionRecord, CaptionStoreError, write_store
    from tgmae.data.fileid import video_identity

    recs, _ = _records(root)
    other = tmp_path / "other.mp4"
    write_video(other, _clip(8, 32, 32, 9))
    ident = {r.video_id: video_identity(str(r.path)) for r in recs}
    ident[recs[0].video_id] = video_identity(str(other))  # captioned from another set's file
    store = tmp_path / "caps.jsonl"
    write_store(store, [CaptionRecord(r.video_id, ["a clip"], "oracle", "{}", {"video": ident[r.video_id]})
                        for r in recs])
    with pytest.raises(CaptionStoreError, match=rf"{store}.*{recs[0].video_id!r}"):
        VideoDataset(recs, _cfg(), train=True, captions=CaptionProvider.from_files(store))
    write_store(store, [CaptionRecord(r.video_id, ["a clip"], "oracle", "{}", {"video": video_identity(str(r.path))})
                        for r in recs])
    VideoDataset(recs, _cfg(), train=True, captions=CaptionProvider.from_files(store))  # its own files: accepted
    import shutil

    copy = shutil.copytree(root, tmp_path / "copy")  # to a node's local disk: new inodes and ctimes
    copied = [dataclasses.replace(r, path=str(Path(copy) / Path(r.path).relative_to(root)))
              for r in recs]
    assert video_identity(copied[0].path) != video_identity(str(recs[0].path))
    VideoDataset(copied, _cfg(), train=True, captions=CaptionProvider.from_files(store))  # a copy keeps its captions
    write_store(store, [CaptionRecord(r.video_id, ["a clip"], "oracle", "{}") for r in recs])
    with caplog.at_level("INFO"):
        VideoDataset(recs, _cfg(), train=True, captions=CaptionProvider.from_files(store))
    assert any(str(store) in m.getMessage() and "no video identities" in m.getMessage() for m in caplog.records)


def test_videos_shorter_than_the_clip_span_are_counted_and_said_once(tmp_path):
    """Issue #28 re-trial 11, m1: a video shorter than the clip's span ((data.num_frames - 1) x
    data.frame_stride + 1) was read with a smaller stride without a word. Now the dataset counts
    such videos as it reads them (once each, across DataLoader workers and epochs: `short_videos`)
    and says so once, naming the video and the keys; tsn sampling has no stride: nothing counted."""
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "short.mp4", _clip(6, 32, 32, 0), fps=25)
    write_video(tmp_path / "v" / "long.mp4", _clip(24, 32, 32, 1), fps=25)
    recs = [VideoRecord(str(tmp_path / "v" / n), 0, n) for n in ("short.mp4", "long.mp4", "short.mp4")]
    ds = VideoDataset(recs, _cfg(frame_stride=4, num_workers=2), train=True)  # span 13
    lines = [l for l in _two_epochs_in_workers(ds, tmp_path) if "shorter than" in l]
    assert ds.short_videos == 1
    assert len(lines) == 1 and "short.mp4" in lines[0] and "data.frame_stride=4" in lines[0], lines
    tsn = VideoDataset(recs, _cfg(frame_stride=4, sampling="tsn"), train=True)
    for i in range(len(recs)):
        tsn[i]
    assert tsn.short_videos == 0


def test_short_videos_beside_a_truncated_one_are_refused_at_set_up_naming_the_key(tmp_path):
    """issue 28 re-trial 14, M2: data.num_frames=400 on a set of short videos with a truncated and a
    zero-byte file among them was refused only after the first batch's retries, not naming
    data.num_frames: the truncated file, confirmed at 0 frames, hid the other videos' stated counts."""
    from tgmae.config import ConfigError

    paths = []
    for i, t in enumerate((6, 10)):
        paths.append(tmp_path / f"v{i}.mp4")
        write_video(paths[-1], _clip(t, 32, 32, i))
    (tmp_path / "trunc.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    (tmp_path / "zero.mp4").write_bytes(b"")
    recs = [VideoRecord(str(p), 0, p.stem) for p in [*paths, tmp_path / "trunc.mp4", tmp_path / "zero.mp4"]]
    with pytest.raises(ConfigError) as e:  # far from every video: no near miss to confirm
        VideoDataset(recs, _cfg(num_frames=40), train=True)
    assert "data.num_frames=40" in str(e.value) and "v1.mp4" in str(e.value) and "10 frames" in str(e.value)


def test_every_replacement_too_short_or_unreadable_names_data_num_frames(tmp_path, monkeypatch):
    """issue 28 re-trial 14, M2: when no video tried could be read and the readable ones were all too
    short ("too short: 250 frames ..., need 400" beside zero-byte files), the line said only
    data.max_load_retries; it names data.num_frames, the key to change."""
    monkeypatch.setattr("tgmae.data.dataset.check_clip_fits", lambda *a: None)  # headers that do not tell
    paths = []
    for i, t in enumerate((6, 10)):
        paths.append(tmp_path / f"v{i}.mp4")
        write_video(paths[-1], _clip(t, 32, 32, i))
    (tmp_path / "zero.mp4").write_bytes(b"")
    recs = [VideoRecord(str(p), 0, p.stem) for p in [*paths, tmp_path / "zero.mp4"]]
    ds = VideoDataset(recs, _cfg(num_frames=12, max_load_retries=8), train=True)
    with pytest.raises(VideoLoadError) as e:
        ds[2]
    msg = str(e.value)
    assert "data.num_frames=12" in msg and "too short" in msg and "\n" not in msg
    ok = VideoDataset(recs, _cfg(num_frames=4, max_load_retries=8), train=True)  # a clip fits: replaced, served
    assert ok[2]["video"].shape[1] == 4


def _short_and_long(tmp_path, short: int, long: int) -> list:
    """Records of `short` 6-frame videos and `long` 24-frame ones, short first."""
    recs = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate([6] * short + [24] * long):
        path = tmp_path / f"v{i}_{t}.mp4"
        write_video(path, _clip(t, 32, 32, i))
        recs.append(VideoRecord(str(path), 0, path.stem))
    return recs


def test_a_training_set_of_mostly_too_short_videos_is_refused_at_set_up(tmp_path):
    """Re-trial 30B M2: with 200 of 240 rows too short, the seeded replacement draws all landed on
    short videos at step 19 and the run stopped saying "no video long enough", though some were.
    A training set where most rows are too short is refused at set-up saying how many; one where
    some are trains as before, and so does a test set (whose videos are never replaced)."""
    from tgmae.config import ConfigError

    recs = _short_and_long(tmp_path, 3, 1)
    with pytest.raises(ConfigError) as e:
        VideoDataset(recs, _cfg(num_frames=12), train=True)
    msg = str(e.value)
    assert msg.startswith("data.num_frames=12: 3 of its 4 rows are too short for a clip of 12 frames"), msg
    assert "data.max_load_retries" in msg and "--min-frames 12" in msg and "\n" not in msg
    VideoDataset(recs, _cfg(num_frames=12), train=False)
    VideoDataset(recs[1:] + _short_and_long(tmp_path / "more", 0, 1), _cfg(num_frames=12), train=True)  # 2 of 4


def test_replacement_draws_that_run_out_say_so_and_how_many_rows_are_short(tmp_path, monkeypatch):
    """Re-trial 30B M2: the draws' running out was said as "no video long enough in 21 tries" though
    some were. It says that the draws (data.max_load_retries) ran out, and how many rows are short."""
    monkeypatch.setattr("tgmae.data.dataset.check_clip_fits", lambda *a: None)  # as for headers that do not tell
    recs = _short_and_long(tmp_path, 3, 1)
    ds = VideoDataset(recs, _cfg(num_frames=12, max_load_retries=1), train=True)
    errors = []
    for i in range(3):
        try:
            ds[i]
        except VideoLoadError as e:
            errors.append(str(e))
    assert errors, "no draw ran out"
    msg = errors[0]
    assert "no video long enough" not in msg and "\n" not in msg, msg
    assert "data.max_load_retries=1" in msg and "draws ran out" in msg and "3 of its 4 rows are too short" in msg, msg
    assert "raise data.max_load_retries" in msg and "the others may hold a clip" in msg, msg


def test_check_videos_known_gives_the_captions_each_records_frame_range():
    """issue 28 re-trial 16B, S2: the caption provider compares each record's captioned range with
    the clip's now, so check_videos_known hands it {id: [start, end]} beside the paths."""
    from tgmae.data.annotations import VideoRecord
    from tgmae.data.dataset import check_videos_known

    seen = {}

    class Captions:
        def check_videos(self, ids, paths, frames=None, texts=None):
            seen.update(ids=ids, paths=paths, frames=frames, texts=texts)

    records = [VideoRecord("/d/a.mp4", 0, "a", 20, 48), VideoRecord("/d/b.mp4", 1, "b", caption="b's text")]
    check_videos_known(records, Captions(), None)
    assert seen["frames"] == {"a": [20, 48], "b": [0, None]}
    assert seen["texts"] == {"a": (None, None), "b": ("b's text", None)}  # no class names given
    check_videos_known(records, Captions(), None, ["walk", "jump"])
    assert seen["texts"] == {"a": (None, "walk"), "b": ("b's text", "jump")}


def test_a_training_set_refuses_an_oracle_store_of_a_class_renamed_since(root, tmp_path):
    """re-trial 29B S1 follow-up: training read an `--oracle` store made before classes.txt renamed
    a class, and trained on the old name. The dataset built for training hands its class names to
    the captions' set-up check, which refuses naming the store and both names."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.captions.sources import oracle_records, videos_with_classes
    from tgmae.captions.store import CaptionStoreError

    ann = tmp_path / "train.csv"
    ann.write_text((FIXTURES / "csv" / "train.csv").read_text())
    (tmp_path / "classes.txt").write_text("walking\njumping\n")
    cfg = _cfg(root=str(root), train_annotations=str(ann))
    recs, classes = load_annotations("csv", root, ann)
    store = str(tmp_path / "oracle.jsonl")
    captions = CaptionProvider(oracle_records(videos_with_classes(recs, classes)), source_file=store)
    assert build_dataset(cfg, "train", captions=captions).class_names == ["walking", "jumping"]
    (tmp_path / "classes.txt").write_text("walking\nhopping\n")
    with pytest.raises(CaptionStoreError) as e:
        build_dataset(cfg, "train", captions=captions)
    msg = str(e.value)
    assert msg.startswith(f"{store}: 2 video(s)") and "'jumping' in the store, 'hopping' now" in msg
