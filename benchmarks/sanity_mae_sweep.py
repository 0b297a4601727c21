"""MAE recipe sweep behind docs/sanity.md section (b) (issue 14): each config trains in its own
1-thread process for STEPS optimizer steps (the library's loop, `tgmae.study.sanity`) and appends
one JSON line.

    PYTHONPATH=src python benchmarks/sanity_mae_sweep.py STEPS [CONFIG ...]   # -> docs/sanity/mae_sweep.jsonl

`*_pos3d` configs patch a separable (t, h, w) sin-cos position table into the model for the run
(a scratch comparison with VideoMAE's 1-D table; not a library option). PROCS: processes at once.
The first sweep's 1-block-encoder rows (`t40_b8_e1d1*`) are not here: the run config has no
encoder-depth key (a preset fixes it).
"""
import json, os, sys, time, multiprocessing as mp
D64 = ["model.decoder_dim=64", "model.decoder_depth=2", "model.decoder_heads=4"]
TINY = ["model.preset=tiny", "model.patch_size=16"]
ST = dict(static_camera=True)
R50 = ["masking.name=random", "masking.ratio=0.5"]
R75 = ["masking.name=random", "masking.ratio=0.75"]
LR3 = ["optim.lr=3e-3"]
T40 = dict(size=40, n_train=200) | ST
# name -> (overrides of tgmae.study.sanity.HARNESS, data settings; "pos3d": the scratch position table)
CONFIGS = {
 "s_r50": (R50, ST),
 "s_r75": (R75, ST),
 "s_r50_lr3": (R50 + LR3, ST),
 "s_r50_d64": (R50 + D64, ST),
 "s_r50_d64_lr3": (R50 + D64 + LR3, ST),
 "s_r75_d64_lr3": (R75 + D64 + LR3, ST),
 "s_r50_p6": (R50 + ["model.patch_size=6"], ST),
 "s_r50_p6_d64_lr3": (R50 + ["model.patch_size=6"] + D64 + LR3, ST),
 "s_r50_tiny": (R50 + ["model.preset=tiny"], ST),
 "s_r50_d64_lr3_b32": (R50 + D64 + LR3 + ["train.batch_size=32"], ST),
 "s_r50_d64_lr3_wu200": (R50 + D64 + LR3, ST | dict(warmup_steps=200)),
 "s_r50_d128_lr2": (R50 + ["model.decoder_dim=128", "model.decoder_depth=2", "model.decoder_heads=4", "optim.lr=2e-3"], ST),
 "study_tube75": (TINY, dict(size=64)),
 "study_s_r75": (R75 + TINY, dict(size=64) | ST),
 "flat_inplace_r50_d64_lr3": (R50 + D64 + LR3, dict(background="flat", classes=[4, 5, 6, 7])),
 "s_r50_pos3d": (R50, ST | dict(pos3d=True)),
 "s_r50_d64_lr3_pos3d": (R50 + D64 + LR3, ST | dict(pos3d=True)),
 "s_r75_d64_lr3_pos3d": (R75 + D64 + LR3, ST | dict(pos3d=True)),
 "study_s_r75_pos3d": (R75 + TINY, dict(size=64, pos3d=True) | ST),
 "t40_b8": (R50 + ["model.patch_size=10"] + D64 + LR3 + ["train.batch_size=8"], T40),
 "t48_f4_b8": (R50 + D64 + LR3 + ["train.batch_size=8"], dict(frames=4, n_train=200) | ST),
 "t48_b8": (R50 + D64 + LR3 + ["train.batch_size=8"], dict(n_train=200) | ST),
 "t40_b8_r25": (["masking.name=random", "masking.ratio=0.25", "model.patch_size=10"] + D64 + LR3 + ["train.batch_size=8"], T40),
 "s_r50_dec32x2h2_lr3": (R50 + ["model.decoder_depth=2", "model.decoder_heads=2"] + LR3, ST),
}

def pos3d(grid):
    """scratch: separable (t, h, w) sin-cos table in place of VideoMAE's 1-D one."""
    import torch
    from tgmae.models.pos_embed import sincos_position_table as one_d
    def table(num_tokens, dim):
        gt, gh, gw = grid
        assert gt * gh * gw == num_tokens
        dt = (dim // 4) // 2 * 2; dh = ((dim - dt) // 2) // 2 * 2; dw = dim - dt - dh
        t = one_d(gt, dt)[:, None, None].expand(gt, gh, gw, dt)
        h = one_d(gh, dh)[None, :, None].expand(gt, gh, gw, dh)
        w = one_d(gw, dw)[None, None, :].expand(gt, gh, gw, dw)
        return torch.cat([t, h, w], -1).reshape(num_tokens, dim).contiguous()
    import tgmae.models.encoder as E, tgmae.models.pretrainer as P
    E.sincos_position_table = table; P.sincos_position_table = table

def run(name, steps):
    import torch
    torch.set_num_threads(1)
    from tgmae.study.sanity import make_data, mae_errors, pretrain, sanity_config
    over, data_kw = list(CONFIGS[name][0]), dict(CONFIGS[name][1])
    size = data_kw.pop("size", 48); n_train = data_kw.pop("n_train", 400); frames = data_kw.pop("frames", 8)
    warmup = data_kw.pop("warmup_steps", 20)
    cfg = sanity_config(over, num_train=n_train, frames=frames, size=size, steps=steps, warmup_steps=warmup)
    if data_kw.pop("pos3d", False):
        pos3d(cfg.token_grid)
    t0 = time.process_time()
    data = make_data(n_train, 100, size=size, frames=frames, **data_kw)
    render = time.process_time() - t0
    res = pretrain(data, cfg, baselines=True)
    ev = mae_errors(res["mae"], data.val, cfg)
    return dict(name=name, steps=res["steps"], cpu_s=res["cpu_s"], render_cpu_s=render,
                train=dict(mse=res["loss_mse"], pm=res["patch_mean_mse"], vis=res["visible_mean_mse"], copy=res["copy_mse"]),
                val=ev, ratio_val=ev["mse"] / ev["patch_mean_mse"], curve=res["curve"])

def work(args):
    try:
        row = run(*args)
    except Exception as e:  # noqa
        row = dict(name=args[0], error=repr(e))
    with open(os.environ.get("SWEEP_OUT", "docs/sanity/mae_sweep.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return row

if __name__ == "__main__":
    steps = int(sys.argv[1]); names = sys.argv[2:] or list(CONFIGS)
    with mp.get_context("spawn").Pool(min(len(names), int(os.environ.get("PROCS", "15")))) as pool:
        pool.map(work, [(n, steps) for n in names], chunksize=1)
