"""tgmae.data.synthetic: layout, H.264 + motion vectors, determinism, masks, captions, split, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

from tgmae.data.synthetic import (
    ACTIONS,
    COLOURS,
    SHAPES,
    VERBS,
    Track,
    generate_synthetic_dataset,
    rasterize,
    render_scene,
    sample_scene,
    stratified_split,
)
from tgmae.data.synthetic.shapes import unit_shape

N, FRAMES, SIZE, GOP, SEED = 12, 24, 64, 8, 3
INDEX = ("train.csv", "val.csv", "annotations.csv", "classes.txt", "captions.jsonl", "descriptions.json", "meta.json")
# Words a caption of each class must contain (one of), independent of the generator's tables.
ACTION_WORDS = {
    "move left": ("left",),
    "move right": ("right",),
    "move up": ("up",),
    "move down": ("down",),
    "grow": ("grow", "expand", "bigger", "larger"),
    "shrink": ("shrink", "contract", "smaller"),
    "rotate clockwise": ("clockwise",),
    "rotate counterclockwise": ("counterclockwise", "anticlockwise"),
    "blink": ("blink", "fade", "flicker"),
    "bounce": ("bounc", "hop"),
}


def main(argv: list[str]) -> int:
    """`tgmae synth ARGV` through the command line's error boundary (a bad setting: exit 2)."""
    from tgmae.cli import main as cli_main

    return cli_main(["synth", *argv])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    info = generate_synthetic_dataset(root, num_videos=N, frames=FRAMES, size=SIZE, gop=GOP, seed=SEED)
    return root, info


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        return next(reader), list(reader)


def _meta(root: Path) -> dict:
    return json.loads((root / "meta.json").read_text())


def _decode(path: Path, mvs: bool = False) -> tuple[str, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if mvs:
            stream.codec_context.options = {"flags2": "+export_mvs"}
        frames = list(container.decode(stream))
        return stream.codec_context.name, frames


def _actor(meta: dict, vid: str) -> dict:
    (actor,) = [o for o in meta["videos"][vid]["objects"] if o["role"] == "acting"]
    return actor


def test_layout_and_headers(synth):
    root, info = synth
    for name in INDEX:
        assert (root / name).is_file(), name
    header, rows = _rows(root / "annotations.csv")
    assert header == ["path", "label", "caption", "video_id"]
    assert len(rows) == N == info.num_videos
    ids = [vid for _, _, _, vid in rows]
    assert ids == [f"synth_{i:05d}" for i in range(N)] == [Path(p).stem for p, _, _, _ in rows]
    for path, label, caption, _ in rows:
        assert path.startswith("videos/") and path.endswith(".mp4") and (root / path).is_file()
        assert (root / "masks" / f"{Path(path).stem}.npz").is_file()
        assert 0 <= int(label) < len(ACTIONS) and caption
    assert sorted(p.name for p in (root / "videos").iterdir()) == [f"{i}.mp4" for i in ids]
    assert (root / "classes.txt").read_text().splitlines() == list(ACTIONS)
    train_h, train = _rows(root / "train.csv")
    val_h, val = _rows(root / "val.csv")
    assert train_h == val_h == header
    assert sorted(train + val) == sorted(rows) and len(train) == info.num_train and len(val) == info.num_val
    caps = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert [c["video_id"] for c in caps] == ids
    for c in caps:
        assert set(c) == {"video_id", "captions", "source", "model", "video"}
        assert (c["source"], c["model"]) == ("synthetic", "template") and len(c["captions"]) == 3
    meta = _meta(root)
    assert (meta["seed"], meta["num_videos"], meta["frames"], meta["height"], meta["width"]) == (SEED, N, FRAMES, SIZE, SIZE)
    assert meta["classes"] == list(ACTIONS) and sum(meta["class_counts"].values()) == N
    for vid, label in zip(ids, (int(r[1]) for r in rows)):
        v = meta["videos"][vid]
        assert v["label"] == label and v["action"] == ACTIONS[label]
        assert 1 <= len(v["objects"]) <= 3
        pairs = [(o["colour"], o["shape"]) for o in v["objects"]]
        assert len(set(pairs)) == len(pairs), "the caption's colour+shape must name one object"
        assert _actor(meta, vid)["motion"] == v["action"]
        assert all(o["motion"] == "wander" for o in v["objects"] if o["role"] == "distractor")


def test_videos_are_h264_with_promised_frames(synth):
    root, _ = synth
    for path in sorted((root / "videos").iterdir()):
        codec, frames = _decode(path)
        assert codec == "h264"
        assert len(frames) == FRAMES
        assert all((f.width, f.height, f.format.name) == (SIZE, SIZE, "yuv420p") for f in frames)
        assert [i for i, f in enumerate(frames) if f.key_frame] == list(range(0, FRAMES, GOP))


def test_p_frames_export_motion_vectors(synth):
    root, _ = synth
    _, frames = _decode(root / "videos" / "synth_00000.mp4", mvs=True)
    assert frames[0].side_data.get("MOTION_VECTORS") is None  # I-frame
    vectors = [f.side_data.get("MOTION_VECTORS") for f in frames[1:GOP]]
    assert all(v is not None for v in vectors)
    arr = vectors[0].to_ndarray()
    assert len(arr) > 0 and {"motion_x", "motion_y", "dst_x", "dst_y"} <= set(arr.dtype.names)
    assert any(np.abs(v.to_ndarray()["motion_x"]).sum() + np.abs(v.to_ndarray()["motion_y"]).sum() > 0 for v in vectors)


def test_deterministic_across_runs_and_workers(synth, tmp_path):
    root, _ = synth
    again = tmp_path / "again"
    generate_synthetic_dataset(again, num_videos=N, frames=FRAMES, size=SIZE, gop=GOP, seed=SEED, workers=2)
    for name in INDEX:
        if name != "captions.jsonl":  # its records' `video` identities are of each set's own files
            assert (again / name).read_bytes() == (root / name).read_bytes(), name
    assert _captions_text(again) == _captions_text(root)
    for p in sorted((root / "masks").iterdir()):
        assert (again / "masks" / p.name).read_bytes() == p.read_bytes(), p.name
    for name in ("synth_00000.mp4", "synth_00007.mp4"):
        a = [f.to_ndarray(format="rgb24") for f in _decode(root / "videos" / name)[1]]
        b = [f.to_ndarray(format="rgb24") for f in _decode(again / "videos" / name)[1]]
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)

    other = tmp_path / "other"
    generate_synthetic_dataset(other, num_videos=N, frames=FRAMES, size=SIZE, gop=GOP, seed=SEED + 1)
    assert (other / "annotations.csv").read_bytes() != (root / "annotations.csv").read_bytes()
    assert _captions_text(other) != _captions_text(root)
    assert (other / "masks" / "synth_00000.npz").read_bytes() != (root / "masks" / "synth_00000.npz").read_bytes()


def _centroids(masks: np.ndarray) -> np.ndarray:
    """bool [T, H, W] -> float [T, 2] (x, y) mask centroids."""
    t, h, w = masks.shape
    area = masks.sum(axis=(1, 2))
    xs = (masks.sum(axis=1) * np.arange(w)).sum(axis=1) / area
    ys = (masks.sum(axis=2) * np.arange(h)).sum(axis=1) / area
    return np.stack([xs, ys], axis=1)


def test_masks_exist_every_frame_and_follow_the_action(synth):
    root, _ = synth
    meta = _meta(root)
    seen = set()
    for vid, v in meta["videos"].items():
        with np.load(root / "masks" / f"{vid}.npz") as z:
            masks, boxes = z["masks"], z["boxes"]
        assert masks.dtype == bool and masks.shape == (FRAMES, SIZE, SIZE)
        area = masks.sum(axis=(1, 2))
        assert (area > 0).all(), vid
        assert boxes.shape == (FRAMES, 4)
        t = FRAMES // 2
        ys, xs = np.nonzero(masks[t])
        assert list(boxes[t]) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        c = _centroids(masks)
        slope = np.polyfit(np.arange(FRAMES), c, 1)[0]  # [dx/dt, dy/dt] in px / frame
        travel = 0.2 * SIZE / FRAMES
        action = v["action"]
        seen.add(action)
        if action == "move right":
            assert slope[0] > travel and abs(slope[1]) < travel / 2
        elif action == "move left":
            assert slope[0] < -travel and abs(slope[1]) < travel / 2
        elif action == "move down":
            assert slope[1] > travel and abs(slope[0]) < travel / 2
        elif action == "move up":
            assert slope[1] < -travel and abs(slope[0]) < travel / 2
        elif action == "grow":
            assert area[-1] > 2.5 * area[0]
        elif action == "shrink":
            assert area[0] > 2.5 * area[-1]
        elif action == "bounce":
            assert np.ptp(c[:, 1]) > 0.15 * SIZE and np.ptp(c[:, 0]) < 0.1 * SIZE
    assert seen == set(ACTIONS)  # 12 videos, balanced labels: every class appears


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        m = mask.copy()
        m[1:] &= mask[:-1]
        m[:-1] &= mask[1:]
        m[:, 1:] &= mask[:, :-1]
        m[:, :-1] &= mask[:, 1:]
        mask = m
    return mask


def test_decoded_colour_inside_mask_is_the_objects_colour(synth):
    root, _ = synth
    meta = _meta(root)
    for vid, v in meta["videos"].items():
        rgb = np.asarray(_actor(meta, vid)["rgb"], dtype=np.float32)
        assert tuple(rgb) == COLOURS[_actor(meta, vid)["colour"]]
        with np.load(root / "masks" / f"{vid}.npz") as z:
            masks = z["masks"]
        frames = _decode(root / "videos" / f"{vid}.mp4")[1]
        # blink starts fully opaque; otherwise the frame where the object is largest
        t = 0 if v["action"] == "blink" else int(masks.sum(axis=(1, 2)).argmax())
        inner = _erode(masks[t], 2)
        assert inner.sum() >= 4, vid
        inside = frames[t].to_ndarray(format="rgb24")[inner].astype(np.float32)
        assert np.abs(np.median(inside, axis=0) - rgb).max() < 25, (vid, np.median(inside, axis=0), rgb)


def test_captions_name_object_and_action(synth):
    root, _ = synth
    meta = _meta(root)
    _, rows = _rows(root / "annotations.csv")
    caps = {c["video_id"]: c["captions"] for c in map(json.loads, (root / "captions.jsonl").read_text().splitlines())}
    for path, label, caption, vid in rows:
        actor = _actor(meta, vid)
        action = ACTIONS[int(label)]
        assert caption == caps[vid][0]
        assert len(set(caps[vid])) == 3
        for text in caps[vid]:
            words = text.split()
            assert actor["colour"] in words and actor["shape"] in words, text
            assert any(k in text for k in ACTION_WORDS[action]), text
            if action == "rotate clockwise":
                assert "counter" not in text and "anti" not in text
            others = [o for o in meta["videos"][vid]["objects"] if o["role"] != "acting"]
            assert not any(f"{o['colour']} {o['shape']}" in text for o in others)
    assert set(VERBS) == set(ACTIONS)


def test_class_descriptions_describe_each_class_in_the_captions_words(synth):
    """descriptions.json: every class's vision-free descriptions (tgmae describe-classes format), about
    each of the set's shapes, naming neither colour nor background, in words the captions use (a
    text model built on the captions knows them; the class names' "move", "grow", "blink" it may not)."""
    import re

    from tgmae.captions.sources import load_descriptions
    from tgmae.data.synthetic.captions import TEMPLATES

    root, _ = synth
    table, meta = load_descriptions(root / "descriptions.json")
    assert list(table) == list(ACTIONS) and meta["source"].endswith("class_descriptions")
    # the words captions are made of: sentence frames, shape names, verb phrases (and colours, backgrounds)
    frames = {w for t in TEMPLATES for w in re.findall(r"\w+", t.format(a="a", obj="", verb="", bg="", context=""))}
    vocab = {w for phrases in VERBS.values() for p in phrases for w in p.split()} | set(SHAPES) | frames | {"an"}
    for action, texts in table.items():
        assert len(texts) == len(set(texts)) == 3 * len(VERBS[action]) * len(SHAPES)
        for text in texts:
            assert any(v in text for v in VERBS[action]) and any(s in text.split() for s in SHAPES), text
            assert set(re.findall(r"\w+", text)) <= vocab, text
            assert not (set(COLOURS) | {"background"}) & set(text.split()), text
    assert not {"move", "grow", "blink", "bounce"} & vocab  # why the class names are not the prompts


def test_split_is_stratified(synth):
    root, _ = synth
    _, train = _rows(root / "train.csv")
    _, val = _rows(root / "val.csv")
    assert {int(r[1]) for r in train} == set(range(len(ACTIONS)))
    assert len(val) == round(0.2 * N)

    labels = np.repeat(np.arange(5), [40, 30, 20, 10, 1])
    is_val = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert is_val.sum() == round(0.25 * len(labels))
    for c, n in zip(range(5), (40, 30, 20, 10, 1)):
        k = int(is_val[labels == c].sum())
        assert abs(k - 0.25 * n) <= 1 and k < n  # proportional, and class c keeps a train video


def test_cli_writes_a_set_and_replaces_stale_files(tmp_path, capsys):
    out = tmp_path / "cli"
    stale = out / "videos" / "synth_00099.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (out / "videos" / "keep_me.txt").write_text("user file")
    argv = [str(out), "--num-videos", "20", "--frames", "6", "--size", "48", "--gop", "3", "--seed", "5"]
    assert main(argv + ["--fps", "10", "--val-fraction", "0.25", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "20 videos (15 train / 5 val)" in printed and "move left" in printed
    assert not stale.exists() and (out / "videos" / "keep_me.txt").exists()
    assert len(_rows(out / "annotations.csv")[1]) == 20
    _, frames = _decode(out / "videos" / "synth_00000.mp4")
    assert len(frames) == 6 and frames[0].width == 48
    assert main([str(out), "--size", "47"]) == 2
    assert "size=47" in capsys.readouterr().err


@pytest.mark.parametrize("shape", SHAPES)
def test_rasterize_matches_full_frame_evaluation(shape):
    rng = np.random.default_rng(1)
    t, h, w = 5, 40, 56
    cx, cy = rng.uniform(-10, w + 10, t), rng.uniform(-10, h + 10, t)  # some frames partly outside
    radius, angle = rng.uniform(3, 9, t), rng.uniform(-math.pi, math.pi, t)
    got = rasterize(shape, cx, cy, radius, angle, h, w)
    ys, xs = np.mgrid[:h, :w] + 0.5
    for i in range(t):
        dx, dy = (xs - cx[i]) / radius[i], (ys - cy[i]) / radius[i]
        c, s = math.cos(angle[i]), math.sin(angle[i])
        expected = unit_shape(shape, c * dx + s * dy, c * dy - s * dx)
        assert np.array_equal(got[i], expected), (shape, i)
    assert got.any()


def test_angles_turn_clockwise_on_screen():
    # a triangle points up at angle 0; a quarter turn clockwise makes it point right
    h = w = 64
    for angle, direction in ((0.0, (0, -1)), (math.pi / 2, (1, 0))):
        m = rasterize("triangle", np.array([32.0]), np.array([32.0]), np.array([12.0]), np.array([angle]), h, w)[0]
        ys, xs = np.nonzero(m)
        d = np.stack([xs + 0.5 - 32, ys + 0.5 - 32], axis=1)
        tip = d[np.argmax((d**2).sum(axis=1))]
        assert np.dot(tip / np.linalg.norm(tip), direction) > 0.95


@pytest.mark.parametrize("label", range(len(ACTIONS)))
def test_scene_tracks_perform_the_action(label):
    action = ACTIONS[label]
    for seed in range(3):
        scene = sample_scene(label, 96, 96, 20, np.random.default_rng([seed, label]))
        actor = scene.actor
        assert actor.role == "acting" and actor.motion == action and scene.action == action
        assert sum(tr.role == "acting" for tr in scene.tracks) == 1
        step = np.diff(actor.angle)
        if action == "rotate clockwise":
            assert (step > 0).all() and actor.shape != "circle"
        elif action == "rotate counterclockwise":
            assert (step < 0).all() and actor.shape != "circle"
        else:
            assert (step == 0).all()
        if action == "blink":
            assert actor.alpha[0] == pytest.approx(1.0) and 0.2 < actor.alpha.min() < 0.5
        else:
            assert (actor.alpha == 1).all()
        for tr in scene.tracks:
            if tr.role == "distractor":  # distractors move, along curves rather than straight lines
                assert np.hypot(np.diff(tr.cx), np.diff(tr.cy)).sum() > 0.1 * 96
        assert scene.texture.shape[0] >= 96 + 2 * np.abs(scene.view - scene.view[0]).max()


def _silhouette(scene, tr: Track) -> np.ndarray:
    dy, dx = scene.shake[:, 0], scene.shake[:, 1]
    return rasterize(tr.shape, tr.cx - dx, tr.cy - dy, tr.radius, tr.angle, scene.height, scene.width)


def test_mask_is_the_visible_part_of_the_actor():
    for seed in range(6):
        scene = sample_scene(seed % len(ACTIONS), 64, 64, 12, np.random.default_rng(seed))
        clip = render_scene(scene)
        sil = [_silhouette(scene, tr) for tr in scene.tracks]
        front = clip.paint_order[clip.paint_order.index(scene.acting) + 1 :]
        covered = np.logical_or.reduce([sil[i] for i in front]) if front else np.zeros_like(clip.mask)
        assert np.array_equal(clip.mask, sil[scene.acting] & ~covered)
        if scene.action != "blink":  # opaque actor: mask pixels are exactly its colour before compression
            assert (clip.frames[clip.mask] == np.asarray(scene.actor.rgb, np.uint8)).all()


def test_hidden_actor_is_brought_to_the_front():
    scene = sample_scene(0, 64, 64, 8, np.random.default_rng(0))
    actor = scene.actor
    cover = Track("square", "white" if actor.colour != "white" else "red", "distractor", "wander",
                  actor.cx.copy(), actor.cy.copy(), actor.radius * 2, actor.angle * 0, actor.alpha.copy())
    scene.tracks = [actor, cover]
    scene.acting = 0
    clip = render_scene(scene)
    assert clip.paint_order == [1, 0]
    assert np.array_equal(clip.mask, _silhouette(scene, actor))


def test_difficulty_knobs_cap_and_slow_the_distractors_only():
    for seed in range(12):
        full = sample_scene(seed % len(ACTIONS), 64, 64, 12, np.random.default_rng(seed))
        for cap in (0, 1):
            easy = sample_scene(seed % len(ACTIONS), 64, 64, 12, np.random.default_rng(seed), distractors=cap)
            n_full = sum(tr.role == "distractor" for tr in full.tracks)
            assert sum(tr.role == "distractor" for tr in easy.tracks) == min(n_full, cap)
            # same actor, background and camera as the original scene: only distractors are dropped
            assert (easy.actor.shape, easy.actor.colour) == (full.actor.shape, full.actor.colour)
            np.testing.assert_array_equal(easy.actor.cx, full.actor.cx)
            np.testing.assert_array_equal(easy.texture, full.texture)
            np.testing.assert_array_equal(easy.view, full.view)
        still = sample_scene(seed % len(ACTIONS), 64, 64, 12, np.random.default_rng(seed), distractor_speed=0.0)
        for tr in still.tracks:
            if tr.role == "distractor":
                assert np.ptp(tr.cx) == 0 and np.ptp(tr.cy) == 0 and np.ptp(tr.angle) == 0
    for kw, key in ((dict(distractors=3), "distractors=3"), (dict(distractor_speed=-1.0), "distractor_speed=-1.0"),
                    (dict(background="sky"), "background='sky'")):
        with pytest.raises(ValueError, match=key):
            sample_scene(0, 64, 64, 12, np.random.default_rng(0), **kw)


def test_generator_records_difficulty_and_cli_rejects_bad_knob(tmp_path, capsys):
    info = generate_synthetic_dataset(tmp_path / "easy", num_videos=10, frames=8, size=32, distractors=0)
    meta = _meta(info.root)
    assert meta["distractors"] == 0 and meta["distractor_speed"] == 1.0
    assert all(o["role"] == "acting" for v in meta["videos"].values() for o in v["objects"])
    assert main([str(tmp_path / "bad"), "--distractors", "5"]) == 2
    assert "distractors=5" in capsys.readouterr().err


def test_flat_background_keeps_the_scene_and_is_one_colour():
    # background="flat" (asked for by name, never drawn): the same objects, path and view as the
    # drawn scene, on a canvas of one colour without grain.
    drawn = sample_scene(4, 48, 48, 8, np.random.default_rng(3))
    flat = sample_scene(4, 48, 48, 8, np.random.default_rng(3), background="flat")
    assert flat.background == "flat" and drawn.background != "flat"
    assert np.array_equal(flat.view, drawn.view) and len(flat.tracks) == len(drawn.tracks)
    assert all(np.array_equal(a.cx, b.cx) and np.array_equal(a.cy, b.cy) for a, b in zip(flat.tracks, drawn.tracks))
    assert (flat.texture == flat.texture[0, 0]).all()
    frames = render_scene(flat).frames
    assert len(np.unique(frames.reshape(-1, 3), axis=0)) > 1  # the object is drawn on it


def test_static_camera_keeps_the_scene_and_fixes_the_background():
    # static_camera=True: the drawn scene's texture and objects, without scroll or shake, so the
    # background is the same in every frame wherever no object covers it (issue 14's MAE check)
    for seed in range(6):
        drawn = sample_scene(seed % len(ACTIONS), 48, 48, 8, np.random.default_rng(seed), distractors=0)
        still = sample_scene(seed % len(ACTIONS), 48, 48, 8, np.random.default_rng(seed), distractors=0,
                             static_camera=True)
        np.testing.assert_array_equal(still.texture, drawn.texture)
        assert all(np.array_equal(a.cx, b.cx) and np.array_equal(a.angle, b.angle) for a, b in zip(still.tracks, drawn.tracks))
        assert np.ptp(still.view, axis=0).max() == 0 and not still.shake.any() and still.scroll == (0.0, 0.0)
        clip = render_scene(still)
        free = ~clip.mask.any(axis=0)  # pixels the actor (the only object) never covers
        assert free.any() and (clip.frames[:, free] == clip.frames[:1, free]).all()
        if drawn.scroll != (0.0, 0.0):  # the default camera moves the background
            assert not (render_scene(drawn).frames[:, free] == render_scene(drawn).frames[:1, free]).all()


def _captions_text(root: Path) -> str:
    """captions.jsonl without each record's `video` (the identity of the set's own file: its size,
    mtime, inode, ctime), as it was written before identities were recorded."""
    lines = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    return "".join(json.dumps({k: v for k, v in o.items() if k != "video"}) + "\n" for o in lines)


def test_captions_record_each_videos_identity_and_another_sets_are_refused(tmp_path):
    """Issue #28 re-trial 12, F1: a synthetic set's captions.jsonl recorded no video identities, so
    `masks` and training accepted another synthetic set's captions (the same ids synth_00000, ...)
    for this set's videos (rc 0). Its records carry each video's `video_identity` as the caption
    command's do, and the check every reader makes refuses the other set's store by name."""
    from tgmae.captions.store import CaptionStoreError, read_store, refuse_other_videos
    from tgmae.data.fileid import video_identity

    sets = [generate_synthetic_dataset(tmp_path / f"s{i}", num_videos=4, frames=6, size=32, gop=3, seed=i + 1)
            for i in range(2)]
    for info in sets:
        for r in read_store(info.captions_jsonl).records:
            assert r.extra["video"] == video_identity(str(info.videos_dir / f"{r.video_id}.mp4"))
    mine = {f"synth_0000{i}": video_identity(str(sets[0].videos_dir / f"synth_0000{i}.mp4")) for i in range(4)}
    refuse_other_videos(sets[0].captions_jsonl, read_store(sets[0].captions_jsonl).records, mine)  # its own
    with pytest.raises(CaptionStoreError) as e:
        refuse_other_videos(sets[1].captions_jsonl, read_store(sets[1].captions_jsonl).records, mine)
    assert str(sets[1].captions_jsonl) in str(e.value) and "'synth_0000" in str(e.value)
    # a set written before identities were recorded gets them when `synth` is run on it again
    stamped = sets[0].captions_jsonl.read_text()
    sets[0].captions_jsonl.write_text(_captions_text(sets[0].root))
    generate_synthetic_dataset(sets[0].root, num_videos=4, frames=6, size=32, gop=3, seed=1)
    assert sets[0].captions_jsonl.read_text() == stamped


def _content_digest(root: Path) -> str:
    """sha256 over the index files and the masks' arrays (not the zip or mp4 bytes, which depend on
    the zlib / x264 builds)."""
    import hashlib

    h = hashlib.sha256()
    # annotations.csv without the video_id column (added after the digest was recorded; the stems)
    header, rows = _rows(root / "annotations.csv")
    assert header[-1] == "video_id" and all(r[-1] == Path(r[0]).stem for r in rows)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header[:-1]] + [r[:-1] for r in rows])
    h.update(buf.getvalue().encode())
    h.update(_captions_text(root).encode())  # without the records' identities of this set's files
    h.update((root / "meta.json").read_bytes())
    for p in sorted((root / "masks").iterdir()):
        with np.load(p) as z:
            h.update(z["masks"].tobytes() + z["boxes"].tobytes())
    return h.hexdigest()


# The default set's content, recorded before `background` / `static_camera` reached the generator
# (commit 5e7f280): new knobs must leave the default output unchanged.
DEFAULT_DIGEST = "835e02b5f380564a4debfef4d3ae4f653b0c38e9761226f123a10d4fad1a10bd"


def test_default_set_is_unchanged_by_the_knobs(tmp_path):
    info = generate_synthetic_dataset(tmp_path / "d", num_videos=4, frames=6, size=32, gop=3, seed=7)
    assert _content_digest(info.root) == DEFAULT_DIGEST
    assert "static_camera" not in _meta(info.root) and "background" not in _meta(info.root)


def test_static_camera_and_background_reach_the_generator_and_cli(tmp_path, capsys):
    # the static-camera MAE recipe (docs/sanity.md (b)) through `tgmae synth --static-camera`
    out = tmp_path / "still"
    assert main([str(out), "--num-videos", "4", "--frames", "6", "--size", "32", "--gop", "3", "--seed", "7",
                 "--static-camera", "--background", "flat"]) == 0
    meta = _meta(out)
    assert meta["static_camera"] is True and meta["background"] == "flat"
    default = generate_synthetic_dataset(tmp_path / "d", num_videos=4, frames=6, size=32, gop=3, seed=7).root
    for vid, v in meta["videos"].items():
        assert v["background"] == {"kind": "flat", "scroll_px_per_frame": [0.0, 0.0], "jitter_px": 0}
        assert v["objects"] == _meta(default)["videos"][vid]["objects"]  # same scene otherwise
    still = generate_synthetic_dataset(tmp_path / "s", num_videos=4, frames=6, size=32, gop=3, seed=7,
                                       static_camera=True)
    for vid, v in _meta(still.root)["videos"].items():
        assert v["background"]["kind"] == _meta(default)["videos"][vid]["background"]["kind"]
        assert v["background"]["scroll_px_per_frame"] == [0.0, 0.0]
    # the decoded background does not move: pixels no object covers are the same in every frame
    masks = np.load(still.root / "masks" / "synth_00000.npz")["masks"]
    frames = np.stack([f.to_ndarray(format="rgb24") for f in _decode(still.root / "videos" / "synth_00000.mp4")[1]])
    free = ~masks.any(axis=0)
    assert np.abs(frames[:, free].astype(int) - frames[:1, free]).mean() < 2.0  # codec noise only
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "bad"), "--background", "plaid"])
    assert e.value.code == 2 and "--background" in capsys.readouterr().err


def test_a_folder_holding_another_data_sets_index_is_refused(tmp_path):
    """The same kind as issue 28's stores: writing a set deleted a user's train.csv first."""
    from tgmae.errors import SettingsError

    (tmp_path / "train.csv").write_text("path,label\nmine.mp4,0\n")
    with pytest.raises(SettingsError, match=r"holds train\.csv but no synthetic set's meta\.json"):
        generate_synthetic_dataset(tmp_path, num_videos=4, frames=6, size=32, gop=3)
    assert (tmp_path / "train.csv").read_text() == "path,label\nmine.mp4,0\n"


def _snapshot(root: Path) -> dict:
    """Every file's bytes and mtime: a no-op rerun rewrites nothing."""
    return {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_set_of_other_settings_is_refused_and_the_same_settings_are_a_no_op(tmp_path, capsys):
    """Issue 28: a second `tgmae synth DIR` with other settings replaced the set (rc 0)."""
    out = tmp_path / "set"
    argv = [str(out), "--frames", "6", "--size", "32", "--gop", "3"]
    assert main(argv + ["--num-videos", "12"]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main(argv + ["--num-videos", "6", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "num_videos=12" in err and "seed=0" in err and "frames" not in err
    assert _snapshot(out) == before
    assert main(argv + ["--num-videos", "12"]) == 0  # the same settings: the set is there already
    assert "12 videos" in capsys.readouterr().out and _snapshot(out) == before


def test_a_killed_set_keeps_its_settings_and_nothing_is_removed_before_the_check(tmp_path, monkeypatch):
    from tgmae.data.synthetic import generate as gen
    from tgmae.errors import SettingsError

    kw = dict(frames=6, size=32, gop=3)
    done = generate_synthetic_dataset(tmp_path / "done", num_videos=8, **kw).root
    before = _snapshot(done)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_make_videos", killed)
    with pytest.raises(SettingsError, match="num_videos=8"):  # refused before anything of the set goes
        generate_synthetic_dataset(done, num_videos=4, **kw)
    assert _snapshot(done) == before
    with pytest.raises(KeyboardInterrupt):  # a run killed while rendering
        generate_synthetic_dataset(tmp_path / "half", num_videos=8, seed=1, **kw)
    with pytest.raises(SettingsError, match="seed=1"):  # the killed run's settings still count
        generate_synthetic_dataset(tmp_path / "half", num_videos=8, **kw)
    monkeypatch.undo()
    info = generate_synthetic_dataset(tmp_path / "half", num_videos=8, seed=1, **kw)  # same settings: resumed
    assert info.num_videos == 8 and _meta(info.root)["seed"] == 1
    assert not [p for p in info.root.iterdir() if p.name.startswith(".synth")]


@pytest.mark.parametrize("inside", ["", "data"])
def test_a_run_folder_or_a_folder_inside_one_is_refused(tmp_path, capsys, inside):
    """Issue 28: `tgmae synth RUN_FOLDER` wrote the set's videos and index among a run's files."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "metrics.jsonl").write_text("")
    out = run / inside if inside else run
    assert main([str(out), "--num-videos", "4", "--frames", "6", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and str(run) in err[0], err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["checkpoints", "config.yaml", "metrics.jsonl"]


_KW = ["--num-videos", "6", "--frames", "6", "--size", "32", "--gop", "3"]


def _valid_video(path: Path, frames: int = 6, size: int = 32) -> bool:
    _, decoded = _decode(path)
    return len(decoded) == frames and decoded[0].width == size and decoded[0].height == size


def test_a_rerun_renders_only_the_missing_damaged_or_wrong_size_videos_and_keeps_the_lists(tmp_path, capsys):
    """Issue 28 re-trial 18 A1: a rerun into a set with one video deleted re-rendered every video
    and rewrote every list. Only the missing, unreadable and wrong-size videos (and masks) are made
    again; the others and the lists (but captions.jsonl's identities of the new files) stay as they were."""
    from tgmae.data.fileid import video_identity
    from tgmae.data.synthetic.files import write_mp4

    out = tmp_path / "set"
    assert main([str(out), *_KW]) == 0
    before = _snapshot(out)
    captions = _captions_text(out)
    videos = out / "videos"
    (videos / "synth_00002.mp4").unlink()
    (out / "masks" / "synth_00003.npz").unlink()
    damaged = videos / "synth_00004.mp4"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # truncated
    write_mp4(videos / "synth_00005.mp4", np.zeros((6, 48, 48, 3), np.uint8), 15, 3)  # another size
    capsys.readouterr()
    assert main([str(out), *_KW]) == 0
    after = _snapshot(out)
    redone = {Path("videos/synth_00002.mp4"), Path("masks/synth_00003.npz"), Path("videos/synth_00003.mp4"),
              Path("masks/synth_00002.npz"), Path("videos/synth_00004.mp4"), Path("masks/synth_00004.npz"),
              Path("videos/synth_00005.mp4"), Path("masks/synth_00005.npz"), Path("captions.jsonl")}
    assert {p for p in before if after.get(p) != before[p]} <= redone
    assert {p for p in before if after.get(p) != before[p]} >= {Path("videos/synth_00002.mp4"), Path(
        "masks/synth_00003.npz"), Path("videos/synth_00004.mp4"), Path("videos/synth_00005.mp4")}
    for i in (2, 4, 5):
        assert _valid_video(videos / f"synth_0000{i}.mp4")
    assert after[Path("masks/synth_00003.npz")][0] == before[Path("masks/synth_00003.npz")][0]  # the same mask
    assert _captions_text(out) == captions  # the same captions, with the identities of today's files
    for r in map(json.loads, (out / "captions.jsonl").read_text().splitlines()):
        assert r["video"] == video_identity(str(videos / f"{r['video_id']}.mp4"))
    assert main([str(out), *_KW]) == 0 and _snapshot(out) == after  # now complete: a no-op


def test_a_rerun_does_not_overwrite_an_edited_list_without_overwrite(tmp_path, capsys):
    """Issue 28 re-trial 18 A1: the rerun rewrote a list the user had edited. It is refused in one
    line naming the list (the missing video is made meanwhile); --overwrite replaces it."""
    out = tmp_path / "set"
    assert main([str(out), *_KW]) == 0
    original = (out / "train.csv").read_text()
    edited = original.replace("videos/synth_00000.mp4", "videos/mine.mp4")
    (out / "train.csv").write_text(edited)
    (out / "videos" / "synth_00001.mp4").unlink()
    capsys.readouterr()
    for _ in range(2):  # refused again: the refused run's set is not taken as finished
        assert main([str(out), *_KW]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out / "train.csv") in err[0] and "--overwrite" in err[0], err
        assert (out / "train.csv").read_text() == edited
    assert _valid_video(out / "videos" / "synth_00001.mp4")
    assert main([str(out), *_KW, "--overwrite"]) == 0
    assert (out / "train.csv").read_text() == original
    assert main([str(out), *_KW]) == 0  # and it is finished


def test_a_rerun_killed_while_rendering_leaves_the_lists_in_place(tmp_path, monkeypatch):
    """Issue 28 re-trial 18 A1: a kill -9 mid-rerun left the folder with no lists (they were
    removed before rendering); they are written (atomically) only at the end."""
    from tgmae.data.synthetic import generate as gen

    kw = dict(num_videos=6, frames=6, size=32, gop=3)
    root = generate_synthetic_dataset(tmp_path / "set", **kw).root
    lists = {n: (root / n).read_bytes() for n in INDEX}
    (root / "videos" / "synth_00001.mp4").unlink()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "write_mp4", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(root, **kw)
    assert {n: (root / n).read_bytes() for n in INDEX if (root / n).exists()} == lists
    with pytest.raises(gen.SettingsError, match="num_videos=6"):  # other settings: still refused
        generate_synthetic_dataset(root, **{**kw, "num_videos": 5})
    monkeypatch.undo()
    generate_synthetic_dataset(root, **kw)
    assert _valid_video(root / "videos" / "synth_00001.mp4")
    assert {n: (root / n).read_bytes() for n in INDEX if n != "captions.jsonl"} == \
        {n: b for n, b in lists.items() if n != "captions.jsonl"}


def test_a_rerun_remakes_a_video_swapped_for_another_and_never_restamps_it(tmp_path, capsys, caplog):
    """Issue 28 re-trial 19A F2: a video copied over another one (synth_00001 -> synth_00005) was
    taken as the set's by a rerun (nothing redone), and a later rerun that remade a missing video
    re-stamped captions.jsonl with the copy's identity, so training no longer caught it. A video
    whose file is not the one captions.jsonl records is made again (it depends on (seed, i) only),
    with a log line naming it; captions.jsonl never records a file synth did not write."""
    import logging

    from tgmae.data.fileid import video_identity

    out = tmp_path / "set"
    assert main([str(out), *_KW]) == 0
    videos = out / "videos"
    own = (videos / "synth_00005.mp4").read_bytes()
    (videos / "synth_00005.mp4").write_bytes((videos / "synth_00001.mp4").read_bytes())
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="tgmae"):
        assert main([str(out), *_KW]) == 0
    assert "'synth_00005'" in caplog.text and "synth_00001" not in caplog.text
    assert (videos / "synth_00005.mp4").read_bytes() == own  # made again: the same bytes (one x264 thread)
    records = {r["video_id"]: r for r in map(json.loads, (out / "captions.jsonl").read_text().splitlines())}
    assert records["synth_00005"]["video"] == video_identity(str(videos / "synth_00005.mp4"))
    # the tester's order: a missing video makes the rerun rewrite captions.jsonl; the copy is not stamped
    (videos / "synth_00005.mp4").write_bytes((videos / "synth_00001.mp4").read_bytes())
    (videos / "synth_00002.mp4").unlink()
    assert main([str(out), *_KW]) == 0
    assert (videos / "synth_00005.mp4").read_bytes() == own
    for r in map(json.loads, (out / "captions.jsonl").read_text().splitlines()):
        assert r["video"] == video_identity(str(videos / f"{r['video_id']}.mp4"))


def test_a_finished_set_with_an_edited_list_is_refused_and_overwrite_restores_it(tmp_path, capsys):
    """Issue 28 re-trial 19A F3: with no video to remake, a rerun ignored an edited train.csv, even
    with --overwrite, and printed the set's counts (rc 0). The finished set's lists are checked as
    a rerun that renders checks them: refused naming the list; --overwrite restores it."""
    out = tmp_path / "set"
    assert main([str(out), *_KW]) == 0
    original = (out / "train.csv").read_text()
    edited = "".join(original.splitlines(keepends=True)[:1] + original.splitlines(keepends=True)[2:])
    (out / "train.csv").write_text(edited)
    capsys.readouterr()
    assert main([str(out), *_KW]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out / "train.csv") in err[0] and "--overwrite" in err[0], err
    assert (out / "train.csv").read_text() == edited
    assert main([str(out), *_KW, "--overwrite"]) == 0
    assert (out / "train.csv").read_text() == original
    before = _snapshot(out)
    assert main([str(out), *_KW]) == 0 and _snapshot(out) == before  # finished: a no-op


def test_the_lists_are_read_once_each_to_check_and_write_them(tmp_path, monkeypatch):
    """Session 13 diff read: `_write_lists` read every list twice (once for the edit check, once
    to see whether it changed). One read each; a CRLF copy of the set's text is still the set's
    (not rewritten, not refused) and an edited list is still refused, writing none."""
    from tgmae.data.synthetic import generate as gen

    texts = {n: f"{n} line\n" for n in INDEX}
    for n in INDEX:
        (tmp_path / n).write_text(texts[n])
    (tmp_path / "train.csv").write_bytes(b"train.csv line\r\n")
    (tmp_path / "val.csv").unlink()
    reads: list[str] = []
    plain_open = Path.open

    def counting_open(self, mode="r", *a, **k):
        if "r" in mode and self.parent == tmp_path:
            reads.append(self.name)
        return plain_open(self, mode, *a, **k)

    monkeypatch.setattr(Path, "open", counting_open)
    gen._write_lists(tmp_path, texts, overwrite=False)
    assert sorted(reads) == sorted(INDEX)  # the missing val.csv: one try
    assert (tmp_path / "val.csv").read_text() == texts["val.csv"]
    assert (tmp_path / "train.csv").read_bytes() == b"train.csv line\r\n"
    (tmp_path / "classes.txt").write_text("mine\n")
    (tmp_path / "val.csv").unlink()
    with pytest.raises(gen.EditedListError, match="classes.txt"):
        gen._write_lists(tmp_path, texts, overwrite=False)
    assert not (tmp_path / "val.csv").exists()
