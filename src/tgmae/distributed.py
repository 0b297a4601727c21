"""Rank, world and process-group set-up for torchrun, the collectives on top, FSDP sharding and
`grad_sync` for accumulation. One process per device; without torchrun's environment everything
is a single process and the helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from tgmae.lifetime import launch_env, local_rank


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined default process group; (0, 1) when there is none."""
    return (dist.get_rank(), dist.get_world_size()) if distributed_ready() else (0, 1)


def resolve_device(name: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """The torch device of setting `key` (`name`: auto | cpu | cuda | cuda:N; auto and cuda mean
    cuda:LOCAL_RANK when CUDA is there). ConfigError naming `key` when CUDA is missing or the
    index is not on this machine."""
    from tgmae.config import ConfigError

    def setting(value: str) -> str:  # as the user writes it: a flag or a config key
        return f"{key} {value}" if key.startswith("-") else f"{key}={value}"

    given = setting(name if key.startswith("-") else repr(name))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{given}: not a torch device; expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta, ...: not what tgmae's paths are built and tested for
        raise ConfigError(f"{given}: device type {device.type!r} is not supported; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{given} but CUDA is not available on this machine: use {setting('auto')} or "
                          f"{setting('cpu')}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{given}: device {device} (LOCAL_RANK={local_rank}) but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes per "
                          f"node (--nproc_per_node) or use {setting('cpu')}")
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR): NCCL
    for a CUDA device (made this process's current device), gloo for the CPU."""
    rank, world = launch_env()
    local = local_rank()
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def barrier() -> None:
    if distributed_ready():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place where distributed); returns `t` for chaining."""
    if distributed_ready():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on any rank (e.g. a non-finite loss somewhere)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def cleanup() -> None:
    """Leave the process group: a barrier first, so no rank tears gloo down while another is
    still inside a collective (that aborts the process with 'terminate called')."""
    if distributed_ready():
        import gc

        dist.barrier()
        gc.collect()  # DDP reducers hold the group; drop unreferenced ones first
        dist.destroy_process_group()


def init_distributed_if_launched() -> bool:
    """Under torchrun (WORLD_SIZE > 1 and MASTER_ADDR set), join a gloo group for the final
    barrier. Returns True if this call created the group (the caller destroys it)."""
    if not dist.is_available() or dist.is_initialized():
        return False
    if launch_env()[1] <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    # Ranks can finish far apart (uneven video lengths), so the barrier may wait long.
    dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=48))
    return True


def distributed_ready() -> bool:
    """Whether this process has joined a default process group."""
    return dist.is_available() and dist.is_initialized()


def fsdp_shard(model: nn.Module, units: Iterable[nn.Module], param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Shard `model` in place with FSDP's `fully_shard`: each of `units` (the transformer blocks),
    then the root. `param_dtype` (bf16) computes in that dtype, reducing gradients in float32.
    Every rank first takes rank 0's parameters and buffers (as DDP does), since each cuts its
    shard from its own full tensor. Returns `model` (parameters now DTensors sharded on dim 0)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    # The root returns slices of its decoder output (pred, per-token views): FSDP2 warns that an
    # in-place op on such a view would skip its pre-backward hook. Training takes the loss out of
    # place (tgmae.models: masked_mse, the InfoNCE heads), so every rank's "may produce wrong
    # gradients" warning would only alarm: FSDP runs match DDP's losses (tests/test_train_fsdp.py).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor",
                            category=UserWarning)
    return model


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model` was sharded with `fully_shard` (its state dicts hold DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes inside reduce gradients across ranks only when `enabled`: DDP's `no_sync`,
    FSDP's `set_requires_gradient_sync`, nothing for one process."""
    if enabled or not distributed_ready():
        yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield
