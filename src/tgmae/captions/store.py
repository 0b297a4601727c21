"""The caption store: one JSON object per line, one line per video.

    {"video_id": "abc", "captions": ["a man ...", "..."], "source": "captioner",
     "model": "Salesforce/blip-image-captioning-base"}

`captions`: non-empty strings (stored stripped); `source`: `captioner`, `oracle`, `vision-free`,
`synthetic`, or `a+b` for combined stores; `model`: what made them (a model, a template, an LLM).
Other keys are kept as they are. A video appears at most once per store. Writers append line by
line, so a kill leaves at most a torn last line, which `truncate_torn_tail` drops before a
resumed writer appends; a bad line anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Optional, Sequence

from tgmae.atomic import atomic_write_text
from tgmae.data.annotations import class_text
from tgmae.data.fileid import copy_key, current_identity, rewritten_in_place
from tgmae.errors import UserError
from tgmae.textfile import NotUtf8Error, decode

REQUIRED_KEYS = ("video_id", "captions", "source", "model")

log = logging.getLogger("tgmae")


class CaptionStoreError(ValueError, UserError):
    """A caption file or record is malformed; the message names the file, line or video."""


@dataclass
class CaptionRecord:
    """All captions of one video."""

    video_id: str
    captions: list[str]
    source: str
    model: str
    extra: dict[str, Any] = field(default_factory=dict)  # any other keys, written back as-is

    def __post_init__(self) -> None:
        validate_record(self)

    def to_json(self) -> dict[str, Any]:
        out = {"video_id": self.video_id, "captions": list(self.captions), "source": self.source, "model": self.model}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "record") -> "CaptionRecord":
        if not isinstance(obj, dict):
            raise CaptionStoreError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            vid = obj.get("video_id", "?")
            raise CaptionStoreError(f"{where} (video_id={vid!r}): missing key(s) {missing}")
        extra = {k: v for k, v in obj.items() if k not in REQUIRED_KEYS}
        try:
            return cls(obj["video_id"], obj["captions"], obj["source"], obj["model"], extra)
        except CaptionStoreError as e:
            raise CaptionStoreError(f"{where}: {e}") from None


def validate_record(rec: CaptionRecord) -> None:
    """Types and content; strips captions in place. Raises CaptionStoreError naming the video."""
    if not isinstance(rec.video_id, str) or not rec.video_id.strip():
        raise CaptionStoreError(f"video_id must be a non-empty string, got {rec.video_id!r}")
    vid = rec.video_id
    if not isinstance(rec.captions, (list, tuple)) or not rec.captions:
        raise CaptionStoreError(f"video {vid!r}: captions must be a non-empty list, got {rec.captions!r}")
    clean = []
    for i, c in enumerate(rec.captions):
        if not isinstance(c, str):
            raise CaptionStoreError(f"video {vid!r}: caption {i} is not a string: {c!r}")
        if not c.strip():
            raise CaptionStoreError(f"video {vid!r}: caption {i} is empty or whitespace ({c!r})")
        clean.append(c.strip())
    rec.captions = clean
    for key in ("source", "model"):
        value = getattr(rec, key)
        if not isinstance(value, str) or not value.strip():
            raise CaptionStoreError(f"video {vid!r}: {key} must be a non-empty string, got {value!r}")


@dataclass
class StoreContents:
    """What `read_store` found: records in file order, and whether the last line was torn."""

    records: list[CaptionRecord]
    torn_tail: bool = False
    good_bytes: int = 0  # length of the file up to and including the last complete line

    def by_video(self) -> dict[str, CaptionRecord]:
        return {r.video_id: r for r in self.records}


def read_jsonl_tolerant(path: str | Path, allow_torn_tail: bool = True) -> tuple[list[tuple[int, Any]], bool, int]:
    """Parse a JSONL file written line by line. Returns ([(line_no, obj)], torn_tail, good_bytes).

    Blank lines are skipped. The last line may be torn (no newline, or not valid JSON, or cut
    inside a character) when `allow_torn_tail`; it is then left out and reported. A bad line
    elsewhere raises; bytes that are not UTF-8 (a store edited in another encoding) raise
    `NotUtf8Error` naming the line, torn tail allowed or not.
    """
    with open(path, "rb") as f:
        lines = f.readlines()
    items: list[tuple[int, Any]] = []
    good_bytes = end = 0
    torn = False
    for n, raw in enumerate(lines, start=1):
        end += len(raw)  # byte offset after this line
        last, has_nl = n == len(lines), raw.endswith(b"\n")
        try:
            text = decode(raw, path, first_line=n, bom=n == 1).strip()
        except NotUtf8Error:
            if last and allow_torn_tail and not has_nl and _cut_in_a_character(raw):
                torn = True
                break
            raise
        if not text:
            if has_nl:
                good_bytes = end
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if last and allow_torn_tail:
                torn = True
                break
            raise CaptionStoreError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        # a complete object without its newline (a writer died before it) is whole: accepted as
        # the last line; an appending caller adds the newline
        if not has_nl and not (last and allow_torn_tail):
            raise CaptionStoreError(f"{path}:{n}: line is not newline-terminated")
        items.append((n, obj))
        good_bytes = end
    return items, torn, good_bytes


def read_store(path: str | Path, allow_torn_tail: bool = False) -> StoreContents:
    """Read and validate a caption store. Duplicate video ids are an error naming both lines
    (`refuse_duplicate_ids`)."""
    path = Path(path)
    if not path.is_file():
        raise CaptionStoreError(f"caption file not found: {path}")
    items, torn, good = read_jsonl_tolerant(path, allow_torn_tail=allow_torn_tail)
    records = [CaptionRecord.from_json(obj, where=f"{path}:{n}") for n, obj in items]
    refuse_duplicate_ids(path, items)
    return StoreContents(records, torn, good)


def refuse_duplicate_ids(path: str | Path, items: Optional[Sequence[tuple[int, Any]]] = None) -> None:
    """CaptionStoreError naming the line and the first one when a store holds one video twice (a
    hand merge, concurrent runs of an older tgmae; the lines may hold other captions), with the
    ways out: delete one of the lines, or caption again with --rebuild. items: `read_jsonl_tolerant`'s
    (line, object) pairs of `path`; None: read them (a torn last line allowed; no file: nothing).
    The one check of every reader (`read_store`: masks, training) and of a caption run into the
    store, which would otherwise count the video done and keep both lines (re-trial 30B M3)."""
    if items is None:
        if not Path(path).is_file():
            return
        items, _, _ = read_jsonl_tolerant(path, allow_torn_tail=True)
    seen: dict[str, int] = {}
    for n, obj in items:
        vid = obj.get("video_id") if isinstance(obj, dict) else None
        if not isinstance(vid, str):
            continue
        if vid in seen:
            raise CaptionStoreError(
                f"{path}:{n}: video {vid!r} already appears on line {seen[vid]}: delete one of the two lines "
                "(the one whose captions are not this video's), or caption the store again with --rebuild")
        seen[vid] = n


def _cut_in_a_character(raw: bytes) -> bool:
    """Whether `raw` fails as UTF-8 only because its last character is incomplete: what a writer
    killed mid-line leaves, unlike a byte of another encoding inside the line."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except UnicodeDecodeError:
        return False
    return True


def truncate_torn_tail(path: str | Path) -> bool:
    """Cut a torn last line (and terminate a complete unterminated one). True if changed."""
    path = Path(path)
    if not path.exists():
        return False
    _, _, good = read_jsonl_tolerant(path, allow_torn_tail=True)
    with open(path, "r+b") as f:
        changed = good < f.seek(0, os.SEEK_END)  # a torn tail, or blank lines after the last record
        if changed:
            f.truncate(good)
        f.seek(max(good - 1, 0))
        if good and f.read(1) != b"\n":  # a whole last record without its newline
            f.write(b"\n")
            changed = True
    return changed


def dumps_record(rec: CaptionRecord) -> str:
    return json.dumps(rec.to_json(), ensure_ascii=False) + "\n"


class StoreAppender:
    """Append records to a JSONL file, flushed (and fsynced) after each `write_batch`.

    A torn tail left by an earlier kill is removed on open, so appending resumes cleanly. The file
    is opened (created) by the first non-empty batch: an appender that wrote nothing leaves no
    empty store behind.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._f: Optional[IO[str]] = None

    def write_batch(self, objs: Iterable[CaptionRecord | dict]) -> None:
        lines = [dumps_record(o) if isinstance(o, CaptionRecord) else json.dumps(o, ensure_ascii=False) + "\n"
                 for o in objs]
        if not lines:
            return
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.writelines(lines)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self) -> "StoreAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_store(path: str | Path, records: Iterable[CaptionRecord]) -> int:
    """Write a whole store atomically; duplicate video ids are an error. Returns the count."""
    records = list(records)
    seen: set[str] = set()
    for r in records:
        if r.video_id in seen:
            raise CaptionStoreError(f"{path}: video {r.video_id!r} appears twice")
        seen.add(r.video_id)
    atomic_write_text(path, "".join(dumps_record(r) for r in records), fsync=True)
    return len(records)


def provenance(rec: CaptionRecord | dict) -> dict[str, Any]:
    """What made a record: {"source", "model", **settings} (its `settings` key, e.g. keyframes)."""
    obj = rec.to_json() if isinstance(rec, CaptionRecord) else rec
    settings = obj.get("settings")
    return {"source": obj.get("source"), "model": obj.get("model"), **(settings if isinstance(settings, dict) else {})}


def same_value(key: str, have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether provenances `have` and `want` agree on `key`: equal values, or for `model` two
    spellings of one local folder (`blip`, `./blip/`, its absolute path: compared resolved; a hub
    id, no such folder here, stays as written) or two names of the files one recorded weights
    fingerprint (`weights`) names (`tgmae.hub.same_model`: a folder an older tgmae recorded as
    typed, read from another working directory: re-trial 29B M1)."""
    from tgmae.hub import same_model

    a, b = have.get(key), want.get(key)
    if a == b:
        return True
    if key != "model" or not isinstance(a, str) or not isinstance(b, str):
        return False
    return same_model(a, b, have.get("weights"), want.get("weights"))


def _difference(key: str, have: dict[str, Any], want: dict[str, Any]) -> str:
    """How a refusal names one differing provenance key, with the store's and this run's values:
    an oracle's `model` is its --template(s), so `model` is named as what it is on each side
    (`template '{}' (this run: model 'blip')`)."""
    if key not in have:
        return f"{key} unrecorded (a store written before it was recorded) (this run: {want[key]!r})"
    if key != "model":
        return f"{key} {have[key]!r} (this run: {want[key]!r})"
    name = lambda prov: "template" if prov.get("source") == "oracle" else "model"  # noqa: E731
    if name(have) == name(want):
        return f"{name(have)} {have[key]!r} (this run: {want[key]!r})"
    return f"{name(have)} {have[key]!r} (this run: {name(want)} {want[key]!r})"


def refuse_foreign_file(path: str | Path) -> None:
    """CaptionStoreError naming `path` when it exists and is not a caption store, which neither a
    run nor --rebuild may replace: its first line is not a JSON object with a video_id
    (a file of the user's, such as an annotation list or notes). Only the first line is read; the
    store's readers name damage further on. A lone torn first line (a writer killed in its first
    record: no newline) counts as a store's. A first line of JSON in another encoding than UTF-8 is
    `NotUtf8Error` naming it (a store edited so: the fix is to save it as UTF-8)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        first, n = b"", 0
        for n, first in enumerate(f, start=1):
            if first.strip():
                break
    if not first.strip() or (not first.endswith(b"\n") and first.lstrip().startswith(b'{"video_id"')):
        return
    try:
        obj = json.loads(decode(first, path, first_line=n, bom=n == 1))
    except json.JSONDecodeError:
        obj = None
    except NotUtf8Error:
        if not first.lstrip().startswith(b"{"):  # a binary file, or text of another kind: not a store
            obj = None
        else:  # a store (or JSON) edited in another encoding: that is what to fix
            raise
    if not (isinstance(obj, dict) and "video_id" in obj):
        raise CaptionStoreError(f"{path}:{n}: not a caption store (not a record with a video_id): "
                                "it is not replaced, --rebuild or not; give --out another file")


def refuse_other_provenance(path: str | Path, wants: Sequence[dict[str, Any]], required: Sequence[str] = ()) -> None:
    """CaptionStoreError naming the line and each differing key when a record of the store at
    `path` (torn tail allowed; missing = nothing to check) was made otherwise than every one of
    `wants` (provenances as `provenance` gives them). A key the record does not hold (a store
    written before it was recorded) is not compared, unless it is `required` (and the want holds
    it) and the record's source is the want's: then it counts as different, "unrecorded" (e.g. a
    captioner's weights; a store of another source never had them)."""
    path = Path(path)
    if not path.is_file() or not wants:
        return
    refuse_foreign_file(path)
    items, _, _ = read_jsonl_tolerant(path, allow_torn_tail=True)
    for n, obj in items:
        if not isinstance(obj, dict):
            continue
        have = provenance(obj)
        # a required key missing is an old store's only where the source matches: an oracle store
        # has no weights to have recorded, its source already differs
        diffs = [[k for k in want if (not same_value(k, have, want) if k in have
                                      else k in required and have.get("source") == want.get("source"))]
                 for want in wants]
        if all(diffs):
            want, diff = min(zip(wants, diffs), key=lambda wd: len(wd[1]))
            what = ", ".join(_difference(k, have, want) for k in diff)
            raise CaptionStoreError(f"{path}:{n} holds captions made otherwise: {what}; give this run another "
                                    "--out, or pass --rebuild to replace the store")


def refuse_changed_captions(path: str | Path, old: dict[str, CaptionRecord], new: dict[str, CaptionRecord]) -> None:
    """CaptionStoreError naming the store, the videos (up to 5, then how many more) and --rebuild
    when a video of `old` (the store's) would get other captions from `new` (this run's), e.g. an
    oracle store rerun after classes.txt was reordered: the store's captions are inputs of masks
    and training caches, so rewriting them in place would silently invalidate that work."""
    changed = [v for v, r in new.items() if v in old and old[v].captions != r.captions]
    if not changed:
        return
    names = ", ".join(repr(v) for v in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    first = changed[0]
    raise CaptionStoreError(
        f"{path}: {len(changed)} video(s) already there would get other captions: {names} (e.g. {first!r}: "
        f"{old[first].captions!r} -> {new[first].captions!r}); masks and caches made from the store would no "
        "longer match it: give this run another --out, or pass --rebuild to replace the store")


def update_store(path: str | Path, records: Sequence[CaptionRecord], rebuild: bool = False,
                 keep_others: bool = True) -> tuple[int, int, int]:
    """Write `records` (all of one provenance) into the store at `path` without losing what it
    holds: its records must have been made alike (else `refuse_other_provenance` raises, unless
    `rebuild`, which replaces the store), a video already there must keep its captions (else
    `refuse_changed_captions` raises, unless `rebuild`), this run's videos are added, and
    its other videos are kept (`keep_others`; False: a store derived wholly from its inputs, such
    as a combination, is replaced by this run's). Returns (added, already there, others kept)."""
    path = Path(path)
    records = list(records)
    refuse_foreign_file(path)
    if rebuild or not path.exists():
        write_store(path, records)
        return len(records), 0, 0
    refuse_other_provenance(path, list({json.dumps(provenance(r), sort_keys=True): provenance(r)
                                        for r in records}.values()))
    old = {r.video_id: r for r in read_store(path).records}
    new = {r.video_id: r for r in records}
    refuse_changed_captions(path, old, new)
    there = sum(v in old for v in new)
    kept = [v for v in old if v not in new] if keep_others else []
    order = [v for v in old if v in new or keep_others] + [v for v in new if v not in old]
    write_store(path, [new.get(v) or old[v] for v in order])  # this run's record where it has one
    return len(new) - there, there, len(kept)


def _join_unique(values: Sequence[str]) -> str:
    out: list[str] = []
    for v in values:
        for part in v.split("+"):
            if part not in out:
                out.append(part)
    return "+".join(out)


STAMP_KEYS = ("video", "content")  # what a record keeps of its file: `tgmae.data.fileid.video_stamp`


def merge_stores(stores: Sequence[Sequence[CaptionRecord]], require_all: bool = False,
                 names: Optional[Sequence[str]] = None) -> list[CaptionRecord]:
    """Combine caption sources per video (e.g. captioner + vision-free, Table 6b).

    A video's captions are the concatenation of its captions in each store, in store order
    (exact duplicates dropped); `source`/`model` become `a+b`; other keys are each the first part's
    that has it (a vision-free part's `class`: `stale_texts` checks it), but for the file's
    `video` and `content` (`STAMP_KEYS`), both the first part's that has a `video`. Videos are listed in first-seen
    order. With `require_all`, a video missing from any store is an error. CaptionStoreError
    naming two stores (`names`, e.g. their files; else "store 1", ...) and a few ids when their
    records of one id were captioned from different files (`refuse_mixed_videos`).
    """
    parts: dict[str, list[CaptionRecord]] = {}  # in first-seen order
    where: dict[str, list[int]] = {}  # the stores each id's records are from
    for i, store in enumerate(stores):
        seen_here: set[str] = set()
        for rec in store:
            if rec.video_id in seen_here:
                raise CaptionStoreError(f"video {rec.video_id!r} appears twice in one source")
            seen_here.add(rec.video_id)
            parts.setdefault(rec.video_id, []).append(rec)
            where.setdefault(rec.video_id, []).append(i)
    refuse_mixed_videos(parts, where, list(names) if names else [f"store {i + 1}" for i in range(len(stores))])
    if require_all:
        incomplete = [v for v in parts if len(parts[v]) != len(stores)]
        if incomplete:
            raise CaptionStoreError(
                f"{len(incomplete)} video(s) are missing from some caption source, e.g. {incomplete[0]!r}"
            )
    merged = []
    for vid, recs in parts.items():
        caps: list[str] = []
        for r in recs:
            caps.extend(c for c in r.captions if c not in caps)
        extra: dict[str, Any] = {}
        for r in recs:
            for k, v in r.extra.items():
                if k not in STAMP_KEYS:
                    extra.setdefault(k, v)
        stamped = next((r for r in recs if r.extra.get("video") is not None), None)
        if stamped is not None:  # `video` and `content` of one file, not one part's and another's
            extra.update({k: stamped.extra[k] for k in STAMP_KEYS if k in stamped.extra})
        merged.append(CaptionRecord(vid, caps, _join_unique([r.source for r in recs]),
                                    _join_unique([r.model for r in recs]), extra))
    return merged


def refuse_mixed_videos(parts: dict[str, list[CaptionRecord]], where: dict[str, list[int]],
                        names: Sequence[str]) -> None:
    """CaptionStoreError naming two stores (`names[i]`, `where` {id: each record's store index})
    and up to 5 ids whose records of one id (`parts` {id: records}) carry `video` identities of
    other files (`other_file`: another size, one file rewritten in place between them, or another
    file moved onto its path: their `content` keys differ): stores of
    two data sets with the same ids, or of a video before and after it was replaced, whose merge
    would describe one id by two videos and keep one store's stamp (then accepted by one set,
    refused by the other, by store order). Records without an identity are not compared."""
    clash: dict[tuple[int, int], list[str]] = {}
    for vid, recs in parts.items():
        known = [(i, r.extra["video"], r.extra.get("content")) for i, r in zip(where[vid], recs)
                 if r.extra.get("video") is not None]
        other = next(((known[0][0], i) for i, ident, content in known[1:]
                      if other_file(known[0][1], ident, known[0][2], lambda c=content: c)), None)
        if other is not None:
            clash.setdefault(other, []).append(vid)
    if clash:
        (a, b), ids = next(iter(clash.items()))
        raise CaptionStoreError(
            f"{names[a]} and {names[b]}: {len(ids)} video(s) were captioned from different files ({ids_text(ids)}): "
            "stores of two data sets with the same video ids, or of a video before and after it was rewritten; "
            "combine stores of one data set's files as they are (give its annotations, --format and --root, to "
            "check them against its files)")


def video_ids_in(path: str | Path) -> set[str]:
    """Ids already present in a (possibly torn) store file; empty when the file is missing."""
    path = Path(path)
    if not path.exists():
        return set()
    items, _, _ = read_jsonl_tolerant(path, allow_torn_tail=True)
    return {str(obj.get("video_id")) for _, obj in items if isinstance(obj, dict)}


def ids_text(ids: Sequence[str], n: int = 5) -> str:
    """Up to `n` ids quoted, then "and K more"."""
    return ", ".join(repr(v) for v in ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def other_file(recorded: Any, now: Any, content: Optional[str] = None,
               content_now: Optional[Callable[[], Optional[str]]] = None,
               frames: Optional[dict[str, str]] = None,
               frames_now: Optional[Callable[[list[str]], dict[str, Optional[str]]]] = None) -> bool:
    """Whether a record's recorded `video` identity names other contents than the file `now`
    (`video_identity`). The same identity: the same file, nothing read. Another size (what a copy
    keeps, `copy_key`: a store of another data set with the same ids, a video replaced): other. The
    same file rewritten in place since (`tgmae.data.fileid.rewritten_in_place`: same inode, another
    mtime; re-trial 30B S1): other. Else the size is the same and the inode, mtime or ctime not (a
    copy of the file elsewhere, or another file of that size moved onto its path: re-trial 32A S1):
    the record's `content` (`tgmae.data.fileid.content_key` of the file it was made from) is
    compared with `content_now()` (the file's now, read only here); a record without one, or no
    key now, is the same file (a copy keeps its captions). Frame folders alike: the same frames'
    names and sizes (`copy_key`) and another identity (a frame rewritten in place, replaced by `mv`,
    or the folder copied: its digests cannot tell which) compare the folder's `content` (a few of its
    frames' contents; re-trial 33B S2) and, where the record keeps them (`frames`, its
    `frame_content` {frame file: content key}), the keys of the frames its captions were read from,
    `frames_now(names)` ({name: key now}; a frame unreadable now is not compared), which those 8 may
    miss (re-trial 34A S3). The one check of a record against a file (`replaced_videos`)
    and of two records of one id (`refuse_mixed_videos`)."""
    if current_identity(recorded) == now:
        return False
    if copy_key(recorded) != copy_key(now) or rewritten_in_place(current_identity(recorded), now):
        return True
    if content is None or content_now is None:
        return False
    key = content_now()
    if key is not None and key != content:
        return True
    if not isinstance(frames, dict) or not frames or frames_now is None:
        return False
    keys = frames_now(list(frames))
    return any(keys.get(n) is not None and keys[n] != k for n, k in frames.items())


def replaced_videos(records: Iterable[CaptionRecord | dict], identity: dict[str, Any],
                    paths: Optional[dict[str, str]] = None) -> list[str]:
    """Ids of `records` captioned from another file than the data set's now: their recorded `video`
    (and `content`, `frame_content`) and `identity` ({video_id: `video_identity` now}; `paths` {video_id: its file},
    whose `content_key` is read where only it can tell) are `other_file`s (another size, the file
    rewritten in place, or another file moved onto the path since). Records without one and ids
    without a file now (None) are not compared; without `paths`, contents are not. The one check
    `masks` and training make (`refuse_other_videos`) and a caption rerun redoes by (`tgmae
    caption`: a text source's, and the captioner's for records with a `content` key, so a copy of the
    data set keeps its captions there too: re-trial 34A M1)."""
    paths = paths or {}
    objs = [r.to_json() if isinstance(r, CaptionRecord) else r for r in records]
    return [o["video_id"] for o in objs if isinstance(o, dict) and o.get("video") is not None
            and identity.get(o.get("video_id")) is not None
            and other_file(o["video"], identity[o["video_id"]], o.get("content"),
                           _key_now(paths.get(o["video_id"]), identity[o["video_id"]]),
                           o.get("frame_content"), _frames_now(paths.get(o["video_id"])))]


def _key_now(path: Optional[str], identity: Any) -> Callable[[], Optional[str]]:
    """`other_file`'s content_now for the video at `path` (None: not known, no key) whose
    `video_identity` now is `identity` (a frame folder's frames are not stat'ed again)."""
    from tgmae.data.fileid import content_key

    return lambda: None if path is None else content_key(str(path), identity=identity)


def _frames_now(path: Optional[str]) -> Callable[[list[str]], dict[str, Optional[str]]]:
    """`other_file`'s frames_now for the frame folder at `path` (None: not known, no keys)."""
    from tgmae.data.fileid import frame_keys

    return lambda names: {} if path is None else frame_keys(str(path), names)


def range_text(frames: Sequence) -> str:
    """`[20, 48)` of a recorded `frames` ([start, end]; end None: `[20, end)`)."""
    return f"[{frames[0]}, {'end' if frames[1] is None else frames[1]})"


def moved_clips(records: Iterable[CaptionRecord | dict], frames: dict[str, Sequence]) -> list[str]:
    """Ids of `records` whose recorded clip range (`frames`) differs from `frames` ({video_id:
    `tgmae.data.annotations.clip_range` now}). Records without one (older or hand-written stores;
    oracle and vision-free captions describe the class, not frames) and ids not in `frames` are
    not compared."""
    objs = [r.to_json() if isinstance(r, CaptionRecord) else r for r in records]
    return [o["video_id"] for o in objs if isinstance(o, dict) and o.get("frames") is not None
            and o.get("video_id") in frames and list(o["frames"]) != list(frames[o["video_id"]])]


TEMPLATE_SEP = " | "  # between an oracle record's templates in its `model` (`sources.oracle_records`)


def oracle_captions(model: Any, name: str, count: int) -> Optional[list[str]]:
    """The `count` captions an oracle record of `model` (its templates joined by TEMPLATE_SEP, as
    `sources.oracle_records` writes it) gives class `name` (its words, `class_text`; stripped, as a
    store keeps them), or None when the templates cannot be recovered from `model`: a part without
    `{}`, or not `count` parts (a template holding the separator itself). For a record without
    `class` (a store written before records carried it), whose class shows only in its captions
    (re-trial 30A S1)."""
    templates = model.split(TEMPLATE_SEP) if isinstance(model, str) else []
    if len(templates) != count or not all("{}" in t for t in templates):
        return None
    return [t.replace("{}", class_text(name)).strip() for t in templates]


TEXT_SOURCES = {"annotation": "--annotation-captions", "oracle": "--oracle", "vision-free": "--descriptions"}


def _oracle_templates(o: dict) -> Optional[str]:
    """The `model` (templates) of a record's oracle part: an `oracle` record's own; a combination's
    part at the oracle's place in its `source` and `model` (`a+b`, `merge_stores`) when the two
    split alike (a template or model name holding '+' does not); else None."""
    sources, model = str(o.get("source")).split("+"), o.get("model")
    if sources == ["oracle"]:
        return model
    models = model.split("+") if isinstance(model, str) else []
    return models[sources.index("oracle")] if "oracle" in sources and len(models) == len(sources) else None


def _oracle_caption_change(o: dict, name: str) -> Optional[tuple[Any, Any]]:
    """(the store's, now's) captions when a record without `class` (a store written before records
    carried it: re-trial 30A S1; combined with others: re-trial 32A S5) has an oracle part whose
    templates (`_oracle_templates`) filled with class `name` (`oracle_captions`) are not its
    captions (an `oracle` record's all; a combination's among its captions), else None (also when
    the templates cannot be recovered)."""
    caps, templates = list(o.get("captions") or []), _oracle_templates(o)
    if o.get("source") == "oracle":
        want = oracle_captions(templates, name, len(caps))
        stale = want is not None and want != caps
    else:
        want = oracle_captions(templates, name, len(templates.split(TEMPLATE_SEP))) if templates else None
        stale = want is not None and not all(w in caps for w in want)
    if not stale:
        return None
    if o.get("source") != "oracle":  # named: the captions of the templates' shape (the oracle part's), if told
        ends = [[part.strip() for part in t.split("{}")] for t in templates.split(TEMPLATE_SEP)]
        shaped = [c for c in caps if any(c.startswith(e[0]) and c.endswith(e[-1]) for e in ends)]
        caps = shaped if 0 < len(shaped) <= len(want) else caps
    return (caps[0] if len(caps) == 1 else caps), (want[0] if len(want) == 1 else want)


def stale_texts(records: Iterable[CaptionRecord | dict], texts: dict[str, tuple[Optional[str], Optional[str]]]
                ) -> list[tuple[str, str, str, str]]:
    """(video_id, what, the store's, the data set's now) of each record made from text the data set
    no longer has (re-trial 29B S1 follow-up: a narration edited, a class renamed or a video
    relabelled after `tgmae caption`): a record of source `annotation` (alone or a part of a
    combined `a+b`) whose captions lack the record's caption now (what "text"), and one that keeps
    the class it was made from (`class`: `--oracle`, `--descriptions`; a combination keeps its
    part's, `merge_stores`) other than the video's class now (what "class"). A record without
    `class` with an oracle part (an `--oracle` store written before records carried it: re-trial
    30A S1; or such a store combined: 32A S5) is compared by its captions with its templates
    filled with the class now (what "caption", `_oracle_caption_change`). `texts`: {video_id:
    (caption, class name)}, `tgmae.data.annotations.annotated_texts`; a None there, ids not in
    `texts`, and the other records without `class` (an oracle part whose templates cannot be
    recovered; a `--descriptions` one, whose descriptions file masks and training do not have) are
    not compared."""
    objs = [r.to_json() if isinstance(r, CaptionRecord) else r for r in records]
    out = []
    for o in objs:
        if not isinstance(o, dict) or o.get("video_id") not in texts:
            continue
        caption, name = texts[o["video_id"]]
        caps = list(o.get("captions") or [])
        if caption is not None and "annotation" in str(o.get("source")).split("+") and caption.strip() not in caps:
            out.append((o["video_id"], "text", caps[0] if len(caps) == 1 else caps, caption.strip()))
        elif name is not None and o.get("class") is not None and o["class"] != name:
            out.append((o["video_id"], "class", o["class"], name))
        elif name is not None and o.get("class") is None and (change := _oracle_caption_change(o, name)):
            out.append((o["video_id"], "caption", *change))
    return out


def record_oracle_classes(records: Sequence[CaptionRecord], texts: dict[str, tuple[Optional[str], Optional[str]]]
                          ) -> int:
    """Give each `oracle` record without `class` (an older `--oracle` store's) whose captions are
    its templates filled with its video's class now (`texts` {video_id: (caption, class name)};
    `stale_texts` found none stale) that class, as `--oracle` records it now, so a combination made
    of it keeps it (`merge_stores`) and later checks compare it by name (re-trial 32A S5). Returns
    how many were given one; records whose templates cannot be recovered stay without."""
    given = 0
    for r in records:
        name = texts.get(r.video_id, (None, None))[1]
        if r.source != "oracle" or r.extra.get("class") is not None or name is None:
            continue
        if oracle_captions(r.model, name, len(r.captions)) == r.captions:
            r.extra["class"] = name
            given += 1
    return given


def _refuse_stale_texts(path: str | Path, records: Sequence[dict], texts: dict[str, tuple]) -> None:
    """CaptionStoreError naming the store, up to 5 videos, the first one's texts and the caption
    rerun that redoes them, when `stale_texts` finds any."""
    stale = stale_texts(records, texts)
    if not stale:
        return
    vid, what, have, now = stale[0]
    source = next(str(o.get("source")) for o in records if isinstance(o, dict) and o.get("video_id") == vid)
    redo = (f"rerun `tgmae caption ... {TEXT_SOURCES[source]} --rebuild` into it" if source in TEXT_SOURCES else
            "caption its parts again, then rerun `tgmae caption --combine ... --rebuild` into it")
    raise CaptionStoreError(
        f"{path}: {len(stale)} video(s) were captioned from other annotations than this data set's now "
        f"({ids_text([s[0] for s in stale])}; e.g. {vid!r}: {what} {have!r} in the store, {now!r} now): "
        f"a narration edited, a class renamed or a video relabelled since; {redo}, or give another --out")


def refuse_other_videos(path: str | Path, records: Iterable[CaptionRecord | dict], identity: dict[str, Any],
                        frames: Optional[dict[str, Sequence]] = None,
                        texts: Optional[dict[str, tuple[Optional[str], Optional[str]]]] = None,
                        paths: Optional[dict[str, str]] = None) -> None:
    """CaptionStoreError naming the store at `path` and up to 5 videos when a record's recorded
    video identity (`video`: `tgmae.data.fileid.video_identity` of the file it was captioned from)
    and `identity` ({video_id: `video_identity` of the data set's file now}) are `other_file`s
    (another size, the file rewritten in place since: re-trial 30B S1, or another file moved onto
    its path: its `content` and the `content_key` of its file in `paths` {video_id: path} differ,
    re-trial 32A S1): a store made for another
    data set with the same ids, or a video replaced since, whose captions describe another video.
    Records without one (a store written by hand, by another tool or an older tgmae, or a video
    that could not be read) and ids without a file now (None) are not compared; when no record of
    the data set's videos has one, a log line says the store could not be checked. Given `frames` ({video_id:
    `data.annotations.clip_range`}), a record whose recorded range differs (`moved_clips`) is
    refused too, naming it; given `texts` ({video_id: (caption, class name)},
    `data.annotations.annotated_texts`), so is a record made from text the data set has changed
    since (`stale_texts`: its caption or class then and now)."""
    objs = [r.to_json() if isinstance(r, CaptionRecord) else r for r in records]
    mine = [o for o in objs if isinstance(o, dict) and identity.get(o.get("video_id")) is not None]
    known = [o for o in mine if o.get("video") is not None]
    other = replaced_videos(known, identity, paths)
    if other:
        raise CaptionStoreError(
            f"{path}: {len(other)} video(s) were captioned from other files than this data set's "
            f"({ids_text(other)}: of another size, rewritten in place or replaced by another file since): "
            "a store made for another data "
            "set with the same video ids, or videos replaced since; caption this data set again: a `tgmae caption` "
            "rerun into the same --out redoes them (a combined store: its parts, then --combine), or another --out")
    moved = moved_clips(objs, frames or {})
    if moved:
        was = next(o["frames"] for o in objs if isinstance(o, dict) and o.get("video_id") == moved[0])
        raise CaptionStoreError(
            f"{path}: {len(moved)} video(s) were captioned from other frame ranges than this data set's "
            f"({ids_text(moved)}; e.g. {moved[0]!r}: frames {range_text(was)} in the store, "
            f"{range_text(frames[moved[0]])} now): their captions describe other frames; caption them again "
            "(a `tgmae caption --model` rerun into the same --out redoes them)")
    _refuse_stale_texts(path, objs, texts or {})
    if mine and not known:
        log.info("tgmae: %s records no video identities (which file each caption describes): its captions "
                 "are not checked against this data set's files", path)


def drop_foreign(path: str | Path, records: Sequence[CaptionRecord], video_ids: Iterable[str]) -> list[CaptionRecord]:
    """The records of `video_ids` (the data set's); the others are dropped with one warning line
    naming the store, how many and a few of them."""
    keep_ids = set(video_ids)
    foreign = [r.video_id for r in records if r.video_id not in keep_ids]
    if foreign:
        log.warning("tgmae caption: %s: dropped %d video id(s) not in the data set (%s)", path, len(foreign),
                    ids_text(foreign, 3))
    return [r for r in records if r.video_id in keep_ids]
