"""`tgmae data check`: report JSON contents and exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tgmae.cli import main as cli_main
from tgmae.data.video import write_video

DATA = Path(__file__).parent / "data"


def _clip(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    return rng.integers(0, 256, (t, 32, 48, 3), dtype=np.uint8)


@pytest.fixture()
def dataset(tmp_path) -> tuple[Path, Path]:
    """A csv dataset with one good video and one of each failure, plus two bad rows."""
    root = tmp_path / "root"
    (root / "v").mkdir(parents=True)
    write_video(root / "v" / "good.mp4", _clip(24), gop=8)
    write_video(root / "v" / "short.mp4", _clip(5))
    (root / "v" / "zero.mp4").write_bytes(b"")
    (root / "v" / "garbage.mp4").write_bytes(bytes(range(256)) * 20)
    full = (root / "v" / "good.mp4").read_bytes()
    write_video(root / "v" / "cut.mkv", _clip(40), gop=8)
    data = (root / "v" / "cut.mkv").read_bytes()
    (root / "v" / "cut.mkv").write_bytes(data[: len(data) // 2])  # header kept, frames cut
    assert len(full) > 0
    ann = tmp_path / "ann.csv"
    ann.write_text(
        "path,label,caption\n"
        "v/good.mp4,0,fine\n"
        "v/short.mp4,1,five frames\n"
        "v/zero.mp4,0,empty\n"
        "v/garbage.mp4,1,noise\n"
        "v/missing.mp4,0,gone\n"
        "v/cut.mkv,1,truncated\n"
        ",0,no path\n"
        "v/good.mp4,9,label out of range\n"
    )
    (tmp_path / "classes.txt").write_text("a\nb\n")
    return root, ann


@pytest.mark.parametrize("workers", [1, 2])
def test_check_report(dataset, tmp_path, capsys, workers):
    root, ann = dataset
    out = tmp_path / "report.json"
    code = cli_main(["data", "check", "--format", "csv", "--root", str(root), str(ann), "--min-frames", "8",
                     "--out", str(out), "--workers", str(workers), "--no-progress"])
    assert code == 1  # bad videos found
    rep = json.loads(out.read_text())
    assert rep["records"] == rep["checked"] == 6 and rep["ok"] == 1 and rep["bad"] == 5
    assert rep["counts"] == {"missing": 1, "zero_bytes": 1, "unreadable": 1, "no_video_stream": 0, "no_frames": 0,
                             "truncated": 1, "undecodable": 0, "bad_frame_folder": 0, "out_of_range": 0,
                             "too_short": 1, "bad_label": 0}
    kinds = {Path(i["path"]).name: i["kind"] for i in rep["items"]}
    assert kinds == {"short.mp4": "too_short", "zero.mp4": "zero_bytes", "garbage.mp4": "unreadable",
                     "missing.mp4": "missing", "cut.mkv": "truncated"}
    assert all(i["reason"] for i in rep["items"])
    assert [(r["line"], r["reason"].split()[0]) for r in rep["rows"]] == [(8, "empty"), (9, "label")]
    assert rep["rows"][0]["file"].endswith("ann.csv") and rep["bad_rows"] == 2
    assert rep["frames"]["min"] == 24 and rep["num_classes"] == 2
    printed = capsys.readouterr().out
    assert "6 videos checked: 1 ok, 5 bad" in printed and "ann.csv:8" in printed


def test_check_reports_a_frame_range_past_the_videos_end(tmp_path, capsys):
    """Issue 28 re-trial 15 (S3): an annotated range past a video's end (EPIC stop_frame 60 over
    30 frames) was clipped to the frames there without a word ("4 ok"); now a bad row of its own
    kind, naming the range and the frames there (exit 1); a range inside the video stays ok."""
    root = tmp_path / "root"
    root.mkdir()
    write_video(root / "a.mp4", _clip(20), gop=8)
    (tmp_path / "ann.csv").write_text("path,label,video_id,start_frame,end_frame\n"
                                      "a.mp4,0,in,2,18\na.mp4,0,past,4,60\n")
    out = tmp_path / "r.json"
    assert cli_main(["data", "check", "--format", "csv", "--root", str(root), str(tmp_path / "ann.csv"),
                     "--min-frames", "4", "--frame-stride", "1", "--out", str(out), "--no-progress"]) == 1
    rep = json.loads(out.read_text())
    assert rep["ok"] == 1 and rep["bad"] == 1 and rep["counts"]["out_of_range"] == 1
    (item,) = rep["items"]
    assert item["video_id"] == "past" and "[4, 60)" in item["reason"] and "20 frames" in item["reason"]
    assert "[4, 60)" in capsys.readouterr().out


def test_check_names_the_id_of_each_segment_of_one_file(tmp_path, capsys):
    """issue 28 re-trial 16B, M7: with several segments of one file past its end, `data check`
    printed `/x/a.mp4: frames [40, 100) beyond ...` once per row, never saying which row: each
    line names the id where it is not the file's own name."""
    root = tmp_path / "root"
    root.mkdir()
    write_video(root / "a.mp4", _clip(20), gop=8)
    write_video(root / "b.mp4", _clip(20), gop=8)
    (tmp_path / "ann.csv").write_text("path,label,video_id,start_frame,end_frame\n"
                                      "a.mp4,0,seg1,4,60\na.mp4,0,seg2,4,60\nb.mp4,0,b,4,60\n")
    assert cli_main(["data", "check", "--format", "csv", "--root", str(root), str(tmp_path / "ann.csv"),
                     "--min-frames", "4", "--frame-stride", "1", "--no-progress"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "[4, 60)" in ln]
    assert len(lines) == 3
    assert "'seg1'" in lines[0] and "'seg2'" in lines[1] and "'b'" not in lines[2]  # b.mp4's id is its name
    (tmp_path / "ann.csv").write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg1,0,6\n")
    assert cli_main(["data", "check", "--format", "csv", "--root", str(root), str(tmp_path / "ann.csv"),
                     "--min-frames", "4", "--no-progress"]) == 0
    assert "a.mp4 (video 'seg1'): 6 frames" in capsys.readouterr().out  # shorter than a clip: named too


def test_check_through_cli_and_formats(tmp_path, capsys):
    """The `tgmae data check` entry point on a shipped layout (UCF101 split files)."""
    root = tmp_path / "UCF-101"
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, _clip(20), codec="mpeg4")
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", "ucf101", "--root", str(root),
                     str(DATA / "ucf101" / "ucfTrainTestlist"), "--subset", "test", "--min-frames", "16",
                     "--out", str(out), "--no-progress", "--allow-bad"])
    assert code == 0  # --allow-bad: exit 0 whatever was found
    rep = json.loads(out.read_text())
    assert rep["checked"] == 3 and rep["ok"] == 2 and rep["counts"]["missing"] == 1
    assert rep["items"][0]["video_id"] == "v_HandStandPushups_g01_c01"


def test_check_reports_duplicate_rows_and_empty_lists_and_exits_1(tmp_path, capsys):
    root = tmp_path / "v"
    root.mkdir()
    write_video(root / "a.mp4", _clip(20))
    write_video(root / "b.mp4", _clip(20))
    (tmp_path / "dup.csv").write_text("path,label\na.mp4,0\nb.mp4,1\na.mp4,0\n")
    (tmp_path / "ok.csv").write_text("path,label\na.mp4,0\nb.mp4,1\n")
    (tmp_path / "empty.csv").write_text("path,label\n")
    args = ["data", "check", "--format", "csv", "--root", str(root), "--min-frames", "8", "--no-progress"]
    assert cli_main([*args, str(tmp_path / "ok.csv")]) == 0
    capsys.readouterr()
    assert cli_main([*args, str(tmp_path / "dup.csv"), "--out", str(tmp_path / "r.json")]) == 1
    assert f"bad row: {tmp_path / 'dup.csv'}:4: video id 'a' already on line 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["bad_rows"] == 1
    assert cli_main([*args, str(tmp_path / "empty.csv")]) == 1
    assert "lists no videos" in capsys.readouterr().out
    assert cli_main([*args, str(tmp_path / "dup.csv"), "--allow-bad"]) == 0


def test_check_out_that_cannot_be_written_fails_before_checking(tmp_path, capsys):
    """--out in a folder that refuses writes: one line naming the file, exit 2, before any video
    is opened (issue 28: every video was checked first, then a traceback)."""
    target = Path("/sys/tgmae_test/report.json")
    try:
        target.parent.mkdir()
        pytest.skip("no folder here refuses writes")
    except OSError:
        pass
    (tmp_path / "a.csv").write_text("path,label\nmissing.mp4,0\n")
    code = cli_main(["data", "check", "--format", "csv", "--root", str(tmp_path), str(tmp_path / "a.csv"),
                     "--out", str(target)])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith(f"tgmae data check: {target}: ") and captured.err.count("\n") == 1
    assert "checking videos" not in captured.err and captured.out == ""


def test_check_unreadable_annotations_exit_2(tmp_path, capsys):
    code = cli_main(["data", "check", "--format", "ssv2", "--root", str(tmp_path), str(tmp_path / "nothing"),
                     "--no-progress"])
    assert code == 2 and "not found" in capsys.readouterr().err
    assert cli_main(["data"]) == 2
    shutil.rmtree(tmp_path)


def test_one_verdict_everywhere(tmp_path, caplog):
    """Issue 11 fault 4: data check, captioning and the training dataset refuse
    the same files for the same named reason, and accept the same files (VFR AVI, a packet
    without a frame, out-of-order MPEG-4 AVI) with the same frame count."""
    import logging

    import torch

    from video_kinds import corrupt_mjpeg, frameless_packet_mp4, mpeg4_bframes_avi, vfr_avi

    from tgmae.captions.run import load_keyframes
    from tgmae.config import DataConfig
    from tgmae.data.annotations import VideoRecord
    from tgmae.data.check import check_record
    from tgmae.data.dataset import VideoDataset
    from tgmae.data.video import VideoError, VideoReader

    good = {"vfr.avi": vfr_avi(tmp_path / "vfr.avi", "cinepak"), "gap.mp4": frameless_packet_mp4(tmp_path / "gap.mp4"),
            "b.avi": mpeg4_bframes_avi(tmp_path / "b.avi")}
    mjpeg = vfr_avi(tmp_path / "m.avi", "mjpeg")
    bad = {"broken.avi": corrupt_mjpeg(mjpeg, tmp_path / "broken.avi", (3,))}
    write_video(tmp_path / "full.mkv", _clip(40), gop=8)
    data = (tmp_path / "full.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    bad["cut.mkv"] = tmp_path / "cut.mkv"
    want = {"broken.avi": "undecodable", "cut.mkv": "truncated"}
    for i, (name, path) in enumerate({**good, **bad}.items()):
        rec = VideoRecord(str(path), 0, name)
        checked = check_record(i, rec, 1, 8)
        if name in good:
            assert checked.kind == "ok", checked
            with VideoReader(path) as r:
                assert r.info.num_frames == checked.num_frames
            frames, idx = load_keyframes(rec, 4)
            assert frames.shape[0] == 4
            continue
        assert checked.kind == want[name], checked
        with pytest.raises(VideoError) as e:
            load_keyframes(rec, 4)
        assert (e.value.kind, str(e.value)) == (checked.kind, f"{path}: {checked.reason}")
        # one clean message: the path once (in its own field), the kind once
        assert str(path) not in checked.reason and checked.reason.count(checked.kind) == 1, checked.reason
    # training: the bad ones are replaced, the log names the same reason
    recs = [VideoRecord(str(p), 0, n) for n, p in {**bad, **good}.items()]
    ds = VideoDataset(recs, DataConfig(num_frames=8, frame_stride=1, image_size=32), train=False)
    with caplog.at_level(logging.WARNING, logger="tgmae.data.dataset"):
        samples = [ds[i] for i in range(len(recs))]
    assert [s["load_failures"] > 0 for s in samples] == [True, True, False, False, False]
    assert all(isinstance(s["video"], torch.Tensor) for s in samples)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "undecodable frames at [3]" in logged and "truncated" in logged
    for r in caplog.records:  # path once, kind once
        msg = r.getMessage()
        for p in bad.values():
            assert msg.count(str(p)) <= 1, msg
    ds.substitute = False  # evaluation: the reason in load_error (results JSON, strict errors)
    err = ds[1]["load_error"]
    assert err.count(str(bad["cut.mkv"])) == 1 and err.count("truncated") == 1, err


def test_check_of_a_split_folder_train_list_checks_the_test_list_a_run_reads_too(tmp_path, capsys):
    """Issue #28.5: `data check` given a UCF101 trainlistNN.txt checked that list only, though a run
    with it as data.train_annotations (data.val_annotations empty) reads the folder's testlistNN.txt
    too (`data.dataset.subset_annotations`). Every list the run reads is checked now."""
    root = tmp_path / "UCF-101"
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi",
             "ApplyLipstick/v_ApplyLipstick_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
             "HandstandPushups/v_HandStandPushups_g08_c01.avi"]
    for rel in train:  # every train video is there; the test list's are not
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, _clip(20), codec="mpeg4")
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", "ucf101", "--root", str(root),
                     str(DATA / "ucf101" / "ucfTrainTestlist" / "trainlist01.txt"), "--min-frames", "16",
                     "--out", str(out), "--no-progress"])
    assert code == 1  # the test list's videos are missing
    rep = json.loads(out.read_text())
    assert rep["records"] == rep["checked"] == 5 + 3 and rep["ok"] == 5 and rep["counts"]["missing"] == 3
    assert [(x["subset"], Path(x["annotations"]).name, x["records"]) for x in rep["lists"]] == [
        ("train", "trainlist01.txt", 5), ("val", "ucfTrainTestlist", 3)]
    assert [Path(x["file"]).name for x in rep["lists"]] == ["trainlist01.txt", "testlist01.txt"]
    assert {i["subset"] for i in rep["items"]} == {"val"}
    # the file read, not its folder (issue 28 re-trial 15, M3)
    assert "lists: train trainlist01.txt (5), val testlist01.txt (3)" in capsys.readouterr().out


def test_check_of_a_test_list_given_as_the_train_list_checks_each_video_once(tmp_path, capsys):
    """Issue 28 re-trial 15 (S1): `data check` of UCF101's testlist01.txt (a run reads it as the train
    list and the folder's testlist01.txt again as the test list) checked each video twice ("2 videos
    checked" for 1 row). A clip an earlier list brought is checked once; since re-trial 20A M3 the
    file itself, named once, is read and listed once."""
    folder = DATA / "ucf101" / "ucfTrainTestlist"
    test = [ln.strip() for ln in (folder / "testlist01.txt").read_text().splitlines() if ln.strip()]
    root = tmp_path / "videos"
    for rel in test:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, _clip(20), codec="mpeg4")
    out = tmp_path / "r.json"
    assert cli_main(["data", "check", "--format", "ucf101", "--root", str(root), str(folder / "testlist01.txt"),
                     "--min-frames", "16", "--out", str(out), "--no-progress"]) == 0
    rep = json.loads(out.read_text())
    assert rep["checked"] == rep["ok"] == len(test)
    assert [(x["subset"], x["records"], x.get("checked_before", 0)) for x in rep["lists"]] == [
        ("train", len(test), 0)]
    assert f"{len(test)} videos checked" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["hmdb51", "ucf101"])
def test_check_of_a_split_folder_checks_its_test_list_too(tmp_path, capsys, fmt):
    """Issue #28.10: given the FOLDER of split files ("annotation file, or the folder of split
    files"), `data check` checked the train list only (rc 0) though the test list's video was
    corrupt; a run with the folder as data.train_annotations reads both, so both are checked."""
    if fmt == "hmdb51":
        folder = DATA / "hmdb51" / "testTrainMulti_7030_splits"
        train = ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                 "cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi",
                 "catch/96-_Torwarttraining_1_catch_f_cm_np1_le_bad_0.avi"]
        test = ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
                "cartwheel/Boden_bung_spitzbergen_cartwheel_f_cm_np1_ri_bad_0.avi",
                "catch/Amazing_Soccer_Goalie_catch_f_cm_np1_fr_med_1.avi"]
    else:
        folder = DATA / "ucf101" / "ucfTrainTestlist"
        train = [ln.split()[0] for ln in (folder / "trainlist01.txt").read_text().splitlines() if ln.strip()]
        test = [ln.strip() for ln in (folder / "testlist01.txt").read_text().splitlines() if ln.strip()]
    root = tmp_path / "videos"
    for rel in train + test:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, _clip(20), codec="mpeg4")
    (root / test[0]).write_bytes(b"not a video")  # the test list's video is corrupt
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", fmt, "--root", str(root), str(folder), "--min-frames", "16",
                     "--out", str(out), "--no-progress"])
    assert code == 1
    rep = json.loads(out.read_text())
    assert [(x["subset"], x["records"]) for x in rep["lists"]] == [("train", len(train)), ("val", len(test))]
    assert rep["checked"] == len(train) + len(test) and rep["bad"] == 1
    assert [(i["subset"], Path(i["path"]).name) for i in rep["items"]] == [("val", Path(test[0]).name)]


def test_check_out_refuses_a_file_that_is_not_a_check_report_and_anything_in_a_run(tmp_path, capsys):
    """--out over the annotation list being checked, a user's file or a run's config.yaml: one line
    naming the file, exit 2, the file unchanged (issue 28: each was replaced by the report, exit 0).
    A previous report is replaced; another file only with --overwrite; a run's file never."""
    (tmp_path / "a.csv").write_text("path,label\nmissing.mp4,0\n")
    ann_text = (tmp_path / "a.csv").read_text()
    args = ["data", "check", "--format", "csv", "--root", str(tmp_path), str(tmp_path / "a.csv"), "--no-progress",
            "--allow-bad"]
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    for target, flags in ((tmp_path / "a.csv", []), (tmp_path / "a.csv", ["--overwrite"]),
                          (tmp_path / "mine.json", []), (run / "config.yaml", ["--overwrite"]),
                          (run / "report.json", [])):
        code = cli_main([*args, "--out", str(target), *flags])
        err = capsys.readouterr().err
        assert code == 2 and str(target) in err and err.count("\n") == 1, (target, err)
    assert (tmp_path / "a.csv").read_text() == ann_text and (tmp_path / "mine.json").read_text() == '{"mine": 1}'
    assert (run / "config.yaml").read_text() == "model: {}\n" and not (run / "report.json").exists()
    assert cli_main([*args, "--out", str(tmp_path / "mine.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "mine.json").read_text())["records"] == 1
    assert cli_main([*args, "--out", str(tmp_path / "mine.json")]) == 0  # a previous report: replaced


def test_check_out_refuses_every_file_the_check_reads_and_a_prepared_sets_files(tmp_path, capsys):
    """Issue 28 (B): --out classes.txt (read for the class names), val.csv (a split sibling) or a
    prepared set's prepare.json with --overwrite exited 0 and the report replaced them. Every file
    the check reads (the list, classes.txt beside it, its split siblings, the videos) and a
    prepared set's own files (prepare.json, its lists, its videos) are refused, --overwrite or not,
    naming the file; a new report beside them is written."""
    root = tmp_path / "prep"
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "a.mp4", _clip(24), gop=8)
    (root / "train.csv").write_text("path,label\nvideos/a.mp4,walk\n")
    (root / "val.csv").write_text("path,label\nvideos/a.mp4,walk\n")
    (root / "part.csv").write_text("path,label\nvideos/a.mp4,walk\n")
    (root / "classes.txt").write_text("walk\n")
    (root / "prepare.json").write_text(json.dumps({"settings": {"short_side": 320},
                                                   "renamed": {"videos/a.mp4": "videos/a.mp4"}}))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    args = ["data", "check", "--format", "csv", "--root", str(root), str(root / "train.csv"), "--no-progress",
            "--min-frames", "8"]
    for name in ("classes.txt", "val.csv", "prepare.json", "part.csv", "videos/a.mp4"):
        for flags in ([], ["--overwrite"]):
            code = cli_main([*args, "--out", str(root / name), *flags])
            err = capsys.readouterr().err
            assert code == 2 and str(root / name) in err and "--out" in err and err.count("\n") == 1, (name, err)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert cli_main([*args, "--out", str(root / "check.json")]) == 0
    assert cli_main([*args, "--out", str(root / "check.json")]) == 0  # its own earlier report: replaced


def _prepared_set(folder: Path) -> None:
    """A prepared data set in `folder` as `tgmae data prepare` leaves it: prepare.json naming its
    videos, its list, classes.txt, its videos (one in a sub folder)."""
    (folder / "B").mkdir(parents=True)
    write_video(folder / "B" / "a.mp4", _clip(24), gop=8)
    (folder / "part.csv").write_text("path,label\nB/a.mp4,walk\n")
    (folder / "classes.txt").write_text("walk\n")
    manifest = {"settings": {"short_side": 64}, "renamed": {"B/a.avi": "B/a.mp4"}}
    (folder / "prepare.json").write_text(json.dumps(manifest))


def test_report_refuses_the_files_of_another_prepared_set_whatever_is_checked(tmp_path, capsys):
    """Issue 28 (re-trial 9, 2): `data check real/train.csv --out prep/prepare.json --overwrite`
    replaced ANOTHER prepared set's manifest (also its videos, its list): a prepared set's files
    were protected only when it was the set checked. Now they are refused like a run's files,
    --overwrite or not, for `data check --out` and `data prepare --report` alike, naming the file;
    a new report inside the prepared set is written."""
    real, prep = tmp_path / "real", tmp_path / "prep"
    real.mkdir()
    write_video(real / "v.mp4", _clip(24), gop=8)
    (real / "train.csv").write_text("path,label\nv.mp4,walk\n")
    _prepared_set(prep)
    before = {p: p.read_bytes() for p in prep.rglob("*") if p.is_file()}
    check = ["data", "check", "--format", "csv", "--root", str(real), str(real / "train.csv"), "--no-progress",
             "--min-frames", "8", "--out"]
    prepare = ["data", "prepare", "--format", "csv", "--root", str(real), str(real / "train.csv"), "--no-progress",
               "--out", str(tmp_path / "out"), "--short-side", "40", "--preset", "ultrafast", "--min-frames", "8",
               "--report"]
    for args, flag in ((check, "--out"), (prepare, "--report")):
        for name in ("prepare.json", "part.csv", "classes.txt", "B/a.mp4"):
            code = cli_main([*args, str(prep / name), "--overwrite"])
            err = capsys.readouterr().err
            assert code == 2 and str(prep / name) in err and flag in err and err.count("\n") == 1, (name, err)
    assert {p: p.read_bytes() for p in prep.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists()
    assert cli_main([*check, str(prep / "check.json")]) == 0
    assert cli_main([*check, str(prep / "check.json")]) == 0  # its own earlier report: replaced


def test_check_lists_videos_shorter_than_the_clip_span(dataset, tmp_path, capsys):
    """Issue #28 re-trial 11, m1: a video of at least --min-frames frames but fewer than the clip's
    span ((--min-frames - 1) x --frame-stride + 1) is read with a smaller stride: listed (not bad)."""
    root, ann = dataset
    out = tmp_path / "report.json"
    code = cli_main(["data", "check", "--format", "csv", "--root", str(root), str(ann), "--min-frames", "4",
                     "--frame-stride", "4", "--out", str(out), "--no-progress"])
    assert code == 1  # the other bad videos
    rep = json.loads(out.read_text())
    assert rep["clip_span"] == 13 and rep["counts"]["too_short"] == 0
    assert [(Path(i["path"]).name, i["num_frames"]) for i in rep["shorter_than_clip"]] == [("short.mp4", 5)]
    printed = capsys.readouterr().out
    assert "1 video shorter than a clip" in printed and "short.mp4" in printed and "--frame-stride" in printed


@pytest.mark.parametrize("fmt", ["ssv2", "k400"])
def test_check_of_an_unlabelled_test_list_reports_no_bad_labels(tmp_path, capsys, fmt):
    """Issue 28 re-trial 15, M2/M4: SSv2's test.json carries ids only (label -1, as the format
    defines) and every video was a "bad label: -1 outside [0, 2)", exit 1; Kinetics' test.csv has
    no label column. Unlabelled lists are checked for their videos, not their labels."""
    if fmt == "ssv2":
        (tmp_path / "labels.json").write_text('{"Pushing something": "0", "Moving something": "1"}')
        (tmp_path / "test.json").write_text('[{"id": "4"}, {"id": "1"}]')
        names, ann = ["4.mp4", "1.mp4"], tmp_path / "test.json"
    else:
        (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,1,11,train\n")
        (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nabc,1,11,test\nghi,3,13,test\n")
        names, ann = ["abc_000001_000011.mp4", "ghi_000003_000013.mp4"], tmp_path / "test.csv"
    for n in names:
        write_video(tmp_path / n, _clip(20))
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", fmt, "--root", str(tmp_path), str(ann), "--subset", "test",
                     "--min-frames", "8", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["ok"] == 2 and rep["counts"]["bad_label"] == 0 and rep["bad_rows"] == 0
    labelled = tmp_path / "bad.csv"  # a labelled list's label outside the classes is still bad
    labelled.write_text("path,label\n" + "".join(f"{n},5\n" for n in names))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    assert cli_main(["data", "check", "--format", "csv", "--root", str(tmp_path), str(labelled),
                     "--min-frames", "8", "--no-progress"]) == 1


def test_check_of_a_ucf101_list_of_another_split_names_the_split_flag(tmp_path, capsys):
    """data check has --split, not data.split: the refusal names the flag, as HMDB51's does
    (issue 28 re-trial 15, M6)."""
    code = cli_main(["data", "check", "--format", "ucf101", "--root", str(tmp_path),
                     str(DATA / "ucf101" / "ucfTrainTestlist" / "trainlist02.txt"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--split 2" in err and "trainlist02.txt" in err


def test_check_and_training_refuse_frame_folders_that_are_not_one_numbered_sequence(tmp_path, capsys, caplog):
    """Re-trial 19A F4: a folder of JPG + PNG frames, one with a stray cover.jpg and EPIC folders
    missing frame 8 or 5 were checked ok (read as 32 frames, as 17, as 7, or failing in training);
    each is now bad, its report line naming the file, and training's one line names it too."""
    import logging

    from PIL import Image

    from tgmae.config import DataConfig
    from tgmae.data.annotations import VideoRecord
    from tgmae.data.dataset import VideoDataset

    root = tmp_path / "ff"
    names = {
        "plain": [f"{i:05d}.jpg" for i in range(1, 17)],
        "mixed": [f"{i:05d}.{e}" for i in range(1, 17) for e in ("jpg", "png")],
        "stray": [f"{i:05d}.jpg" for i in range(1, 17)] + ["cover.jpg"],
        "epic_gap8": [f"frame_{i:010d}.jpg" for i in range(1, 17) if i != 8],
        "epic_gap5": [f"frame_{i:010d}.jpg" for i in range(1, 17) if i != 5],
    }
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for k, f in enumerate(files):
            Image.fromarray(np.full((24, 32, 3), 8 * k, np.uint8)).save(root / folder / f)
    ann = root / "list.csv"
    ann.write_text("path,label\n" + "".join(f"{f},0\n" for f in names))
    out = tmp_path / "report.json"
    code = cli_main(["data", "check", "--format", "csv", "--root", str(root), str(ann), "--min-frames", "4",
                     "--frame-stride", "1", "--out", str(out), "--no-progress"])
    assert code == 1
    rep = json.loads(out.read_text())
    assert rep["ok"] == 1 and rep["counts"]["bad_frame_folder"] == 4
    why = {Path(i["path"]).name: i["reason"] for i in rep["items"]}
    named = {"mixed": "00001.png", "stray": "cover.jpg", "epic_gap8": "frame_0000000008.jpg",
             "epic_gap5": "frame_0000000005.jpg"}
    assert set(why) == set(named) and all(named[f] in why[f] for f in named), why
    printed = capsys.readouterr().out
    assert all(n in printed for n in named.values())
    # training replaces the folder, with one line naming the folder and the missing frame
    recs = [VideoRecord(str(root / "epic_gap5"), 0, "epic_gap5"), VideoRecord(str(root / "plain"), 0, "plain")]
    ds = VideoDataset(recs, DataConfig(num_frames=4, frame_stride=1, image_size=32), train=False)
    with caplog.at_level(logging.WARNING, logger="tgmae.data.dataset"):
        assert ds[0]["load_failures"] > 0
    lines = [r.getMessage() for r in caplog.records if "epic_gap5" in r.getMessage()]
    assert len(lines) == 1 and "frame_0000000005.jpg" in lines[0], lines


def test_check_of_a_train_file_without_its_test_file_checks_the_train_file(tmp_path, capsys):
    """Issue 28 re-trial 20A M1: `data check` of Diving48_V2_train.json with no Diving48_V2_test.json
    beside it failed (exit 2) advising "set data.val_annotations", which data check does not take.
    The train file named is checked; the missing test list a run would read is said in a line."""
    root = tmp_path / "d48"
    root.mkdir()
    for name in ("Diving48_V2_train.json", "Diving48_vocab.json"):
        shutil.copy(DATA / "diving48" / name, root / name)
    names = [it["vid_name"] for it in json.loads((root / "Diving48_V2_train.json").read_text())]
    (root / "rgb").mkdir()
    for name in names:
        write_video(root / "rgb" / f"{name}.mp4", _clip(160), codec="mpeg4")
    for extra in ([], ["--subset", "train"]):
        out = tmp_path / "r.json"
        code = cli_main(["data", "check", "--format", "diving48", "--root", str(root), "Diving48_V2_train.json",
                         "--min-frames", "16", "--out", str(out), "--no-progress", "--overwrite", *extra])
        printed = capsys.readouterr()
        assert code == 0, printed
        rep = json.loads(out.read_text())
        assert [(x["subset"], x["records"]) for x in rep["lists"]] == [("train", len(names))]
        assert rep["checked"] == rep["ok"] == len(names)
        assert "Diving48_V2_test.json" in printed.out and "set data.val_annotations" not in printed.out + printed.err
    # the test list asked for (--subset val of the folder) and missing stays a refusal naming the file
    assert cli_main(["data", "check", "--format", "diving48", "--root", str(root), str(root), "--subset", "val",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Diving48_V2_test.json" in err and "set data.val_annotations" not in err


def test_check_of_the_val_file_named_as_the_train_list_checks_and_lists_it_once(tmp_path, capsys):
    """Issue 28 re-trial 20A M3: `data check --format ssv2 validation.json` (read as the train list;
    a run would read the folder's validation.json as its test list too) printed "lists: train
    validation.json (2), val validation.json (2, 2 checked above)" and each bad row twice. A file
    named once is read, checked and listed once."""
    root = tmp_path / "ssv2"
    root.mkdir()
    shutil.copy(DATA / "ssv2" / "labels.json", root / "labels.json")
    items = json.loads((DATA / "ssv2" / "validation.json").read_text())
    bad_row = {"id": "9", "label": "x", "template": "Not a template [something]", "placeholders": ["x"]}
    (root / "validation.json").write_text(json.dumps(items + [bad_row]))
    for it in items:
        write_video(root / f"{it['id']}.mp4", _clip(20))
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", "ssv2", "--root", str(root), "validation.json",
                     "--min-frames", "16", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1  # the bad row
    rep = json.loads(out.read_text())
    assert [(x["subset"], x["records"]) for x in rep["lists"]] == [("train", len(items))]
    assert rep["checked"] == len(items) and rep["bad_rows"] == len(rep["rows"]) == 1
    assert printed.count("bad row:") == 1 and printed.count("validation.json (") <= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_check_decodes_every_frame_image_of_a_frame_folder(tmp_path, capsys, workers):
    """Re-trial 24A M3: a frame folder with an empty image (frame 10) or a truncated one (frame 20)
    was checked ok although extract / training call it unreadable; data check now decodes every
    image in the record's range with the reader training uses, naming the frame and giving the same
    kind training's reader does (zero_bytes / undecodable). A bad image outside a record's range
    is not that record's fault (training never reads it)."""
    from PIL import Image

    from tgmae.data.video import VideoError, read_frames

    root = tmp_path / "ff"
    for name in ("good", "empty", "cut", "late"):
        (root / name).mkdir(parents=True)
        for i in range(1, 25):
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / name / f"img_{i:05d}.png")
    (root / "empty" / "img_00010.png").write_bytes(b"")
    whole = (root / "cut" / "img_00020.png").read_bytes()
    (root / "cut" / "img_00020.png").write_bytes(whole[:500])
    (root / "late" / "img_00023.png").write_bytes(b"")  # past the record's range [0, 16)
    ann = root / "list.csv"
    ann.write_text("path,label,video_id,start_frame,end_frame\ngood,0,good,,\nempty,0,empty,,\ncut,0,cut,,\n"
                   "late,0,late,0,16\n")
    out = tmp_path / "report.json"
    code = cli_main(["data", "check", "--format", "csv", "--root", str(root), str(ann), "--min-frames", "4",
                     "--frame-stride", "1", "--out", str(out), "--no-progress", "--workers", str(workers)])
    assert code == 1
    rep = json.loads(out.read_text())
    assert rep["ok"] == 2 and rep["bad"] == 2
    items = {Path(i["path"]).name: i for i in rep["items"]}
    assert items["empty"]["kind"] == "zero_bytes" and "img_00010.png" in items["empty"]["reason"], items
    assert items["cut"]["kind"] == "undecodable" and "img_00020.png" in items["cut"]["reason"], items
    # the verdict is the one training's reader gives when it reaches the frame
    for name, frame, kind in (("empty", 9, "zero_bytes"), ("cut", 19, "undecodable")):
        with pytest.raises(VideoError) as e:
            read_frames(root / name, [frame])
        assert e.value.kind == kind and f"img_{frame + 1:05d}.png" in str(e.value)


def test_check_reports_an_ssv2_row_without_template_and_exits_1(tmp_path, capsys):
    """Re-trial 29B T1: a train.json row without "template" was read unlabelled: `0 bad annotation
    rows`, exit 0, and finetuning then crashed on label -1."""
    import json

    data = Path(__file__).parent / "data" / "ssv2"
    shutil.copy(data / "labels.json", tmp_path / "labels.json")
    items = json.loads((data / "train.json").read_text())
    del items[0]["template"]
    (tmp_path / "train.json").write_text(json.dumps(items))
    code = cli_main(["data", "check", "--format", "ssv2", "--root", str(tmp_path), str(tmp_path / "train.json"),
                     "--out", str(tmp_path / "r.json")])
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bad_rows"] == 1 and "no template" in report["rows"][0]["reason"]


def test_a_row_naming_a_fifo_or_a_device_is_not_a_regular_file(tmp_path):
    """Re-trial 31A M3: a row naming a fifo (or a link to /dev/zero) was a "zero-byte file"; it is
    unreadable as "not a regular file (a fifo)", and never opened (a fifo would block the reader)."""
    import os

    root = tmp_path / "root"
    (root / "v").mkdir(parents=True)
    write_video(root / "v" / "good.mp4", _clip(24), gop=8)
    os.mkfifo(root / "v" / "fifo.mp4")
    (root / "v" / "dev.mp4").symlink_to("/dev/zero")
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\nv/good.mp4,0\nv/fifo.mp4,1\nv/dev.mp4,0\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    out = tmp_path / "report.json"
    assert cli_main(["data", "check", "--format", "csv", "--root", str(root), str(ann), "--out", str(out),
                     "--workers", "1", "--no-progress"]) == 1
    items = {Path(i["path"]).name: (i["kind"], i["reason"]) for i in json.loads(out.read_text())["items"]}
    assert items == {"fifo.mp4": ("unreadable", "not a regular file (a fifo)"),
                     "dev.mp4": ("unreadable", "not a regular file (a character device)")}
