"""`tgmae data prepare`: resize a data set's videos to a short side and re-encode them to H.264 MP4
(decoding starves the GPUs, docs/benchmarks.md; VP9 WebM exports no motion vectors for MGM).

`root/REL.ext` -> `out/REL.mp4`: every source frame (the frame count is kept), upright, short side
`short_side` (never enlarged; sides even for 4:2:0), H.264 at `crf`, each frame at its source time
stamp (i / fps without usable ones); H.264 MP4 that needs no resize is copied byte for byte; the
same source and settings give the same bytes on every run (one machine and PyAV build).
Annotation files are copied under `out` with the same labels, ids and order and `.mp4` paths; every
list carried along (its split siblings, FORMAT_FILES) has its videos prepared too, so no path
dangles; class lists and label maps are copied as they are; the folder's other files are not
carried (those naming videos are named in one warning).
Resume: atomic outputs, an existing one is skipped unless its source changed since
(`out/prepare.json` `sources`: each output's source `tgmae.data.fileid.video_identity`; a source
replaced in place is prepared again) or it is not as prepare finished it (`outputs`: each output's
[size, mtime ns], recorded as it is renamed into place, in `out/.prepare.done` until the run's end;
an output without a record must read as its source's frame count): a damaged one (truncated,
emptied, replaced) is prepared again, one log line each; `out/prepare.json` holds the settings and other settings
are refused by name, and the source root and lists carried (`source_root`, `lists`: sha256 each), another root or
other lists refused naming both; a list under `out` not as prepare wrote it (`written`) is never replaced; a non-empty `out` without it (a user's folder) or one inside a run is refused;
`out` is locked (`tgmae.locks`). Two rows that
would get one output name are refused before anything is converted; the output is checked with
`tgmae data check` at the end.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from tgmae.atomic import (atomic_path, atomic_write_bytes, atomic_write_text, found_output, remove_stale_temps,
                          stale_temp)
from tgmae.data.annotations import VideoRecord
from tgmae.data.check import ReportFileError, is_check_report, lists_a_run_reads, parallel_map, run_check
from tgmae.data.fileid import video_identity
from tgmae.data.formats import _resolve, load_annotations
from tgmae.errors import SettingsError, UserError
from tgmae.locks import hold, refuse_inside_run
from tgmae.textfile import read_text

log = logging.getLogger("tgmae")

MANIFEST = "prepare.json"
DONE = ".prepare.done"  # JSON lines {"output": path, "identity": [size, mtime ns]} per output finished this run
# keys every `run_prepare` report holds: a --report file with them is an earlier report, replaced
REPORT_KEYS = ("out", "annotations", "settings", "counts", "failed", "check")
ANNOTATION_EXTS = (".txt", ".csv", ".json", ".jsonl", ".tsv")


class PrepareError(ValueError, UserError):
    """The preparation cannot run as asked (settings differ from the output's, paths outside root)."""


@dataclass(frozen=True)
class PrepareSettings:
    """What an output folder was made with; a rerun must ask for the same.

    short_side: target short side in pixels (0 = keep the size); crf / preset: x264 quality and
    speed; gop: keyframe interval in frames (a sampled clip seeks to the keyframe before it).
    Raises SettingsError (one line naming the option) for short_side < 0, crf outside 0-51 or
    gop < 1."""

    short_side: int = 320
    crf: int = 20
    preset: str = "veryfast"
    gop: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.short_side, int) or self.short_side < 0:
            raise SettingsError(f"short_side={self.short_side!r} (--short-side): expected pixels >= 0 "
                                "(0 keeps the size)")
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise SettingsError(f"crf={self.crf!r} (--crf): expected 0-51 (x264 quality, lower = better)")
        if not isinstance(self.gop, int) or self.gop < 1:
            raise SettingsError(f"gop={self.gop!r} (--gop): expected a keyframe interval >= 1 frames")


@dataclass
class FileResult:
    src: str
    dst: str
    status: str  # converted | copied | skipped | failed
    frames: int = 0
    reason: str = ""
    identity: Optional[list] = None  # `_output_identity(dst)` of an output finished or found whole


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side` (never enlarged, 0 = keep),
    the other side in proportion; both rounded to even (x264 4:2:0)."""
    s = min(width, height)
    scale = 1.0 if short_side <= 0 or s <= short_side else short_side / s
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def _target(rel: str) -> str:
    return str(Path(rel).with_suffix(".mp4"))


def _is_h264_mp4(path: str) -> bool:
    import av

    with av.open(path) as c:
        return c.format.name.startswith("mov") and c.streams.video[0].codec_context.name == "h264"


def transcode(src: str, dst: str, settings: PrepareSettings) -> FileResult:
    """Write `src`'s frames to `dst` (H.264 MP4) as described in the module docstring; written to
    a temp name and renamed. Returns the result; never raises for a bad source (status failed,
    reason without the path, which `src` holds)."""
    import av

    from tgmae.data.frame_index import error_detail
    from tgmae.data.video import VideoError, VideoReader

    try:
        with VideoReader(src) as r:
            info = r.info
            w, h = output_size(info.width, info.height, settings.short_side)
            if (w, h) == (info.width, info.height) and _is_h264_mp4(src):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
                return FileResult(src, dst, "copied", info.num_frames)
            tb = r.time_base if info.pts is not None else Fraction(1, 1)
            pts = info.pts if info.pts is not None else None
            rate = Fraction(info.fps or 25).limit_denominator(1001)
            with atomic_path(dst) as tmp:
                _encode(r, str(tmp), (w, h), rate, tb if pts is not None else 1 / rate, pts, settings)
        return FileResult(src, dst, "converted", info.num_frames)
    except (VideoError, OSError, EOFError, av.FFmpegError) as e:
        return FileResult(src, dst, "failed", 0, error_detail(src, e))  # the path has its own field


def _encode(reader, path: str, size: tuple[int, int], rate: Fraction, time_base: Fraction,
            pts: Optional[np.ndarray], settings: PrepareSettings) -> None:
    """Frames of `reader` in index order -> H.264 MP4 at `size`; frame i at `pts[i]` (in
    `time_base`), or at i (time base 1 / rate) without source time stamps. The same frames and
    settings give the same bytes on every run (`video.x264_reproducible`; re-trial 29A S1)."""
    import av

    from tgmae.data.video import x264_reproducible

    w, h = size
    with av.open(path, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = s.codec_context.time_base = time_base
        s.codec_context.thread_count = 1  # workers run in parallel: one thread each
        s.options = x264_reproducible({"crf": str(settings.crf), "preset": settings.preset, "g": str(settings.gop),
                                       "keyint_min": str(settings.gop), "sc_threshold": "0"})
        for i, rgb in reader.frames_in_order():
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                width=w, height=h, format="yuv420p", interpolation="AREA")
            frame.pts, frame.time_base = int(pts[i]) if pts is not None else i, time_base
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _work(job: tuple[str, str, PrepareSettings, bool, Optional[list], str]) -> FileResult:
    """One job (src, dst, settings, redo, record, done): an existing `dst` is skipped unless `redo`
    (its source changed) or it is not whole (`_whole`: not as `record` says prepare finished it);
    a redone source that fails leaves no stale `dst` behind. A finished output's identity is
    appended to the file `done` as soon as it is in place (a killed run keeps it)."""
    src, dst, settings, redo, record, done = job
    if os.path.exists(dst) and not redo:
        if _whole(src, dst, record):
            return FileResult(src, dst, "skipped", identity=_output_identity(dst))
        redo = True  # the damaged output goes even if its source now fails
    result = transcode(src, dst, settings)
    if result.status == "failed":
        if redo:
            Path(dst).unlink(missing_ok=True)
        return result
    result.identity = _output_identity(dst)
    line = json.dumps({"output": dst, "identity": result.identity}) + "\n"
    with open(done, "a", encoding="utf-8") as f:  # one short append: whole lines from parallel workers
        f.write(line)
    return result


def _output_identity(path: str) -> Optional[list]:
    """[size in bytes, mtime ns] of an output: what a truncation, an emptied or replaced file
    changes, and a move or `cp -p` / `rsync -a` of the prepared folder keeps. None when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _whole(src: str, dst: str, record: Optional[list]) -> bool:
    """Whether the existing output `dst` is as prepare finished it: its identity is `record`, or
    without one (a manifest from before records, a record lost to a kill) it reads as `src`'s frame
    count. Logs one line naming `dst` when it is not."""
    from tgmae.data.video import VideoError, VideoReader

    if record is not None:
        whole = _output_identity(dst) == list(record)
    else:
        try:
            with VideoReader(dst) as out, VideoReader(src) as source:
                whole = out.info.num_frames == source.info.num_frames
        except (VideoError, OSError, EOFError, ValueError):
            whole = False
    if not whole:
        log.info("tgmae data prepare: %s is not as prepare finished it (truncated, emptied or replaced since): "
                 "preparing it again", dst)
    return whole


def _read_done(out: Path, man: dict) -> None:
    """Move the records of `out`/DONE (a killed run's finished outputs) into `man["outputs"]`
    (output path relative to `out` -> identity); a torn last line is left out."""
    outputs = man.setdefault("outputs", {})
    try:
        lines = (out / DONE).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return
    for line in lines:
        try:
            rec = json.loads(line)
            outputs[os.path.relpath(rec["output"], out)] = list(rec["identity"])
        except (ValueError, KeyError, TypeError):
            continue


def _changed_sources(out: Path, man: dict, jobs: Sequence[tuple[str, str, PrepareSettings]]) -> dict[str, list]:
    """{dst: its source's identity now} of the outputs whose source changed since they were made
    (`man["sources"]`: output path relative to `out` -> `video_identity` of its source; an output
    without one, from before it was recorded, is not compared), each logged. Records the other
    jobs' source identity in `man`; a changed one keeps its old one until it is redone (a kill
    before then leaves it changed)."""
    had = man.setdefault("sources", {})
    changed = {}
    for src, dst, _ in jobs:
        rel, now = os.path.relpath(dst, out), video_identity(src)
        if os.path.exists(dst) and rel in had and had[rel] != now:
            log.info("tgmae data prepare: %s changed since %s was prepared from it: preparing it again", src, dst)
            changed[dst] = now
        else:
            had[rel] = now
    return changed


# --------------------------------------------------------------------------------------------
# Manifest (settings + the renamed paths)
# --------------------------------------------------------------------------------------------


def _check_manifest(out: Path, settings: PrepareSettings, source: Optional[dict] = None) -> dict:
    """The output's manifest (a new one for a new or empty folder, holding `source`); PrepareError
    when it was made with other settings, naming them, from another set (`source`, `_source`: its
    root or the lists carried differ; a manifest from before they were recorded is not compared),
    naming both, or when `out` holds files but no manifest (not an output of this tool: its
    train.csv, classes.txt, ... would be replaced); temp files of ended writers (a run killed in its
    first manifest write) are not counted."""
    f = out / MANIFEST
    if not f.is_file():
        if out.is_dir() and any(not stale_temp(e.name) for e in out.iterdir()):  # a killed first write's temp is ours
            raise PrepareError(f"{out} (--out): not empty and holds no {MANIFEST}, so it is not a prepared data set; "
                               "preparing into it would replace its files; give --out a new or empty folder")
        return {"settings": asdict(settings), **(source or {}), "renamed": {}}
    try:
        man = json.loads(f.read_text())
        had = man["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"{f}: unreadable manifest ({e}); remove it or use another --out") from None
    diff = [f"{k}={had.get(k)!r} (this run: {v!r})" for k, v in asdict(settings).items() if had.get(k) != v]
    if diff:
        raise PrepareError(f"{out} was prepared with other settings: {', '.join(diff)}; "
                           "use the same settings to resume, or another --out")
    if source is not None:
        _refuse_other_source(out, man, source)
    man.setdefault("renamed", {})
    return man


def _source(fmt: str, root: Path, ann: Path) -> dict:
    """What a prepared set was made from: {"source_root": `root` resolved, "lists": {each annotation
    file carried (`_annotation_files`), by its place under --out: sha256 of its source bytes}}."""
    dest = _under(root, ann if ann.is_dir() else ann.parent) or Path()
    return {"source_root": str(root.resolve()),
            "lists": {str(dest / f.name): _sha256(f.read_bytes()) for f in _annotation_files(fmt, ann)}}


def _refuse_other_source(out: Path, man: dict, source: dict) -> None:
    """PrepareError when `man` (of `out`) records another source root or other lists than `source`
    (`_source`): resuming would mix two sets' videos and replace one set's lists with the other's."""
    had_root, had_lists = man.get("source_root"), man.get("lists")
    if had_root is not None and had_root != source["source_root"]:
        raise PrepareError(f"{out} (--out) was prepared from {had_root}, not from {source['source_root']} (--root): "
                           "preparing another set into it would mix the two sets' videos and lists; "
                           "use another --out")
    if not isinstance(had_lists, dict):
        return
    now = source["lists"]
    diff = [f"{k} ({'not in this run' if k not in now else 'not in it' if k not in had_lists else 'other content'})"
            for k in sorted({*had_lists, *now}) if had_lists.get(k) != now.get(k)]
    if diff:
        raise PrepareError(f"{out} (--out) was prepared from other lists of {had_root or source['source_root']}: "
                           f"{', '.join(diff)}; preparing these into it would replace its lists; "
                           "use another --out, or the lists it was prepared from to resume")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------------------------


# The files each format names beside its list, as (split lists, class lists / label maps) name
# patterns: split lists are carried with their videos when the list given is itself one (a list of
# another name, part.csv, carries no splits) or a folder of them; class lists and label maps are
# carried as they are, never read as annotations. Any other file of the folder is the user's: not
# carried (one naming videos is warned about, `_left_out`). csv / k400: `{split}` + the list's suffix.
GENERIC_SPLITS = ("train", "val", "validate", "test")
FORMAT_FILES = {
    "csv": (None, r"classes\.txt"),
    "k400": (None, r"classes\.txt"),
    "ssv2": (r"(train|validation|test)\.json", r"labels\.json"),
    "ucf101": (r"(train|test)list\d+\.txt", r"classInd\.txt"),
    "hmdb51": (r".+_test_split\d+\.txt", None),
    "diving48": (r"Diving48_V2_(train|test)\.json", r"Diving48(_V2)?_vocab\.json"),
    "epic55": (r"EPIC_.+_action_labels\.csv", r"EPIC_(verb|noun)_classes\.csv"),
}


def _format_files(fmt: str, ann: Path) -> tuple[list[Path], list[Path]]:
    """(the lists carried: `ann` or the split lists of its folder, the class lists / label maps
    carried) for `ann` of format `fmt`, as FORMAT_FILES names them; both sorted."""
    import re

    folder = ann if ann.is_dir() else ann.parent
    splits, classes = FORMAT_FILES[fmt]
    if splits is None:  # csv / k400: the split names with the list's own suffix (any, for a folder)
        ext = re.escape(ann.suffix) if ann.is_file() else "(" + "|".join(map(re.escape, ANNOTATION_EXTS)) + ")"
        splits = "(" + "|".join(GENERIC_SPLITS) + ")" + ext
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    with_splits = ann.is_dir() or re.fullmatch(splits, ann.name)
    lists = [p for p in files if p == ann or (with_splits and re.fullmatch(splits, p.name))]
    named = [p for p in files if classes and re.fullmatch(classes, p.name) and p not in lists]
    return lists, named


def _annotation_files(fmt: str, ann: Path) -> list[Path]:
    """The annotation files carried for `ann` (`_format_files`: lists, class lists, label maps)."""
    lists, classes = _format_files(fmt, ann)
    return sorted([*lists, *classes])


def _left_out(fmt: str, ann: Path) -> list[Path]:
    """The files of `ann`'s folder that are not carried (`_format_files`) but look like lists: a
    text file (ANNOTATION_EXTS) that names a video file (a word ending in a VIDEO_EXTS suffix), or
    an official Kinetics CSV (its header names youtube_id and time_start: clips by id, not file)."""
    import re

    from tgmae.data.annotations import VIDEO_EXTS

    folder = ann if ann.is_dir() else ann.parent
    carried = set(_annotation_files(fmt, ann))
    video = re.compile(r"[^\s,;\"']+(" + "|".join(map(re.escape, VIDEO_EXTS)) + r")\b", re.IGNORECASE)
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p not in carried and p.name != MANIFEST and p.suffix.lower() in ANNOTATION_EXTS:
            with p.open(encoding="utf-8-sig", errors="replace") as f:
                text = f.read(1 << 20)
            header = {c.strip().lower() for c in text.split("\n", 1)[0].split(",")}
            names_videos = video.search(text) or {"youtube_id", "time_start"} <= header
            if names_videos and not is_check_report(p) and not is_check_report(p, REPORT_KEYS):
                out.append(p)
    return out


def files_a_check_reads(fmt: str, root: str, annotations: str, split: int = 1, subset: str = "train") -> list[Path]:
    """The files of this data set that `tgmae data check` (`run_check`) and `tgmae data prepare`
    read, which their report (`--out`, `--report`) may never replace: every list a run reads
    (`lists_a_run_reads`; a folder: its files) with the class lists, label maps and split siblings
    beside it (`_annotation_files`) and `root`/classes.txt, the videos they all list (the siblings'
    too: prepare carries them, `_carried_records`), and where the root or a list's folder is a
    prepared data set (its MANIFEST), the manifest, its annotation files and the videos it names.
    Earlier check reports are left out (a rerun replaces them). Raises AnnotationError as
    `run_check` does."""
    root_p = Path(root) if root else Path(".")
    files, folders = [root_p / "classes.txt"], {root_p}
    for sub, ann in lists_a_run_reads(fmt, root, annotations, split, subset):
        path = _resolve(root_p, ann)
        records, _ = load_annotations(fmt, root, ann, split=split, subset=sub, on_error="skip", problems=[])
        carried = _carried_records(fmt, root_p, path)
        files += [path, *_annotation_files(fmt, path), *(Path(r.path) for r in [*records, *carried])]
        folders.add(path if path.is_dir() else path.parent)
    for folder in folders:
        files += _prepared_set_files(folder)
    return [f for f in files if not is_check_report(f)]


def _prepared_set_files(folder: Path) -> list[Path]:
    """A prepared data set's own files when `folder` is one (its prepare.json holds `renamed`):
    the manifest, the annotation files beside it and the videos it names; else none."""
    named = _manifest_videos(folder)
    if named is None:
        return []
    lists = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ANNOTATION_EXTS]
    return [folder / MANIFEST, *lists, *named]


def _manifest_videos(folder: Path) -> Optional[list[Path]]:
    """The videos `folder`'s MANIFEST names (its `renamed` outputs, existing or not), or None when
    `folder` holds no readable manifest (it is not a prepared data set)."""
    try:
        renamed = json.loads((folder / MANIFEST).read_text())["renamed"]
        return [folder / v for v in renamed.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def refuse_prepared_set_file(path: str | Path, what: str) -> None:
    """ReportFileError naming `path` and `what` (the flag) when a report written there would replace
    a file of a prepared data set (any folder above it holding MANIFEST), whichever set is checked
    or prepared: its MANIFEST, a video it names, or an annotation file under it (ANNOTATION_EXTS)
    that is not an earlier report of `tgmae data check` / `prepare`. A prepared set's files are
    refused like a run's (`locks.refuse_inside_run`), --overwrite or not; a new file is not."""
    p = Path(path).resolve()
    if is_check_report(p) or is_check_report(p, REPORT_KEYS):
        return  # an earlier report: replaced on a rerun
    for folder in p.parents:
        named = _manifest_videos(folder)
        if named is None:
            continue
        listed = p.is_file() and p.suffix.lower() in ANNOTATION_EXTS
        if listed or p == folder / MANIFEST or any(p == v.resolve() for v in named):
            raise ReportFileError(f"{path} ({what}): is a file of the prepared data set {folder} (its {MANIFEST}, "
                                  "lists and videos), which the report would replace (--overwrite or not); "
                                  "give the report another file")


def _rewrite_line_paths(text: str, fmt: str, name: str, renamed: dict[str, str]) -> str:
    """Replace the video path of each line of a path-list file by its prepared name, where the
    video was prepared (`renamed`: old path relative to root -> new one)."""
    import re

    hmdb = re.match(r"^(.+)_test_split\d+\.txt$", name) if fmt == "hmdb51" else None
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        parts = body.rsplit(None, 1) if fmt == "k400" else body.split(None, 1)
        if parts and parts[0]:
            key = f"{hmdb.group(1)}/{parts[0]}" if hmdb else parts[0]
            new = renamed.get(key)
            if new is not None:
                new = Path(new).name if hmdb else new
                line = line.replace(parts[0], new, 1)
        out.append(line)
    return "".join(out)


def _rewrite_csv(text: str, suffix: str, root: Path, out: Path, renamed: dict[str, str]) -> str:
    """Generic CSV / JSONL: the `path` field of each row becomes its prepared name."""
    def new_path(p: str) -> str:
        rel = os.path.relpath(p, root) if os.path.isabs(p) else p
        got = renamed.get(rel)
        if got is None:
            return p
        return str(out / got) if os.path.isabs(p) else got

    if suffix in (".jsonl", ".json"):
        lines = []
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                lines.append(line)
                continue
            if isinstance(obj, dict) and isinstance(obj.get("path"), str):
                obj["path"] = new_path(obj["path"].strip())
            lines.append(json.dumps(obj))
        return "\n".join(lines) + "\n"
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    col = [c.strip() for c in rows[0]].index("path") if "path" in [c.strip() for c in rows[0]] else -1
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    for i, row in enumerate(rows):
        if i and 0 <= col < len(row):
            row[col] = new_path(row[col].strip())
        wr.writerow(row)
    return buf.getvalue()


def write_annotations(fmt: str, root: Path, ann: Path, out: Path, renamed: dict[str, str],
                      written: Optional[dict] = None) -> Path:
    """Copy the annotation file(s) under `out` (`_format_files`): the lists with prepared paths,
    the class lists as they are -> the new annotations path. `written` (place under `out` ->
    sha256 of the text prepare wrote there) is checked first and updated: a file already there
    that is neither as recorded nor as it would be written now (a user's, or edited since) is
    never replaced: PrepareError naming it, before any list is written."""
    written = {} if written is None else written
    dest_dir = _annotations_dest(root, ann, out)
    lists, classes = _format_files(fmt, ann)
    data = {dest_dir / f.name: f.read_bytes() for f in classes}  # name no videos: carried byte for byte
    for f in lists:
        text = read_text(f)
        if fmt in ("ucf101", "hmdb51") or (fmt == "k400" and not text.lstrip().startswith("label,youtube_id")):
            text = _rewrite_line_paths(text, fmt, f.name, renamed)
        elif fmt == "csv" and f.suffix.lower() in (".csv", ".jsonl", ".json"):
            text = _rewrite_csv(text, f.suffix.lower(), root, out, renamed)
        data[dest_dir / f.name] = text.encode("utf-8")
    for dest, body in data.items():
        _refuse_foreign_list(dest, written.get(os.path.relpath(dest, out)), _sha256(body))
    for dest, body in data.items():
        atomic_write_bytes(dest, body)
        written[os.path.relpath(dest, out)] = _sha256(body)
    return dest_dir / ann.name if ann.is_file() else dest_dir


def _refuse_foreign_list(dest: Path, recorded: Optional[str], new: str) -> None:
    """PrepareError naming `dest` when it holds a user's edit (`atomic.found_output`): its bytes are
    neither `recorded` (the sha256 of what prepare wrote there) nor `new` (of what it would write
    now), or it cannot be read: replacing it would lose an edit."""
    if found_output(dest, lambda data: _sha256(data) in (recorded, new)).edited:
        raise PrepareError(f"{dest}: a list under --out that is not as data prepare wrote it (edited or put there "
                           "since); it is not replaced: move it away, or use another --out")


def _annotations_dest(root: Path, ann: Path, out: Path) -> Path:
    """The folder under `out` the annotation files of `ann` are written to (its place under `root`)."""
    rel_parent = _under(root, ann if ann.is_dir() else ann.parent)
    return out / rel_parent if rel_parent is not None else out


def _under(root: Path, p: Path) -> Optional[Path]:
    try:
        return p.resolve().relative_to(root.resolve())
    except ValueError:
        return None


def _verify(fmt: str, out: Path, new_ann: Path, src: list[VideoRecord], dst: dict[str, str], split: int,
            subset: str) -> None:
    """The new annotations read back as the old ones: same ids, labels and order, prepared paths."""
    got, _ = load_annotations(fmt, out, new_ann, split=split, subset=subset, on_error="skip")
    if [(r.video_id, r.label) for r in got] != [(r.video_id, r.label) for r in src]:
        raise PrepareError(f"{new_ann}: the rewritten annotations do not read back as {len(src)} records "
                           f"with the same ids and labels (got {len(got)})")
    for a, b in zip(src, got):
        if a.path in dst and os.path.exists(dst[a.path]) and os.path.realpath(b.path) != os.path.realpath(dst[a.path]):
            raise PrepareError(f"{new_ann}: record {a.video_id} names {b.path}, expected {dst[a.path]}")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _jobs(records: Sequence[VideoRecord], root: Path, out: Path, settings: PrepareSettings
          ) -> tuple[list[tuple[str, str, PrepareSettings]], dict[str, str]]:
    """(src, dst, settings) per distinct video, and the renaming (old rel path -> new rel path).
    Raises PrepareError for frame folders, paths outside root, and two videos sharing an output
    name (naming both)."""
    jobs, renamed, seen, owner = [], {}, set(), {}
    for r in records:
        if os.path.isdir(r.path):
            raise PrepareError(f"{r.path}: a frame folder (already decoded images); data prepare converts video files")
        rel = _under(root, Path(r.path))
        if rel is None:
            raise PrepareError(f"{r.path}: outside the data root {root} (--root); its output place is undefined")
        new = _target(str(rel))
        other = owner.setdefault(new, str(rel))
        if other != str(rel):
            raise PrepareError(f"rows {other} and {rel} are two videos that would both become {out / new}: "
                               "rename one of them; nothing was converted")
        renamed[str(rel)] = new
        if r.path not in seen:
            seen.add(r.path)
            jobs.append((r.path, str(out / new), settings))
    return jobs, renamed


def run_prepare(fmt: str, root: str, annotations: str, out: str, settings: PrepareSettings, *,
                split: int = 1, subset: str = "train", workers: int = 1, min_frames: int = 16,
                progress: bool = True) -> dict:
    """Prepare the records of (`annotations`, `split`, `subset`) into `out` -> report dict:
    counts per status, failures (path, reason), the new annotations path and the data-check
    report of the output. When every video failed, nothing is made: `annotations` and `check` are
    None, and the manifest and folders this run created are removed. Raises PrepareError /
    AnnotationError as described above, RunFolderError for an `out` that is a run or lies inside
    one (`locks.refuse_inside_run`), LockError for an `out` another run holds (`hold_out`)."""
    root_p, out_p = Path(root), Path(out)
    with hold_out(out_p):
        check_out(out_p, root_p, settings)
        records, _ = load_annotations(fmt, root_p, annotations, split=split, subset=subset)
        ann = _annotations_path(root_p, annotations)
        _check_manifest(out_p, settings, _source(fmt, root_p, ann))  # another set: refused before its warnings
        left = _left_out(fmt, ann)
        if left:  # a list of another layout would dangle or be read wrongly: the user is told, once
            log.warning("tgmae data prepare: %s left out of %s: not a list --format %s reads beside %s (its split "
                        "lists, class lists and label maps); its videos are not prepared",
                        ", ".join(map(str, left)), out_p, fmt, ann)
        return _run_locked(fmt, root_p, ann, out_p, settings, records, split, subset, workers, min_frames,
                           progress)


@contextmanager
def hold_out(out: str | Path) -> Iterator[None]:
    """`out`'s lock (`tgmae.locks.hold`, LockError naming the run that holds it), taken before its
    files are judged (`check_out`): a folder another run is preparing (its manifest's temp before
    the rename) reads as a user's. An `out` inside a run is refused first (RunFolderError): its
    lock file would land in the run."""
    refuse_inside_run(out, "--out")
    with hold(out, "--out", folder=True):
        yield


def check_out(out: str | Path, root: str | Path, settings: PrepareSettings, fmt: str = "",
              annotations: str | Path = "") -> None:
    """Refuse, before anything is made, an `out` that `run_prepare` would refuse: one inside a run
    (RunFolderError), the data root, a user's non-empty folder or one prepared with other settings
    (PrepareError, `_check_manifest`), or with `fmt` and `annotations` one prepared from another
    root or other lists (`_source`); reads only. Call it holding `hold_out(out)`."""
    out_p = Path(out)
    refuse_inside_run(out_p, "--out")  # its videos and lists would mix with the run's files
    if out_p.resolve() == Path(root).resolve():
        raise PrepareError(f"--out {out} is the data root: prepared files must go to another folder")
    ann = _annotations_path(Path(root), str(annotations)) if fmt and annotations else None
    _check_manifest(out_p, settings, _source(fmt, Path(root), ann) if ann is not None and ann.exists() else None)


def files_written(fmt: str, root: str, annotations: str, out: str, *, split: int = 1,
                  subset: str = "train") -> list[Path]:
    """Every file `run_prepare` writes into `out` for these arguments: prepare.json, the annotation
    files carried along (lists, classes.txt, label maps) and the videos. Raises as `run_prepare`
    (AnnotationError, PrepareError) when the annotations cannot be prepared."""
    root_p, out_p = Path(root), Path(out)
    records, _ = load_annotations(fmt, root_p, annotations, split=split, subset=subset)
    ann = _annotations_path(root_p, annotations)
    jobs, _ = _jobs([*records, *_carried_records(fmt, root_p, ann)], root_p, out_p, PrepareSettings())
    dest = _annotations_dest(root_p, ann, out_p)
    return [out_p / MANIFEST, *(dest / f.name for f in _annotation_files(fmt, ann)), *(Path(j[1]) for j in jobs)]


def _annotations_path(root: Path, annotations: str) -> Path:
    return Path(annotations) if Path(annotations).exists() else root / annotations


def _carried_records(fmt: str, root: Path, ann: Path) -> list[VideoRecord]:
    """The records of every annotation file carried into the output besides the asked one: all
    splits and subsets of a split folder, or the sibling files of an annotation file (files that
    do not read as annotations of `fmt` name no videos and add none); class lists and label maps
    are not read (`_format_files`)."""
    got: list[VideoRecord] = []

    def load(target: Path, sp: int = 1, sub: str = "train") -> None:
        try:
            recs, _ = load_annotations(fmt, root, target, split=sp, subset=sub, on_error="skip", problems=[])
        except Exception:  # noqa: BLE001 - not an annotation file of this format: names no videos
            return
        got.extend(r for r in recs if os.path.exists(r.path))

    if ann.is_dir():
        for sp in (1, 2, 3):
            for sub in ("train", "val", "test"):
                load(ann, sp, sub)
    else:
        for f in _format_files(fmt, ann)[0]:
            if f != ann:
                load(f)
    return got


def _run_locked(fmt: str, root_p: Path, ann: Path, out_p: Path, settings: PrepareSettings,
                records: list[VideoRecord], split: int, subset: str, workers: int, min_frames: int,
                progress: bool) -> dict:
    had_manifest = (out_p / MANIFEST).is_file()
    source = _source(fmt, root_p, ann)
    man = _check_manifest(out_p, settings, source)
    man.update(source)  # a manifest from before the source was recorded records it now
    jobs, renamed = _jobs([*records, *_carried_records(fmt, root_p, ann)], root_p, out_p, settings)
    new_dirs = _new_folders(out_p, [Path(j[1]) for j in jobs])
    out_p.mkdir(parents=True, exist_ok=True)
    for folder in sorted({out_p, *(Path(j[1]).parent for j in jobs)}):
        remove_stale_temps(folder)
    man["renamed"].update(renamed)
    redo = _changed_sources(out_p, man, jobs)
    _read_done(out_p, man)
    atomic_write_text(out_p / MANIFEST, json.dumps(man, indent=1))
    (out_p / DONE).unlink(missing_ok=True)  # its records are in the manifest now
    results = parallel_map(_work, [(*j, j[1] in redo, man["outputs"].get(os.path.relpath(j[1], out_p)),
                                    str(out_p / DONE)) for j in jobs], workers, "preparing videos", progress)
    _record_results(out_p, man, results, redo)
    counts = {k: sum(r.status == k for r in results) for k in ("converted", "copied", "skipped", "failed")}
    failed = [{"path": r.src, "reason": r.reason} for r in results if r.status == "failed"]
    if results and counts["failed"] == len(results):
        # nothing was made: no annotations naming videos that do not exist, no data check of them
        # (one "file not found" each), and no manifest or folder this run created
        (out_p / DONE).unlink(missing_ok=True)  # no output finished: it holds no record
        if had_manifest:
            atomic_write_text(out_p / MANIFEST, json.dumps(man, indent=1))
        else:
            _remove_new(out_p / MANIFEST, new_dirs)
        return {"out": str(out_p), "annotations": None, "settings": asdict(settings), "counts": counts,
                "failed": failed, "check": None}
    atomic_write_text(out_p / MANIFEST, json.dumps(man, indent=1))
    (out_p / DONE).unlink(missing_ok=True)  # its records are in the manifest
    new_ann = write_annotations(fmt, root_p, ann, out_p, man["renamed"], man.setdefault("written", {}))
    atomic_write_text(out_p / MANIFEST, json.dumps(man, indent=1))  # what it wrote: a later edit is kept
    dst = {j[0]: j[1] for j in jobs}
    _verify(fmt, out_p, new_ann, records, dst, split, subset)
    check = run_check(fmt, str(out_p), str(new_ann), split=split, subset=subset, min_frames=min_frames,
                      workers=workers, progress=progress, run_lists=False)  # the list prepared, as given
    _mark_not_prepared(check, root_p, out_p, results)
    return {"out": str(out_p), "annotations": str(new_ann), "settings": asdict(settings), "counts": counts,
            "failed": failed, "check": check}


def _record_results(out: Path, man: dict, results: Sequence[FileResult], redo: dict[str, list]) -> None:
    """Update `man` after the jobs: a redone output's new source identity, every output's identity
    (`outputs`; a failed one's record goes), and no entry for an output that is not there."""
    man["renamed"] = {k: v for k, v in man["renamed"].items() if (out / v).exists()}
    man["sources"].update({os.path.relpath(r.dst, out): redo[r.dst] for r in results
                           if r.dst in redo and r.status in ("converted", "copied")})
    for r in results:
        man["outputs"][os.path.relpath(r.dst, out)] = r.identity
    for key in ("sources", "outputs"):
        man[key] = {k: v for k, v in man[key].items() if v is not None and (out / k).exists()}


NOT_PREPARED = "not prepared (failed above)"


def _mark_not_prepared(check: dict, root: Path, out: Path, results: Sequence[FileResult]) -> None:
    """In the closing check's items, a video whose preparation failed (its row keeps its source
    name, which `out` lacks) reads NOT_PREPARED instead of "file not found", which reads as if
    prepare had lost it; its kind and the counts are kept."""
    failed = {_under(root, Path(r.src)) for r in results if r.status == "failed"}
    for item in check["items"]:
        if not os.path.exists(item["path"]) and _under(out, Path(item["path"])) in failed:
            item["reason"] = NOT_PREPARED


def _new_folders(out: Path, outputs: Sequence[Path]) -> list[Path]:
    """The folders a run writing `outputs` under `out` would create (`out` and the folders between
    it and each output): those that do not exist yet, deepest first."""
    want = {out}
    for f in outputs:
        want.update(p for p in f.parents if p == out or out in p.parents)
    return sorted((p for p in want if not p.exists()), key=lambda p: len(p.parts), reverse=True)


def _remove_new(manifest: Path, new_dirs: Sequence[Path]) -> None:
    """Undo a run that made nothing: its manifest, and the folders it created (deepest first) that
    are empty; a folder holding anything else is kept."""
    manifest.unlink(missing_ok=True)
    for d in new_dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (another file was put there), or gone: keep it
            pass
