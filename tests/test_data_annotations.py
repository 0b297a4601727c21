"""tgmae.data.annotations: every dataset's shipped layout (fixtures in tests/data/<format>/)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tgmae.data.annotations import AnnotationError
from tgmae.data.formats import load_annotations

DATA = Path(__file__).parent / "data"


def test_generic_csv_with_classes_txt(tmp_path):
    recs, classes = load_annotations("csv", tmp_path, DATA / "csv" / "train.csv")
    assert classes == ["walking", "jumping"]
    assert [r.label for r in recs] == [0, 1, 0, 1]  # "walking" resolved through classes.txt
    assert recs[0].path == str(tmp_path / "videos" / "walk.mp4") and recs[0].video_id == "videos/walk"
    assert recs[1].caption == "a person jumps, then lands"  # quoted comma kept
    assert recs[2].caption is None and recs[0].start_frame is None


def test_generic_jsonl_frame_folder_and_range(tmp_path):
    recs, classes = load_annotations("csv", tmp_path, DATA / "csv" / "val.jsonl")
    assert [r.label for r in recs] == [0, 1]
    assert recs[1].path == str(tmp_path / "frames" / "jump") and recs[1].video_id == "frames/jump"
    assert (recs[1].start_frame, recs[1].end_frame) == (2, 14)


def test_generic_relative_annotation_path_is_under_root(tmp_path):
    shutil.copy(DATA / "csv" / "train.csv", tmp_path / "ann.csv")
    (tmp_path / "classes.txt").write_text("walking\njumping\n")
    recs, classes = load_annotations("csv", tmp_path, "ann.csv")
    assert len(recs) == 4 and classes == ["walking", "jumping"]


def test_generic_bad_rows_name_file_and_line(tmp_path):
    bad = DATA / "csv" / "bad.csv"
    with pytest.raises(AnnotationError, match=r"bad\.csv:3: empty path"):
        load_annotations("csv", tmp_path, bad)
    problems: list = []
    recs, _ = load_annotations("csv", tmp_path, bad, on_error="skip", problems=problems)
    assert len(recs) == 1
    assert [(p.line, p.reason.split()[0]) for p in problems] == [(3, "empty"), (4, "label"), (5, "label")]
    assert "out of range" in problems[1].reason and "dancing" in problems[2].reason


def test_generic_without_classes_file_numbers_labels(tmp_path):
    ann = tmp_path / "own.csv"
    ann.write_text("path,label\na.mp4,2\nb.mp4,0\n")
    recs, classes = load_annotations("csv", tmp_path, ann)
    assert classes == ["0", "1", "2"] and [r.label for r in recs] == [2, 0]
    header = tmp_path / "noheader.csv"
    header.write_text("a.mp4,2\n")
    with pytest.raises(AnnotationError, match="noheader.csv:1: header"):
        load_annotations("csv", tmp_path, header)


def test_k400_official_csv(tmp_path):
    (tmp_path / "abseiling").mkdir()
    (tmp_path / "abseiling" / "--3ouPhoy2A_000020_000030.mp4").write_bytes(b"x")  # per-class layout
    recs, classes = load_annotations("k400", tmp_path, DATA / "k400" / "train.csv")
    assert classes == ["abseiling", "air drumming", "zumba"]
    assert [r.label for r in recs] == [0, 0, 1, 2, 1]
    assert recs[0].path == str(tmp_path / "---QUuC4vJs_000003_000013.mp4")  # flat layout default
    assert recs[1].path == str(tmp_path / "abseiling" / "--3ouPhoy2A_000020_000030.mp4")
    assert recs[3].video_id == "-0C6CSgb-Zc_000048_000058"
    val, val_classes = load_annotations("k400", tmp_path, DATA / "k400" / "validate.csv")
    assert val_classes == classes and [r.label for r in val] == [0, 1, 2]


def test_k400_class_ids_shared_with_train_file(tmp_path):
    """A val file lacking a class still numbers classes like its train sibling."""
    shutil.copy(DATA / "k400" / "train.csv", tmp_path / "train.csv")
    (tmp_path / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,1,11,val\n")
    recs, classes = load_annotations("k400", tmp_path, tmp_path / "validate.csv")
    assert classes == ["abseiling", "air drumming", "zumba"] and recs[0].label == 2
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,one,11,val\n")
    with pytest.raises(AnnotationError, match="bad.csv:2: time_start 'one'"):
        load_annotations("k400", tmp_path, tmp_path / "bad.csv")


def test_k400_videomae_list(tmp_path):
    recs, classes = load_annotations("k400", tmp_path, DATA / "k400" / "videomae_train.csv")
    assert [r.label for r in recs] == [0, 1, 399] and len(classes) == 400
    assert recs[1].path == str(tmp_path / "train_256" / "air_drumming" / "--nQbRBEz2s_000104_000114.mp4")
    assert recs[1].video_id == "--nQbRBEz2s_000104_000114"


def test_ssv2(tmp_path):
    recs, classes = load_annotations("ssv2", tmp_path, DATA / "ssv2", subset="train")
    assert classes[2] == "Holding something next to something" and len(classes) == 4
    assert [r.label for r in recs] == [2, 1, 3]
    assert recs[0].path == str(tmp_path / "78687.webm") and recs[0].video_id == "78687"
    assert recs[0].caption == "holding potato next to vicks vaporub bottle"
    val, _ = load_annotations("ssv2", tmp_path, DATA / "ssv2", subset="val")
    assert [(r.video_id, r.label) for r in val] == [("74225", 0), ("116154", 3)]
    test, _ = load_annotations("ssv2", tmp_path, DATA / "ssv2" / "test.json")
    assert [r.label for r in test] == [-1, -1]


def test_ssv2_unknown_template_names_line(tmp_path):
    shutil.copy(DATA / "ssv2" / "labels.json", tmp_path / "labels.json")
    items = json.loads((DATA / "ssv2" / "train.json").read_text())
    items[1]["template"] = "Juggling [something]"
    (tmp_path / "train.json").write_text("[\n" + ",\n".join(json.dumps(i) for i in items) + "\n]\n")
    with pytest.raises(AnnotationError, match=r"train\.json:3: template 'Juggling"):
        load_annotations("ssv2", tmp_path, tmp_path, subset="train")


@pytest.mark.parametrize("labels,named", [
    ({"Pushing something": "0", "Pulling something": "0", "Moving something": "1"},
     r"'Pushing something' and 'Pulling something'.*id 0"),  # two classes merged
    ({"Pushing something": "0", "Moving something": "2"}, r"id 1"),  # not contiguous
    ({"Pushing something": "0", "Moving something": "one"}, r"'Moving something'.*'one'"),  # not an integer
    (["Pushing something", "Moving something"], r"template -> id"),  # a list, not an object
])
def test_ssv2_malformed_labels_json_is_refused_naming_the_file(tmp_path, labels, named):
    """labels.json must map each template to its own id 0..N-1: a repeated id silently merged two
    classes; gaps, non-integers and a list were tracebacks (IndexError / ValueError / AttributeError)."""
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "train.json").write_text('[{"id": "1", "label": "pushing a box", "template": "Pushing [something]"}]')
    with pytest.raises(AnnotationError, match=named) as e:
        load_annotations("ssv2", tmp_path, tmp_path, subset="train")
    assert str(tmp_path / "labels.json") in str(e.value) and "\n" not in str(e.value)


def test_data_check_on_a_malformed_ssv2_labels_json_is_one_line(tmp_path, capsys):
    from tgmae.cli import main

    (tmp_path / "labels.json").write_text('{"Pushing something": "0", "Moving something": "2"}')
    (tmp_path / "train.json").write_text('[{"id": "1", "label": "pushing a box", "template": "Pushing [something]"}]')
    capsys.readouterr()
    assert main(["data", "check", "--format", "ssv2", "--root", str(tmp_path), str(tmp_path / "train.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels.json" in err


@pytest.mark.parametrize("split,subset,expected", [
    (1, "train", [0, 0, 1, 2, 3]), (1, "test", [0, 1, 3]), (2, "train", [0, 2]), (2, "test", [0]),
])
def test_ucf101_splits(tmp_path, split, subset, expected):
    recs, classes = load_annotations("ucf101", tmp_path, DATA / "ucf101" / "ucfTrainTestlist",
                                     split=split, subset=subset)
    assert classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "HandstandPushups"]
    assert [r.label for r in recs] == expected
    assert all("\r" not in r.path for r in recs)  # CRLF as shipped
    assert recs[0].path.startswith(str(tmp_path / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_"))


def test_ucf101_label_mismatch_is_reported(tmp_path):
    folder = tmp_path / "lists"
    shutil.copytree(DATA / "ucf101" / "ucfTrainTestlist", folder)
    (folder / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 1\r\n")
    with pytest.raises(AnnotationError, match=r"trainlist01\.txt:1: label 1 disagrees"):
        load_annotations("ucf101", tmp_path, folder)


@pytest.mark.parametrize("split,subset,expected", [
    (1, "train", [("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0"),
                  ("cartwheel", "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0"),
                  ("catch", "96-_Torwarttraining_1_catch_f_cm_np1_le_bad_0")]),
    (2, "test", [("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0"),
                 ("catch", "96-_Torwarttraining_1_catch_f_cm_np1_le_bad_0")]),
])
def test_hmdb51_split_files(tmp_path, split, subset, expected):
    recs, classes = load_annotations("hmdb51", tmp_path, DATA / "hmdb51" / "testTrainMulti_7030_splits",
                                     split=split, subset=subset)
    assert classes == ["brush_hair", "cartwheel", "catch"]
    assert [(classes[r.label], r.video_id) for r in recs] == expected
    assert recs[0].path == str(tmp_path / expected[0][0] / (expected[0][1] + ".avi"))


def test_hmdb51_split_file_of_another_split_is_refused_naming_data_split(tmp_path):
    """Issue #28.6: a named HMDB51 split file (`brush_hair_test_split2.txt`) read the split of
    data.split instead. As for UCF101 (trainlistNN vs data.split), a mismatch is refused naming
    data.split; the matching split reads as the folder does."""
    from tgmae.config import ConfigError

    folder = DATA / "hmdb51" / "testTrainMulti_7030_splits"
    with pytest.raises(ConfigError) as e:
        load_annotations("hmdb51", tmp_path, folder / "brush_hair_test_split2.txt", split=1, subset="train")
    assert "data.split=1" in str(e.value) and "brush_hair_test_split2.txt" in str(e.value)
    named, _ = load_annotations("hmdb51", tmp_path, folder / "brush_hair_test_split2.txt", split=2, subset="test")
    whole, _ = load_annotations("hmdb51", tmp_path, folder, split=2, subset="test")
    assert [r.video_id for r in named] == [r.video_id for r in whole]


def test_diving48(tmp_path):
    recs, classes = load_annotations("diving48", tmp_path, DATA / "diving48", subset="train")
    assert len(classes) == 48 and classes[0] == "Back 15som NoTwis PIKE"
    assert [(r.video_id, r.label) for r in recs] == [("-mmq0PT-u8k_00155", 26), ("-mmq0PT-u8k_00156", 0),
                                                     ("1HkqRRC2tdY_00013", 47)]
    assert (recs[2].start_frame, recs[2].end_frame) == (30, 146)
    assert recs[0].path == str(tmp_path / "rgb" / "-mmq0PT-u8k_00155.mp4")
    test, _ = load_annotations("diving48", tmp_path, DATA / "diving48" / "Diving48_V2_test.json")
    assert [r.label for r in test] == [12, 26]


def test_epic55_actions_verbs_nouns(tmp_path):
    (tmp_path / "P01" / "P01_01").mkdir(parents=True)
    recs, classes = load_annotations("epic55", tmp_path, DATA / "epic55" / "EPIC_train_action_labels.csv")
    pairs = [(r.targets["verb"], r.targets["noun"]) for r in recs]
    assert pairs == [(3, 8), (6, 114), (4, 8), (3, 10), (0, 31), (2, 13)]
    order = sorted(set(pairs))
    assert [r.label for r in recs] == [order.index(p) for p in pairs]
    assert classes[recs[0].label] == "open door" and len(classes) == 6
    assert recs[0].path == str(tmp_path / "P01" / "P01_01")
    assert (recs[0].start_frame, recs[0].end_frame) == (7, 202)  # 1-based inclusive 8..202
    assert recs[5].caption == "wash cup and spoon" and recs[5].video_id == "5"
    (tmp_path / "P02" / "P02_03").mkdir(parents=True)  # the val rows' frame folder
    val, val_classes = load_annotations("epic55", tmp_path, DATA / "epic55" / "EPIC_val_action_labels.csv")
    assert val_classes == classes  # ids from the training file next to it
    assert [r.label for r in val] == [recs[0].label, recs[4].label]


def test_unknown_format_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="format"):
        load_annotations("kinetics", tmp_path, DATA / "k400" / "train.csv")
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations("csv", tmp_path, tmp_path / "nope.csv")
    with pytest.raises(AnnotationError, match="no \\*_test_split3"):
        load_annotations("hmdb51", tmp_path, DATA / "hmdb51" / "testTrainMulti_7030_splits", split=3)


# --------------------------------------------------------------------------------------------
# Video ids: unique within a data set (issue 28), class names wherever the format carries them
# --------------------------------------------------------------------------------------------


def test_csv_ids_are_root_relative_paths_so_same_names_in_class_folders_differ(tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\nAnimation/clip1.avi,Animation\nBiking/clip1.avi,Biking\n"
                   "Walking/clip1.avi,Walking\n./frames/jump,Walking\n")
    recs, classes = load_annotations("csv", tmp_path, ann)
    assert [r.video_id for r in recs] == ["Animation/clip1", "Biking/clip1", "Walking/clip1", "frames/jump"]
    assert [classes[r.label] for r in recs] == ["Animation", "Biking", "Walking", "Walking"]
    absolute = tmp_path / "abs.csv"
    absolute.write_text(f"path,label\n{tmp_path / 'Biking' / 'clip1.avi'},0\n")
    assert load_annotations("csv", tmp_path, absolute)[0][0].video_id == "Biking/clip1"


def test_a_video_id_twice_is_refused_naming_both_rows(tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\ntruncated.avi,0\nok.mp4,0\ntruncated.mp4,1\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("csv", tmp_path, ann)
    msg = str(e.value)
    assert "ann.csv:4" in msg and "line 2" in msg and "'truncated'" in msg
    assert "truncated.avi" in msg and "truncated.mp4" in msg and "video_id" in msg
    problems: list = []
    recs, _ = load_annotations("csv", tmp_path, ann, on_error="skip", problems=problems)
    assert [r.video_id for r in recs] == ["truncated", "ok"] and [p.line for p in problems] == [4]
    given = tmp_path / "given.csv"  # the way out: ids of one's own
    given.write_text("path,label,video_id\ntruncated.avi,0,t_avi\ntruncated.mp4,1,t_mp4\n")
    assert [r.video_id for r in load_annotations("csv", tmp_path, given)[0]] == ["t_avi", "t_mp4"]
    same = tmp_path / "same.csv"
    same.write_text("path,label\na.mp4,0\na.mp4,0\n")
    with pytest.raises(AnnotationError, match=r"same\.csv:3: video id 'a' .*line 2.*same video"):
        load_annotations("csv", tmp_path, same)


def test_ucf101_layout_ids_keep_official_names_and_tell_clip1s_apart(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "classInd.txt").write_text("1 Animation\n2 Biking\n3 Walking\n")
    (folder / "trainlist01.txt").write_text("Animation/clip1.avi 1\nBiking/clip1.avi 2\nWalking/clip1.avi 3\n"
                                            "Walking/v_Walking_g01_c01.avi 3\n")
    recs, _ = load_annotations("ucf101", tmp_path, folder)
    assert [r.video_id for r in recs] == ["Animation/clip1", "Biking/clip1", "Walking/clip1", "v_Walking_g01_c01"]
    (folder / "trainlist01.txt").write_text("Walking/v_Walking_g01_c01.avi 3\nWalking/v_Walking_g01_c01.avi 3\n")
    with pytest.raises(AnnotationError, match=r"trainlist01\.txt:2: video id 'v_Walking_g01_c01'.*line 1"):
        load_annotations("ucf101", tmp_path, folder)


def test_hmdb51_and_k400_list_ids_twice_are_refused(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "run_test_split1.txt").write_text("a.avi 1\n")
    (folder / "walk_test_split1.txt").write_text("a.avi 1\n")
    with pytest.raises(AnnotationError, match=r"walk_test_split1\.txt:1: video id 'a' .*run_test_split1\.txt:1"):
        load_annotations("hmdb51", tmp_path, folder)
    lst = tmp_path / "list.txt"
    lst.write_text("train/a/x_000001_000011.mp4 0\nval/b/clip1.mp4 1\ntrain/b/clip1.mp4 1\n")
    recs, _ = load_annotations("k400", tmp_path, lst)
    assert [r.video_id for r in recs] == ["x_000001_000011", "val/b/clip1", "train/b/clip1"]


def test_an_absolute_path_outside_the_root_gives_its_file_name(tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\n/elsewhere/a/clip.mp4,0\n/elsewhere/b/clip.mp4,0\n")
    with pytest.raises(AnnotationError, match=r"ann\.csv:3: video id 'clip' already on line 2"):
        load_annotations("csv", tmp_path, ann)


def test_k400_videomae_list_reads_class_names_from_classes_txt_beside_it(tmp_path):
    """issue 28: `path label` lists with classes.txt beside them gave class names "0".."N-1"."""
    lst = tmp_path / "train.txt"
    lst.write_text("train/abseiling/a_000001_000011.mp4 0\ntrain/zumba/b_000001_000011.mp4 2\n")
    (tmp_path / "classes.txt").write_text("abseiling\nair drumming\nzumba\n")
    recs, classes = load_annotations("k400", tmp_path, lst)
    assert classes == ["abseiling", "air drumming", "zumba"] and [classes[r.label] for r in recs] == ["abseiling", "zumba"]
    lst.write_text("train/abseiling/a_000001_000011.mp4 3\n")
    with pytest.raises(AnnotationError, match=r"train\.txt:1: label 3 out of range \[0, 3\) of .*classes\.txt"):
        load_annotations("k400", tmp_path, lst)
    (tmp_path / "classes.txt").unlink()
    assert load_annotations("k400", tmp_path, lst)[1] == ["0", "1", "2", "3"]  # numbered: no names to give


def test_generic_unknown_columns_are_named_and_extra_values_are_bad_rows(tmp_path, caplog):
    """`start,end` instead of `start_frame,end_frame` would use the whole video without a word: the
    ignored columns are named in a warning; a row with more values than the header is a bad row."""
    ann = tmp_path / "own.csv"
    ann.write_text("path,label,start,end\na.mp4,0,4,12\nb.mp4,1,0,8,extra\n")
    problems: list = []
    with caplog.at_level("WARNING", logger="tgmae.data.annotations"):
        recs, _ = load_annotations("csv", tmp_path, ann, on_error="skip", problems=problems)
    assert "ignored column(s) end, start" in caplog.text and "start_frame" in caplog.text
    assert [r.video_id for r in recs] == ["a"] and recs[0].start_frame is None
    assert [(p.line, "more than the header" in p.reason) for p in problems] == [(3, True)]


# --------------------------------------------------------------------------------------------
# Class names: each one once (issue 28 re-trial 15, S2), JSON labels ints (S4)
# --------------------------------------------------------------------------------------------


def _one_line_naming(e, *parts):
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)


@pytest.mark.parametrize("fmt,listed", [
    ("k400", "v0.mp4 0\nv1.mp4 1\nv2.mp4 2\n"),  # VideoMAE list
    ("k400", "label,youtube_id,time_start,time_end,split\nalpha,abc,1,11,train\n"),  # official CSV
    ("csv", "path,label\nv0.mp4,0\nv1.mp4,beta\n"),  # generic
])
def test_a_class_name_twice_in_classes_txt_is_refused_naming_both_lines(tmp_path, fmt, listed):
    """`alpha beta alpha`: head column 2 was shown as classes 0 and 2 (the last duplicate won),
    label2id lost class 0, an official CSV's "alpha" rows all became class 2."""
    (tmp_path / "classes.txt").write_text("alpha\nbeta\nalpha\n")
    ann = tmp_path / "list.txt"
    ann.write_text(listed)
    with pytest.raises(AnnotationError) as e:
        load_annotations(fmt, tmp_path, ann, on_error="skip", problems=[])
    _one_line_naming(e, tmp_path / "classes.txt", "'alpha'", "lines 1 and 3")


def test_a_class_name_twice_in_ucf101_classind_is_refused(tmp_path):
    folder = tmp_path / "lists"
    shutil.copytree(DATA / "ucf101" / "ucfTrainTestlist", folder)
    (folder / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 archery\r\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("ucf101", tmp_path, folder)
    _one_line_naming(e, folder / "classInd.txt", "'archery'", "lines 2 and 3")


def test_a_class_name_twice_in_the_diving48_vocab_is_refused(tmp_path):
    shutil.copy(DATA / "diving48" / "Diving48_V2_train.json", tmp_path)
    vocab = json.loads((DATA / "diving48" / "Diving48_vocab.json").read_text())
    vocab[5] = vocab[2]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(AnnotationError) as e:
        load_annotations("diving48", tmp_path, tmp_path)
    _one_line_naming(e, tmp_path / "Diving48_vocab.json", repr(" ".join(vocab[2])), "entries 2 and 5")


def test_a_template_twice_in_ssv2_labels_json_is_refused(tmp_path):
    """json.loads keeps the last of a repeated key: the first id went missing without a word."""
    (tmp_path / "labels.json").write_text('{"Pushing something": "0", "Moving something": "1", '
                                          '"Pushing something": "2"}')
    (tmp_path / "train.json").write_text('[{"id": "1", "label": "pushing a box", "template": "Pushing [something]"}]')
    with pytest.raises(AnnotationError) as e:
        load_annotations("ssv2", tmp_path, tmp_path, subset="train")
    _one_line_naming(e, tmp_path / "labels.json", "'Pushing something'", "ids 0 and 2")


def test_two_epic_actions_of_one_name_are_refused(tmp_path):
    src = (DATA / "epic55" / "EPIC_train_action_labels.csv").read_text().splitlines()
    # the last row renamed: a second (verb, noun) pair called "open door"
    head, rows = src[0], src[1:]
    cols = head.split(",")
    last = rows[-1].split(",")
    last[cols.index("verb")], last[cols.index("noun")] = "open", "door"
    (tmp_path / "EPIC_train_action_labels.csv").write_text("\n".join([head, *rows[:-1], ",".join(last)]) + "\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("epic55", tmp_path, tmp_path / "EPIC_train_action_labels.csv")
    _one_line_naming(e, tmp_path / "EPIC_train_action_labels.csv", "'open door'", f"lines 2 and {len(rows) + 1}")


@pytest.mark.parametrize("vocab,named", [
    ('[["Back", "15som", "05Twis", "FREE"], "Inward"]', "entry 1"),  # a string: "I n w a r d"
    ('[["Back", "15som", "05Twis", "FREE"], ["Inward", 25]]', "entry 1"),
    ('{"0": ["Back"]}', "a list"),
])
def test_a_malformed_diving48_vocab_is_refused_naming_file_and_entry(tmp_path, vocab, named):
    (tmp_path / "Diving48_vocab.json").write_text(vocab)
    (tmp_path / "Diving48_V2_train.json").write_text('[{"vid_name": "d1", "label": 0}]')
    with pytest.raises(AnnotationError, match=named) as e:
        load_annotations("diving48", tmp_path, tmp_path)
    _one_line_naming(e, tmp_path / "Diving48_vocab.json")


@pytest.mark.parametrize("item,named", [
    ('{"vid_name": "d1", "label": true}', "label"),  # was class 1
    ('{"vid_name": "d1", "label": 1.0}', "label"),
    ('{"vid_name": "d1", "label": 0, "start_frame": "0", "end_frame": 8}', "start_frame"),
    ('{"vid_name": "d1", "label": 0, "start_frame": false, "end_frame": 8}', "start_frame"),
    ('["d1", 0]', "object"),
])
def test_diving48_labels_and_frames_must_be_integers_not_booleans(tmp_path, item, named):
    (tmp_path / "Diving48_V2_train.json").write_text(f"[\n{item}\n]")
    with pytest.raises(AnnotationError, match=named) as e:
        load_annotations("diving48", tmp_path, tmp_path)
    _one_line_naming(e, "Diving48_V2_train.json:2")


@pytest.mark.parametrize("labels,items,named", [
    ('{"Pushing something": true}', '[{"id": "1", "template": "Pushing [something]"}]', "labels.json"),
    ('{"Pushing something": "0"}', '[\n{"id": true, "template": "Pushing [something]"}]', "train.json:2: id"),
    ('{"Pushing something": "0"}', '[\n{"id": "1", "template": 0}]', "train.json:2: template"),
    ('{"Pushing something": "0"}', '[\n["1", "Pushing [something]"]]', "train.json:2"),
])
def test_ssv2_ids_and_templates_of_the_wrong_type_are_refused(tmp_path, labels, items, named):
    (tmp_path / "labels.json").write_text(labels)
    (tmp_path / "train.json").write_text(items)
    with pytest.raises(AnnotationError, match=named) as e:
        load_annotations("ssv2", tmp_path, tmp_path, subset="train")
    _one_line_naming(e)


def test_an_official_k400_csv_without_a_label_column_is_read_unlabelled(tmp_path):
    """Kinetics' test.csv (`youtube_id,time_start,time_end,split`) was "expected `path label`" on
    every row: it is the official layout without labels, read as SSv2's test.json is (label -1),
    its class names those of train.csv beside it."""
    shutil.copy(DATA / "k400" / "train.csv", tmp_path / "train.csv")
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nabc,1,11,test\nghi,3,13,test\n")
    recs, classes = load_annotations("k400", tmp_path, tmp_path / "test.csv", subset="test")
    assert classes == ["abseiling", "air drumming", "zumba"]
    assert [(r.video_id, r.label) for r in recs] == [("abc_000001_000011", -1), ("ghi_000003_000013", -1)]
    assert recs[0].path == str(tmp_path / "abc_000001_000011.mp4")


def test_ucf101_backslash_paths_are_normalised_in_the_file_path_too(tmp_path):
    """A list written on Windows (`Class\\v_...avi`): the class folder was normalised but the path
    was not, so every video was "file not found" (issue 28 re-trial 15, M7)."""
    folder = tmp_path / "lists"
    shutil.copytree(DATA / "ucf101" / "ucfTrainTestlist", folder)
    (folder / "trainlist01.txt").write_text("Archery\\v_Archery_g01_c01.avi 3\r\n")
    recs, _ = load_annotations("ucf101", tmp_path, folder)
    assert recs[0].path == str(tmp_path / "Archery" / "v_Archery_g01_c01.avi")
    assert recs[0].video_id == "v_Archery_g01_c01"


@pytest.mark.parametrize("row,named", [
    ("a.mp4,1,negstart,-5,10", "start_frame -5"),
    ("a.mp4,1,negend,0,-3", "end_frame -3"),
    ("a.mp4,1,inverted,30,20", "end_frame 20"),
    ("a.mp4,1,empty,10,10", "end_frame 10"),
])
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_generic_row_with_a_bad_frame_range_is_refused_naming_file_line_and_id(tmp_path, row, named, suffix):
    """issue 28 re-trial 16B, S5: a negative start_frame was clipped to 0 (the row captioned from
    [0, 10), `data check` "too short") and end <= start was read as it came; the Diving48 and EPIC
    readers refuse bad ranges when reading. A CSV / JSONL row's range is refused the same way, in
    one line naming the file, the line and the id; with on_error="skip" the row is left out."""
    path, label, vid, start, end = row.split(",")
    ann = tmp_path / f"r.{suffix}"
    if suffix == "csv":
        ann.write_text(f"path,label,video_id,start_frame,end_frame\nb.mp4,0,ok,0,10\n{row}\n")
    else:
        ann.write_text(json.dumps({"path": "b.mp4", "label": 0, "video_id": "ok"}) + "\n" + json.dumps(
            {"path": path, "label": int(label), "video_id": vid, "start_frame": int(start), "end_frame": int(end)}) + "\n")
    with pytest.raises(AnnotationError, match=named) as e:
        load_annotations("csv", tmp_path, ann)
    _one_line_naming(e, f"r.{suffix}:" + ("3" if suffix == "csv" else "2"))
    assert repr(vid) in str(e.value)
    problems = []
    recs, _ = load_annotations("csv", tmp_path, ann, on_error="skip", problems=problems)
    assert [r.video_id for r in recs] == ["ok"] and len(problems) == 1


@pytest.mark.parametrize("start,end", [(-5, 10), (0, -2)])
def test_a_negative_diving48_frame_is_refused(tmp_path, start, end):
    """issue 28 re-trial 16B, S5: Diving48 refused end <= start but read a negative start_frame
    (later clipped to 0)."""
    item = json.dumps({"vid_name": "d1", "label": 0, "start_frame": start, "end_frame": end})
    (tmp_path / "Diving48_V2_train.json").write_text(f"[\n{item}\n]")
    with pytest.raises(AnnotationError, match="negative") as e:
        load_annotations("diving48", tmp_path, tmp_path)
    _one_line_naming(e, "Diving48_V2_train.json:2")


# --------------------------------------------------------------------------------------------
# Issue 28 re-trial 18 A3: one line naming the file, the row and what was expected
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [1, 2])
def test_diving48_json_lines_are_refused_naming_the_file_and_the_shape(tmp_path, lines):
    """Diving48 items given one JSON object per line: two lines read as "not valid JSON (Extra
    data)", one line as a JSON object whose keys were 4 bad rows "expected a JSON object, got a str"."""
    items = [{"vid_name": f"v{i}", "label": 0, "start_frame": 0, "end_frame": 10} for i in range(lines)]
    ann = tmp_path / "Diving48_V2_train.json"
    ann.write_text("".join(json.dumps(it) + "\n" for it in items))
    with pytest.raises(AnnotationError) as e:
        load_annotations("diving48", tmp_path, ann)
    _one_line_naming(e, ann, "one JSON list", "vid_name", "per line")


@pytest.mark.parametrize("value", ["12.5", "abc"])
@pytest.mark.parametrize("layout", ["csv", "jsonl", "epic55"])
def test_a_non_integer_start_frame_names_the_file_line_and_video(tmp_path, layout, value):
    if layout == "epic55":
        ann = tmp_path / "EPIC_train_action_labels.csv"
        ann.write_text("uid,participant_id,video_id,start_frame,stop_frame,verb,verb_class,noun,noun_class\n"
                       "0,P01,P01_01,1,20,open,3,door,8\n"
                       f"1,P01,P01_07,{value},30,close,4,door,8\n")
        (tmp_path / "P01" / "P01_01").mkdir(parents=True)
        where, vid = f"{ann}:3", "P01_07"
    elif layout == "csv":
        ann = tmp_path / "list.csv"
        ann.write_text(f"path,label,start_frame\na.mp4,0,1\nclips/b.mp4,0,{value}\n")
        where, vid = f"{ann}:3", "clips/b"
    else:
        ann = tmp_path / "list.jsonl"
        ann.write_text(json.dumps({"path": "a.mp4", "label": 0}) + "\n"
                       + json.dumps({"path": "b.mp4", "label": 0, "video_id": "bee", "start_frame": value}) + "\n")
        where, vid = f"{ann}:2", "bee"
    with pytest.raises(AnnotationError) as e:
        load_annotations(layout if layout == "epic55" else "csv", tmp_path, ann)
    _one_line_naming(e, where, "start_frame", repr(vid), repr(value))


def test_an_epic_root_without_its_frame_folders_is_refused_naming_the_folder_expected(tmp_path):
    """An EPIC-Kitchens-55 root where no row's frame folder is (another layout, the wrong --root)
    read as one "file not found" per video; it is one line naming the folder the first row needs."""
    (tmp_path / "frames" / "P01_01").mkdir(parents=True)  # not a layout the reader knows
    ann = DATA / "epic55" / "EPIC_train_action_labels.csv"
    for on_error in ("raise", "skip"):
        with pytest.raises(AnnotationError) as e:
            load_annotations("epic55", tmp_path, ann, on_error=on_error, problems=[])
        _one_line_naming(e, ann, tmp_path / "P01" / "P01_01", "frame_0000000001.jpg", "line 2")


# --------------------------------------------------------------------------------------------
# Issue 28 re-trial 19A, M: messages name the row, the file read and why it is read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item,named", [
    ('{"vid_name": "d1", "label": 0, "start_frame": true, "end_frame": 8}', "start_frame true"),
    ('{"vid_name": "d1", "label": 0, "start_frame": 0, "end_frame": null}', None),  # null: the whole video
    ('{"vid_name": "d1", "label": true}', "label true"),
])
def test_a_diving48_rows_bad_value_names_its_vid_name_in_json(tmp_path, item, named):
    """A non-integer start_frame named file:line but not the row's vid_name, and JSON true as True."""
    (tmp_path / "Diving48_V2_train.json").write_text(f"[\n{item}\n]")
    if named is None:
        assert len(load_annotations("diving48", tmp_path, tmp_path)[0]) == 1
        return
    with pytest.raises(AnnotationError) as e:
        load_annotations("diving48", tmp_path, tmp_path)
    _one_line_naming(e, "Diving48_V2_train.json:2", "'d1'", named)
    assert "True" not in str(e.value)


def test_ssv2_labels_json_with_bracketed_templates_is_read(tmp_path):
    """labels.json written with the brackets of train.json's `template` ("Putting [something] on
    [something]"): every row was "template ... not in labels.json" though that text is in it."""
    labels = json.loads((DATA / "ssv2" / "labels.json").read_text())
    plain, _ = load_annotations("ssv2", tmp_path, DATA / "ssv2", subset="train")
    shutil.copy(DATA / "ssv2" / "train.json", tmp_path / "train.json")
    from_train = {i["template"].replace("[", "").replace("]", ""): i["template"]
                  for i in json.loads((DATA / "ssv2" / "train.json").read_text())}
    (tmp_path / "labels.json").write_text(json.dumps({from_train.get(k, k): v for k, v in labels.items()}))
    recs, classes = load_annotations("ssv2", tmp_path, tmp_path, subset="train")
    assert [r.label for r in recs] == [r.label for r in plain] and len(classes) == len(labels)


def test_ssv2_templates_that_differ_only_in_brackets_are_refused(tmp_path):
    (tmp_path / "labels.json").write_text('{"Pushing [something]": "0", "Pushing something": "1"}')
    (tmp_path / "train.json").write_text('[{"id": "1", "template": "Pushing [something]"}]')
    with pytest.raises(AnnotationError) as e:
        load_annotations("ssv2", tmp_path, tmp_path, subset="train")
    _one_line_naming(e, tmp_path / "labels.json", "'Pushing [something]'", "'Pushing something'")


def test_an_ssv2_folders_skipped_rows_and_empty_list_name_the_file_read(tmp_path, caplog, capsys):
    """A folder given for SSv2: the skipped-rows warning and data check's empty-list line named the
    folder, not validation.json (train.json) that was read."""
    from tgmae.cli import main

    (tmp_path / "labels.json").write_text('{"Pushing something": "0"}')
    (tmp_path / "train.json").write_text('[\n{"id": "1", "template": "Opening [something]"}]')
    (tmp_path / "validation.json").write_text('[\n{"id": "2", "template": "Opening [something]"}]')
    with caplog.at_level("WARNING", logger="tgmae.data"):
        load_annotations("ssv2", tmp_path, tmp_path, subset="val", on_error="skip", problems=[])
    assert f"{tmp_path / 'validation.json'}: skipped 1" in caplog.text
    capsys.readouterr()
    main(["data", "check", "--format", "ssv2", "--root", str(tmp_path), str(tmp_path), "--allow-bad",
          "--no-progress"])
    empty = [line for line in capsys.readouterr().out.splitlines() if "empty:" in line]
    assert len(empty) == 2 and str(tmp_path / "train.json") in empty[0], empty
    assert str(tmp_path / "validation.json") in empty[1], empty


def test_data_check_of_a_diving48_train_file_says_why_the_test_file_is_read(tmp_path, capsys):
    """`data check` of Diving48_V2_train.json alone failed "Diving48_V2_test.json: annotation file not
    found": a file the user did not name. It is the val list a run reads beside the train list when
    data.val_annotations is empty: the train file is checked (its videos are missing here: exit 1)
    and a 'not checked' line says so (re-trial 20A M1)."""
    from tgmae.cli import main

    shutil.copy(DATA / "diving48" / "Diving48_V2_train.json", tmp_path / "Diving48_V2_train.json")
    capsys.readouterr()
    assert main(["data", "check", "--format", "diving48", "--root", str(tmp_path),
                 str(tmp_path / "Diving48_V2_train.json"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "not checked" in x)
    assert str(tmp_path / "Diving48_V2_test.json") in line and "data.val_annotations" in line, out


# --------------------------------------------------------------------------------------------
# classes.txt: line order = label, so an empty line inside it is refused (re-trial 21A S1)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,listed", [
    ("csv", 'path,label\n"plain/a,b.avi",1\n'),  # label 1 was the third name, "c"
    ("csv", "path,label\nv.mp4,c\n"),
    ("k400", "v.mp4 1\n"),  # VideoMAE list
    ("k400", "label,youtube_id,time_start,time_end,split\nc,abc,1,11,train\n"),  # official CSV
])
@pytest.mark.parametrize("text,line", [("a\n\nc\n", 2), ("\na\nc\n", 1), ("a\n  \r\nc\r\n", 2)])
def test_an_empty_line_inside_classes_txt_is_refused_naming_file_and_line(tmp_path, fmt, listed, text, line):
    """`a, (empty), c`: the empty line was dropped, so label 1 silently became "c"."""
    (tmp_path / "classes.txt").write_text(text, newline="")
    ann = tmp_path / "list.txt"
    ann.write_text(listed)
    with pytest.raises(AnnotationError) as e:
        load_annotations(fmt, tmp_path, ann)
    _one_line_naming(e, f"{tmp_path / 'classes.txt'}:{line}", "empty")


def test_classes_txt_may_end_in_blank_lines_and_have_crlf_a_bom_and_trailing_spaces(tmp_path):
    (tmp_path / "classes.txt").write_bytes("\ufeffa  \r\nb\r\nc \r\n\r\n  \n\n".encode())
    ann = tmp_path / "list.csv"
    ann.write_text("path,label\nv.mp4,1\nw.mp4,c\n")
    recs, classes = load_annotations("csv", tmp_path, ann)
    assert classes == ["a", "b", "c"] and [r.label for r in recs] == [1, 2]


# --------------------------------------------------------------------------------------------
# Class names that differ only in case, spaces or underscores are one class (re-trial 21A S2)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,listed", [
    ("k400", "v0.mp4 0\nv1.mp4 1\n"),  # VideoMAE list
    ("k400", "label,youtube_id,time_start,time_end,split\nriding bike,abc,1,11,train\n"),  # official CSV
    ("csv", "path,label\nv0.mp4,0\nv1.mp4,walking\n"),  # generic
])
@pytest.mark.parametrize("other", ["Riding Bike", "riding_bike", "riding  bike", "RidingBike"])
def test_class_names_differing_only_in_case_or_spacing_in_classes_txt_are_refused(tmp_path, fmt, listed, other):
    """`riding bike` and `Riding Bike` were two classes: their folders, descriptions and oracle
    captions are one."""
    (tmp_path / "classes.txt").write_text(f"riding bike\nwalking\n{other}\n")
    ann = tmp_path / "list.txt"
    ann.write_text(listed)
    with pytest.raises(AnnotationError) as e:
        load_annotations(fmt, tmp_path, ann)
    _one_line_naming(e, tmp_path / "classes.txt", "'riding bike'", repr(other), "lines 1 and 3")


def test_official_k400_labels_differing_only_in_case_or_spacing_are_refused_naming_both_rows(tmp_path):
    """No classes.txt: `riding bike`, `Riding Bike`, `riding  bike ` became 3 classes."""
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\r\n"
                                        "riding bike,aaaaaaaaaaa,1,5,train\r\n"
                                        "riding bike,ddddddddddd,1,5,train\r\n")
    (tmp_path / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                           "walking,bbbbbbbbbbb,1,5,val\n"
                                           "Riding Bike,ccccccccccc,2,6,val\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("k400", tmp_path, tmp_path / "train.csv")
    _one_line_naming(e, "'riding bike'", "'Riding Bike'", "train.csv:2", "validate.csv:3")


def test_generic_labels_differing_only_in_case_without_classes_txt_are_refused(tmp_path):
    ann = tmp_path / "list.csv"
    ann.write_text("path,label\nv0.mp4,riding bike\nv1.mp4,walking\nv2.mp4,Riding_Bike\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("csv", tmp_path, ann)
    _one_line_naming(e, ann, "'Riding_Bike'", "'riding bike'", "lines 2 and 4")


def test_hmdb51_class_files_differing_only_in_case_are_refused_naming_both_files(tmp_path):
    for name in ("ride_bike", "Ride_Bike", "walk"):
        (tmp_path / f"{name}_test_split1.txt").write_text(f"{name}_v1.avi 1\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("hmdb51", tmp_path, tmp_path)
    _one_line_naming(e, "Ride_Bike_test_split1.txt", "ride_bike_test_split1.txt")


def test_ucf101_classind_names_differing_only_in_underscores_are_refused(tmp_path):
    folder = tmp_path / "lists"
    shutil.copytree(DATA / "ucf101" / "ucfTrainTestlist", folder)
    (folder / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 Apply_Eye_Makeup\r\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("ucf101", tmp_path, folder)
    _one_line_naming(e, folder / "classInd.txt", "'ApplyEyeMakeup'", "'Apply_Eye_Makeup'", "lines 1 and 3")


def test_an_empty_label_in_a_csv_without_classes_txt_is_a_bad_row_not_a_class_named_empty(tmp_path):
    ann = tmp_path / "list.csv"
    ann.write_text("path,label\na.mp4,walking\nb.mp4,\n")
    problems: list = []
    recs, classes = load_annotations("csv", tmp_path, ann, on_error="skip", problems=problems)
    assert classes == ["walking"] and [r.video_id for r in recs] == ["a"]
    assert [p.line for p in problems] == [3]


# --------------------------------------------------------------------------------------------
# A file that is not UTF-8 (re-trial 24A T2): one line naming file:line, never a traceback
# --------------------------------------------------------------------------------------------


def _latin1_after(path: Path, needle: bytes) -> str:
    """Put a Latin-1 é (0xe9) right after the first `needle` of `path`; the message expected."""
    data = path.read_bytes()
    at = data.index(needle) + len(needle)
    path.write_bytes(data[:at] + b"\xe9" + data[at:])
    line, column = data.count(b"\n", 0, at) + 1, at - (data.rfind(b"\n", 0, at) + 1) + 1
    return f"{path}:{line}: not UTF-8 (byte 0xe9 at column {column}); save it as UTF-8"


@pytest.mark.parametrize("fmt,fixture,read,corrupt,needle,kw", [
    ("csv", "csv", "train.csv", "train.csv", b"a person jumps, then", {}),
    ("csv", "csv", "val.jsonl", "val.jsonl", b'"frames/jump', {}),
    ("csv", "csv", "train.csv", "classes.txt", b"jump", {}),
    ("k400", "k400", "train.csv", "train.csv", b"abseiling,--3ou", {}),
    ("k400", "k400", "validate.csv", "train.csv", b"abseiling,--3ou", {}),  # the sibling that numbers classes
    ("k400", "k400", "videomae_train.csv", "videomae_train.csv", b"train_256/air", {}),
    ("ssv2", "ssv2", ".", "train.json", b'"label":"attaching a', {"subset": "train"}),
    ("ssv2", "ssv2", ".", "labels.json", b'"Attaching', {"subset": "train"}),
    ("ucf101", "ucf101/ucfTrainTestlist", ".", "trainlist01.txt", b"ApplyLipstick/v_", {}),
    ("ucf101", "ucf101/ucfTrainTestlist", ".", "classInd.txt", b"3 Arch", {}),
    ("hmdb51", "hmdb51/testTrainMulti_7030_splits", ".", "catch_test_split1.txt", b"Amazing", {}),
    ("diving48", "diving48", ".", "Diving48_V2_train.json", b'"1HkqRRC2tdY', {"subset": "train"}),
    ("diving48", "diving48", ".", "Diving48_vocab.json", b'"Back", "15som", "NoTwis", "TUCK', {"subset": "train"}),
    ("epic55", "epic55", "EPIC_train_action_labels.csv", "EPIC_train_action_labels.csv", b"turn on", {}),
    ("epic55", "epic55", "EPIC_val_action_labels.csv", "EPIC_train_action_labels.csv", b"turn on", {}),
])
def test_a_file_that_is_not_utf8_is_refused_in_one_line_naming_file_and_line(tmp_path, fmt, fixture, read,
                                                                             corrupt, needle, kw):
    from tgmae.textfile import NotUtf8Error

    folder = tmp_path / "ann"
    shutil.copytree(DATA / fixture, folder)
    expected = _latin1_after(folder / corrupt, needle)
    with pytest.raises(NotUtf8Error) as e:
        load_annotations(fmt, tmp_path, folder / read, on_error="skip", **kw)
    assert str(e.value) == expected


def test_data_check_of_a_cp1252_epic_csv_is_one_line_exit_2(tmp_path, capsys):
    """Re-trial 24A T2: a row `open caf\\xe9 door` ended `data check` in a UnicodeDecodeError traceback."""
    from tgmae.cli import main

    shutil.copytree(DATA / "epic55", tmp_path / "ann")
    ann = tmp_path / "ann" / "EPIC_train_action_labels.csv"
    rows = ann.read_bytes().count(b"\n")
    with ann.open("ab") as f:
        f.write(b"6,P01,P01_01,open caf\xe9 door,00:00:08.00,00:00:10.00,201,250,open,3,door,8,[],[]\n")
    (tmp_path / "P01" / "P01_01").mkdir(parents=True)
    capsys.readouterr()
    assert main(["data", "check", "--format", "epic55", "--root", str(tmp_path), str(ann)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ann}:{rows + 1}: not UTF-8 (byte 0xe9 at column 22); save it as UTF-8" in err


# --------------------------------------------------------------------------------------------
# Re-trial 29B: EPIC ids without uid, nameless EPIC classes, SSv2 rows without template, short rows
# --------------------------------------------------------------------------------------------


def _epic_without(tmp_path, *columns: str, rows: "list[list[str]] | None" = None) -> Path:
    """The EPIC fixture CSV without `columns` (and with `rows` instead of its own when given) in
    tmp_path, whose P01/P01_01 frame folder is made."""
    with open(DATA / "epic55" / "EPIC_train_action_labels.csv", newline="") as f:
        head, *own = list(csv.reader(f))
    keep = [i for i, c in enumerate(head) if c not in columns]
    ann = tmp_path / "EPIC_train_action_labels.csv"
    with open(ann, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([r[i] for i in keep] for r in [head, *(own if rows is None else rows)])
    (tmp_path / "P01" / "P01_01").mkdir(parents=True, exist_ok=True)
    return ann


def test_epic_rows_without_uid_keep_their_ids_when_reordered(tmp_path):
    """Re-trial 29B S1: without `uid` a row's id was `VIDEO_LINE`, so rows swapped (a sort, a
    pandas rewrite) took each other's ids, and an annotation or oracle store gave segment A's text
    to segment B. The id names the segment itself: video, start and stop frame."""
    ann = _epic_without(tmp_path, "uid")
    before = {r.video_id: (r.caption, r.start_frame, r.end_frame) for r in load_annotations("epic55", tmp_path, ann)[0]}
    assert before["P01_01_8_202"] == ("open door", 7, 202)
    lines = ann.read_text().splitlines(True)
    lines[1], lines[2] = lines[2], lines[1]
    ann.write_text("".join(lines))
    after = {r.video_id: (r.caption, r.start_frame, r.end_frame) for r in load_annotations("epic55", tmp_path, ann)[0]}
    assert after == before


def test_epic_rows_without_uid_of_one_segment_are_refused_naming_both(tmp_path):
    """Re-trial 29B S1: two rows of one video and one frame range are one id twice."""
    with open(DATA / "epic55" / "EPIC_train_action_labels.csv", newline="") as f:
        _, first, second, *_ = list(csv.reader(f))
    again = list(first)
    again[3] = "open the door"  # another narration of the same segment
    ann = _epic_without(tmp_path, "uid", rows=[first, second, again])
    with pytest.raises(AnnotationError) as e:
        load_annotations("epic55", tmp_path, ann)
    _one_line_naming(e, f"{ann}:4", "'P01_01_8_202'", "line 2", "uid")


def test_epic_without_verb_and_noun_columns_has_classes_without_names(tmp_path):
    """Re-trial 29B S3: the class names were `verb_class noun_class` numbers ("3 8"), which the
    oracle took for names (captions "3 8"): numbers only are no names (`unnamed_classes`)."""
    from tgmae.data.annotations import unnamed_classes

    for gone in (("verb", "noun"), ("noun",)):
        recs, classes = load_annotations("epic55", tmp_path, _epic_without(tmp_path, *gone))
        assert unnamed_classes(classes) and classes[recs[0].label] == "3 8", (gone, classes)
    assert not unnamed_classes(load_annotations("epic55", tmp_path, _epic_without(tmp_path))[1])


def test_any_name_that_parses_as_numbers_is_no_name():
    """Re-trial 32A S6: `1.0 2.0 ...` (a classes.txt written from a float label column) and
    `-1 -2` passed the numbers-only check (oracle captions "7.0", class retrieval of "a video of
    1.0."), and `0_ .. 9_` gave captions "6": a name whose words (`_` a space) all parse as finite
    numbers (int, float, sign, exponent) is numbers only; a name with a word is a name."""
    from tgmae.data.annotations import unnamed_classes

    for numbers in (["0", "1", "2"], ["01", "10"], ["\u0661", "\u0662"], ["3 8", "4 9"], ["1.0", "2.0", "10.0"],
                    ["-1", "-2"], ["+1", "1e3", " 2.5E-1 "], ["0_", "9_"], ["1_000", ".5"], ["7", "-0.0"]):
        assert unnamed_classes(numbers), numbers
    for names in (["1.0", "jump"], ["nan", "inf"], ["1st place", "2nd place"], ["v1.0", "v2.0"], ["0x1", "0x2"],
                  ["1.0.0", "2.0.0"], ["-", "+"], ["e", "E"]):
        assert not unnamed_classes(names), names
    assert not unnamed_classes([])


def test_an_ssv2_row_without_template_in_a_labelled_list_is_a_bad_row(tmp_path):
    """Re-trial 29B T1: a train.json row without "template" was read unlabelled (-1): data check
    passed it, finetuning crashed on target -1. Only a list without any template (test.json) is
    unlabelled."""
    shutil.copy(DATA / "ssv2" / "labels.json", tmp_path / "labels.json")
    items = json.loads((DATA / "ssv2" / "train.json").read_text())
    del items[1]["template"]
    ann = tmp_path / "train.json"
    ann.write_text("[\n" + ",\n".join(json.dumps(it) for it in items) + "\n]\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("ssv2", tmp_path, ann)
    _one_line_naming(e, f"{ann}:3", "no template", "'42326'")
    problems: list = []
    recs, _ = load_annotations("ssv2", tmp_path, ann, on_error="skip", problems=problems)
    assert [r.video_id for r in recs] == ["78687", "100904"] and len(problems) == 1
    test, _ = load_annotations("ssv2", tmp_path, DATA / "ssv2" / "test.json")
    assert [r.label for r in test] == [-1, -1]


@pytest.mark.parametrize("row,named", [
    ("130,P01,P01_01", "3 value(s), fewer than the header's 14 columns"),
    ("130,P01,P01_01,open door,00:00:00.14,00:00:03.37,8,202,open,3,door,8,['door'],[8],x", "1 value(s) more"),
])
def test_an_epic_row_of_another_width_is_one_bad_row(tmp_path, row, named):
    """Re-trial 29B M2: a row cut short was four bad rows, each "None is not an integer"."""
    ann = _epic_without(tmp_path)
    ann.write_text(ann.read_text() + row + "\n")
    problems: list = []
    recs, _ = load_annotations("epic55", tmp_path, ann, on_error="skip", problems=problems)
    assert len(recs) == 6 and [(p.line, p.reason) for p in problems] == [(8, problems[0].reason)], problems
    assert named in problems[0].reason and "None" not in problems[0].reason


def test_a_generic_csv_row_cut_before_its_label_is_one_bad_row(tmp_path):
    """Re-trial 29B M2, the generic reader: a row without its label read "label 'None' is neither
    an integer ..."; a row that only lacks optional columns is still read."""
    ann = tmp_path / "list.csv"
    ann.write_text("path,label,caption\na.mp4,0\nb.mp4\n")
    problems: list = []
    recs, _ = load_annotations("csv", tmp_path, ann, on_error="skip", problems=problems)
    assert [r.video_id for r in recs] == ["a"]
    assert [(p.line, p.reason) for p in problems] == [(3, "1 value(s), fewer than the header's 3 columns")]


@pytest.mark.parametrize("column", ["participant_id", "video_id"])
def test_an_epic_row_with_an_empty_participant_or_video_is_a_bad_row_naming_it(tmp_path, column):
    """Re-trial 29B M3: an empty participant_id named a frame folder at the file-system root
    (`/P01_01/frame_0000000001.jpg`)."""
    ann = _epic_without(tmp_path)
    head, row = (line.split(",") for line in ann.read_text().splitlines()[:2])
    row[0], row[head.index(column)] = "130", ""
    ann.write_text(ann.read_text() + ",".join(row) + "\n")
    with pytest.raises(AnnotationError) as e:
        load_annotations("epic55", tmp_path, ann)
    _one_line_naming(e, f"{ann}:8", f"{column} is empty")


def _numbers_only(tmp_path: Path, fmt: str) -> tuple[Path, Path, str]:
    """(root, annotations, the file whose class names are numbers only, relative to the root) of a
    small `fmt` data set whose classes are named by numbers in the format's own class-name source."""
    root = tmp_path / fmt
    files: dict[str, str] = {
        "csv": {"lists/train.csv": "path,label\na.mp4,0\nb.mp4,1\n", "classes.txt": "0\n1\n"},
        "k400": {"train.txt": "a.mp4 0\nb.mp4 1\n", "classes.txt": "0\n1\n"},
        "k400_official": {"train.csv": "label,youtube_id,time_start,time_end,split\n0,abc,0,10,train\n"
                                       "1,def,0,10,train\n"},
        "ucf101": {"l/classInd.txt": "1 7\n2 8\n", "l/trainlist01.txt": "7/v_A_g01_c01.avi 1\n8/v_B_g01_c01.avi 2\n"},
        "ssv2": {"labels.json": '{"0": "0", "1": "1"}', "train.json": '[{"id": "1", "template": "0"}, '
                                                                       '{"id": "2", "template": "1"}]'},
        "diving48": {"Diving48_vocab.json": '[["1", "2"], ["3", "4"]]',
                     "Diving48_V2_train.json": '[{"vid_name": "a", "label": 0}, {"vid_name": "b", "label": 1}]'},
        "hmdb51": {"s/7_test_split1.txt": "a.avi 1\n", "s/8_test_split1.txt": "b.avi 1\n"},
    }.get(fmt, {})
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    ann, source = {"csv": ("lists/train.csv", "classes.txt"), "k400": ("train.txt", "classes.txt"),
                   "k400_official": ("train.csv", "train.csv"), "ucf101": ("l", "l/classInd.txt"),
                   "ssv2": (".", "labels.json"), "diving48": (".", "Diving48_vocab.json"),
                   "hmdb51": ("s", "")}.get(fmt, ("", ""))
    return root, root / ann, source


@pytest.mark.parametrize("fmt", ["csv", "k400", "k400_official", "ucf101", "ssv2", "diving48", "hmdb51", "epic55"])
def test_names_that_are_numbers_only_are_refused_naming_the_file_they_came_from(tmp_path, fmt):
    """Re-trial 30A M2: a classes.txt of numbers beside the list was answered "put classes.txt
    (...) beside it". The refusal names the file the names were read from, each format's own (EPIC:
    its verb / noun columns; a K400 CSV without classes.txt: its label column); where no file gave
    names (HMDB51's split file names), the list and how the format names its classes."""
    from tgmae.data.formats import require_class_names

    root, ann, source = _numbers_only(tmp_path, fmt)
    where = "there"
    if fmt == "epic55":
        with open(DATA / "epic55" / "EPIC_train_action_labels.csv", newline="") as f:
            head, *rows = list(csv.reader(f))
        rows = [[r[head.index("verb_class")] if c == "verb" else r[head.index("noun_class")] if c == "noun" else v
                 for c, v in zip(head, r)] for r in rows]
        root, ann = tmp_path, _epic_without(tmp_path, rows=rows)
        source, where = ann.name, "in its `verb` and `noun` columns"
    elif fmt == "k400_official":
        where = "in its `label` column"
    name = fmt.split("_")[0]
    classes = load_annotations(name, root, ann, on_error="skip", problems=[])[1]
    with pytest.raises(AnnotationError) as e:
        require_class_names(classes, name, root, ann, "X needs names")
    msg = str(e.value)
    assert "\n" not in msg and "X needs names" in msg, msg
    if source:
        assert msg.startswith(f"{root / source}: its names are numbers only (") and msg.endswith(
            f"give the classes' names {where}"), msg
        assert "beside it" not in msg
    else:
        assert msg.startswith(f"{ann}: its classes have no names") and "<class>_test_split<N>.txt" in msg, msg
