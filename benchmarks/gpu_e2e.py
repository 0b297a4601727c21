"""End-to-end pretraining on a Kinetics-like set, as users launch it (issue 26): data written here,
captions, TGM similarity maps from a random CLIP of ViT-B/16 shape, `tgmae pretrain` with the host's
cores as loader workers, a torchrun launch with a kill and a resume, and the cost of 800 effective
epochs of K400 from the measured rates.

    python benchmarks/gpu_e2e.py --device cuda --out runs/gpu_check/e2e          # on the GPU machine
    python benchmarks/gpu_e2e.py --device cpu --quick --out /tmp/e2e             # the CPU rehearsal

What it does, in order (each stage's figures go to OUT/e2e.json, the tables to OUT/e2e.md):
1. writes VIDEOS clips of SECONDS s at 30 fps, short side HEIGHT (x264 veryfast, crf 23, GOP 30,
   B-frames; textured objects moving over a drifting background: compresses like footage, not
   like noise) in the official K400 layout (`label/{youtube_id}_{start:06d}_{end:06d}.mp4` +
   `train.csv`), with worker processes;
2. oracle captions (`tgmae caption --oracle`) and a random CLIP of ViT-B/16 shape (vision 768 x 12,
   patch 16, 224 px; text 512 x 12) saved as a transformers CLIPModel folder: TGM's mask precompute
   costs the same as with real weights (`tgmae masks`: videos/s on the device);
3. `tgmae pretrain` (configs/pretrain_vitb_k400.yaml: ViT-B, 16x4 clips at 224) for tube and TGM
   masking and each `data.num_sample` the config accepts (1 always; 2 and 4 where the key exists),
   `data.num_workers` = the host's cores: clips/s (views/s) and the share of each step spent
   waiting for data (`data_wait_frac` of the training loop's metrics: time the host waits on the
   DataLoader, measured) over the records after the first (warm-up), and the GPU's busy share
   (nvidia-smi utilization sampled every 0.2 s during the run; CUDA only);
4. a one-process `torchrun --nproc_per_node 1` run (NCCL on CUDA, gloo on CPU) killed with SIGKILL
   after its first step checkpoint and started again: the second start must resume from it;
5. the cost table: GPU-hours of 800 effective epochs of K400 (240k videos; effective epochs count
   views, as VideoMAEv2's) at the best measured rate, beside VideoMAE's 1,728 V100-hours and
   AVION's 583 A5000-hours, and TGM's mask precompute for one pass over K400.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

K400_VIDEOS = 240_000
EPOCHS = 800
PEERS = [("VideoMAE ViT-B, 800 ep K400 (64 V100, 27 h)", "V100", 1728.0),
         ("AVION ViT-B, 800 ep K400", "A5000", 583.0)]
CLASSES = ["juggling balls", "riding a bike", "playing guitar", "surfing water"]
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# 1. the data set
# ---------------------------------------------------------------------------------------------

def _frames(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """uint8 [n, h, w, 3]: three textured objects on Lissajous paths over a drifting gradient."""
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6.28, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([(xx + 2 * i + seed) % 256, (yy + i) % 256, ((xx + yy) // 2) % 256], -1).astype(np.uint8)
        for k in range(3):
            cy = int(h / 2 + h / 3 * np.sin(i / 20 + phase[k]))
            cx = int(w / 2 + w / 3 * np.cos(i / 25 + 2 * phase[k]))
            y0, x0 = max(cy - h // 6, 0), max(cx - w // 8, 0)
            patch = tex[y0 % 8: y0 % 8 + h // 3, x0 % 8: x0 % 8 + w // 4]
            img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch[: h - y0, : w - x0]
        out[i] = img
    return out


def _write_one(args: tuple) -> None:
    from tgmae.data.video import write_video

    path, seed, seconds, h, w = args
    tmp = path.with_name(path.stem + ".part.mp4")
    write_video(tmp, _frames(seed, seconds * 30, h, w), fps=30, gop=30)
    os.replace(tmp, path)  # a killed writer never leaves a file that looks finished


def write_set(root: Path, videos: int, seconds: int, height: int, workers: int) -> Path:
    """K400-layout set under root (reused when complete) -> the annotation CSV."""
    width = (height * 16 // 9) // 2 * 2
    rows, jobs = ["label,youtube_id,time_start,time_end,split"], []
    for i in range(videos):
        label = CLASSES[i % len(CLASSES)]
        yid = f"vid{i:05d}"
        path = root / label / f"{yid}_{0:06d}_{seconds:06d}.mp4"
        rows.append(f"{label},{yid},0,{seconds},train")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((path, i, seconds, height, width))
    if jobs:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_write_one, jobs))
    ann = root / "train.csv"
    ann.write_text("\n".join(rows) + "\n")
    return ann


# ---------------------------------------------------------------------------------------------
# 2. captions, CLIP, TGM maps
# ---------------------------------------------------------------------------------------------

def tgmae(*args: str, env: dict | None = None, log: Path | None = None) -> float:
    """Run `tgmae ARGS` (this interpreter); raises on a non-zero exit. -> wall seconds."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "tgmae.cli", *args]
    with open(log or os.devnull, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - t


def random_clip(out: Path, captions: list[str], quick: bool) -> None:
    """A randomly initialised CLIP of ViT-B/16 shape (or a tiny one with --quick), saved as a
    transformers CLIPModel folder with a tokenizer learnt from the captions."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tgmae.study.clip.tokenizer import train_clip_tokenizer
    from tgmae.study.clip.train import save_clip

    tok = train_clip_tokenizer(captions, vocab_size=1024)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  patch_size=16, image_size=224)
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                vocab_size=len(tok.get_vocab()), max_position_embeddings=32,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if quick:
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=512 if not quick else 64)
    model = CLIPModel(cfg).eval()
    save_clip(out, model, tok, 224)


# ---------------------------------------------------------------------------------------------
# 3. pretraining runs
# ---------------------------------------------------------------------------------------------

class GpuSampler:
    """nvidia-smi utilization.gpu every 0.2 s in a thread; `busy` = mean % (None on CPU)."""

    def __init__(self, device: str) -> None:
        self.samples: list[float] = []
        self.on = device.startswith("cuda")
        self._stop = threading.Event()

    def __enter__(self):
        if self.on:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        p = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                              "-lms", "200"], stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if self._stop.is_set():
                break
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                pass
        p.kill()

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        # the first 20% of the run is start-up (model build, workers, compile)
        s = self.samples[len(self.samples) // 5:]
        return round(statistics.mean(s), 1) if s else None


def accepts(key: str) -> bool:
    """Whether this tgmae's config has `key` (`tgmae config show key=VALUE` exits 0)."""
    out = subprocess.run([sys.executable, "-m", "tgmae.cli", "config", "show", f"{key}=2"], capture_output=True)
    return out.returncode == 0


def pretrain_run(out: Path, common: list[str], masking: list[str], k: int, device: str) -> dict:
    run = out / f"run_{masking[0].split('=')[1]}_k{k}"
    shutil.rmtree(run, ignore_errors=True)  # a rerun of this script measures afresh
    args = ["pretrain", "-c", str(ROOT / "configs/pretrain_vitb_k400.yaml"), *common, *masking,
            f"train.output_dir={run}", "checkpoint.every_steps=100000"]
    if k > 1:
        args.append(f"data.num_sample={k}")
    with GpuSampler(device) as gpu:
        wall = tgmae(*args, log=out / f"{run.name}.log")
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    recs = [r for r in recs if "clips_per_s" in r][1:] or [r for r in recs if "clips_per_s" in r]
    return {"masking": masking[0].split("=")[1], "num_sample": k, "wall_s": round(wall, 1),
            "views_per_s": round(statistics.median(r["clips_per_s"] for r in recs), 2),
            "data_wait_frac": round(statistics.median(r["data_wait_frac"] for r in recs), 3),
            "gpu_busy_pct": gpu.busy, "records": len(recs)}


# ---------------------------------------------------------------------------------------------
# 4. torchrun, kill, resume
# ---------------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def torchrun_kill_resume(out: Path, common: list[str], device: str, steps: int) -> dict:
    """SIGKILL the launcher's process group at the first step checkpoint, start again: the second
    start must resume from a step checkpoint before the last step and finish."""
    run = out / "run_torchrun"
    shutil.rmtree(run, ignore_errors=True)  # a rerun of this script measures afresh
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "tgmae.cli", "pretrain", "-c", str(ROOT / "configs/pretrain_vitb_k400.yaml"),
           *[c for c in common if not c.startswith("train.max_steps=")],  # tgmae refuses a key given twice
           "masking.name=tube", f"train.output_dir={run}", "checkpoint.every_steps=2", f"train.max_steps={steps}"]
    log1 = out / "torchrun_1.log"
    with open(log1, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < 600 and p.poll() is None:
            if any((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else False:
                break
            time.sleep(0.5)
        killed = p.poll() is None
        if killed:  # the launcher and its workers (torchrun starts them in sessions of their own)
            for pid in [p.pid, *descendants(p.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        p.wait()
    log2 = out / "torchrun_2.log"
    with open(log2, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log2.read_text()
    m = re.search(r"resum\w* .*?step (\d+)", text, re.I)
    resumed = int(m.group(1)) if m else None
    return {"killed_mid_run": killed, "second_rc": rc, "resumed_from_step": resumed, "max_steps": steps,
            "ok": bool(killed and rc == 0 and resumed is not None and resumed < steps),
            "backend": "nccl" if device.startswith("cuda") else "gloo"}


# ---------------------------------------------------------------------------------------------
# 5. tables
# ---------------------------------------------------------------------------------------------

def cost_rows(runs: list[dict], masks_videos_per_s: float, gpu: str) -> list[str]:
    rows = ["| run | views/s | data wait | GPU busy | GPU-hours, 800 eff. epochs of K400 |", "|---|---|---|---|---|"]
    for r in runs:
        hours = K400_VIDEOS * EPOCHS / r["views_per_s"] / 3600
        busy = "-" if r["gpu_busy_pct"] is None else f"{r['gpu_busy_pct']:.0f}%"
        rows.append(f"| {r['masking']}, num_sample={r['num_sample']} | {r['views_per_s']:.1f} | "
                    f"{100 * r['data_wait_frac']:.0f}% | {busy} | {hours:,.0f} {gpu}-h |")
    for name, kind, hours in PEERS:
        rows.append(f"| {name} | - | - | - | {hours:,.0f} {kind}-h (published) |")
    if masks_videos_per_s:
        rows.append(f"| TGM mask precompute, one pass over K400 | {masks_videos_per_s:.1f} videos/s | - | - | "
                    f"{K400_VIDEOS / masks_videos_per_s / 3600:,.1f} {gpu}-h |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check/e2e"))
    ap.add_argument("--quick", action="store_true", help="CPU rehearsal: 8 short 128p videos, a tiny model")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per pretraining run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers")
    a = ap.parse_args(argv)
    if a.quick:
        a.videos, a.seconds, a.height, a.batch, a.steps = 8, 3, 128, 2, 6
    a.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": a.device, "args": {k: str(v) for k, v in vars(a).items()}}
    if a.device.startswith("cuda"):
        import torch
        result["gpu"] = torch.cuda.get_device_name(0)
        result["torch"], result["cuda"] = torch.__version__, torch.version.cuda
    result["host_cpu"] = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result["host_cores"] = os.cpu_count()

    t = time.perf_counter()
    data = a.out / "k400_like"
    ann = write_set(data, a.videos, a.seconds, a.height, a.workers)
    result["write_set_s"] = round(time.perf_counter() - t, 1)
    captions = a.out / "captions.jsonl"
    tgmae("caption", "--format", "k400", "--root", str(data), str(ann), "--oracle", "--out", str(captions),
          log=a.out / "caption.log")
    texts = [json.loads(l).get("caption", "") for l in captions.read_text().splitlines() if l.strip()]
    clip = a.out / "clip_vitb16_random"
    if not (clip / "config.json").exists():
        random_clip(clip, texts + [f"a video of {c}." for c in CLASSES], a.quick)
    masks = a.out / "tgm_maps"
    secs = tgmae("masks", "--format", "k400", "--root", str(data), str(ann), "--captions", str(captions),
                 "--clip", str(clip), "--out", str(masks), "--device", a.device,
                 "--image-size", "64" if a.quick else "224", log=a.out / "masks.log")
    result["masks_videos_per_s"] = round(a.videos / secs, 2)

    common = [f"data.root={data}", f"data.train_annotations={ann}", f"data.num_workers={a.workers}",
              f"train.batch_size={a.batch}", f"train.max_steps={a.steps}", "train.epochs=100000",
              f"train.device={a.device}", f"train.log_every={1 if a.quick else 5}", "log.progress=false",
              "log.tensorboard=false", "optim.warmup_epochs=0"]
    if a.quick:
        common += ["model.preset=tiny", "data.image_size=64", "data.num_frames=4"]
    tgm = ["masking.name=tgm", "masking.ratio=0.6", f"masking.cache_dir={masks}", f"captions.file={captions}",
           f"captions.clip_model={clip}"]
    samples = [1] + ([2, 4] if accepts("data.num_sample") else [])
    result["runs"] = []
    for masking in (["masking.name=tube"], tgm):
        for k in samples:
            r = pretrain_run(a.out, common, masking, k, a.device)
            result["runs"].append(r)
            print(json.dumps(r), flush=True)
    result["torchrun"] = torchrun_kill_resume(a.out, common, a.device, 10 * a.steps)
    print(json.dumps(result["torchrun"]), flush=True)

    gpu = result.get("gpu", "CPU")
    md = [f"Device: {gpu}; host CPU: {result['host_cpu']} ({result['host_cores']} cores as loader workers)", ""]
    md += cost_rows(result["runs"], result["masks_videos_per_s"], gpu)
    (a.out / "e2e.md").write_text("\n".join(md) + "\n")
    (a.out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
