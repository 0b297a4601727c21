"""`tgmae demo-pretrain` (`tgmae.train.demo_pretrain`): the synthetic set it keeps and the run on it."""

from __future__ import annotations

import json

import pytest

TINY = ["model.preset=micro", "data.num_frames=4", "data.image_size=32", "train.max_steps=1", "log.progress=false",
        "log.tensorboard=false", "data.num_workers=0", "train.batch_size=4", "train.precision=fp32"]


def test_a_rerun_keeps_its_set_and_another_num_videos_is_refused(tmp_path, capsys):
    """Re-trial 20A (S3): a rerun with --num-videos 40 into a folder holding a 20-video set kept the
    20 videos without a word (the set was kept whenever data/train.csv existed; --quick fixed 32)."""
    from tgmae.cli import main

    out = tmp_path / "demo"
    argv = ["demo-pretrain", "--out", str(out), *TINY]
    assert main([*argv, "--num-videos", "8"]) == 0
    assert json.loads((out / "data" / "meta.json").read_text())["num_videos"] == 8
    assert main([*argv, "--num-videos", "8"]) == 0  # the same set: kept, the finished run left as it is
    capsys.readouterr()
    assert main([*argv, "--num-videos", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_videos" in err[0] and str(out / "data") in err[0], err
    assert json.loads((out / "data" / "meta.json").read_text())["num_videos"] == 8
    from tgmae.errors import SettingsError
    from tgmae.train.demo_pretrain import demo_pretrain

    with pytest.raises(SettingsError, match="num_videos"):  # --quick's own size (32) is another set too
        demo_pretrain(out, quick=True, overrides=TINY)
