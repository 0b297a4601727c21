"""Optimizer construction: weight-decay groups, layer-wise lr decay, AdamW, and the run's lr plan
(batch-scaled peak, warmup, cosine floor)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from tgmae.config import ConfigError, OptimConfig, RunConfig
from tgmae.train.schedule import scaled_lr, warmup_cosine

log = logging.getLogger("tgmae")


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    skip: set[str] = frozenset(),
    layer_id: Optional[Callable[[str], int]] = None,
    num_layers: int = 0,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Split trainable parameters into groups by (decay?, layer).

    No decay for 1-D tensors (norms, biases, q/v biases), and names in `skip` (mask token,
    position embeddings). With `layer_decay` < 1, layer i of `num_layers` (+1 for the head)
    gets lr_scale = layer_decay ** (num_layers + 1 - i): earlier layers learn slower.
    """
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in skip and not name.endswith(".bias")
        lid = layer_id(name) if (layer_id is not None and layer_decay < 1.0) else 0
        key = (decay, lid)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay < 1.0 else 1.0
            groups[key] = {
                "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(groups: list[dict], cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over prepared groups (their `names` lists stay out of the optimizer state)."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    fused = cfg.fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(clean, lr=cfg.base_lr, betas=cfg.betas, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


@dataclass(frozen=True)
class LrPlan:
    """The run's lr at every optimizer step: linear warmup from `warmup_lr` to `peak` over
    `warmup_steps`, then a half cosine down to `min_lr` at `total_steps` (`warmup_cosine`).
    `offset`: the run's step counter minus the plan's step (0 but for a resume on another number of
    processes, whose counter goes on from the checkpoint's steps while the plan is in the steps of
    now, `train.resume.plan_offset`); `total_steps` is the counter's end."""

    peak: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    total_steps: int
    offset: int = 0

    def at(self, step: int) -> float:
        """lr at 0-based optimizer step `step` of the run's counter."""
        return warmup_cosine(step - self.offset, self.total_steps - self.offset, self.warmup_steps, self.peak,
                             self.min_lr, self.warmup_lr)


def lr_plan(cfg: OptimConfig, global_batch: int, steps_per_epoch: int, total_steps: int,
            keys: Optional[Mapping[str, str]] = None) -> LrPlan:
    """The lr plan for optimizer steps of `global_batch` clips: peak and scaled min / warmup lrs of
    `peak_lr`; warmup `optim.warmup_epochs` x steps_per_epoch, rounded, at most total_steps.
    ConfigError as `peak_lr` (`keys` as its)."""
    peak, ratio = peak_lr(cfg, global_batch, keys)
    warmup_steps = min(total_steps, int(round(cfg.warmup_epochs * steps_per_epoch)))
    return LrPlan(peak, cfg.min_lr * ratio, cfg.warmup_lr * ratio, warmup_steps, total_steps)


def peak_lr(cfg: OptimConfig, global_batch: int, keys: Optional[Mapping[str, str]] = None) -> tuple[float, float]:
    """(peak lr, the factor min_lr and warmup_lr are scaled by) for steps of `global_batch` clips:
    `optim.lr` if set (factor 1: the others absolute), else MAE's linear scaling base_lr x
    global_batch / 256, at least `optim.lr_floor` (factor peak / base_lr). ConfigError naming
    optim.min_lr / optim.warmup_lr when either comes out above the peak, with the numbers that set
    it (the floor, where it binds): the cosine would climb or the warmup fall (re-trial 25 S1, 26A M3;
    warmup_lr only with a warmup, optim.warmup_epochs > 0).
    keys: {loop key: the user's key} of a task that copies its own settings into `cfg`
    (`AttentiveTask.copied_keys`), named instead (re-trial 26A M1)."""
    name = {**{f"optim.{k}": f"optim.{k}" for k in ("lr", "min_lr", "warmup_lr")}, **(keys or {})}
    if cfg.lr is not None:
        peak, ratio, how = cfg.lr, 1.0, f"{name['optim.lr']}={cfg.lr:g}"
        if name["optim.lr"] == "optim.lr":  # a task's own lr (copied) has no base_lr beside it
            how += "; with it the others are absolute"
    else:
        scaled = scaled_lr(cfg.base_lr, global_batch)
        peak = max(scaled, cfg.lr_floor or 0.0)
        ratio = peak / cfg.base_lr
        how = f"optim.base_lr={cfg.base_lr:g} at a global batch of {global_batch}"
        how = (f"optim.lr_floor={peak:g}, as {how} gives {scaled:.3g}" if peak > scaled else how) \
            + f"; the others are scaled alike, x{ratio:.3g}"
    checked = [("min_lr", cfg.min_lr, "rise where it should fall")]
    if cfg.warmup_epochs > 0:  # no warmup: warmup_lr is never used (re-trial 27A M2)
        checked.append(("warmup_lr", cfg.warmup_lr, "fall where it should rise"))
    for key, value, way in checked:
        if value * ratio > peak:
            lr, key = ("is" if ratio == 1 else f"gives an lr of {value * ratio:.3g},"), name[f"optim.{key}"]
            raise ConfigError(f"{key}={value:g} {lr} above the peak {peak:.3g} ({how}): the lr would {way}; "
                              f"set {key} below it, e.g. {key}={peak / ratio / 100:.3g}")
    return peak, ratio


def warn_short_warmup(cfg: RunConfig, steps_per_epoch: int, total_steps: int,
                      keys: Optional[Mapping[str, str]] = None) -> None:
    """One warning when the run ends before its warmup does (train.epochs below optim.warmup_epochs,
    or train.max_steps before the warmup's last step; the key named is the one that binds): the lr
    never reaches its peak. Not an error:
    short sanity runs of a long recipe do it on purpose. `keys`: {loop key: the user's key} of a task
    that copies its own settings into the loop's (`AttentiveTask.copied_keys`)."""
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    if warmup <= total_steps:
        return
    name = {**{k: k for k in ("train.epochs", "train.max_steps", "optim.warmup_epochs")}, **(keys or {})}
    # The key named is the one that ends the run: train.max_steps when it stops the run before its epochs end.
    by_steps = cfg.train.max_steps is not None and cfg.train.max_steps < cfg.train.epochs * steps_per_epoch
    cut = f"{name['train.max_steps']}={cfg.train.max_steps}" if by_steps \
        else f"{name['train.epochs']}={cfg.train.epochs}"
    log.warning("%s ends the run before %s=%g does: the lr warms up all along and reaches about %.0f%% of its "
                "peak (%d of %d warmup steps); fine for a short sanity run, else lower %s",
                cut, name["optim.warmup_epochs"], cfg.optim.warmup_epochs, 100 * total_steps / warmup, total_steps,
                warmup, name["optim.warmup_epochs"])
