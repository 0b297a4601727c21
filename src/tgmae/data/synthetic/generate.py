"""`tgmae synth OUT_DIR`: write the synthetic captioned video set.

Layout (the data pipeline relies on it):
    OUT/videos/<id>.mp4      H.264 (libx264, yuv420p), GOP `gop`, no B-frames
    OUT/masks/<id>.npz       `masks` bool [T, H, W] visible acting-object pixels; `boxes` int16 [T, 4]
    OUT/train.csv, val.csv   `path,label,caption,video_id` (path relative to OUT), stratified by class
    OUT/annotations.csv      all videos, same columns
    OUT/classes.txt          line i = name of class i
    OUT/captions.jsonl       {"video_id", "captions": [3], "source": "synthetic", "model": "template", "video"}
                             (`video`: the `data.fileid.video_identity` of OUT/videos/<id>.mp4, as `tgmae
                             caption` records it: `masks` and training refuse another set's captions)
    OUT/descriptions.json    class -> [vision-free descriptions] (`captions.class_descriptions`; eval.class_descriptions)
    OUT/meta.json            settings, counts, classes, per-video objects (written last)
    OUT/.synth_settings.json the settings of a set being written (removed once its lists are written)

One set per folder: a folder holding a set (or a killed run's part of one) made with other
settings is refused naming them, before anything of it is removed; the same settings resume an
unfinished set, or leave a finished one as it is. A rerun makes only the videos (and masks) that
are missing, unreadable, of another size, or not the file this set wrote (its `video_identity` is
not the one captions.jsonl records: a video copied over it; one log line names them); the lists
(index files above) stay in place while it renders and are replaced at the end (each atomically,
meta.json last), only where they change; captions.jsonl records only identities of files this
generator wrote. A list whose content is not what this set's would be (a user's edit; for
captions.jsonl, but for its records' `video` identities) is refused naming it, unless
`overwrite`, on every rerun (a finished set's too); a refused rendering run's set stays
unfinished (its settings file stays), so a later run refuses it too.

Video i depends only on (seed, i): the set is the same for any number of workers, and the same
seed gives byte-identical annotations, captions (but for each record's `video` identity of its
file) and masks (and, with one x264 thread, videos).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tgmae.atomic import atomic_write_text, found_output
from tgmae.errors import SettingsError, UserError
from tgmae.data.fileid import video_identity
from tgmae.lifetime import end_with_parent
from tgmae.locks import refuse_inside_run
from tgmae.data.synthetic.captions import class_descriptions, make_captions
from tgmae.data.synthetic.files import csv_text, masks_ok, mp4_ok, write_masks, write_mp4
from tgmae.data.synthetic.render import paint_order, render_scene
from tgmae.data.synthetic.scene import ACTIONS, MAX_DISTRACTORS, check_scene_options, sample_scene

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
INDEX_FILES = ("train.csv", "val.csv", "annotations.csv", "classes.txt", "captions.jsonl", "descriptions.json",
               "meta.json")
PENDING = ".synth_settings.json"
_OWN_FILE = re.compile(r"^(synth_\d+\.(mp4|npz)|\.synth_\d+\.(mp4|npz)\..+\.tmp)$")  # and killed writes' temps


@dataclass
class SyntheticSetInfo:
    """Where the set was written and what it holds."""

    root: Path
    videos_dir: Path
    masks_dir: Path
    train_csv: Path
    val_csv: Path
    annotations_csv: Path
    classes_txt: Path
    captions_jsonl: Path
    meta_json: Path
    num_videos: int
    num_train: int
    num_val: int
    classes: list[str]
    class_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Task:
    index: int
    video_id: str
    label: int
    seed: int
    frames: int
    size: int
    fps: int
    gop: int
    root: str
    distractors: int = MAX_DISTRACTORS
    distractor_speed: float = 1.0
    background: str | None = None
    static_camera: bool = False
    render: bool = True  # False: its video and mask are on disk; only its record is made


class EditedListError(FileExistsError, UserError):
    """A set's list (train.csv, ...) differs from what the set's would be (a user edited it):
    a rerun does not replace it without `overwrite` (CLI: --overwrite)."""


def balanced_labels(num_videos: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [N] class ids, counts differing by at most one, in random order."""
    return rng.permutation(np.arange(num_videos) % num_classes)


def stratified_split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """bool [N], True = validation. About round(N * val_fraction) videos go to val, spread over
    classes by largest remainder (ties broken at random); every class keeps >= 1 train video."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * val_fraction
    n_val = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    extra = int(round(len(labels) * val_fraction)) - int(n_val.sum())
    for c in sorted(range(len(classes)), key=lambda c: (-(quota[c] - np.floor(quota[c])), rng.random())):
        if extra <= 0:
            break
        if n_val[c] < counts[c] - 1:
            n_val[c] += 1
            extra -= 1
    is_val = np.zeros(len(labels), dtype=bool)
    for c, k in zip(classes, n_val):
        members = np.flatnonzero(labels == c)
        is_val[rng.choice(members, size=int(k), replace=False)] = True
    return is_val


def check_settings(
    num_videos: int, frames: int, size: int, fps: int, gop: int, workers: int, val_fraction: float, seed: int = 0,
    distractors: int = MAX_DISTRACTORS, distractor_speed: float = 1.0, background: str | None = None,
) -> None:
    """Raise SettingsError (a ValueError) naming the first invalid setting."""
    for name, value, lo in (("num_videos", num_videos, 1), ("frames", frames, 2), ("size", size, 32),
                            ("fps", fps, 1), ("gop", gop, 1), ("workers", workers, 0), ("seed", seed, 0)):
        if value < lo:
            raise SettingsError(f"{name}={value}: must be >= {lo}")
    if size % 2:
        raise SettingsError(f"size={size}: must be even (yuv420p)")
    if not 0.0 <= val_fraction < 1.0:
        raise SettingsError(f"val_fraction={val_fraction}: must be in [0, 1)")
    check_scene_options(distractors, distractor_speed, background)


def _make_video(task: _Task) -> dict:
    """Sample one video's scene and return its index record; render and write the video and its
    mask when `task.render` (else they are on disk: the record needs only the paint order)."""
    scene_ss, caption_ss = np.random.SeedSequence([task.seed, task.index]).spawn(2)
    scene = sample_scene(task.label, task.size, task.size, task.frames, np.random.default_rng(scene_ss),
                         distractors=task.distractors, distractor_speed=task.distractor_speed,
                         background=task.background, static_camera=task.static_camera)
    if task.render:
        clip = render_scene(scene)
        root = Path(task.root)
        write_mp4(root / "videos" / f"{task.video_id}.mp4", clip.frames, task.fps, task.gop)
        write_masks(root / "masks" / f"{task.video_id}.npz", clip.mask, clip.boxes)
        order = clip.paint_order
    else:
        order = paint_order(scene)
    z = {track_index: depth for depth, track_index in enumerate(order)}
    objects = [
        {"shape": tr.shape, "colour": tr.colour, "rgb": list(tr.rgb), "role": tr.role, "motion": tr.motion, "z": z[i]}
        for i, tr in enumerate(scene.tracks)
    ]
    objects.sort(key=lambda o: (o["role"] != "acting", o["z"]))
    return {
        "video_id": task.video_id,
        "label": task.label,
        "action": scene.action,
        "captions": make_captions(scene, np.random.default_rng(caption_ss)),
        "background": {"kind": scene.background, "scroll_px_per_frame": list(scene.scroll), "jitter_px": scene.jitter},
        "objects": objects,
    }


def _refuse_other_folder(root: Path) -> None:
    """SettingsError when `root` holds index files (train.csv, ...) of something other than a
    synthetic set: regenerating deletes them first, and they may be a user's own data set's."""
    found = [n for n in INDEX_FILES if (root / n).exists()]
    if not found:
        return
    try:
        ours = json.loads((root / "meta.json").read_text()).get("generator") == "tgmae.data.synthetic"
    except (OSError, ValueError, AttributeError):
        ours = False
    ours = ours or (root / PENDING).is_file()  # a killed run's lists: the folder was checked when it began
    if not ours:
        raise SettingsError(f"{root} holds {', '.join(found)} but no synthetic set's meta.json: writing a set "
                            "there would replace them; choose another folder")


def _settings_of(meta: dict) -> dict:
    """The settings a set's meta.json (or a pending run's settings file) records; a set older
    than the difficulty knobs holds MAX_DISTRACTORS at speed 1."""
    return {"version": meta.get("version"), "num_videos": meta.get("num_videos"), "seed": meta.get("seed"),
            "frames": meta.get("frames"), "size": meta.get("height"), "fps": meta.get("fps"), "gop": meta.get("gop"),
            "val_fraction": meta.get("val_fraction"), "distractors": meta.get("distractors", MAX_DISTRACTORS),
            "distractor_speed": float(meta.get("distractor_speed", 1.0)), "background": meta.get("background"),
            "static_camera": bool(meta.get("static_camera", False))}


def _check_same_settings(root: Path, settings: dict) -> bool:
    """Whether `root` holds a finished set of `settings` (its meta.json); SettingsError naming
    each differing setting when its set, or a killed run's part of one, was made with others."""
    for name in ("meta.json", PENDING):
        try:
            had = _settings_of(json.loads((root / name).read_text()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError) as e:
            raise SettingsError(f"{root / name}: unreadable ({e}); remove it or choose another folder") from None
        diff = [f"{k}={had[k]!r} (this run: {settings[k]!r})" for k in settings if had[k] != settings[k]]
        if diff:
            what = "a synthetic set" if name == "meta.json" else "part of a synthetic set (a killed run)"
            raise SettingsError(f"{root} holds {what} made with other settings: {', '.join(diff)}; use the same "
                                "settings to resume, or another folder")
        return name == "meta.json"
    return False


def _info(root: Path, meta: dict, seconds: float) -> SyntheticSetInfo:
    return SyntheticSetInfo(
        root=root, videos_dir=root / "videos", masks_dir=root / "masks", train_csv=root / "train.csv",
        val_csv=root / "val.csv", annotations_csv=root / "annotations.csv", classes_txt=root / "classes.txt",
        captions_jsonl=root / "captions.jsonl", meta_json=root / "meta.json", num_videos=meta["num_videos"],
        num_train=meta["num_train"], num_val=meta["num_val"], classes=list(meta["classes"]),
        class_counts=dict(meta["class_counts"]), seconds=seconds,
    )


def _clear_outputs(root: Path, keep: set[str]) -> None:
    """Delete this generator's files (by name pattern) that are not part of the new set."""
    for sub in ("videos", "masks"):
        for p in (root / sub).iterdir():
            if _OWN_FILE.match(p.name) and p.name not in keep:
                p.unlink()


def _make_videos(tasks: Sequence[_Task], workers: int, progress: Callable[[int, int], None] | None) -> list[dict]:
    """Every task's video and mask, `workers` spawned processes at a time; records in task order."""
    records: list[dict] = []
    if workers == 1:
        for task in tasks:
            records.append(_make_video(task))
            if progress:
                progress(len(records), len(tasks))
        return records
    chunk = max(1, min(8, len(tasks) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=end_with_parent,
                             initargs=(os.getpid(),)) as pool:  # workers end with this process
        for record in pool.map(_make_video, tasks, chunksize=chunk):
            records.append(record)
            if progress:
                progress(len(records), len(tasks))
    return records


def _index_texts(root: Path, records: Sequence[dict], is_val: np.ndarray, meta: dict,
                 kept: dict[str, list]) -> dict[str, str]:
    """Each list's text (INDEX_FILES, the layout above) for this set; its videos are on disk.
    kept: {video_id: identity} of the videos not made by this run that captions.jsonl recorded."""
    rows = [(f"videos/{r['video_id']}.mp4", r["label"], r["captions"][0], r["video_id"]) for r in records]
    return {
        "train.csv": csv_text([row for row, v in zip(rows, is_val) if not v]),
        "val.csv": csv_text([row for row, v in zip(rows, is_val) if v]),
        "annotations.csv": csv_text(rows),
        "classes.txt": "".join(f"{c}\n" for c in ACTIONS),
        "captions.jsonl": _captions_text(root, [{"video_id": r["video_id"], "captions": r["captions"],
                                                  "source": "synthetic", "model": "template"} for r in records],
                                        kept),
        "descriptions.json": _descriptions_text(),
        "meta.json": json.dumps(meta, indent=1) + "\n",
    }


def _without_identities(text: str) -> list[dict] | None:
    """captions.jsonl's records without their `video` identities; None when a line is not a record."""
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [{k: v for k, v in r.items() if k != "video"} for r in records]
    except (ValueError, AttributeError):
        return None


def _text(data: bytes | None) -> str | None:
    """A list's bytes as `Path.read_text` gives them (UTF-8, universal newlines); None when there
    are none or they are not UTF-8."""
    try:
        return None if data is None else data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except ValueError:
        return None


def _sets_list(name: str, had: str | None, text: str) -> bool:
    """Whether the list `name` holding `had` is this set's `text` (captions.jsonl: but for the
    records' `video` identities, which a re-made video changes)."""
    if had is not None and name == "captions.jsonl":
        return _without_identities(had) == _without_identities(text)
    return had == text


def _write_lists(root: Path, texts: dict[str, str], overwrite: bool) -> None:
    """Write each list of `texts` whose file is missing or holds other text, meta.json last, each
    atomically; each list is read once. EditedListError naming each list a user edited (not this
    set's, `atomic.found_output`) and writing none, unless `overwrite`."""
    found = {n: found_output(root / n, lambda data, n=n: _sets_list(n, _text(data), texts[n])) for n in INDEX_FILES}
    edited = [str(root / n) for n in INDEX_FILES if found[n].edited]
    if edited and not overwrite:
        raise EditedListError(f"{', '.join(edited)}: not what this synthetic set's list would be (edited?); kept "
                              "as it is: pass --overwrite to replace it with the set's, or write the set elsewhere")
    for name in INDEX_FILES:  # meta.json is last: with it the set is complete
        if _text(found[name].data) != texts[name]:
            atomic_write_text(root / name, texts[name])


def _captions_text(root: Path, records: Sequence[dict], kept: dict[str, list]) -> str:
    """root/captions.jsonl's text: each record with its video's `video_identity` (after the other
    keys) under `video`, the field `tgmae caption` writes: readers compare it with the data set's
    files, so another synthetic set's captions (the same ids) are refused. A video this run did not
    make keeps the identity recorded of it (`kept`; `_on_disk` checked the file is that one), so
    no file synth did not write is stamped; one never recorded (a set written before identities
    were) gets its file's. Videos are written by now."""
    def identity(video_id: str) -> list | None:
        return kept[video_id] if video_id in kept else video_identity(str(root / "videos" / f"{video_id}.mp4"))

    return "".join(json.dumps({**r, "video": identity(r["video_id"])}) + "\n" for r in records)


def write_class_descriptions(root: Path) -> Path:
    """root/descriptions.json: the classes' vision-free descriptions (`captions.class_descriptions`)
    in the `tgmae describe-classes` format, for `eval.class_descriptions`."""
    path = Path(root) / "descriptions.json"
    atomic_write_text(path, _descriptions_text())
    return path


def _descriptions_text() -> str:
    meta = {"source": "tgmae.data.synthetic.captions.class_descriptions", "generator_version": GENERATOR_VERSION}
    return json.dumps({"_meta": meta, **class_descriptions()}, indent=1) + "\n"


def _meta_tail(records: Sequence[dict], is_val: np.ndarray, class_counts: dict[str, int]) -> dict:
    """meta.json's keys after the settings: codec, classes, mask definition, per-video records."""
    return {
        "codec": "h264 (libx264, yuv420p, no B-frames)",
        "classes": list(ACTIONS),
        "class_counts": class_counts,
        "mask": "visible pixels of the acting object in the rendered frames before compression",
        "videos": {
            r["video_id"]: {k: r[k] for k in ("label", "action", "background", "objects")}
            | {"split": "val" if v else "train"}
            for r, v in zip(records, is_val)
        },
    }


def generate_synthetic_dataset(
    out_dir: str | os.PathLike, num_videos: int = 300, frames: int = 48, size: int = 128, fps: int = 15,
    seed: int = 0, val_fraction: float = 0.2, gop: int = 12, workers: int = 1,
    progress: Callable[[int, int], None] | None = None, distractors: int = MAX_DISTRACTORS,
    distractor_speed: float = 1.0, background: str | None = None, static_camera: bool = False,
    overwrite: bool = False,
) -> SyntheticSetInfo:
    """Write `num_videos` captioned videos of `frames` frames at `size` x `size` into out_dir.

    workers: rendering / encoding processes (0 = all CPUs; spawned: callers need the
    `if __name__ == "__main__":` guard); output does not depend on it. progress(done, total) after
    each video (also those found on disk). distractors, distractor_speed, background, static_camera:
    difficulty knobs of `sample_scene` ("flat": one colour without grain; None draws a background
    per video). They draw the same random numbers, and the defaults write the original set byte for
    byte (meta.json records a knob only when set). A rerun into the same settings' set makes only
    its missing or damaged videos (module docstring). overwrite: replace lists a user edited.
    RunFolderError when out_dir is a run folder or lies inside one (`locks.refuse_inside_run`);
    SettingsError for a bad setting or a folder of another data set; EditedListError for an edited
    list without `overwrite`."""
    check_settings(num_videos, frames, size, fps, gop, workers, val_fraction, seed, distractors, distractor_speed,
                   background)
    start = time.perf_counter()
    root = Path(out_dir)
    refuse_inside_run(root, "out_dir")  # its videos and index would mix with a run's files
    _refuse_other_folder(root)
    settings = {"version": GENERATOR_VERSION, "num_videos": num_videos, "seed": seed, "frames": frames, "size": size,
                "fps": fps, "gop": gop, "val_fraction": val_fraction, "distractors": distractors,
                "distractor_speed": float(distractor_speed), "background": background,
                "static_camera": bool(static_camera)}
    labels = balanced_labels(num_videos, len(ACTIONS), np.random.default_rng([seed, 0x1AB]))
    is_val = stratified_split(labels, val_fraction, np.random.default_rng([seed, 0x5E1]))
    width = max(5, len(str(num_videos - 1)))
    tasks = [
        _Task(i, f"synth_{i:0{width}d}", int(labels[i]), seed, frames, size, fps, gop, str(root),
              distractors, float(distractor_speed), background, bool(static_camera))
        for i in range(num_videos)
    ]
    finished = _check_same_settings(root, settings)  # refuses other settings before anything is read or removed
    recorded = _recorded_identities(root)
    tasks = [replace(t, render=not _on_disk(root, t, recorded.get(t.video_id))) for t in tasks]
    _log_not_its_own(root, tasks, recorded)
    if not finished or (root / PENDING).exists() or any(t.render for t in tasks):
        for sub in ("videos", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / PENDING, json.dumps(_pending_meta(settings)) + "\n")  # a killed run's settings
        _clear_outputs(root, {f"{t.video_id}.{ext}" for t in tasks for ext in ("mp4", "npz")})
    # a finished set's records too: its lists are checked against them as a rendering rerun's are
    records = _make_videos(tasks, min(workers or os.cpu_count() or 1, num_videos), progress)
    class_counts = {c: int((labels == k).sum()) for k, c in enumerate(ACTIONS)}
    meta = _set_meta(settings, is_val, _meta_tail(records, is_val, class_counts))
    made = {t.video_id for t in tasks if t.render}
    texts = _index_texts(root, records, is_val, meta, {v: i for v, i in recorded.items() if v not in made})
    _write_lists(root, texts, overwrite)  # the old lists stood until now
    (root / PENDING).unlink(missing_ok=True)
    return _info(root, meta, time.perf_counter() - start)


def _on_disk(root: Path, task: _Task, recorded: list | None = None) -> bool:
    """Whether `task`'s video and mask are in `root` as this set's (readable, its size and length)
    and its video is the file this set wrote: its `video_identity` is `recorded` (captions.jsonl's
    record of it; None: a set written before identities were recorded, not compared). A video
    copied over it, or the set copied elsewhere (new inodes), is made again: it depends on (seed, i)
    only, and captions.jsonl then records only files this generator wrote."""
    video, mask = root / "videos" / f"{task.video_id}.mp4", root / "masks" / f"{task.video_id}.npz"
    return (video.is_file() and mask.is_file()  # a new set's: no reading of 100000 missing files
            and (recorded is None or video_identity(str(video)) == recorded)
            and mp4_ok(video, task.frames, task.size) and masks_ok(mask, task.frames, task.size))


def _recorded_identities(root: Path) -> dict[str, list]:
    """{video_id: `video_identity`} that root/captions.jsonl records of the files this generator
    wrote; empty when it is missing or unreadable (its records are then made anew, as a new set's)."""
    try:
        text = (root / "captions.jsonl").read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {r["video_id"]: r["video"] for r in records
                if isinstance(r, dict) and isinstance(r.get("video_id"), str) and r.get("video") is not None}
    except (OSError, ValueError):
        return {}


def _log_not_its_own(root: Path, tasks: Sequence[_Task], recorded: dict[str, list]) -> None:
    """One log line naming the videos on disk that are made again because their file is not the
    one captions.jsonl records (copied over, replaced, the set copied elsewhere, or made by a run
    killed or refused before it wrote the lists)."""
    other = [t.video_id for t in tasks if t.render and t.video_id in recorded
             and video_identity(str(root / "videos" / f"{t.video_id}.mp4")) not in (None, recorded[t.video_id])]
    if other:
        names = ", ".join(repr(v) for v in other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        log.warning("tgmae synth: %s: %d video(s) are not the files %s records (%s: replaced or copied since, or "
                    "made by a run that did not finish): made again", root / "videos", len(other),
                    root / "captions.jsonl", names)


def _set_meta(settings: dict, is_val: np.ndarray, tail: dict) -> dict:
    """meta.json's content: generator, settings, counts, then `tail` (`_meta_tail`)."""
    return {
        "generator": "tgmae.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": settings["seed"],
        "num_videos": settings["num_videos"],
        "num_train": int((~is_val).sum()),
        "num_val": int(is_val.sum()),
        "val_fraction": settings["val_fraction"],
        "height": settings["size"],
        "width": settings["size"],
        "fps": settings["fps"],
        "frames": settings["frames"],
        "gop": settings["gop"],
        "distractors": settings["distractors"],
        "distractor_speed": settings["distractor_speed"],
        # only when set, so the default set's meta.json stays byte-identical to earlier versions'
        **({"background": settings["background"]} if settings["background"] is not None else {}),
        **({"static_camera": True} if settings["static_camera"] else {}),
        **tail,
    }


def _pending_meta(settings: dict) -> dict:
    """`settings` under meta.json's keys (`_settings_of` reads both files alike)."""
    keys = {"size": "height"}
    return {keys.get(k, k): v for k, v in settings.items()}


