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
