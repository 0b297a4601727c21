"""Pretraining step benchmark: tgmae's VideoMAEPretrainer vs transformers' VideoMAEForPreTraining.

One step = forward + backward + AdamW step (fused, same settings for both) on a batch of
16x224x224 clips with random per-sample masks. Time is wall clock, or with `--clock cpu` this
process's CPU time (with `--threads 1` that is the compute a step costs, nearly independent
of other jobs on a shared CPU; with more threads it would include spin-waiting). Both models hold the SAME weights (ours copied
into HF) and run in the same process, alternating step by step (order swapped every round);
we report medians and ratios, because other jobs share this CPU and timings drift.

Measured per preset x mask ratio x precision (fp32, bf16 autocast):
- step time (median), clips/s, and speedup = HF time / our time;
- peak memory of a step above the resident model + optimizer state. CPU: the process's peak
  RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the step, with glibc's
  mmap threshold pinned at 64 KiB so freed tensors go back to the OS (otherwise malloc keeps
  them and RSS stops tracking tensor memory). That setting makes every large tensor fresh
  pages (page faults on first touch) and slows both models by 10-20%, unevenly, so all steps
  are timed first with the allocator as users have it, and memory is measured in a second pass
  afterwards in a fresh process (pinned from its start, so RSS follows tensor memory). CUDA:
  torch.cuda.max_memory_allocated;
- FLOPs of forward + backward from torch.utils.flop_counter.FlopCounterMode (CPU flash-SDPA
  forward/backward registered, which it does not count by itself), achieved GFLOP/s, and that
  rate as a fraction of the dense matmul ceiling of the same precision measured in the same
  run: `frac_ceiling` against a ViT-B-shaped matmul timed once per round between the steps
  (median; same load as the steps), `frac_best_ceiling` against the best matmul rate seen at
  start-up (what the cores give when undisturbed).

The first lines printed name the CPU model, its speed-relevant flags and the autotune key (the
JSON holds the full flag list): figures belong to that machine. `--attention` picks our kernel
(default auto: measured per machine by tgmae.autotune); `--compile blocks|model` adds a third
contestant, a torch.compile'd copy of ours with the same weights, timed in the same rounds.
`--decoder-ratio 0.5` (dual masking, masking.decoder_ratio; `--decoder-mask` picks the pattern)
and `--grad-checkpoint` (train.grad_checkpoint) add `ours_options`: ours with those options and
the same weights, timed in the same rounds and measured in the same memory pass; the rows give
its time and peak memory relative to ours (`options_speedup` = ours / options step time,
`options_mem_ratio` = options / ours peak). With dual masking its loss covers a subset of the
masked tokens, so it is left out of the loss agreement check (checkpointing alone is not).

usage: python benchmarks/pretrain_step.py [--presets tiny,small,base] [--ratios 0.9,0.6]
       [--precisions fp32,bf16] [--batch 2] [--steps 6] [--threads N] [--clock wall|cpu]
       [--attention auto|sdpa|sdpa_fp32|math] [--compile off|blocks|model]
       [--decoder-ratio R] [--decoder-mask running_cell|random] [--grad-checkpoint]
       [--device cpu|cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from tgmae import autotune
from tgmae.config import ModelConfig
from tgmae.models import build_pretraining_model
from tgmae.models.attention import plan_kernels, set_attention_kernel
from tgmae.weights.layouts import fill_key_biases, hf_config, ours_to_hf
from tgmae.train.loop import compile_model

FRAMES, SIZE = 16, 224
HF_ATTENTION = ""  # transformers' attention implementation in use (its default)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve")


def machine_line(device: torch.device) -> str:
    """CPU model, the flags that decide kernel speed, and the autotune cache key."""
    model, flags = autotune.cpu_info()
    have = [f for f in SPEED_FLAGS if f in flags]
    line = f"CPU {model} [{' '.join(have) or 'no listed flags'}]"
    if device.type == "cuda":
        line += f", GPU {torch.cuda.get_device_name(device)}"
    return line + f"; autotune key {autotune.machine_key(device)!r}"


# ------------------------------------------------------------------------------------ memory


def pin_malloc() -> bool:
    """glibc: allocations >= 64 KiB use mmap and are unmapped on free (RSS tracks tensors)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_step_memory(step: Callable[[], None], device: torch.device) -> float:
    """MiB a step needs above what is resident before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 1024


# ------------------------------------------------------------------------------------- flops


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, q, k, v)


def count_flops(fwd_bwd: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fwd_bwd()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------- ceiling


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CEILING_SHAPE = (3136, 768, 3072)  # ViT-B MLP fc1 on a batch of 2 clips at ratio 0 (tokens x D x 4D)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = time.perf_counter  # set from --clock in main()


def matmul_rate(dtype: torch.dtype, device: torch.device, shape=CEILING_SHAPE) -> float:
    """GFLOP/s of one dense matmul now (sampled between steps: same conditions as the steps)."""
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t0 = CLOCK()
    a @ b
    sync(device)
    return 2 * m * k * n / (CLOCK() - t0) / 1e9


def matmul_ceiling(dtype: torch.dtype, device: torch.device, reps: int = 8) -> float:
    """Dense matmul GFLOP/s: the best of `reps` timings of model-shaped products (tokens x
    width x 4 width, both ways) and a square one. Best, not median: the ceiling is what the
    hardware reaches when it is not disturbed."""
    best = 0.0
    for m, k, n in (CEILING_SHAPE, CEILING_SHAPE[::-1], (2048, 2048, 2048)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        a @ b
        for _ in range(reps):
            sync(device)
            t0 = CLOCK()
            a @ b
            sync(device)
            best = max(best, 2 * m * k * n / (CLOCK() - t0) / 1e9)
    return best


# ------------------------------------------------------------------------------------ models


def model_options(args) -> dict:
    """`build_pretraining_model` options from --decoder-ratio / --decoder-mask / --grad-checkpoint
    ({} when none is asked for)."""
    if args.decoder_ratio is None and not args.grad_checkpoint:
        return {}
    return dict(decoder_ratio=args.decoder_ratio, decoder_mask=args.decoder_mask,
                grad_checkpoint=args.grad_checkpoint)


def options_twin(ours, preset: str, device: torch.device, attention: str, options: dict):
    """A copy of `ours` (same weights) built with `options`."""
    twin = build_pretraining_model(ModelConfig(preset=preset), FRAMES, SIZE, **options).to(device).train()
    twin.load_state_dict(ours.state_dict())
    set_attention_kernel(twin, attention)
    return twin


def build_models(preset: str, device: torch.device, attention: str = "auto", compile_mode: str = "off",
                 options: dict | None = None):
    """{"ours": model, "hf": model[, "ours_compiled": model][, "ours_options": model]} with
    identical weights (ours copied into HF and into the copies)."""
    ours, hf = build_pair(preset, device, attention)
    models = {"ours": ours, "hf": hf}
    if options:
        models["ours_options"] = options_twin(ours, preset, device, attention, options)
    if compile_mode != "off":
        twin = build_pretraining_model(ModelConfig(preset=preset), FRAMES, SIZE).to(device).train()
        twin.load_state_dict(ours.state_dict())
        set_attention_kernel(twin, attention)
        models["ours_compiled"] = compile_model(twin, compile_mode)
    return models


def build_pair(preset: str, device: torch.device, attention: str = "auto"):
    """Our model and transformers' with identical weights (ours copied into HF)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    torch.manual_seed(0)
    ours = build_pretraining_model(ModelConfig(preset=preset), FRAMES, SIZE).to(device).train()
    set_attention_kernel(ours, attention)
    hf = VideoMAEForPreTraining(VideoMAEConfig(**hf_config(ours.arch))).to(device).train()
    global HF_ATTENTION
    HF_ATTENTION = hf.config._attn_implementation
    result = hf.load_state_dict(fill_key_biases(ours_to_hf(ours.state_dict()), hf.state_dict()), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"HF copy failed: {result}")
    return ours, hf


def random_mask(batch: int, n: int, ratio: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = int(round(n * ratio))
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=g)[:k]] = True
    return mask


def make_step(model, is_hf: bool, video, mask, precision: str, device: torch.device):
    """(full training step, forward+backward only) closures."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=True)
    inp = video.permute(0, 2, 1, 3, 4) if is_hf else video  # HF takes [B, T, C, H, W]

    def fwd_bwd() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            out = model(inp, bool_masked_pos=mask) if is_hf else model(inp, mask)
        out.loss.backward()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        fwd_bwd()
        opt.step()
        sync(device)

    return step, fwd_bwd


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """(seconds on the chosen clock, wall seconds) of one call."""
    w0, t0 = time.perf_counter(), CLOCK()
    step()
    return CLOCK() - t0, time.perf_counter() - w0


def bench_case(models, preset, ratio, precision, args, device, ceilings) -> dict:
    ours = models["ours"]
    n = ours.arch.num_tokens
    g = torch.Generator().manual_seed(0)
    video = torch.randn(args.batch, 3, FRAMES, SIZE, SIZE, generator=g).to(device)
    mask = random_mask(args.batch, n, ratio, seed=1).to(device)
    if args.attention == "auto":  # the training loop's set-up: measure the kernels for these lengths
        lengths = {n, n - int(mask[0].sum())}
        for name, m in models.items():
            if name != "hf":
                plan_kernels(m, device, torch.bfloat16 if precision == "bf16" else torch.float32, lengths)
    steps = {name: make_step(m, name == "hf", video, mask, precision, device) for name, m in models.items()}
    # Same weights, video and mask: the losses must agree before any step is timed (a fast wrong
    # model is no result). Measured before the warm-up step, which moves the weights.
    losses = {}
    for name, m in models.items():
        with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                               else nullcontext()):
            out = m(video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask) if name == "hf" else m(video, mask)
        losses[name] = float(out.loss)
    subset = name_of_subset_loss(models)
    loss_diff = max(abs(v - losses["hf"]) / max(abs(losses["hf"]), 1e-12) for k, v in losses.items() if k != subset)
    if loss_diff > (2e-2 if precision == "bf16" else 1e-4):
        raise SystemExit(f"{preset} r={ratio} {precision}: ours and HF disagree (losses {losses})")
    compile_s = {}
    for name in steps:  # warm-up: allocates optimizer state, first-call kernels (and compiles)
        w0 = time.perf_counter()
        steps[name][0]()
        compile_s[name] = time.perf_counter() - w0
    times: dict[str, list[float]] = {k: [] for k in steps}
    walls: dict[str, list[float]] = {k: [] for k in steps}
    rates = []  # matmul ceiling sampled in every round, under the same load as the steps
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    names = list(steps)
    for i in range(args.steps):
        rates.append(matmul_rate(dtype, device))
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order
            t, w = timed(steps[name][0])
            times[name].append(t)
            walls[name].append(w)
    ceiling = statistics.median(rates)
    row = dict(preset=preset, ratio=ratio, precision=precision, batch=args.batch,
               ceiling_gflops=ceiling, ceiling_samples=rates, best_ceiling_gflops=ceilings[precision],
               attention_choices=autotune.cached_choices(device), losses=losses, loss_rel_diff=loss_diff)
    for name, (step, fwd_bwd) in steps.items():
        med = statistics.median(times[name])
        flops = count_flops(fwd_bwd) if name != "ours_compiled" else row["ours"]["gflop"] * 1e9
        for p in models[name].parameters():
            p.grad = None
        row[name] = dict(
            step_s=med, step_s_all=times[name], wall_s=statistics.median(walls[name]),
            first_step_wall_s=compile_s[name],
            clips_per_s=args.batch / med, gflop=flops / 1e9,
            gflops_per_s=flops / med / 1e9, frac_ceiling=flops / med / 1e9 / ceiling,
            frac_best_ceiling=flops / med / 1e9 / ceilings[precision],
        )
    for name in (k for k in steps if k != "hf"):
        suffix = "" if name == "ours" else "_" + name.removeprefix("ours_")
        row["speedup" + suffix] = row["hf"]["step_s"] / row[name]["step_s"]
        # per-round ratios: robust to drift that hits both runs of a round alike
        row["speedup_rounds_median" + suffix] = statistics.median(
            h / o for h, o in zip(times["hf"], times[name]))
    if "ours_options" in steps:
        row["options_speedup"] = row["ours"]["step_s"] / row["ours_options"]["step_s"]
        row["options_speedup_rounds_median"] = statistics.median(
            o / v for o, v in zip(times["ours"], times["ours_options"]))
    return row


def name_of_subset_loss(models) -> str:
    """The contestant whose loss covers only part of the masked tokens (dual masking), or ""."""
    twin = models.get("ours_options")
    return "ours_options" if twin is not None and twin.decoder_ratio is not None else ""


def memory_case(ours, hf, ratio, precision, args, device, twin=None) -> dict[str, float]:
    """Peak step memory (MiB) of each model (and of the options twin, when given) on the case's
    inputs, after a warm-up step."""
    g = torch.Generator().manual_seed(0)
    video = torch.randn(args.batch, 3, FRAMES, SIZE, SIZE, generator=g).to(device)
    mask = random_mask(args.batch, ours.arch.num_tokens, ratio, seed=1).to(device)
    peaks = {}
    for name, model in (("ours", ours), ("hf", hf), ("ours_options", twin)):
        if model is None:
            continue
        step, _ = make_step(model, name == "hf", video, mask, precision, device)
        step()
        peaks[name] = peak_step_memory(step, device)
        for p in model.parameters():
            p.grad = None
    return peaks


def _case_key(preset: str, ratio: float, precision: str) -> str:
    return f"{preset}/{ratio:g}/{precision}"


def measure_memory(args, device) -> dict[str, dict[str, float]]:
    """{case key: {"ours": MiB, "hf": MiB}} for every case, in this process."""
    peaks = {}
    for preset in args.presets.split(","):
        ours, hf = build_pair(preset, device, args.attention)
        options = model_options(args)
        twin = options_twin(ours, preset, device, args.attention, options) if options else None
        for ratio in (float(r) for r in args.ratios.split(",")):
            for precision in args.precisions.split(","):
                peaks[_case_key(preset, ratio, precision)] = memory_case(ours, hf, ratio, precision, args,
                                                                         device, twin)
        del ours, hf, twin
    return peaks


def memory_pass(args, device) -> dict[str, dict[str, float]]:
    """CUDA: in process. CPU: in a child process that pins malloc before allocating anything."""
    if device.type != "cpu":
        return measure_memory(args, device)
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peaks.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-pass", str(out),
               "--presets", args.presets, "--ratios", args.ratios, "--precisions", args.precisions,
               "--batch", str(args.batch), "--threads", str(args.threads), "--attention", args.attention,
               "--decoder-mask", args.decoder_mask]
        cmd += ["--decoder-ratio", str(args.decoder_ratio)] if args.decoder_ratio is not None else []
        cmd += ["--grad-checkpoint"] if args.grad_checkpoint else []
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=None, help="comma-separated (default tiny,small,base; "
                        "--quick: tiny,small)")
    parser.add_argument("--ratios", default="0.9,0.6")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model per case")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time steps and the ceiling by wall clock, or by this process's CPU "
                             "time (use with --threads 1 on a CPU shared with other jobs)")
    parser.add_argument("--attention", default="auto", help="our attention kernel: auto (measured "
                        "per machine, tgmae.autotune) | sdpa | sdpa_fp32 | math")
    parser.add_argument("--compile", default="off", choices=("off", "blocks", "model"),
                        help="also time a torch.compile'd copy of ours (cold compile in the warm-up)")
    parser.add_argument("--decoder-ratio", type=float, default=None,
                        help="also time ours with dual masking: the decoder reconstructs this fraction "
                             "of the masked tokens (masking.decoder_ratio)")
    parser.add_argument("--decoder-mask", default="running_cell", choices=("running_cell", "random"),
                        help="dual masking's pattern (masking.decoder_mask)")
    parser.add_argument("--grad-checkpoint", action="store_true",
                        help="also time ours with activation checkpointing (train.grad_checkpoint)")
    parser.add_argument("--quick", action="store_true", help="ratio 0.9, 3 steps (presets tiny,small "
                        "unless --presets names them)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--memory-pass", metavar="OUT", help=argparse.SUPPRESS)  # internal: child process
    args = parser.parse_args(argv)
    if args.memory_pass:
        pin_malloc()
        if args.threads:
            torch.set_num_threads(args.threads)
        Path(args.memory_pass).write_text(json.dumps(measure_memory(args, torch.device("cpu"))))
        return 0
    if args.quick:
        args.presets, args.ratios, args.steps = args.presets or "tiny,small", "0.9", 3
    args.presets = args.presets or "tiny,small,base"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU work; use wall time on an accelerator")
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    precisions = args.precisions.split(",")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}
    ceilings = {p: matmul_ceiling(dtype[p], device) for p in precisions}
    print(machine_line(device), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{args.clock} clock; "
          f"best matmul " + ", ".join(f"{p} {c:.0f} GFLOP/s" for p, c in ceilings.items()), flush=True)
    rows = []
    cases = [(preset, float(r), p) for preset in args.presets.split(",") for r in args.ratios.split(",")
             for p in precisions]
    for preset in args.presets.split(","):  # pass 1: time, with the allocator's default settings
        models = build_models(preset, device, args.attention, args.compile, model_options(args))
        for _, ratio, precision in (c for c in cases if c[0] == preset):
            row = bench_case(models, preset, ratio, precision, args, device, ceilings)
            rows.append(row)
            extra = (f", ours compiled {row['ours_compiled']['step_s']:.3f}s (first step "
                     f"{row['ours_compiled']['first_step_wall_s']:.0f}s wall)" if "ours_compiled" in row else "")
            print(f"{preset:>5} r={ratio:.2f} {precision}: timed, ours {row['ours']['step_s']:.3f}s, "
                  f"HF {row['hf']['step_s']:.3f}s{extra}; attention "
                  + ", ".join(f"{k.removeprefix('attention/cpu/')}={v}" for k, v in
                              sorted(row["attention_choices"].items()) if k.startswith("attention/")),
                  flush=True)
        del models
    peaks = memory_pass(args, device)  # pass 2: memory
    for row in rows:
        for name, mib in peaks[_case_key(row["preset"], row["ratio"], row["precision"])].items():
            row[name]["peak_mib"] = mib
        row["mem_ratio"] = row["ours"]["peak_mib"] / row["hf"]["peak_mib"]
        if "ours_options" in row:
            row["options_mem_ratio"] = row["ours_options"]["peak_mib"] / row["ours"]["peak_mib"]
    for row in rows:
        o, h = row["ours"], row["hf"]
        print(f"{row['preset']:>5} r={row['ratio']:.2f} {row['precision']} (ceiling {row['ceiling_gflops']:.0f}): "
              f"ours {o['step_s']:.3f}s "
              f"({o['clips_per_s']:.2f} clips/s, {o['peak_mib']:.0f} MiB, {o['gflops_per_s']:.0f} "
              f"GFLOP/s = {o['frac_ceiling']:.0%}) | HF {h['step_s']:.3f}s ({h['peak_mib']:.0f} MiB, "
              f"{h['gflops_per_s']:.0f} GFLOP/s = {h['frac_ceiling']:.0%}) | speedup "
              f"{row['speedup']:.2f}x (per-round median {row['speedup_rounds_median']:.2f}x), "
              f"memory {row['mem_ratio']:.2f}x, loss agrees to {row['loss_rel_diff']:.1e}"
              + (f" | compiled {row['ours_compiled']['step_s']:.3f}s = {row['speedup_compiled']:.2f}x HF "
                 f"({row['ours_compiled']['frac_ceiling']:.0%})" if "ours_compiled" in row else "")
              + (f" | options {row['ours_options']['step_s']:.3f}s = {row['options_speedup']:.2f}x ours "
                 f"(per-round median {row['options_speedup_rounds_median']:.2f}x), "
                 f"{row['ours_options']['peak_mib']:.0f} MiB = {row['options_mem_ratio']:.2f}x ours"
                 if "ours_options" in row else ""),
              flush=True)
    if args.json:
        info = dict(command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                    torch=torch.__version__, threads=torch.get_num_threads(), device=str(device),
                    clock=args.clock, load_average=os.getloadavg(),
                    machine=machine_line(device), cpu_model=autotune.cpu_info()[0],
                    cpu_flags=" ".join(autotune.cpu_info()[1]), attention=args.attention,
                    compile=args.compile, options=model_options(args),
                    autotune_choices=autotune.cached_choices(device),
                    memory_pass="child process, malloc pinned" if device.type == "cpu" else "in process",
                    ceilings_gflops=ceilings, hf_attention=HF_ATTENTION, rows=rows)
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
