"""Atomic writes (`tgmae.atomic`): the target holds the old or the new content, never a part."""

import pytest

from tgmae.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # the folder is created
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "twø\n", fsync=True)
    assert target.read_text(encoding="utf-8") == "twø\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "sub"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".a.json.") and tmp.name.endswith(".tmp")
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_temp_names_differ_per_call(tmp_path):
    with atomic_path(tmp_path / "x") as a, atomic_path(tmp_path / "x") as b:
        assert a != b  # two threads writing one file never share a temp file
        a.write_text("a")
        b.write_text("b")
    assert (tmp_path / "x").read_text() == "a"  # b is renamed first, then a: the last rename wins
