"""The one training loop; pretraining, finetuning and probing are `Task`s plugging in their step.

The loop owns devices, DDP / FSDP, precision, accumulation, clipping, the lr schedule, non-finite
stops, metrics, checkpoints and resume (policy: `tgmae.train.resume`). The run folder is written
at the first batch; the host syncs with the device only at a log step, checkpoint or evaluation.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from tgmae.autotune import enabled as autotune_enabled
from tgmae.config import ConfigError, RunConfig, to_dict
from tgmae.data.dataset import Loader
from tgmae.models.attention import kernel_plan, pin_kernels, plan_kernels, set_attention_kernel
from tgmae.models.block import Block
from tgmae.weights import checkpoint as ckpt
from tgmae.errors import UserError, count
from tgmae.distributed import DistInfo, all_reduce_sum, any_rank, barrier, fsdp_shard, grad_sync, init_distributed, is_fsdp
from tgmae.train.metrics import MetricsLog
from tgmae.train.optim import LrPlan, build_optimizer, lr_plan, set_lr, warn_short_warmup
from tgmae.train.resume import (Resumed, begun, first_checkpoint_written, planned_total, resume, run_folder_lock,
                                videos_on_disk, write_run_folder)
from tgmae.train.precision import autocast, begun_precision, make_grad_scaler, resolve_precision
from tgmae.train.precision import usable as precision_usable
from tgmae.train.sampler import ResumableSampler

log = logging.getLogger("tgmae")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile `model` in place (`train.compile`, validated): "off"; "blocks" = every
    transformer Block (the mask split, embedding, target and loss stay eager); "model" = the whole
    forward. In place, so parameter names and checkpoints are unchanged. Returns `model`."""
    if mode == "blocks":
        for m in model.modules():
            if isinstance(m, Block):
                m.compile()
    elif mode == "model":
        model.compile()
    if mode != "off":
        log.info("torch.compile: %s", mode)
    return model


class NonFiniteLossError(RuntimeError, UserError):
    """The loss became NaN/inf; found at the next log step, checkpoint or evaluation, before any
    is made from the model. The message names the step, the last good checkpoint and the keys to
    change (a too-high optim.base_lr, most often): the CLI's one line, exit 2."""


@dataclass
class StepOutput:
    """What a task's step returns: the loss to optimize and detached scalars to log. The logged
    `loss` is `loss` unless metrics name a "loss" of their own (an ensemble optimises its members'
    sum and logs their mean)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Task(Protocol):
    """A kind of training. The loop calls these; everything else is the loop's business.

    Optional: `evaluate(model) -> dict` after every `train.eval_every`-th epoch and the last (kept
    in checkpoints), `build_optimizer(groups, optim_cfg, device)`, and `inputs_fingerprint: str`
    (read after `build_model`, stored in checkpoints: a resume on other inputs is refused) with
    `inputs_named: str` (what it covers, for that refusal; default model.pretrained's weights), and
    `unused_keys: tuple[str, ...]` (config keys the task never reads: a resume may change them),
    `copied_keys: dict[str, str]` ({loop key: the user's key the task copied into it}: a change
    is named by the user's key alone).
    """

    name: str
    find_unused_parameters: bool

    def build_model(self) -> nn.Module: ...

    def train_dataset(self) -> Dataset: ...

    def param_groups(self, model: nn.Module) -> list[dict]: ...

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput: ...


@dataclass
class LoopState:
    """Passed to hooks after every optimizer step (losses since the last log step are unchecked)."""

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


def autocast_dtype(precision: str) -> torch.dtype:
    """The dtype attention inputs have under `autocast(precision)`."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in batch.items()}


@dataclass
class _Run:
    """One fit's moving parts, set up by `Trainer.fit` and advanced by its steps."""

    model: nn.Module  # unwrapped
    train_model: nn.Module  # compiled / DDP-wrapped: what the task's step sees
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    lr: LrPlan
    steps_per_epoch: int
    position: ckpt.TrainPosition
    eval_history: list[dict]  # evaluations since the settings last changed, kept in checkpoints
    history: list[dict]  # every record of this fit (earlier evaluations survive a resume)
    last_ckpt: Optional[Path]
    load_failures: torch.Tensor  # float64 scalar on the device: no host sync per batch
    metrics_log: Optional[MetricsLog] = None
    bar: Any = None
    window: Optional["_Window"] = None
    losses: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)  # unchecked (step from 1, epoch, loss)
    views: int = 1  # training views per video (data.num_sample): a pass is `views` effective epochs
    resumed: Optional[Resumed] = None  # what the run folder's record is written from (`_open_run_folder`)

    @property
    def total_steps(self) -> int:
        return self.lr.total_steps



def _non_finite(what: str, run: "_Run", advice: str) -> NonFiniteLossError:
    """The one line that stops a run whose loss or weights went NaN/inf, naming the last good
    checkpoint (written before the bad step: each save checks the losses and weights first) and
    `advice` (`Trainer._lr_advice`: the lr key in effect); fp32 is advised only to a run in
    another precision."""
    fp32 = "" if run.precision == "fp32" else ", or try train.precision=fp32"
    return NonFiniteLossError(
        f"{what}: stopping. The last good checkpoint is {run.last_ckpt or 'none (no checkpoint yet)'}. "
        f"{advice}{fp32}.")


class Trainer:
    def __init__(self, task: Task, cfg: RunConfig, hooks: Optional[list[Callable[[LoopState], None]]] = None,
                 dist_info: Optional[DistInfo] = None):
        self.task = task
        self.cfg = cfg
        self.hooks = hooks or []
        self.dist = dist_info or init_distributed(cfg.train.device)
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.fingerprint: Optional[str] = None  # the task's inputs (e.g. the probe's features)
        self.videos: Optional[dict] = None  # its videos as they were on disk at the start (rank 0)
        self.attention: Optional[dict] = None  # train.attention=auto: the kernels it uses, kept in checkpoints

    def fit(self) -> FitResult:
        """Train from scratch or resume, holding the run folder's lock (`run_folder_lock`)."""
        with run_folder_lock(self.cfg):
            barrier()  # every rank resumes the step the main one may have put back (`clean_temps`)
            return self._fit()

    def _fit(self) -> FitResult:
        cfg, dist, task = self.cfg, self.dist, self.task
        dataset = task.train_dataset()  # first: its config errors come before any measurement
        if dist.is_main:  # stat only, once: kept in checkpoints, a resume on other files is refused
            val = getattr(task, "val_dataset", None)
            self.videos = videos_on_disk({"train": dataset, "val": val() if val else None}, cfg.data.root)
        precision = self._choose_precision()
        torch.manual_seed(cfg.train.seed + dist.rank)
        model = self._build_model(precision)
        run = self._set_up(model, precision, len(dataset), views_per_video(dataset))  # refuses too few videos
        sampler = ResumableSampler(len(dataset), rank=dist.rank, world_size=dist.world_size,
                                   seed=cfg.train.seed)
        loader = self._make_loader(dataset, sampler)
        bs, accum = cfg.train.batch_size, cfg.train.accum_steps
        start_epoch = run.position.epoch
        try:
            while run.position.step < run.total_steps and run.position.epoch < cfg.train.epochs:
                epoch, micro_idx = run.position.epoch, run.position.batches_in_epoch
                micro_total = run.steps_per_epoch * accum
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                sampler.set_epoch(epoch, start=micro_idx * bs)
                run.train_model.train()
                if cfg.data.num_workers > 0 and epoch == start_epoch:
                    # A PyAV frame left in a reference cycle, freed by a forked worker's collector,
                    # can block that worker inside FFmpeg: collect before the workers fork.
                    gc.collect()
                t_wait = time.perf_counter()
                for batch in loader:
                    if micro_idx >= micro_total or run.position.step >= run.total_steps:
                        break
                    self._open_run_folder(run)  # a batch came: the data serve, training starts
                    run.window.data_time += time.perf_counter() - t_wait
                    micro_idx += 1
                    self._micro_step(run, batch, last=micro_idx % accum == 0)
                    if micro_idx % accum == 0:
                        self._optimizer_step(run, epoch, micro_idx)
                    t_wait = time.perf_counter()
                if micro_idx >= micro_total:  # the epoch is finished
                    self._end_epoch(run, epoch)
                    if epoch == start_epoch and self.dist.is_main:  # every video read once by now
                        log_short_videos(dataset, cfg.data)
                elif run.position.step >= run.total_steps:  # the step budget ran out inside it
                    run.last_ckpt = self._save(run, run.position)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say where a rerun goes on from
            if self.dist.is_main:
                latest = ckpt.find_latest(self.ckpt_dir)
                log.warning("stopped at step %d of %d: a rerun of the same command resumes from %s", run.position.step,
                            run.total_steps, latest or "the start (no checkpoint was written yet)")
            raise
        finally:
            if run.bar is not None:
                run.bar.close()
            if run.metrics_log is not None:
                run.metrics_log.close()
            del loader  # shuts its persistent workers down now, not at garbage collection
        return FitResult(self._full_model(model), run.position, self.out_dir, run.last_ckpt, run.history)

    # ------------------------------------------------------------------ set-up
    def _choose_precision(self) -> str:
        """train.precision for this device; "auto" under DDP: fp32 unless all ranks agree."""
        cfg, dist = self.cfg, self.dist
        auto = cfg.train.precision == "auto"
        began = begun_precision(cfg) if auto else None  # a resume goes on in the run's precision
        if began and precision_usable(began, dist.device):
            precision, how = began, ", as the run began: kept in its checkpoints"
        else:
            precision = resolve_precision(cfg.train.precision, dist.device)
            how = ", measured: see tgmae.autotune" if autotune_enabled() else ", TGMAE_AUTOTUNE=off: the default"
            how = how if auto else ""
            if began:
                how += f"; the run began in {began}, which {dist.device.type} lacks"
        if dist.enabled and auto:
            precision = "fp32" if any_rank(precision == "fp32", dist.device) else precision
        if dist.is_main:
            log.log(logging.WARNING if began and began != precision else logging.INFO,
                    "precision: %s (train.precision=%s%s)", precision, cfg.train.precision, how)
        return precision

    def _build_model(self, precision: str) -> nn.Module:
        """The task's model on the device with its attention kernel: train.attention, or with
        "auto" the kernels the resumed run began with (kept in its checkpoints, `pin_kernels`: a new
        measurement could switch them half way), else measured for the run's sequence lengths
        (`plan_kernels`). Rank 0's plan is kept: every rank of a resume uses it."""
        cfg, device, dtype = self.cfg, self.dist.device, autocast_dtype(precision)
        model = self.task.build_model().to(device)
        if cfg.train.attention != "auto":
            set_attention_kernel(model, cfg.train.attention)
            return model
        kept = begun(cfg, "attention")
        if isinstance(kept, dict) and kept.get("where") == [device.type, str(dtype)]:
            pin_kernels(device, dtype, kept["kernels"])
            if self.dist.is_main:
                log.info("attention kernels: as the run began (kept in its checkpoints): %s", kept["kernels"])
        elif autotune_enabled():
            plan_kernels(model, device, dtype, attention_lengths(cfg))
        self.attention = {"where": [device.type, str(dtype)],
                          "kernels": kernel_plan(model, device, dtype, attention_lengths(cfg))}
        return model

    def _plan_steps(self, num_items: int) -> tuple[int, int]:
        """(optimizer steps per epoch, total steps); ConfigError when an epoch has none, naming
        data.train_annotations when it lists fewer videos than there are processes."""
        cfg, world = self.cfg, self.dist.world_size
        bs, accum = cfg.train.batch_size, cfg.train.accum_steps
        if num_items < world:  # every process needs a video of its own
            raise ConfigError(f"data.train_annotations={cfg.data.train_annotations}: {num_items} training "
                              f"video{'' if num_items == 1 else 's'}, fewer than the {count(world, 'process', 'processes')} started "
                              "(torchrun --nproc_per_node): list more videos or start fewer processes")
        steps_per_epoch = (num_items // world) // (bs * accum)
        if steps_per_epoch == 0:
            raise ConfigError(f"dataset has {num_items} items: too few for train.batch_size={bs} x "
                              f"train.accum_steps={accum} x {count(world, 'process', 'processes')}")
        return steps_per_epoch, planned_total(cfg, steps_per_epoch)

    def _set_up(self, model: nn.Module, precision: str, num_items: int, views: int = 1) -> _Run:
        """Optimizer, scaler and lr plan (the linear scaling rule counts batch x accumulation x
        ranks x `views`); the resume; compile / DDP."""
        cfg, dist, task = self.cfg, self.dist, self.task
        steps_per_epoch, total_steps = self._plan_steps(num_items)
        global_batch = cfg.train.batch_size * cfg.train.accum_steps * dist.world_size * views
        plan = lr_plan(cfg.optim, global_batch, steps_per_epoch, total_steps, getattr(task, "copied_keys", None))
        if dist.is_main:
            warn_short_warmup(cfg, steps_per_epoch, total_steps, getattr(task, "copied_keys", None))
        if views > 1 and dist.is_main:
            log.info("data.num_sample=%d (%s): %d views per optimizer step, lr scaled for them; "
                     "train.epochs=%d passes = %d effective epochs", views, cfg.data.repeat_mode, global_batch,
                     cfg.train.epochs, cfg.train.epochs * views)
        # A task may bring its own optimizer (the linear probe's LARS); AdamW otherwise.
        make_optimizer = getattr(task, "build_optimizer", build_optimizer)
        model = self._shard(model, precision)  # before the optimizer: under FSDP it holds the shards
        optimizer = make_optimizer(task.param_groups(model), cfg.optim, dist.device)
        scaler = make_grad_scaler(precision, dist.device)
        self.fingerprint = getattr(task, "inputs_fingerprint", None)
        # label i's class: kept in every checkpoint, a resume refuses other names or order
        self.class_names = list(getattr(task, "class_names", None) or [])
        resumed = resume(cfg, dist, task.name, self.fingerprint, model, optimizer, scaler, total_steps,
                         class_names=self.class_names, unused_keys=tuple(getattr(task, "unused_keys", ())),
                         copied_keys=getattr(task, "copied_keys", None), videos=self.videos,
                         steps_per_epoch=steps_per_epoch,
                         inputs_named=getattr(task, "inputs_named", "model.pretrained's weights"))
        if resumed.step_offset:  # another process count: the counter goes on, the plan is of now
            plan = self._replan(plan, steps_per_epoch, resumed)
            total_steps = plan.total_steps
        train_model = self._wrap(model)
        run = _Run(model, train_model, optimizer, scaler, precision, plan, steps_per_epoch, resumed.position,
                   resumed.eval_history, list(resumed.eval_history), resumed.source,
                   torch.tensor(resumed.load_failures, dtype=torch.float64, device=dist.device), views=views,
                   resumed=resumed)
        if dist.is_main and cfg.log.progress:
            from tqdm.auto import tqdm

            run.bar = tqdm(total=total_steps, initial=resumed.position.step, unit="step", dynamic_ncols=True,
                           desc=task.name)
        run.window = _Window(dist.device)
        return run

    def _replan(self, plan: LrPlan, steps_per_epoch: int, resumed: Resumed) -> LrPlan:
        """`plan` (of this run's steps per epoch) on the step counter of a checkpoint written by
        another number of processes (`plan_offset`): its end and lr shifted, said in one line."""
        offset = resumed.step_offset
        total = planned_total(self.cfg, steps_per_epoch, offset)
        if self.dist.is_main:
            log.warning("resumed on %s: %d steps an epoch now, so the run ends at step %d and the lr "
                        "goes on from its step %d of %d in the plan of now (checkpoint at step %d)",
                        count(self.dist.world_size, "process", "processes"), steps_per_epoch, total, resumed.position.step - offset,
                        total - offset, resumed.position.step)
        return dataclasses.replace(plan, total_steps=total, offset=offset)

    def _open_run_folder(self, run: _Run) -> None:
        """The run folder's record (`write_run_folder`) and logs, once, at the first batch: a run
        refused at set-up or by its data leaves the folder as it was."""
        if run.metrics_log is not None:
            return
        cfg, dist, resumed = self.cfg, self.dist, run.resumed
        write_run_folder(cfg, dist.is_main, resumed, run.total_steps)
        run.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=dist.is_main,
                                     tensorboard=cfg.log.tensorboard,
                                     resume_step=resumed.position.step if resumed.source is not None else None)

    def _shard(self, model: nn.Module, precision: str) -> nn.Module:
        """train.strategy=fsdp on several processes: `fsdp_shard` per transformer block and root."""
        if self.cfg.train.strategy != "fsdp" or not self.dist.enabled:
            return model
        blocks = [m for m in model.modules() if isinstance(m, Block)]
        if self.dist.is_main:
            log.info("FSDP: %d blocks sharded over %d processes", len(blocks), self.dist.world_size)
        return fsdp_shard(model, blocks, torch.bfloat16 if precision == "bf16" else None)

    def _full_model(self, model: nn.Module) -> nn.Module:
        """The model unwrapped; a sharded one gathered into a plain copy on every rank (a collective)."""
        if not is_fsdp(model):
            return unwrap(model)
        plain = self.task.build_model().to(self.dist.device)
        if self.cfg.train.attention != "auto":  # "auto": the set-up's plan serves this copy too
            set_attention_kernel(plain, self.cfg.train.attention)
        return ckpt.full_model(model, plain)

    def _wrap(self, model: nn.Module) -> nn.Module:
        """train.compile in place, then DDP when distributed and not FSDP: the module the step runs."""
        compile_model(model, self.cfg.train.compile)
        if not self.dist.enabled or is_fsdp(model):
            return model
        device = self.dist.device
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(self.task, "find_unused_parameters", False))

    def _make_loader(self, dataset: Dataset, sampler: ResumableSampler) -> Loader:
        """One loader for the whole run, persistent workers; samples are seeded by (seed, epoch,
        index), so they do not depend on worker reuse."""
        cfg, workers = self.cfg, self.cfg.data.num_workers
        return Loader(
            dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
            collate_fn=getattr(dataset, "collate", None),  # k views per video: flattened to [B*k, ...]
            drop_last=True, pin_memory=self.dist.device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

    # ------------------------------------------------------------------ the steps
    def _micro_step(self, run: _Run, batch: dict[str, Any], last: bool) -> None:
        """Forward and backward of one batch; DDP syncs gradients on the `last` micro-batch only."""
        device = self.dist.device
        batch = to_device(batch, device)
        if "load_failures" in batch:
            run.load_failures += torch.as_tensor(batch["load_failures"]).sum().to(device, torch.float64)
        with grad_sync(run.train_model, enabled=last):
            with autocast(run.precision, device):
                out = self.task.step(run.train_model, batch)
            loss = out.loss.float()
            # the step this loss makes, counted from 1 as metrics.jsonl and the step_N checkpoints are
            run.losses.append((run.position.step + 1, run.position.epoch, loss.detach()))
            run.scaler.scale(loss / self.cfg.train.accum_steps).backward()
        run.window.add(out, self.cfg.train.batch_size * run.views)

    def _optimizer_step(self, run: _Run, epoch: int, micro_idx: int) -> None:
        """lr, (clipped) gradients, the update; then the log record, a checkpoint, the hooks."""
        cfg, model = self.cfg, run.model
        lr = run.lr.at(run.position.step)
        set_lr(run.optimizer, lr)
        logs_now = self._logs_at(run.position.step + 1, run.total_steps)
        grad_norm: torch.Tensor | float = float("nan")
        if cfg.optim.clip_grad is not None:
            run.scaler.unscale_(run.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        elif logs_now:  # unclipped runs (finetune, probe) still log the norm they step with
            run.scaler.unscale_(run.optimizer)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else 0.0
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.position = ckpt.TrainPosition(run.position.step + 1, epoch, micro_idx)
        if run.bar is not None:
            run.bar.update(1)
        record = self._log(run, epoch, lr, float(grad_norm)) if logs_now else None
        # the epoch's last step (the budget's) is saved by the epoch end (the budget end) that follows:
        # a step written twice would be replaced, and a stop during that could cost it
        ends = micro_idx == run.steps_per_epoch * cfg.train.accum_steps or run.position.step >= run.total_steps
        if run.position.step % cfg.checkpoint.every_steps == 0 and not ends:
            run.last_ckpt = self._save(run, run.position)
        state = LoopState(run.position, run.total_steps, record or {}, model)
        for hook in self.hooks:
            hook(state)

    def _logs_at(self, step: int, total_steps: int) -> bool:
        """Whether optimizer step `step` (1-based) writes a record: every train.log_every and the last."""
        return step % self.cfg.train.log_every == 0 or step == total_steps

    def _log(self, run: _Run, epoch: int, lr: float, grad_norm: float) -> dict:
        """The window's averaged record (global over ranks) -> metrics.jsonl, history, console."""
        self._check_finite(run)
        record = run.window.flush(self.dist)
        done = run.position.batches_in_epoch / (run.steps_per_epoch * self.cfg.train.accum_steps)
        record.update(step=run.position.step, epoch=epoch, lr=lr, grad_norm=grad_norm,
                      effective_epoch=(epoch + done) * run.views,
                      load_failures=float(all_reduce_sum(run.load_failures.clone().view(1)).item()))
        run.metrics_log.write(record)
        run.history.append(record)
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", clips_s=f"{record['clips_per_s']:.1f}",
                                eff_epoch=f"{record['effective_epoch']:.2f}")
        elif self.dist.is_main:  # log.progress=false: one console line per record
            log.info("%s step %d/%d  loss %.4f  lr %.2e  %.1f clips/s  effective epoch %.2f", self.task.name,
                     run.position.step, run.total_steps, record["loss"], lr, record["clips_per_s"],
                     record["effective_epoch"])
        return record

    def _check_finite(self, run: _Run) -> None:
        """NonFiniteLossError when a loss since the last check was NaN/inf on any rank (one host sync)."""
        if not run.losses:
            return
        finite = torch.isfinite(torch.stack([loss for _, _, loss in run.losses])).tolist()
        bad = [(step, epoch, loss) for (step, epoch, loss), ok in zip(run.losses, finite) if not ok]
        run.losses.clear()
        if not (any_rank(bool(bad), self.dist.device) if self.dist.enabled else bad):
            return
        where = (f"({bad[0][2].item()}) in step {bad[0][0]}, epoch {bad[0][1]}" if bad
                 else f"on another rank, in step {run.position.step} or before")
        raise _non_finite(f"non-finite loss {where}", run, self._lr_advice())

    def _lr_advice(self) -> str:
        """What to lower after a NaN: the lr key in effect (optim.lr overrides optim.base_lr; a task
        deriving its lr from its own key names it as `lr_key`, e.g. eval.attentive_lr)."""
        task_key = getattr(self.task, "lr_key", None)
        if task_key:
            return f"Lower {task_key}"
        key = "optim.lr" if self.cfg.optim.lr is not None else "optim.base_lr"
        return f"Lower {key} or set optim.clip_grad"

    def _check_finite_weights(self, run: _Run) -> None:
        """NonFiniteLossError when a weight is NaN/inf on any rank: a finite loss can give NaN
        gradients (an overflow in the backward), and a checkpoint of those weights must not be saved
        and then named as the last good one. One host sync, at checkpoints only."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in run.model.parameters()]  # FSDP: own shard
        bad = bool(local) and not bool(torch.stack([torch.isfinite(t.detach()).all() for t in local]).all())
        if not (any_rank(bad, self.dist.device) if self.dist.enabled else bad):
            return
        raise _non_finite(f"non-finite weights after step {run.position.step} (the update from a NaN/inf "
                          "gradient)", run, self._lr_advice())

    def _end_epoch(self, run: _Run, epoch: int) -> None:
        """Every train.eval_every-th epoch and the last: the task's evaluation in a forked RNG (so
        training draws do not depend on train.eval_every); then a checkpoint."""
        cfg, device = self.cfg, self.dist.device
        self._open_run_folder(run)  # an epoch that a resume found finished ends without a batch
        run.position = ckpt.TrainPosition(run.position.step, epoch + 1, 0)
        evaluate = getattr(self.task, "evaluate", None)
        if evaluate is not None and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 >= cfg.train.epochs):
            self._check_finite(run)
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                result = evaluate(self._full_model(run.model))
            record = {"step": run.position.step, "epoch": epoch, **result}
            run.metrics_log.write(record)
            run.history.append(record)
            run.eval_history.append(record)
        run.last_ckpt = self._save(run, run.position)

    def _save(self, run: _Run, pos: ckpt.TrainPosition) -> Optional[Path]:
        """A checkpoint at `pos` (main rank writes; every rank waits), after the finite check."""
        self._open_run_folder(run)
        self._check_finite(run)
        self._check_finite_weights(run)
        failures = all_reduce_sum(run.load_failures.clone().view(1)).item()
        path = None
        states = ckpt.train_states(run.model, run.optimizer)  # a collective under FSDP
        rngs = ckpt.rank_rng_states()  # a collective
        if self.dist.is_main:
            from tgmae.weights.model_card import own_run_id

            path = ckpt.save_checkpoint(
                self.ckpt_dir, run.model, run.optimizer, run.scaler, pos, to_dict(self.cfg), states=states, rngs=rngs,
                keep_last=self.cfg.checkpoint.keep_last, run_id=own_run_id(self.out_dir),
                extra={"world_size": self.dist.world_size, "load_failures": failures, "task": self.task.name,
                       "precision": run.precision, "eval_history": run.eval_history, "inputs_fingerprint": self.fingerprint,
                       **({"videos": self.videos} if self.videos else {}),
                       **({"attention": self.attention} if self.attention else {}),
                       **({"class_names": self.class_names} if self.class_names else {})},
            )
            first_checkpoint_written(self.out_dir)
        barrier()
        return path


def log_short_videos(dataset: Dataset, data: Any) -> None:
    """Say how many of the videos read (this process and its workers) were shorter than a clip's
    span and so read with a smaller stride (the dataset's `short_videos`; nothing when none)."""
    short = int(getattr(dataset, "short_videos", 0))
    if short:
        log.warning("%d of %d videos are shorter than a clip (data.num_frames=%d x data.frame_stride=%d): read with "
                    "a smaller stride (`tgmae data check --min-frames %d --frame-stride %d` lists them)", short,
                    len(dataset), data.num_frames, data.frame_stride, data.num_frames, data.frame_stride)


def views_per_video(dataset: Dataset) -> int:
    """Training views one dataset item gives (`data.num_sample`); 1 without repeated sampling."""
    return int(getattr(dataset, "num_sample", 1))


def attention_lengths(cfg: RunConfig) -> set[int]:
    """Sequence lengths a run's attention sees: all tokens and the encoder's visible tokens at
    masking.ratio and contrastive.view_ratio (tube and random roundings)."""
    t, h, w = cfg.token_grid
    n = t * h * w
    ratios = [cfg.masking.ratio] + ([cfg.contrastive.view_ratio] if cfg.contrastive.view_ratio is not None else [])
    return {n} | {n - t * int(round(r * h * w)) for r in ratios} | {n - int(round(r * n)) for r in ratios}


class _Window:
    """Running sums between log records (tensors on the device in float64, numbers on the host),
    flushed into one record averaged over steps and ranks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0
        self.clips = 0
        self.data_time = 0.0
        self.t0 = time.perf_counter()

    def add(self, out: StepOutput, batch_size: int) -> None:
        values = {"loss": out.loss, **out.metrics}  # a "loss" metric replaces the logged loss (StepOutput)
        for k, v in values.items():
            v = v.detach().to(self.device, torch.float64) if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        self.clips += batch_size

    def flush(self, dist: DistInfo) -> dict[str, float]:
        keys = sorted(self.sums)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        vec = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float64, device=self.device).reshape(())
                           for k in keys] + [torch.tensor(float(n), dtype=torch.float64, device=self.device)
                                             for n in (self.count, self.clips)])
        all_reduce_sum(vec)
        *sums, count, clips = vec.tolist()  # the one host sync of a log step's metrics
        record = {k: sums[i] / max(count, 1.0) for i, k in enumerate(keys)}
        record["clips_per_s"] = clips / elapsed  # training views per second (k per video with data.num_sample=k)
        record["data_wait_frac"] = min(1.0, self.data_time / elapsed)
        for k, v in record.items():
            if isinstance(v, float) and not math.isfinite(v):
                record[k] = float("nan")
        self.reset()
        return record
