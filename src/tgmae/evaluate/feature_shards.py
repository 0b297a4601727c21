"""The on-disk store of a feature extraction (`tgmae.evaluate.extract`): its manifest, its shard
files, and reading them back.

Files in `out_dir`: `manifest.json` (settings, encoder digest, video ids; other settings are refused
by name, `manifest_differences`), `shard-SSSSS-of-TTTTT.safetensors` (`features` [R, D] or
[R, N, D] and per row `video`, `window`, `start_frame`, `end_frame`, `start_sec`, `end_sec`;
metadata: unreadable videos, `videos_fingerprint` of its files), and from `write_index`
`index.csv` + `unreadable.json`. Atomic writes; a rerun skips finished shards of unchanged files.
Shards are dealt round-robin to ranks. `out_dir` inside a run, a non-empty folder without a
manifest.json or with one that is not an extraction's is refused (`check_output_folder`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from tgmae.atomic import atomic_path, atomic_write_text, is_temp
from tgmae.errors import UserError
from tgmae.locks import check_kind, refuse_inside_run

MANIFEST_VERSION = 1
INDEX_KEYS = ("video", "window", "start_frame", "end_frame", "start_sec", "end_sec")


class ExtractError(ValueError, UserError):
    """An output folder that holds another extraction or other files, or shards that are missing."""


@dataclass
class VideoFeatures:
    """One video's windows: features [W, D] or [W, N, D]; frames and times [W] each (the rows a
    shard holds of it, `write_shard`; `tgmae.evaluate.extract.extract_video` computes them)."""

    features: torch.Tensor
    start_frame: np.ndarray
    end_frame: np.ndarray
    start_sec: np.ndarray
    end_sec: np.ndarray


Unit = tuple  # (video_id, path) or (video_id, path, start_frame, end_frame): one extraction unit


def unit_fields(unit: Sequence) -> tuple[str, str, Optional[int], Optional[int]]:
    """(video_id, path, start_frame, end_frame) of a unit; None = the file's start / end."""
    vid, path, *rng = unit
    start, end = (list(rng) + [None, None])[:2]
    return vid, path, start, end


def output_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's fields that change what a folder holds: batch_size (windows per forward pass) never
    does, stride only in mode "windows" (clip mode takes the evaluation clip), sampling only in mode
    "clip" and only when not "dense" (what every folder held before it was a setting, so theirs
    stay valid); a rerun that differs only in those reuses the folder."""
    out = {k: v for k, v in spec.items() if k != "batch_size"}
    if out.get("mode") == "clip":
        out.pop("stride", None)
    if out.get("mode") != "clip" or out.get("sampling", "dense") == "dense":
        out.pop("sampling", None)
    return out


def manifest(videos: Sequence[Unit], spec: Any, encoder_digest: str) -> dict[str, Any]:
    """What an output folder holds: settings (`output_settings` of `spec`, an
    `tgmae.evaluate.extract.ExtractSpec`), encoder digest, video ids (in order), shard count, and,
    when a unit has a frame range, every unit's [start, end] ("video_ranges"; null = the file's
    start / end; absent otherwise, as in folders made before ranges counted)."""
    n, units = len(videos), [unit_fields(v) for v in videos]
    m = {"version": MANIFEST_VERSION, "spec": output_settings(dataclasses.asdict(spec)), "encoder": encoder_digest,
         "video_ids": [u[0] for u in units], "num_shards": max(1, -(-n // spec.videos_per_shard))}
    if any(u[2:] != (None, None) for u in units):
        m["video_ranges"] = [list(u[2:]) for u in units]
    return m


def _normalized(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest as `manifest` writes it now: one written before `output_settings` also held
    batch_size (and stride in clip mode), which are no settings of the folder."""
    return {**m, "spec": output_settings(m["spec"])} if isinstance(m.get("spec"), dict) else m


def manifest_key(m: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_normalized(m), sort_keys=True).encode()).hexdigest()[:24]


def shard_path(out_dir: str | os.PathLike, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / f"shard-{shard:05d}-of-{num_shards:05d}.safetensors"


def manifest_differences(old: dict[str, Any], new: dict[str, Any], names: Optional[Mapping[str, str]] = None
                         ) -> list[str]:
    """`setting: old -> new` for each difference: spec fields, encoder digest, videos (count and first
    other id), version. names: the caller's names (spec field, "encoder", "videos" -> `--stride`)."""
    names = names or {}
    old, new = _normalized(old), _normalized(json.loads(json.dumps(new)))  # tuples as the JSON file holds them
    out = []
    o_spec, n_spec = old.get("spec") or {}, new["spec"]
    for k in list(n_spec) + [k for k in o_spec if k not in n_spec]:
        if o_spec.get(k) != n_spec.get(k):
            out.append(f"{names.get(k, k)}: {o_spec.get(k)!r} -> {n_spec.get(k)!r}")
    if old.get("encoder") != new["encoder"]:
        out.append(f"{names.get('encoder', 'encoder weights')}: {str(old.get('encoder'))[:12]} -> {new['encoder'][:12]}")
    o_ids, n_ids = list(old.get("video_ids") or []), new["video_ids"]
    if o_ids != n_ids:
        first = next((i for i, (a, b) in enumerate(zip(o_ids, n_ids)) if a != b), None)
        other = f" (first other: {o_ids[first]!r} -> {n_ids[first]!r})" if first is not None else ""
        out.append(f"{names.get('videos', 'videos')}: {len(o_ids)} -> {len(n_ids)}{other}")
    o_r = old.get("video_ranges") or [[None, None]] * len(o_ids)  # absent: every unit a whole file
    n_r = new.get("video_ranges") or [[None, None]] * len(n_ids)
    if o_ids == n_ids and o_r != n_r:
        i = next(i for i, (a, b) in enumerate(zip(o_r, n_r)) if a != b)
        out.append(f"{names.get('videos', 'videos')}: frame range of {n_ids[i]!r}: {o_r[i]} -> {n_r[i]}")
    if old.get("version") != new["version"]:
        out.append(f"manifest version: {old.get('version')!r} -> {new['version']!r}")
    if not out and old != new:  # a field only a damaged or foreign manifest differs in
        out += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return out


MANIFEST_KEYS = ("version", "spec", "encoder", "video_ids", "num_shards")  # what `manifest` writes


def check_output_folder(out_dir: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse an output folder whose files are not an extraction's, each naming it: LockError for a
    file at `out_dir` (`locks.check_kind`), RunFolderError for a run folder or a folder inside one
    (`locks.refuse_inside_run`), ExtractError for a non-empty folder without manifest.json, naming
    up to 5 of its files (a user's files could be replaced; writers' temp files aside)."""
    check_kind(out_dir, what, folder=True)
    refuse_inside_run(out_dir, what)
    out = Path(out_dir)
    held = sorted(p.name for p in out.iterdir() if not is_temp(p.name)) if out.is_dir() else []
    if held and not (out / "manifest.json").is_file():
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ExtractError(f"{out} ({what}): not empty ({shown}) and holds no manifest.json, so it is not an "
                           f"extraction; its files could be replaced; choose another {what}")


def read_manifest(path: Path, what: str) -> dict[str, Any]:
    """The extraction manifest at `path`; ExtractError naming it when it is not one (unreadable
    JSON, or without `MANIFEST_KEYS`: a user's own manifest.json)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or any(k not in old for k in MANIFEST_KEYS):
        raise ExtractError(f"{path}: not an extraction's manifest (no {', '.join(MANIFEST_KEYS)}), so its folder "
                           f"is not an extraction; choose another {what} or remove that file")
    return old


def claim_folder(out_dir: Path, m: dict[str, Any], names: Optional[Mapping[str, str]] = None,
                  what: str = "output folder") -> None:
    """Write the manifest, or ExtractError naming each setting the folder's own differs in (or
    the folder's other files, `check_output_folder`; a manifest that is not one, `read_manifest`)."""
    path = out_dir / "manifest.json"
    check_output_folder(out_dir, what)
    if path.is_file():
        old = read_manifest(path, what)
        diffs = manifest_differences(old, m, names)
        if diffs:
            raise ExtractError(f"{out_dir} holds another extraction, made with other settings (that one -> this "
                               f"run): {'; '.join(diffs)}; choose another {what} or remove that folder")
        return
    atomic_write_text(path, json.dumps(m, indent=2, sort_keys=True))


def shard_done(path: Path, key: str, videos: Optional[str] = None) -> bool:
    """A finished shard of this extraction (written whole, by the same manifest) and, given
    `videos` (the fingerprint of its videos' files), of these very files."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged file is redone
        return False
    return meta.get("manifest") == key and (videos is None or meta.get("videos") == videos)


def shard_unreadable(path: Path) -> list[dict]:
    """The unreadable videos a finished shard lists in its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["unreadable"])


def listed_before(path: Path, key: str) -> set[tuple[str, str]]:
    """(video id, path) of each unreadable video a shard of this extraction listed before it is
    redone (its files changed): a rerun reports as new only the others."""
    return {(u["video_id"], u["path"]) for u in shard_unreadable(path)} if shard_done(path, key) else set()


def write_shard(path: Path, key: str, rows: list[tuple[int, VideoFeatures]], unreadable: list[dict],
                 videos: str = "", feature_dims: Sequence[int] = (0,)) -> None:
    """One shard: features and index tensors of its videos' windows, unreadable ones and the
    fingerprint of its videos' files (`videos`) in metadata (keys sorted: the same shard is the
    same bytes). feature_dims: a window's feature shape ([D] or [N, D]), for a shard without rows."""
    from safetensors.torch import save_file

    feats = [vf.features for _, vf in rows]
    cols: dict[str, list] = {k: [] for k in INDEX_KEYS}
    for v, vf in rows:
        w = len(vf.start_frame)
        cols["video"].append(np.full(w, v, np.int64))
        cols["window"].append(np.arange(w, dtype=np.int64))
        for k in ("start_frame", "end_frame", "start_sec", "end_sec"):
            cols[k].append(np.asarray(getattr(vf, k)))
    tensors = {"features": torch.cat(feats).contiguous() if feats else torch.zeros(0, *feature_dims)}
    for k, parts in cols.items():
        dtype = np.float64 if k.endswith("_sec") else np.int64
        tensors[k] = torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
    with atomic_path(path, own_folder=True) as tmp:  # save_file makes a temp of its own
        save_file(tensors, str(tmp), metadata={"manifest": key, "unreadable": json.dumps(unreadable),
                                                 "videos": videos})
        _sort_header(Path(tmp))


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys (and the metadata's) sorted: the
    library writes the metadata in a per-process hash order, so a re-written shard differed in bytes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header = {k: (dict(sorted(v.items())) if k == "__metadata__" else v) for k, v in sorted(header.items())}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the same entries in another order: the same length, padded as the library pads
            f.seek(8)
            f.write(text.ljust(size))
            return
        data = f.read()
    text = text.ljust(-(-len(text) // 8) * 8)  # the data stays 8-byte aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _finished_shards(out: Path) -> tuple[dict[str, Any], list[Path], list[dict]]:
    """(manifest, shard paths, their unreadable videos) of a finished extraction; ExtractError
    naming a shard that is missing or belongs to another extraction."""
    m = json.loads((out / "manifest.json").read_text())
    key, shards, unreadable = manifest_key(m), [], []
    for s in range(m["num_shards"]):
        path = shard_path(out, s, m["num_shards"])
        if not shard_done(path, key):
            raise ExtractError(f"{path}: missing or from another extraction; run the extraction again to finish it")
        unreadable.extend(shard_unreadable(path))
        shards.append(path)
    return m, shards, unreadable


def read_shards(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Every shard of a finished extraction, concatenated: {features [R, ...], the index
    columns [R] each, video_ids (the manifest's list), unreadable [list of dict]}.
    ExtractError when a shard is missing or belongs to another extraction."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / "manifest.json").is_file():
        raise ExtractError(f"{out}: no manifest.json (not an extraction folder)")
    m, shards, unreadable = _finished_shards(out)
    parts = [load_file(str(path)) for path in shards]
    out_t = {k: torch.cat([p[k] for p in parts]) for k in INDEX_KEYS}
    feats = [p["features"] for p in parts if p["features"].shape[0]]
    out_t["features"] = torch.cat(feats) if feats else torch.zeros(0, 0)
    return {**out_t, "video_ids": m["video_ids"], "unreadable": unreadable}


def check_extracted(out_dir: str | os.PathLike, names: Optional[Mapping[str, str]] = None,
                    made_folder: bool = False, tubelet: int = 1) -> None:
    """ExtractError when a finished extraction holds no window (every video too short, naming the
    window, frame step and longest video, and the longest window that fits, a multiple of `tubelet`
    (the encoder's frames per token: any other window is refused); or unreadable), after removing
    its manifest and shards (and the folder when made_folder). names: the caller's names of the
    spec's fields (`--window`)."""
    from safetensors import safe_open

    names = names or {}
    out = Path(out_dir)
    m, shards, unreadable = _finished_shards(out)
    rows = 0
    for path in shards:
        with safe_open(str(path), "pt") as f:
            rows += f.get_slice("features").get_shape()[0]
    if rows or not m["video_ids"]:
        return
    for path in shards + [out / "manifest.json"]:
        path.unlink(missing_ok=True)
    if made_folder:
        try:
            out.rmdir()
        except OSError:  # something else lies there
            pass
    spec, n = m["spec"], len(m["video_ids"])
    short = [u for u in unreadable if u.get("kind") == "too_short"]
    if short:
        win, step_name, step = names.get("window", "window"), names.get("frame_step", "frame_step"), spec["frame_step"]
        span = (spec["window"] - 1) * step + 1
        longest = max(u.get("num_frames", 0) for u in short)
        fits = (longest - 1) // step + 1 if longest else 0  # frames of the longest window that fits
        fits -= fits % tubelet  # a window the encoder takes
        stepped = f" x {step_name}={step}" if step > 1 else ""
        also = f" ({n - len(short)} others unreadable)" if len(short) < n else ""
        whole = f" (a multiple of model.tubelet_size={tubelet})" if tubelet > 1 else ""
        hint = (f"Lower {win} to {fits} or less{whole}" + (f" (or {step_name})" if step > 1 else "") if fits else
                f"no window of model.tubelet_size={tubelet} frames fits" + (f"; lower {step_name}" if step > 1 else ""))
        raise ExtractError(f"{win}={spec['window']}{stepped}: a window spans {span} frames and no video holds one: "
                           f"the longest has {longest} frames{also}; nothing extracted. {hint}")
    first = "; ".join(u["reason"] for u in unreadable[:2]) + (" ..." if len(unreadable) > 2 else "")
    raise ExtractError(f"nothing extracted: none of the {n} videos can be read ({first}); `tgmae data check` "
                       "lists them")


def write_index(out_dir: str | os.PathLike) -> Path:
    """`index.csv` (video_id, row, window, start_frame, end_frame, start_sec, end_sec; row = the
    window's row in `read_shards`' features) and `unreadable.json` of a finished extraction."""
    out = Path(out_dir)
    data = read_shards(out)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "row", "window", "start_frame", "end_frame", "start_sec", "end_sec"])
    cols = [data[k].tolist() for k in INDEX_KEYS]
    for row, (v, win, f0, f1, t0, t1) in enumerate(zip(*cols)):
        w.writerow([data["video_ids"][v], row, win, f0, f1, repr(t0), repr(t1)])
    atomic_write_text(out / "unreadable.json", json.dumps(data["unreadable"], indent=2))
    atomic_write_text(out / "index.csv", buf.getvalue())
    return out / "index.csv"

