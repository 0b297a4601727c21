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
