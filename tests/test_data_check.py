"""`tgmae data check`: report JSON contents and exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tgmae.cli import main as cli_main
from tgmae.data.check import main
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
    code = main(["check", "--format", "csv", "--root", str(root), str(ann), "--min-frames", "8",
                 "--out", str(out), "--workers", str(workers), "--no-progress"])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["records"] == rep["checked"] == 6 and rep["ok"] == 1 and rep["bad"] == 5
    assert rep["counts"] == {"missing": 1, "zero_bytes": 1, "unreadable": 1, "no_video_stream": 0, "no_frames": 0,
                             "truncated": 1, "undecodable": 0, "too_short": 1, "bad_label": 0}
    kinds = {Path(i["path"]).name: i["kind"] for i in rep["items"]}
    assert kinds == {"short.mp4": "too_short", "zero.mp4": "zero_bytes", "garbage.mp4": "unreadable",
                     "missing.mp4": "missing", "cut.mkv": "truncated"}
    assert all(i["reason"] for i in rep["items"])
    assert [(r["line"], r["reason"].split()[0]) for r in rep["rows"]] == [(8, "empty"), (9, "label")]
    assert rep["rows"][0]["file"].endswith("ann.csv") and rep["bad_rows"] == 2
    assert rep["frames"]["min"] == 24 and rep["num_classes"] == 2
    printed = capsys.readouterr().out
    assert "6 videos checked: 1 ok, 5 bad" in printed and "ann.csv:8" in printed


def test_check_through_cli_and_formats(tmp_path, capsys):
    """The `tgmae data check` entry point on a shipped layout (UCF101 split files)."""
    root = tmp_path / "UCF-101"
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyLipstick/v_ApplyLipstick_g01_c01.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, _clip(20), codec="mpeg4")
    out = tmp_path / "r.json"
    code = cli_main(["data", "check", "--format", "ucf101", "--root", str(root),
                     str(DATA / "ucf101" / "ucfTrainTestlist"), "--subset", "test", "--min-frames", "16",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["checked"] == 3 and rep["ok"] == 2 and rep["counts"]["missing"] == 1
    assert rep["items"][0]["video_id"] == "v_HandStandPushups_g01_c01"


def test_check_unreadable_annotations_exit_2(tmp_path, capsys):
    code = main(["check", "--format", "ssv2", "--root", str(tmp_path), str(tmp_path / "nothing"), "--no-progress"])
    assert code == 2 and "not found" in capsys.readouterr().err
    assert main([]) == 2
    shutil.rmtree(tmp_path)
