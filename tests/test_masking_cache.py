"""The similarity cache's files (`tgmae.masking.cache`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from torch.utils.data import Dataset

from tgmae.atomic import temp_path
from tgmae.masking.cache import remove_stale_cache_temps


def test_stale_temps_of_the_top_folder_and_of_maps_are_removed(tmp_path):
    """A killed `tgmae masks` left temps of index.json / manifest.json in the cache's top folder;
    only those in maps/ were removed. A live writer's temps stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "maps").mkdir()
    stale = []
    for target in (tmp_path / "index.json", tmp_path / "manifest.json", tmp_path / "maps" / "v.npz"):
        name = temp_path(target).name.replace(f"-{os.getpid()}-", f"-{dead}-")
        assert f"-{dead}-" in name
        stale.append(target.parent / name)
        stale[-1].write_text("{")
    live = temp_path(tmp_path / "index.json")
    live.write_text("{")
    assert remove_stale_cache_temps(tmp_path) == 3
    assert not any(p.exists() for p in stale) and live.exists()


def _one_map_cache(root):
    """A cache of one video 'v/1' with one caption, as `tgmae masks` writes it."""
    import json

    import torch

    from tgmae.masking.cache import CacheManifest, write_entry, write_manifest_or_check

    write_manifest_or_check(root, CacheManifest("clip", "f", "faithful", "source=s", "sha", 2, 32, 16, 1, None, 4))
    rel = write_entry(root, "v/1", torch.rand(1, 2, 2, 2), torch.tensor([0, 2]), torch.rand(1, 4), ["a cat"])
    (root / "index.json").write_text(json.dumps({"videos": {"v/1": rel}, "skipped": {}}))
    return root / rel


class _Maps(Dataset):
    def __init__(self, root):
        self.root = root

    def __len__(self):
        return 1

    def __getitem__(self, i):
        from tgmae.masking.cache import SimilarityCache

        return SimilarityCache(self.root).entry("v/1").sim


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_map_file_is_one_line_naming_it(tmp_path, damage):
    """issue 28: a truncated .npz (zipfile.BadZipFile) or a garbage file ("This file contains pickled
    (object) data") was raised in DataLoader worker 0 without naming the file."""
    import torch

    from tgmae.errors import UserError, worker_user_error
    from tgmae.masking.cache import SimilarityCache

    path = _one_map_cache(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x93NUMPY garbage" * 20)
    with pytest.raises(UserError) as e:
        SimilarityCache(tmp_path).entry("v/1")
    assert str(path) in str(e.value) and "tgmae masks" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):  # the caption check at set-up reads the same files
        SimilarityCache(tmp_path).check_videos(["v/1"], {"v/1": ["a dog"]})
    loader = torch.utils.data.DataLoader(_Maps(tmp_path), num_workers=1)
    with pytest.raises(Exception) as e:
        next(iter(loader))
    line = worker_user_error(e.value)
    assert line is not None and str(path) in line


@pytest.mark.parametrize("extra", [[], ["--merge-only"], ["--rebuild"]])
def test_masks_refuses_a_users_folder_that_is_not_a_cache_naming_it(tmp_path, capsys, extra):
    """issue 28: `masks --out DIR` into a non-empty folder without manifest.json (a user's index.json,
    maps/) was accepted (only --rebuild refused it); now one line naming the folder, exit 2, before
    CLIP is loaded, nothing written. An empty folder and writers' temps are not refused."""
    from tgmae.cli import main
    from tgmae.masking.cache import check_cache_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.json").write_text('{"mine": 1}')
    (tmp_path / "a.csv").write_text("path,label\nv.mp4,0\n")
    argv = ["masks", "--format", "csv", "--root", str(tmp_path), "a.csv", "--captions", "c.jsonl",
            "--clip", str(tmp_path / "no-clip"), "--out", str(mine), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{mine} (" in err[0] and "manifest.json" in err[0] and "no-clip" not in err[0], err
    assert sorted(p.name for p in mine.iterdir()) == ["index.json"] and (mine / "index.json").read_text() == '{"mine": 1}'
    empty = tmp_path / "empty"
    empty.mkdir()
    temp_path(empty / "manifest.json").write_text("{")  # a writer's temp (another rank's manifest)
    check_cache_folder(empty, "--out")
    check_cache_folder(tmp_path / "new", "--out")
    (mine / "manifest.json").write_text("{}")  # a cache's folder: its manifest is checked later
    check_cache_folder(mine, "--out")


def test_a_manifest_written_by_another_build_a_moment_ago_is_checked_not_replaced(tmp_path, monkeypatch):
    """issue 28 re-trial 12: a sharded `tgmae masks` locks only its ranks' parts, so a second build
    with other settings into the same folder could pass the "no manifest yet" check at the same
    moment and replace the first's manifest, mixing maps of both settings. The manifest is now
    created exclusively: the build that comes second is checked against the first's and refused."""
    import pytest

    from tgmae.masking import cache

    first = cache.CacheManifest("clip", "f", "faithful", "source=s", "sha", 2, 32, 16, 1, None, 4)
    second = cache.CacheManifest("clip", "f", "faithful", "source=s", "sha", 2, 64, 16, 1, None, 4)
    real = cache.create_exclusive_text

    def other_build_first(path, text):  # the other build's manifest lands between check and write
        real(path, json.dumps(cache.asdict(first), indent=2) + "\n")
        return real(path, text)

    monkeypatch.setattr(cache, "create_exclusive_text", other_build_first)
    with pytest.raises(cache.CacheMismatchError, match="image_size"):
        cache.write_manifest_or_check(tmp_path, second)
    assert cache.read_manifest(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temp left


def test_create_exclusive_text_never_replaces(tmp_path):
    from tgmae.atomic import create_exclusive_text

    path = tmp_path / "sub" / "m.json"
    assert create_exclusive_text(path, "one") is True
    assert create_exclusive_text(path, "two") is False
    assert path.read_text() == "one" and sorted(p.name for p in path.parent.iterdir()) == ["m.json"]


def test_map_files_of_short_ids_keep_their_names():
    """Caches built before long ids were shortened stay valid: a short id's maps are where they were."""
    from tgmae.masking.cache import entry_file

    assert entry_file("v/1") == "maps/v%2F1.npz" and entry_file("クラス/b") == "maps/%E3%82%AF%E3%83%A9%E3%82%B9%2Fb.npz"


@pytest.mark.parametrize("name", ["日本語の動画" * 7, "é" * 60 + "_à_la_plage"], ids=["japanese", "latin"])
def test_masks_of_a_long_non_ascii_id_are_written_and_read(tmp_path, name):
    """Issue 28 (re-trial 21A, T1): a 42-character Japanese file name (126 bytes, valid on disk)
    percent-encoded into a 412-byte map file name: `tgmae masks` died with OSError [Errno 36]
    File name too long, a traceback. Its maps are now written under `id_file_name` (a readable
    prefix and a hash of the whole id), read back by id, and a rerun finds them."""
    import numpy as np

    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.cli import main
    from tgmae.data.video import write_video
    from tgmae.masking.cache import SimilarityCache

    root = tmp_path / "data"
    ids = [f"クラス/{name}", "クラス/b"]
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    for vid in ids:
        (root / f"{vid}.mp4").parent.mkdir(parents=True, exist_ok=True)
        write_video(root / f"{vid}.mp4", frames, fps=10)
    (root / "train.csv").write_text("path,label\n" + "".join(f'"{v}.mp4",{i}\n' for i, v in enumerate(ids)))
    (root / "o.jsonl").write_text("".join(json.dumps({"video_id": v, "captions": [c], "source": "oracle",
                                                      "model": "{}"}) + "\n" for v, c in zip(ids, "xy")))
    clip = save_tiny_clip(tmp_path / "clip", dim=16)
    argv = ["masks", "--format", "csv", "--root", str(root), str(root / "train.csv"), "--captions",
            str(root / "o.jsonl"), "--clip", str(clip), "--out", str(tmp_path / "m"), "--image-size", "32",
            "--patch-size", "16", "--no-progress"]
    assert main(argv) == 0
    maps = sorted(p.name for p in (tmp_path / "m" / "maps").iterdir())
    assert len(maps) == 2 and all(len(n.encode()) <= 200 for n in maps), maps
    cache = SimilarityCache(tmp_path / "m")
    assert [cache.entry(v).captions for v in ids] == [["x"], ["y"]]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "m" / "maps").iterdir()}
    assert main(argv) == 0  # the rerun finds both maps: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "m" / "maps").iterdir()} == before


def test_a_later_runs_part_lines_win_over_another_world_sizes(tmp_path):
    """Re-trial 23B (M1): a 2-process `tgmae masks` whose videos all failed, then a 1-process run
    that made their maps: the parts were read by name (rank0-of-1 before rank0-of-2), so the old
    failures won, and every rerun reported them. Lines are read in the order of their runs."""
    from tgmae.masking.cache import read_parts
    from tgmae.masking.precompute import _append

    parts = tmp_path / "parts"
    parts.mkdir()
    with open(parts / "rank0-of-2.jsonl", "w") as f:  # the earlier run, written by an older tgmae: no `t`
        f.write(json.dumps({"video_id": "a", "reason": "file not found"}) + "\n")
    with open(parts / "rank1-of-2.jsonl", "w") as f:  # by a tgmae that stamped lines with the clock
        f.write(json.dumps({"video_id": "b", "reason": "file not found", "t": 1_700_000_000 * 10**9}) + "\n")
    with open(parts / "rank0-of-1.jsonl", "w") as f:  # the later run, at another world size
        for vid in ("a", "b"):
            _append(f, {"video_id": vid, "file": f"maps/{vid}.npz", "captions": "k", "video": "i"}, 1)
    videos, skipped = read_parts(tmp_path)
    assert videos == {"a": "maps/a.npz", "b": "maps/b.npz"} and skipped == {}


def test_a_later_runs_lines_win_whatever_the_clock_says(tmp_path, monkeypatch):
    """Session 13 diff read: part lines were ordered by `time.time_ns()`, so a clock stepped back
    between two runs (NTP, another host writing the shared folder) let an earlier run's failures
    win again. Lines carry their run's number (1 + the largest in the parts when the run starts):
    a 2-process run whose videos could not be read, then a 1-process run that made their maps, with
    the clock set back by a day in between: the maps win."""
    import time

    import numpy as np

    from tgmae.captions.tiny import save_tiny_clip
    from tgmae.data.video import write_video
    from tgmae.masking.cache import next_run, part_records, read_parts
    from tgmae.clip.features import load_clip
    from tgmae.masking.precompute import PrecomputeOptions, precompute

    root, out = tmp_path / "data", tmp_path / "m"
    root.mkdir()
    videos = [(v, str(root / f"{v}.mp4")) for v in ("a", "b")]
    (root / "o.jsonl").write_text("".join(json.dumps({"video_id": v, "captions": [v], "source": "oracle",
                                                      "model": "{}"}) + "\n" for v, _ in videos))
    clip = load_clip(str(save_tiny_clip(tmp_path / "clip", dim=16)))
    opts = PrecomputeOptions(image_size=32, patch_size=16)
    for _, path in videos:
        open(path, "wb").write(b"not a video")
    day = 86_400 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: 10 * day)
    run = next_run(part_records(out))  # as `tgmae masks` ranks take it: read before any writes
    for rank in (0, 1):
        assert precompute(videos, str(root / "o.jsonl"), clip, out, opts, rank, 2, progress=False,
                          run=run)["skipped"] == 1
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    for _, path in videos:
        write_video(path, frames, fps=10)
    monkeypatch.setattr(time, "time_ns", lambda: 9 * day)  # the clock was set back
    assert precompute(videos, str(root / "o.jsonl"), clip, out, opts, 0, 1, progress=False)["done"] == 2
    assert read_parts(out) == ({"a": "maps/a.npz", "b": "maps/b.npz"}, {})
    assert [r["run"] for r in part_records(out)] == [1, 1, 2, 2] and next_run(part_records(out)) == 3


def test_part_lines_of_the_formats_before_run_numbers_read_as_older_runs(tmp_path):
    """Lines without a run number (written before runs were numbered) are older runs: those with
    neither `run` nor `t` first, in file order, then those with `t` in its order, then numbered runs."""
    from tgmae.masking.cache import next_run, part_records, read_parts

    parts = tmp_path / "parts"
    parts.mkdir()
    lines = {"rank0-of-1.jsonl": [{"video_id": "a", "file": "maps/a.npz", "run": 1},
                                  {"video_id": "c", "reason": "unreadable", "t": 7}],
             "rank0-of-2.jsonl": [{"video_id": "a", "reason": "unreadable", "t": 9},
                                  {"video_id": "b", "file": "maps/b.npz"}],
             "rank1-of-2.jsonl": [{"video_id": "b", "reason": "unreadable"},
                                  {"video_id": "c", "file": "maps/c.npz", "t": 8}]}
    for name, recs in lines.items():
        (parts / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [(r["video_id"], r.get("t"), r.get("run")) for r in part_records(tmp_path)] == [
        ("b", None, None), ("b", None, None), ("c", 7, None), ("c", 8, None), ("a", 9, None), ("a", None, 1)]
    assert read_parts(tmp_path) == ({"a": "maps/a.npz", "c": "maps/c.npz"}, {"b": "unreadable"})
    assert next_run(part_records(tmp_path)) == 2


def _run_number_worker(rank: int, port: int, out: str, queue) -> None:
    import os

    import torch.distributed as dist

    from tgmae.commands.masks import _run_number
    from tgmae.distributed import cleanup

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue.put((rank, _run_number(out, rank)))
    finally:
        cleanup()


def test_the_ranks_of_one_masks_run_take_rank_0s_run_number(tmp_path, free_port):
    """Under torchrun every rank's part lines carry the number rank 0 read (1 + the parts' largest)."""
    from conftest import run_ranks

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "rank0-of-1.jsonl").write_text(json.dumps({"video_id": "a", "reason": "x", "run": 3}) + "\n")
    assert run_ranks(_run_number_worker, 2, free_port, str(tmp_path)) == {0: 4, 1: 4}
