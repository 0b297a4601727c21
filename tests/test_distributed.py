"""tgmae.distributed: what torchrun says a process is, and what a joined group says (one home)."""

from __future__ import annotations

import torch.distributed as dist

from tgmae.distributed import init_distributed, init_distributed_if_launched, launch_env, local_rank, rank_world


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()
    assert launch_env() == (0, 1) and rank_world() == (0, 1) and local_rank() == 0 and local_rank(default=2) == 2
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (0, 1, 0, True, False)
    assert not init_distributed_if_launched() and not dist.is_initialized()


def test_torchrun_environment_is_read(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == (3, 4) and local_rank() == 1 == local_rank(default=5)
    assert rank_world() == (0, 1)  # no group joined: collectives stay local
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert not init_distributed_if_launched()  # no rendezvous address: nothing to join
