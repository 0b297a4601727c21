"""Caption sources that need no pixels (paper Table 6): oracle labels and vision-free descriptions.

- oracle: the class name itself as the caption (Table 6b "Oracle"), through one or more
  templates (`"{}"` = the bare label, or e.g. `"a video of {}"`).
- vision-free: per-class descriptions written by a language model from the three CuPL-style
  prompts of Table 6a (`tgmae describe-classes`), or by hand, in a JSON file
  `{"class name": ["description", ...], ...}`; every video gets its class's descriptions.
Combined sources (e.g. captioner + vision-free) are `store.merge_stores` of the two stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tgmae.captions.store import TEMPLATE_SEP, CaptionRecord, CaptionStoreError
from tgmae.data.annotations import class_key, class_text
from tgmae.errors import SettingsError, UserError
from tgmae.textfile import read_text

# Table 6a: prompts given to GPT-3.5 per action class, after CuPL.
CUPL_PROMPTS: tuple[str, ...] = (
    "Describe the action {}.",
    "What does a person {} look like?",
    "What does the act of {} look like?",
)
ORACLE_TEMPLATE = "{}"
META_KEY = "_meta"  # reserved top-level key of a descriptions file: how it was made


class DescriptionsError(ValueError, UserError):
    """A class-descriptions file is malformed; the message names the entry."""


def _fill(template: str, name: str) -> str:
    if "{}" not in template:
        raise SettingsError(f"--template {template!r} has no {{}} for the class name "
                            "(e.g. --template 'a video of {}')")
    return template.replace("{}", class_text(name))


def oracle_records(videos: Sequence[tuple[str, str]], templates: Sequence[str] = (ORACLE_TEMPLATE,)) -> list[CaptionRecord]:
    """(video_id, class name) pairs -> one record per video, one caption per template, recording
    the class it was made from (`class`: `store.stale_texts` compares it with the data set's)."""
    if not templates:
        raise SettingsError("--template: need at least one oracle template")
    model = TEMPLATE_SEP.join(templates)
    return [CaptionRecord(vid, [_fill(t, cls) for t in templates], "oracle", model, {"class": cls})
            for vid, cls in videos]


def validate_descriptions(obj: Any, where: str = "descriptions") -> tuple[dict[str, list[str]], dict]:
    """Check `{class: [non-empty strings]}` (+ optional `_meta` dict); returns (mapping, meta)."""
    if not isinstance(obj, dict):
        raise DescriptionsError(f"{where}: top level must be an object of class -> [descriptions], "
                                f"got {type(obj).__name__}")
    meta = obj.get(META_KEY, {})
    if not isinstance(meta, dict):
        raise DescriptionsError(f"{where}: {META_KEY!r} must be an object")
    out: dict[str, list[str]] = {}
    for cls, descs in obj.items():
        if cls == META_KEY:
            continue
        if not cls.strip():
            raise DescriptionsError(f"{where}: entry with an empty class name")
        if isinstance(descs, str):
            descs = [descs]
        if not isinstance(descs, list) or not descs:
            raise DescriptionsError(f"{where}: entry {cls!r}: expected a non-empty list of strings, got {descs!r}")
        clean = []
        for i, d in enumerate(descs):
            if not isinstance(d, str) or not d.strip():
                raise DescriptionsError(f"{where}: entry {cls!r}: description {i} is empty or not a string ({d!r})")
            clean.append(" ".join(d.split()))
        out[cls] = clean
    if not out:
        raise DescriptionsError(f"{where}: no class entries")
    return out, meta


def load_descriptions(path: str | Path) -> tuple[dict[str, list[str]], dict]:
    """Read a class-descriptions JSON file -> (class -> descriptions, meta). DescriptionsError
    naming the file when missing, not JSON or malformed; NotUtf8Error (file:line) when not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsError(f"class-descriptions file not found: {path}")
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DescriptionsError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return validate_descriptions(obj, str(path))


def match_classes(class_names: Sequence[str], descriptions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Dataset class name -> its descriptions; an exact key first, else the one key equal to it
    without case, spaces and underscores (`tgmae.data.annotations.class_key`: `ApplyEyeMakeup`
    matches `apply eye makeup`). Every class must be found. Raises DescriptionsError when a class
    without an exact key folds to several keys, or a key would serve several classes (`Biking`
    and `biking` both given `Biking`'s or `BIKING`'s texts), naming the key and the classes."""
    by_key: dict[str, list[str]] = {}
    for key in descriptions:
        by_key.setdefault(class_key(key), []).append(key)
    chosen, missing = {}, []
    for name in class_names:
        keys = [name] if name in descriptions else by_key.get(class_key(name), [])
        if len(keys) > 1:
            raise DescriptionsError(f"class {name!r} matches description keys {', '.join(map(repr, keys))}, which "
                                    "differ only in case, spaces or underscores; keep one, or spell one as the class")
        if keys:
            chosen[name] = keys[0]
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DescriptionsError(f"{len(missing)} class(es) have no descriptions: {shown}")
    served: dict[str, str] = {}
    for name, key in chosen.items():
        if key in served:
            raise DescriptionsError(f"description key {key!r} would serve classes {served[key]!r} and {name!r} "
                                    "(matched without case, spaces and underscores); give each its own key, "
                                    "spelled as the class")
        served[key] = name
    return {name: descriptions[key] for name, key in chosen.items()}


def description_records(videos: Sequence[tuple[str, str]], descriptions: dict[str, list[str]],
                        model: str) -> list[CaptionRecord]:
    """(video_id, class name) pairs -> records whose captions are the class's descriptions, recording
    the class they were made from (`class`: `store.stale_texts` compares it with the data set's)."""
    table = match_classes(sorted({c for _, c in videos}), descriptions)
    return [CaptionRecord(vid, list(table[cls]), "vision-free", model, {"class": cls}) for vid, cls in videos]


def videos_with_classes(records: Sequence[Any], class_names: Sequence[str]) -> list[tuple[str, str]]:
    """`VideoRecord`s -> (video_id, class name); unlabelled (-1) or out-of-range labels raise.
    Classes without names (numbers only) are refused before, where the list is known
    (`tgmae.data.formats.require_class_names`: a caption "2" or "3 8" is no class name)."""
    out = []
    for r in records:
        if not 0 <= r.label < len(class_names):
            raise CaptionStoreError(f"video {r.video_id!r}: label {r.label} has no class name "
                                    f"({len(class_names)} classes); oracle/vision-free captions need labels")
        out.append((r.video_id, class_names[r.label]))
    return out
