"""`tgmae data check`: validate a dataset (rows, files, decodability, duration, labels).

Each record's video gets its one verdict (`video_verdict`: missing / zero_bytes / unreadable /
no_video_stream / no_frames / truncated / undecodable / bad_frame_folder), then the first, middle and last frame of
its range are read (a frame folder: every image of its range, zero_bytes / undecodable naming the frame); ranges past the video's end (out_of_range, never clipped), clips shorter than `--min-frames`, labels outside the class list, unreadable
rows (file:line) and empty lists are reported; videos shorter than a clip's span (`--frame-stride`,
read with a smaller stride) are listed, not counted as bad. Every list a run would read is checked (a
split-folder train list brings its test list, `subset_annotations`; `lists` says which). Exit
status: 0 clean; 1 anything found (`--allow-bad`: 0); 2 unreadable annotations, an unwritable
`--out` (checked first), an `--out` that is not a previous report (`check_report_out`) or wrong
arguments.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tgmae.data.annotations import UNLABELLED, VIDEO_EXTS, AnnotationError, VideoRecord, clip_key
from tgmae.data.formats import _resolve, list_file, load_annotations
from tgmae.data.frame_folder import FrameFolder
from tgmae.data.frame_index import KINDS as VIDEO_KINDS
from tgmae.data.frame_index import error_detail, record_frame_range
from tgmae.data.sampling import clip_span
from tgmae.data.video import VideoError, VideoReader
from tgmae.errors import UserError
from tgmae.locks import refuse_inside_run


KINDS = (*VIDEO_KINDS, "out_of_range", "too_short", "bad_label")


@dataclass
class ItemResult:
    index: int
    path: str
    video_id: str
    kind: str  # ok | one of KINDS
    reason: str = ""
    num_frames: int = 0
    subset: str = ""  # the list's subset (run_check)
    in_range: int = 0  # frames of the record's range (ok records)


class ReportFileError(FileExistsError, UserError):
    """The report's file (`--out`, `--report`) is a list being read, or an existing file that is not
    an earlier report of its tool (without overwrite)."""


# keys every `run_check` report holds: a file with them is an earlier report, replaced on a rerun
REPORT_KEYS = ("format", "root", "annotations", "lists", "counts", "items", "rows")


def is_check_report(path: str | Path, keys: Sequence[str] = REPORT_KEYS) -> bool:
    """Whether `path` holds a report of `tgmae data check` (a JSON object with its REPORT_KEYS; or
    with `keys`, another tool's report). Asked of every file a check reads, videos included: only a
    regular file is opened (a fifo would block: re-trial 31A M3), and only one that begins as a JSON
    object is read whole (not every video)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            if not f.read(64).lstrip().startswith(b"{"):
                return False
            report = json.loads(f.seek(0) or f.read())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and all(k in report for k in keys)


def check_report_out(out: str | Path, root: str, annotations: str, overwrite: bool = False, *,
                     what: str = "--out", tool: str = "tgmae data check",
                     is_report: Callable[[Path], bool] = is_check_report, inputs: Sequence[str | Path] = (),
                     read_as: str = "the annotation list being read",
                     folders: Sequence[tuple[str | Path, str]] = ()) -> None:
    """Refuse, before any video is checked, a report file `out` that would replace what is not an
    earlier report: RunFolderError when it lies inside a run (`locks.refuse_inside_run`) and
    ReportFileError when it is the annotation list being read or one of `inputs` (files the tool
    reads or writes), or is or lies inside one of `folders` ((folder, the flag naming it): folders
    the tool reads or writes, e.g. a model folder, whose loader a new or replaced file can break),
    --overwrite or not, or another existing file without `overwrite`; each names `out` and `what`
    (the flag). `tool` / `is_report`: whose reports are replaced (`is_check_report`); `read_as`:
    what `annotations` is to the tool, for the refusal."""
    refuse_inside_run(out, what)  # a run's config.yaml, metrics, checkpoints
    target = Path(out).resolve()
    ann = Path(annotations) if Path(annotations).exists() else Path(root) / annotations
    if target == ann.resolve():
        raise ReportFileError(f"{out} ({what}): is {read_as}, which the report would replace; "
                              "give the report another file")
    if any(target == Path(f).resolve() for f in inputs):
        raise ReportFileError(f"{out} ({what}): is a file {tool} reads or writes, which the report would "
                              "replace (--overwrite or not); give the report another file")
    for folder, flag in folders:
        if target.is_relative_to(Path(folder).resolve()):
            where = "is" if target == Path(folder).resolve() else "lies inside"
            raise ReportFileError(f"{out} ({what}): {where} {folder} ({flag}), a folder {tool} reads or writes, "
                                  "which the report would change (--overwrite or not); give the report a file "
                                  "outside it")
    if target.is_file() and not overwrite and not is_report(target):
        raise ReportFileError(f"{out} ({what}): exists and is not a report of {tool}; give the report "
                              "a new file, or --overwrite to replace it")


def check_record(index: int, rec: VideoRecord, num_classes: Optional[int], min_frames: int) -> ItemResult:
    """Open, count and decode one record: a file's first, middle and last frame of its range (opening
    it decoded every frame, `frame_index`), a frame folder's every image in its range
    (`FrameFolder.check_frames`: an empty or truncated image is zero_bytes / undecodable naming the
    frame); classify what is wrong with it, if anything (num_classes None: labels are not checked)."""
    import av

    def res(kind: str, reason: str = "", n: int = 0, in_range: int = 0) -> ItemResult:
        return ItemResult(index, rec.path, rec.video_id, kind, reason, n, in_range=in_range)

    if num_classes is not None and not (0 <= rec.label < num_classes):
        return res("bad_label", f"bad label: {rec.label} outside [0, {num_classes})")
    try:
        with VideoReader(rec.path) as r:  # raises the video's verdict (VideoError.kind)
            n = r.info.num_frames
            start, end = record_frame_range(rec.path, rec.start_frame, rec.end_frame, n)  # past the end: bad
            if end - start < min_frames:
                have = max(end - start, 0)
                return res("too_short", f"too short: {have} frames in range [{start}, {end}), need {min_frames}", n)
            if r.info.is_frame_folder:  # opening a folder decodes no image: decode each, as a file's index did
                FrameFolder(rec.path).check_frames(start, end)
            else:
                r.read([start, (start + end - 1) // 2, end - 1])
            have = end - start
    except VideoError as e:
        return res(e.kind if e.kind in KINDS else "undecodable", error_detail(rec.path, e))
    except (OSError, EOFError, av.FFmpegError) as e:
        return res("undecodable", error_detail(rec.path, e))
    return res("ok", "", n, have)


def _work(args: tuple) -> ItemResult:
    return check_record(*args)


def unreadable_records(records: Sequence[VideoRecord], min_frames: int, workers: int = 1) -> list[ItemResult]:
    """The records a reader would refuse (any kind but ok: missing, truncated, too short, ...),
    checked `workers` at a time (threads: decoding releases the GIL). Each file's frame index is
    built here once and cached, so the reads that follow cost no extra decode."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(i, r, None, min_frames) for i, r in enumerate(records)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(_work, jobs) if r.kind != "ok"]


def parallel_map(fn: Callable, jobs: Sequence, workers: int, desc: str, progress: bool, chunksize: int = 1) -> list:
    """[fn(job) for job in jobs], in order, on `workers` processes (fork on Linux) when > 1, with a
    tqdm progress bar on stderr named `desc` when `progress` (the data tools' worker pool)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="video", file=sys.stderr)
    results = []
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
            for r in pool.imap(fn, jobs, chunksize=chunksize):
                results.append(r)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            results.append(fn(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    return results


def lists_a_run_reads(fmt: str, root: str, annotations: str, split: int, subset: str,
                      not_found: Optional[list] = None) -> list[tuple[str, str]]:
    """(subset, annotations) of every list a run reads given `annotations` for `subset`: itself,
    and for a split-folder format's train list file or folder of split files the val list that a
    run with it as data.train_annotations (data.val_annotations empty) reads (`subset_annotations`:
    the folder, read for "val"; its ConfigError for a list of another split names data.split,
    i.e. --split here). That val list is left out when its file is the one given (a file named once
    is read once; a folder of per-class files, HMDB51's, is read for each subset) or is missing (the list given is checked; the missing file is appended to
    `not_found` as {"subset", "file"}, for the report to say)."""
    from tgmae.config import ConfigError, DataConfig
    from tgmae.data.dataset import SPLIT_FOLDER_FORMATS, subset_annotations

    given = list_file(fmt, root, annotations, split, subset)
    if given != _resolve(Path(root) if root else Path("."), annotations) and not given.exists():
        # a folder's split file for --subset: the tools' own advice, not the run's data.val_annotations
        raise AnnotationError(f"{given}: annotation file not found (the {subset} list of the {fmt} split folder "
                              f"{given.parent}); name the list file to check, or put the file there")
    out = [(subset, annotations)]
    if fmt in SPLIT_FOLDER_FORMATS and subset == "train":
        cfg = DataConfig(format=fmt, root=root, train_annotations=annotations, val_annotations="", split=split)
        try:
            val = subset_annotations(cfg, "val")
        except ConfigError as e:  # a UCF101 list of another split: here the setting is --split
            numbered = re.fullmatch(r"trainlist(\d+)\.txt", Path(annotations).name)
            flag = f"--split {int(numbered.group(1))}" if numbered else "--split"
            raise ConfigError(f"{e} (tgmae data check / prepare: {flag})") from None
        if not val:
            return out
        file = list_file(fmt, root, val, split, "val")
        if not file.exists():
            if not_found is not None:
                not_found.append({"subset": "val", "file": str(file)})
        elif file.is_dir() or file.resolve() != list_file(fmt, root, annotations, split, subset).resolve():
            out.append(("val", val))
    return out


def run_check(fmt: str, root: str, annotations: str, *, split: int = 1, subset: str = "train",
              min_frames: int = 16, frame_stride: int = 4, workers: int = 1, progress: bool = True,
              run_lists: bool = True) -> dict:
    """Check a dataset -> report dict (raises AnnotationError when annotations are unreadable):
    every list a run reads (`lists_a_run_reads`; run_lists False: `annotations` alone, as
    `tgmae data prepare` checks the list it wrote), records in list order, each clip once (one an
    earlier list brought counts in the later list's `checked_before`, not again in `checked`). Readable videos whose
    range is shorter than the span of a dense clip of `min_frames` frames `frame_stride` apart
    (`clip_span`) are listed in `shorter_than_clip` (a run reads them with a smaller stride; not bad)."""
    problems: list = []
    jobs, lists, classes, empty, bounds, seen, not_found = [], [], [], False, [], set(), []
    todo = lists_a_run_reads(fmt, root, annotations, split, subset, not_found) if run_lists \
        else [(subset, annotations)]
    for sub, ann in todo:
        records, names = load_annotations(fmt, root, ann, split=split, subset=sub, on_error="skip", problems=problems)
        classes = classes or names
        new = [r for r in records if clip_key(r) not in seen]  # a clip an earlier list brought: checked once
        seen.update(clip_key(r) for r in new)
        # an unlabelled test list (SSv2 test.json, Kinetics test.csv) has no labels to check
        jobs += [(len(jobs) + i, r, None if r.label == UNLABELLED else len(names), min_frames)
                 for i, r in enumerate(new)]
        bounds.append(len(new))
        lists.append({"subset": sub, "annotations": str(ann), "file": str(list_file(fmt, root, ann, split, sub)),
                      "records": len(records),
                      **({"checked_before": len(records) - len(new)} if len(new) < len(records) else {})})
        empty = empty or not records
    results: list[ItemResult] = parallel_map(_work, jobs, workers, "checking videos", progress, chunksize=4)
    for r in results:
        r.subset = _subset_of(r.index, bounds, lists)
    counts = Counter(r.kind for r in results)
    bad = [r for r in results if r.kind != "ok"]
    frames = [r.num_frames for r in results if r.kind == "ok"]
    span = clip_span(min_frames, frame_stride)
    shorter = [{"path": r.path, "video_id": r.video_id, "subset": r.subset, "num_frames": r.in_range}
               for r in results if r.kind == "ok" and r.in_range < span]
    return {
        "format": fmt, "root": str(root), "annotations": str(annotations), "subset": subset, "split": split,
        "min_frames": min_frames, "frame_stride": frame_stride, "clip_span": span, "num_classes": len(classes),
        "records": len(jobs), "checked": len(results), "ok": counts.get("ok", 0), "bad": len(bad),
        "bad_rows": len(problems), "empty": empty, "lists": lists, "not_found": not_found,
        "counts": {k: counts.get(k, 0) for k in KINDS},
        "frames": {"min": min(frames), "max": max(frames), "mean": sum(frames) / len(frames)} if frames else None,
        "items": [{k: v for k, v in asdict(r).items() if k not in ("num_frames", "in_range")} for r in bad],
        "shorter_than_clip": shorter,
        "rows": [{"file": p.file, "line": p.line, "reason": p.reason} for p in problems],
    }


def _subset_of(index: int, counts: list[int], lists: list[dict]) -> str:
    """The subset of the list that job `index` came from (lists' records in order)."""
    for n, x in zip(counts, lists):
        if index < n:
            return x["subset"]
        index -= n
    return lists[-1]["subset"]


def item_where(item: dict) -> str:
    """How a printed line names a bad item of a report: its path, and its id where that is not the
    file's own name (segments of one file: `/x/a.mp4 (video 'seg2')`), so lines of one file differ."""
    path, vid = str(item["path"]), str(item.get("video_id") or "")
    stem = path.rstrip("/").replace("\\", "/")
    base, ext = os.path.splitext(stem)
    stem = base if ext.lower() in VIDEO_EXTS else stem
    if not vid or stem == vid or stem.endswith("/" + vid):
        return path
    return f"{path} (video {vid!r})"


def found_problems(report: dict) -> bool:
    """True when a `run_check` report found anything wrong (the command's exit 1)."""
    return bool(report["bad"] or report["bad_rows"] or report["empty"])
