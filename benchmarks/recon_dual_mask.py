"""The reconstruction check (docs/sanity.md, "(b)") with dual masking (issue 25): the same recipe
(static-camera clips, random .5 masks, 3,200 steps on the library's loop) with
`masking.decoder_ratio` set, so the decoder reconstructs that share of the masked tokens in
training; held-out figures reconstruct every masked token, as without.

    PYTHONPATH=src python benchmarks/recon_dual_mask.py --ratio 0.5 --seeds 0,1,2 [--baseline] \
        [--pattern running_cell|random] [--steps N] [--json OUT]

Besides the check's figure (the decoder reconstructs every masked token at once), each dual-masked
run is also scored "partitioned": the masked tokens decoded in two passes, the pattern's share and
the rest, so the decoder sees as many mask tokens as in training.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from tgmae.models.dual_mask import decoder_tokens, indices_to_mask
from tgmae.models.target import masked_pixel_mse, patch_mean_mse
from tgmae.study import sanity
from tgmae.study.recon_check import RECON_DATA, RECON_RUN, RECON_STEPS, reconstruction_data


@torch.no_grad()
def partitioned_ratio(mae, clips: torch.Tensor, cfg, ratio: float, pattern: str, batch: int = 64) -> float:
    """Held-out masked MSE / patch-mean MSE (masks as `sanity.mae_errors`, seed 0) with the masked
    tokens decoded in two passes: the dual mask's share (`decoder_tokens`, generator seed 1), then
    the rest; predictions put back in token order."""
    mae.eval()
    g, g_dec = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    err = base = 0.0
    for i in range(0, len(clips), batch):
        video = sanity.to_input(clips[i:i + batch])
        mask = sanity.make_masks(cfg, len(video), g)
        split = mae.split(mask)
        latent = mae.forward_encoder(video, split)
        first = decoder_tokens(mask, ratio, pattern, mae.arch.grid, generator=g_dec)  # [B, n1]
        rest = (mask & ~indices_to_mask(first, mask.shape[1])).nonzero()[:, 1].view(len(video), -1)  # [B, n2]
        idx = torch.cat([first, rest], 1)
        pred = torch.cat([mae.forward_decoder(latent, split._replace(masked=first)),
                          mae.forward_decoder(latent, split._replace(masked=rest))], 1)
        pred = pred.gather(1, idx.argsort(1).unsqueeze(-1).expand_as(pred))  # token order, as `mask`
        err += masked_pixel_mse(video, pred, mask, mae.arch) * len(video)
        base += patch_mean_mse(video, mask, mae.arch) * len(video)
    return err / base


def run(seed: int, decoder_ratio: float | None, steps: int, pattern: str = "running_cell") -> dict:
    d = RECON_DATA
    extra = ([f"masking.decoder_ratio={decoder_ratio}", f"masking.decoder_mask={pattern}"]
             if decoder_ratio else [])
    cfg = sanity.sanity_config(RECON_RUN + extra + [f"train.seed={seed}"], num_train=d["num_train"],
                               frames=d["frames"], size=d["size"], steps=steps)
    data = reconstruction_data()
    res = sanity.pretrain(data, cfg)
    held = sanity.mae_errors(res["mae"], data.val, cfg, seed=0)
    row = {"seed": seed, "decoder_ratio": decoder_ratio, "pattern": pattern if decoder_ratio else None,
           "steps": res["steps"], "cpu_s": round(res["cpu_s"], 1), "mse": held["mse"],
           "patch_mean_mse": held["patch_mean_mse"], "ratio": held["mse"] / held["patch_mean_mse"]}
    if decoder_ratio:
        row["ratio_partitioned"] = partitioned_ratio(res["mae"], data.val, cfg, decoder_ratio, pattern)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="masking.decoder_ratio")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=RECON_STEPS)
    ap.add_argument("--pattern", default="running_cell", choices=("running_cell", "random"), help="masking.decoder_mask")
    ap.add_argument("--baseline", action="store_true", help="also run without dual masking")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for r in ([None] if a.baseline else []) + [a.ratio]:
            rows.append(run(seed, r, a.steps, a.pattern))
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
