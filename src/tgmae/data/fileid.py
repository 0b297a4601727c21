"""File identity for cache keys: what says a file's contents may have changed.

(size, mtime_ns) alone go stale when a file is swapped for another of the same size and mtime
(`cp -p`, `tar x`, `rsync -t` all set mtime); the inode number and st_ctime_ns (set by the kernel
on any content or metadata change, which `touch` and `utime` cannot set back) catch that. A key
built from them can only err towards re-reading: a `chmod` or `mv` onto the same inode changes
ctime and costs one rebuild.

None of them tells a copy of a file (a data set copied to a node's disk: new inode, ctime, maybe
mtime) from another file of the same size moved onto its path (`mv`, `rsync`, most editors);
`content_key`, a digest of a few fixed blocks recorded beside the identity, does (re-trial 32A S1);
a frame folder's is that of a few of its frames (re-trial 33B S2).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from typing import Any, Iterable, Optional, Sequence

from tgmae.data.keyed_cache import KeyedCache
from tgmae.user_cache import remember, remembered

# Most a file name made from an id may take, in (ASCII) characters. File systems allow 255 bytes;
# around the id go a figure's `attention_` ... `-HASH.png` (23) and an atomic write's temp name
# `.{name}.{host}-{pid}-{8 hex}.tmp` (up to 63), so 160 keeps every such name under 255 on any
# host. Fixed, not worked out per host: one id has one name everywhere (a cache copied between
# nodes still finds its files).
ID_NAME_MAX = 160

CONTENT_BLOCKS, CONTENT_BLOCK = 8, 4096  # `content_key` reads 8 blocks of 4 KiB, whatever the size
CONTENT_FRAMES = 8  # a frame folder's `content_key` reads this many of its frames, whatever their count
CONTENT_CACHE = "content_keys"  # folder in the user cache: one small file per file seen
_content_keys: "KeyedCache[tuple, str]" = KeyedCache(65536)  # this process's, by (real path, identity)


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
    an older form and None: False. A frame folder's identity keeps only digests of its frames' stat:
    a frame rewritten in place and a copy of the folder (new inodes, ctimes) both change the full
    digest and keep the copy key, so nothing here tells them apart; its `content_key` does, for
    both a rewrite in place and a frame replaced by `mv` (re-trial 33B S2)."""
    if not (_file_form(recorded) and _file_form(current)):
        return False
    return recorded[2] == current[2] and recorded[1] != current[1]


def _read_content_key(path: str, size: int) -> str:
    """32 hex of sha256 over `size` and `CONTENT_BLOCKS` blocks of `CONTENT_BLOCK` bytes evenly
    spread over the file (the first and the last included); a file of up to 32 KiB whole."""
    h = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        if size <= CONTENT_BLOCKS * CONTENT_BLOCK:
            h.update(f.read())
        else:
            for i in range(CONTENT_BLOCKS):
                f.seek(i * (size - CONTENT_BLOCK) // (CONTENT_BLOCKS - 1))
                h.update(f.read(CONTENT_BLOCK))
    return h.hexdigest()[:32]


def _sampled(count: int) -> list[int]:
    """Indices of up to `CONTENT_FRAMES` of `count` frames evenly spread, the first and last included."""
    if count <= CONTENT_FRAMES:
        return list(range(count))
    return [i * (count - 1) // (CONTENT_FRAMES - 1) for i in range(CONTENT_FRAMES)]


def _read_folder_key(folder: str, identity: Sequence) -> tuple[str, bool]:
    """(32 hex of sha256 over a frame folder's `folder_identity` copy key (its count and the digest
    of its frames' names and sizes) and the `_read_content_key` of `_sampled` of its files by name,
    whether it held still): names are listed, not stat'ed (the identity has the sizes); each sampled
    file is stat'ed, read, then stat'ed again. Not still: another count of files than `identity`'s,
    or a sampled frame changed while read."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_file())
    h, still = hashlib.sha256(json.dumps(copy_key(list(identity))).encode()), len(names) == identity[1]
    for i in _sampled(len(names)):
        frame = os.path.join(folder, names[i])
        before = file_identity(frame)
        h.update(f"\n{names[i]}\0{_read_content_key(frame, before[0])}".encode())
        still = still and file_identity(frame) == before
    return h.hexdigest()[:32], still


def _read_key(real: str, key: tuple, folder: bool) -> tuple[str, bool]:
    """(`content_key` of the video at `real`, whether it held still while read: a file's stat is
    still `key`'s (real path, *identity); a frame folder: `_read_folder_key`)."""
    if folder:
        return _read_folder_key(real, key[1:])
    hit = _read_content_key(real, key[1])
    return hit, (real, *file_identity(real)) == key


def content_key(path: str, keep: bool = True, identity: Any = None) -> Optional[str]:
    """A cheap digest of a video's contents, recorded with each caption beside its `video_identity`
    (`content`): a copy keeps it, other contents of the same size moved onto the path (`mv`,
    `rsync`: a new inode, as a copy has) almost always have another. A file: `_read_content_key`,
    its size and 8 blocks of 4 KiB, 32 KiB read however long (a video re-encoded or another clip
    differs in its header and throughout; bytes changed only between the blocks are not seen)
    (re-trial 32A S1). A frame folder: `_read_folder_key`, its frames' names and sizes and the
    contents of 8 of them evenly spread, first and last included (frames rewritten in place or
    replaced by `mv` with images of the same size; one frame changed between the sampled ones is
    not seen) (re-trial 33B S2). Remembered by the real path and `video_identity` (this process,
    and the user cache: `tgmae.user_cache.remember`), so a data set is read once per machine, not at
    each training start; a video changed since has another identity and is read again. `keep`
    False: this process's memory only (a caption run, whose records are compared by their identity
    first on this machine: an entry per video there is 1-2 ms of writing for nothing). `identity`:
    a frame folder's `video_identity` already taken (its frames are not stat'ed again: an EPIC
    folder's segments share one scan); a file is stat'ed here. None for a path that cannot be read.
    Cost (re-trial 32A S1, 200 files of 300 KB in the page cache): 25 ms to read their blocks, 25 ms
    from the user cache, 300 ms the first time (the entries' writes); the entries save the 8 reads
    a file of a cold disk. A folder of 300 frames of 7 KB (re-trial 33B S2, page cache): 0.2 ms to
    read its 8 frames, 1.4 ms the first time (the entry's write), 0.13 ms from the user cache,
    beside 0.7-1.6 ms for its `video_identity` (a stat per frame), which is taken anyway."""
    try:
        real = os.path.realpath(path)
        folder = os.path.isdir(real)
        ident = file_identity(real) if not folder else video_identity(real) if identity is None else identity
        if ident is None:
            return None
        key = (real, *current_identity(ident))
        hit = _content_keys.get(key) or (remembered(CONTENT_CACHE, list(key)) if keep else None)
        if not isinstance(hit, str):
            hit, still = _read_key(real, key, folder)
            if not still:  # written while read: not kept under either stat
                return hit
            if keep:
                remember(CONTENT_CACHE, list(key), hit)
        _content_keys.put(key, hit)
        return hit
    except OSError:
        return None


def frame_keys(folder: str, names: Iterable[str]) -> dict[str, Optional[str]]:
    """{name: `content_key` of the file `name` in `folder`} (None: unreadable): the frames a
    caption was read from (`video_stamp`'s `frame_content`), read where a check needs them (a
    folder's stat changed), this process's memory only (re-trial 34A S3)."""
    return {n: content_key(os.path.join(folder, n), keep=False) for n in names}


def video_stamp(path: str, identity: Any = None, frame_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """What a caption record keeps of the file it describes: {"video": `video_identity`, "content":
    `content_key`} (`identity`: the one already taken; None: taken now), and for a frame folder
    given `frame_names` (the files its captions were read from, a captioner's keyframes:
    `tgmae.data.frame_folder.frame_names`) "frame_content": {frame file name: its `content_key`},
    since the folder's key samples only 8
    frames, which may miss exactly those (re-trial 34A S3); keys without a value left out. Written
    by every caption source (`tgmae caption`'s captioner and text sources); compared by
    `tgmae.captions.store.other_file`. The keys are not kept in the user cache (`content_key`'s keep)."""
    identity = video_identity(path) if identity is None else identity
    stamp = {"video": identity,
             "content": content_key(path, keep=False, identity=identity) if identity is not None else None}
    if frame_names and isinstance(identity, list) and identity[:1] == ["frames"]:
        keys = frame_keys(path, dict.fromkeys(frame_names))
        stamp["frame_content"] = {n: k for n, k in keys.items() if k is not None} or None
    return {k: v for k, v in stamp.items() if v is not None}
