"""The masking grid (`tgmae.viz.masks`): what a cell shows is the mask it draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tgmae.masking.mgm import MotionGuidedMask
from tgmae.mask_contract import MaskContext
from tgmae.viz import masks as vm


def test_a_visible_patch_of_a_grey_frame_is_not_drawn_as_masked():
    """A frame of the mask's grey: masked and visible patches looked alike, so a row of 12 of
    16 masked read as 16 of 16 (the MGM row of a short clip)."""
    frame = np.full((64, 64, 3), 128, np.uint8)
    mask = np.ones((4, 4), bool)
    mask[1, 2] = False
    img = vm.overlay(frame, mask, 16)
    assert (img[16:32, 32:48] != 128).any()  # the visible patch is outlined
    assert (np.delete(img.reshape(4, 16, 4, 16, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1), 6, axis=0) == 128).all()


def test_grid_cells_state_the_masked_count_of_their_slice(tmp_path, monkeypatch):
    """Each algorithm's cell names the count of the mask it draws: for MGM on a 3-frame clip
    (repeated to 8 frames) 12 of 16 in every slice, the first included."""
    torch.manual_seed(0)
    clip = torch.rand(3, 8, 64, 64)
    clip[:, 3:] = clip[:, 2:3]  # a 3-frame video: its last frame repeated
    grid = (4, 4, 4)
    ctx = MaskContext(grid=grid, frames=clip, frame_indices=torch.tensor([0, 1, 2, 2, 2, 2, 2, 2]), video_id="v")
    mgm = MotionGuidedMask(0.75, motion_source="framediff")(ctx, torch.Generator().manual_seed(0)).view(grid)
    assert mgm.flatten(1).sum(1).tolist() == [12, 12, 12, 12]
    labels = []
    from tgmae.viz import plotting

    def save(fig, out, title=""):
        labels.extend(ax.get_xlabel() for ax in fig.axes if ax.get_xlabel())
        return out

    monkeypatch.setattr(plotting, "save_figure", save)
    frames = (clip.permute(1, 2, 3, 0) * 255).to(torch.uint8).numpy()
    vm.render_mask_grid(frames, {"mgm": mgm}, tmp_path / "m.png", tubelet=2, columns=4)
    assert labels == ["masked 12/16"] * 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("vizmasks")
    generate_synthetic_dataset(root, num_videos=3, frames=8, size=32, seed=2, val_fraction=0.0)
    return root


@pytest.mark.parametrize("argv, named", [
    (["--num-frames", "0"], "--num-frames"),
    (["--num-frames", "3"], "--num-frames"),
    (["--columns", "0"], "--columns"),
    (["--image-size", "40"], "--image-size"),
    (["--frame-stride", "0"], "--frame-stride"),
    (["--video-id", "nope"], "--video-id"),
    (["--out", "{tmp}/p.txt"], "--out"),
    (["--out", "{tmp}"], "--out"),
])
def test_bad_arguments_are_one_line_naming_the_flag(synth, tmp_path, capsys, argv, named):
    """issue 28: --num-frames 0 ("frame_indices is empty"), --columns 0, --out an existing folder (an
    IsADirectoryError naming an internal temp path), --video-id nope (KeyError: 'nope'), --out p.txt
    ("Format 'txt' is not supported") were tracebacks."""
    from tgmae.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "m.png")]
    capsys.readouterr()
    assert main(["visualize", "masks", "--root", str(synth), "--image-size", "32", "--num-frames", "4", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temp left


@pytest.mark.parametrize("out", ["run/masks.png", "run/checkpoints/masks.png"])
def test_an_out_inside_a_run_folder_is_refused(synth, tmp_path, capsys, out):
    """Issue 28: `--out RUN/x.png` wrote the figure among a run's files; refused in one line naming
    the file, as export-hf refuses a folder inside a run."""
    from tgmae.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "metrics.jsonl").write_text("")
    capsys.readouterr()
    argv = ["visualize", "masks", "--root", str(synth), "--image-size", "32", "--num-frames", "4",
            "--out", str(tmp_path / out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / out) in err[0] and str(run) in err[0], err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["checkpoints", "config.yaml", "metrics.jsonl"]


def test_masks_of_a_frame_folder_are_drawn_without_the_motion_row(tmp_path, capsys, caplog):
    """issue 28: `tgmae visualize masks --video FRAME_FOLDER` refused the whole folder ("frame folders
    carry no codec motion vectors"); the rows that need no codec are drawn and the MGM row's absence is said."""
    import numpy as np
    from PIL import Image

    from tgmae.cli import main

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 21):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"frame_{i:010d}.jpg")
    out = tmp_path / "masks.png"
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main(["visualize", "masks", "--video", str(folder), "--out", str(out), "--image-size", "32",
                     "--num-frames", "4"]) == 0
    assert out.stat().st_size > 1000 and "MGM" in caplog.text and "frame folder" in caplog.text


def test_an_existing_out_file_is_replaced_only_with_overwrite(synth, tmp_path, capsys):
    """issue 28 re-trial 11: a second `visualize masks` with other settings replaced the first run's
    figure (the default --out masks.png) without a word; now refused naming --out, --overwrite replaces."""
    from tgmae.cli import main

    out = tmp_path / "masks.png"
    out.write_bytes(b"earlier figure")
    argv = ["visualize", "masks", "--root", str(synth), "--image-size", "32", "--num-frames", "4", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--overwrite" in err[0], err
    assert out.read_bytes() == b"earlier figure"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_fifo_as_video_is_not_a_regular_file(tmp_path, capsys):
    """Re-trial 31A M3: `visualize masks --video fifo.mp4` said "zero-byte file"; one line saying
    what it is, and the fifo is never opened (that would wait for a writer)."""
    import os

    from tgmae.cli import main

    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert main(["visualize", "masks", "--video", str(fifo), "--image-size", "32", "--patch-size", "8",
                 "--num-frames", "4", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"--video {fifo}: cannot be read ({fifo}: not a regular file (a fifo))"), err
