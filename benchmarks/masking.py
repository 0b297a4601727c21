"""Masking costs: faithful vs dense CLIP precompute per clip, and the training-time cached mask.

    python benchmarks/masking.py [--clip CLIP_DIR --root SYNTH_DIR] [--json out.json]

1. Precompute per clip (8 temporal slices = 8 frames; 14 x 14 = 196 patches per frame):
   - ViT-B/32 CLIP architecture (the paper's; random weights, no download): faithful = 1568 patch
     crops at 224 px, dense = 8 frames at 448 px (CLIP's 14 x 14 tokens = the patch grid).
     Faithful is timed on `--vitb-crops` crops and scaled linearly to 1568 (a batched forward's
     cost is linear in the batch; both sides use the same batch size).
   - with --clip (e.g. the `tgmae train-clip` model) and --root: both modes in full on synthetic
     clips, and the agreement of their masks (top-k IoU per slice at ratios 0.6 and 0.1; two
     independent random masks agree at r / (2 - r): 0.43 and 0.05).
2. Training-time mask from the cache (`CachedTGMMask`: resample + top-k), per clip, for a batch
   of clips with their own multi-scale crop and flip: 16 frames at 224 px (8 x 14 x 14 tokens),
   ratio 0.6, maps of a 300-frame 340x256 video at stride 4; cache in memory, and from disk.
Timings alternate between the variants and report medians (this machine drifts 15-20%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


class Timer:
    """Wall and CPU (this process) seconds of repeated calls; medians."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn, scale: float = 1.0):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        self.wall.append((time.perf_counter() - w) * scale)
        self.cpu.append((time.process_time() - c) * scale)
        return result

    @property
    def median(self) -> tuple[float, float]:
        return statistics.median(self.wall), statistics.median(self.cpu)


def vitb32_precompute(crops: int, rounds: int, threads: int) -> dict:
    from transformers import CLIPConfig, CLIPModel

    from tgmae.clip.features import ClipBundle, ClipPatchScorer

    torch.set_num_threads(threads)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=1000, hidden_size=512, intermediate_size=2048, num_hidden_layers=1,
                         num_attention_heads=8, max_position_embeddings=77),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    )
    model = CLIPModel(cfg).eval()
    bundle = ClipBundle(model, None, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "vit-b/32 (random weights)")
    faithful = ClipPatchScorer(bundle, "faithful", batch_size=crops)
    dense = ClipPatchScorer(bundle, "dense", batch_size=8 * 16)  # all 8 frames in one forward
    frames8 = torch.rand(8, 3, 224, 224)
    # the timed crops: a frame strip of rows x 16 patches (one CLIP forward of that batch)
    rows = max(1, crops // 16)
    sub, sub_grid, n_sub = torch.rand(1, 3, 16 * rows, 16 * 16), (rows, 16), rows * 16
    t_f, t_d = Timer(), Timer()
    with torch.no_grad():
        faithful.features(sub, sub_grid, 16)  # warm-up
        dense.features(frames8, (14, 14))
        for _ in range(rounds):  # alternate
            t_f(lambda: faithful.features(sub, sub_grid, 16), scale=(8 * 196) / n_sub)
            t_d(lambda: dense.features(frames8, (14, 14)))
    (fw, fc), (dw, dc) = t_f.median, t_d.median
    return {"model": "ViT-B/32 architecture, random weights", "faithful_crops_timed": n_sub,
            "faithful_s_per_clip": {"wall": fw, "cpu": fc}, "dense_s_per_clip": {"wall": dw, "cpu": dc},
            "dense_size": dense.dense_size_for((14, 14)), "speedup": {"wall": fw / dw, "cpu": fc / dc},
            "threads": threads}


def trained_clip_precompute(clip_dir: str, root: str, videos: int, rounds: int) -> dict:
    from tgmae.captions.store import read_store
    from tgmae.data.video import read_frames
    from tgmae.clip.data import read_split_ids
    from tgmae.clip.features import ClipPatchScorer, cosine_maps, embed_texts, load_clip
    from tgmae.masking.select import topk_iou

    bundle = load_clip(clip_dir)
    faithful, dense = ClipPatchScorer(bundle, "faithful"), ClipPatchScorer(bundle, "dense")
    caps = read_store(Path(root) / "captions.jsonl").by_video()
    ious, ious10, t_f, t_d = [], [], Timer(), Timer()
    for vid in read_split_ids(Path(root), "val")[:videos]:
        idx = list(range(0, 16 * 2, 4))  # 8 frames = 8 slices of a 16-frame stride-2 clip
        x = torch.from_numpy(read_frames(Path(root) / "videos" / f"{vid}.mp4", idx)).permute(0, 3, 1, 2).float() / 255
        text = embed_texts(bundle, [caps[vid].captions[0]])
        with torch.no_grad():
            for _ in range(rounds):
                ff = t_f(lambda: faithful.features(x, (14, 14), 16))
                fd = t_d(lambda: dense.features(x, (14, 14)))
        sf, sd = cosine_maps(ff, text)[0].flatten(1), cosine_maps(fd, text)[0].flatten(1)
        ious.append(topk_iou(sf, sd, 0.6))
        ious10.append(topk_iou(sf, sd, 0.1))
    (fw, fc), (dw, dc) = t_f.median, t_d.median
    return {"model": clip_dir, "videos": len(ious), "faithful_s_per_clip": {"wall": fw, "cpu": fc},
            "dense_s_per_clip": {"wall": dw, "cpu": dc}, "dense_size": dense.dense_size_for((14, 14)),
            "speedup": {"wall": fw / dw, "cpu": fc / dc},
            "topk_iou_ratio_0.6": statistics.mean(ious), "topk_iou_ratio_0.6_min": min(ious),
            "topk_iou_ratio_0.1": statistics.mean(ious10),
            "chance_iou": {"0.6": 0.6 / 1.4, "0.1": 0.1 / 1.9}}  # independent random sets: r / (2 - r)


def cached_mask_cost(batch: int, rounds: int) -> dict:
    from tgmae.data.transforms import multiscale_crop_box
    from tgmae.mask_contract import CropParams, MaskContext
    from tgmae.masking.cache import (
        CacheManifest, SimilarityCache, merge_parts, part_file, write_entry, write_manifest_or_check,
    )
    from tgmae.masking.tgm import CachedTGMMask

    src_h, src_w, n_frames, stride = 256, 340, 300, 4
    with tempfile.TemporaryDirectory() as tmp:
        write_manifest_or_check(tmp, CacheManifest("bench", "0", "dense", "bench", "0", stride, 224, 16, 1, 448, 512))
        frames = torch.arange(0, n_frames, stride)
        for v in range(batch):
            rel = write_entry(tmp, f"v{v}", torch.randn(3, len(frames), 14, 19), frames, torch.randn(3, 512),
                              ["a", "b", "c"])
            part = part_file(tmp, 0, 1)
            part.parent.mkdir(exist_ok=True)
            with open(part, "a") as f:
                f.write(json.dumps({"video_id": f"v{v}", "file": rel}) + "\n")
        merge_parts(tmp)
        g = torch.Generator().manual_seed(0)
        ctxs = []
        for v in range(batch):
            top, left, h, w = multiscale_crop_box(src_h, src_w, 224, (1, 0.875, 0.75, 0.66), g)
            start = int(torch.randint(0, n_frames - 64, (1,), generator=g))
            crop = CropParams(float(top), float(left), float(h), float(w), bool(v % 2), src_h, src_w)
            ctxs.append(MaskContext(grid=(8, 14, 14), frame_indices=torch.arange(start, start + 64, 4),
                                    crop=crop, video_id=f"v{v}"))
        warm = CachedTGMMask(SimilarityCache(tmp), ratio=0.6, caption="mean")
        for c in ctxs:
            warm(c, g)  # loads every entry into the LRU

        def run_batch(gen):
            for i, c in enumerate(ctxs):
                gen(c, torch.Generator().manual_seed(i))

        t_mem, t_disk = Timer(), Timer()
        for _ in range(rounds):
            t_mem(lambda: run_batch(warm), scale=1e3 / batch)
            cold = CachedTGMMask(SimilarityCache(tmp, max_entries=1), ratio=0.6, caption="mean")
            t_disk(lambda: run_batch(cold), scale=1e3 / batch)
    (mw, mc), (dw, dc) = t_mem.median, t_disk.median
    return {"clip": "16 x 224 x 224 (8 x 14 x 14 tokens), ratio 0.6, multi-scale crop + flip",
            "maps": f"{len(frames)} frames x 14 x 19 (300-frame 340x256 video, stride 4), 3 captions",
            "batch": batch, "ms_per_clip_in_memory": {"wall": mw, "cpu": mc},
            "ms_per_clip_from_disk": {"wall": dw, "cpu": dc}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default=None, help="trained CLIP directory (tgmae train-clip) for full runs + IoU")
    p.add_argument("--root", default=None, help="synthetic set for --clip")
    p.add_argument("--videos", type=int, default=8, help="synthetic clips for the IoU")
    p.add_argument("--vitb-crops", type=int, default=64, help="faithful crops timed for ViT-B/32 (scaled to 1568)")
    p.add_argument("--batch", type=int, default=32, help="clips per batch for the cached mask")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for the CLIP runs")
    p.add_argument("--skip-vitb", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    out: dict = {"torch": torch.__version__, "threads": args.threads}
    torch.set_num_threads(1)  # the cached mask runs in DataLoader workers: one thread each
    out["cached_mask"] = cached_mask_cost(args.batch, args.rounds)
    torch.set_num_threads(args.threads)
    print(json.dumps(out["cached_mask"], indent=1))
    if not args.skip_vitb:
        out["precompute_vitb32"] = vitb32_precompute(args.vitb_crops, args.rounds, args.threads)
        print(json.dumps(out["precompute_vitb32"], indent=1))
    if args.clip and args.root:
        torch.set_num_threads(args.threads)
        out["precompute_trained_clip"] = trained_clip_precompute(
            args.clip, args.root, args.videos, max(1, args.rounds // 2))
        print(json.dumps(out["precompute_trained_clip"], indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
