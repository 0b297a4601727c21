"""On-disk similarity-map cache written by `tgmae masks`, read by the cached TGM generator.

    manifest.json        what the maps were computed with (CLIP, mode, captions, geometry)
    maps/<name>.npz      per video, named by `entry_file` (`data.fileid.id_file_name`): sim
                         float16 [C, F, gh, gw] (one map per caption, per cached frame, over
                         the full source frame), frames int32 [F] (source frame
                         numbers), text float16 [C, D] (the captions' CLIP text embeddings),
                         captions str [C] (their texts, in the captions file's order)
    parts/rank<r>-of-<w>.jsonl  one line per video handled by that rank (resume, sharding), with
                         its run's number (`run`: `next_run`), by which the lines are read in order
    index.json           the merged parts: {"videos": {id: file}, "skipped": {id: reason}}

One map per caption, so training can mask with the caption drawn for the sample, or with their
mean (the mean of the per-caption cosine maps has the top-k of the mean caption's map).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from tgmae.atomic import atomic_path, atomic_write_text, create_exclusive_text, is_temp, remove_stale_temps
from tgmae.errors import UserError

CACHE_FORMAT = "tgmae-similarity-cache"
CACHE_VERSION = 1


class CacheMismatchError(ValueError, UserError):
    """The cache was built with another CLIP, mode, caption source or geometry."""


class DamagedCacheEntry(ValueError, UserError):
    """A video's map file cannot be read (truncated, overwritten); the message names it and the rerun."""


class MissingCacheEntry(LookupError, UserError):
    """A video has no cached similarity map (with the reason recorded when the cache was built)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class CacheManifest:
    """What a cache was computed with; every field except format/version must match to reuse it."""

    clip_model: str  # name or absolute path of the CLIP that embedded patches and captions
    clip_fingerprint: str  # hash of its projection weights (the same weights under any path)
    mode: str  # faithful | dense
    caption_source: str  # "source=...,model=..." pairs found in the captions JSONL
    captions_sha256: str  # content hash of the captions file at build time (informational: a rerun on
    # edited captions redoes those videos and keeps it; the caption check is per video)
    frame_stride: int  # a map every `frame_stride` source frames
    image_size: int  # the video model's input side the patch grid refers to
    patch_size: int  # the video model's patch side
    map_scale: int  # map cells per patch along each side (dense mode may be finer)
    dense_size: Optional[int]  # dense mode: CLIP input short side
    embed_dim: int  # CLIP joint-space width (text embeddings must match)
    format: str = CACHE_FORMAT
    version: int = CACHE_VERSION

    @classmethod
    def from_json(cls, d: dict) -> "CacheManifest":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_CHECKED = (
    "clip_fingerprint", "mode", "caption_source", "frame_stride",
    "image_size", "patch_size", "map_scale", "dense_size",
)


def manifest_differences(have: CacheManifest, want: CacheManifest) -> list[str]:
    """Human-readable 'key: cache has X, requested Y' lines for every identity field that differs."""
    out = []
    for key in _CHECKED:
        a, b = getattr(have, key), getattr(want, key)
        if a != b:
            if key == "clip_fingerprint":
                out.append(f"CLIP weights: cache built with {have.clip_model!r} (fingerprint {have.clip_fingerprint}), "
                           f"requested {want.clip_model!r} (fingerprint {want.clip_fingerprint})")
            else:
                out.append(f"{key}: cache has {a!r}, requested {b!r}")
    return out


def read_manifest(root: str | Path) -> CacheManifest:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a similarity cache (no manifest.json); build one with `tgmae masks`"
        )
    data = json.loads(path.read_text())
    if data.get("format") != CACHE_FORMAT:
        raise CacheMismatchError(f"{path}: not a {CACHE_FORMAT} manifest")
    if int(data.get("version", 0)) != CACHE_VERSION:
        raise CacheMismatchError(
            f"{path}: cache version {data.get('version')} but this tgmae reads version {CACHE_VERSION}; rebuild it"
        )
    return CacheManifest.from_json(data)


def check_cache_folder(root: str | Path, what: str = "--out") -> None:
    """CacheMismatchError naming `root` and `what` when it is a non-empty folder without
    manifest.json (writers' temps aside): not a similarity cache but a user's folder, whose
    index.json, maps/ or parts/ a build, a merge or --rebuild would replace."""
    root = Path(root)
    if root.is_dir() and not (root / "manifest.json").is_file() and any(not is_temp(p.name) for p in root.iterdir()):
        raise CacheMismatchError(f"{root} ({what}): not empty and holds no manifest.json, so it is not a similarity "
                                 f"cache; its files would be replaced or mixed with; choose another {what}")


def clear_cache(root: str | Path, what: str = "--out") -> None:
    """Delete a similarity cache's files (manifest, index, part logs, maps) so it is built anew.
    A folder that holds files but no manifest.json is not a cache and is refused, never emptied
    (`check_cache_folder`, naming `what`: the setting that chose `root`)."""
    root = Path(root)
    if not root.is_dir():
        return
    check_cache_folder(root, what)
    for name in ("maps", "parts"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("index.json", "manifest.json"):
        (root / name).unlink(missing_ok=True)


MASKS_WAY_OUT = "rerun with --rebuild to replace it, or give --out another folder"  # `tgmae masks`


def write_manifest_or_check(root: str | Path, manifest: CacheManifest, way_out: str = MASKS_WAY_OUT) -> None:
    """New cache: write the manifest. Existing cache: refuse when it was built differently
    (CacheMismatchError listing each differing field, then `way_out`: what the command that chose
    `root` offers, e.g. `tgmae masks` --rebuild / --out, `eval-masks` --rebuild / --cache)."""
    root = Path(root)
    path = root / "manifest.json"
    # created exclusively: of two builds started at once into one folder (a sharded run's ranks
    # lock only their own parts) the first manifest stands and the other build is checked against it
    if not path.is_file() and create_exclusive_text(path, json.dumps(asdict(manifest), indent=2) + "\n"):
        return
    diffs = manifest_differences(read_manifest(root), manifest)
    if diffs:
        raise CacheMismatchError(
            f"{root} holds a similarity cache built differently: " + "; ".join(diffs) + f"; {way_out}"
        )


def remove_stale_cache_temps(root: str | Path) -> int:
    """Remove the temp files a killed writer left in a similarity cache: in its top folder (where
    index.json / manifest.json are written) and in maps/. Returns the count removed."""
    return remove_stale_temps(root) + remove_stale_temps(Path(root) / "maps")


def entry_file(video_id: str) -> str:
    """File of a video's maps, relative to the cache: `maps/{id_file_name(video_id)}.npz` (video ids
    may contain '/' and other path characters, and be longer than a file name may be)."""
    from tgmae.data.fileid import id_file_name

    return f"maps/{id_file_name(video_id)}.npz"


def write_entry(
    root: str | Path, video_id: str, sim: torch.Tensor, frames: torch.Tensor, text: torch.Tensor,
    captions: list[str],
) -> str:
    """Write one video's maps atomically (a crash never leaves a half file). Returns its file."""
    rel = entry_file(video_id)
    with atomic_path(Path(root) / rel) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            sim=sim.detach().cpu().to(torch.float16).numpy(),
            frames=frames.detach().cpu().to(torch.int32).numpy(),
            text=text.detach().cpu().to(torch.float16).numpy(),
            captions=np.asarray(list(captions), dtype=np.str_),
        )
    return rel


ENTRY_KEYS = ("sim", "frames", "text", "captions")


def read_entry_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one map file (ENTRY_KEYS); numpy's error when it cannot be read (BadZipFile,
    ValueError, EOFError, KeyError, ... by damage)."""
    with np.load(path) as z:
        return {k: z[k] for k in ENTRY_KEYS}


def entry_problem(path: str | Path, captions: Sequence[str]) -> Optional[str]:
    """What is wrong with a map file as `write_entry` writes it for a video's `captions`, or None
    when sound: it must load, hold ENTRY_KEYS, its shapes agree (sim [C, F, gh, gw], frames [F],
    text [C, D], captions [C]), its captions be these (a map file copied from another video is
    not this video's) and its maps finite. Reads the one file (a few small arrays)."""
    try:
        z = read_entry_arrays(path)
    except Exception as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    sim, frames, text, caps = z["sim"], z["frames"], z["text"], z["captions"]
    if sim.ndim != 4 or frames.shape != sim.shape[1:2] or text.ndim != 2 or \
            not sim.shape[0] == text.shape[0] == caps.shape[0] == len(captions):
        return (f"shapes sim {list(sim.shape)}, frames {list(frames.shape)}, text {list(text.shape)}, captions "
                f"{list(caps.shape)} do not fit {len(captions)} caption(s)")
    if [str(c) for c in caps] != list(captions):
        return "its maps were made from other captions (another video's file?)"
    if not (np.isfinite(sim).all() and np.isfinite(text).all()):
        return "its maps or text embeddings are not finite (NaN or inf)"
    return None


@dataclass
class CacheEntry:
    """One video's cached maps: sim [C, F, gh, gw] float32, frames [F] int64, text [C, D] float32
    (normalized), captions: the caption text of each map."""

    sim: torch.Tensor
    frames: torch.Tensor
    text: torch.Tensor
    captions: list[str]

    @functools.cached_property
    def mean_sim(self) -> np.ndarray:
        """[F, gh, gw] mean over captions."""
        return self.sim.numpy().mean(axis=0)


def captions_key(captions: Sequence[str]) -> str:
    """Short hash of a video's caption list, kept in its part record: a resume recomputes a video
    whose captions changed, and a run's set-up compares its own captions with it."""
    return hashlib.sha1(json.dumps(list(captions)).encode()).hexdigest()[:12]


def part_file(root: str | Path, rank: int, world: int) -> Path:
    return Path(root) / "parts" / f"rank{rank}-of-{world}.jsonl"


def part_records(root: str | Path) -> Iterator[dict]:
    """The lines of every rank's part file in the order of their runs (`_run_order`): {"video_id",
    "file", "captions", "video" (`tgmae.data.fileid.video_identity` of the file the maps were made
    from), "content" (its `content_key`, a file's: `changed_file`), "path" (its absolute path:
    `precompute.refuse_other_data_set`), "run"} or {"video_id",
    "reason", "run"}. A run at another world size than an earlier one writes other part files: by
    name, the earlier run's lines would come last and win. Lines of one
    run are of different videos (rank r of W takes videos r, r+W, ...): their order is file order."""
    records = []
    for path in sorted((Path(root) / "parts").glob("rank*-of-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # blank, or cut by a crash: that video is simply redone
                continue
    records.sort(key=_run_order)  # stable: file order within a run
    yield from records


def _run_order(rec: object) -> tuple[int, int]:
    """Sort key of a part line: numbered runs (`run`) in number order come after the lines written
    before runs were numbered, which are older runs: those stamped with a wall-clock `t` (ns) in
    its order, after those with neither."""
    run = rec.get("run") if isinstance(rec, dict) else None
    if isinstance(run, int):
        return (1, run)
    t = rec.get("t") if isinstance(rec, dict) else None
    return (0, t if isinstance(t, int) else -1)


def next_run(records: Iterable[dict]) -> int:
    """The number of a run about to write part lines: 1 + the largest run number among `records`
    (`part_records`, read before any of its ranks writes), 1 when none has one. Clock-free: a
    clock set back between two runs cannot put the later one first."""
    return 1 + max((r["run"] for r in records if isinstance(r, dict) and isinstance(r.get("run"), int)), default=0)


def read_parts(root: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """All part files -> (videos {id: file}, skipped {id: reason}); later lines win: a video skipped
    after its maps were made (its range now past its end, its file now unreadable) is skipped, not
    served the maps of before."""
    videos: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for rec in part_records(root):
        vid = rec["video_id"]
        if rec.get("file"):
            videos[vid] = rec["file"]
            skipped.pop(vid, None)
        else:
            skipped[vid] = rec.get("reason", "skipped")
            videos.pop(vid, None)
    return videos, skipped


def merge_parts(root: str | Path) -> dict:
    """Merge every rank's part file into index.json; returns the index."""
    videos, skipped = read_parts(root)
    index = {"videos": dict(sorted(videos.items())), "skipped": dict(sorted(skipped.items()))}
    atomic_write_text(Path(root) / "index.json", json.dumps(index, indent=1) + "\n")
    return index


class SimilarityCache:
    """Read side of a cache: manifest, index and an LRU of loaded entries (per process/worker).

    expect_clip: when given, the manifest's CLIP (name or path) must be this one.
    expect_caption_source: when given, the manifest's caption source must be this one.
    """

    def __init__(
        self, root: str | Path, expect_clip: Optional[str] = None,
        expect_caption_source: Optional[str] = None, max_entries: int = 512,
    ):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        m = self.manifest
        if expect_clip:
            _refuse_other_clip(self.root, m, expect_clip)
        if expect_caption_source is not None and expect_caption_source != m.caption_source:
            raise CacheMismatchError(
                f"similarity cache {self.root} was built from captions {m.caption_source!r}, but "
                f"this run's captions are {expect_caption_source!r}; rebuild the cache with "
                f"`tgmae masks --captions CAPTIONS --out {self.root} --rebuild` on this run's captions file"
            )
        index_path = self.root / "index.json"
        if index_path.is_file():
            index = json.loads(index_path.read_text())
            self.videos, self.skipped = index["videos"], index["skipped"]
        else:  # not merged yet (e.g. a rank still running): read the parts directly
            self.videos, self.skipped = read_parts(self.root)
        self.max_entries = max_entries
        self._lru: OrderedDict[str, CacheEntry] = OrderedDict()

    def check_videos(self, video_ids: list[str], captions: Optional[dict[str, list[str]]] = None,
                     paths: Optional[dict[str, str]] = None, captions_file: str = "") -> None:
        """At set-up: maps exist for every id (or a reason they were skipped); (given `paths`
        {id: video path}) each map was made from the file at that path now or a copy of it
        (`_check_identities`: a video replaced since is refused, a data set copied elsewhere keeps its
        maps; entries made before identities were recorded are not checked); and (given the run's
        captions {id: [text]}, read from `captions_file`) each video's maps were made from its
        captions there (`_check_captions`).
        Raises MissingCacheEntry / CacheMismatchError naming the cache and the videos."""
        absent = [v for v in video_ids if v not in self.videos and v not in self.skipped]
        if absent:
            raise MissingCacheEntry(
                f"similarity cache {self.root} has no maps for {len(absent)} of this run's {len(video_ids)} videos "
                f"({_some(absent, 5)}; it holds {len(self.videos) + len(self.skipped)}): `tgmae masks` did not "
                f"finish (rerun it with --out {self.root}: it resumes) or ran on other annotations or captions")
        files = [(v, self.root / self.videos[v]) for v in video_ids if v in self.videos]
        lost = [str(f) for _, f in files if not f.is_file()]
        if lost:
            raise MissingCacheEntry(
                f"similarity cache {self.root}: {len(lost)} map files listed in its index are missing ({lost[0]}"
                f"{' ...' if len(lost) > 1 else ''}); rerun `tgmae masks --out {self.root} --rebuild`")
        if paths:
            self._check_identities([v for v in video_ids if v in self.videos], paths)
        if captions is not None:
            self._check_captions(files, captions, captions_file, len(video_ids))

    def _check_captions(self, files: list[tuple[str, Path]], captions: dict[str, list[str]], captions_file: str,
                        total: int) -> None:
        """Each video's maps were made from its `captions` (stripped, in order), per video and never
        by the manifest's whole-file hash: `tgmae masks` rerun on edited captions redoes those videos
        and keeps the manifest, so a file hashing to the manifest's value may differ from the maps.
        Compares the caption key each part record keeps (no map file read); a video recorded without
        one (an index without part files) has its map file's captions read."""
        keys = {r["video_id"]: r.get("captions") for r in part_records(self.root) if r.get("file")}
        changed = []
        for vid, path in files:
            want = [c.strip() for c in captions.get(vid, [])]
            key = keys.get(vid)
            made = key == captions_key(want) if key else [str(c) for c in self._read(path)["captions"]] == want
            if not made:
                changed.append(vid)
        if changed:
            where = f"{captions_file} holds" if captions_file else "this run's captions are"
            raise CacheMismatchError(
                f"similarity cache {self.root}: the maps of {len(changed)} of this run's {total} videos "
                f"({_some(changed)}) were made from other captions than {where} (the captions file was edited "
                f"since, or `tgmae masks` last ran on another one); rerun `tgmae masks` with --captions "
                f"{captions_file or 'CAPTIONS'} --out {self.root} (it redoes those videos)")

    def check_geometry(self, image_size: Optional[int], patch_size: Optional[int]) -> None:
        """A run's data.image_size / model.patch_size (None: not checked) are the ones the maps were
        made for (`tgmae masks --image-size / --patch-size`): maps of another token grid would be
        resampled to this run's without a word. CacheMismatchError naming both settings."""
        m = self.manifest
        diffs = [f"{key}={want} but the cache was built for {flag} {have}"
                 for key, flag, have, want in (("data.image_size", "--image-size", m.image_size, image_size),
                                               ("model.patch_size", "--patch-size", m.patch_size, patch_size))
                 if want is not None and want != have]
        if diffs:
            raise CacheMismatchError(
                f"masking.cache_dir={self.root}: this run's " + "; ".join(diffs) + " (its maps are of another "
                f"token grid); build a cache for this run with `tgmae masks --image-size {image_size or m.image_size} "
                f"--patch-size {patch_size or m.patch_size}` into another --out, and set masking.cache_dir to it")

    def _check_identities(self, video_ids: list[str], paths: dict[str, str]) -> None:
        """Each video's maps were made from its file at `paths` now or a copy of it (`changed_file`:
        a data set copied elsewhere keeps its maps, re-trial 33B M1); else CacheMismatchError naming
        the count, a few ids and the first one's paths then and now and what changed. Stats every
        file once; reads a content key only where a stat changed (remembered per machine)."""
        from tgmae.captions.store import ids_text
        from tgmae.data.fileid import video_identities

        made_from = {r["video_id"]: r for r in part_records(self.root) if r.get("file")}
        checked = [v for v in video_ids if made_from.get(v, {}).get("video") is not None and v in paths]
        on_disk = video_identities(paths[v] for v in checked)  # a frame folder's segments share one scan
        changed = [(v, how) for v in checked
                   if (how := changed_file(made_from[v], on_disk[paths[v]], paths[v])) is not None]
        if changed:
            vid, how = changed[0]
            raise CacheMismatchError(
                f"similarity cache {self.root}: {len(changed)} video(s) are not the files their maps were made from "
                f"({ids_text([c[0] for c in changed])}; e.g. {vid!r}: {made_where(made_from[vid], paths[vid])}, "
                f"{how}): rerun `tgmae masks` on this data set with --out {self.root} (it redoes them, but refuses "
                "to replace maps of another path's files of other contents: another data set with these ids, which "
                "gets its own --out and masking.cache_dir)")

    def __len__(self) -> int:
        return len(self.videos)

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        """The arrays of one map file (sim, frames, text, captions); DamagedCacheEntry naming it when
        it cannot be read (numpy raises BadZipFile, ValueError, EOFError, KeyError, ... by damage)."""
        try:
            return read_entry_arrays(path)
        except Exception as e:
            raise DamagedCacheEntry(
                f"similarity cache {self.root}: the map file {path} is damaged ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); delete it and rerun `tgmae masks --out {self.root}` with the "
                "same arguments (it recomputes missing maps), or rebuild with --rebuild") from None

    def entry(self, video_id: str) -> CacheEntry:
        hit = self._lru.get(video_id)
        if hit is not None:
            self._lru.move_to_end(video_id)
            return hit
        rel = self.videos.get(video_id)
        if rel is None:
            why = self.skipped.get(video_id)
            reason = f": {why}" if why else " (it was not in the annotations when `tgmae masks` ran)"
            raise MissingCacheEntry(f"no cached similarity maps for video {video_id!r} in {self.root}{reason}")
        path = self.root / rel
        if not path.is_file():  # a map file, not the video: never reported as an unreadable video
            raise MissingCacheEntry(f"similarity cache {self.root}: the maps of video {video_id!r} ({path}) are "
                                    f"missing; rerun `tgmae masks --out {self.root} --rebuild`")
        z = self._read(path)
        entry = CacheEntry(
            torch.from_numpy(z["sim"].astype(np.float32)),
            torch.from_numpy(z["frames"].astype(np.int64)),
            torch.nn.functional.normalize(torch.from_numpy(z["text"].astype(np.float32)), dim=-1),
            [str(c) for c in z["captions"]],
        )
        self._lru[video_id] = entry
        if len(self._lru) > self.max_entries:
            self._lru.popitem(last=False)
        return entry


def changed_file(rec: dict, now: Any, path: str) -> Optional[str]:
    """How the video at `path` (`now`: its `data.fileid.video_identity`) is not the file part record
    `rec`'s maps were made from (its `video` identity and `content` key then), or None when it is that
    file or a copy of it. The caption store's rule, `captions.store.other_file` (another size, the
    file rewritten in place, or its contents differ: a data set copied elsewhere keeps its maps as it
    keeps its captions; re-trial 33B M1), its content key read only where the stat changed
    (`data.fileid.content_key`, remembered per file and stat). A file's record without `content`
    (maps of an older tgmae) cannot tell a copy from another file of its size moved onto the path:
    any change of its identity counts. None also for a record without `video` or no file now
    (`now` None: not compared here). The one check of maps against a file (training's set-up,
    `masks`' resume)."""
    from tgmae.captions.store import other_file
    from tgmae.data.fileid import content_key, copy_key, current_identity, rewritten_in_place

    made, content = current_identity(rec.get("video")), rec.get("content")
    if made is None or now is None or made == now:
        return None
    folder = isinstance(now, list) and now[:1] == ["frames"]
    if not other_file(made, now, content, lambda: content_key(path)) and (content is not None or folder):
        return None
    if copy_key(made) != copy_key(now):
        return "other frames" if folder else "of another size"
    if rewritten_in_place(made, now):
        return "rewritten in place"
    if content is None:
        return "its stat changed, and maps of an older tgmae record no content key to tell a copy"
    return "another file of its size (its contents differ)"


def made_where(rec: dict, path: str) -> str:
    """`path` (absolute) where part record `rec`'s maps were made from it, else "made from A, now B"
    (its recorded `path`; a record of an older tgmae without one: `path` alone)."""
    import os

    now = os.path.abspath(path)
    was = rec.get("path")
    return now if was in (None, now) else f"made from {was}, now {now}"


def _some(ids: list[str], n: int = 3) -> str:
    """The first `n` ids, quoted, with " ..." when there are more (refusals name a few, not all)."""
    return ", ".join(repr(v) for v in ids[:n]) + (" ..." if len(ids) > n else "")


def _refuse_other_clip(root: Path, manifest: CacheManifest, clip: str) -> None:
    """CacheMismatchError naming the cache at `root` and the rebuild when it was built with
    another CLIP than `clip` (name or path), or with other files at the same name (a CLIP retrained
    into the same folder, a tokenizer edited). One CLIP is `tgmae.hub.same_model`: one folder
    however it is spelled, or the same files (fingerprint) under another name (re-trial 29B M1)."""
    from tgmae.hub import same_model, weights_fingerprint

    now = weights_fingerprint(clip)
    rebuild = f"rebuild it with `tgmae masks --clip {clip} --out {root} --rebuild`"
    if not same_model(clip, manifest.clip_model, now, manifest.clip_fingerprint):
        raise CacheMismatchError(f"similarity cache {root} was built with CLIP {manifest.clip_model!r}, but this run "
                                 f"uses {clip!r}; {rebuild}")
    if now is not None and now != manifest.clip_fingerprint:
        raise CacheMismatchError(
            f"similarity cache {root} was built with other weights of CLIP {clip!r}, or other config / tokenizer "
            f"files beside them (fingerprint {manifest.clip_fingerprint}, now {now}); {rebuild}")
