"""Annotation layouts -> `VideoRecord`s + class names: `load_annotations(format, ...)` over the
generic CSV/JSONL reader (`tgmae.data.annotations`) and the six public datasets' layouts here.

Kinetics-400 (official CSV, VideoMAE lists), Something-Something v2 (labels.json + split json),
UCF101 (classInd + train/test lists), HMDB51 (per-class split files), Diving48 V2 (json +
vocabulary), EPIC-Kitchens-55 (action CSV over RGB frame folders). Each returns
(records, class_names) and reports bad rows through `RowErrors` (file:line).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tgmae.config import DATASET_FORMATS, ConfigError, annotation_path
from tgmae.data.annotations import (
    UNLABELLED, AnnotationError, RowErrors, UniqueIds, VideoRecord, classes_file, first_existing, json_items, load_json,
    numbered_classes, parse_int, range_problem, read_classes, read_generic, read_lines, refuse_repeated_names,
    refuse_unnamed_classes, relative_id, row_width_problem, stem_id, subset_kind, unnamed_classes,
)
from tgmae.textfile import open_text

# Official clip names, kept as ids: Kinetics `{youtube_id}_{start:06d}_{end:06d}`, UCF101 `v_Class_gNN_cNN`
_K400_NAME = re.compile(r".+_\d{6}_\d{6}")
_UCF101_NAME = re.compile(r"v_[A-Za-z0-9]+_g\d+_c\d+")


# the file read in a folder of split files, by format: (split, subset kind) -> its name
_SPLIT_FILES: dict[str, Callable[[int, str], str]] = {
    "ssv2": lambda split, kind: {"train": "train.json", "val": "validation.json", "test": "test.json"}[kind],
    "ucf101": lambda split, kind: f"{'train' if kind == 'train' else 'test'}list{split:02d}.txt",
    "diving48": lambda split, kind: f"Diving48_V2_{'train' if kind == 'train' else 'test'}.json",
    "epic55": lambda split, kind: "EPIC_train_action_labels.csv",
}


# what gives a format's classes names, for the refusal of classes without them (`unnamed_classes`)
_CLASS_NAMES_FROM = {
    "epic55": "give it `verb` and `noun` columns (the names of verb_class and noun_class)",
    "diving48": "put Diving48_vocab.json beside it",
    "hmdb51": "name its split files after the classes (<class>_test_split<N>.txt)",
}


def class_names_from(format: str) -> str:
    """How to give the classes of `format`'s annotations names, where they have none (numbers
    only): a format's own file or columns, else classes.txt beside the list."""
    return _CLASS_NAMES_FROM.get(format, "put classes.txt (one name per line, line order = label) beside it")


def require_class_names(class_names: Sequence[str], format: str, root: str | Path, annotations: str | Path,
                        need: str, *, split: int = 1, subset: str = "train", listed: str = "") -> None:
    """AnnotationError when the classes of `format`'s `annotations` have no names (numbers only):
    `tgmae.data.annotations.refuse_unnamed_classes`, saying how this format names them
    (`class_names_from`). need: who needs the names (e.g. "oracle and vision-free captions need
    class names"); listed: the list as the message names it (default `annotations`)."""
    if unnamed_classes(list(class_names)):  # only then are the files looked at
        source = class_names_source(format, root, annotations, split, subset)
        refuse_unnamed_classes(class_names, listed or str(annotations), need, class_names_from(format), source)


def class_names_source(format: str, root: str | Path, annotations: str | Path, split: int = 1,
                       subset: str = "train") -> Optional[tuple[Path, str]]:
    """(the file `load_annotations` read the classes' names from, where in it they go) for the
    refusal of names that are numbers only, which names it (re-trial 30A M2): a csv's classes.txt
    (beside the list, else in the root, as `read_generic` takes it), a K400 list's classes.txt or
    an official CSV's (else its `label` column), UCF101 classInd.txt, SSv2 labels.json, Diving48's
    vocabulary, an EPIC CSV's `verb` / `noun` columns (the training CSV's beside it). None where no
    file gave names: classes numbered by label, HMDB51's split file names (`class_names_from` says
    how to give them)."""
    root_p = Path(root) if str(root) else Path(".")
    ann = _resolve(root_p, annotations)
    if not ann.exists():
        return None
    folder, data_file = _split_file(ann, format, split, subset) if format in _SPLIT_FILES else (ann.parent, ann)
    if format == "k400" and _k400_official(ann):
        beside = ann.parent / "classes.txt"
        return (beside, "there") if beside.is_file() else (ann, "in its `label` column")
    if format == "epic55":  # the names of the training CSV beside it, else its own (`read_epic55`)
        train = folder / "EPIC_train_action_labels.csv"
        data_file = train if train.is_file() else data_file
        with open_text(data_file) as f:
            fields = csv.DictReader(f).fieldnames or []
        return (data_file, "in its `verb` and `noun` columns") if "verb" in fields and "noun" in fields else None
    if format == "k400":
        found = classes_file(root_p, ann)
    elif format == "csv":  # `read_generic` passes over an empty classes.txt beside the list
        found = next((p for p in (ann.parent / "classes.txt", root_p / "classes.txt") if read_classes(p)), None)
    else:
        named = {"ucf101": ["classInd.txt"], "ssv2": ["labels.json"], "diving48": DIVING48_VOCABS}.get(format, ())
        found = next((folder / n for n in named if (folder / n).is_file()), None)
    return (found, "there") if found else None


def class_names_origin(format: str, root: str | Path, annotations: str | Path, split: int = 1,
                       subset: str = "train") -> str:
    """Where the classes' names of `format`'s `annotations` come from, as a message names it
    (re-trial 32A M3: a Diving48 vocabulary edit was blamed on "its classes.txt"): the file of
    `class_names_source` (with the columns it read: "FILE in its `verb` and `noun` columns"),
    HMDB51's split file names, or "" where nothing names them (classes numbered by label, no
    annotations given)."""
    source = class_names_source(format, root, annotations, split, subset) if str(annotations) else None
    if source is None:
        return "the names of its split files (<class>_test_split<N>.txt)" if format == "hmdb51" else ""
    path, where = source
    return str(path) if where == "there" else f"{path} {where}"


def _split_file(ann: Path, fmt: str, split: int, subset: str) -> tuple[Path, Path]:
    """(the annotation folder, the file to read): `ann` itself when a file, else the format's
    split file for (split, subset) in it (`_SPLIT_FILES`)."""
    folder = ann if ann.is_dir() else ann.parent
    return folder, ann if ann.is_file() else folder / _SPLIT_FILES[fmt](split, subset_kind(subset))


def _file_to_read(ann: Path, fmt: str, split: int, subset: str) -> tuple[Path, Path]:
    """`_split_file`, and AnnotationError when a folder's split file is missing that says why a
    file not named is read: the subset's list in the folder (for val / test, the list a run reads
    beside its train list when data.val_annotations is empty)."""
    folder, path = _split_file(ann, fmt, split, subset)
    if ann.is_dir() and not path.exists():
        kind = subset_kind(subset)
        why = (f"the {kind} list a run reads from {folder}, beside its train list, when data.val_annotations is "
               "empty; set data.val_annotations to the list to read, or put the file there" if kind != "train"
               else f"the train list of the {fmt} split folder {folder}")
        raise AnnotationError(f"{path}: annotation file not found ({why})")
    return folder, path


def list_file(format: str, root: str | Path, annotations: str | Path, split: int = 1, subset: str = "train") -> Path:
    """The file `load_annotations` reads for these arguments, to name it: `annotations` itself
    when a file; in a folder, the format's split file (testlist01.txt for UCF101 val, split 1);
    a folder of many files (HMDB51: one per class) or of another format as given."""
    ann = _resolve(Path(root) if str(root) else Path("."), annotations)
    if ann.is_dir() and format in _SPLIT_FILES:
        return _split_file(ann, format, split, subset)[1]
    return ann


# --------------------------------------------------------------------------------------------
# Kinetics-400: official CSV, or VideoMAE's `path label` lists
# --------------------------------------------------------------------------------------------


def read_k400(root: Path, ann: Path, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """Official `label,youtube_id,time_start,time_end,split` CSV (clips named
    `{youtube_id}_{start:06d}_{end:06d}.mp4`, flat or in per-class folders; test.csv has no label
    column: its records are UNLABELLED), or a VideoMAE list (`path label` per line, space
    separated, no header)."""
    if _k400_official(ann):
        return _read_k400_official(root, ann, rows)
    return read_path_label_list(root, ann, rows)


def _k400_official(ann: Path) -> bool:
    """Whether a K400 annotation file is the official CSV (a header with youtube_id, time_start),
    not a VideoMAE `path label` list."""
    lines = read_lines(ann)
    header = lines[0][1].replace(" ", "").split(",") if lines else []
    return "youtube_id" in header and "time_start" in header


def _read_k400_official(root: Path, ann: Path, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    with open_text(ann) as f:
        reader = csv.DictReader(f)
        raw = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in r.items() if k}) for r in reader]
    classes = _k400_classes(ann, raw)
    by_name = {c: i for i, c in enumerate(classes)}
    records = []
    ids = UniqueIds(rows)
    labelled = any("label" in r for _, r in raw)
    for line, r in raw:
        yid, label = r.get("youtube_id", ""), r.get("label", "") if labelled else None
        if not yid or label == "":
            rows.bad(ann, line, "missing youtube_id or label")
            continue
        s = parse_int(r.get("time_start", ""), ann, line, "time_start", rows)
        e = parse_int(r.get("time_end", ""), ann, line, "time_end", rows) if s is not None else None
        if s is None or e is None:
            continue
        if label is not None and label not in by_name:
            rows.bad(ann, line, f"label {label!r} not in classes.txt")
            continue
        name = f"{yid}_{s:06d}_{e:06d}"
        if not ids.add(name, ann, line, name):
            continue
        folders = [f"{label}/{name}.mp4", f"{label.replace(' ', '_')}/{name}.mp4"] if label is not None else []
        path = first_existing(root, [name + ".mp4", *folders, name + ".mkv", name + ".webm"])
        records.append(VideoRecord(path, UNLABELLED if label is None else by_name[label], name))
    return records, classes


def _k400_classes(ann: Path, raw: list) -> list[str]:
    """`classes.txt` next to the file, else the sorted union of labels over this file and its
    official siblings (train/validate/val/test.csv), so every split shares the class ids; two
    labels differing only in case or spacing are refused naming a row of each
    (`refuse_repeated_names`)."""
    listed = read_classes(ann.parent / "classes.txt")
    if listed is not None:
        return listed
    first: dict[str, str] = {}  # label -> `file:line` of its first row
    for line, r in raw:
        first.setdefault(r.get("label", ""), f"{ann.name}:{line}")
    for sib in ("train.csv", "validate.csv", "val.csv", "test.csv"):
        p = ann.parent / sib
        if p.is_file() and p != ann:
            with open_text(p) as f:
                reader = csv.DictReader(f)
                if "label" in (reader.fieldnames or []) and "youtube_id" in (reader.fieldnames or []):
                    for r in reader:
                        first.setdefault((r.get("label") or "").strip(), f"{p.name}:{reader.line_num}")
    first.pop("", None)
    refuse_repeated_names(ann, [(w, n) for n, w in first.items()], unit="rows")
    return sorted(first)


def read_path_label_list(root: Path, ann: Path, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """VideoMAE's lists: `path label` (space separated; the path may itself contain spaces). Ids:
    the file name when it is an official Kinetics clip name, else the root-relative path. Class
    names: `classes.txt` (one per line, line order = label) beside the list or in the root; without
    one the classes are numbered "0".."N-1" (`unnamed_classes`)."""
    names_file = classes_file(root, ann)
    names = read_classes(names_file) if names_file else None
    records = []
    ids = UniqueIds(rows)
    for line, text in read_lines(ann):
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            rows.bad(ann, line, "expected `path label`")
            continue
        label = parse_int(parts[1], ann, line, "label", rows)
        if label is None:
            continue
        if label < 0 or (names is not None and label >= len(names)):
            why = "is negative" if label < 0 else f"out of range [0, {len(names)}) of {names_file}"
            rows.bad(ann, line, f"label {label} {why}")
            continue
        path = parts[0]
        full = path if os.path.isabs(path) else str(root / path)
        vid = stem_id(path) if _K400_NAME.fullmatch(stem_id(path)) else relative_id(root, path)
        if ids.add(vid, ann, line, path):
            records.append(VideoRecord(full, label, vid))
    return records, names if names is not None else numbered_classes(records)


# --------------------------------------------------------------------------------------------
# Something-Something v2
# --------------------------------------------------------------------------------------------


def read_ssv2(root: Path, ann: Path, subset: str, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """`labels.json` (template -> id string) + `train.json` / `validation.json` (id, label,
    template with [something], placeholders). Videos are `{root}/{id}.webm`; the filled-in
    `label` sentence becomes the record's caption. A list without any template (test.json) is read
    unlabelled; in a labelled one a row without its template is a bad row (it was read unlabelled,
    and training crashed on its label -1: re-trial 29B T1)."""
    folder, data_file = _file_to_read(ann, "ssv2", 1, subset)
    labels_file = folder / "labels.json"
    ids, classes = _ssv2_classes(labels_file)
    ids = _by_unbracketed(labels_file, ids)
    items = load_json(data_file)
    labelled = any(isinstance(it, dict) and "template" in it for it in items) if isinstance(items, list) else True
    records = []
    seen = UniqueIds(rows)
    for line, it in json_items(data_file, items):
        if not isinstance(it, dict):
            rows.bad(data_file, line, f"expected a JSON object, got a {type(it).__name__}")
            continue
        raw_id, template = it.get("id", ""), it.get("template")
        vid = str(raw_id).strip() if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
        if not vid:
            rows.bad(data_file, line, f"id {raw_id!r}: expected a string or an integer" if vid is None
                     else "item without id")
            continue
        if not seen.add(vid, data_file, line, vid):
            continue
        if template is None and not labelled:  # test.json: ids only, no labels
            label = UNLABELLED
        elif template is None:
            rows.bad(data_file, line, f"video {vid!r}: no template (the other rows have theirs)")
            continue
        elif not isinstance(template, str):
            rows.bad(data_file, line, f"template {template!r}: expected a string")
            continue
        else:
            key = _unbracketed(template)
            if key not in ids:
                rows.bad(data_file, line, f"template {template!r} not in {labels_file} (with or without "
                                          "its brackets)")
                continue
            label = ids[key]
        path = first_existing(root, [f"{vid}.webm", f"{vid}.mp4"])
        records.append(VideoRecord(path, label, vid, caption=it.get("label")))
    return records, classes


def _unbracketed(template: str) -> str:
    """An SSv2 template without its placeholders' brackets: train.json's `template` writes them
    ("Putting [something] on [something]"), the shipped labels.json does not."""
    return template.replace("[", "").replace("]", "")


def _by_unbracketed(labels_file: Path, ids: dict[str, int]) -> dict[str, int]:
    """labels.json's {template: id} keyed by the template without brackets, so a labels.json written
    with them (as train.json spells templates) matches too; AnnotationError naming two templates
    that differ only in brackets (one key for two classes)."""
    out: dict[str, int] = {}
    first: dict[str, str] = {}
    for name, i in ids.items():
        key = _unbracketed(name)
        if key in out:
            raise AnnotationError(f"{labels_file}: templates {first[key]!r} and {name!r} differ only in brackets "
                                  "(train.json's rows match both); keep one")
        out[key], first[key] = i, name
    return out


def _ssv2_classes(labels_file: Path) -> tuple[dict[str, int], list[str]]:
    """({template: id}, class names in id order) of an SSv2 `labels.json`: an object mapping each
    template to its own integer id (a string, as shipped), the ids 0..N-1. AnnotationError naming
    the file otherwise (a repeated id would silently merge two classes)."""
    objects: list[list] = []  # each object's (key, value) pairs, innermost first: a key twice is kept
    templates = load_json(labels_file, object_pairs_hook=lambda kv: objects.append(kv) or dict(kv))
    if not isinstance(templates, dict):
        raise AnnotationError(f"{labels_file}: expected a JSON object of template -> id, "
                              f"got a {type(templates).__name__}")
    entries = []
    for name, v in objects[-1]:
        try:
            if isinstance(v, (bool, float)):  # int(True) is 1, int(1.9) is 1
                raise ValueError
            entries.append((int(str(v).strip()), name))
        except ValueError:
            raise AnnotationError(f"{labels_file}: template {name!r} has id {v!r}, not an integer") from None
    refuse_repeated_names(labels_file, entries, unit="ids")
    ids: dict[str, int] = {}
    by_id: dict[int, str] = {}
    for i, name in entries:
        if i in by_id:
            raise AnnotationError(f"{labels_file}: templates {by_id[i]!r} and {name!r} share id {i}; "
                                  "each class needs its own id")
        ids[name], by_id[i] = i, name
    missing = [i for i in range(len(ids)) if i not in by_id]
    if missing:
        raise AnnotationError(f"{labels_file}: ids must be 0..{len(ids) - 1}; no template has id {missing[0]}"
                              f" (highest id {max(by_id)})")
    return ids, [by_id[i] for i in range(len(ids))]


# --------------------------------------------------------------------------------------------
# UCF101 and HMDB51 split files
# --------------------------------------------------------------------------------------------


def read_ucf101(root: Path, ann: Path, split: int, subset: str, rows: RowErrors
                ) -> tuple[list[VideoRecord], list[str]]:
    """`ucfTrainTestlist/` with classInd.txt (`1 ApplyEyeMakeup`), trainlistNN.txt
    (`Class/v_Class_g08_c01.avi 1`) and testlistNN.txt (`Class/v_Class_g01_c01.avi`)."""
    folder, list_path = _file_to_read(ann, "ucf101", split, subset)
    class_file = folder / "classInd.txt"
    classes, by_name, lines = [], {}, []
    for line, text in read_lines(class_file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(f"{class_file}:{line}: expected `id ClassName`")
        if int(parts[0]) != len(classes) + 1:
            raise AnnotationError(f"{class_file}:{line}: class ids must be 1, 2, 3, ... in order")
        classes.append(parts[1])
        by_name[parts[1].lower()] = len(classes) - 1
        lines.append(line)
    # class folders are matched case-blind, so `Archery` and `archery` would be one class
    refuse_repeated_names(class_file, zip(lines, classes))
    records = []
    ids = UniqueIds(rows)
    for line, text in read_lines(list_path):
        parts = text.split()
        rel = parts[0].replace("\\", "/")  # lists written on Windows: `Class\\v_Class_g01_c01.avi`
        folder_name = rel.split("/")[0]
        if folder_name.lower() not in by_name:
            rows.bad(list_path, line, f"class folder {folder_name!r} not in classInd.txt")
            continue
        label = by_name[folder_name.lower()]
        if len(parts) > 1:
            given = parse_int(parts[1], list_path, line, "label", rows)
            if given is None:
                continue
            if given - 1 != label:
                rows.bad(list_path, line, f"label {given} disagrees with class folder {folder_name!r}")
                continue
        vid = stem_id(rel) if _UCF101_NAME.fullmatch(stem_id(rel)) else relative_id(root, rel)
        if ids.add(vid, list_path, line, rel):
            records.append(VideoRecord(str(root / rel), label, vid))
    return records, classes


def read_hmdb51(root: Path, ann: Path, split: int, subset: str, rows: RowErrors
                ) -> tuple[list[VideoRecord], list[str]]:
    """`testTrainMulti_7030_splits/<class>_test_split<N>.txt`: `name.avi 1` (1 train, 2 test,
    0 unused). Videos are `{root}/<class>/<name>.avi`; classes in sorted order; ids are the names
    (as the split files give them), a name twice is refused. A split file named (rather than the
    folder) must be of `split`: another split's is refused naming data.split, as a UCF101 list
    of another split is (`tgmae.data.dataset.subset_annotations`)."""
    folder = ann if ann.is_dir() else ann.parent
    named = re.fullmatch(r"(.+)_test_split(\d+)\.txt", ann.name) if ann.is_file() else None
    if named and int(named.group(2)) != split:
        n = int(named.group(2))
        raise ConfigError(f"data.split={split}: {ann.name} is a split-{n} file, but the split-{split} files of its "
                          f"folder would be read; set data.split={n} (tgmae data check / prepare: --split {n})")
    pat = re.compile(rf"^(.+)_test_split{split}\.txt$")
    files = sorted(p for p in folder.iterdir() if pat.match(p.name))
    if not files:
        raise AnnotationError(f"{folder}: no *_test_split{split}.txt files")
    classes = [pat.match(p.name).group(1) for p in files]
    refuse_repeated_names(folder, [(p.name, c) for p, c in zip(files, classes)], unit="files")
    want = 1 if subset_kind(subset) == "train" else 2
    records = []
    ids = UniqueIds(rows)
    for label, (cls, f) in enumerate(zip(classes, files)):
        for line, text in read_lines(f):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                rows.bad(f, line, "expected `name.avi 0|1|2`")
                continue
            if int(parts[1]) == want and ids.add(stem_id(parts[0]), f, line, f"{cls}/{parts[0]}"):
                records.append(VideoRecord(str(root / cls / parts[0]), label, stem_id(parts[0])))
    return records, classes


# --------------------------------------------------------------------------------------------
# Diving48 V2
# --------------------------------------------------------------------------------------------


DIVING48_VOCABS = ("Diving48_vocab.json", "Diving48_V2_vocab.json")  # the class names, either name
DIVING48_SHAPE = ('one JSON list of objects [{"vid_name": ..., "label": ..., "start_frame": ..., '
                  '"end_frame": ...}, ...]')


def read_diving48(root: Path, ann: Path, subset: str, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """`Diving48_V2_train.json` / `_test.json` (vid_name, label, start_frame, end_frame) and
    `Diving48_vocab.json` (per class: [takeoff, somersault, twist, flight]). Videos are
    `{root}/rgb/{vid_name}.mp4` or `{root}/{vid_name}.mp4`."""
    folder, data_file = _file_to_read(ann, "diving48", 1, subset)
    vocab_file = next((folder / n for n in DIVING48_VOCABS if (folder / n).is_file()), None)
    items = load_json(data_file, shape=DIVING48_SHAPE)
    if not isinstance(items, list):  # one object per line reads as one object when there is one line
        what = "one JSON object (one object per line is JSON lines)" if isinstance(items, dict) else "a single JSON value"
        raise AnnotationError(f"{data_file}: holds {what}; expected {DIVING48_SHAPE}")
    classes = _diving48_classes(vocab_file) if vocab_file else None
    records = []
    ids = UniqueIds(rows)
    for line, it in json_items(data_file, items):
        if not isinstance(it, dict):
            rows.bad(data_file, line, f"expected a JSON object, got a {type(it).__name__}")
            continue
        name = it.get("vid_name")
        label = it.get("label")
        video = f"video {name!r}: " if isinstance(name, str) and name else ""  # which row, beside file:line
        if not name or not isinstance(name, str) or not _json_int(label):
            rows.bad(data_file, line, f"{video}item needs vid_name and an integer label (got label "
                                      f"{_as_json(label)})")
            continue
        if label < 0 or (classes is not None and label >= len(classes)):
            rows.bad(data_file, line, f"{video}label {label} out of range")
            continue
        start, end = it.get("start_frame"), it.get("end_frame")
        odd = next((k for k, v in (("start_frame", start), ("end_frame", end)) if v is not None and not _json_int(v)), None)
        if odd:
            rows.bad(data_file, line, f"{video}{odd} {_as_json(it[odd])} is not an integer")
            continue
        why = range_problem(start, end)
        if why:
            rows.bad(data_file, line, f"video {name!r}: {why}")
            continue
        path = first_existing(root, [f"rgb/{name}.mp4", f"{name}.mp4"])
        if ids.add(name, data_file, line, name):
            records.append(VideoRecord(path, label, name, start, end))
    return records, classes if classes is not None else numbered_classes(records)


def _as_json(v) -> str:
    """`v` as the file spells it (true, null, "0"), not as Python prints it (True, None, '0')."""
    return json.dumps(v, ensure_ascii=False)


def _json_int(v) -> bool:
    """A JSON integer: not a bool (True is an int to Python, but no label) nor a float."""
    return isinstance(v, int) and not isinstance(v, bool)


def _diving48_classes(vocab_file: Path) -> list[str]:
    """Class names of `Diving48_vocab.json`: a list with, per class id, its list of words
    ([takeoff, somersault, twist, flight]) joined by spaces. AnnotationError naming the file and
    entry for anything else (a string entry was spelt out letter by letter) or a name twice."""
    vocab = load_json(vocab_file)
    if not isinstance(vocab, list):
        raise AnnotationError(f"{vocab_file}: expected a list of word lists, got a {type(vocab).__name__}")
    for i, words in enumerate(vocab):
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise AnnotationError(f"{vocab_file}: entry {i} (class {i}) is {words!r}; expected a list of words "
                                  "such as [\"Back\", \"15som\", \"05Twis\", \"FREE\"]")
    names = [" ".join(w.strip() for w in words) for words in vocab]
    refuse_repeated_names(vocab_file, enumerate(names), unit="entries")
    return names


# --------------------------------------------------------------------------------------------
# EPIC-Kitchens-55 over RGB frame folders
# --------------------------------------------------------------------------------------------


def read_epic55(root: Path, ann: Path, subset: str, rows: RowErrors) -> tuple[list[VideoRecord], list[str]]:
    """`EPIC_train_action_labels.csv` over `{root}/{participant}/{video_id}/frame_%010d.jpg`.

    Label = action id: index of (verb_class, noun_class) in the sorted set of pairs of the
    training CSV (the file next to `ann` when present, so any split shares the ids). Targets
    `verb` and `noun` ride along; the narration becomes the caption. 1-based inclusive
    start/stop frames become 0-based [start, end). Ids: the `uid`, else the segment's
    `{video_id}_{start_frame}_{stop_frame}` (`_epic_row`).
    """
    folder, data_file = _file_to_read(ann, "epic55", 1, subset)
    train_file = folder / "EPIC_train_action_labels.csv"
    parsed = _epic_rows(data_file, rows)
    use_own = not train_file.is_file() or train_file == data_file
    base = parsed if use_own else _epic_rows(train_file, RowErrors("skip", None))
    pairs = sorted({(r.verb, r.noun) for r in base})
    action_of = {p: i for i, p in enumerate(pairs)}
    names: dict[tuple[int, int], tuple[int, str]] = {}
    for r in base:
        names.setdefault((r.verb, r.noun), (r.line, r.name))
    # an action's name is its first row's `verb noun`: two pairs of one name would be one class to a reader
    refuse_repeated_names(data_file if use_own else train_file, sorted(names.values()))
    records = []
    ids = UniqueIds(rows, " (give the rows distinct values in a uid column)")
    for r in parsed:
        if not ids.add(r.uid, data_file, r.line, f"{r.video}[{r.start}:{r.stop}]"):
            continue
        if (r.verb, r.noun) not in action_of:
            rows.bad(data_file, r.line, f"(verb {r.verb}, noun {r.noun}) pair does not occur in {train_file.name}")
            continue
        path = first_existing(root, _epic_folders(r))
        records.append(VideoRecord(path, action_of[(r.verb, r.noun)], r.uid, r.start - 1, r.stop,
                                   caption=r.narration, targets={"verb": r.verb, "noun": r.noun}))
    _refuse_missing_layout(root, data_file, parsed, records)
    return records, [names[p][1] for p in pairs]


def _epic_folders(r: "_EpicRow") -> list[str]:
    """The places under the root where a row's frame folder may be, the first the usual one."""
    return [f"{r.participant}/{r.video}", r.video, f"rgb/train/{r.participant}/{r.video}",
            f"train/{r.participant}/{r.video}"]


def _refuse_missing_layout(root: Path, data_file: Path, parsed: list["_EpicRow"], records: list[VideoRecord]) -> None:
    """AnnotationError when no record's frame folder is there (the root has another layout, or is
    not the frames' root): one line naming the folder the first row needs, instead of one "not
    found" per video."""
    if not records or any(os.path.exists(r.path) for r in records):
        return
    first = parsed[0]
    places = _epic_folders(first)
    raise AnnotationError(
        f"{data_file}: none of its {len(records)} rows' EPIC-Kitchens-55 frame folders is under {root} (data.root / "
        f"--root); line {first.line} needs {root / places[0]}/frame_0000000001.jpg, ... (or the folder "
        f"{', '.join(str(root / p) for p in places[1:])})")


@dataclass
class _EpicRow:
    line: int
    uid: str
    participant: str
    video: str
    start: int  # 1-based, inclusive
    stop: int  # 1-based, inclusive
    verb: int
    noun: int
    name: str
    narration: Optional[str]


_EPIC_NEED = ("participant_id", "video_id", "start_frame", "stop_frame", "verb_class", "noun_class")


def _epic_rows(path: Path, rows: RowErrors) -> list[_EpicRow]:
    """The rows of an EPIC action CSV that read; each bad one is one entry of `rows` (file:line:
    a row of another width than the header, an empty participant_id / video_id, the first value
    that is no integer, a bad frame range). AnnotationError when the file or a needed column is
    missing. Class names are `verb noun`; without those columns they are the class numbers
    `verb_class noun_class`, which `unnamed_classes` takes for no names (re-trial 29B S3)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    out: list[_EpicRow] = []
    with open_text(path) as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in _EPIC_NEED if c not in fields]
        if missing:
            raise AnnotationError(f"{path}:1: header lacks columns {missing}")
        named = "verb" in fields and "noun" in fields
        for r in reader:
            row = _epic_row(path, reader.line_num, r, fields, named, rows)
            if row is not None:
                out.append(row)
    return out


def _epic_row(path: Path, line: int, r: dict, fields: list[str], named: bool, rows: RowErrors) -> Optional[_EpicRow]:
    """One `csv.DictReader` row of an EPIC CSV -> `_EpicRow`, or None after one `rows.bad`.

    Id: the `uid`, else `{video_id}_{start_frame}_{stop_frame}` (the CSV's 1-based frames), which
    names the segment, so rows reordered (sorted, rewritten by pandas) keep their ids and a text
    store keyed by id keeps each segment's text (the line number did not: re-trial 29B S1)."""
    why = row_width_problem(r, fields)  # a cut row: one bad row, not one per missing value (re-trial 29B M2)
    if why:
        rows.bad(path, line, why)
        return None
    empty = next((c for c in ("participant_id", "video_id") if not r[c].strip()), None)
    if empty:  # the frame folder would be looked for at the file-system root (re-trial 29B M3)
        rows.bad(path, line, f"{empty} is empty")
        return None
    video = r["video_id"].strip()
    vals = []
    for c in _EPIC_NEED[2:]:
        v = parse_int(r[c], path, line, f"video {video!r}: {c}", rows)
        if v is None:  # said once, by the first value that is no integer
            return None
        vals.append(v)
    s, e, v, n = vals
    if s < 1 or e < s:
        rows.bad(path, line, f"bad frame range start_frame={s} stop_frame={e}")
        return None
    uid = str(r.get("uid") or "").strip() or f"{video}_{s}_{e}"
    name = f"{r['verb'] or v} {r['noun'] or n}" if named else f"{v} {n}"
    return _EpicRow(line, uid, r["participant_id"].strip(), video, s, e, v, n, name,
                    (r.get("narration") or "").strip() or None)


def _resolve(root: Path, annotations: str | Path) -> Path:
    return annotation_path(root, annotations)  # the one rule: a run records the path it gives


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def _readers() -> dict[str, Callable]:
    return {
        "csv": lambda root, ann, split, subset, rows: read_generic(root, ann, rows),
        "k400": lambda root, ann, split, subset, rows: read_k400(root, ann, rows),
        "ssv2": lambda root, ann, split, subset, rows: read_ssv2(root, ann, subset, rows),
        "ucf101": lambda root, ann, split, subset, rows: read_ucf101(root, ann, split, subset, rows),
        "hmdb51": lambda root, ann, split, subset, rows: read_hmdb51(root, ann, split, subset, rows),
        "diving48": lambda root, ann, split, subset, rows: read_diving48(root, ann, subset, rows),
        "epic55": lambda root, ann, split, subset, rows: read_epic55(root, ann, subset, rows),
    }


def load_annotations(
    format: str,
    root: str | Path,
    annotations: str | Path,
    split: int = 1,
    subset: str = "train",
    *,
    on_error: str = "raise",
    problems: Optional[list] = None,
) -> tuple[list[VideoRecord], list[str]]:
    """Read one dataset's annotations -> (records, class_names).

    format: csv | k400 | ssv2 | ucf101 | hmdb51 | diving48 | epic55.
    annotations: the annotation file, or the folder holding a dataset's split files; a relative
      path that does not exist from the working directory is taken relative to `root`.
    split: UCF101 / HMDB51 split number. subset: train | val | test (which split file to read
      when `annotations` is a folder).
    on_error: "raise" (AnnotationError naming file:line) or "skip" (log and append `Problem`s
      to `problems`).
    """
    if format not in DATASET_FORMATS:
        raise AnnotationError(f"format={format!r}: expected one of {DATASET_FORMATS}")
    rows = RowErrors(on_error, problems)
    root_p = Path(root) if str(root) else Path(".")
    if str(root) and not root_p.is_dir():
        raise AnnotationError(f"data root {root}: no such folder (data.root / --root)")
    ann = _resolve(root_p, annotations)
    if not ann.exists():
        where = f" (looked in {Path(annotations).resolve()} and {ann})" if ann != Path(annotations) else ""
        raise AnnotationError(f"{annotations}: annotation file or folder not found{where}")
    records, classes = _readers()[format](root_p, ann, split, subset, rows)
    rows.finish(str(list_file(format, root, annotations, split, subset)))  # the file read, not its folder
    return records, classes
