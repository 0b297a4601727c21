"""Data pipeline throughput per worker: decode + sample (+ augment) vs raw PyAV seek-and-decode;
with --cache, the decoded-clip cache and persistent workers against the video path.

    python benchmarks/data_pipeline.py [--rounds 7] [--clips 8] [--json PATH]
    python benchmarks/data_pipeline.py --cache [--videos 160] [--rounds 5] [--workers 2] [--json PATH]
    python benchmarks/data_pipeline.py --views [--rounds 7] [--clips 8] [--json PATH]

Writes 10 s, 30 fps H.264 test videos (340x256 and 640x360, GOP 30 and 250) into a temporary
folder, then for each video times, on the same clip positions (16 frames x stride 4):

  raw      plain PyAV: open, seek to the clip start (time from fps), decode to the last frame,
           convert the wanted frames to RGB (what a hand-written loader does);
  ours     `VideoReader.read` with the dataset's sampling (exact frame index, 1 decoder thread),
           the file's frame index in this process's memory (a persistent worker);
  ours_disk the same with the index loaded from the on-disk cache at every open (a worker that
           restarts every epoch);
  ours_mt  the same with FFmpeg's automatic decoder threads (thread_type AUTO);
  e2e      a full `VideoDataset` sample: decode + sample + multi-scale crop + resize 224 +
           normalize + tube mask.

and the augmentation alone (multi-scale crop + resize 224 + normalize of a decoded 16-frame
clip). One process, torch at 1 thread (a DataLoader worker). Variants alternate in every round
and the figures are medians over rounds, because other processes share the CPU: compare the
ratios, which are taken within one run. Each variant is timed in CPU time of this process (what
one worker costs; robust to other processes on the machine) and in wall time; for AUTO decoder
threads CPU time sums the threads, so it measures efficiency, wall time latency. The decoder's
output frame count per clip (deterministic) shows the work saved by skipping unwanted
non-reference frames. Also timed: building a video's frame index (one decode of the whole
file, done once per file and cached).

--cache: the study's pretraining setting (synthetic set written here, 128 px x 48 frames; 8 frames
x stride 4 at 64 px, tiny ViT, batch 16, tube mask 0.9). Variants, alternating in every round,
each one epoch of the training videos per round:

  video_restart  decode every sample, DataLoader workers started anew each epoch (before issue 14)
  video          decode every sample, persistent workers
  memory         `data.cache=memory`, persistent workers
  disk           `data.cache=disk`, persistent workers
  video_w0       decode every sample, no workers: samples made in the training process
  memory_w0      `data.cache=memory`, no workers
  model          the model step alone on one batch held in memory (the ceiling)

Reported: training steps/s (wall, `--workers` workers, torch 1 thread in the main process), the
loader alone in clips/s (CPU time of one process with 0 workers: what a worker costs, and wall
with `--workers`), and the cache build time and size.

--views: repeated sampling (`data.num_sample`, issue 24). Views/s per core (CPU time of one
process, torch 1 thread) for 16x4 clips at 224 from a 10 s 568x320 H.264 MP4 (Kinetics after
`tgmae data prepare`, GOP 32) and a 10 s 426x240 VP9 WebM (SSv2-like), at k = 1, 2, 4 in both
repeat modes, end to end (`VideoDataset` samples collated into a batch, a worker's whole job:
decode + sampling + multi-scale crop + flip + normalize + tube mask 0.9 + collate), with each
view's CPU time split into decode (everything but the next two: open, seek, decode, RGB
conversion, sampling, collate), augmentation (the transform) and mask (the generator). Variants alternate in every
round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from tgmae.autotune import cpu_info
from tgmae.config import DataConfig
from tgmae.data.annotations import VideoRecord
from tgmae.data import frame_index as fidx
from tgmae.data.dataset import VideoDataset, sample_generator
from tgmae.data.sampling import dense_indices
from tgmae.data.transforms import PretrainTransform
from tgmae.data.video import VideoReader, read_frames, write_video
from tgmae.masking.simple import TubeMask

NUM_FRAMES, STRIDE, SECONDS, FPS = 16, 4, 10, 30


def make_video(path: Path, width: int, height: int, gop: int) -> None:
    """Moving textured blobs over a drifting gradient: compresses like real footage (P/B-frames
    with motion), not like noise."""
    n = SECONDS * FPS
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    tex = np.kron(tex, np.ones((8, 8, 1), np.uint8))
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        bg = np.stack([(xx + 2 * i) % 256, (yy + i) % 256, ((xx + yy) // 2) % 256], -1)
        img = bg.astype(np.uint8)
        for k in range(3):
            cy = int(height / 2 + height / 3 * np.sin(i / 20 + k))
            cx = int(width / 2 + width / 3 * np.cos(i / 25 + 2 * k))
            y0, x0 = max(cy - height // 6, 0), max(cx - width // 8, 0)
            patch = tex[y0 % 8: y0 % 8 + height // 3, x0 % 8: x0 % 8 + width // 4]
            img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch[: height - y0, : width - x0]
        frames[i] = img
    write_video(path, frames, fps=FPS, gop=gop)


def raw_pyav(path: str, idx: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference loader: seek by time from the nominal fps, decode forward, keep wanted frames.
    Returns (frames, frames decoded)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        tb, fps = float(s.time_base), float(s.average_rate)
        c.seek(int(idx[0] / fps / tb), stream=s, backward=True)
        want = set(int(i) for i in idx)
        got, n = {}, 0
        last = int(idx[-1])
        for f in c.decode(s):
            n += 1
            i = int(round(f.pts * tb * fps))
            if i in want:
                got[i] = f.to_ndarray(format="rgb24")
            if i >= last:
                break
    return np.stack([got[int(i)] for i in idx]), n


def ours(path: str, idx: np.ndarray, threads: int = 1, thread_type: str = "NONE") -> tuple[np.ndarray, int]:
    with VideoReader(path, threads=threads, thread_type=thread_type) as r:
        return r.read(idx), r.frames_decoded


def clip_starts(n: int, clips: int) -> list[np.ndarray]:
    span = (NUM_FRAMES - 1) * STRIDE + 1
    starts = np.linspace(0, n - span, clips).round().astype(int)
    return [s + STRIDE * np.arange(NUM_FRAMES) for s in starts]


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def ours_disk(path: str, idx: np.ndarray) -> tuple[np.ndarray, int]:
    fidx._memory.clear()  # a fresh worker process: the index comes from the disk cache
    return ours(path, idx)


def bench(rounds: int, clips: int) -> dict:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="tgmae_bench_"))
    os.environ["TGMAE_CACHE_DIR"] = str(tmp / "cache")
    videos = []
    for (w, h) in ((340, 256), (640, 360)):
        for gop in (30, 250):
            p = tmp / f"v{w}x{h}_g{gop}.mp4"
            make_video(p, w, h, gop)
            videos.append((p, w, h, gop))

    cfg = DataConfig(num_frames=NUM_FRAMES, frame_stride=STRIDE, image_size=224)
    rows = []
    for p, w, h, gop in videos:
        path = str(p)
        positions = clip_starts(SECONDS * FPS, clips)
        index_cpu = []
        for _ in range(3):  # building the frame index: one decode of the file (once per file)
            index_cpu.append(_timed(lambda: fidx.build_index(path))[1])
        # same frames out of both loaders; how many frames each had the decoder produce
        dec_raw = dec_ours = 0
        for i in positions:
            (a, na), (b, nb) = raw_pyav(path, i), ours(path, i)
            assert np.array_equal(a, b), (path, i)
            dec_raw, dec_ours = dec_raw + na, dec_ours + nb
        ds = VideoDataset([VideoRecord(path, 0, p.stem)] * clips, cfg, train=True,
                          token_grid=(8, 14, 14), mask_generator=TubeMask(0.9))
        variants = {
            "raw": lambda: [raw_pyav(path, i) for i in positions],
            "ours": lambda: [ours(path, i) for i in positions],
            "ours_disk": lambda: [ours_disk(path, i) for i in positions],
            "ours_mt": lambda: [ours(path, i, threads=0, thread_type="AUTO") for i in positions],
            "e2e": lambda: [ds[k] for k in range(clips)],
        }
        wall: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for k in order:
                tw, tc = _timed(variants[k])
                wall[k].append(tw / clips)
                cpu[k].append(tc / clips)
        mw = {k: statistics.median(v) for k, v in wall.items()}
        mc = {k: statistics.median(v) for k, v in cpu.items()}
        row = {"video": f"{w}x{h} GOP {gop}", "width": w, "height": h, "gop": gop,
               "frames_decoded_per_clip": {"raw": dec_raw / clips, "ours": dec_ours / clips}}
        for k in names:
            row[k] = {"cpu_ms": round(mc[k] * 1e3, 2), "wall_ms": round(mw[k] * 1e3, 2),
                      "clips_per_s_cpu": round(1 / mc[k], 1), "clips_per_s_wall": round(1 / mw[k], 1)}
        row["index_build_cpu_ms"] = round(statistics.median(index_cpu) * 1e3, 1)
        row["ours_vs_raw_cpu"] = round(mc["ours"] / mc["raw"], 3)
        row["ours_disk_vs_raw_cpu"] = round(mc["ours_disk"] / mc["raw"], 3)
        row["ours_vs_raw_wall"] = round(mw["ours"] / mw["raw"], 3)
        rows.append(row)
        print(f"{row['video']:>16}: clips/s per worker (CPU time)  raw {1 / mc['raw']:5.1f}  "
              f"ours {1 / mc['ours']:5.1f}  e2e {1 / mc['e2e']:5.1f}  | ours/raw cpu {row['ours_vs_raw_cpu']:.3f} "
              f"(index from disk {row['ours_disk_vs_raw_cpu']:.3f}; building it {row['index_build_cpu_ms']:.0f} ms once) "
              f"wall {row['ours_vs_raw_wall']:.3f} | AUTO threads: wall {1 / mw['ours_mt']:5.1f} clips/s, "
              f"{mc['ours_mt'] * 1e3:5.1f} ms CPU vs {mc['ours'] * 1e3:5.1f} | frames decoded/clip "
              f"{dec_raw / clips:.0f} vs {dec_ours / clips:.0f}", flush=True)

    # augmentation alone on a decoded 340x256 clip
    clip = read_frames(str(videos[0][0]), clip_starts(SECONDS * FPS, 3)[1])
    tr = PretrainTransform(224, cfg.crop_scales, cfg.mean, cfg.std, flip=True)
    aug_w, aug_c = [], []
    for r in range(max(rounds, 5) * 6):
        g = sample_generator(0, 0, r, 0)
        tw, tc = _timed(lambda: tr(clip, g))
        aug_w.append(tw)
        aug_c.append(tc)
    print(f"CPU: {cpu_info()[0]}")
    aug = {"cpu_ms": round(statistics.median(aug_c) * 1e3, 2), "wall_ms": round(statistics.median(aug_w) * 1e3, 2)}
    print(f"augmentation (multi-scale crop + resize 224 + normalize), 16 x 256x340: "
          f"{aug['cpu_ms']:.2f} ms CPU, {aug['wall_ms']:.2f} ms wall per clip")
    return {
        "machine": cpu_info()[0], "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "av": av.__version__, "torch_threads": 1,
        "clip": f"{NUM_FRAMES} frames x stride {STRIDE}", "rounds": rounds, "clips_per_round": clips,
        "rows": rows, "augment": aug,
    }


def bench_cache(videos: int, rounds: int, workers: int) -> dict:
    """Steps/s and loader clips/s: video path (restarted / persistent workers) vs the caches."""
    import dataclasses

    from torch.utils.data import DataLoader

    from tgmae.config import load_config
    from tgmae.data.synthetic import generate_synthetic_dataset
    from tgmae.study.run import PRETRAIN_BASE
    from tgmae.train.pretrain import PretrainTask

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="tgmae_bench_cache_"))
    generate_synthetic_dataset(tmp / "set", num_videos=videos, frames=48, size=128, seed=0)
    base = load_config(None, PRETRAIN_BASE + [f"data.root={tmp / 'set'}", f"data.num_workers={workers}",
                                              f"data.cache_dir={tmp / 'cache'}"])
    modes = ("none", "memory", "disk")
    data, build = {}, {}
    for mode in modes:
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, cache=mode))
        t = time.perf_counter()
        data[mode] = PretrainTask(cfg).train_dataset()
        build[mode] = time.perf_counter() - t
    task = PretrainTask(base)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bs = base.train.batch_size
    n = len(data["none"])

    def loader(mode: str, w: int, persistent: bool) -> DataLoader:
        return DataLoader(data[mode], batch_size=bs, shuffle=False, num_workers=w, drop_last=True,
                          persistent_workers=persistent and w > 0, prefetch_factor=4 if w else None)

    def train_epoch(batches) -> int:
        k = 0
        for batch in batches:
            loss = task.step(model, batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            k += 1
        return k

    persistent = {m: loader(m, workers, True) for m in modes}
    for m in modes:  # start the workers and touch every page once
        train_epoch(persistent[m])
    held = next(iter(persistent["none"]))
    steps_per_epoch = n // bs
    variants = {
        "video_restart": lambda: train_epoch(loader("none", workers, False)),
        "video": lambda: train_epoch(persistent["none"]),
        "memory": lambda: train_epoch(persistent["memory"]),
        "disk": lambda: train_epoch(persistent["disk"]),
        "video_w0": lambda: train_epoch(loader("none", 0, False)),
        "memory_w0": lambda: train_epoch(loader("memory", 0, False)),
        "model": lambda: train_epoch([held] * steps_per_epoch),
    }
    step_s: dict[str, list[float]] = {k: [] for k in variants}
    step_cpu: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            for m in modes:
                data[m].set_epoch(r + 1)
            t, c = time.perf_counter(), time.process_time()
            steps = variants[k]()
            step_s[k].append((time.perf_counter() - t) / steps)
            step_cpu[k].append((time.process_time() - c) / steps)
    steps_per_s = {k: round(1 / statistics.median(v), 2) for k, v in step_s.items()}
    # 0-worker variants and the model alone: all their work is in this process, so CPU time is
    # their whole cost, robust to other processes on the machine
    steps_per_cpu_s = {k: round(1 / statistics.median(step_cpu[k]), 2) for k in ("video_w0", "memory_w0", "model")}

    # the loader alone: CPU time of one process (0 workers), and wall with `workers` workers
    cpu_cs: dict[str, list[float]] = {m: [] for m in modes}
    wall_cs: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for m in modes[r % 3:] + modes[: r % 3]:
            data[m].set_epoch(100 + r)
            _, tc = _timed(lambda: [None for _ in loader(m, 0, False)])
            cpu_cs[m].append(n // bs * bs / tc)
            tw, _ = _timed(lambda: [None for _ in persistent[m]])
            wall_cs[m].append(n // bs * bs / tw)
    loader_cpu = {m: round(statistics.median(v), 1) for m, v in cpu_cs.items()}
    loader_wall = {m: round(statistics.median(v), 1) for m, v in wall_cs.items()}
    c = data["memory"].cache
    result = {
        "cpu_model": cpu_info()[0], "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "av": av.__version__, "videos": videos, "train_clips": n,
        "batch_size": bs, "workers": workers, "rounds": rounds, "steps_per_s": steps_per_s,
        "speedup_vs_video": {k: round(steps_per_s[k] / steps_per_s["video"], 2) for k in steps_per_s},
        "steps_per_cpu_s_0_workers": steps_per_cpu_s,
        "loader_clips_per_s_cpu_1proc": loader_cpu, "loader_clips_per_s_wall": loader_wall,
        "cache_build_s": {m: round(build[m], 1) for m in ("memory", "disk")},
        "cache_mib": round(c.nbytes / 2**20, 1),
    }
    print(f"CPU: {result['cpu_model']} ({result['cpus']} cores), load {result['load_average']}")
    print("training steps/s (wall):", steps_per_s, "| vs video:", result["speedup_vs_video"])
    print("training steps per CPU-second, 0 workers:", steps_per_cpu_s)
    print("loader clips/s, 1 process CPU time:", loader_cpu, "| wall with", workers, "workers:", loader_wall)
    print(f"cache: {result['cache_mib']} MiB for {len(c)} videos, built in {result['cache_build_s']} s")
    return result


class _Timed:
    """Wraps a callable, summing the CPU time of its calls (the per-view cost split)."""

    def __init__(self, fn):
        self.fn, self.cpu = fn, 0.0

    def __getattr__(self, name):
        return getattr(self.fn, name)

    def __call__(self, *a, **k):
        c = time.process_time()
        try:
            return self.fn(*a, **k)
        finally:
            self.cpu += time.process_time() - c


def make_vp9(path: Path, src: Path, width: int, height: int) -> None:
    """`src`'s frames at width x height as VP9 in WebM (libvpx realtime, alt-ref frames on)."""
    with av.open(str(src)) as c_in, av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "g": "60"}
        for f in c_in.decode(video=0):
            f.pts = None
            for p in s.encode(f.reformat(width=width, height=height, format="yuv420p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


VIEW_VARIANTS = (("k1", 1, "views"), ("k2_views", 2, "views"), ("k4_views", 4, "views"),
                 ("k2_clips", 2, "clips"), ("k4_clips", 4, "clips"))


def bench_views(rounds: int, clips: int, worker_malloc: bool = False) -> dict:
    """Views/s per core and the per-view split (decode / augmentation / mask) at k = 1, 2, 4.
    worker_malloc: this process set up as the training loop's DataLoader workers are
    (`keep_freed_memory`: freed sample buffers reused rather than page-faulted afresh)."""
    from torch.utils.data import default_collate

    from tgmae.data.dataset import keep_freed_memory

    torch.set_num_threads(1)
    if worker_malloc and not keep_freed_memory():
        print("keep_freed_memory: not glibc, nothing set")
    tmp = Path(tempfile.mkdtemp(prefix="tgmae_bench_views_"))
    os.environ["TGMAE_CACHE_DIR"] = str(tmp / "cache")
    mp4 = tmp / "k400_320p.mp4"
    make_video(mp4, 568, 320, gop=32)
    webm = tmp / "ssv2_240p.webm"
    make_vp9(webm, mp4, 426, 240)
    rows = []
    for kind, path in (("320p H.264 MP4 (Kinetics-like)", mp4), ("240p VP9 WebM (SSv2-like)", webm)):
        fidx.frame_index(str(path))  # index built once per file, as `tgmae data check` does
        sets = {}
        for name, k, mode in VIEW_VARIANTS:
            cfg = DataConfig(num_frames=NUM_FRAMES, frame_stride=STRIDE, image_size=224, num_sample=k,
                             repeat_mode=mode)
            ds = VideoDataset([VideoRecord(str(path), 0, path.stem)] * clips, cfg, train=True,
                              token_grid=(8, 14, 14), mask_generator=TubeMask(0.9))
            ds.transform, ds.mask_generator = _Timed(ds.transform), _Timed(ds.mask_generator)
            sets[name] = (ds, k)
        per_view: dict[str, dict[str, list[float]]] = {n: {"total": [], "augment": [], "mask": []} for n in sets}
        names = list(sets)
        for r in range(rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:
                ds, k = sets[n]
                ds.set_epoch(r)
                ds.transform.cpu = ds.mask_generator.cpu = 0.0
                collate = getattr(ds, "collate", default_collate)  # a worker's whole job: samples -> batch
                _, tc = _timed(lambda: collate([ds[i] for i in range(clips)]))
                views = clips * k
                for key, v in (("total", tc), ("augment", ds.transform.cpu), ("mask", ds.mask_generator.cpu)):
                    per_view[n][key].append(v / views)
        row: dict = {"video": kind}
        for n in names:
            m = {key: statistics.median(v) for key, v in per_view[n].items()}
            row[n] = {"views_per_s_cpu": round(1 / m["total"], 1), "ms_per_view": round(m["total"] * 1e3, 2),
                      "decode_ms": round((m["total"] - m["augment"] - m["mask"]) * 1e3, 2),
                      "augment_ms": round(m["augment"] * 1e3, 2), "mask_ms": round(m["mask"] * 1e3, 2)}
        for n in names[1:]:
            row[n]["vs_k1"] = round(row[n]["views_per_s_cpu"] / row["k1"]["views_per_s_cpu"], 2)
        rows.append(row)
        print(f"{kind}: " + "  ".join(f"{n} {row[n]['views_per_s_cpu']} views/s (decode {row[n]['decode_ms']} "
                                      f"aug {row[n]['augment_ms']} mask {row[n]['mask_ms']} ms/view)"
                                      for n in names), flush=True)
    result = {"cpu_model": cpu_info()[0], "cpus": os.cpu_count(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
              "av": av.__version__, "torch_threads": 1, "clip": f"{NUM_FRAMES} frames x stride {STRIDE} at 224",
              "rounds": rounds, "videos_per_round": clips, "worker_malloc": worker_malloc, "rows": rows}
    print(f"CPU: {result['cpu_model']} ({result['cpus']} cores), load {result['load_average']}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clips", type=int, default=8, help="clip positions per video per round")
    ap.add_argument("--cache", action="store_true", help="decoded-clip cache and persistent workers vs video")
    ap.add_argument("--views", action="store_true", help="repeated sampling: views/s per core at k = 1, 2, 4")
    ap.add_argument("--worker-malloc", action="store_true",
                    help="--views: set this process up as a training DataLoader worker (keep_freed_memory)")
    ap.add_argument("--videos", type=int, default=160, help="--cache: synthetic videos (80%% train)")
    ap.add_argument("--workers", type=int, default=2, help="--cache: DataLoader workers")
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args(argv)
    if args.views:
        result = bench_views(args.rounds, args.clips, args.worker_malloc)
    elif args.cache:
        result = bench_cache(args.videos, args.rounds, args.workers)
    else:
        result = bench(args.rounds, args.clips)
    result["command"] = "python benchmarks/data_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
