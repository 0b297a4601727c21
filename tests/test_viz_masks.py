"""`tgmae visualize masks` on any video: columns titled with the source frames they show (issue
28: a 3-frame clip was titled with frames 4 and 6), and an unreadable --video is one line."""

from __future__ import annotations

import numpy as np
import pytest

from tgmae.cli import main as cli


def _titles(monkeypatch) -> list[str]:
    """Collects the column titles of every figure `tgmae.viz.plotting.save_figure` writes."""
    from tgmae.viz import plotting

    titles: list[str] = []
    save = plotting.save_figure

    def spy(fig, path, title="", **kw):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return save(fig, path, title, **kw)

    monkeypatch.setattr(plotting, "save_figure", spy)
    return titles


def test_a_three_frame_clip_titles_only_frames_it_has(tmp_path, monkeypatch):
    from tgmae.data.video import write_video

    video = tmp_path / "three.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8), fps=5)
    titles = _titles(monkeypatch)
    out = tmp_path / "m.png"
    assert cli(["visualize", "masks", "--video", str(video), "--image-size", "32", "--out", str(out)]) == 0
    assert out.is_file() and titles
    shown = [int(t.split("frame ")[1].rstrip(")")) for t in titles]
    assert set(shown) <= {0, 1, 2} and len(shown) == len(set(shown))  # each of its frames once, no others


def test_an_unreadable_video_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    assert cli(["visualize", "masks", "--video", str(bad), "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tgmae visualize: --video {bad}: cannot be read") and err.count("\n") == 1
    assert cli(["visualize", "masks", "--video", str(tmp_path / "none.mp4")]) == 2
    assert "none.mp4: no such file or directory" in capsys.readouterr().err


def test_rebuild_is_an_option_where_the_advice_names_it(capsys):
    """A cache built differently is refused with "rerun with --rebuild": both commands that build
    a cache have that option."""
    from tgmae.commands import eval_masks, visualize_masks

    for module in (eval_masks, visualize_masks):
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0 and "--rebuild" in capsys.readouterr().out
