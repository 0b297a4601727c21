"""tgmae.data.fileid: what says a video (file or frame folder) may have changed."""

from __future__ import annotations

import os

import urllib.parse
from pathlib import Path

import pytest

from tgmae.atomic import temp_path
from tgmae.data.fileid import (copy_key, file_identity, id_file_name, video_identities, video_identity,
                               videos_fingerprint)


def _frames(folder, n: int, fill: bytes = b"a") -> None:
    folder.mkdir(exist_ok=True)
    for i in range(1, n + 1):
        (folder / f"{i:05d}.jpg").write_bytes(fill * (100 + i))


def test_fingerprint_of_a_frame_folder_covers_its_frames(tmp_path):
    """Re-trial 19A F1: a frame overwritten in place (same name) left the folder's stat, and so the
    fingerprint of extract shards and probe feature caches, unchanged."""
    folder = tmp_path / "plain"
    _frames(folder, 4)
    before, folder_stat = videos_fingerprint([str(folder)]), os.stat(folder)
    frame = folder / "00002.jpg"
    st = os.stat(frame)
    frame.write_bytes(b"another video's frame".ljust(st.st_size, b"b"))  # same name, same size
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert os.stat(folder).st_mtime_ns == folder_stat.st_mtime_ns  # the folder itself did not change
    assert videos_fingerprint([str(folder)]) != before


def test_fingerprint_of_files_is_their_identity_and_steady(tmp_path):
    """Files keep the key they had (`file_identity` per path; a missing one counts as -1), so caches
    made before frame folders counted their frames stay valid."""
    import hashlib

    a, gone = tmp_path / "a.mp4", tmp_path / "gone.mp4"
    a.write_bytes(b"x" * 10)
    old = hashlib.sha256(f"{a}\0{file_identity(str(a))}\n{gone}\0{[-1]}\n".encode()).hexdigest()
    assert videos_fingerprint([str(a), str(gone)]) == old
    assert videos_fingerprint([str(a)]) == videos_fingerprint([str(a)]) != videos_fingerprint([str(gone)])
    assert video_identity(str(gone)) is None


def _old_identity(folder) -> list:
    """A frame folder's identity as stores, checkpoints and caches recorded it before it was compact:
    the sorted [name, size, mtime ns, inode, ctime ns] of every frame, as read back from JSON."""
    rows = []
    for e in os.scandir(folder):
        st = e.stat()
        rows.append([e.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
    return sorted(rows)


def test_a_frame_folders_identity_is_compact(tmp_path):
    """Re-trial 24A M6: a frame folder's identity was the stat of every frame, copied into each
    caption record of each segment (20,000 frames: 1.66 MB per record). Now it is ["frames", count,
    two digests]: as small for 2,000 frames as for 2, and steady."""
    import json

    few, many = tmp_path / "few", tmp_path / "many"
    _frames(few, 2)
    _frames(many, 2000)
    ident = video_identity(str(many))
    assert ident[:2] == ["frames", 2000] and len(ident) == 4
    assert len(json.dumps(ident)) < 200 and len(json.dumps(video_identity(str(few)))) < 200
    assert video_identity(str(many)) == ident


def test_a_frame_replaced_in_place_changes_the_identity_and_a_copy_keeps_its_copy_key(tmp_path):
    """A frame overwritten in place (same name, size, mtime) is another identity; a copy of the
    folder (new inodes, ctimes, mtimes: cp, rsync) has another identity but the same `copy_key`;
    a frame of another size is another `copy_key`."""
    import shutil

    folder, copy = tmp_path / "plain", tmp_path / "copy"
    _frames(folder, 5)
    before = video_identity(str(folder))
    shutil.copytree(folder, copy)  # copy2: same mtimes, new inodes and ctimes
    assert video_identity(str(copy)) != before and copy_key(video_identity(str(copy))) == copy_key(before)
    frame = folder / "00002.jpg"
    st = os.stat(frame)
    frame.write_bytes(b"another video's frame".ljust(st.st_size, b"b"))
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video_identity(str(folder)) != before and copy_key(video_identity(str(folder))) == copy_key(before)
    (copy / "00003.jpg").write_bytes(b"short")
    assert copy_key(video_identity(str(copy))) != copy_key(before)
    assert copy_key(video_identity(str(tmp_path / "gone"))) is None


def test_an_old_full_listing_converts_to_the_compact_form(tmp_path):
    """An identity recorded in the old full-listing form (older caption stores, checkpoints, mask
    caches) is read as the compact form of the same frames: its `copy_key` (and `copy_key` of the
    old copy key, a listing of [name, size]) equals today's, so an older store stays valid."""
    folder = tmp_path / "plain"
    _frames(folder, 6)
    old, now = _old_identity(folder), video_identity(str(folder))
    assert copy_key(old) == copy_key(now) == copy_key([e[:2] for e in old]) == copy_key(copy_key(now))
    from tgmae.data.fileid import current_identity

    assert current_identity(old) == now and current_identity(now) == now
    assert current_identity(None) is None and current_identity([5, 1, 2, 3]) == [5, 1, 2, 3]


def test_many_records_of_one_folder_list_it_once(tmp_path, monkeypatch):
    """Re-trial 24A M6: 200 segments of one EPIC video listed and stat'ed its 20,000 frames 200 times
    (caption stores, resume, caches). `video_identities` lists each distinct path once; so does
    `videos_fingerprint`."""
    import tgmae.data.fileid as fileid

    folder, other = tmp_path / "P01_01", tmp_path / "P01_02"
    _frames(folder, 3)
    _frames(other, 3)
    scans = []
    real = os.scandir
    monkeypatch.setattr(fileid.os, "scandir", lambda p: scans.append(str(p)) or real(p))
    paths = [str(folder)] * 200 + [str(other)] * 50
    idents = video_identities(paths)
    assert sorted(scans) == sorted([str(folder), str(other)])
    assert idents == {str(folder): video_identity(str(folder)), str(other): video_identity(str(other))}
    scans.clear()
    videos_fingerprint(paths)
    assert sorted(scans) == sorted([str(folder), str(other)])


JAPANESE = "クラス/" + "日本語の動画" * 7  # 45 characters, 135 bytes: a valid file name on disk
LATIN = "Études/" + "é" * 43 + "_à_la_plage"
ASCII = "Biking/" + "v_Biking_g01_c01_" * 12


@pytest.mark.parametrize("video_id", ["v/1", "Animation/clip2", "a b+c", "クラス/b", "x ü,1", "~.-_"])
def test_short_ids_keep_the_names_they_had(video_id):
    """Existing similarity caches and figures stay where they are: a short id is named as before,
    percent-encoded with nothing kept."""
    assert id_file_name(video_id) == urllib.parse.quote(video_id, safe="")


@pytest.mark.parametrize("video_id", [JAPANESE, LATIN, ASCII, "日" * 85, "é" * 200],
                         ids=["japanese", "latin", "ascii", "cjk", "accents"])
def test_a_long_id_is_a_readable_prefix_and_a_hash_that_fits_a_file_name(video_id, tmp_path):
    """Issue 28 (re-trial 21A, T1): a 42-character Japanese id (126 bytes, a valid name on disk)
    percent-encoded into 378 bytes: `tgmae masks` and `visualize` died with OSError [Errno 36]
    File name too long. A long id's name starts as its short name would and ends in a hash of
    the whole id; with a figure's `attention_` ... `-HASH.png` and an atomic write's temp name
    around it, it stays under 255 bytes, and it can be written."""
    name = id_file_name(video_id)
    quoted = urllib.parse.quote(video_id, safe="")
    assert len(quoted) > 255 or video_id == ASCII
    assert name != quoted and name.isascii() and len(name) <= 160
    prefix, _, digest = name.rpartition("+")
    assert quoted.startswith(prefix) and len(prefix) >= 135 and len(digest) == 16
    assert video_id.startswith(urllib.parse.unquote(prefix, errors="strict"))  # whole characters
    fig = tmp_path / f"attention_{name}-0123abcd.png"
    assert len(temp_path(fig).name.encode()) <= 255
    fig.write_bytes(b"x")
    assert fig.read_bytes() == b"x"


def test_two_ids_never_share_a_name():
    """Long ids that differ only after the prefix, and a short id spelled like a long id's name,
    each get their own name."""
    ids = [JAPANESE + "1", JAPANESE + "2", "2" + JAPANESE, LATIN, LATIN + "é", ASCII, ASCII[:-1]]
    names = [id_file_name(v) for v in ids]
    assert len(set(names)) == len(ids)
    for name in names:  # an id spelled as another id's name (decoded, or as is) is named otherwise
        assert id_file_name(urllib.parse.unquote(name)) not in names and id_file_name(name) not in names
    assert "+" not in id_file_name("a+" + "0" * 16)  # '+' is never in a short id's name
    assert id_file_name(JAPANESE) == id_file_name(JAPANESE)  # steady: a rerun finds its file


@pytest.mark.parametrize("video_id, name", [("Biking/clip1", "Biking__clip1"), ("a/b/c d", "a__b__c%20d"),
                                            ("clip", "clip"), ("50%/x", "50%25__x")])
def test_a_name_for_people_shows_an_ids_folders_readably(video_id, name):
    """Re-trial 23B m3: a figure of `Biking/clip1` was named `recon_Biking%2Fclip1-HASH.png`. A name
    whose caller keys it otherwise (a figure's hash covers the clip's path) shows each '/' as
    `folders`; everything else is encoded as before, and a long id still fits."""
    assert id_file_name(video_id, folders="__") == name
    long = id_file_name(ASCII, folders="__")
    assert long.startswith("Biking__v_Biking_g01") and "%2F" not in long and len(long) <= 160
    assert id_file_name(video_id) == urllib.parse.quote(video_id, safe="")  # the caches' names stay


def _rewrite_in_place(path, mtime_ns: int) -> None:
    """New bytes of the same size written into `path` (r+b: the same inode), mtime set to
    `mtime_ns` (a later write's; set, not waited for: file systems keep mtime in coarse ticks)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + 8] = bytes(b ^ 0x55 for b in data[len(data) // 3:len(data) // 3 + 8])
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_rewritten_in_place_is_told_from_a_copy(tmp_path):
    """Re-trial 30B S1: a video rewritten in place with exactly the same size kept its `copy_key`
    (the size), so its old captions were used. `rewritten_in_place`: the same inode and another
    mtime; a copy elsewhere (another inode), the same file untouched, frame folders and copy keys
    are not."""
    import json
    import shutil

    from tgmae.data.fileid import rewritten_in_place

    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 8)
    before = file_identity(str(video))
    copy = tmp_path / "node" / "v.mp4"
    copy.parent.mkdir()
    shutil.copy(video, copy)  # a data set copied to a node's disk: another inode, mtime now
    assert not rewritten_in_place(before, file_identity(str(copy)))
    assert not rewritten_in_place(before, file_identity(str(video)))  # unchanged
    _rewrite_in_place(video, before[1] + 10**9)
    now = file_identity(str(video))
    assert now[0] == before[0] and copy_key(now) == copy_key(before)  # the size alone does not tell
    assert rewritten_in_place(before, now) and rewritten_in_place(json.loads(json.dumps(before)), now)
    _frames(tmp_path / "frames", 3)
    folder = video_identity(str(tmp_path / "frames"))
    assert not rewritten_in_place(folder, folder) and not rewritten_in_place(copy_key(before), now)
    assert not rewritten_in_place(None, now) and not rewritten_in_place(before, None)


def test_a_content_key_tells_a_copy_from_another_file_moved_onto_the_path(tmp_path, monkeypatch):
    """Re-trial 32A S1: another file of the same size moved onto a video's path (`mv`: a new inode,
    as a copy to a node's disk has) kept the video's captions. `content_key` (size and 8 blocks of
    4 KiB: 32 KiB read however long the file) is a copy's and not the other file's; it is kept by
    the file's stat (memory and user cache), so a second look reads nothing; frame folders: None."""
    import shutil

    import tgmae.data.fileid as fileid

    monkeypatch.setenv("TGMAE_CACHE_DIR", str(tmp_path / "cache"))
    for size in (3000, 200_000):  # read whole; 8 blocks of a longer file
        video = tmp_path / f"v{size}.mp4"
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        video.write_bytes(data)
        key = fileid.content_key(str(video))
        copy = tmp_path / "node" / video.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(video, copy)
        assert fileid.content_key(str(copy)) == key and len(key) == 32
        other = tmp_path / "other.mp4"
        other.write_bytes(data[:-4096] + bytes(4096))  # the last block differs, the size does not
        other.replace(video)
        assert fileid.content_key(str(video)) != key
    reads = []
    monkeypatch.setattr(fileid, "_read_content_key", lambda path, size: reads.append(path) or "k")
    fileid._content_keys.clear()  # a new process: the user cache answers
    assert fileid.content_key(str(copy)) == key and not reads
    os.utime(copy, ns=(1, 1))  # its stat changed: read again
    assert fileid.content_key(str(copy)) == "k" and reads == [os.path.realpath(copy)]
    assert fileid.content_key(str(tmp_path / "missing.mp4")) is None
    assert fileid.content_key(str(tmp_path / "missing"), identity=["frames", 2, "a", "b"]) is None
    assert set(fileid.video_stamp(str(copy))) == {"video", "content"}
    monkeypatch.setenv("TGMAE_CACHE_DIR", str(tmp_path / "cache2"))  # a caption run's stamps: not kept there
    monkeypatch.setattr(fileid, "_read_content_key", lambda path, size: "k2")
    assert fileid.video_stamp(str(tmp_path / "v3000.mp4"))["content"] == "k2"
    assert not (tmp_path / "cache2").exists()


def test_two_hundred_files_content_keys_cost_little(tmp_path, monkeypatch):
    """Re-trial 32A S1: the content keys of a set are read once (32 KiB a file); a training start
    later finds them in the user cache without opening a file."""
    import tgmae.data.fileid as fileid

    monkeypatch.setenv("TGMAE_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for i in range(200):
        p = tmp_path / f"{i}.avi"
        p.write_bytes(os.urandom(40_000))
        paths.append(str(p))
    first = [fileid.content_key(p) for p in paths]
    assert len(set(first)) == 200
    fileid._content_keys.clear()
    monkeypatch.setattr(fileid, "_read_content_key", lambda path, size: pytest.fail(f"{path} read again"))
    assert [fileid.content_key(p) for p in paths] == first


def _image(path, seed: int) -> None:
    """A 48x48 BMP frame of random pixels (`seed`): every such frame has the same size on disk."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_a_frame_folders_content_key_tells_a_copy_from_frames_replaced(tmp_path, monkeypatch):
    """Re-trial 33B S2: frames of a folder replaced by `mv` or rewritten in place with images of the
    same size kept its `copy_key` (names and sizes), so its old captions were used. Its `content_key`
    (the names and sizes, and 8 frames' contents evenly spread, first and last included) is a copy's
    (`cp -r`) and not that of the folder with other frames, whichever sampled frame changed; it is
    kept by the folder's identity (memory and user cache), and an identity given is not taken again
    (the frames are not stat'ed twice)."""
    import shutil

    import tgmae.data.fileid as fileid

    monkeypatch.setenv("TGMAE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "v0"
    folder.mkdir()
    for i in range(1, 13):
        _image(folder / f"img_{i:05d}.bmp", i)
    key = fileid.content_key(str(folder))
    assert len(key) == 32 and fileid._sampled(12) == [0, 1, 3, 4, 6, 7, 9, 11] and fileid._sampled(3) == [0, 1, 2]
    copy = Path(shutil.copytree(folder, tmp_path / "node" / "v0"))  # cp -r: new inodes, ctimes, mtimes
    assert copy_key(video_identity(str(copy))) == copy_key(video_identity(str(folder)))
    assert fileid.content_key(str(copy)) == key
    first, last = folder / "img_00001.bmp", folder / "img_00012.bmp"
    _image(tmp_path / "other.bmp", 99)
    assert os.path.getsize(tmp_path / "other.bmp") == os.path.getsize(first)
    os.replace(tmp_path / "other.bmp", last)  # mv: same size, a new inode
    moved = fileid.content_key(str(folder))
    assert moved not in (None, key) and copy_key(video_identity(str(folder))) == copy_key(video_identity(str(copy)))
    with open(first, "r+b") as f:  # rewritten in place: same inode
        f.seek(100)
        f.write(bytes(64))
    assert fileid.content_key(str(folder)) not in (key, moved)
    stats, entry = [], fileid.entry_identity
    monkeypatch.setattr(fileid, "entry_identity", lambda e: stats.append(e.name) or entry(e))
    monkeypatch.setattr(fileid, "_read_content_key", lambda path, size: pytest.fail(f"{path} read again"))
    fileid._content_keys.clear()  # a new process: the user cache answers
    ident = video_identity(str(copy))
    stats.clear()
    assert fileid.content_key(str(copy), identity=ident) == key and not stats
    assert fileid.video_stamp(str(copy), ident) == {"video": ident, "content": key}


def test_a_frame_folders_content_key_costs_little(tmp_path, monkeypatch):
    """Re-trial 33B S2: a folder of 300 small frames reads 8 of them once (names listed, no frame
    stat'ed but the 8: its identity was taken); later the user cache answers without a read."""
    import tgmae.data.fileid as fileid

    monkeypatch.setenv("TGMAE_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "v"
    _frames(folder, 300)
    ident = video_identity(str(folder))
    reads, read = [], fileid._read_content_key
    monkeypatch.setattr(fileid, "_read_content_key", lambda path, size: reads.append(path) or read(path, size))
    stats, stat = [], fileid.file_identity
    monkeypatch.setattr(fileid, "file_identity", lambda path: stats.append(path) or stat(path))
    key = fileid.content_key(str(folder), identity=ident)
    names = [os.path.basename(p) for p in reads]
    assert names == [f"{i:05d}.jpg" for i in (1, 43, 86, 129, 171, 214, 257, 300)]
    assert sorted(set(stats)) == sorted(reads)  # each sampled frame stat'ed before and after its read
    fileid._content_keys.clear()
    reads.clear()
    assert fileid.content_key(str(folder), identity=ident) == key and not reads
