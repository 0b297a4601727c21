"""The feature cache's writer (`tgmae.evaluate.features.write_cached`): a killed write leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tgmae.evaluate.features import write_cached


def test_a_killed_cache_write_leaves_no_temp_of_safetensors_beside_the_cache(tmp_path, monkeypatch):
    import safetensors.torch as st

    def dying_save(tensors, filename, metadata=None):
        # as safetensors' save_file does: a `.tmpXXXXXX` of its own beside the file, renamed at the end
        (Path(filename).parent / ".tmpAb12Cd").write_bytes(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(st, "save_file", dying_save)
    path = tmp_path / "features" / "train-abc.safetensors"
    with pytest.raises(KeyboardInterrupt):
        write_cached(path, torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), {"k": 1})
    assert list(path.parent.iterdir()) == []
    monkeypatch.undo()
    write_cached(path, torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"k": 1})
    assert [p.name for p in path.parent.iterdir()] == ["train-abc.safetensors"]


def test_a_cache_hit_clears_killed_writers_temps_beside_it(tmp_path):
    import subprocess
    import sys

    from tgmae.atomic import temp_path
    from tgmae.evaluate.features import read_cached

    path = tmp_path / "features" / "train-abc.safetensors"
    write_cached(path, torch.ones(2, 3), torch.zeros(2, dtype=torch.int64), {"k": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_path(path.parent / "val-def.safetensors")
    stale = mine.with_name(mine.name.replace(f"-{__import__('os').getpid()}-", f"-{dead.pid}-"))
    stale.mkdir()
    (stale / ".tmpAbCdEf").write_bytes(b"partial")
    assert read_cached(path) is not None
    assert [p.name for p in path.parent.iterdir()] == ["train-abc.safetensors"]


def test_val_features_beside_a_train_list_are_keyed_by_the_test_list_read(tmp_path):
    """UCF101 with only data.train_annotations (a trainlist file): the val features come from the
    folder's test list, and a change to that list is another cache key (never a stale hit)."""
    from tgmae.config import DataConfig
    from tgmae.evaluate.features import feature_cache_key

    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "classInd.txt").write_text("1 A\n")
    (folder / "trainlist01.txt").write_text("A/a.avi 1\n")
    (folder / "testlist01.txt").write_text("A/b.avi\n")
    cfg = DataConfig(format="ucf101", root=str(tmp_path), train_annotations="lists/trainlist01.txt", val_annotations="")
    key, inputs = feature_cache_key("enc", cfg, "val")
    assert inputs["data"]["annotations"] == str(folder)
    (folder / "testlist01.txt").write_text("A/c.avi\n")
    assert feature_cache_key("enc", cfg, "val")[0] != key
    assert feature_cache_key("enc", cfg, "train")[1]["data"]["annotations"] == "lists/trainlist01.txt"


def test_another_file_at_a_video_path_is_another_feature_cache_key(tmp_path):
    """Features belong to the files they were computed from: a video replaced in place (same path,
    other bytes) must not hit the old cache (re-trial: a probe reused stale features)."""
    import os

    from tgmae.config import DataConfig
    from tgmae.evaluate.features import feature_cache_key

    (tmp_path / "train.csv").write_text("path,label\na.mp4,0\n")
    video = tmp_path / "a.mp4"
    video.write_bytes(b"one")
    cfg = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv")
    key = feature_cache_key("enc", cfg, "train", videos=[str(video)])[0]
    assert feature_cache_key("enc", cfg, "train", videos=[str(video)])[0] == key
    video.write_bytes(b"other")
    os.utime(video, ns=(1, 1))
    assert feature_cache_key("enc", cfg, "train", videos=[str(video)])[0] != key


def test_class_names_in_their_order_are_part_of_the_feature_cache_key(tmp_path):
    """Cached labels are numbers in the dataset's class order: a reordered classes.txt (same
    annotation file, labels given as names) must miss the cache, not hand back the old numbers."""
    from tgmae.config import DataConfig
    from tgmae.evaluate.features import feature_cache_key

    (tmp_path / "train.csv").write_text("path,label\na.mp4,Walking\n")
    cfg = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv")
    key, inputs = feature_cache_key("enc", cfg, "train", classes=["Animation", "Biking", "Walking"])
    assert inputs["data"]["class_names"] == ["Animation", "Biking", "Walking"]
    assert feature_cache_key("enc", cfg, "train", classes=["Animation", "Biking", "Walking"])[0] == key
    assert feature_cache_key("enc", cfg, "train", classes=["Walking", "Biking", "Animation"])[0] != key


def _clips_and_encoder(tmp_path: Path, end_c: int):
    """A csv of three 12-frame videos, c.mp4's row ending at frame `end_c` (past the end when > 12),
    the dataset over it and a tiny random encoder."""
    import numpy as np

    from tgmae.config import DataConfig
    from tgmae.data.dataset import build_dataset
    from tgmae.data.video import write_video
    from tgmae.models.arch import VideoMAEArch
    from tgmae.models.encoder import VideoViTEncoder

    for i, name in enumerate("abc"):
        if not (tmp_path / f"{name}.mp4").exists():
            frames = np.random.default_rng(i).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
            write_video(tmp_path / f"{name}.mp4", frames)
    (tmp_path / "train.csv").write_text("path,label,video_id,start_frame,end_frame\n"
                                        f"a.mp4,0,a,0,12\nb.mp4,1,b,0,12\nc.mp4,0,c,0,{end_c}\n")
    cfg = DataConfig(format="csv", root=str(tmp_path), train_annotations="train.csv", num_frames=4,
                     frame_stride=2, image_size=16)
    torch.manual_seed(0)
    arch = VideoMAEArch(embed_dim=16, depth=1, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                        image_size=16, decoder_dim=16, decoder_depth=1, decoder_heads=1)
    return cfg, build_dataset(cfg, "train", train=False), VideoViTEncoder(arch).eval()


def test_features_with_videos_no_rerun_can_read_are_cached_with_them_named(tmp_path, monkeypatch, caplog):
    """Re-trial 24A M2: a k-NN probe with one row whose frames lie past its video's end warned "1
    videos could not be read ...; not caching" and every later run extracted every feature again.
    A verdict on the file or row (out_of_range here) is met by every rerun: the features are cached
    with the videos left out and why, a rerun on the same list reuses them (and names them again),
    eval.strict still refuses, and a fixed row is another cache key."""
    import logging

    from tgmae.data.dataset import VideoLoadError
    from tgmae.evaluate import features
    from tgmae.evaluate.features import cached_features, feature_cache_key

    cfg, data, enc = _clips_and_encoder(tmp_path, 40)
    key, inputs = feature_cache_key("enc", cfg, "train", videos=[r.path for r in data.records])
    path = tmp_path / "features" / f"train-{key}.safetensors"
    first: list = []
    feats, labels = cached_features(enc, data, path, inputs, unreadable=first, batch_size=2)
    assert feats.shape[0] == 2 and [(u["video_id"], u["kind"]) for u in first] == [("c", "out_of_range")]
    assert path.is_file()

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(features, "extract_features", no_extraction)
    again: list = []
    with caplog.at_level(logging.INFO, logger="tgmae"):
        feats2, labels2 = cached_features(enc, data, path, inputs, unreadable=again, batch_size=2)
    assert torch.equal(feats2, feats) and torch.equal(labels2, labels) and again == first
    assert any("features from cache" in r.getMessage() and "1 video left out" in r.getMessage()
               for r in caplog.records), caplog.text
    monkeypatch.undo()
    with pytest.raises(VideoLoadError, match="feature extraction: 1 of 3"):  # strict: never from a cache that left some out
        cached_features(enc, data, path, inputs, strict=True, batch_size=2)

    cfg, data, enc = _clips_and_encoder(tmp_path, 12)  # the row fixed
    assert feature_cache_key("enc", cfg, "train", videos=[r.path for r in data.records])[0] != key


def test_features_with_a_read_error_are_not_cached_saying_why(tmp_path, monkeypatch, caplog):
    """A read error that is no verdict on the file (an OSError while decoding: a network file
    system's hiccup) may not recur: those features are not cached, and the warning says why and
    how to get the cache (rerun once every video reads)."""
    import logging

    from tgmae.data.video import VideoReader
    from tgmae.evaluate.features import cached_features

    cfg, data, enc = _clips_and_encoder(tmp_path, 40)
    real = VideoReader.read

    def flaky(self, idx, **kw):
        if self.path.endswith("b.mp4"):
            raise OSError(5, "Input/output error")
        return real(self, idx, **kw)

    monkeypatch.setattr(VideoReader, "read", flaky)
    path = tmp_path / "features" / "train-x.safetensors"
    left: list = []
    with caplog.at_level(logging.WARNING, logger="tgmae"):
        feats, _ = cached_features(enc, data, path, {}, unreadable=left, batch_size=2)
    assert feats.shape[0] == 1 and sorted((u["video_id"], u["kind"]) for u in left) == [("b", ""), ("c", "out_of_range")]
    assert not path.exists()
    said = [r.getMessage() for r in caplog.records if "not caching" in r.getMessage()]
    assert len(said) == 1 and "read error" in said[0] and "b.mp4" in said[0] and "rerun" in said[0], said
