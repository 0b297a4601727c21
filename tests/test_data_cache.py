"""tgmae.data.cache: cached samples equal decoded ones; keys follow the files; workers share it."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tgmae.config import ConfigError, DataConfig
from tgmae.data import cache as cache_mod
from tgmae.data.annotations import VideoRecord
from tgmae.data.cache import build_clip_cache, build_disk_cache, cache_key
from tgmae.data.dataset import VideoDataset
from tgmae.data.video import write_video
from tgmae.masking.simple import TubeMask

from test_data_dataset import _clip  # textured moving clip that compresses like footage

KEYS = ("video", "mask", "frame_indices", "crop", "index", "label", "load_failures", "caption_id")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[VideoRecord]:
    """Three videos of different sizes and GOPs, a record with a frame range, a broken file, a
    too-short video and a frame folder."""
    r = tmp_path_factory.mktemp("cachevids")
    write_video(r / "a.mp4", _clip(40, 72, 96, 0), fps=25, gop=12)
    write_video(r / "b.mp4", _clip(30, 80, 64, 1), fps=30, gop=30)
    write_video(r / "c.mp4", _clip(36, 64, 88, 2), fps=24, gop=250)
    write_video(r / "short.mp4", _clip(3, 32, 32, 4), fps=24, gop=250)
    (r / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    (r / "frames").mkdir()
    for i, img in enumerate(_clip(16, 40, 56, 3)):
        Image.fromarray(img).save(r / "frames" / f"img_{i:05d}.jpg")
    p = lambda n: str(r / n)  # noqa: E731
    return [VideoRecord(p("a.mp4"), 0, "a"), VideoRecord(p("b.mp4"), 1, "b"),
            VideoRecord(p("broken.mp4"), 0, "broken"), VideoRecord(p("c.mp4"), 1, "c"),
            VideoRecord(p("a.mp4"), 1, "a_part", start_frame=5, end_frame=25),
            VideoRecord(p("short.mp4"), 0, "short"), VideoRecord(p("frames"), 1, "frames")]


def _cfg(**kw) -> DataConfig:
    base = dict(num_frames=4, frame_stride=3, image_size=32, max_load_retries=8, num_workers=0)
    base.update(kw)
    return DataConfig(**base)


def _same(x: dict, y: dict) -> None:
    for k in KEYS:
        if k in x:
            assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k


@pytest.mark.parametrize("mode", ["memory", "disk"])
@pytest.mark.parametrize("augment,train,sampling", [("pretrain", True, "dense"), ("finetune", True, "tsn"),
                                                    ("pretrain", False, "dense")])
def test_cached_sample_equals_decoded_sample(records, tmp_path, mode, augment, train, sampling):
    cfg = _cfg(sampling=sampling)
    kw = dict(train=train, seed=5, augment=augment, token_grid=(2, 2, 2), mask_generator=TubeMask(0.5))
    video = VideoDataset(records, cfg, **kw)
    cached = VideoDataset(records, _cfg(sampling=sampling, cache=mode, cache_dir=str(tmp_path)), **kw)
    assert video.cache is None and cached.cache is not None
    failures = 0
    for epoch in (0, 3):
        video.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(records)):
            a, b = video[i], cached[i]
            _same(a, b)
            failures += int(a["load_failures"])
    assert failures >= 2  # broken.mp4 and short.mp4 were replaced the same way on both paths


def test_cache_holds_only_the_sampled_span_and_reads_exact_frames(records):
    from tgmae.data.video import read_frames

    c = build_clip_cache(records, "memory")
    a = records[0].path
    assert c.entries[a].lo == 0 and c.entries[a].count == 40  # whole video: one record has no range
    assert c.num_frames(a) == 40
    idx = np.array([0, 7, 39])
    assert np.array_equal(c.read(a, idx), read_frames(a, idx))
    with pytest.raises(IndexError, match="outside the cached span"):
        c.read(a, [40])
    part = build_clip_cache([records[4]], "memory")  # a range-only record caches frames 5..24
    e = part.entries[a]
    assert (e.lo, e.count, e.num_frames) == (5, 20, 40)
    assert np.array_equal(part.read(a, [5, 24]), read_frames(a, [5, 24]))
    from tgmae.data.video import VideoError

    with pytest.raises(VideoError) as err:
        c.num_frames(records[2].path)  # broken: the build-time error, raised when drawn
    with pytest.raises(VideoError) as direct:
        read_frames(records[2].path, [0])
    assert (err.value.kind, str(err.value)) == (direct.value.kind, str(direct.value))  # same verdict
    assert str(err.value).count(records[2].path) == 1


def test_disk_cache_is_reused_and_never_stale(records, tmp_path, monkeypatch, caplog):
    recs = records[:2]
    first = build_disk_cache(recs, tmp_path)
    key = first.key
    assert (tmp_path / f"{key}.u8").stat().st_size == first.nbytes
    ref = first.read(recs[0].path, [1, 2])

    def no_decode(*a, **k):
        raise AssertionError("a matching cache must not decode again")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "_decode", no_decode)
        again = build_disk_cache(recs, tmp_path)
    assert again.key == key and np.array_equal(again.read(recs[0].path, [1, 2]), ref)

    # a re-encoded video with the same name: new size/mtime -> new key -> new frames
    path = recs[0].path
    write_video(path, _clip(40, 72, 96, 9), fps=25, gop=12)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = build_disk_cache(recs, tmp_path)
    assert fresh.key != key
    assert not np.array_equal(fresh.read(path, [1, 2]), ref)

    # metadata whose inputs differ from the key's (a collision or a hand-edited file): rebuilt
    meta_path = tmp_path / f"{fresh.key}.json"
    meta = json.loads(meta_path.read_text())
    meta["inputs"]["videos"][0][1] = [0, 0]
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="tgmae.data.cache"):
        rebuilt = build_disk_cache(recs, tmp_path)
    assert fresh.key in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(rebuilt.read(path, [1, 2]), fresh.read(path, [1, 2]))

    # a truncated data file: rebuilt, not read short
    (tmp_path / f"{fresh.key}.u8").write_bytes(b"\x00" * 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tgmae.data.cache"):
        build_disk_cache(recs, tmp_path)
    assert "truncated" in caplog.text and fresh.key in caplog.text


def test_a_killed_builds_temp_file_is_removed_by_the_next_build(records, tmp_path):
    """issue 28: a killed disk-cache build left its temp file (650 MB in one trial) for good."""
    import subprocess
    import sys

    from tgmae.atomic import temp_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    key = cache_mod.cache_key(records[:1])[0]
    mine = temp_path(tmp_path / f"{key}.u8")
    left = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    left.write_bytes(b"\x00" * 4096)
    build_disk_cache(records[:1], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.u8"]


def test_two_runs_building_one_disk_cache_take_turns(records, tmp_path, caplog):
    """issue 28: the decoded-clip disk cache had no lock: two runs sharing data.cache_dir decoded the
    same videos into it at once. A second builder now waits for the first (refused naming it when
    the wait runs out), then uses what it built; a killed builder's lock is taken over."""
    import subprocess
    import sys
    import textwrap
    import threading

    from tgmae.locks import LockError, lock_file

    recs = records[:2]
    data_path = tmp_path / f"{cache_key(recs)[0]}.u8"
    code = textwrap.dedent(f"""
        import sys
        from tgmae.data.annotations import VideoRecord
        from tgmae.data.cache import build_disk_cache
        from tgmae.locks import acquire
        acquire({str(data_path)!r}, "data.cache_dir")
        print("held", flush=True)
        sys.stdin.readline()
        build_disk_cache([VideoRecord(p, 0, v) for p, v in {[(r.path, r.video_id) for r in recs]!r}],
                         {str(tmp_path)!r})
    """)
    first = subprocess.Popen([sys.executable, "-c", code, "pretrain", "data.cache=disk"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as e:
            build_disk_cache(recs, tmp_path, wait=0.2)
        assert f"pid {first.pid}" in str(e.value) and "data.cache_dir" in str(e.value)
        got = {}
        second = threading.Thread(target=lambda: got.update(cache=build_disk_cache(recs, tmp_path, wait=120)))
        with caplog.at_level(logging.INFO):
            second.start()
            first.stdin.write("go\n")  # the first builds, then ends; the second waited for it
            first.stdin.flush()
            assert first.wait(timeout=120) == 0
            second.join(timeout=120)
        assert got["cache"].key == data_path.stem and ": using " in caplog.text
        assert "building decoded-clip cache" not in caplog.text  # built once, by the first
    finally:
        first.kill()
        first.wait()
    assert not lock_file(data_path).exists()
    dead = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "held"
    dead.kill()  # killed while building: its lock file stays, its lock does not
    dead.wait()
    data_path.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_disk_cache(recs, tmp_path, wait=0)
    assert f"taking over the lock of pid {dead.pid}" in caplog.text and "building decoded-clip cache" in caplog.text


def test_key_changes_with_frame_ranges_and_files(records):
    base, _ = cache_key(records[:2])
    assert cache_key(records[:2])[0] == base
    assert cache_key(records[:1])[0] != base
    moved = [VideoRecord(records[0].path, 0, "a", start_frame=2)] + records[1:2]
    assert cache_key(moved)[0] != base


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_workers_persist_share_the_cache_and_match_one_process(records, tmp_path, mode):
    cfg = _cfg(cache=mode, cache_dir=str(tmp_path), num_workers=2)  # the loader's: the epoch is shared
    ds = VideoDataset(records, cfg, train=True, seed=3, token_grid=(2, 2, 2), mask_generator=TubeMask(0.5))
    loader = DataLoader(ds, batch_size=7, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)  # reaches the persistent workers' copies
        got = next(iter(loader))
        ds_ref = [ds[i] for i in range(len(records))]
        for k in ("video", "frame_indices", "crop", "mask", "load_failures"):
            assert torch.equal(got[k], torch.stack([torch.as_tensor(s[k]) for s in ds_ref])), (epoch, k)


def test_pickled_cache_is_not_a_copy(records, tmp_path):
    """What a spawned worker receives: the disk cache reopens its file, the memory cache keeps
    its shared-memory tensor."""
    disk = build_clip_cache(records[:2], "disk", str(tmp_path))
    blob = pickle.dumps(disk)
    assert len(blob) < 10_000 < disk.nbytes
    back = pickle.loads(blob)
    assert np.array_equal(back.read(records[0].path, [3]), disk.read(records[0].path, [3]))
    mem = build_clip_cache(records[:2], "memory")
    assert mem.data.is_shared()


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="data.cache"):
        DataConfig(cache="ram")
    with pytest.raises(ConfigError, match="data.with_motion"):
        DataConfig(cache="memory", with_motion=True)


def _ddp_build(rank: int, world: int, port: int, paths: list[str], folder: str, out: str) -> None:
    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        decoded = []
        real = cache_mod._decode
        cache_mod._decode = lambda *a, **k: decoded.append(a[0]) or real(*a, **k)
        c = build_clip_cache([VideoRecord(p, 0, Path(p).stem) for p in paths], "disk", folder)
        frames = c.read(paths[0], [0, 5])
        torch.save({"decoded": len(decoded), "frames": torch.from_numpy(frames)}, f"{out}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_disk_cache_under_ddp_is_built_once(records, tmp_path):
    """Local rank 0 decodes; rank 1 waits at the barrier and opens the same file."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [records[0].path, records[1].path]
    mp.spawn(_ddp_build, args=(2, port, paths, str(tmp_path / "c"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["decoded"], r1["decoded"]) == (2, 0)
    assert torch.equal(r0["frames"], r1["frames"])
    assert len(list((tmp_path / "c").glob("*.u8"))) == 1


def test_disk_cache_without_a_folder_when_the_user_cache_is_off(records, monkeypatch, tmp_path):
    monkeypatch.setenv("TGMAE_CACHE_DIR", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="data.cache=disk.*data.cache_dir"):
        build_clip_cache(records, "disk", "")
    assert list(tmp_path.iterdir()) == []  # nothing written to the home folder


def test_a_user_cache_folder_that_is_a_file_is_named_as_tgmae_cache_dir(records, monkeypatch, tmp_path):
    """Re-trial 19B (M5): with data.cache_dir empty and TGMAE_CACHE_DIR a file, the refusal told
    the user to give data.cache_dir another path, a key they never set."""
    from tgmae.errors import UserError

    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("TGMAE_CACHE_DIR", str(afile))
    with pytest.raises(UserError) as e:
        build_clip_cache(records, "disk", "")
    assert "give TGMAE_CACHE_DIR (or data.cache_dir) another path" in str(e.value)
    with pytest.raises(UserError) as e:
        build_clip_cache(records, "disk", str(afile))
    assert "(data.cache_dir)" in str(e.value) and "TGMAE_CACHE_DIR" not in str(e.value)
