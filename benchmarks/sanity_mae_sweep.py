"""MAE recipe sweep behind docs/sanity.md section (b) (issue 14): each config trains in its own
1-thread process for BUDGET CPU seconds (time.process_time) and appends one JSON line.

    PYTHONPATH=src python benchmarks/sanity_mae_sweep.py BUDGET [CONFIG ...]   # -> docs/sanity/mae_sweep.jsonl

`*_pos3d` configs patch a separable (t, h, w) sin-cos position table into the model for the run
(a scratch comparison with VideoMAE's 1-D table; not a library option). PROCS: processes at once.
"""
import json, os, sys, time, multiprocessing as mp
MICRO = dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=1)
TINY = dict(embed_dim=128, depth=4, num_heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=2)
D64 = MICRO | dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)
ST = dict(static_camera=True)
R50 = dict(mask_kind="random", mask_ratio=0.5)
R75 = dict(mask_kind="random", mask_ratio=0.75)
CONFIGS = {
 "s_r50": (R50, ST),
 "s_r75": (R75, ST),
 "s_r50_lr3": (R50 | dict(lr=3e-3), ST),
 "s_r50_d64": (R50 | dict(arch=D64), ST),
 "s_r50_d64_lr3": (R50 | dict(arch=D64, lr=3e-3), ST),
 "s_r75_d64_lr3": (R75 | dict(arch=D64, lr=3e-3), ST),
 "s_r50_p6": (R50 | dict(patch_size=6), ST),
 "s_r50_p6_d64_lr3": (R50 | dict(patch_size=6, arch=D64, lr=3e-3), ST),
 "s_r50_tiny": (R50 | dict(arch=TINY), ST),
 "s_r50_d64_lr3_b32": (R50 | dict(arch=D64, lr=3e-3, batch_size=32), ST),
 "s_r50_d64_lr3_wu200": (R50 | dict(arch=D64, lr=3e-3, warmup_steps=200), ST),
 "s_r50_d128_lr2": (R50 | dict(arch=MICRO | dict(decoder_dim=128, decoder_depth=2, decoder_heads=4), lr=2e-3), ST),
 "study_tube75": (dict(patch_size=16, arch=TINY), dict(size=64)),
 "study_s_r75": (R75 | dict(patch_size=16, arch=TINY), dict(size=64) | ST),
 "flat_inplace_r50_d64_lr3": (R50 | dict(arch=D64, lr=3e-3), dict(background="flat", classes=[4, 5, 6, 7])),
 "s_r50_pos3d": (R50 | dict(pos3d=True), ST),
 "s_r50_d64_lr3_pos3d": (R50 | dict(arch=D64, lr=3e-3, pos3d=True), ST),
 "s_r75_d64_lr3_pos3d": (R75 | dict(arch=D64, lr=3e-3, pos3d=True), ST),
 "study_s_r75_pos3d": (R75 | dict(patch_size=16, arch=TINY, pos3d=True), dict(size=64) | ST),
 "t40_b8": (R50 | dict(patch_size=10, arch=D64, lr=3e-3, batch_size=8), dict(size=40, n_train=200) | ST),
 "t48_f4_b8": (R50 | dict(arch=D64, lr=3e-3, batch_size=8), dict(frames=4, n_train=200) | ST),
 "t48_b8": (R50 | dict(arch=D64, lr=3e-3, batch_size=8), dict(n_train=200) | ST),
 "t40_b8_e1d1": (R50 | dict(patch_size=10, arch=MICRO | dict(depth=1, decoder_dim=64, decoder_depth=1, decoder_heads=4), lr=3e-3, batch_size=8), dict(size=40, n_train=200) | ST),
 "t40_b8_r25": (dict(mask_kind="random", mask_ratio=0.25) | dict(patch_size=10, arch=D64, lr=3e-3, batch_size=8), dict(size=40, n_train=200) | ST),
 "t40_b8_e1d1_lr5": (R50 | dict(patch_size=10, arch=MICRO | dict(depth=1, decoder_dim=64, decoder_depth=1, decoder_heads=4), lr=5e-3, batch_size=8), dict(size=40, n_train=200) | ST),
 "t40_b8_e1d1h8": (R50 | dict(patch_size=10, arch=MICRO | dict(depth=1, decoder_dim=64, decoder_depth=1, decoder_heads=8), lr=3e-3, batch_size=8), dict(size=40, n_train=200) | ST),
 "t40_b4_e1d1": (R50 | dict(patch_size=10, arch=MICRO | dict(depth=1, decoder_dim=64, decoder_depth=1, decoder_heads=4), lr=3e-3, batch_size=4), dict(size=40, n_train=200) | ST),
 "t40_b8_e1d1_wd0_b2": (R50 | dict(patch_size=10, arch=MICRO | dict(depth=1, decoder_dim=64, decoder_depth=1, decoder_heads=4), lr=3e-3, batch_size=8, weight_decay=0.0), dict(size=40, n_train=200) | ST),
 "s_r50_dec32x2h2_lr3": (R50 | dict(arch=MICRO | dict(decoder_depth=2, decoder_heads=2), lr=3e-3), ST),
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

def run(name, budget):
    import torch
    torch.set_num_threads(1)
    from tgmae.study.sanity import SanityRun, make_data, pretrain, mae_errors
    over, data_kw = dict(CONFIGS[name][0]), dict(CONFIGS[name][1])
    if over.pop("pos3d", False):
        size0 = data_kw.get("size", 48); ps = over.get("patch_size", 12)
        pos3d((data_kw.get("frames", 8) // 2, size0 // ps, size0 // ps))
    base = dict(patch_size=12, arch=MICRO, batch_size=16, shift=2, warmup_steps=20, budget_s=budget, objective="mae")
    size = data_kw.pop("size", 48); n_train = data_kw.pop("n_train", 400)
    t0 = time.process_time()
    data = make_data(n_train, 100, size=size, **(dict(frames=8) | data_kw))
    render = time.process_time() - t0
    cfg = SanityRun(**(base | over))
    res = pretrain(data, cfg)
    ev = mae_errors(res["model"].mae, data.val, cfg)
    return dict(name=name, budget=budget, render_cpu_s=render, steps=res["steps"], cpu_s=res["cpu_s"],
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
    budget = float(sys.argv[1]); names = sys.argv[2:] or list(CONFIGS)
    with mp.get_context("spawn").Pool(min(len(names), int(os.environ.get("PROCS", "15")))) as pool:
        pool.map(work, [(n, budget) for n in names], chunksize=1)
