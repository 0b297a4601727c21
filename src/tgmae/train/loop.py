"""The one training loop. Pretraining, finetuning and linear probing are `Task` objects that plug
their batch -> loss step, parameters and evaluation into it.

The loop owns everything a task should not have to think about: devices and DDP, mixed
precision, gradient accumulation and clipping, the lr schedule, non-finite-loss stops, metrics,
progress, atomic checkpoints and step-exact resume.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from tgmae.autotune import enabled as autotune_enabled
from tgmae.config import ConfigError, RunConfig, save_config, to_dict
from tgmae.models.attention import set_attention_kernel
from tgmae.models.block import Block
from tgmae.weights import checkpoint as ckpt
from tgmae.distributed import DistInfo, all_reduce_sum, any_rank, barrier, init_distributed
from tgmae.train.metrics import MetricsLog
from tgmae.train.optim import build_optimizer, set_lr
from tgmae.train.precision import autocast, make_grad_scaler, resolve_precision
from tgmae.train.sampler import ResumableSampler
from tgmae.train.schedule import scaled_lr, warmup_cosine

log = logging.getLogger("tgmae")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile `model` in place (`train.compile`): "off"; "blocks" = every transformer
    Block (one graph per block shape, no graph breaks; the mask split, embedding, target and
    loss stay eager); "model" = the whole forward (the mask split runs eagerly between graphs,
    see `tgmae.models.tokens.mask_to_indices`). In place (`nn.Module.compile`), so parameter
    names and checkpoints are unchanged. Cold compile takes 30-60 s on a 2-core CPU.
    Returns `model`."""
    if mode == "blocks":
        for m in model.modules():
            if isinstance(m, Block):
                m.compile()
    elif mode == "model":
        model.compile()
    elif mode != "off":
        raise ValueError(f"train.compile={mode!r}: expected off|blocks|model")
    if mode != "off":
        log.info("torch.compile: %s", mode)
    return model


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint is left as it was."""


@dataclass
class StepOutput:
    """What a task's step returns: the loss to optimize and detached scalars to log."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Task(Protocol):
    """A kind of training. The loop calls these; everything else is the loop's business.

    Optional: `evaluate(model) -> dict` after every `train.eval_every`-th epoch and the last (its
    records are kept in the checkpoints, so they survive a resume; it runs in a forked RNG), `build_optimizer(groups, optim_cfg, device)`, and
    `inputs_fingerprint: str` (read after `build_model`), stored in every checkpoint: a resume on
    other inputs (other features, other weights under the same path) is refused.
    """

    name: str
    find_unused_parameters: bool

    def build_model(self) -> nn.Module: ...

    def train_dataset(self) -> Dataset: ...

    def param_groups(self, model: nn.Module) -> list[dict]: ...

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput: ...


@dataclass
class LoopState:
    """Passed to hooks after every optimizer step."""

    position: ckpt.TrainPosition
    total_steps: int
    metrics: dict[str, float]
    model: nn.Module


@dataclass
class FitResult:
    model: nn.Module  # unwrapped (no DDP / compile wrapper)
    position: ckpt.TrainPosition
    output_dir: Path
    last_checkpoint: Optional[Path]
    history: list[dict]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (its state dict has clean keys)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    def __init__(self, task: Task, cfg: RunConfig, hooks: Optional[list[Callable[[LoopState], None]]] = None,
                 dist_info: Optional[DistInfo] = None):
        self.task = task
        self.cfg = cfg
        self.hooks = hooks or []
        self.dist = dist_info or init_distributed(cfg.train.device)
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"

    # ---------------------------------------------------------------------------------------
    def _resume_source(self) -> Optional[Path]:
        spec = self.cfg.checkpoint.resume
        if not spec:
            return None
        if spec in ("auto", ckpt.IGNORE_CONFIG):
            return ckpt.find_latest(self.ckpt_dir)
        path = Path(spec)
        if not path.exists():
            raise ckpt.CheckpointError(f"checkpoint.resume={spec!r}: no such checkpoint")
        return path

    def fit(self) -> FitResult:
        cfg, dist, task = self.cfg, self.dist, self.task
        device = dist.device
        dataset = task.train_dataset()  # first: its config errors come before any measurement
        precision = resolve_precision(cfg.train.precision, device)
        if dist.enabled and cfg.train.precision == "auto":  # a collective: every rank calls it
            # each rank measured for itself: all ranks must train alike, so fp32 unless all agree
            precision = "fp32" if any_rank(precision == "fp32", device) else precision
        if dist.is_main:
            how = ""
            if cfg.train.precision == "auto":
                how = ", measured: see tgmae.autotune" if autotune_enabled() else ", TGMAE_AUTOTUNE=off: the default"
            log.info("precision: %s (train.precision=%s%s)", precision, cfg.train.precision, how)
        torch.manual_seed(cfg.train.seed + dist.rank)

        model = task.build_model().to(device)
        if cfg.train.attention != "auto":  # "auto": each call's kernel is measured per machine
            set_attention_kernel(model, cfg.train.attention)
        sampler = ResumableSampler(len(dataset), rank=dist.rank, world_size=dist.world_size,
                                   seed=cfg.train.seed)
        bs, accum = cfg.train.batch_size, cfg.train.accum_steps
        steps_per_epoch = (len(dataset) // dist.world_size) // (bs * accum)
        if steps_per_epoch == 0:
            raise ConfigError(
                f"dataset has {len(dataset)} items: too few for train.batch_size={bs} x "
                f"train.accum_steps={accum} x {dist.world_size} processes"
            )
        total_steps = cfg.train.epochs * steps_per_epoch
        if cfg.train.max_steps is not None:
            total_steps = min(total_steps, cfg.train.max_steps)

        global_batch = bs * accum * dist.world_size
        o = cfg.optim
        peak = o.lr if o.lr is not None else max(scaled_lr(o.base_lr, global_batch), o.lr_floor or 0.0)
        ratio = peak / o.base_lr if o.lr is None else 1.0  # min/warmup lrs scale like base_lr
        min_lr, warmup_lr = o.min_lr * ratio, o.warmup_lr * ratio
        warmup_steps = min(total_steps, int(round(o.warmup_epochs * steps_per_epoch)))

        # A task may bring its own optimizer (the linear probe's LARS); AdamW otherwise.
        make_optimizer = getattr(task, "build_optimizer", build_optimizer)
        optimizer = make_optimizer(task.param_groups(model), o, device)
        scaler = make_grad_scaler(precision, device)

        position = ckpt.TrainPosition()
        load_failures_total = 0.0  # unreadable videos replaced so far (this rank's share)
        cfg_dict = to_dict(cfg)
        # What the task's inputs are (e.g. the probe's features): a resume must see the same.
        fingerprint = getattr(task, "inputs_fingerprint", None)
        eval_history: list[dict] = []  # every evaluation record so far, kept in each checkpoint
        changes: list[tuple[str, Any, Any]] = []
        source = self._resume_source()
        if source is not None:
            loaded = ckpt.load_checkpoint(source)
            ckpt.check_run_kind(source, loaded.extra.get("task"), task.name, str(cfg.train.output_dir),
                                fits=set(loaded.model_state) == set(model.state_dict()))
            changes = ckpt.check_resume_config(source, loaded.config, cfg_dict, to_dict(RunConfig()),
                                               output_dir=str(cfg.train.output_dir))
            stored_fp = loaded.extra.get("inputs_fingerprint")
            if fingerprint and stored_fp and stored_fp != fingerprint:
                if cfg.checkpoint.resume != ckpt.IGNORE_CONFIG:
                    raise ckpt.CheckpointError(
                        f"cannot resume {source}: the {task.name} inputs differ from the ones it was trained on "
                        f"(fingerprint {stored_fp[:12]} -> {fingerprint[:12]}; e.g. model.pretrained's weights "
                        f"changed). Start a new run with another train.output_dir, or continue this one with "
                        f"checkpoint.resume={ckpt.IGNORE_CONFIG}.")
                changes.append((f"{task.name} inputs (fingerprint)", stored_fp[:12], fingerprint[:12]))
            # Evaluations made under other settings (checkpoint.resume=ignore_config) do not count
            # for this run's best: only those since the change (they stay in metrics.jsonl).
            eval_history = [] if changes else list(loaded.extra.get("eval_history", []))
            position = loaded.position
            if changes and not (position.step < total_steps and position.epoch < cfg.train.epochs):
                raise ckpt.CheckpointError(
                    f"{source} has finished (step {position.step}) under other settings "
                    f"({'; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in changes)}): with nothing left to train, "
                    f"checkpoint.resume={ckpt.IGNORE_CONFIG} would report its results under settings they were "
                    "not made with. Start a new run with another train.output_dir, or raise train.epochs to "
                    "continue this one under the new settings.")
            try:
                ckpt.load_model_weights(model, loaded.model_state, str(source))
            except ckpt.CheckpointError as e:
                raise ckpt.CheckpointError(f"{e}. {ckpt.another_run_hint(str(cfg.train.output_dir))}") from None
            optimizer.load_state_dict(loaded.optimizer_state)
            if loaded.scaler_state:
                scaler.load_state_dict(loaded.scaler_state)
            if dist.is_main:
                load_failures_total = float(loaded.extra.get("load_failures", 0.0))
            if dist.world_size == loaded.extra.get("world_size", dist.world_size):
                ckpt.set_rng_state(loaded.rng)
            if dist.is_main:
                log.info("resumed from %s at step %d (epoch %d, batch %d)", source, position.step,
                         position.epoch, position.batches_in_epoch)

        train_model: nn.Module = model
        compile_model(train_model, cfg.train.compile)
        if dist.enabled:
            train_model = DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=getattr(task, "find_unused_parameters", False),
            )

        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            will_train = position.step < total_steps and position.epoch < cfg.train.epochs
            if source is None or will_train:  # config.yaml records only settings that run
                save_config(cfg, self.out_dir / "config.yaml")
            if changes:  # checkpoint.resume=ignore_config (something is left to train): what changed, and when
                log.warning("resuming %s at step %d under changed settings: %s", source, position.step,
                            "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes))
                with open(self.out_dir / "config_changes.jsonl", "a") as f:
                    f.write(json.dumps({"step": position.step, "changes": {k: [a, b] for k, a, b in changes}})
                            + "\n")
        metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=dist.is_main,
                                 tensorboard=cfg.log.tensorboard,
                                 resume_step=position.step if source is not None else None)
        history: list[dict] = list(eval_history)  # earlier evaluations survive a resume
        last_ckpt: Optional[Path] = source

        def save(pos: ckpt.TrainPosition) -> Optional[Path]:
            path = None
            failures = all_reduce_sum(torch.tensor([load_failures_total], device=device)).item()
            if dist.is_main:
                path = ckpt.save_checkpoint(
                    self.ckpt_dir, model, optimizer, scaler, pos, cfg_dict,
                    keep_last=cfg.checkpoint.keep_last,
                    extra={"world_size": dist.world_size, "load_failures": failures, "task": task.name,
                           "eval_history": eval_history, "inputs_fingerprint": fingerprint},
                )
            barrier()
            return path

        bar = None
        if dist.is_main and cfg.log.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=position.step, unit="step", dynamic_ncols=True,
                       desc=task.name)

        window = _Window()
        # One loader for the whole run: its worker processes persist across epochs. Each epoch's
        # iterator is created after `set_epoch`, and samples are seeded by (seed, epoch, index)
        # through the dataset's shared epoch counter, so they do not depend on worker reuse.
        workers = cfg.data.num_workers
        loader = DataLoader(
            dataset, batch_size=bs, sampler=sampler, num_workers=workers,
            drop_last=True, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        start_epoch = position.epoch
        try:
            while position.step < total_steps and position.epoch < cfg.train.epochs:
                epoch = position.epoch
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                sampler.set_epoch(epoch, start=position.batches_in_epoch * bs)
                micro_total = steps_per_epoch * accum
                train_model.train()
                t_wait = time.perf_counter()
                micro_idx = position.batches_in_epoch
                if workers > 0 and epoch == start_epoch:
                    # A PyAV frame left in a reference cycle, freed by a forked worker's collector,
                    # can block that worker inside FFmpeg: collect before the workers fork.
                    gc.collect()
                for batch in loader:
                    if micro_idx >= micro_total or position.step >= total_steps:
                        break
                    window.data_time += time.perf_counter() - t_wait
                    batch = to_device(batch, device)
                    load_failures_total += float(torch.as_tensor(batch.get("load_failures", 0)).sum())
                    last_micro = (micro_idx + 1) % accum == 0
                    sync_ctx = (train_model.no_sync() if dist.enabled and not last_micro
                                else _null())
                    with sync_ctx:
                        with autocast(precision, device):
                            out = task.step(train_model, batch)
                        loss = out.loss.float()
                        bad = not bool(torch.isfinite(loss.detach()))
                        if any_rank(bad, device) if dist.enabled else bad:
                            raise NonFiniteLossError(
                                f"non-finite loss ({loss.item()}) at step {position.step}, epoch "
                                f"{epoch}: stopping. The last good checkpoint is "
                                f"{last_ckpt or 'none (no checkpoint yet)'}. Lower optim.base_lr, "
                                "set optim.clip_grad, or try train.precision=fp32."
                            )
                        scaler.scale(loss / accum).backward()
                    window.add(out, bs)
                    micro_idx += 1
                    if not last_micro:
                        t_wait = time.perf_counter()
                        continue

                    lr = warmup_cosine(position.step, total_steps, warmup_steps, peak, min_lr, warmup_lr)
                    set_lr(optimizer, lr)
                    next_step = position.step + 1
                    logs_now = next_step % cfg.train.log_every == 0 or next_step == total_steps
                    grad_norm = float("nan")
                    if o.clip_grad is not None:
                        scaler.unscale_(optimizer)
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad))
                    elif logs_now:  # unclipped runs (finetune, probe) still log the norm they step with
                        scaler.unscale_(optimizer)
                        grads = [p.grad for p in model.parameters() if p.grad is not None]
                        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    position = ckpt.TrainPosition(position.step + 1, epoch, micro_idx)
                    if bar is not None:
                        bar.update(1)

                    record = None
                    if position.step % cfg.train.log_every == 0 or position.step == total_steps:
                        record = window.flush(dist, device)
                        record.update(step=position.step, epoch=epoch, lr=lr, grad_norm=grad_norm,
                                      load_failures=float(all_reduce_sum(
                                          torch.tensor([load_failures_total], device=device)).item()))
                        metrics_log.write(record)
                        history.append(record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                            clips_s=f"{record['clips_per_s']:.1f}")
                        elif dist.is_main:  # log.progress=false: one console line per record
                            log.info("%s step %d/%d  loss %.4f  lr %.2e  %.1f clips/s", task.name,
                                     position.step, total_steps, record["loss"], lr, record["clips_per_s"])
                    if position.step % cfg.checkpoint.every_steps == 0:
                        last_ckpt = save(position)
                    state = LoopState(position, total_steps, record or {}, model)
                    for hook in self.hooks:
                        hook(state)
                    t_wait = time.perf_counter()

                # Epoch finished (or the step budget ran out inside it).
                if micro_idx >= micro_total:
                    position = ckpt.TrainPosition(position.step, epoch + 1, 0)
                    evaluate = getattr(task, "evaluate", None)
                    due = (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 >= cfg.train.epochs
                    if evaluate is not None and due:
                        # Evaluation must not move the RNG that training draws from (its loaders'
                        # seeds come from it), or results would depend on train.eval_every.
                        cuda = [device.index or 0] if device.type == "cuda" else []
                        with torch.random.fork_rng(devices=cuda):
                            result = evaluate(unwrap(model))
                        record = {"step": position.step, "epoch": epoch, **result}
                        metrics_log.write(record)
                        history.append(record)
                        eval_history.append(record)
                    last_ckpt = save(position)
                elif position.step >= total_steps:
                    last_ckpt = save(position)
        finally:
            if bar is not None:
                bar.close()
            metrics_log.close()
            del loader  # shuts its persistent workers down now, not at garbage collection
        return FitResult(unwrap(model), position, self.out_dir, last_ckpt, history)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Window:
    """Running sums between log records; flushed into one averaged record (global over ranks)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.clips = 0
        self.data_time = 0.0
        self.t0 = time.perf_counter()

    def add(self, out: StepOutput, batch_size: int) -> None:
        values = {"loss": out.loss, **out.metrics}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        self.count += 1
        self.clips += batch_size

    def flush(self, dist: DistInfo, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        vec = torch.tensor([self.sums[k] for k in keys] + [float(self.count), float(self.clips)],
                           device=device, dtype=torch.float64)
        all_reduce_sum(vec)
        count, clips = vec[-2].item(), vec[-1].item()
        record = {k: vec[i].item() / max(count, 1.0) for i, k in enumerate(keys)}
        record["clips_per_s"] = clips / elapsed
        record["data_wait_frac"] = min(1.0, self.data_time / elapsed)
        for k, v in record.items():
            if isinstance(v, float) and not math.isfinite(v):
                record[k] = float("nan")
        self.reset()
        return record
