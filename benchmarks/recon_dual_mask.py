"""The reconstruction check (docs/sanity.md, "(b)") with dual masking (issue 25): the same recipe
(static-camera clips, random .5 masks, 3,200 steps on the library's loop) with
`masking.decoder_ratio` set, so the decoder reconstructs that share of the masked tokens in
training; held-out figures reconstruct every masked token, as without.

    PYTHONPATH=src python benchmarks/recon_dual_mask.py --ratio 0.5 --seeds 0,1,2 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from tgmae.study import sanity
from tgmae.study.recon_check import RECON_DATA, RECON_RUN, RECON_STEPS, reconstruction_data


def run(seed: int, decoder_ratio: float | None, steps: int) -> dict:
    d = RECON_DATA
    extra = [f"masking.decoder_ratio={decoder_ratio}"] if decoder_ratio else []
    cfg = sanity.sanity_config(RECON_RUN + extra + [f"train.seed={seed}"], num_train=d["num_train"],
                               frames=d["frames"], size=d["size"], steps=steps)
    data = reconstruction_data()
    res = sanity.pretrain(data, cfg)
    held = sanity.mae_errors(res["mae"], data.val, cfg, seed=0)
    return {"seed": seed, "decoder_ratio": decoder_ratio, "steps": res["steps"], "cpu_s": round(res["cpu_s"], 1),
            "mse": held["mse"], "patch_mean_mse": held["patch_mean_mse"], "ratio": held["mse"] / held["patch_mean_mse"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="masking.decoder_ratio")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=RECON_STEPS)
    ap.add_argument("--baseline", action="store_true", help="also run without dual masking")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for r in ([None] if a.baseline else []) + [a.ratio]:
            rows.append(run(seed, r, a.steps))
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
