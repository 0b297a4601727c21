"""The synthetic set's split ids as the CLIP tools read them (`tgmae.clip.data`)."""

from __future__ import annotations

import pytest

from tgmae.clip.data import read_split_ids
from tgmae.textfile import NotUtf8Error


def test_split_ids_and_a_split_that_is_not_utf8(tmp_path):
    """Re-trial 24A T2: a list edited in cp1252 is one line naming file:line, as every list."""
    (tmp_path / "train.csv").write_text("path,label,caption,video_id\nvideos/a.mp4,0,x,a\nvideos/b.mp4,1,y,\n")
    assert read_split_ids(tmp_path, "train") == ["a", "b"]
    (tmp_path / "val.csv").write_bytes(b"path,label,caption,video_id\nvideos/a.mp4,0,caf\xe9,a\n")
    with pytest.raises(NotUtf8Error, match=r"val\.csv:2: not UTF-8 \(byte 0xe9 at column 19\)"):
        read_split_ids(tmp_path, "val")


def test_split_ids_of_a_list_that_is_not_utf8_are_refused_naming_its_line(tmp_path):
    """Re-trial 24A T2: a set's lists (also the study's attribute probe's) are read as every user's
    text file (`tgmae.textfile`)."""
    from tgmae.clip.data import list_ids
    from tgmae.textfile import NotUtf8Error

    ann = tmp_path / "val.csv"
    ann.write_bytes(b"path,label,caption,video_id\nvideos/a.mp4,0,x,a\nvideos/b.mp4,0,caf\xe9,b\n")
    with pytest.raises(NotUtf8Error, match=r"val\.csv:3: not UTF-8 \(byte 0xe9 at column 19\)"):
        list_ids(ann)
    ann.write_text("path,label,caption,video_id\nvideos/a.mp4,0,x,a\nvideos/b.mp4,0,y,\n")
    assert list_ids(ann) == ["a", "b"]
