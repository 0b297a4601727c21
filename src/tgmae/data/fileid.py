"""File identity for cache keys: what says a file's contents may have changed.

(size, mtime_ns) alone go stale when a file is swapped for another of the same size and mtime
(`cp -p`, `tar x`, `rsync -t` all set mtime); the inode number and st_ctime_ns (set by the kernel
on any content or metadata change, which `touch` and `utime` cannot set back) catch that. A key
built from them can only err towards re-reading: a `chmod` or `mv` onto the same inode changes
ctime and costs one rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from typing import Any, Iterable, Sequence

# Most a file name made from an id may take, in (ASCII) characters. File systems allow 255 bytes;
# around the id go a figure's `attention_` ... `-HASH.png` (23) and an atomic write's temp name
# `.{name}.{host}-{pid}-{8 hex}.tmp` (up to 63), so 160 keeps every such name under 255 on any
# host. Fixed, not worked out per host: one id has one name everywhere (a cache copied between
# nodes still finds its files).
ID_NAME_MAX = 160


def file_identity(path: str) -> list[int]:
    """[size in bytes, mtime ns, inode, ctime ns] of a file (follows symlinks). Raises OSError."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def entry_identity(entry: os.DirEntry) -> list:
    """[name, size, mtime ns, inode, ctime ns] of a directory entry (frame folders)."""
    st = entry.stat()
    return [entry.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def videos_fingerprint(paths: Sequence[str]) -> str:
    """sha256 over each video's path and `video_identity`: a file's (size, mtime, inode, ctime), a
    frame folder's count and digests of them per frame (each distinct path stat'ed once). Another
    file at a path (a re-encode, a replaced copy) or a frame replaced in place (which leaves the
    folder's own stat as it was) is another fingerprint. A missing path counts as (path, -1). The
    one key of "these videos, as they are on disk" (feature caches, extract shards, alignment
    results)."""
    h, idents = hashlib.sha256(), video_identities(paths)
    for p in paths:
        ident = idents[p]
        h.update(f"{p}\0{[-1] if ident is None else ident}\n".encode())
    return h.hexdigest()


def id_file_name(video_id: str, folders: str = "%2F") -> str:
    """The one file name (no folder, no suffix) of a video id: percent-encoded with nothing kept
    (`Animation/clip1` -> `Animation%2Fclip1`); when that is longer than `ID_NAME_MAX` (about 18
    CJK or 27 accented Latin characters encode into 160: a valid name on disk can encode past the
    file system's 255 bytes), its first characters (whole ones), '+' and 16 hex of the
    sha256 of the whole id. Short ids keep the names they always had (existing similarity caches
    stay valid); two ids never share a name ('+' is never in an encoded id, so a long id's name is
    no short id's, and the hash tells long ids apart). folders: what each '/' of the id becomes; a
    readable one (`visualize` figures: '__', `Animation__clip1`) is for a name that its caller keys
    otherwise too (a figure's hash covers the clip's path), as `a/b` and `a__b` then share it. Used by
    every file named by an id: similarity maps (`masking.cache.entry_file`), figures (`clip_id`)."""
    quoted = urllib.parse.quote(video_id, safe="").replace("%2F", folders)  # '%' itself is %25
    if len(quoted) <= ID_NAME_MAX:
        return quoted
    digest = hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    room, prefix = ID_NAME_MAX - len(digest) - 1, ""
    for ch in video_id:  # whole characters, so the prefix still reads (decodes) as the id's start
        part = folders if ch == "/" else urllib.parse.quote(ch, safe="")
        if len(prefix) + len(part) > room:
            break
        prefix += part
    return f"{prefix}+{digest}"


def video_identity(path: str) -> list | None:
    """`file_identity` of a video file, or `folder_identity` of a frame folder (["frames", count,
    two digests]: a frame replaced in place changes it); None for a missing path. JSON-ready and
    small (under 200 characters): the per-entry key of caches keyed per video (similarity maps,
    caption stores, prepared copies). Over many records use `video_identities` (one scan a folder)."""
    try:
        if os.path.isdir(path):
            return folder_identity([entry_identity(e) for e in os.scandir(path) if e.is_file()])
        return file_identity(path)
    except OSError:
        return None


def video_identities(paths: Iterable[str]) -> dict[str, list | None]:
    """{path: `video_identity`} with each distinct path stat'ed (a frame folder listed) once: the
    records of one video (EPIC's segments: hundreds per frame folder of 20,000 frames) share it."""
    return {p: video_identity(p) for p in dict.fromkeys(paths)}


def _digest(rows: list) -> str:
    """sha256 hex of a listing's compact JSON (the same for tuples and lists, so for a listing read
    back from a store)."""
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def folder_identity(entries: list) -> list:
    """["frames", count, digest of the sorted `entry_identity` rows, digest of their [name, size]]
    of a frame folder's files (entries: `entry_identity` rows, any order). The first digest catches a
    frame replaced in place (inode, ctime); the second is what a copy keeps (`copy_key`)."""
    rows = sorted(list(e) for e in entries)
    return ["frames", len(rows), _digest(rows), _digest([r[:2] for r in rows])]


def _old_listing(identity: Any) -> bool:
    """True for a frame folder's identity of the old form (before it was compact, still found in
    older stores, checkpoints and caches): its rows themselves, [[name, size, ...], ...]."""
    return isinstance(identity, list) and bool(identity) and isinstance(identity[0], list)


def current_identity(identity: Any) -> Any:
    """A recorded `video_identity` in today's form: an old full listing of a frame folder becomes
    its `folder_identity` (the same frames compare equal); anything else is returned as is."""
    return folder_identity(identity) if _old_listing(identity) and len(identity[0]) == 5 else identity


def copy_key(identity: Any) -> Any:
    """What a copy of a video keeps of its `video_identity`: a file's [size], a frame folder's
    ["frames", count, digest of the [name, size] per frame]. A data set copied to a node's local
    disk (cp, rsync: new inode and ctime, maybe mtime) keeps what was made from it (captions that
    cost a captioner pass, a run to resume); another data set's files, or a video replaced by
    another, differ. Takes either form of a folder's identity, and a copy key itself (an older
    checkpoint's listing of [name, size]): each gives today's copy key. None stays None."""
    ident = json.loads(json.dumps(identity))
    if _old_listing(ident):
        return ["frames", len(ident), _digest([e[:2] for e in ident])]
    if ident and ident[0] == "frames":
        return [ident[0], ident[1], ident[-1]]
    return ident[:1] if ident else ident


def _file_form(identity: Any) -> bool:
    """Whether `identity` is a file's `file_identity` ([size, mtime ns, inode, ctime ns])."""
    return isinstance(identity, list) and len(identity) == 4 and all(isinstance(v, int) for v in identity)


def rewritten_in_place(recorded: Any, current: Any) -> bool:
    """Whether a file's `video_identity` now (`current`) is the file `recorded` (its identity when a
    record was made) rewritten in place since: the same inode, another mtime (`cp` onto it, an
    editor saving over it, an `r+b` write all keep the inode; a copy elsewhere, a data set copied to
    a node's disk, has another). What `copy_key` alone misses: new contents of exactly the same
    size (re-trial 30B S1). Errs towards "rewritten" (a `touch` counts; so would a copy on another
    file system given the same inode number by chance, which is rare); a file replaced by a rename
    onto it (another inode) of the same size is not seen. Frame folders, copy keys, an identity of
    an older form and None: False (a folder's frames keep the `copy_key` rule)."""
    if not (_file_form(recorded) and _file_form(current)):
        return False
    return recorded[2] == current[2] and recorded[1] != current[1]
