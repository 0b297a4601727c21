"""Annotations: the `VideoRecord` type, the shared row helpers and the generic CSV/JSONL reader.

`tgmae.data.formats` holds the readers of the six public datasets' layouts and the entry point
`load_annotations(format, root, annotations, split, subset)` over all of them; it imports this
module, never the other way round.
Paths in records are absolute (joined to `root`); labels are 0-based ints; frame ranges are
0-based, `end_frame` exclusive. A malformed row raises `AnnotationError` naming file:line, or,
with `on_error="skip"`, is left out, logged, and listed in `problems` when a list is given.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from tgmae.errors import UserError
from tgmae.textfile import open_text, read_text

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


class AnnotationError(ValueError, UserError):
    """An annotation file or row is malformed; the message names file and line."""


UNLABELLED = -1  # a record's label where the list carries none (SSv2 test.json, Kinetics test.csv)


@dataclass
class VideoRecord:
    """One labelled clip: a video file or a frame folder, optionally a frame range of it."""

    path: str  # absolute path of the video file or frame folder
    label: int  # 0-based class id (EPIC: action id); UNLABELLED (-1) in a test list without labels
    video_id: str  # key for captions and caches, unique within a data set (see `UniqueIds`)
    start_frame: Optional[int] = None  # 0-based first frame of the clip; None = 0
    end_frame: Optional[int] = None  # 0-based, exclusive; None = the video's end
    caption: Optional[str] = None  # text shipped with the annotation (SSv2 label, EPIC narration)
    targets: dict[str, int] = field(default_factory=dict)  # extra targets, e.g. EPIC verb/noun


def clip_key(rec: VideoRecord) -> tuple[str, Optional[int], Optional[int]]:
    """The clip a record names: (absolute path, start_frame, end_frame); two lists share a clip
    when their records' keys are equal (a test list of training videos, a list checked twice)."""
    return os.path.abspath(rec.path), rec.start_frame, rec.end_frame


def clip_range(rec: VideoRecord) -> list:
    """The range a record names, as caption stores keep it (`frames`): [start_frame, end_frame]
    (0-based, end exclusive; start None = 0, end None (JSON null) = the video's end). The same file
    over another range is another clip: captions of other frames."""
    return [rec.start_frame or 0, rec.end_frame]


def annotated_texts(records: Sequence[VideoRecord], class_names: Sequence[str] = ()
                    ) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """{video_id: (caption, class name)}: the texts a record carries now, which caption stores made
    without pixels were made from (`--annotation-captions` its caption, `--oracle` / `--descriptions`
    its class's name; `tgmae.captions.store.stale_texts` compares them). None where the record has
    none: no caption; no class name (unlabelled, a label past `class_names`, or classes numbered
    only, `unnamed_classes`, with no names to compare) (re-trial 29B S1 follow-up)."""
    names = [] if unnamed_classes(list(class_names)) else list(class_names)
    return {r.video_id: (r.caption, names[r.label] if 0 <= r.label < len(names) else None) for r in records}


def range_problem(start: Optional[int], end: Optional[int]) -> Optional[str]:
    """Why an annotated frame range [start, end) (0-based, end exclusive; None = the video's
    start / end) is no range, or None: a negative frame (which would be clipped to 0, a clip the
    row does not name) or end <= start (no frames). Readers refuse such a row when reading."""
    for key, v in (("start_frame", start), ("end_frame", end)):
        if v is not None and v < 0:
            return f"{key} {v} is negative"
    if end is not None and end <= (start or 0):
        return f"end_frame {end} <= start_frame {start or 0}: the range holds no frames"
    return None


@dataclass
class Problem:
    """A row that could not be read: where and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class RowErrors:
    """Collects bad rows: raise at once, or skip and remember them."""

    def __init__(self, on_error: str, problems: Optional[list]):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        self.on_error = on_error
        self.problems = problems if problems is not None else []
        self.skipped = 0

    def bad(self, file: Path | str, line: int, reason: str) -> None:
        p = Problem(str(file), line, reason)
        if self.on_error == "raise":
            raise AnnotationError(str(p))
        self.skipped += 1
        self.problems.append(p)

    def finish(self, name: str) -> None:
        if self.skipped:
            first = self.problems[-self.skipped]
            log.warning("%s: skipped %d bad annotation rows (first: %s)", name, self.skipped, first)


def subset_kind(subset: str) -> str:
    s = subset.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("val", "valid", "validation", "validate"):
        return "val"
    if s == "test":
        return "test"
    raise AnnotationError(f"subset={subset!r}: expected train, val or test")


def parse_int(text: str, file: Path, line: int, what: str, rows: RowErrors) -> Optional[int]:
    try:
        return int(str(text).strip())
    except ValueError:
        rows.bad(file, line, f"{what} {text!r} is not an integer")
        return None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of non-empty lines; CRLF files as shipped by UCF101.
    A file that is not UTF-8 is refused naming file:line (`tgmae.textfile.NotUtf8Error`)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    text = read_text(path)
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]


def first_existing(root: Path, candidates: list[str]) -> str:
    for c in candidates:
        if (root / c).exists():
            return str(root / c)
    return str(root / candidates[0])


def load_json(path: Path, object_pairs_hook: Optional[Callable] = None, shape: Optional[str] = None):
    """The JSON value in `path`; AnnotationError naming the file (and line) when missing or invalid.
    object_pairs_hook: as json.loads's (to see a key twice, which a dict keeps the last of).
    shape: what the file must hold, e.g. "one JSON list of objects [...]": named in the error, which
    for a file of one JSON value per line (JSON lines) says so. Not UTF-8: NotUtf8Error (file:line)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        expected = f"; expected {shape}" if shape else ""
        if e.msg == "Extra data" and _json_lines(text):
            raise AnnotationError(f"{path}: one JSON value per line (JSON lines), not one JSON document"
                                  f"{expected}") from None
        raise AnnotationError(f"{path}:{e.lineno}: not valid JSON ({e.msg}){expected}") from None


def _json_lines(text: str) -> bool:
    """Whether every non-empty line of `text` is a JSON value of its own."""
    try:
        for line in text.splitlines():
            if line.strip():
                json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def json_item_lines(path: Path) -> list[int]:
    """Line number where each top-level array item starts (for error messages): objects, lists and
    scalars alike; brackets inside strings do not count."""
    out, depth, line, in_str, escaped, want = [], 0, 1, False, False, False
    for ch in read_text(path):
        if ch == "\n":
            line += 1
        if in_str:
            escaped, in_str = (False, True) if escaped else (ch == "\\", ch != '"')
            continue
        if ch.isspace():
            continue
        if want and ch not in "]":
            out.append(line)
        want = False
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            want = depth == 1 and ch == "["
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            want = True
    return out


def json_items(path: Path, items: list) -> list[tuple[int, Any]]:
    """(line where it starts, or 0, item) of each item of the JSON array `items` read from `path`."""
    line_of = json_item_lines(path)
    return [(line_of[n] if n < len(line_of) else 0, it) for n, it in enumerate(items)]


def numbered_classes(records: list[VideoRecord]) -> list[str]:
    """Class names "0".."N-1" up to the records' highest label: annotations without class names."""
    return [str(i) for i in range(max((r.label for r in records), default=-1) + 1)]


def stem_id(path: str) -> str:
    """A file's name without its video extension (formats whose official ids are file names)."""
    name = os.path.basename(path.rstrip("/"))
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in VIDEO_EXTS else name


def relative_id(root: Path, path: str) -> str:
    """A video's id where the format defines none: its path relative to the data root,
    '/'-separated, without a video extension (`Biking/clip1.avi` -> `Biking/clip1`; a frame folder
    keeps its name). An absolute path outside the root gives its file name (ids must not change
    when a data set moves; two such names alike are refused by `UniqueIds`)."""
    p = path.replace("\\", "/")
    if os.path.isabs(p):
        try:
            p = Path(p).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return stem_id(p)
    p = posixpath.normpath(p)
    stem, ext = posixpath.splitext(p)
    return stem if ext.lower() in VIDEO_EXTS else p


class UniqueIds:
    """Refuses a row whose video id an earlier row of the data set has: captions, similarity maps
    and every other store are keyed by the id, so two videos under one id would share them."""

    def __init__(self, rows: RowErrors, hint: str = ""):
        self.rows, self.hint = rows, hint
        self.first: dict[str, tuple[str, int, str]] = {}

    def add(self, vid: str, file: Path | str, line: int, path: str) -> bool:
        """True for a new id; else the row is reported (raise or skip, see `RowErrors`)."""
        prev = self.first.get(vid)
        if prev is None:
            self.first[vid] = (str(file), line, path)
            return True
        f0, l0, p0 = prev
        where = f"line {l0}" if f0 == str(file) else f"{f0}:{l0}"
        what = "the same video" if p0 == path else f"{p0} and {path}"
        self.rows.bad(file, line, f"video id {vid!r} already on {where} ({what}); captions and caches are "
                                  f"keyed by the id, so each row needs its own{self.hint}")
        return False


def row_width_problem(row: dict, fields: Sequence[str], needed: Optional[Iterable[str]] = None) -> Optional[str]:
    """Why a `csv.DictReader` row does not fit its header's `fields`, or None: values beyond the
    header (DictReader keeps them under the key None), or a row cut short (DictReader gives the
    missing columns None) that lacks one of `needed` (any column when None). One reason for the
    row, not one per missing value ("start_frame None is not an integer", ...: re-trial 29B M2)."""
    if row.get(None):
        return f"{len(row[None])} value(s) more than the header's {len(fields)} columns"
    cut = [c for c in fields if row.get(c) is None]
    if cut and (needed is None or any(c in cut for c in needed)):
        return f"{len(fields) - len(cut)} value(s), fewer than the header's {len(fields)} columns"
    return None


# --------------------------------------------------------------------------------------------
# Generic: CSV / JSONL with path,label[,caption] (+ optional video_id, start_frame, end_frame)
# --------------------------------------------------------------------------------------------


GENERIC_COLUMNS = ("path", "label", "caption", "video_id", "start_frame", "end_frame")


def _generic_rows(ann: Path, rows: RowErrors) -> list[tuple[int, dict]]:
    """(line, row dict) of a generic CSV (header with path,label) or JSONL file; bad rows go to
    `rows`; columns outside GENERIC_COLUMNS are named in a warning."""
    if not ann.is_file():
        raise AnnotationError(f"{ann}: annotation file not found")
    raw: list[tuple[int, dict]] = []
    if ann.suffix.lower() in (".jsonl", ".json"):
        for line, text in read_lines(ann):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                rows.bad(ann, line, f"not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                rows.bad(ann, line, "expected a JSON object")
                continue
            raw.append((line, obj))
    else:
        with open_text(ann) as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise AnnotationError(f"{ann}:1: header must name columns path,label (got {fields})")
            reader.fieldnames = fields
            for obj in reader:
                why = row_width_problem(obj, fields, needed=("path", "label"))  # cut after the label: still read
                if why:
                    rows.bad(ann, reader.line_num, why)
                    continue
                raw.append((reader.line_num, obj))
    unknown = sorted({k for _, o in raw for k in o if k is not None and k not in GENERIC_COLUMNS})
    if unknown:  # a misspelt start_frame would otherwise use the whole video without a word
        log.warning("%s: ignored column(s) %s; the known ones are %s", ann, ", ".join(unknown), ", ".join(GENERIC_COLUMNS))
    return raw


def read_generic(root: Path, ann: Path, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """`path,label[,caption]` CSV with a header, or JSONL objects with the same keys.

    Ids: the `video_id` column, else the path relative to `root` without its extension
    (`relative_id`); an id twice is a bad row naming both.

    Labels are ints, or class names looked up in `classes.txt` (next to the file or in root;
    one name per line, line order = id); without that file, names are numbered in sorted order.
    """
    raw = _generic_rows(ann, rows)
    classes = read_classes(ann.parent / "classes.txt") or read_classes(root / "classes.txt")
    by_name = {c: i for i, c in enumerate(classes or [])}
    if classes is None:  # names in the label column without a classes.txt: sorted order
        first: dict[str, int] = {}  # name -> line of its first row
        for line, o in raw:
            lab = str(o.get("label", "")).strip()
            if lab and not re.fullmatch(r"-?\d+", lab):  # an empty label is a bad row, not a class ""
                first.setdefault(lab, line)
        refuse_repeated_names(ann, [(w, n) for n, w in first.items()])
        names = sorted(first)
        by_name = {c: i for i, c in enumerate(names)} if names else {}
        if names:
            log.warning("%s: class names without a classes.txt are numbered in sorted order of this "
                        "file only; add classes.txt so every split shares the ids", ann)
    records: list[VideoRecord] = []
    ids = UniqueIds(rows, " (give the rows distinct values in a video_id column)")
    for line, obj in raw:
        path = str(obj.get("path") or "").strip()
        if not path:
            rows.bad(ann, line, "empty path")
            continue
        lab = str(obj.get("label", "")).strip()
        if re.fullmatch(r"-?\d+", lab):
            label = int(lab)
        elif lab in by_name:
            label = by_name[lab]
        else:
            rows.bad(ann, line, f"label {lab!r} is neither an integer nor a known class name")
            continue
        if label < 0 or (classes is not None and label >= len(classes)):
            rows.bad(ann, line, f"label {label} out of range" + (f" [0, {len(classes)})" if classes else ""))
            continue
        vid = str(obj.get("video_id") or "").strip() or relative_id(root, path)
        start = _opt_int(obj.get("start_frame"), ann, line, f"video {vid!r}: start_frame", rows)
        end = _opt_int(obj.get("end_frame"), ann, line, f"video {vid!r}: end_frame", rows)
        if start is False or end is False:
            continue
        caption = obj.get("caption")
        caption = str(caption) if caption not in (None, "") else None
        full = path if os.path.isabs(path) else str(root / path)
        why = range_problem(start, end)
        if why:
            rows.bad(ann, line, f"video {vid!r}: {why}")
            continue
        if not ids.add(vid, ann, line, path):
            continue
        records.append(VideoRecord(full, label, vid, start, end, caption))
    if classes is None:
        n = max((r.label for r in records), default=-1) + 1
        inv = {i: c for c, i in by_name.items()}
        classes = [inv.get(i, str(i)) for i in range(n)]
    return records, classes


def _opt_int(v, ann: Path, line: int, what: str, rows: RowErrors):
    if v in (None, ""):
        return None
    r = parse_int(v, ann, line, what, rows)
    return False if r is None else r


def _finite_number(word: str) -> bool:
    """Whether `word` parses as a finite number (`float`: digits of any script, sign, decimal point,
    exponent); "nan" / "inf" are words."""
    try:
        return math.isfinite(float(word))
    except ValueError:
        return False


def numbers_only(name: str) -> bool:
    """Whether a class name is numbers only: the words it shows as text (`class_text`: `_` a space,
    brackets dropped) all parse as finite numbers (`_finite_number`): "0", "01", "3 8", and "1.0",
    "-1", "1e3", "0_" (re-trial 32A S6: a classes.txt written from a float label column passed); a
    blank name too."""
    return all(_finite_number(w) for w in class_text(str(name)).split())


def unnamed_classes(class_names: list[str]) -> bool:
    """True when every name is numbers only (`numbers_only`): "0".."N-1" (no classes.txt, a
    vocabulary file missing), EPIC's `verb_class noun_class` ("3 8") of a CSV without verb / noun
    columns (re-trial 29B S3), "1.0" .. of a float label column (re-trial 32A S6); nothing that
    needs names (the oracle and vision-free captions) may use them."""
    return bool(class_names) and all(numbers_only(c) for c in class_names)


def refuse_unnamed_classes(class_names: Sequence[str], listed: str, need: str, how: str,
                           source: Optional[tuple[Path, str]] = None) -> None:
    """AnnotationError, in one line, when the classes have no names (numbers only,
    `unnamed_classes`) and something embeds or shows them as text: oracle and vision-free captions,
    class retrieval's "a video of {}." (re-trial 30B S2: it embedded "a video of 0." and reported
    recalls), class descriptions. `need`: who needs names, and any way round it. The one home of
    this refusal: every command that makes text of class names calls it.

    source: (the file the names were read from, where in it the names go: "there", "in its `verb`
    and `noun` columns"): the message names that file (a classes.txt of numbers beside the list
    was answered "put classes.txt beside it": re-trial 30A M2). Without one, it names the list
    (`listed`: the list, or key=list) and says how to give names (`how`:
    `tgmae.data.formats.class_names_from`)."""
    if not unnamed_classes(list(class_names)):
        return
    shown = ", ".join(repr(str(c)) for c in class_names[:3]) + (", ..." if len(class_names) > 3 else "")
    if source is not None:
        raise AnnotationError(f"{source[0]}: its names are numbers only ({shown}); {need}: give the classes' "
                              f"names {source[1]}")
    raise AnnotationError(f"{listed}: its classes have no names (numbers only: {shown}); {need}: {how}")


def classes_file(root: Path, ann: Path) -> Optional[Path]:
    """The classes.txt a K400 `path label` list takes its class names from: beside the list, else
    in the root; None without one."""
    return next((p for p in (ann.parent / "classes.txt", root / "classes.txt") if p.is_file()), None)


def class_key(name: str) -> str:
    """What makes two class names one class: `name` without case, spaces, underscores and SSv2's
    brackets, so `riding bike` = `Riding Bike` = `riding_bike` = `RidingBike`. Class folders
    (`first_existing`'s `riding_bike/`, UCF101's case-blind ones) and the description lookup
    (`tgmae.captions.sources.match_classes`) match names so."""
    return re.sub(r"[\s_\[\]]+", "", name).casefold()


def class_text(name: str) -> str:
    """A class name as words (oracle captions, class prompts, description prompts): `ApplyEyeMakeup` -> `apply eye makeup`, `playing_guitar` ->
    `playing guitar`, SSv2 `Pushing [something] left` -> `Pushing something left`."""
    text = name.replace("_", " ").replace("[", "").replace("]", "").strip()
    if " " not in text and re.search(r"[a-z][A-Z]", text):
        text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text).lower()
    return re.sub(r"\s+", " ", text)


def refuse_repeated_names(file: Path | str, entries: Iterable[tuple[Any, str]], unit: str = "lines",
                          key: Callable[[str], str] = class_key) -> None:
    """AnnotationError naming `file`, both names and both places when a class name comes twice,
    the same or differing only in case, spaces or underscores (`class_key`).

    entries: (where, name) in file order, `where` a line / entry / id number shown after `unit`
    ("lines 1 and 3"); key: what makes two names the same.
    Every reader of class names calls it: predictions, class alignment and an export's label2id
    are keyed by the name, and folders and descriptions are matched by `class_key`, so a repeat
    would silently send one class's scores, videos or descriptions to another."""
    seen: dict[str, tuple[Any, str]] = {}
    for where, name in entries:
        k = key(name)
        if k in seen and seen[k][1] == name:
            raise AnnotationError(f"{file}: class name {name!r} twice ({unit} {seen[k][0]} and {where}); "
                                  "each class needs its own name")
        if k in seen:
            raise AnnotationError(f"{file}: class names {seen[k][1]!r} and {name!r} ({unit} {seen[k][0]} and {where}) "
                                  "differ only in case, spaces or underscores, which class folders and "
                                  "descriptions are matched without; give each class a distinct name")
        seen[k] = (where, name)


def read_classes(path: Path) -> Optional[list[str]]:
    """Class names of a `classes.txt` (one per line, line order = id), None without the file.
    Line order is the label, so an empty line before the last name is refused naming file:line
    (dropping it would give every later class the next label); blank lines at the end, CRLF, a
    BOM and spaces around a name are fine. A name twice is refused (`refuse_repeated_names`)."""
    if not path.is_file():
        return None
    lines = read_lines(path)
    if lines and lines[-1][0] != len(lines):  # line numbers skip one: an empty line among the names
        gap = next(i for i, (n, _) in enumerate(lines, 1) if n != i)
        raise AnnotationError(f"{path}:{gap}: empty line among the class names; line order is the label, "
                              "so remove it (or name the class it stands for)")
    refuse_repeated_names(path, lines)
    return [t for _, t in lines]
