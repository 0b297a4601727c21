"""Feature extraction: windows and times against the frame index of real files, features against
the encoder run directly on the decoded frames, shards resumable after a kill, unreadable videos."""

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tgmae.data.transforms import crop_resize, normalize, spatial_view_boxes
from tgmae.evaluate.extract import (ExtractSpec, dataset_videos, extract_to_shards, extract_video, load_frozen_encoder,
                                    window_starts)
from tgmae.evaluate.feature_shards import ExtractError, check_extracted, read_shards, write_index
from tgmae.errors import UserError
from tgmae.models.arch import VideoMAEArch
from tgmae.models.encoder import VideoViTEncoder
from tgmae.weights.pretraining import save_encoder
from video_kinds import _write, pattern, sequential_decode

# ../shared/data/videos beside the repository (TGMAE_SHARED overrides), as tests/test_data_video.py
SHARED = Path(os.environ.get("TGMAE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared") / "data" / "videos"
SHARED_FILES = ["mjpeg_vfr_gaps.avi", "mpeg4_nvop_bframes.avi"]
ARCH = VideoMAEArch(embed_dim=32, depth=1, num_heads=2, patch_size=16, tubelet_size=2, num_frames=16, image_size=32)


def tiny_encoder(seed: int = 0) -> VideoViTEncoder:
    torch.manual_seed(seed)
    return VideoViTEncoder(ARCH).eval()


def spec(**kw) -> ExtractSpec:
    base = dict(window=16, stride=4, image_size=32, mean=ARCH.pixel_mean, std=ARCH.pixel_std, batch_size=3)
    return ExtractSpec(**{**base, **kw})


def h264_mp4(path: Path, t: int = 41, rate: int = 25) -> Path:
    """H.264 MP4 (libx264, up to 2 B-frames: packets stored out of presentation order)."""
    return _write(path, "libx264", pattern(t, 48, 64, seed=t), rate, options={"bf": "2", "g": "12"})


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    return h264_mp4(tmp_path_factory.mktemp("extract") / "clip.mp4")


def reference_times(path: Path) -> np.ndarray:
    """Presentation time (s) of frame i: PyAV's sequential decode sorted by pts, pts x time base."""
    with av.open(str(path)) as c:
        tb = float(c.streams.video[0].time_base)
        pts = sorted(f.pts for f in c.decode(video=0))
    return np.asarray(pts, np.float64) * tb


def real_files(mp4: Path) -> list[Path]:
    return [mp4] + [SHARED / f for f in SHARED_FILES]


def test_window_starts_follow_videomaev2_tad():
    s = ExtractSpec()  # 16 frames, stride 4: range(0, n - 15, 4)
    for n in (15, 16, 17, 19, 20, 100):
        assert window_starts(n, s).tolist() == list(range(0, n - 15, 4)), n
    assert window_starts(30, ExtractSpec(mode="clip")).tolist() == [7]
    # the dataset's evaluation clip (issue 29): 27 free frames start at round(13.5) = 14, not 27 // 2
    assert window_starts(43, ExtractSpec(mode="clip")).tolist() == [14]
    assert window_starts(30, ExtractSpec(window=8, frame_step=3, stride=5)).tolist() == [0, 5]  # span 22


@pytest.mark.parametrize("which", [0, 1, 2], ids=["h264_mp4"] + SHARED_FILES)
def test_windows_and_times_exact_against_frame_index(mp4, which):
    path = real_files(mp4)[which]
    if not path.exists():
        pytest.skip(f"{path} absent")
    times = reference_times(path)
    n = len(times)
    out = extract_video(tiny_encoder(), path, spec())
    starts = list(range(0, n - 15, 4))
    assert out.start_frame.tolist() == starts
    assert out.end_frame.tolist() == [s + 15 for s in starts]
    np.testing.assert_array_equal(out.start_sec, times[starts])
    np.testing.assert_array_equal(out.end_sec, times[[s + 15 for s in starts]])
    assert out.features.shape == (len(starts), ARCH.embed_dim)


@pytest.mark.parametrize("which", [0, 1], ids=["h264_mp4", SHARED_FILES[0]])
@pytest.mark.parametrize("output", ["pooled", "tokens"])
def test_features_equal_encoder_on_decoded_frames(mp4, which, output):
    path = real_files(mp4)[which]
    if not path.exists():
        pytest.skip(f"{path} absent")
    frames = np.stack(sequential_decode(path))  # [n, H, W, 3], the reference decode
    enc = tiny_encoder()
    s = spec(output=output)
    out = extract_video(enc, path, s)
    box = spatial_view_boxes(frames.shape[1], frames.shape[2], 1)[0]
    for w, start in enumerate(out.start_frame.tolist()):
        clip = normalize(crop_resize(frames[start: start + 16], box, 32), ARCH.pixel_mean, ARCH.pixel_std)
        with torch.no_grad():
            tokens = enc(clip[None])[0]
        expected = tokens.mean(0) if output == "pooled" else tokens
        torch.testing.assert_close(out.features[w], expected, atol=1e-5, rtol=1e-5)


def test_clip_mode_and_squash(mp4):
    frames = np.stack(sequential_decode(mp4))
    enc = tiny_encoder()
    out = extract_video(enc, mp4, spec(mode="clip", spatial="squash"))
    start = round((len(frames) - 16) / 2)  # the dataset's evaluation clip
    assert out.start_frame.tolist() == [start]
    clip = normalize(crop_resize(frames[start: start + 16], (0, 0, 48, 64), 32), ARCH.pixel_mean, ARCH.pixel_std)
    with torch.no_grad():
        expected = enc(clip[None]).mean(1)
    torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=1e-5)


class KilledAfter(torch.nn.Module):
    """The encoder, but the process 'dies' (raises) on forward call number `calls` + 1."""

    def __init__(self, encoder, calls):
        super().__init__()
        self.encoder, self.left = encoder, calls

    def forward(self, video):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return self.encoder(video)


def video_set(tmp_path: Path, mp4: Path) -> list[tuple[str, str]]:
    short = h264_mp4(tmp_path / "short.mp4", t=10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    second = h264_mp4(tmp_path / "second.mp4", t=24)
    return [("a", str(mp4)), ("short", str(short)), ("empty", str(tmp_path / "empty.mp4")),
            ("junk", str(tmp_path / "junk.mp4")), ("b", str(second))]


def test_shards_resume_after_kill_and_list_unreadable(tmp_path, mp4):
    videos = video_set(tmp_path, mp4)
    s = spec(videos_per_shard=2, batch_size=4)
    enc = tiny_encoder()
    clean = tmp_path / "clean"
    first = extract_to_shards(enc, videos, clean, s, encoder_digest="d")
    assert first.written == [0, 1, 2] and first.skipped == []
    assert {u["video_id"]: u["kind"] for u in first.unreadable} == {
        "short": "too_short", "empty": "zero_bytes", "junk": "unreadable"}

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # clip.mp4 (41 frames): 7 windows = 2 forwards; dies in shard 2
        extract_to_shards(KilledAfter(enc, 2), videos, killed, s, encoder_digest="d")
    names = sorted(p.name for p in killed.iterdir())
    assert names == ["manifest.json", "shard-00000-of-00003.safetensors", "shard-00001-of-00003.safetensors"]
    done = {p: p.stat().st_mtime_ns for p in killed.glob("shard-*")}
    again = extract_to_shards(enc, videos, killed, s, encoder_digest="d")
    assert again.skipped == [0, 1] and again.written == [2]
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished shards untouched

    a, b = read_shards(clean), read_shards(killed)
    for key in ("features", "video", "window", "start_frame", "end_frame", "start_sec", "end_sec"):
        assert torch.equal(a[key], b[key]), key
    assert [a["video_ids"][v] for v in a["video"].unique().tolist()] == ["a", "b"]  # nothing stands in
    assert sorted(u["video_id"] for u in b["unreadable"]) == ["empty", "junk", "short"]
    assert (a["video"] == 0).sum() == 7 and (a["video"] == 4).sum() == 3


def test_a_video_replaced_in_place_after_a_kill_is_extracted_again(tmp_path, mp4):
    """Issue #28.2: a finished shard was kept on resume although one of its videos had been replaced
    in place (same path, other content): the old video's features under the new file. Shards are
    now tied to their videos' files (`tgmae.data.fileid.videos_fingerprint`, as the feature cache)."""
    import shutil

    videos = video_set(tmp_path, mp4)
    own = tmp_path / "a.mp4"
    shutil.copy(mp4, own)
    videos[0] = ("a", str(own))
    s = spec(videos_per_shard=2, batch_size=4)
    enc = tiny_encoder()
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # shards 0 and 1 done, killed in shard 2
        extract_to_shards(KilledAfter(enc, 2), videos, out, s, encoder_digest="d")
    h264_mp4(tmp_path / "other.mp4", t=30)
    os.replace(tmp_path / "other.mp4", own)  # replaced in place: 30 frames, not 41
    again = extract_to_shards(enc, videos, out, s, encoder_digest="d")
    assert again.written == [0, 2] and again.skipped == [1]  # shard 0 holds a.mp4: redone
    clean = extract_to_shards(enc, videos, tmp_path / "clean", s, encoder_digest="d")
    a, b = read_shards(tmp_path / "clean"), read_shards(out)
    assert clean.written == [0, 1, 2] and (b["video"] == 0).sum() == 4  # 30 frames: 4 windows
    for key in ("features", "video", "window", "end_frame"):
        assert torch.equal(a[key], b[key]), key


def test_a_second_job_into_an_extract_folder_is_refused_naming_the_holder(tmp_path, mp4):
    """Issue #28.8: a single-process extract (it locks the folder) and a torchrun extract (each rank
    locked only `<folder>.rankR-of-W`) into one folder both ran. Rank 0 of a sharded job now holds
    the folder too, so either is refused in one line naming the holder."""
    import signal
    import subprocess
    import sys
    import textwrap

    from tgmae.locks import LockError

    videos = video_set(tmp_path, mp4)[:1]
    out = tmp_path / "o"
    code = textwrap.dedent(f"""
        import time
        from tgmae.locks import acquire
        acquire({str(out)!r}, "--out", folder=True)
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "extract", "--out", str(out)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as e:
            extract_to_shards(tiny_encoder(), videos, out, spec(), encoder_digest="d", rank=0, world=2)
        assert f"pid {proc.pid}" in str(e.value) and "\n" not in str(e.value)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not any(out.glob("shard-*"))
    extract_to_shards(tiny_encoder(), videos, out, spec(), encoder_digest="d", rank=0, world=2)


def test_index_csv_and_refusal_of_another_extraction(tmp_path, mp4):
    videos = video_set(tmp_path, mp4)
    out = tmp_path / "x"
    extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=3), encoder_digest="d")
    index = write_index(out).read_text().splitlines()
    assert index[0] == "video_id,row,window,start_frame,end_frame,start_sec,end_sec"
    assert len(index) == 1 + 7 + 3
    times = reference_times(mp4)
    assert index[2].split(",")[:5] == ["a", "1", "1", "4", "19"]
    assert float(index[2].split(",")[5]) == times[4]
    assert "junk" in (out / "unreadable.json").read_text()
    with pytest.raises(ExtractError) as e:  # issue 28: it said "differs in spec", not which setting
        extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=3, stride=8, window=8),
                          encoder_digest="d", names={"stride": "--stride"})
    msg = str(e.value)
    assert "--stride: 4 -> 8" in msg and "window: 16 -> 8" in msg and str(out) in msg and "\n" not in msg
    assert "spec" not in msg and "num_shards" not in msg  # the settings, not the manifest's fields
    with pytest.raises(ExtractError, match=r"encoder weights: d -> e; videos: 5 -> 4 \(first other: 'a' -> 'short'\)"):
        extract_to_shards(tiny_encoder(), videos[1:], out, spec(videos_per_shard=3), encoder_digest="e")
    (out / "shard-00001-of-00002.safetensors").unlink()
    with pytest.raises(ExtractError, match="missing"):
        read_shards(out)


def test_a_window_longer_than_every_video_is_an_error_naming_it_and_the_longest_video(tmp_path, mp4):
    """issue 28: a window no video holds gave an empty extraction, every video listed as too short,
    and exit 0. With nothing extracted, `check_extracted` names the window (and frame step) and the
    longest video's frames, and removes the empty extraction so the folder takes a new one; with
    some videos too short, it passes (they are listed as before)."""
    videos = video_set(tmp_path, mp4)  # 41, 10, empty, junk, 24 frames
    out = tmp_path / "o"
    extract_to_shards(tiny_encoder(), videos, out, spec(window=22, frame_step=2, videos_per_shard=2), encoder_digest="d")
    with pytest.raises(ExtractError) as e:
        check_extracted(out, names={"window": "--window", "frame_step": "--frame-step"}, made_folder=True)
    msg = str(e.value)
    assert "--window=22" in msg and "--frame-step=2" in msg and "43 frames" in msg and "\n" not in msg
    assert "the longest has 41 frames" in msg and "nothing extracted" in msg
    assert not out.exists()  # the empty extraction is gone: another window may use the folder
    extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=2), encoder_digest="d")
    check_extracted(out)  # 'short' too short, two unreadable: listed, not an error
    assert sorted(u["video_id"] for u in read_shards(out)["unreadable"]) == ["empty", "junk", "short"]
    bad = tmp_path / "bad"
    extract_to_shards(tiny_encoder(), videos[2:4], bad, spec(), encoder_digest="d")
    with pytest.raises(ExtractError, match=r"none of the 2 videos can be read .*empty.mp4.*tgmae data check"):
        check_extracted(bad)


def test_ranks_split_the_shards(tmp_path, mp4):
    videos = video_set(tmp_path, mp4)
    s = spec(videos_per_shard=1)
    r0 = extract_to_shards(tiny_encoder(), videos, tmp_path / "o", s, rank=0, world=2)
    r1 = extract_to_shards(tiny_encoder(), videos, tmp_path / "o", s, rank=1, world=2)
    assert r0.written == [0, 2, 4] and r1.written == [1, 3]
    assert read_shards(tmp_path / "o")["features"].shape == (10, ARCH.embed_dim)


def test_load_frozen_encoder_gives_the_same_features(tmp_path, mp4):
    enc = tiny_encoder(seed=3)
    save_encoder(enc, tmp_path / "enc.safetensors")
    loaded, src = load_frozen_encoder(tmp_path / "enc.safetensors", num_frames=16, image_size=32)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    a = extract_video(enc, mp4, spec()).features
    b = extract_video(loaded, mp4, spec()).features
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert src.kind == "tgmae"


def test_an_output_in_a_run_or_a_users_folder_or_manifest_is_refused_naming_it(tmp_path, mp4):
    """issue 28: an extraction into a run folder, or a folder holding a user's index.csv and
    unreadable.json (no manifest.json), replaced their files, exit 0; a user's manifest.json was
    called "another extraction, made with other settings" with ~16 `None -> value` lines."""
    videos = [("a", str(mp4))]
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    for out in (run, run / "checkpoints", run / "features"):
        with pytest.raises(UserError, match=f"^{out}"):
            extract_to_shards(tiny_encoder(), videos, out, spec(), encoder_digest="d")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.csv").write_text("mine\n")
    (mine / "unreadable.json").write_text("[1]")
    with pytest.raises(ExtractError, match=f"^{mine}.*not empty.*manifest.json") as e:
        extract_to_shards(tiny_encoder(), videos, mine, spec(), encoder_digest="d")
    assert "\n" not in str(e.value)
    assert (mine / "index.csv").read_text() == "mine\n" and (mine / "unreadable.json").read_text() == "[1]"
    assert sorted(p.name for p in mine.iterdir()) == ["index.csv", "unreadable.json"]
    (mine / "manifest.json").write_text('{"name": "my project", "files": [1, 2]}')
    with pytest.raises(ExtractError, match="not an extraction's manifest") as e:
        extract_to_shards(tiny_encoder(), videos, mine, spec(), encoder_digest="d")
    assert str(mine / "manifest.json") in str(e.value) and "None ->" not in str(e.value)
    assert (mine / "manifest.json").read_text() == '{"name": "my project", "files": [1, 2]}'
    (tmp_path / "empty").mkdir()
    assert extract_to_shards(tiny_encoder(), videos, tmp_path / "empty", spec(), encoder_digest="d").written == [0]


def test_an_output_holding_a_run_stopped_before_its_first_checkpoint_is_refused(tmp_path, mp4):
    """Re-trial 32A S4 (checked for every writer outside the training loop): the folder of a run
    killed before its first checkpoint (config.yaml, metrics records, the marker) is a run folder
    (`locks.holds_run`), refused naming it, with or without the marker, the folder as it was."""
    from test_locks import files_of, stopped_run

    for marker in (True, False):
        run = tmp_path / f"pk{marker}"
        kept = stopped_run(run, marker)
        with pytest.raises(UserError, match=f"^{run} .*is the run"):
            extract_to_shards(tiny_encoder(), [("a", str(mp4))], run, spec(), encoder_digest="d")
        assert files_of(run) == kept


def test_a_rerun_summary_counts_the_unreadable_videos_of_finished_shards(tmp_path, mp4):
    """issue 29: a rerun that skipped every shard reported 0 unreadable videos while unreadable.json
    listed 3; the summary holds this rank's total and, apart, the ones found now."""
    videos = video_set(tmp_path, mp4)
    out = tmp_path / "x"
    first = extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1), encoder_digest="d")
    assert len(first.unreadable) == 3 and len(first.unreadable_new) == 3
    again = extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1), encoder_digest="d")
    assert again.written == [] and len(again.skipped) == 5
    assert sorted(u["video_id"] for u in again.unreadable) == ["empty", "junk", "short"]
    assert again.unreadable_new == []


def test_a_rerun_counts_as_new_only_the_unreadable_videos_the_folder_did_not_list(tmp_path, mp4):
    """issue 29: junk.mp4 replaced by a good video, the rerun redid its shard and said "2 (1 new)":
    'short', listed before, counted as new. New: unreadable now and not listed in the folder before."""
    videos = video_set(tmp_path, mp4)  # a, short, empty, junk, b: one shard
    out = tmp_path / "x"
    s = spec(videos_per_shard=5)
    assert len(extract_to_shards(tiny_encoder(), videos, out, s, encoder_digest="d").unreadable_new) == 3
    h264_mp4(tmp_path / "good.mp4", t=20)
    os.replace(tmp_path / "good.mp4", tmp_path / "junk.mp4")
    again = extract_to_shards(tiny_encoder(), videos, out, s, encoder_digest="d")
    assert again.written == [0] and sorted(u["video_id"] for u in again.unreadable) == ["empty", "short"]
    assert again.unreadable_new == []
    (tmp_path / "b.mp4").write_bytes(b"")
    os.replace(tmp_path / "b.mp4", videos[4][1])  # 'b' is unreadable now
    third = extract_to_shards(tiny_encoder(), videos, out, s, encoder_digest="d")
    assert [u["video_id"] for u in third.unreadable_new] == ["b"] and len(third.unreadable) == 3


def test_settings_that_cannot_change_the_features_are_not_refused(tmp_path, mp4):
    """issue 29: a rerun with another batch size (windows per forward), or in clip mode another
    stride (unused there), was refused as other settings; the folder's shards are reused."""
    videos = video_set(tmp_path, mp4)[:2]
    out = tmp_path / "x"
    extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1, batch_size=2), encoder_digest="d")
    again = extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1, batch_size=5), encoder_digest="d")
    assert again.skipped == [0, 1] and again.written == []
    clip = tmp_path / "c"
    extract_to_shards(tiny_encoder(), videos, clip, spec(mode="clip", stride=4), encoder_digest="d")
    reused = extract_to_shards(tiny_encoder(), videos, clip, spec(mode="clip", stride=8), encoder_digest="d")
    assert reused.skipped == [0]
    with pytest.raises(ExtractError, match="stride: 4 -> 8"):  # in windows mode stride is a setting
        extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1, stride=8), encoder_digest="d")


@pytest.mark.parametrize("output", ["pooled", "tokens"])
def test_a_shard_of_unreadable_videos_has_the_features_trailing_dims(tmp_path, mp4, output):
    """issue 29: a shard whose only video is unreadable stored features [0, 0], so torch.cat of the
    shards failed; it is [0, D] (pooled) or [0, N, D] (tokens). Its metadata keys are written in
    sorted order, so a re-written shard is byte-identical."""
    import json as _json
    import struct

    from safetensors.torch import load_file

    videos = video_set(tmp_path, mp4)
    out = tmp_path / "x"
    extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=1, output=output), encoder_digest="d")
    shards = sorted(out.glob("shard-*"))
    feats = [load_file(str(p))["features"] for p in shards]
    full = feats[0].shape[1:]
    assert full == ((32,) if output == "pooled" else (ARCH.num_tokens, 32))
    assert [f.shape[1:] for f in feats] == [full] * 5 and feats[2].shape[0] == 0
    assert torch.equal(torch.cat(feats), read_shards(out)["features"])
    for p in shards:
        raw = p.read_bytes()
        header = _json.loads(raw[8: 8 + struct.unpack("<Q", raw[:8])[0]])
        assert list(header["__metadata__"]) == sorted(header["__metadata__"]), p


def test_a_users_folder_as_out_is_refused_naming_the_files_it_holds(tmp_path):
    """Issue 28 (F): the refusal of a non-empty folder without manifest.json always named
    "(index.csv, unreadable.json, ...)" whatever it held; now it names the files that are there
    (a few, then how many more), and a writer's temp file is not one of them."""
    from tgmae.evaluate.feature_shards import check_output_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "scores.csv").write_text("mine")
    with pytest.raises(ExtractError) as e:
        check_output_folder(mine, "--out")
    msg = str(e.value)
    assert str(mine) in msg and "notes.txt" in msg and "scores.csv" in msg and "unreadable.json" not in msg, msg
    for i in range(8):
        (mine / f"f{i}.bin").write_text("")
    with pytest.raises(ExtractError) as e:
        check_output_folder(mine, "--out")
    assert "f0.bin" in str(e.value) and "more" in str(e.value) and "f7.bin" not in str(e.value), str(e.value)


def test_videos_of_both_subsets_have_unique_ids(tmp_path, mp4, caplog):
    """issue 29: --subset both extracted v5.avi (train) and another file v5.mp4 (val) both as 'v5'
    (manifest ['v5', 'v4', 'v5']). Two files under one id are refused naming both and their
    annotation files; one file listed in both subsets is extracted once, with a log line."""
    import dataclasses
    import logging

    from tgmae.config import DataConfig

    for name in ("v5.avi", "v5.mp4", "v4.mp4"):
        (tmp_path / name).symlink_to(mp4)
    (tmp_path / "tr.csv").write_text("path,label\nv5.avi,1\nv4.mp4,0\n")
    (tmp_path / "va.csv").write_text("path,label\nv5.mp4,1\n")
    (tmp_path / "va_same.csv").write_text("path,label\nv4.mp4,0\n")
    cfg = DataConfig(format="csv", root=str(tmp_path), train_annotations="tr.csv", val_annotations="va.csv")
    with pytest.raises(UserError) as e:
        dataset_videos(cfg, ("train", "val"))
    msg = str(e.value)
    assert "'v5'" in msg and "v5.avi" in msg and "v5.mp4" in msg and "tr.csv" in msg and "va.csv" in msg, msg
    assert [v[0] for v in dataset_videos(cfg, ("val",))] == ["v5"]  # one subset: its own ids
    with caplog.at_level(logging.INFO, logger="tgmae"):
        videos = dataset_videos(dataclasses.replace(cfg, val_annotations="va_same.csv"), ("train", "val"))
    assert [v[0] for v in videos] == ["v5", "v4"]
    assert "v4" in caplog.text and "once" in caplog.text, caplog.text


def test_an_id_in_both_lists_of_a_split_folder_names_the_list_file_read(tmp_path, mp4):
    """Re-trial 24A M1: on a Diving48 layout with a video id in both lists, --subset both named the
    test list as "(data.val_annotations=<the folder>)" although data.val_annotations was empty (the
    folder's Diving48_V2_test.json was read). The refusal names the file read and where it came from."""
    import json

    from tgmae.config import DataConfig

    root = tmp_path / "d48"
    (root / "rgb").mkdir(parents=True)
    (root / "rgb" / "E.mp4").symlink_to(mp4)
    (root / "Diving48_V2_train.json").write_text(json.dumps([{"vid_name": "E", "label": 0, "start_frame": 0,
                                                              "end_frame": 30}]))
    (root / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "E", "label": 0, "start_frame": 5,
                                                             "end_frame": 35}]))
    cfg = DataConfig(format="diving48", root=str(root), train_annotations="Diving48_V2_train.json")
    with pytest.raises(UserError) as e:
        dataset_videos(cfg, ("train", "val"))
    msg = str(e.value)
    assert "(data.train_annotations=Diving48_V2_train.json)" in msg, msg
    assert f"({root / 'Diving48_V2_test.json'}, the test list beside data.train_annotations)" in msg, msg
    assert "data.val_annotations" not in msg, msg


def segment_set(tmp_path: Path, mp4: Path) -> tuple[Path, object]:
    """A csv listing clip.mp4 (41 frames) as two segments of their own ids and frame ranges (EPIC's
    layout: action segments of one long video) and once more, whole, under a third id."""
    from tgmae.config import DataConfig

    (tmp_path / "clip.mp4").symlink_to(mp4)
    (tmp_path / "seg.csv").write_text("path,label,video_id,start_frame,end_frame\n"
                                      "clip.mp4,0,seg_a,0,20\nclip.mp4,1,seg_b,18,41\nclip.mp4,0,whole,,\n")
    return tmp_path, DataConfig(format="csv", root=str(tmp_path), train_annotations="seg.csv",
                                val_annotations="seg.csv", num_frames=16, frame_stride=1, image_size=32,
                                mean=ARCH.pixel_mean, std=ARCH.pixel_std)


def test_a_range_past_the_files_end_is_refused_not_clipped(mp4):
    """Issue 28 re-trial 15 (S3): a unit whose end_frame lies past the file's end (41 frames) was
    extracted over the frames there, its index stopping early without a word; now a VideoError of
    kind out_of_range naming the range, as the dataset and `data check` say it."""
    from tgmae.data.frame_index import VideoError

    with pytest.raises(VideoError, match=r"\[0, 100\).*41 frames") as e:
        extract_video(tiny_encoder(), mp4, spec(), start_frame=0, end_frame=100)
    assert e.value.kind == "out_of_range"


def test_segments_of_one_file_are_each_extracted_over_their_own_range(tmp_path, mp4):
    """issue 29: `dataset_videos` kept each file once and ignored start_frame / end_frame: of a file
    listed as two segments only the first id was extracted, over the whole file, the others
    dropped without a word. Now one unit per record, its windows inside its range (frame numbers
    and times still the source file's), features the encoder's on those frames."""
    root, cfg = segment_set(tmp_path, mp4)
    videos = dataset_videos(cfg, ("train", "val"))  # the same records in both subsets: each once
    assert [v[0] for v in videos] == ["seg_a", "seg_b", "whole"]
    out = tmp_path / "o"
    extract_to_shards(tiny_encoder(), videos, out, spec(videos_per_shard=2), encoder_digest="d")
    data = read_shards(out)
    assert data["video_ids"] == ["seg_a", "seg_b", "whole"]
    starts = {vid: data["start_frame"][data["video"] == v].tolist() for v, vid in enumerate(data["video_ids"])}
    assert starts == {"seg_a": [0, 4], "seg_b": [18, 22], "whole": list(range(0, 26, 4))}
    times = reference_times(mp4)
    np.testing.assert_array_equal(data["start_sec"][data["video"] == 1].numpy(), times[[18, 22]])
    frames = np.stack(sequential_decode(mp4))
    box = spatial_view_boxes(frames.shape[1], frames.shape[2], 1)[0]
    enc = tiny_encoder()
    for row, start in enumerate(data["start_frame"].tolist()):
        clip = normalize(crop_resize(frames[start: start + 16], box, 32), ARCH.pixel_mean, ARCH.pixel_std)
        with torch.no_grad():
            expected = enc(clip[None]).mean(1)[0]
        torch.testing.assert_close(data["features"][row], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ExtractError, match="seg_b"):  # another range of a segment: another extraction
        moved = [v if v[0] != "seg_b" else (*v[:2], 20, 41) for v in videos]
        extract_to_shards(tiny_encoder(), moved, out, spec(videos_per_shard=2), encoder_digest="d")


@pytest.mark.parametrize("sampling", ["dense", "tsn"])
def test_clip_mode_of_segments_equals_the_probes_clip(tmp_path, mp4, sampling):
    """issue 29: clip mode took the dense centre clip of the whole file whatever the record's range
    and data.sampling; the probes read the dataset's evaluation clip (TSN segments with
    data.sampling=tsn) of the range. Now the same function, so the features are the probe's."""
    import dataclasses

    from tgmae.data.dataset import build_dataset
    from tgmae.evaluate.features import extract_features

    root, cfg = segment_set(tmp_path, mp4)
    cfg = dataclasses.replace(cfg, sampling=sampling)
    out = tmp_path / "o"
    s = spec(mode="clip", sampling=sampling)
    extract_to_shards(tiny_encoder(), dataset_videos(cfg, ("train",)), out, s, encoder_digest="d")
    data = read_shards(out)
    assert data["video_ids"] == ["seg_a", "seg_b", "whole"] and data["features"].shape[0] == 3
    from tgmae.data.sampling import clip_indices

    seg_b = clip_indices(18, 41, 16, 1, sampling, train=False)  # the evaluation clip of [18, 41)
    assert (data["start_frame"][1].item(), data["end_frame"][1].item()) == (seg_b[0].item(), seg_b[-1].item())
    probe = extract_features(tiny_encoder(), build_dataset(cfg, "train", train=False), batch_size=3)
    torch.testing.assert_close(data["features"], probe["features"], atol=1e-5, rtol=1e-5)
