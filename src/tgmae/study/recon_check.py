"""The study's reconstruction check: does the library's MAE reconstruct more than patch means?

One cached run of the sanity harness (`tgmae.study.sanity`) with the recipe below, its numbers in
a JSON and its figure beside them; `tgmae study` runs it once per study folder and the report
shows it. Source: docs/sanity.md, "(b) MAE reconstructs more than patch means".
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Optional

import torch

from tgmae.config import RunConfig
from tgmae.study import sanity

# The recipe with which the library's MAE reconstructs more than patch means on CPU (docs/sanity.md,
# "(b) MAE reconstructs more than patch means"): static-camera clips (the background is the same in
# every frame) under random .5 masks, so a masked token shows at the same place in another time slice.
# 200 training / 64 held-out clips of 8 frames at 40 px, 10 px patches (4x4 tokens per slice); the
# micro encoder (64 wide, 2 blocks) and a 1-block 64-wide decoder (4 heads); batch 8, lr 3e-3 after 20
# warmup steps, the harness's other settings (`sanity.HARNESS`). The slow test
# test_mae_reconstructs_more_than_patch_means_on_a_static_background and `reconstruction_check` use it.
RECON_DATA = dict(num_train=200, num_val=64, size=40, frames=8, static_camera=True)
RECON_RUN = ["model.patch_size=10", "model.decoder_dim=64", "model.decoder_heads=4", "masking.name=random",
             "masking.ratio=0.5", "optim.lr=3e-3", "train.batch_size=8"]
RECON_STEPS = 3200


def reconstruction_data() -> sanity.SanityData:
    """The reconstruction recipe's clips (`RECON_DATA`; the same for every seed)."""
    return sanity.make_data(**RECON_DATA)


def reconstruction_config(steps: int = RECON_STEPS, seed: int = 0) -> RunConfig:
    """The reconstruction recipe's run (`RECON_RUN` on `RECON_DATA`'s clips): `steps` optimizer
    steps; seed = train.seed (initialisation, data order, shifts and training masks)."""
    d = RECON_DATA
    return sanity.sanity_config(RECON_RUN + [f"train.seed={seed}"], num_train=d["num_train"], frames=d["frames"],
                                size=d["size"], steps=steps)


def reconstruction_settings(steps: int = RECON_STEPS, seed: int = 0) -> dict:
    """What a reconstruction check's numbers depend on, as its JSON records them."""
    return json.loads(json.dumps({"steps": steps, "seed": seed, "data": RECON_DATA, "run": RECON_RUN,
                                  "eval_mask_seed": 0}))


def saved_reconstruction_check(out_dir: str | Path, steps: int = RECON_STEPS, seed: int = 0) -> Optional[dict]:
    """out_dir/reconstruction_check.json when it was made with these settings, None when there is
    none; ConfigError naming every differing key (e.g. `steps: 3200 -> 8`) when it was made with
    others."""
    from tgmae.config import ConfigError
    from tgmae.weights.checkpoint import config_differences

    path = Path(out_dir) / "reconstruction_check.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    differ = [f"{k}: {a} -> {b}" for k, a, b in
              config_differences(saved.get("settings", {}), reconstruction_settings(steps, seed))]
    if differ:
        raise ConfigError(f"{path} holds a reconstruction check with other settings ({'; '.join(differ)}): "
                          f"use another folder, or delete {path}")
    return saved


def reconstruction_check(out_dir: str | Path, steps: int = RECON_STEPS, seed: int = 0) -> dict:
    """Train the library's MAE with the reconstruction recipe (`RECON_DATA`, `RECON_RUN`) for `steps`
    steps (seed: initialisation, data order, masks) and measure it on the held-out clips under random
    .5 masks. Writes out_dir/reconstruction_check.png (`sanity.recon_figure`) and
    out_dir/reconstruction_check.json -> its dict: "settings", "steps", "seed", "cpu_s" (this
    process's training CPU seconds), "mse", "patch_mean_mse", "visible_mean_mse", "copy_mse" (held-out
    means in pixels [0, 1]; baselines as in `tgmae.study.sanity`), "ratio" = mse / patch_mean_mse
    (< 1: more than patch means; measured values in docs/sanity.md (b)), "figure", "cpu", "torch".
    A JSON in out_dir with the same settings is returned without training; other settings:
    ConfigError naming the keys. ValueError when steps is not an integer >= 1 (or seed not >= 0)."""
    from tgmae.atomic import atomic_write_text
    from tgmae.autotune import cpu_info

    for name, value, least in (("steps", steps, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"reconstruction_check: {name}={value!r}: must be an integer >= {least}")
    out_dir = Path(out_dir)
    steps, seed = int(steps), int(seed)  # numpy integers too; JSON keeps plain ints
    saved = saved_reconstruction_check(out_dir, steps, seed)
    if saved is not None:
        return saved
    settings = reconstruction_settings(steps, seed)
    data = reconstruction_data()
    cfg = reconstruction_config(steps, seed)
    res = sanity.pretrain(data, cfg)
    mae = res["mae"]
    held = sanity.mae_errors(mae, data.val, cfg, seed=settings["eval_mask_seed"])
    record = {"settings": settings, "steps": res["steps"], "seed": seed, "cpu_s": res["cpu_s"], **held,
              "ratio": held["mse"] / held["patch_mean_mse"], "figure": "reconstruction_check.png",
              "units": "pixels in [0, 1]", "cpu": cpu_info()[0], "torch": torch.__version__}
    sanity.recon_figure(mae, data, out_dir / record["figure"],
                 f"MAE, static camera, random .5 masks, {res['steps']} steps: held-out masked MSE {held['mse']:.4f} vs "
                 f"patch-mean oracle {held['patch_mean_mse']:.4f} ({record['ratio']:.2f}x; visible mean "
                 f"{held['visible_mean_mse']:.4f}, copy {held['copy_mse']:.4f})", cfg)
    atomic_write_text(out_dir / "reconstruction_check.json", json.dumps(record, indent=1) + "\n")
    return record
