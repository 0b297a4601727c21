"""Rank, world and process-group set-up for torchrun, the collectives on top, FSDP sharding and
`grad_sync` for accumulation. One process per device; without torchrun's environment everything
is a single process and the helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from tgmae.errors import SettingsError, count
from tgmae.lifetime import launch_env, launched_by_torchrun, local_rank

log = logging.getLogger(__name__)


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
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR), or the
    same variables set without it (`join_group`): NCCL for a CUDA device (made this process's
    current device), gloo for the CPU."""
    rank, world = launch_env()
    local = local_rank()
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        join_group("nccl" if device.type == "cuda" else "gloo", rank, world)
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
    """Under torchrun (WORLD_SIZE > 1 and MASTER_ADDR set; or those set without it: `join_group`),
    join a gloo group for the final barrier. Returns True if this call created the group (the
    caller destroys it)."""
    if not dist.is_available() or dist.is_initialized():
        return False
    if launch_env()[1] <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    # Ranks can finish far apart (uneven video lengths), so the barrier may wait long.
    join_group("gloo", *launch_env(), timeout=datetime.timedelta(hours=48))
    return True


def join_group(backend: str, rank: int, world: int, timeout: Optional[datetime.timedelta] = None) -> None:
    """Join the default process group as `rank` of `world` (`timeout`: torch's per backend when
    None). Under torchrun, through its rendezvous as ever; a process given RANK / WORLD_SIZE /
    MASTER_ADDR / MASTER_PORT otherwise meets its peers in `rendezvous` first, where Ctrl-C and
    SIGTERM act and a line says what it waits for: inside torch's, a peer that never came kept it
    waiting silently, deaf to both (re-trial 31A L1)."""
    if launched_by_torchrun():
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
        return
    timeout = timeout or _default_timeout(backend)
    store = rendezvous(rank, world, timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)


def _default_timeout(backend: str) -> datetime.timedelta:
    """torch's default process-group timeout for `backend` (its env:// rendezvous waited as long)."""
    from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

    return default_pg_nccl_timeout if backend == "nccl" and default_pg_nccl_timeout else default_pg_timeout


RENDEZVOUS_POLL_S = 0.1  # `rendezvous`: how often it looks for its peers (Ctrl-C and SIGTERM act between)
RENDEZVOUS_SAY_S = 3.0  # after this many seconds without them it says what it waits for
RENDEZVOUS_CONNECT_S = 1.0  # a peer's probe of rank 0's address, seconds per try
_JOINED = "tgmae/joined"  # the store's count of processes checked in


def rendezvous(rank: int, world: int, timeout: datetime.timedelta):
    """The TCPStore of a group started without torchrun, once all `world` processes have checked in:
    rank 0 serves it at MASTER_PORT, the others connect to MASTER_ADDR:MASTER_PORT. It waits in
    Python, RENDEZVOUS_POLL_S at a time, so a stop acts at once (torch's own rendezvous waits in C++);
    after RENDEZVOUS_SAY_S it logs what it waits for (`waiting for 1 more process (WORLD_SIZE=2) at
    127.0.0.1:29743`), again when that changes. A rank 0 that leaves is waited for again. SettingsError
    naming the variables when MASTER_ADDR / MASTER_PORT are missing or bad, rank 0 cannot listen on
    the port, a RANK comes twice, or the others have not all come within `timeout`. Re-trial 31A L1."""
    from torch.distributed import DistError

    addr, port = _master_address(world)
    start, said, store, reason, came = time.monotonic(), None, None, "", False
    try:
        while True:
            if store is None:
                store, reason = _connect(addr, port, rank, world, timeout)
                if store is not None:
                    _check_in(store, rank)
                    came = True
            try:
                joined = store.add(_JOINED, 0) if store is not None else 0
            except DistError:  # rank 0 left (stopped): wait for it again
                store, reason, joined, came = None, "it left", 0, False
            if joined >= world:
                return store
            missing = count(world - joined, "more process", "more processes") if store is not None else "rank 0"
            waited = time.monotonic() - start
            if waited >= timeout.total_seconds():
                raise SettingsError(f"waited {timeout} for {missing} to come (WORLD_SIZE={world}, RANK={rank}) at "
                                    f"MASTER_ADDR={addr} MASTER_PORT={port}: start every rank (torchrun starts "
                                    "them all), or leave WORLD_SIZE unset for one process")
            line = f"waiting for {missing} (WORLD_SIZE={world}) at {addr}:{port}" + (f": {reason}" if reason else "")
            if waited >= RENDEZVOUS_SAY_S and line != said:
                said = line
                log.info("%s", line)
            time.sleep(RENDEZVOUS_POLL_S)
    except BaseException:  # a stop, a timeout: the others must not count this process as come
        if came and rank != 0:
            with contextlib.suppress(Exception):
                store.add(_JOINED, -1)
                store.add(f"tgmae/rank/{rank}", -1)
        raise


def _master_address(world: int) -> tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT) of a group started without torchrun; SettingsError naming them
    when unset or the port is not a number in [1, 65535]."""
    addr, raw = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if not addr or not raw:
        missing = " and ".join(k for k, v in (("MASTER_ADDR", addr), ("MASTER_PORT", raw)) if not v)
        raise SettingsError(f"WORLD_SIZE={world} without {missing}: torchrun sets them; outside it set "
                            "MASTER_ADDR and MASTER_PORT to rank 0's host and a free port (or leave WORLD_SIZE "
                            "unset for one process)")
    if not raw.isdigit() or not 0 < int(raw) < 2**16:
        raise SettingsError(f"MASTER_PORT={raw!r}: expected a port number in [1, 65535]")
    return addr, int(raw)


def _connect(addr: str, port: int, rank: int, world: int, timeout: datetime.timedelta):
    """(the group's TCPStore, "") for `rank`: rank 0 serves it; another rank connects once a probe
    of `addr`:`port` answers, else (None, why not): a failed TCPStore connect logs a C++ trace
    per try. Rank 0's store does not wait for the others (`rendezvous` does, in Python)."""
    from torch.distributed import DistNetworkError, TCPStore

    if rank == 0:
        try:
            return TCPStore(addr, port, world, is_master=True, timeout=timeout, wait_for_workers=False,
                            multi_tenant=True), ""
        except DistNetworkError as e:
            raise SettingsError(f"MASTER_PORT={port}: rank 0 cannot listen there ({str(e).splitlines()[0]}); "
                                "another run, or another RANK=0, holds it: pick a free port") from None
    try:
        socket.create_connection((addr, port), timeout=RENDEZVOUS_CONNECT_S).close()
    except OSError as e:
        return None, f"not reachable yet ({e.strerror or type(e).__name__})"
    try:
        store = TCPStore(addr, port, world, is_master=False, timeout=datetime.timedelta(seconds=10),
                         wait_for_workers=False)
    except DistNetworkError as e:  # rank 0 went between the probe and the connect
        return None, f"not reachable yet ({str(e).splitlines()[0]})"
    store.set_timeout(timeout)
    return store, ""


def _check_in(store, rank: int) -> None:
    """Count this process as come; SettingsError when another process came as the same RANK."""
    if store.add(f"tgmae/rank/{rank}", 1) > 1:
        store.add(f"tgmae/rank/{rank}", -1)
        raise SettingsError(f"RANK={rank} is given to two processes: give each process its own RANK in "
                            "[0, WORLD_SIZE)")
    store.add(_JOINED, 1)


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
