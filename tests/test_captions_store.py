"""Caption store (JSONL), caption sources (oracle, vision-free) and the Dataset's CaptionProvider."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tgmae.captions.provider import CaptionProvider
from tgmae.captions.sources import (CUPL_PROMPTS, DescriptionsError, description_records,
                                    load_descriptions, match_classes, oracle_records, validate_descriptions)
from tgmae.captions.store import (CaptionRecord, CaptionStoreError, StoreAppender, merge_stores, read_store,
                                  refuse_foreign_file, truncate_torn_tail, video_ids_in, write_store)
from tgmae.data.annotations import class_text
from tgmae.errors import UserError


def rec(vid, caps, source="captioner", model="m"):
    return CaptionRecord(vid, caps, source, model)


# ------------------------------------------------------------------------------------- store


def test_write_read_roundtrip_keeps_extra_keys_and_unicode(tmp_path):
    p = tmp_path / "c.jsonl"
    recs = [rec("a", ["  un café  ", "b"]), CaptionRecord("b", ["x"], "oracle", "{}", {"frame_indices": [1]})]
    assert write_store(p, recs) == 2
    back = read_store(p).records
    assert [r.video_id for r in back] == ["a", "b"]
    assert back[0].captions == ["un café", "b"]  # stored stripped
    assert back[1].extra == {"frame_indices": [1]}
    assert json.loads(p.read_text().splitlines()[1])["frame_indices"] == [1]


@pytest.mark.parametrize("caps", [[""], ["ok", "   "], ["\n\t"]])
def test_empty_or_whitespace_caption_rejected_with_video_id(caps):
    with pytest.raises(CaptionStoreError, match="'vid7'.*empty or whitespace"):
        rec("vid7", caps)


@pytest.mark.parametrize("obj, pattern", [
    ({"video_id": "v", "captions": [], "source": "s", "model": "m"}, "'v'.*non-empty list"),
    ({"video_id": "v", "captions": "one string", "source": "s", "model": "m"}, "'v'.*non-empty list"),
    ({"video_id": "v", "captions": ["a", 3], "source": "s", "model": "m"}, "'v'.*caption 1 is not a string"),
    ({"video_id": "v", "captions": ["a"], "source": "s"}, r"video_id='v'.*missing key.*model"),
    ({"video_id": "", "captions": ["a"], "source": "s", "model": "m"}, "video_id must be"),
    ({"video_id": "v", "captions": ["a"], "source": " ", "model": "m"}, "'v': source"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_records_name_the_line_and_video(tmp_path, obj, pattern):
    p = tmp_path / "c.jsonl"
    good = json.dumps({"video_id": "g", "captions": ["fine"], "source": "s", "model": "m"})
    p.write_text(good + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(CaptionStoreError, match=pattern) as e:
        read_store(p)
    assert "c.jsonl:2" in str(e.value)


def test_duplicate_video_and_missing_file_are_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    line = json.dumps({"video_id": "v", "captions": ["a"], "source": "s", "model": "m"})
    p.write_text(line + "\n" + line + "\n")
    with pytest.raises(CaptionStoreError, match="'v' already appears on line 1"):
        read_store(p)
    with pytest.raises(CaptionStoreError, match="not found"):
        read_store(tmp_path / "nope.jsonl")
    with pytest.raises(CaptionStoreError, match="appears twice"):
        write_store(tmp_path / "w.jsonl", [rec("v", ["a"]), rec("v", ["b"])])


def test_torn_tail_detected_dropped_and_appending_resumes(tmp_path):
    p = tmp_path / "c.jsonl"
    with StoreAppender(p) as app:
        app.write_batch([rec("a", ["x"]), rec("b", ["y"])])
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"video_id": "c", "capt')  # a kill mid-line
    with pytest.raises(CaptionStoreError, match="c.jsonl:3: not valid JSON"):
        read_store(p)
    got = read_store(p, allow_torn_tail=True)
    assert got.torn_tail and [r.video_id for r in got.records] == ["a", "b"] and got.good_bytes == len(whole)
    assert video_ids_in(p) == {"a", "b"}
    with StoreAppender(p) as app:  # resume: the torn bytes are cut before appending
        app.write_batch([rec("c", ["z"])])
    assert [r.video_id for r in read_store(p).records] == ["a", "b", "c"]
    assert p.read_bytes().startswith(whole)


def test_a_store_line_that_is_not_utf8_is_one_line_naming_it_but_a_character_cut_by_a_kill_is_a_torn_tail(tmp_path):
    """Re-trial 24A T2: a cp1252 caption was silently read as U+FFFD; now NotUtf8Error names the
    line, torn tail allowed or not. A writer killed inside a 2-byte character leaves a torn tail."""
    from tgmae.textfile import NotUtf8Error

    p = tmp_path / "c.jsonl"
    with StoreAppender(p) as app:
        app.write_batch([rec("a", ["x"])])
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"video_id": "b", "captions": ["caf\xe9"], "source": "s", "model": "m"}\n')
    for torn_ok in (False, True):
        with pytest.raises(NotUtf8Error, match=r"c\.jsonl:2: not UTF-8 \(byte 0xe9 at column 36\); save it as UTF-8$"):
            read_store(p, allow_torn_tail=torn_ok)
    p.write_bytes(whole + b'{"video_id": "b", "captions": ["caf\xc3')  # killed between é's two bytes
    got = read_store(p, allow_torn_tail=True)
    assert got.torn_tail and [r.video_id for r in got.records] == ["a"] and got.good_bytes == len(whole)
    p.write_bytes(b'{"video_id": "caf\xe9"}\n')
    with pytest.raises(NotUtf8Error, match=r"c\.jsonl:1: not UTF-8"):  # not "not a caption store"
        refuse_foreign_file(p)


def test_an_appender_that_wrote_nothing_leaves_no_file(tmp_path):
    """Issue #28: a `tgmae caption --model` where every video failed left a 0-byte store (its
    appender opened the file before anything was written). The file is made by the first record."""
    p = tmp_path / "c.jsonl"
    with StoreAppender(p) as app:
        app.write_batch([])
    assert not p.exists()
    with StoreAppender(p) as app:
        app.write_batch([])
        app.write_batch([rec("a", ["x"])])
    assert [r.video_id for r in read_store(p).records] == ["a"]


def test_complete_last_line_without_newline_is_kept_and_terminated(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"video_id": "a", "captions": ["x"], "source": "s", "model": "m"}))
    assert [r.video_id for r in read_store(p, allow_torn_tail=True).records] == ["a"]
    assert truncate_torn_tail(p) and p.read_text().endswith("}\n")
    mid = tmp_path / "mid.jsonl"
    mid.write_text('{"video_id": "a", "captions": ["x"], "source": "s", "model": "m"}\n{bad\n{}\n')
    with pytest.raises(CaptionStoreError, match="mid.jsonl:2"):  # not the last line: corruption
        read_store(mid, allow_torn_tail=True)


def test_merge_stores_combines_sources_per_video():
    blip = [rec("a", ["a man", "a dog"], "captioner", "blip"), rec("b", ["a car"], "captioner", "blip")]
    vf = [rec("a", ["jumping looks like", "a man"], "vision-free", "gpt"), rec("c", ["q"], "vision-free", "gpt")]
    merged = {r.video_id: r for r in merge_stores([blip, vf])}
    assert list(merged) == ["a", "b", "c"]
    assert merged["a"].captions == ["a man", "a dog", "jumping looks like"]  # exact duplicate dropped
    assert merged["a"].source == "captioner+vision-free" and merged["a"].model == "blip+gpt"
    assert merged["b"].source == "captioner"
    with pytest.raises(CaptionStoreError, match="missing from some caption source"):
        merge_stores([blip, vf], require_all=True)
    twice = merge_stores([merge_stores([blip, vf]), vf])
    assert twice[0].source == "captioner+vision-free"


def _stamped(vid, caps, size, source="annotation"):
    """A record captioned from a file of `size` bytes (its `video`: `data.fileid.video_identity`)."""
    return CaptionRecord(vid, caps, source, "m", {"video": [size, 1, 2, 3]})


def test_merge_stores_refuses_records_of_one_id_captioned_from_other_files_in_either_order():
    """Issue #28 re-trial 12, F2: `caption --combine` without --format/--root merged the stores of
    two data sets with the same ids, keeping the first store's `video` stamp: masks and training
    of the first set then accepted it, of the second refused it (order-dependent). Records of one
    id captioned from files of other sizes are refused, naming both stores and the ids."""
    one = [_stamped("a", ["x"], 10), _stamped("b", ["y"], 20), _stamped("c", ["z"], 30)]
    two = [_stamped("a", ["p"], 10), _stamped("b", ["q"], 21, "oracle"), _stamped("c", ["r"], 31, "oracle")]
    for stores, names in (([one, two], ["one.jsonl", "two.jsonl"]), ([two, one], ["two.jsonl", "one.jsonl"])):
        with pytest.raises(CaptionStoreError) as e:
            merge_stores(stores, names=names)
        msg = str(e.value)
        assert "one.jsonl" in msg and "two.jsonl" in msg and "'b'" in msg and "'c'" in msg and "'a'" not in msg
        assert "\n" not in msg
    with pytest.raises(CaptionStoreError, match="'b'"):  # unnamed stores are refused too
        merge_stores([one, two])
    # the same file copied (other inode / mtime, same size), or one side without identities: merged
    copy = [CaptionRecord("a", ["p"], "oracle", "m", {"video": [10, 9, 9, 9]}), rec("b", ["q"], "oracle")]
    merged = {r.video_id: r for r in merge_stores([one, copy], names=["one.jsonl", "copy.jsonl"])}
    assert merged["a"].captions == ["x", "p"] and merged["b"].captions == ["y", "q"]
    assert merged["a"].extra["video"] == [10, 1, 2, 3]


def test_merge_stores_refuses_records_of_one_file_before_and_after_it_was_rewritten_in_place():
    """Re-trial 30B S1, its sibling in `--combine`: two records of one id whose file was rewritten
    in place between them (same inode, same size, another mtime) describe two contents; refused
    naming both stores. A copy (another inode) still merges (above)."""
    before = [CaptionRecord("a", ["x"], "captioner", "m", {"video": [10, 1, 2, 3]})]
    after = [CaptionRecord("a", ["p"], "oracle", "t", {"video": [10, 5, 2, 7]})]
    with pytest.raises(CaptionStoreError, match=r"one.jsonl and two.jsonl: 1 video\(s\).*'a'.*rewritten"):
        merge_stores([before, after], names=["one.jsonl", "two.jsonl"])
    same = [CaptionRecord("a", ["p"], "oracle", "t", {"video": [10, 1, 2, 9]})]  # a chmod: ctime alone
    assert merge_stores([before, same])[0].captions == ["x", "p"]


def test_a_store_without_identities_is_logged_without_guessing_its_age(tmp_path, caplog):
    """Issue #28 re-trial 12, F1: the log line for a store without video identities said it was
    "written before they were recorded", also of a new synthetic set's store; it says what it is."""
    from tgmae.captions.store import refuse_other_videos

    with caplog.at_level("INFO"):
        refuse_other_videos(tmp_path / "c.jsonl", [rec("a", ["x"])], {"a": [10, 1, 2, 3]})
    msgs = [r.getMessage() for r in caplog.records]
    assert any("c.jsonl" in m and "no video identities" in m for m in msgs), msgs
    assert not any("written before" in m for m in msgs), msgs


def test_synthetic_set_captions_read_as_a_store(tmp_path):
    from tgmae.data.synthetic.generate import generate_synthetic_dataset

    info = generate_synthetic_dataset(tmp_path / "synth", num_videos=3, frames=4, size=32, gop=2)
    recs = read_store(info.captions_jsonl).records
    assert len(recs) == 3 and all(r.source == "synthetic" and r.captions for r in recs)
    provider = CaptionProvider(recs)
    assert len(provider) == 3


# ----------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("name, text", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("playing_guitar", "playing guitar"),
    ("Pushing [something] from left to right", "Pushing something from left to right"),
    ("riding a bike", "riding a bike"),
])
def test_class_text(name, text):
    assert class_text(name) == text


def test_oracle_records_use_class_names_through_templates():
    recs = oracle_records([("v1", "playing_guitar"), ("v2", "Jumping")])
    assert recs[0].captions == ["playing guitar"] and recs[0].source == "oracle"
    recs = oracle_records([("v1", "playing_guitar")], templates=["a video of {}", "{}"])
    assert recs[0].captions == ["a video of playing guitar", "playing guitar"]
    with pytest.raises(ValueError, match="no {}"):
        oracle_records([("v", "x")], templates=["a video"])


def test_cupl_prompts_are_table_6a():
    assert CUPL_PROMPTS == ("Describe the action {}.", "What does a person {} look like?",
                            "What does the act of {} look like?")


def test_descriptions_file_validation_names_the_entry(tmp_path):
    good = {"_meta": {"model": "gpt-x"}, "jumping": ["A person leaps.", "Feet leave the ground."],
            "running": "Legs move fast."}
    table, meta = validate_descriptions(good)
    assert table["running"] == ["Legs move fast."] and meta["model"] == "gpt-x" and "_meta" not in table
    for bad, pattern in [({"jumping": []}, "'jumping'"), ({"jumping": ["ok", "  "]}, "'jumping': description 1"),
                         ({"jumping": [3]}, "'jumping'"), ({"jumping": {"a": 1}}, "'jumping'"),
                         (["jumping"], "top level"), ({"_meta": {}}, "no class entries")]:
        with pytest.raises(DescriptionsError, match=pattern):
            validate_descriptions(bad)
    p = tmp_path / "d.json"
    p.write_text('{"jumping": ["a"],\n "running": [}')
    with pytest.raises(DescriptionsError, match="d.json:2: not valid JSON"):
        load_descriptions(p)
    p.write_bytes(b'{"move left": ["caf\xe9"]}')  # re-trial 24A T2: a UnicodeDecodeError traceback
    with pytest.raises(UserError, match=r"d\.json:1: not UTF-8 \(byte 0xe9 at column 20\); save it as UTF-8$"):
        load_descriptions(p)


def test_descriptions_become_captions_of_each_video_of_the_class():
    table = {"apply eye makeup": ["d1", "d2"], "Running": ["r1"]}
    assert match_classes(["ApplyEyeMakeup", "running"], table) == {"ApplyEyeMakeup": ["d1", "d2"],
                                                                   "running": ["r1"]}
    recs = description_records([("v1", "ApplyEyeMakeup"), ("v2", "running"), ("v3", "ApplyEyeMakeup")], table, "gpt")
    assert [r.captions for r in recs] == [["d1", "d2"], ["r1"], ["d1", "d2"]]
    assert {r.source for r in recs} == {"vision-free"}
    with pytest.raises(DescriptionsError, match="1 class.*'swimming'"):
        description_records([("v1", "swimming")], table, "gpt")


@pytest.mark.parametrize("classes,table,named", [
    # `biking` got Biking's descriptions through folding while Biking had them exactly
    (["Biking", "biking", "walking"], {"Biking": ["b"], "walking": ["w"]}, ["'Biking'", "'biking'"]),
    # one key folded onto both classes
    (["Biking", "biking"], {"BIKING": ["b"]}, ["'BIKING'", "'Biking'", "'biking'"]),
    # a class whose folded name matches two keys: which one was the first in the file
    (["riding bike"], {"Riding Bike": ["a"], "riding_bike": ["b"]}, ["'riding bike'", "'Riding Bike'", "'riding_bike'"]),
])
def test_a_description_key_matched_by_folding_to_more_than_one_class_or_key_is_refused(classes, table, named):
    with pytest.raises(DescriptionsError) as e:
        match_classes(classes, table)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in named), str(e.value)


def test_an_exact_description_key_wins_over_one_matching_by_folding():
    table = {"Riding Bike": ["a"], "riding_bike": ["b"], "walking": ["w"]}
    assert match_classes(["riding_bike", "Walking"], table) == {"riding_bike": ["b"], "Walking": ["w"]}


# ---------------------------------------------------------------------------------- provider


def _provider(mode="random", emb=True):
    recs = [rec("a", ["x", "y", "z"]), rec("b", ["y"]), rec("c", ["w", "x"])]
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) if emb else None
    return CaptionProvider(recs, e, draw_mode=mode)


def test_provider_caption_ids_index_distinct_texts():
    p = _provider()
    assert p.texts == ["x", "y", "z", "w"] and p.num_captions == 4 and len(p) == 3
    assert p.caption_ids("a") == [0, 1, 2] and p.caption_ids("b") == [1] and p.caption_ids("c") == [3, 0]
    assert p.captions("c") == ["w", "x"]
    cid, emb = p.draw("b", torch.Generator().manual_seed(0))
    assert cid == 1 and torch.equal(emb, p.embeddings[1])
    assert p.missing(["a", "q"]) == ["q"]


def test_provider_draw_is_uniform_and_seeded():
    p = _provider()
    counts = Counter(p.draw("a", torch.Generator().manual_seed(s))[0] for s in range(3000))
    assert set(counts) == {0, 1, 2}
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in counts.values())
    # The dataset seeds by (seed, epoch, index): the same seed gives the same caption.
    assert [p.draw("a", torch.Generator().manual_seed(7))[0] for _ in range(5)] == \
           [p.draw("a", torch.Generator().manual_seed(7))[0]] * 5
    # One draw per call, even for a single caption, so later users of the generator see one stream.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p.draw("b", g1)
    torch.rand(1, generator=g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_provider_first_mode_and_errors():
    p = _provider("first", emb=False)
    assert {p.draw("a", torch.Generator().manual_seed(s)) for s in range(20)} == {(0, None)}
    assert p.draw("c")[0] == 3
    with pytest.raises(CaptionStoreError, match="video 'nope' has no captions"):
        p.draw("nope")
    with pytest.raises(CaptionStoreError, match="store has 'a': it was keyed by file names"):
        p.draw("Walking/a")  # a store written when ids were file names
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        _provider().draw("a")
    with pytest.raises(ValueError, match="3 rows for 4 distinct"):
        CaptionProvider([rec("a", ["x", "y", "z", "w"])], torch.zeros(3, 2))


def test_provider_from_files_and_config(tmp_path):
    from tgmae.config import CaptionConfig

    p = tmp_path / "c.jsonl"
    write_store(p, [rec("a", ["x", "y"]), rec("b", ["x"])])
    prov = CaptionProvider.from_config(CaptionConfig(file=str(p), draw="first"))
    assert prov.embeddings is None and prov.draw("a")[0] == 0 and prov.caption_ids("b") == [0]
    assert CaptionProvider.from_config(CaptionConfig()) is None
    with pytest.raises(CaptionStoreError, match=f"in {p}"):
        prov.draw("zzz")


def test_another_source_is_named_by_its_settings_with_both_values(tmp_path):
    """A captioner run into an oracle store said `template '{}' (this run: 'blip')`: 'blip' is no
    template. The refusal names source and model as what they are on each side."""
    from tgmae.captions.store import refuse_other_provenance

    path = tmp_path / "S"
    write_store(path, [CaptionRecord("v1", ["a bike"], "oracle", "{}")])
    with pytest.raises(CaptionStoreError) as e:
        refuse_other_provenance(path, [{"source": "captioner", "model": "blip", "keyframes": 4}])
    assert "source 'oracle' (this run: 'captioner'), template '{}' (this run: model 'blip')" in str(e.value)
    with pytest.raises(CaptionStoreError, match=r"template '\{\}' \(this run: 'a video of \{\}'\)"):
        refuse_other_provenance(path, [{"source": "oracle", "model": "a video of {}"}])


def test_a_store_of_another_source_is_not_called_old_for_the_weights_it_never_had(tmp_path):
    """issue 28: `caption --model` into an --oracle store listed "weights unrecorded (a store
    written before it was recorded)" beside the source: an oracle has no weights. 'unrecorded' is
    for a captioner store written before the weights were recorded (same source)."""
    from tgmae.captions.store import refuse_other_provenance

    want = {"source": "captioner", "model": "blip", "keyframes": 4, "weights": "abc"}
    oracle, old = tmp_path / "oracle", tmp_path / "old"
    write_store(oracle, [CaptionRecord("v1", ["a bike"], "oracle", "{}")])
    with pytest.raises(CaptionStoreError) as e:
        refuse_other_provenance(oracle, [want], required=("weights",))
    assert "source 'oracle'" in str(e.value) and "weights" not in str(e.value)
    write_store(old, [CaptionRecord("v1", ["a bike"], "captioner", "blip", extra={"settings": {"keyframes": 4}})])
    with pytest.raises(CaptionStoreError, match="weights unrecorded"):
        refuse_other_provenance(old, [want], required=("weights",))


def test_a_video_whose_captions_would_change_is_refused_not_silently_rewritten(tmp_path):
    """Issue 28 (re-trial 9): an --oracle store rerun with classes.txt reordered rewrote all its
    captions under "0 added, 4 already there": masks and caches built from the store were silently
    invalidated. A video already there whose captions would change is refused naming the video,
    the store and --rebuild; unchanged ones count as already there; --rebuild replaces."""
    from tgmae.captions.store import update_store

    path = tmp_path / "or.jsonl"
    first = [CaptionRecord("a", ["Walking"], "oracle", "{}"), CaptionRecord("b", ["Biking"], "oracle", "{}")]
    assert update_store(path, first) == (2, 0, 0)
    before = path.read_bytes()
    assert update_store(path, first + [CaptionRecord("c", ["Biking"], "oracle", "{}")]) == (1, 2, 0)
    swapped = [CaptionRecord("a", ["Biking"], "oracle", "{}"), CaptionRecord("b", ["Walking"], "oracle", "{}")]
    after_add = path.read_bytes()
    with pytest.raises(CaptionStoreError) as e:
        update_store(path, swapped)
    msg = str(e.value)
    assert str(path) in msg and "'a'" in msg and "'b'" in msg and "--rebuild" in msg
    assert path.read_bytes() == after_add != before  # untouched by the refusal
    assert update_store(path, swapped, rebuild=True) == (2, 0, 0)
    assert [r.captions for r in read_store(path).records] == [["Biking"], ["Walking"]]


def test_a_store_captioned_from_other_frame_ranges_is_refused_naming_the_id(tmp_path):
    """issue 28 re-trial 16B, S2: training (and masks) checked a record's file identity but not its
    frame range, so captions of frames [0, 20) were used for a clip now [20, 48). A record's `frames`
    other than the data set's range now is refused naming the store and the id; records without one
    (older or hand-written stores) and the same range are accepted."""
    from tgmae.captions.store import refuse_other_videos

    recs = [CaptionRecord("seg", ["x"], "captioner", "m", {"video": [10, 1, 2, 3], "frames": [0, 20]}),
            CaptionRecord("whole", ["y"], "captioner", "m", {"video": [10, 1, 2, 3], "frames": [0, None]}),
            CaptionRecord("old", ["z"], "captioner", "m", {"video": [10, 1, 2, 3]})]
    identity = {v: [10, 1, 2, 3] for v in ("seg", "whole", "old")}
    refuse_other_videos(tmp_path / "c.jsonl", recs, identity, {"seg": [0, 20], "whole": [0, None], "old": [5, 9]})
    with pytest.raises(CaptionStoreError) as e:
        refuse_other_videos(tmp_path / "c.jsonl", recs, identity, {"seg": [20, 48], "whole": [0, None]})
    msg = str(e.value)
    assert "c.jsonl" in msg and "'seg'" in msg and "'whole'" not in msg and "[20, 48)" in msg and "\n" not in msg
    provider = CaptionProvider(recs, source_file=str(tmp_path / "c.jsonl"))
    with pytest.raises(CaptionStoreError, match="'seg'"):
        provider.check_videos(["seg"], {"seg": str(tmp_path / "nope.mp4")}, {"seg": [20, 48]})
    provider.check_videos(["seg"], {"seg": str(tmp_path / "nope.mp4")}, {"seg": [0, 20]})


def test_provenance_compares_local_model_folders_resolved_and_hub_ids_as_written(tmp_path, monkeypatch):
    """Re-trial 20A M5: `--model blip` and `--model ./blip/` name one folder: the same model."""
    from tgmae.captions.store import refuse_other_provenance

    monkeypatch.chdir(tmp_path)
    (tmp_path / "blip").mkdir()
    store = tmp_path / "s.jsonl"
    store.write_text(json.dumps({"video_id": "a", "captions": ["x"], "source": "captioner", "model": "blip"}) + "\n")
    for same in ("./blip/", str(tmp_path / "blip"), "blip"):
        refuse_other_provenance(store, [{"source": "captioner", "model": same}])
    with pytest.raises(CaptionStoreError, match="model 'blip'"):
        refuse_other_provenance(store, [{"source": "captioner", "model": "./other/"}])
    store.write_text(json.dumps({"video_id": "a", "captions": ["x"], "source": "captioner", "model": "org/m"}) + "\n")
    with pytest.raises(CaptionStoreError, match="model 'org/m'"):
        refuse_other_provenance(store, [{"source": "captioner", "model": "org/m/"}])  # no such folder: a hub id


def _refuse_stale(records, texts):
    """`refuse_other_videos` of a store at s.jsonl, comparing texts only (no identities, no ranges)."""
    from tgmae.captions.store import refuse_other_videos

    refuse_other_videos("s.jsonl", records, {}, None, texts)


def test_an_annotation_store_whose_narration_was_edited_is_refused_naming_both_texts():
    """re-trial 29B S1 follow-up: an `--annotation-captions` store kept an EPIC narration edited
    since, and training and `masks` used the old text without a word. A record whose captions are
    not the data set's caption now is refused in one line naming the store, the id, both texts and
    the way out; the same text, a record without a caption now, and other sources pass."""
    from tgmae.data.annotations import VideoRecord, annotated_texts

    store = [CaptionRecord("a", ["take cup"], "annotation", "epic55 annotations"),
             CaptionRecord("b", ["open door"], "annotation", "epic55 annotations"),
             CaptionRecord("c", ["a dog runs"], "captioner", "blip")]
    now = [VideoRecord("/a", 0, "a", caption="take cup"), VideoRecord("/b", 0, "b", caption=" open door "),
           VideoRecord("/c", 0, "c", caption="a cat sits")]
    _refuse_stale(store, annotated_texts(now, ["x"]))  # unchanged (stored stripped); a captioner's not compared
    now[0] = VideoRecord("/a", 0, "a", caption="put cup on table")
    with pytest.raises(CaptionStoreError) as e:
        _refuse_stale(store, annotated_texts(now, ["x"]))
    msg = str(e.value)
    assert msg.startswith("s.jsonl: 1 video(s)") and "'a'" in msg and "'b'" not in msg and "\n" not in msg
    assert "'take cup'" in msg and "'put cup on table'" in msg and "--annotation-captions" in msg
    assert "--rebuild" in msg and "--out" in msg
    now[0] = VideoRecord("/a", 0, "a")  # no caption in the annotations now: nothing to compare
    _refuse_stale(store, annotated_texts(now, ["x"]))


def test_oracle_and_vision_free_stores_record_their_class_and_refuse_a_rename_or_relabel():
    """re-trial 29B S1 follow-up: an `--oracle` store (or `--descriptions`) kept the class name of a
    video relabelled since, or of a class renamed in classes.txt, and training used it. Records keep
    the class they were made from (`class`) and are refused when the data set's class for the
    video's label differs; records without one (older stores), unlabelled videos and classes
    without names are not compared."""
    from tgmae.data.annotations import VideoRecord, annotated_texts

    oracle = oracle_records([("a", "jumping"), ("b", "running")], templates=["a video of {}"])
    assert [r.extra["class"] for r in oracle] == ["jumping", "running"]
    vision_free = description_records([("a", "jumping"), ("b", "running")],
                                      {"jumping": ["Legs push off."], "running": ["Fast strides."]}, "gpt")
    assert [r.extra["class"] for r in vision_free] == ["jumping", "running"]
    classes = ["jumping", "running"]
    now = [VideoRecord("/a", 0, "a"), VideoRecord("/b", 1, "b")]
    for store in (oracle, vision_free):
        _refuse_stale(store, annotated_texts(now, classes))
    relabelled = [VideoRecord("/a", 1, "a"), VideoRecord("/b", 1, "b")]
    renamed = ["jumping", "sprinting"]
    for store, texts, first, flag in [(oracle, annotated_texts(relabelled, classes), "a", "--oracle"),
                                      (oracle, annotated_texts(now, renamed), "b", "--oracle"),
                                      (vision_free, annotated_texts(relabelled, classes), "a", "--descriptions")]:
        with pytest.raises(CaptionStoreError) as e:
            _refuse_stale(store, texts)
        msg = str(e.value)
        assert f"({first!r}" in msg and "class" in msg and flag in msg and "--rebuild" in msg and "\n" not in msg
    assert "'running' in the store, 'sprinting' now" in str(
        pytest.raises(CaptionStoreError, _refuse_stale, oracle, annotated_texts(now, renamed)).value)
    older = [CaptionRecord("a", ["Legs push off."], "vision-free", "gpt")]  # written before `class` was recorded
    _refuse_stale(older, annotated_texts(relabelled, classes))  # (an older oracle record: the test below)
    _refuse_stale(oracle, annotated_texts([VideoRecord("/a", -1, "a")], classes))  # unlabelled: no class
    _refuse_stale(oracle, annotated_texts(relabelled, ["0", "1"]))  # numbered classes: no names to compare


def test_an_older_oracle_store_without_class_is_compared_through_its_templates():
    """Re-trial 30A S1: an `--oracle` store written before records carried `class` was not compared,
    so a video relabelled since trained with its old class text. Its templates are its `model`: its
    captions are compared with them filled with the class now, and a difference is refused naming
    the video, both captions and `--oracle --rebuild`. Unchanged classes pass (class words as
    `class_text` makes them); templates that cannot be recovered from `model` (one holding the
    separator), a vision-free record without `class` and a combination's whose parts do not split
    are not compared."""
    from tgmae.data.annotations import VideoRecord, annotated_texts

    def older(templates, pairs):  # as an older tgmae wrote them: no `class`
        recs = oracle_records(pairs, templates)
        for r in recs:
            r.extra.pop("class")
        return recs

    classes = ["take_cup", "open cup", "PutDown"]
    now = [VideoRecord("/a", 0, "a"), VideoRecord("/b", 2, "b")]
    relabelled = [VideoRecord("/a", 1, "a"), VideoRecord("/b", 2, "b")]
    one = older(["a video of {}"], [("a", "take_cup"), ("b", "PutDown")])
    two = older(["{}", "a video of {} "], [("a", "take_cup"), ("b", "PutDown")])
    for store in (one, two):
        _refuse_stale(store, annotated_texts(now, classes))  # the same classes: accepted
    with pytest.raises(CaptionStoreError) as e:
        _refuse_stale(one, annotated_texts(relabelled, classes))
    msg = str(e.value)
    assert msg.startswith("s.jsonl: 1 video(s)") and "('a'" in msg and "'b'" not in msg and "\n" not in msg
    assert "caption 'a video of take cup' in the store, 'a video of open cup' now" in msg
    assert "--oracle --rebuild" in msg
    with pytest.raises(CaptionStoreError, match=r"\['take cup', 'a video of take cup'\] in the store"):
        _refuse_stale(two, annotated_texts(relabelled, classes))
    piped = older(["{} | {}"], [("a", "take_cup")])  # its `model` splits into 2 parts for 1 caption
    _refuse_stale(piped, annotated_texts(relabelled, classes))
    vision_free = [CaptionRecord("a", ["Hands grip."], "vision-free", "gpt")]
    plus = merge_stores([[CaptionRecord("a", ["a hand"], "captioner", "blip")], older(["a+ {}"], [("a", "take_cup")])])
    for store in (vision_free, plus):  # no descriptions file; a template holding '+' (the parts' separator)
        _refuse_stale(store, annotated_texts(relabelled, classes))
    # re-trial 32A S5: combined with a captioner's (without the data set: no `class` recorded), its
    # oracle part is compared through its templates too: the class now's caption must be among them
    combined = merge_stores([[CaptionRecord("a", ["a hand"], "captioner", "blip")], one[:1]])
    _refuse_stale(combined, annotated_texts(now, classes))
    with pytest.raises(CaptionStoreError, match=r"caption 'a video of take cup' in the store, "
                                                r"'a video of open cup' now.*--combine"):
        _refuse_stale(combined, annotated_texts(relabelled, classes))


def test_a_combined_store_keeps_each_parts_record_and_is_refused_when_a_part_is_stale():
    """`caption --combine` keeps the vision-free part's `class` and the annotation part's text
    among the captions: a relabelled video or an edited narration is refused there too."""
    from tgmae.data.annotations import VideoRecord, annotated_texts

    captioner = [CaptionRecord("a", ["a person leaps"], "captioner", "blip")]
    vision_free = description_records([("a", "jumping")], {"jumping": ["Legs push off."]}, "gpt")
    annotation = [CaptionRecord("a", ["jump over log"], "annotation", "epic55 annotations")]
    combined = merge_stores([captioner, vision_free, annotation])
    assert combined[0].source == "captioner+vision-free+annotation" and combined[0].extra["class"] == "jumping"
    same = [VideoRecord("/a", 0, "a", caption="jump over log")]
    _refuse_stale(combined, annotated_texts(same, ["jumping", "running"]))
    for now, classes in [([VideoRecord("/a", 1, "a", caption="jump over log")], ["jumping", "running"]),
                         ([VideoRecord("/a", 0, "a", caption="jump over fence")], ["jumping", "running"])]:
        with pytest.raises(CaptionStoreError, match=r"\('a'.*--combine.*--rebuild"):
            _refuse_stale(combined, annotated_texts(now, classes))


def test_the_caption_provider_refuses_a_stale_text_store_at_set_up(tmp_path):
    """`CaptionProvider.check_videos` (a dataset's set-up check) compares the texts it is given."""
    from tgmae.data.annotations import VideoRecord, annotated_texts

    provider = CaptionProvider(oracle_records([("a", "jumping")]), source_file=str(tmp_path / "o.jsonl"))
    provider.check_videos(["a"], texts=annotated_texts([VideoRecord("/a", 0, "a")], ["jumping"]))
    with pytest.raises(CaptionStoreError, match=r"o\.jsonl: 1 video\(s\).*'jumping' in the store, 'running' now"):
        provider.check_videos(["a"], texts=annotated_texts([VideoRecord("/a", 0, "a")], ["running"]))


def test_merge_stores_tells_a_copy_from_another_file_by_content_keys():
    """Re-trial 32A S1, its sibling in `--combine`: two records of one id of the same size and
    other inodes (a copy, or another file moved onto the path between them) are other files when
    both record `content` and the keys differ (refused naming both stores); equal keys, or one
    side without a key, merge. The merged record keeps one part's `video` and `content` together."""
    one = [CaptionRecord("a", ["x"], "captioner", "m", {"video": [10, 1, 2, 3], "content": "c1"})]
    moved = [CaptionRecord("a", ["p"], "oracle", "t", {"video": [10, 5, 8, 7], "content": "c2"})]
    with pytest.raises(CaptionStoreError, match=r"one.jsonl and two.jsonl: 1 video\(s\).*'a'"):
        merge_stores([one, moved], names=["one.jsonl", "two.jsonl"])
    copy = [CaptionRecord("a", ["p"], "oracle", "t", {"video": [10, 5, 8, 7], "content": "c1"})]
    assert merge_stores([one, copy])[0].captions == ["x", "p"]
    older = [CaptionRecord("a", ["p"], "oracle", "t", {"video": [10, 5, 8, 7]})]  # no key: today's rule
    merged = merge_stores([older, moved])[0]
    assert merged.extra["video"] == [10, 5, 8, 7] and "content" not in merged.extra  # not the other part's


def test_frame_folders_of_the_same_names_and_sizes_are_told_apart_by_content_keys():
    """Re-trial 33B S2: records of a frame folder whose frames' names and sizes (`copy_key`) are
    the same and whose full identity is not (frames replaced or rewritten, or the folder copied)
    are other files when both record `content` and the keys differ, in `other_file` and in
    `--combine` (refused naming both stores); equal keys, or one side without a key, are one."""
    from tgmae.captions.store import other_file

    before, now = ["frames", 12, "full1", "names"], ["frames", 12, "full2", "names"]
    assert other_file(before, now, "c1", lambda: "c2") and not other_file(before, now, "c1", lambda: "c1")
    assert not other_file(before, now, None, lambda: "c2") and not other_file(before, now, "c1", lambda: None)
    assert other_file(before, ["frames", 12, "full2", "sizes"], "c1", lambda: "c1")  # another copy key
    one = [CaptionRecord("a", ["x"], "captioner", "m", {"video": before, "content": "c1"})]
    moved = [CaptionRecord("a", ["p"], "oracle", "t", {"video": now, "content": "c2"})]
    with pytest.raises(CaptionStoreError, match=r"one.jsonl and two.jsonl: 1 video\(s\).*'a'"):
        merge_stores([one, moved], names=["one.jsonl", "two.jsonl"])
    copy = [CaptionRecord("a", ["p"], "oracle", "t", {"video": now, "content": "c1"})]
    assert merge_stores([one, copy])[0].captions == ["x", "p"]


def test_an_older_oracle_records_class_is_recorded_once_verified():
    """Re-trial 32A S5: `--combine` given the data set gives an older `--oracle` record (no `class`)
    whose captions are its templates filled with its class now that class (`record_oracle_classes`);
    other sources, records with a class, unrecoverable templates and unknown classes are left."""
    from tgmae.captions.store import record_oracle_classes

    recs = oracle_records([("a", "take_cup"), ("b", "open cup"), ("c", "x")], ["a video of {}"])
    for r in recs:
        r.extra.pop("class")
    recs.append(CaptionRecord("d", ["a hand"], "captioner", "blip"))
    recs.append(CaptionRecord("e", ["a video of open cup"], "oracle", "a video of {}", {"class": "kept"}))
    texts = {"a": (None, "take_cup"), "b": (None, "take_cup"), "c": (None, None), "d": (None, "take_cup"),
             "e": (None, "open cup")}
    assert record_oracle_classes(recs, texts) == 1
    assert [r.extra.get("class") for r in recs] == ["take_cup", None, None, None, "kept"]
