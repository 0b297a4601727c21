"""`tgmae.viz.plotting.save_figure`: a long title is wrapped to the figure and kept whole in the PNG."""

from __future__ import annotations

from PIL import Image

from tgmae.viz.plotting import pyplot, save_figure


def test_a_long_title_is_wrapped_and_not_clipped(tmp_path):
    title = "Animation/clip1 (tube mask, ratio 0.90, 8 frames at 32 px): masked MSE 0.0123 vs patch-mean oracle 0.0456, " * 2
    fig, ax = pyplot().subplots(1, 1, figsize=(2.0, 2.0))
    ax.imshow([[0, 1], [1, 0]])
    out = save_figure(fig, tmp_path / "f.png", title)
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 2 and all(len(line) <= 27 for line in lines)
    assert " ".join(lines) == title.strip()
    assert Image.open(out).size[1] > 2.0 * 110  # the PNG grew to hold the title's lines
