"""Figures of a run (`tgmae visualize recon|attention`): the checkpoint's own masking and clip
geometry over -c, titles that name them, one named --video never substituted, TGM on a --video
by its --caption (issue 28: a run trained with one masking at 32 px and 4 frames was drawn at
224 px and 16 frames under -c's masking)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tgmae.cli import main as cli
from tgmae.config import load_config, save_config
from tgmae.evaluate.visualize import figure_config
from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.weights.pretraining import save_pretraining_model

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=4, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=1)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    from tgmae.data.video import write_video

    path = tmp_path_factory.mktemp("v") / "walk.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    write_video(path, frames, fps=10)
    return path


def _run(tmp_path: Path, *overrides: str, record: bool = False) -> Path:
    """A run folder (model.safetensors + config.yaml) trained under random 0.6, 4 frames, 32 px;
    `record`: its model file records its clip settings and masking, as `tgmae pretrain` writes it."""
    from tgmae.weights.model_card import section_settings

    run = tmp_path / "run"
    torch.manual_seed(0)
    cfg = load_config(None, ["masking.name=random", "masking.ratio=0.6", "data.num_frames=4", "data.image_size=32",
                             "model.patch_size=8", *overrides])
    save_pretraining_model(VideoMAEPretrainer(ARCH), run / "model.safetensors",
                           **(dict(data=section_settings("data", cfg.data), masking=section_settings("masking", cfg.masking)) if record
                              else {}))
    save_config(cfg, run / "config.yaml")
    return run


def _named(folder: Path, kind: str, clip: str) -> Path:
    """The one PNG `{kind}_{clip}-HASH.png` in folder (`figure_name`: HASH over weights, settings, clip)."""
    import re

    found = [p for p in folder.glob("*.png") if re.fullmatch(rf"{re.escape(kind)}_{re.escape(clip)}-[0-9a-f]{{8}}\.png",
                                                               p.name)]
    assert len(found) == 1, (kind, clip, sorted(p.name for p in folder.iterdir()))
    return found[0]


def _other_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"masking": {"name": "tube", "ratio": 0.9},
                                    "data": {"num_frames": 16, "image_size": 224},
                                    "train": {"output_dir": str(tmp_path / "elsewhere")}}))
    return path


def test_the_run_config_comes_before_c_and_overrides_come_last(tmp_path):
    run = _run(tmp_path)
    cfg = figure_config(str(_other_yaml(tmp_path)), [], str(run))
    assert (cfg.masking.name, cfg.masking.ratio, cfg.data.num_frames, cfg.data.image_size) == ("random", 0.6, 4, 32)
    assert cfg.train.output_dir == str(tmp_path / "elsewhere")  # what the run does not decide: -c's
    assert figure_config(None, ["masking.ratio=0.8"], str(run)).masking.ratio == 0.8
    # a checkpoint without a run folder: the geometry stored with its weights
    bare = save_pretraining_model(VideoMAEPretrainer(ARCH), tmp_path / "bare" / "pt.safetensors")
    cfg = figure_config(str(_other_yaml(tmp_path)), [], str(bare))
    assert (cfg.data.num_frames, cfg.data.image_size, cfg.model.patch_size) == (4, 32, 8)


def test_the_log_names_only_the_settings_taken_from_the_run_not_those_an_override_sets(tmp_path, caplog):
    """Re-trial 26A M4: `visualize recon RUN -c other.yaml data.image_size=64` logged `data.num_frames,
    data.image_size from the run (...), not -c other.yaml` but drew at 64 px, the override's. The
    line names only what the run replaced in -c and the figure keeps."""
    run = _run(tmp_path)
    with caplog.at_level("INFO", logger="tgmae"):
        cfg = figure_config(str(_other_yaml(tmp_path)), ["data.image_size=64", "masking.ratio=0.7"], str(run))
    assert (cfg.data.num_frames, cfg.data.image_size, cfg.masking.name, cfg.masking.ratio) == (4, 64, "random", 0.7)
    (said,) = [r.getMessage() for r in caplog.records if "from the run" in r.getMessage()]
    assert "data.num_frames" in said and "masking.name" in said, said
    assert "data.image_size" not in said and "masking.ratio" not in said, said


def test_recon_of_a_video_uses_the_run_and_titles_it(tmp_path, clip_file, monkeypatch):
    from tgmae.viz import reconstruction

    run = _run(tmp_path)
    titles = []
    save = reconstruction.save_reconstruction_figure
    monkeypatch.setattr(reconstruction, "save_reconstruction_figure",
                        lambda rows, path, **kw: titles.append(kw["title"]) or save(rows, path, **kw))
    out = tmp_path / "fig"
    assert cli(["visualize", "recon", str(run), "-c", str(_other_yaml(tmp_path)), "--video", str(clip_file),
                "--out", str(out)]) == 0
    # the 12-frame clip holds no 4 frames 4 apart: read spread over it, and the title says so
    assert titles[0].startswith("walk, final (random mask, ratio 0.6; 4 frames x 32 px (frames 0, 4, 7, 11: a short "
                                "video, stride 4 asked, tubelet 2, patch 8))")
    assert "masked 19/32 tokens (0.59, configured ratio 0.60)" in titles[0]  # round(0.6 * 32) = 19
    assert _named(out, "recon", "walk").is_file()


def test_one_unreadable_video_is_one_line_and_never_substituted(tmp_path, capsys):
    run = _run(tmp_path)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    fifo = tmp_path / "fifo.mp4"  # re-trial 31A M3: was "zero-byte file"; opening it would block
    os.mkfifo(fifo)
    for kind, video in (("recon", bad), ("attention", bad), ("recon", fifo), ("attention", fifo)):
        assert cli(["visualize", kind, str(run), "--video", str(video), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tgmae visualize {kind}: --video {video}: cannot be read") and err.count("\n") == 1, err
        assert "replacement" not in err and ("not a regular file (a fifo)" in err) == (video == fifo), err
    assert cli(["visualize", "recon", str(run), "--video", str(tmp_path / "gone.mp4")]) == 2
    assert "gone.mp4: no such file or directory" in capsys.readouterr().err


def test_tgm_on_a_video_needs_a_caption_and_a_contrastive_run_no_reconstruction(tmp_path, clip_file, capsys):
    run = _run(tmp_path, "masking.name=tgm", f"masking.cache_dir={tmp_path / 'maps'}", "captions.file=caps.jsonl")
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file)]) == 2
    assert "--caption TEXT" in capsys.readouterr().err
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file), "--caption", "a man walks"]) == 2
    assert "masking.clip_model" in capsys.readouterr().err
    run2 = tmp_path / "c"
    run2.mkdir()
    contrastive = _run(run2, "captions.file=caps.jsonl", "contrastive.objective=contrastive")
    assert cli(["visualize", "recon", str(contrastive), "--video", str(clip_file)]) == 2
    assert "never trained its decoder" in capsys.readouterr().err


def test_attention_title_names_the_geometry(tmp_path, clip_file):
    run = _run(tmp_path)
    out = tmp_path / "att"
    assert cli(["visualize", "attention", str(run), "-c", str(_other_yaml(tmp_path)), "--video", str(clip_file),
                "--out", str(out)]) == 0
    assert _named(out, "attention", "walk").is_file()


def test_figures_go_to_the_run_they_draw_unless_out_says_otherwise(tmp_path, clip_file, monkeypatch):
    """issue 28: `--video` without --out wrote to runs/default/figures under the working folder (or
    -c's train.output_dir), a folder unrelated to the run drawn. Figures go to the checkpoint's run
    folder (figures/), for a step checkpoint or `checkpoints/latest` too; a checkpoint outside a run:
    figures/ beside it."""
    run = _run(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file)]) == 0
    assert cli(["visualize", "attention", str(run / "model.safetensors"), "-c", str(_other_yaml(tmp_path)),
                "--video", str(clip_file)]) == 0
    recon, att = _named(run / "figures", "recon", "walk"), _named(run / "figures", "attention", "walk")
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(
        p.with_suffix(s).name for p in (recon, att) for s in (".gif", ".png"))
    assert list(work.iterdir()) == [] and not (tmp_path / "elsewhere").exists()
    # a step checkpoint named through the run's `latest`: its run's figures/ and its run's masking
    step = run / "checkpoints" / "step_00000002"
    save_pretraining_model(VideoMAEPretrainer(ARCH), step / "model.safetensors")
    (step / "state.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    (run / "figures").rename(tmp_path / "old_figures")
    assert cli(["visualize", "recon", str(run / "checkpoints" / "latest"), "--video", str(clip_file)]) == 0
    assert _named(run / "figures", "recon", "walk").is_file()
    assert figure_config(None, [], str(run / "checkpoints" / "latest")).masking.ratio == 0.6  # the run's
    bare = save_pretraining_model(VideoMAEPretrainer(ARCH), tmp_path / "bare" / "pt.safetensors")
    assert cli(["visualize", "attention", str(bare), "--video", str(clip_file)]) == 0
    assert _named(tmp_path / "bare" / "figures", "attention", "walk").is_file() and list(work.iterdir()) == []
    out = tmp_path / "mine"
    assert cli(["visualize", "attention", str(run), "--video", str(clip_file), "--out", str(out)]) == 0
    assert _named(out, "attention", "walk").is_file()


def test_figures_are_named_by_the_clip_they_draw(tmp_path, clip_file):
    """Figures of other clips never overwrite each other: recon of --index 0 and 1 wrote one
    reconstruction.png; attention of a/Biking/clip2 and b/Animation/clip2 one attention_clip2.png.
    Named by the video id under data.root (re-trial 23B m3: '/' shown as '__', not the similarity
    maps' `%2F`), a video outside it by its stem; the name's hash covers the clip's path, so
    same-named clips differ."""
    import shutil

    run = _run(tmp_path)
    root = tmp_path / "data"
    for folder in ("Biking", "Animation"):
        (root / folder).mkdir(parents=True)
        shutil.copy(clip_file, root / folder / "clip2.mp4")
    (root / "val.csv").write_text("path,label\nBiking/clip2.mp4,0\nAnimation/clip2.mp4,0\n")
    data = [f"data.root={root}", "data.format=csv", "data.val_annotations=val.csv"]
    out = tmp_path / "figs"
    for index in (0, 1):
        assert cli(["visualize", "recon", str(run), "--index", str(index), "--out", str(out), *data]) == 0
    for folder in ("Biking", "Animation"):
        assert cli(["visualize", "attention", str(run), "--video", str(root / folder / "clip2.mp4"),
                    "--out", str(out), *data]) == 0
    outside = [tmp_path / "a" / "clip2.mp4", tmp_path / "b" / "clip2.mp4"]
    for path in outside:
        path.parent.mkdir()
        shutil.copy(clip_file, path)
        assert cli(["visualize", "attention", str(run), "--video", str(path), "--out", str(out)]) == 0
    for kind in ("recon", "attention"):
        for clip in ("Animation__clip2", "Biking__clip2"):
            assert _named(out, kind, clip).is_file()
    assert len(list(out.glob("attention_clip2-*.png"))) == 2 and len(list(out.glob("*.png"))) == 6
    assert not list(out.glob(".recon-*"))


def test_figures_of_a_long_non_ascii_id_fit_a_file_name(tmp_path, clip_file):
    """Issue 28 (re-trial 21A, T1): `visualize recon --video "クラス/<42 Japanese characters>.mp4"`
    (126 bytes, valid on disk) percent-encoded the id into a figure name over 400 bytes: OSError [Errno 36]
    File name too long, a traceback. Its figures are named by `id_file_name` (a readable prefix and
    a hash of the whole id), as the similarity maps; so is a long stem outside data.root."""
    import shutil

    run = _run(tmp_path)
    root = tmp_path / "data"
    vid = "クラス/" + "日本語の動画" * 7
    (root / "クラス").mkdir(parents=True)
    shutil.copy(clip_file, root / f"{vid}.mp4")
    (root / "val.csv").write_text(f"path,label\n{vid}.mp4,0\n")
    data = [f"data.root={root}", "data.format=csv", "data.val_annotations=val.csv"]
    out = tmp_path / "figs"
    assert cli(["visualize", "recon", str(run), "--video", str(root / f"{vid}.mp4"), "--out", str(out), *data]) == 0
    outside = tmp_path / "b" / ("é" * 120 + ".mp4")
    outside.parent.mkdir()
    shutil.copy(clip_file, outside)
    assert cli(["visualize", "attention", str(run), "--video", str(outside), "--out", str(out)]) == 0
    from tgmae.data.fileid import id_file_name

    assert _named(out, "recon", id_file_name(vid, folders="__")).is_file()
    assert _named(out, "attention", id_file_name("é" * 120, folders="__")).is_file()
    assert all(len(p.name.encode()) <= 200 for p in out.iterdir())


def test_a_full_disk_names_the_recon_figure_and_leaves_no_empty_folder(tmp_path, clip_file, monkeypatch, capsys):
    import errno

    from tgmae.viz import reconstruction

    run = _run(tmp_path)

    def full(model, sample, cfg, folder, name, title, make_mask=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / f"{name}.png"))

    monkeypatch.setattr(reconstruction, "write_reconstruction", full)
    out = tmp_path / "figs"
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and f"{out}/recon_" in err[0] and ".recon-" not in err[0]
    assert not out.exists()


def test_recon_without_c_reads_the_runs_own_annotations(tmp_path, clip_file):
    """`visualize recon RUN` without -c said `no annotations for subset 'val': set
    data.val_annotations` though RUN/config.yaml names data.root / format / val_annotations."""
    import shutil

    root = tmp_path / "data"
    (root / "Biking").mkdir(parents=True)
    shutil.copy(clip_file, root / "Biking" / "clip1.mp4")
    (root / "val.csv").write_text("path,label\nBiking/clip1.mp4,0\n")
    run = _run(tmp_path, f"data.root={root}", "data.format=csv", "data.val_annotations=val.csv")
    assert cli(["visualize", "recon", str(run)]) == 0
    assert _named(run / "figures", "recon", "Biking__clip1").is_file()
    assert cli(["visualize", "attention", str(run), "--out", str(tmp_path / "o")]) == 0
    assert _named(tmp_path / "o", "attention", "Biking__clip1").is_file()


def test_recon_figures_are_written_under_their_final_names_and_leave_the_run_alone(tmp_path, clip_file, monkeypatch):
    """Issue #28.9: the recon figures were drawn under a pretraining run's fixed names in a temp
    folder, then renamed. They are now written straight to recon_ID-HASH.png / .gif (each file
    atomically: `viz.plotting.save_figure`, `viz.reconstruction.save_gif`); a run folder's own
    loss curve and reconstruction figures are not touched."""
    from tgmae.viz import reconstruction

    run = _run(tmp_path)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.001}\n')
    (run / "reconstruction.png").write_bytes(b"the run's own")
    paths = []
    for name in ("save_reconstruction_figure", "save_gif"):
        real = getattr(reconstruction, name)
        monkeypatch.setattr(reconstruction, name, lambda rows, path, _real=real, **kw: paths.append(Path(path))
                            or _real(rows, path, **kw))
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file), "--out", str(run)]) == 0
    name = _named(run, "recon", "walk").stem
    assert paths == [run / f"{name}.png", run / f"{name}.gif"]
    assert (run / "reconstruction.png").read_bytes() == b"the run's own" and not (run / "loss_curve.png").exists()
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.yaml", "metrics.jsonl", "model.safetensors",
                                                            "reconstruction.png", f"{name}.png", f"{name}.gif"])


def test_recon_titles_the_masked_fraction_used_and_the_source_frames(tmp_path, clip_file, monkeypatch):
    """Issue 28 (re-trial 9): `visualize recon` titled "tube mask, ratio 0.9" where 14 of the 16
    patches of a frame were masked (0.875), and its columns read "frame 0..3" at stride 2. The title
    gives the masked fraction actually used beside the configured ratio; the columns the source
    frame numbers of the clip."""
    from tgmae.viz import reconstruction

    run = _run(tmp_path, "masking.name=tube", "masking.ratio=0.9", "data.frame_stride=2")
    seen = {}
    save = reconstruction.save_figure

    def spy(fig, out_path, title=""):
        seen["title"], seen["columns"] = title, [ax.get_title() for ax in fig.axes if ax.get_title()]
        return save(fig, out_path, title)

    monkeypatch.setattr(reconstruction, "save_figure", spy)
    assert cli(["visualize", "recon", str(run), "--video", str(clip_file), "--out", str(tmp_path / "fig")]) == 0
    assert "masked 28/32 tokens (0.88" in seen["title"] and "ratio 0.90" in seen["title"]
    assert seen["columns"] == ["frame 2", "frame 4", "frame 6", "frame 8"]  # the centred clip of 12 frames


def test_attention_columns_are_the_source_frames(tmp_path, clip_file, monkeypatch):
    """Issue 28: `visualize attention` titled its columns "frame 0..3" by position in the clip at
    stride 2, while `visualize recon` gives the source frame numbers: so does the attention figure."""
    from tgmae.viz import attention

    run = _run(tmp_path, "data.frame_stride=2")
    seen = {}
    save = attention.save_figure

    def spy(fig, out_path, title=""):
        seen["columns"] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        return save(fig, out_path, title)

    monkeypatch.setattr(attention, "save_figure", spy)
    assert cli(["visualize", "attention", str(run), "--video", str(clip_file), "--out", str(tmp_path / "fig")]) == 0
    assert seen["columns"] == ["frame 2", "frame 4", "frame 6", "frame 8"]  # the centred clip of 12 frames


def test_figures_of_other_checkpoints_or_settings_get_other_names_and_a_rerun_the_same(tmp_path, clip_file,
                                                                                      monkeypatch):
    """Issue 28 (re-trial 11): `visualize recon RUN --video V`, then the same of
    RUN/checkpoints/step_00000002, then with masking.ratio=0.5 all wrote figures/recon_walk-HASH.png,
    each replacing the last, titled without the checkpoint. The name's hash covers the weights drawn,
    the settings and the clip, the same for attention; a rerun gives the same name; the titles name
    the step (or "final")."""
    from tgmae.viz import attention, reconstruction

    run = _run(tmp_path)
    step = run / "checkpoints" / "step_00000002"
    torch.manual_seed(1)
    save_pretraining_model(VideoMAEPretrainer(ARCH), step / "model.safetensors")
    (step / "state.pt").write_bytes(b"")
    titles = []
    for module, name in ((reconstruction, "save_reconstruction_figure"), (attention, "save_attention_figure")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **kw: titles.append(kw["title"]) or _real(*a, **kw))
    figures = run / "figures"

    def draw(kind: str, checkpoint: Path, *overrides: str) -> set[str]:
        before = set(p.name for p in figures.glob("*.png")) if figures.exists() else set()
        assert cli(["visualize", kind, str(checkpoint), "--video", str(clip_file), *overrides]) == 0
        return set(p.name for p in figures.glob("*.png")) - before

    for kind in ("recon", "attention"):
        final, second = draw(kind, run), draw(kind, step)
        assert len(final) == len(second) == 1 and final != second, (kind, final, second)
        assert all(n.startswith(f"{kind}_walk-") for n in final | second)
        assert "final" in titles[-2] and "step 2" in titles[-1]
        first = (figures / next(iter(final))).stat().st_mtime_ns
        assert draw(kind, run) == set() and (figures / next(iter(final))).stat().st_mtime_ns >= first  # rerun
    assert len(draw("recon", run, "masking.ratio=0.5")) == 1  # an override that changes the figure
    assert len(draw("attention", run, "--layer", "0")) == 1
    assert len(list(figures.glob("*.png"))) == 6 and len(list(figures.glob("*.gif"))) == 6


MICRO = VideoMAEArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                     image_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=1)  # the micro preset's size


@pytest.fixture(scope="module")
def micro_export(tmp_path_factory):
    """`tgmae export-hf` of a micro pretraining run (stride 3): an encoder-only VideoMAEModel folder."""
    from tgmae.weights.export_hf import export_hf

    run = tmp_path_factory.mktemp("micro") / "run"
    torch.manual_seed(0)
    save_pretraining_model(VideoMAEPretrainer(MICRO), run / "model.safetensors")
    save_config(load_config(None, ["model.preset=micro", "model.patch_size=8", "data.num_frames=4",
                                   "data.image_size=32", "data.frame_stride=3"]), run / "config.yaml")
    export_hf(run, run.parent / "hf")
    return run.parent / "hf"


def test_figures_of_an_export_take_its_architecture_and_clip_settings(micro_export, tmp_path, clip_file, capsys):
    """Re-trial 23B m1: `visualize attention EXPORT` said `model.preset='tiny' but the checkpoint
    EXPORT has 'micro': set model.preset=micro` though the export's config.json holds its arch
    (`tgmae_arch`) and clip settings (`tgmae_data`). They are taken; an override against the
    weights is still refused naming the key."""
    cfg = figure_config(None, [], str(micro_export))
    assert (cfg.model.preset, cfg.model.patch_size, cfg.data.num_frames, cfg.data.image_size,
            cfg.data.frame_stride) == ("micro", 8, 4, 32, 3)
    out = tmp_path / "figs"
    assert cli(["visualize", "attention", str(micro_export), "--video", str(clip_file), "--out", str(out)]) == 0
    assert _named(out, "attention", "walk").is_file()
    capsys.readouterr()
    assert cli(["visualize", "attention", str(micro_export), "--video", str(clip_file), "--out", str(out),
                "model.preset=tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.preset='tiny'" in err[0] and "'micro'" in err[0], err


def test_recon_of_an_encoder_only_export_is_one_line_naming_it(micro_export, tmp_path, clip_file, capsys):
    """Re-trial 23B m2: `visualize recon` of an export-hf folder (an encoder-only VideoMAEModel) printed
    the dump of the decoder's missing state-dict keys. One line: the folder holds no decoder, so no
    reconstruction; the run's model.safetensors has one."""
    assert cli(["visualize", "recon", str(micro_export), "--video", str(clip_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(micro_export) in err[0] and "no decoder" in err[0], err
    assert "model.safetensors" in err[0] and "missing" not in err[0].lower()
    assert not (tmp_path / "o").exists()


def test_a_copied_file_and_a_pretraining_export_draw_the_masking_recorded_with_them(tmp_path, clip_file, capsys):
    """Re-trial 30B S3: `visualize recon` of a run's model.safetensors copied out of its run, or of its
    `export-hf --pretraining` folder, drew under the default tube 0.9, not the run's TGM 0.6, without
    a word. The masking travels with the weights (our metadata, config.json `tgmae_masking`, kept by
    convert), not the training machine's paths; it comes before -c, as a run's does; overrides last."""
    import shutil

    from tgmae.train.pretrain import describe_run
    from tgmae.weights.convert import convert
    from tgmae.weights.export_hf import export_hf
    from tgmae.weights.model_card import EXPORT_MASK_KEY

    run = _run(tmp_path, "masking.name=tgm", "masking.select=bottom", f"masking.cache_dir={tmp_path / 'maps'}",
               "captions.file=caps.jsonl", record=True)
    (tmp_path / "loose").mkdir()
    loose = Path(shutil.copy(run / "model.safetensors", tmp_path / "loose" / "run_tgm.safetensors"))
    export_hf(run, tmp_path / "hf_pt", pretraining=True)
    assert json.loads((tmp_path / "hf_pt" / "config.json").read_text())[EXPORT_MASK_KEY]["name"] == "tgm"
    convert(tmp_path / "hf_pt", tmp_path / "back.safetensors")
    caps = ["captions.file=caps.jsonl", f"masking.cache_dir={tmp_path}"]  # paths of the run's machine: not recorded
    for weights in (loose, tmp_path / "hf_pt", tmp_path / "back.safetensors"):
        cfg = figure_config(str(_other_yaml(tmp_path)), caps, str(weights))  # -c's tube 0.9: not the model's
        m = cfg.masking
        assert (m.name, m.ratio, m.select, m.cache_dir) == ("tgm", 0.6, "bottom", str(tmp_path)), weights
        assert describe_run(cfg).startswith("tgm mask, ratio 0.6;"), weights
    assert figure_config(None, [*caps, "masking.ratio=0.7"], str(loose)).masking.ratio == 0.7
    assert figure_config(None, ["masking.name=tube", "masking.select=top"], str(loose)).masking.name == "tube"
    # without a captions file, TGM cannot draw: one line naming the key and the file, not a masking never set
    assert cli(["visualize", "recon", str(loose), "--video", str(clip_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs captions.file" in err[0] and f"{loose} records TGM masking (ratio 0.6" in err[0]
    assert err[0].endswith("masking.name=NAME masking.select=top"), err
    # with them, a --video is masked by its --caption, as a run's
    assert cli(["visualize", "recon", str(loose), "--video", str(clip_file), *caps]) == 2
    assert "--caption TEXT" in capsys.readouterr().err
    # an encoder export records no masking: its run's section would not be the encoder's own
    export_hf(run, tmp_path / "hf_enc")
    assert EXPORT_MASK_KEY not in json.loads((tmp_path / "hf_enc" / "config.json").read_text())


def test_a_file_recording_no_masking_says_it_is_drawn_under_the_default(tmp_path, clip_file, caplog):
    """Re-trial 30B S3: weights written before the masking was recorded (and no run folder beside them)
    are drawn under the default masking: one line says so, naming it; none where -c / an override
    sets the masking, or the file or its run says it."""
    bare = save_pretraining_model(VideoMAEPretrainer(ARCH), tmp_path / "bare" / "pt.safetensors")
    recorded = _run(tmp_path, "masking.name=tube", "masking.ratio=0.9", record=True) / "model.safetensors"
    (tmp_path / "loose").mkdir()
    loose = recorded.rename(tmp_path / "loose" / "pt.safetensors")
    said = []
    for weights, extra in ((bare, []), (bare, ["masking.ratio=0.75"]), (loose, [])):
        caplog.clear()
        with caplog.at_level("INFO", logger="tgmae"):
            assert cli(["visualize", "recon", str(weights), "--video", str(clip_file), "--out", str(tmp_path / "o"),
                        *extra]) == 0
        said.append([r.getMessage() for r in caplog.records if "masking" in r.getMessage()])
    (line,) = said[0]
    assert line.startswith(f"{bare}: drawn under the default masking (tube, ratio 0.9)") and "do not record" in line
    assert said[1:] == [[], []], said


def test_another_runs_file_in_a_run_folder_is_drawn_as_its_own_and_titled_by_its_name(tmp_path, clip_file,
                                                                                     monkeypatch, caplog):
    """Re-trial 32A S2: a random-0.5 model copied into an MGM-0.7 run's folder was drawn under the folder's
    MGM 0.7 and titled `final`. Weights recording other settings than the folder's config.yaml are not
    that run's (`model_card.run_of`, the rule of every reader of a run): their own masking is drawn, one
    line says why, and the title names the file. The run's own model stays `final` under its masking."""
    import shutil

    from tgmae.viz import reconstruction

    run = _run(tmp_path / "mgm", "masking.name=mgm", "masking.ratio=0.7", record=True)
    other = _run(tmp_path / "rand", "masking.ratio=0.5", record=True)
    copy = Path(shutil.copy(other / "model.safetensors", run / "rand_copy.safetensors"))
    titles = []
    save = reconstruction.save_reconstruction_figure
    monkeypatch.setattr(reconstruction, "save_reconstruction_figure",
                        lambda rows, path, **kw: titles.append(kw["title"]) or save(rows, path, **kw))
    with caplog.at_level("INFO", logger="tgmae"):
        assert cli(["visualize", "recon", str(copy), "--video", str(clip_file), "--out", str(tmp_path / "o")]) == 0
    assert titles[0].startswith("walk, rand_copy.safetensors (random mask, ratio 0.5;"), titles
    said = [r.getMessage() for r in caplog.records if "is not the model of the run" in r.getMessage()]
    assert len(said) == 1 and str(copy) in said[0] and "masking.name 'random' (the run's 'mgm')" in said[0], said
    cfg = figure_config(None, [], str(run / "model.safetensors"))
    assert (cfg.masking.name, cfg.masking.ratio) == ("mgm", 0.7)  # the run's own file: the run's
    from tgmae.evaluate.visualize import checkpoint_label

    assert checkpoint_label(run / "model.safetensors") == "final"


def test_another_runs_file_of_the_same_settings_is_titled_by_its_name_and_carded_as_not_the_runs(
        tmp_path, clip_file, monkeypatch):
    """Re-trial 33B S1: another run's model of the same masking and clip settings, copied into a run's
    folder, was titled `final` and exported with that run's card (its data, steps, last loss). Its
    recorded run id is not the folder's (`model_card.run_of`): titled by its name, carded as not that
    run's; the run's own model stays `final`, its copy exported keeps the run's id."""
    import shutil

    from tgmae.viz import reconstruction
    from tgmae.weights.export_hf import export_hf
    from tgmae.weights.model_card import EXPORT_RUN_ID_KEY, folder_run_id, own_run_id, section_settings

    cfg = load_config(None, ["masking.name=random", "masking.ratio=0.6", "data.num_frames=4", "data.image_size=32",
                             "model.patch_size=8"])
    runs = []
    for name in ("pt0", "k4_pt"):
        run = tmp_path / name
        save_config(cfg, run / "config.yaml")
        save_pretraining_model(VideoMAEPretrainer(ARCH), run / "model.safetensors", data=section_settings("data", cfg.data),
                               masking=section_settings("masking", cfg.masking), run_id=own_run_id(run))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.3564}) + "\n")
        runs.append(run)
    pt0, k4 = runs
    copy = Path(shutil.copy(pt0 / "model.safetensors", k4 / "pt0_copy.safetensors"))
    titles = []
    save = reconstruction.save_reconstruction_figure
    monkeypatch.setattr(reconstruction, "save_reconstruction_figure",
                        lambda rows, path, **kw: titles.append(kw["title"]) or save(rows, path, **kw))
    for weights in (copy, k4 / "model.safetensors"):
        assert cli(["visualize", "recon", str(weights), "--video", str(clip_file), "--out", str(tmp_path / "o")]) == 0
    assert titles[0].startswith("walk, pt0_copy.safetensors (random mask, ratio 0.6;"), titles
    assert titles[1].startswith("walk, final (random mask, ratio 0.6;"), titles
    export_hf(copy, tmp_path / "hf_copy", pretraining=True)
    card = (tmp_path / "hf_copy" / "README.md").read_text()
    assert "not that run's model" in card and "| run folder |" not in card and "0.3564" not in card
    export_hf(k4, tmp_path / "hf_own", pretraining=True)
    assert "| run folder | `" in (tmp_path / "hf_own" / "README.md").read_text()
    said = json.loads((tmp_path / "hf_copy" / "config.json").read_text())[EXPORT_RUN_ID_KEY]
    assert said == folder_run_id(pt0)


def test_a_bad_masking_recorded_in_an_export_names_its_file_and_key(tmp_path, clip_file, capsys):
    """Re-trial 32A M2: `tgmae_masking.name` 'tubee' in an export's config.json was said as the user's
    `masking.name='tubee'`, naming no file. One line names the file and its key; an override of the key
    replaces it."""
    from tgmae.weights.export_hf import export_hf

    run = _run(tmp_path, record=True)
    export = tmp_path / "hf_pt"
    export_hf(run, export, pretraining=True)
    config = json.loads((export / "config.json").read_text())
    for key, value, why in (("name", "tubee", "expected one of"), ("ratio", 1.5, "strictly between 0 and 1")):
        bad = json.loads(json.dumps(config))
        bad["tgmae_masking"][key] = value
        (export / "config.json").write_text(json.dumps(bad))
        assert cli(["visualize", "recon", str(export), "--video", str(clip_file), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{export / 'config.json'}: tgmae_masking.{key}={value!r}: " in err[0], err
        assert why in err[0] and f"the override masking.{key}=VALUE replaces it" in err[0], err
        assert cli(["visualize", "recon", str(export), "--video", str(clip_file), "--out", str(tmp_path / "o"),
                    f"masking.{key}=0.75" if key == "ratio" else "masking.name=tube"]) == 0
