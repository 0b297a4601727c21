"""Default settings of the downstream protocols, applied under the user's YAML and overrides.

Precedence for `tgmae finetune` / `tgmae probe`: RunConfig defaults < the protocol's recipe
below < `-c CONFIG.yaml` < `section.key=value`. The recipes are VideoMAE's finetuning and
MAE's linear probe (docs: /work/shared/notes/field-notes.md); the resolved config is written
next to the run's outputs as always.
"""

from __future__ import annotations

from typing import Sequence

# VideoMAE finetuning: lr 1e-3 x batch/256 (min / warmup lr 1e-6, scaled alike), 5 warmup epochs,
# AdamW (0.9, 0.999), wd 0.05, layer decay 0.75, drop path 0.1, no grad clipping, mixup 0.8,
# cutmix 1.0, label smoothing 0.1, head init scale 0.001.
FINETUNE_RECIPE: dict = {
    "optim": {"base_lr": 1e-3, "min_lr": 1e-6, "warmup_lr": 1e-6, "warmup_epochs": 5.0,
              "weight_decay": 0.05, "betas": [0.9, 0.999], "clip_grad": None, "layer_decay": 0.75},
    "model": {"drop_path": 0.1},
    "eval": {"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "head_init_scale": 0.001},
}

# MAE linear probe: LARS, base lr 0.1 x batch/256, no weight decay, 10 warmup epochs of 90,
# cosine to 0, no grad clipping. The scaled lr has a floor of 1.0 (MAE's own value at batch 2560;
# the study's absolute probe lr): LARS moves each weight by at most lr x 0.001 of its norm per
# step, so at batch 4-16 on a few hundred clips 0.1 x batch/256 leaves the head at its init.
# Batches >= 2560 get MAE's recipe unchanged.
PROBE_RECIPE: dict = {
    "optim": {"base_lr": 0.1, "lr_floor": 1.0, "min_lr": 0.0, "warmup_lr": 0.0, "warmup_epochs": 10.0,
              "weight_decay": 0.0, "clip_grad": None, "layer_decay": 1.0},
    "train": {"epochs": 90},
    "eval": {"probe_optimizer": "lars"},
}


def with_recipe(recipe: dict, path: str | None = None, overrides: Sequence[str] = ()):
    """RunConfig = defaults < recipe < YAML `path` < overrides (for scripts and the study)."""
    import copy

    from tgmae.config import load_config

    return load_config(path, list(overrides), base=copy.deepcopy(recipe))  # the shared recipe stays as written
