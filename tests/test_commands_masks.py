"""`tgmae masks` (`tgmae.commands.masks`): what is refused before CLIP is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from tgmae.cli import main


def _no_clip(monkeypatch) -> list:
    """load_clip replaced by a recorder that fails: a test sees whether the command got that far."""
    from tgmae.clip import features

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("CLIP was loaded")

    monkeypatch.setattr(features, "load_clip", refuse)
    return calls


def test_no_video_on_disk_is_one_line_before_clip_is_loaded(tmp_path, monkeypatch, capsys):
    """Re-trial 23B m4: `tgmae masks` over a list whose videos are all missing loaded CLIP (slow)
    and only then skipped every video. Their presence is checked first (a stat each): one line
    naming them, exit 2, CLIP never loaded, nothing written."""
    calls = _no_clip(monkeypatch)
    (tmp_path / "a.csv").write_text("path,label\ngone1.mp4,0\nBiking/gone2.mp4,0\n")
    out = tmp_path / "cache"
    argv = ["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", str(tmp_path / "c.jsonl"),
            "--clip", str(tmp_path / "clip"), "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "gone1.mp4") in err[0] and "2 video" in err[0], err
    assert "--root" in err[0] and calls == [] and not out.exists()
    assert main([*argv, "--rebuild"]) == 2 and calls == []


def test_some_videos_on_disk_go_on_to_clip(tmp_path, monkeypatch, capsys):
    """One video present: the run goes on (the missing one is skipped later, as before)."""
    from tgmae.data.video import write_video

    calls = _no_clip(monkeypatch)
    write_video(tmp_path / "here.mp4", np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    (tmp_path / "a.csv").write_text("path,label\ngone1.mp4,0\nhere.mp4,0\n")
    argv = ["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", str(tmp_path / "c.jsonl"),
            "--clip", str(tmp_path / "clip"), "--out", str(tmp_path / "cache"), "--no-progress"]
    with pytest.raises(AssertionError, match="CLIP was loaded"):
        main(argv)
    assert len(calls) == 1
