"""`tgmae probe eval.probe=attentive`: V-JEPA's attentive probe (`tgmae.evaluate.attentive`) as a
task of the shared training loop, on cached token grids of the frozen encoder.

Inputs: the encoder's whole output (token grid [L, D] per clip, float32) of every training
video's centre clip (the evaluation transform, as the linear probe's features) and of every val
video's `data.test_temporal_views` x `data.test_spatial_views` views ([V, L, D]), extracted once
and cached beside the linear probe's features (`tgmae.evaluate.features`, keyed "tokens" and the
views). Memory: (N_train + V x N_val) x L x D x 4 bytes.

Training (`AttentiveTask` on `tgmae.train.loop.Trainer`): V-JEPA's recipe from the `eval.attentive_*`
keys, which replace the run's optimizer and schedule (`loop_config`): AdamW (0.9, 0.999), peak lr
`attentive_lr` (absolute, no batch scaling), linear warm-up over `attentive_warmup_epochs` then a
cosine to `attentive_final_lr`, weight decay `attentive_weight_decay` on >= 2-D weights, gradient
norm clipped to 1.0, `attentive_epochs` epochs of `attentive_batch_size` clips (None: train.batch_size),
cross-entropy without label smoothing. Init and batch order follow train.seed. Checkpoints,
step-exact resume and the refusals of a folder trained under other settings or on other inputs
are the loop's (`tgmae.train.resume`), as for every run.

Testing as finetuning: each val view through the probe, the softmax averaged over a video's views
(`predict_attentive`) after every `train.eval_every`-th epoch and the last. Outputs in
`train.output_dir`: the loop's checkpoints / metrics.jsonl / config.yaml, probe_results.json (final
and best val top-1 / top-5, views, queries, heads) and test_predictions.csv.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Collection, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tgmae.config import ConfigError, OptimConfig, RunConfig
from tgmae.evaluate.attentive import (AttentiveClassifier, AttentiveEnsemble, TokenDataset, class_probs, ensemble_loss,
                                      predict_attentive)
from tgmae.evaluate.metrics import reported_ks, topk_accuracy, topk_text
from tgmae.train.loop import StepOutput, Trainer
from tgmae.evaluate.probe import (PROBE_INPUTS, ProbeResult, best_of, features_fingerprint, probe_features,
                                  probe_step, refuse_other_probe, refuse_unlabelled_lists, tensors_fingerprint,
                                  unused_probe_keys, val_counts, write_results, write_val_predictions)
from tgmae.train.optim import param_groups, peak_lr
from tgmae.train.resume import locks_run_folder

log = logging.getLogger("tgmae")


def loop_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with the `eval.attentive_*` recipe as the loop's batch, epochs and optimizer (module
    doc); features are in memory, so no loader workers. Stored in the checkpoints, so a rerun
    under other attentive settings is refused by the loop."""
    e = cfg.eval
    optim = OptimConfig(lr=e.attentive_lr, min_lr=e.attentive_final_lr, warmup_lr=0.0,
                        warmup_epochs=e.attentive_warmup_epochs, weight_decay=e.attentive_weight_decay,
                        betas=(0.9, 0.999), clip_grad=1.0, layer_decay=1.0, fused=cfg.optim.fused)
    train = dataclasses.replace(cfg.train, epochs=e.attentive_epochs,
                                batch_size=e.attentive_batch_size or cfg.train.batch_size)
    return dataclasses.replace(cfg, optim=optim, train=train, data=dataclasses.replace(cfg.data, num_workers=0))


class AttentiveTask:
    """batch {tokens [B, L, D], label [B]} -> cross-entropy of the attentive classifier; evaluates
    on multi-view val grids [M, V, L, D] (softmax averaged over the views)."""

    name = "attentive_probe"
    find_unused_parameters = False
    lr_key = "eval.attentive_lr"  # the loop's optim.lr (`loop_config`), named after a NaN
    # the loop's keys that `loop_config` copies from the user's: a change is named by the user's key alone
    copied_keys = {"optim.lr": "eval.attentive_lr", "optim.min_lr": "eval.attentive_final_lr",
                   "optim.warmup_epochs": "eval.attentive_warmup_epochs",
                   "optim.weight_decay": "eval.attentive_weight_decay",
                   "train.batch_size": "eval.attentive_batch_size", "train.epochs": "eval.attentive_epochs"}

    inputs_named = PROBE_INPUTS  # `inputs_fingerprint`'s parts

    def __init__(self, cfg: RunConfig, train: TokenDataset, val: Optional[TokenDataset], num_classes: int,
                 num_heads: int, inputs_fingerprint: Optional[str] = None) -> None:
        dim = train.tokens.shape[-1]
        if dim % num_heads:
            raise ConfigError(f"eval.attentive_heads={num_heads}: does not divide the token width {dim}")
        self.cfg, self.train, self.val = cfg, train, val
        self.num_classes, self.num_heads = num_classes, num_heads
        # stored in every checkpoint: a resume on other token grids is refused. Given: the grids'
        # `features_fingerprint`, whose parts name what changed; else the grids' digest alone
        self.inputs_fingerprint = inputs_fingerprint or tensors_fingerprint(
            [(d.tokens, d.labels) if d is not None else None for d in (train, val)], num_classes)
        self.class_names: list[str] = []  # label order; set by attentive_probe, kept in checkpoints
        # a resume may change the other probes' knobs, and raise eval.attentive_epochs as train.epochs
        # (the loop's train.epochs is it: a finished probe continues, as a linear probe's raised train.epochs)
        self.unused_keys = unused_probe_keys("attentive") + ("eval.attentive_epochs",)

    def build_model(self) -> nn.Module:
        """One `AttentiveClassifier`, or with eval.attentive_ensemble = K > 1 an `AttentiveEnsemble` of
        K (member 0 initialised as the single probe, the others from the same generator after it)."""
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        members = [AttentiveClassifier(self.train.tokens.shape[-1], self.num_classes, self.num_heads,
                                       self.cfg.eval.attentive_queries, generator=gen)
                   for _ in range(self.cfg.eval.attentive_ensemble)]
        return members[0] if len(members) == 1 else AttentiveEnsemble(members)

    def train_dataset(self) -> Dataset:
        return self.train

    def param_groups(self, model: nn.Module) -> list[dict]:
        # >= 2-D weights (query tokens included) decayed, biases and norms not: V-JEPA's groups
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        if self.cfg.eval.attentive_ensemble == 1:
            return probe_step(model, batch["tokens"], batch["label"])  # cross-entropy, as the linear probe
        labels = batch["label"].long()
        logits = model(batch["tokens"])  # [K, B, C]
        top1 = (class_probs(logits.detach()).argmax(dim=1) == labels).float().mean()
        loss = ensemble_loss(logits, labels)  # the sum: each member's gradient is its own
        # logged: the members' mean cross-entropy, comparable with a single probe's (~ln K at the start)
        return StepOutput(loss, {"train_top1": top1, "loss": loss.detach() / logits.shape[0]})

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        return {f"val_{k}": v for k, v in score_probs(self.predict(model), self.val.labels).items()}

    def predict(self, model: nn.Module) -> torch.Tensor:
        """probs [M, K] of the val videos, averaged over their views."""
        loader = DataLoader(self.val, batch_size=max(1, self.cfg.train.batch_size), shuffle=False)
        return predict_attentive(model, loader, precision=self.cfg.train.precision
                                 if self.cfg.train.precision in ("fp32", "bf16") else "fp32")["probs"]


def score_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """probs [N, K], labels [N] -> {top1, top5 (more than 5 classes), loss (NLL)}."""
    acc = topk_accuracy(probs, labels, reported_ks(probs.shape[1]))
    nll = -torch.log(probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)).mean()
    return {f"top{k}": v for k, v in acc.items()} | {"loss": float(nll)}


def encoder_heads(cfg: RunConfig, arch: Any = None) -> int:
    """eval.attentive_heads, else the probed encoder's head count (V-JEPA's choice; `arch`: its
    `VideoMAEArch`, else read from model.pretrained)."""
    if cfg.eval.attentive_heads:
        return cfg.eval.attentive_heads
    if arch is None:
        from tgmae.weights.sources import load_encoder_source

        arch = load_encoder_source(cfg.model.pretrained, num_heads=cfg.model.num_heads).arch
    return arch.num_heads


def check_attentive(cfg: RunConfig, arch: Any, train_data: Dataset) -> int:
    """The probe's head count, once the encoder's `VideoMAEArch` and the training set are known
    and before any token grid is extracted (a refused run leaves no folder): ConfigError naming
    eval.attentive_final_lr when it is above eval.attentive_lr (the loop's lr check, by the probe's
    own keys), eval.attentive_heads when it does not divide the width, or the batch key when one
    batch holds more clips than the training set lists."""
    run = loop_config(cfg)
    peak_lr(run.optim, run.train.batch_size, AttentiveTask.copied_keys)
    heads = encoder_heads(cfg, arch)
    if arch.embed_dim % heads:
        raise ConfigError(f"eval.attentive_heads={heads}: does not divide the token width {arch.embed_dim}")
    _check_batch(cfg, len(train_data))
    return heads


def _check_batch(cfg: RunConfig, videos: int, unreadable: int = 0) -> None:
    """ConfigError when one batch of the probe's loop holds more clips than `videos` (the
    readable ones, when `unreadable` were left out)."""
    run = loop_config(cfg).train
    if run.batch_size * run.accum_steps > videos:
        key = "eval.attentive_batch_size" if cfg.eval.attentive_batch_size else "train.batch_size"
        left = f" ({unreadable} unreadable left out)" if unreadable else ""
        raise ConfigError(f"{key}={run.batch_size}: more than the {videos} training videos{left}")


@locks_run_folder
def attentive_probe(cfg: RunConfig, hooks=None, *, train_data: Optional[Dataset] = None,
                    val_data: Optional[Dataset] = None, num_classes: Optional[int] = None,
                    cache_dir: Optional[str | Path] = None, given: Optional[Collection[str]] = None):
    """Extract (or load) the token grids, train the probe on the loop (resuming per
    checkpoint.resume), test the val videos' views; writes the outputs of the module doc and
    returns a `tgmae.evaluate.probe.ProbeResult`. Datasets, cache and `given` as `probe_features` (a
    given val dataset may yield several views per sample: [V, C, T, H, W])."""
    refuse_other_probe(cfg, checkpoints=False)  # a finished linear / k-NN probe's results stay
    refuse_unlabelled_lists(cfg, train_data, val_data)
    heads: list[int] = []
    train, val, names = probe_features(cfg, train_data, val_data, cache_dir, tokens=True, num_classes=num_classes,
                                       check=lambda arch, data: heads.append(check_attentive(cfg, arch, data)),
                                       # again once unreadable videos are left out, before the val grids
                                       check_train=lambda t: _check_batch(cfg, len(t), len(t.unreadable)),
                                       given=given)
    k_cls = num_classes or cfg.eval.num_classes or len(names) or int(train.labels.max()) + 1
    run_cfg = loop_config(cfg)
    grids = lambda d: TokenDataset(d.features, d.labels) if d is not None else None  # noqa: E731
    task = AttentiveTask(run_cfg, grids(train), grids(val), k_cls, heads[0] if heads else encoder_heads(cfg),
                         features_fingerprint(train, val, k_cls))
    task.class_names = names  # kept in its checkpoints: a resume refuses other names / order
    trainer = Trainer(task, run_cfg, hooks=hooks)
    fit = trainer.fit()
    probs = task.predict(fit.model) if val is not None else None
    final = score_probs(probs, val.labels) if val is not None else {"top1": float("nan")}
    best, best_epoch = best_of(fit.history, final)
    if trainer.dist.is_main:
        views = int(val.features.shape[1]) if val is not None and val.features.dim() == 4 else 1
        write_val_predictions(fit.output_dir, val, probs, names)
        # last: probe_results.json says the probe is done (the study skips it then)
        write_results(run_cfg, fit.output_dir, train, val, final, best, best_epoch, views=views,
                      queries=cfg.eval.attentive_queries, heads=task.num_heads, ensemble=cfg.eval.attentive_ensemble)
        log.info("attentive probe: %s (best top-1 %.4f, epoch %s)", topk_text(final["top1"], final.get("top5")),
                 best, best_epoch)
    return ProbeResult(fit.output_dir, final["top1"], final.get("top5"), best, fit.history, fit.model, best_epoch,
                       **val_counts(val))
